"""The small-operation workloads of the benchmark against s3mount alone, with the S3
requests each one makes: `cp -r` of 1,000 files of 4 KiB, time to first byte, `find` over
1,000 entries, and `ls -l` of 10,000 objects. Used to profile and fix them
(docs/benchmarks.md, "Profiles and fixes").

    python bench/profile_small.py [--runs 3] [--only create,ttfb,find,ls] [--no-count]
                                  [--mount-args "--metadata-ttl 1"] [--pyspy DIR]

Each run is on a fresh mount, as in `make bench` (bench/workloads.py does the work). Timings
are taken with the mount talking to the server directly; the request counts in a separate run
through a counting proxy (tests/faultproxy.py), which adds latency of its own. With --pyspy DIR
the timed runs are recorded by py-spy (collapsed stacks in DIR). Each line also gives the CPU
time of the mount process over the workload (user + system, /proc/PID/stat), steadier than the
wall-clock figure on a shared machine.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.systems import SYSTEMS, Mount, S3mount  # noqa: E402
from bench.workloads import (  # noqa: E402
    FULL,
    Env,
    drop_bucket,
    fs_create,
    fs_find,
    fs_ls,
    fs_ttfb,
    make_sources,
    put_ttfb_object,
    seed,
)
from tests.faultproxy import FaultProxy  # noqa: E402
from tests.seaweed import SeaweedServer  # noqa: E402

DATA_BUCKET = "prof-data"
CPU: list[float] = []  # CPU seconds of the mount process over each timed workload
WORKLOADS = ("create", "ttfb", "find", "ls")


class _Server:
    """The server as the mount sees it: its own endpoint, or the counting proxy's."""

    def __init__(self, real: SeaweedServer, endpoint: str) -> None:
        self.real, self.endpoint_url = real, endpoint
        self.access_key, self.secret_key = real.access_key, real.secret_key

    def env(self) -> dict[str, str]:
        return self.real.env()


@dataclass(frozen=True)
class _S3mount(S3mount):
    """s3mount as the benchmark mounts it, with extra options."""

    extra: tuple[str, ...] = ()

    def argv(self, server: SeaweedServer, bucket: str, mnt: Path,
             scratch: Path) -> tuple[list[str], dict[str, str]]:
        cmd, e = super().argv(server, bucket, mnt, scratch)
        return cmd + list(self.extra), e


def py_spy() -> str:
    """The py-spy beside this interpreter (the venv's, not on PATH when the venv's python is
    run by its path), else the one on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else "py-spy"


def _mounted(env: Env, server: object, bucket: str, work: Path, extra: list[str],
             pyspy: Path | None, label: str, fn: Callable[[Path], float]) -> float:
    base = SYSTEMS["s3mount"]
    system = _S3mount(base.name, base.title, base.kind, base.how, tuple(extra))
    mnt = work / f"mnt-{label}"
    scratch = work / f"scratch-{label}"
    scratch.mkdir(exist_ok=True)
    m = Mount(system, server, bucket, mnt, scratch, work / "s3mount.log")  # type: ignore[arg-type]
    spy = None
    try:
        if pyspy is not None:
            spy = subprocess.Popen([py_spy(), "record", "-p", str(m.proc.pid), "-r", "500", "-f",
                                    "raw", "-o", str(pyspy / f"{label}.txt"), "--threads"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        c0 = m.cpu_seconds()
        value = fn(mnt)
        c1 = m.cpu_seconds()
        if c0 is not None and c1 is not None:
            CPU.append(c1 - c0)
        return value
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        m.stop()


def run(env: Env, name: str, server: object, work: Path, run_no: int, extra: list[str],
        pyspy: Path | None) -> float:
    label = f"{name}-{run_no}-{len(list(work.iterdir()))}"
    if name == "create":
        bucket = f"prof-w-{run_no}-{time.monotonic_ns() % 10**9}"
        env.s3.create_bucket(Bucket=bucket)
        try:
            return _mounted(env, server, bucket, work, extra, pyspy, label,
                            lambda m: fs_create(env, m, bucket))
        finally:
            drop_bucket(env.s3, bucket)
    if name == "ttfb":
        key = put_ttfb_object(env, "s3mount", run_no + 1000 * len(list(work.iterdir())))
        return _mounted(env, server, DATA_BUCKET, work, extra, pyspy, label,
                        lambda m: fs_ttfb(env, m, key))
    if name == "ls":
        return _mounted(env, server, DATA_BUCKET, work, extra, pyspy, label,
                        lambda m: fs_ls(env, m))
    return _mounted(env, server, DATA_BUCKET, work, extra, pyspy, label,
                    lambda m: fs_find(env, m))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--no-count", action="store_true", help="skip the counting-proxy run")
    ap.add_argument("--show-requests", type=int, default=0, metavar="N",
                    help="print the first N requests of the counting run")
    ap.add_argument("--mount-args", default="", help="extra s3mount options")
    ap.add_argument("--pyspy", type=Path, help="record the timed runs with py-spy into DIR")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n]
    extra = shlex.split(a.mount_args)
    if a.pyspy:
        a.pyspy.mkdir(parents=True, exist_ok=True)
    # the 10,000 objects of `ls -l` are seeded only when it is run
    sizes = replace(FULL, big_mib=1, list_objects=FULL.list_objects if "ls" in names else 1)
    work = Path(tempfile.mkdtemp(prefix="s3mount-prof-"))
    shm = Path(tempfile.mkdtemp(prefix="s3mount-prof-", dir="/dev/shm"))
    server = SeaweedServer().start()
    try:
        src, small = make_sources(shm, sizes)
        env = Env(server, server.client(), sizes, src, small, DATA_BUCKET)
        seed(env)
        for name in names:
            CPU.clear()
            times = [run(env, name, server, work, i, extra, a.pyspy) for i in range(a.runs)]
            unit = "ms" if name == "ttfb" else "s"
            print(f"{name}: median {statistics.median(times):.3g} {unit} "
                  f"(runs: {', '.join(f'{t:.3g}' for t in times)}); CPU of the mount "
                  f"{statistics.median(CPU):.3g} s (runs: {', '.join(f'{c:.3g}' for c in CPU)})",
                  flush=True)
            if a.no_count:
                continue
            with FaultProxy(server.endpoint_url) as proxy:
                proxy.counts.clear()
                run(env, name, _Server(server, proxy.url), work, 99, extra, None)
                counts = {k: v for k, v in sorted(proxy.counts.items()) if k != "requests"}
                print(f"{name}: {proxy.counts['requests']} requests: {counts}", flush=True)
                if a.show_requests:
                    for method, path in list(proxy.log)[:a.show_requests]:
                        print(f"    {method} {path}")
    finally:
        server.stop()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
