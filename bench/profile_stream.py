"""CPU time per GiB of the sequential workloads: s3mount's process against the raw boto3
client, each on a fresh mount (a fresh process), the same `dd` commands and probes as
`make bench`. Used to profile and trim the read and write paths (docs/benchmarks.md,
"Profiles and fixes"). CPU-s/GiB is the user + system time of the process over the workload
(/proc/PID/stat for the mount, os.times in the raw client's probe), steadier than MiB/s on a
machine shared with the server and other work.

    python bench/profile_stream.py [--runs 3] [--mib 1024] [--only read,write,raw-read,raw-write]
                                   [--mount-args "--read-ahead 64M"] [--pyspy DIR] [--native]
                                   [--perf DIR]

With --pyspy DIR every mount run is also recorded by py-spy (raw collapsed stacks, all
threads, DIR/NAME-RUN.txt); `python bench/profile_stream.py --top DIR/FILE.txt` prints the
frames that hold the most samples. py-spy counts time spent waiting in system calls too; with
--perf DIR the runs are recorded by perf instead (on-CPU samples only, C and kernel frames;
Debian: linux-perf): `perf report -i DIR/NAME-RUN.data --sort comm,dso,sym`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.profile_small import _S3mount, py_spy  # noqa: E402
from bench.systems import SYSTEMS, Mount  # noqa: E402
from bench.workloads import (  # noqa: E402
    FULL,
    Env,
    drop_bucket,
    fs_read,
    fs_write,
    make_sources,
    raw_read,
    raw_write,
)
from tests.seaweed import SeaweedServer  # noqa: E402

DATA_BUCKET = "prof-data"
WORKLOADS = ("read", "write", "raw-read", "raw-write")


def _seed(env: Env) -> None:
    """The read object as `make bench` seeds it (workloads.seed): by boto3's defaults, which
    send a CRC32 with every part (the server keeps a composite CRC32, and verified reads are
    proven by it); the test client sends none (reads would be proven by the MD5s)."""
    env.s3.create_bucket(Bucket=DATA_BUCKET)
    seeder = env.server.client(Config(request_checksum_calculation="when_supported"))
    seeder.upload_file(str(env.src), DATA_BUCKET, "data/big.bin")
    seeder.close()


def _on_mount(env: Env, name: str, run: int, work: Path, extra: list[str],
              pyspy: Path | None, native: bool, perf: Path | None) -> tuple[float, float]:
    """(MiB/s, CPU seconds of the mount process) of one read or write on a fresh mount."""
    base = SYSTEMS["s3mount"]
    system = _S3mount(base.name, base.title, base.kind, base.how, tuple(extra))
    bucket = DATA_BUCKET
    if name == "write":
        bucket = f"prof-w-{run}-{time.monotonic_ns() % 10**9}"
        env.s3.create_bucket(Bucket=bucket)
    label = f"{name}-{run}"
    mnt, scratch = work / f"mnt-{label}", work / f"scratch-{label}"
    scratch.mkdir()
    m = Mount(system, env.server, bucket, mnt, scratch, work / "s3mount.log")
    spy = None
    try:
        time.sleep(0.5)  # the mount's own start-up (the read-ahead setting) is not counted
        if pyspy is not None:
            cmd = [py_spy(), "record", "-p", str(m.proc.pid), "-r", "250", "-f", "raw", "-o",
                   str(pyspy / f"{label}.txt"), "--threads", *(["--native"] if native else [])]
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        elif perf is not None:
            cmd = ["perf", "record", "-F", "499", "-g", "-p", str(m.proc.pid), "-o",
                   str(perf / f"{label}.data")]
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        c0 = m.cpu_seconds()
        rate = fs_read(env, mnt) if name == "read" else fs_write(env, mnt, bucket, 1)
        c1 = m.cpu_seconds()
        assert c0 is not None and c1 is not None
        if name == "read":  # what proved the read (s3mount status)
            doc = json.loads(subprocess.run(
                [sys.executable, "-m", "s3mount.cli", "status", str(mnt), "--json"],
                capture_output=True, check=True, text=True, cwd=ROOT).stdout)
            reads = doc["reads"]
            print(f"  read {run}: verified_objects {reads['verified_objects']}, "
                  f"verified_by_checksum {reads['verified_by_checksum']}", flush=True)
        return rate, c1 - c0
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        m.stop()
        if name == "write":
            drop_bucket(env.s3, bucket)


def _raw(env: Env, name: str, run: int) -> tuple[float, float]:
    env.raw_cpu.clear()
    if name == "raw-read":
        rate = raw_read(env)
    else:
        bucket = f"prof-rw-{run}-{time.monotonic_ns() % 10**9}"
        env.s3.create_bucket(Bucket=bucket)
        try:
            rate = raw_write(env, bucket, 1)
        finally:
            drop_bucket(env.s3, bucket)
    return rate, env.raw_cpu[-1]


def top(path: Path, n: int = 25) -> None:
    """The frames that hold the most samples of a py-spy raw file: own (leaf) and total."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        k = int(count)
        samples += k
        threads[frames[0]] += k
        own[frames[-1]] += k
        for f in set(frames[1:]):
            total[f] += k
    print(f"{path}: {samples} samples")
    for title, counter in (("threads", threads), ("own", own), ("total", total)):
        print(f"-- {title}")
        for f, k in counter.most_common(n):
            print(f"{100 * k / samples:5.1f}%  {f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--mount-args", default="", help="extra s3mount options")
    ap.add_argument("--pyspy", type=Path, help="record the mount runs with py-spy into DIR")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--perf", type=Path, help="record the mount runs with perf into DIR "
                    "(on-CPU samples, kernel and C frames: `perf report -i FILE --sort "
                    "comm,dso,sym`)")
    ap.add_argument("--top", type=Path, help="print the top frames of a py-spy raw file")
    a = ap.parse_args()
    if a.top:
        top(a.top)
        return
    names = [n for n in a.only.split(",") if n]
    extra = shlex.split(a.mount_args)
    for d in (a.pyspy, a.perf):
        if d:
            d.mkdir(parents=True, exist_ok=True)
    sizes = replace(FULL, big_mib=a.mib, files=1)
    work = Path(tempfile.mkdtemp(prefix="s3mount-prof-"))
    shm = Path(tempfile.mkdtemp(prefix="s3mount-prof-", dir="/dev/shm"))
    server = SeaweedServer().start()
    try:
        src, small = make_sources(shm, sizes)
        env = Env(server, server.client(), sizes, src, small, DATA_BUCKET)
        _seed(env)
        for name in names:
            rates, cpus = [], []
            for i in range(a.runs):
                os.sync()  # the seed's (or the last run's) writes: on disk before, not during
                rate, cpu = (_raw(env, name, i) if name.startswith("raw") else
                             _on_mount(env, name, i, work, extra, a.pyspy, a.native, a.perf))
                rates.append(rate)
                cpus.append(cpu / (a.mib / 1024))
            print(f"{name}: median {statistics.median(cpus):.3g} CPU-s/GiB "
                  f"(runs: {', '.join(f'{c:.3g}' for c in cpus)}); "
                  f"{statistics.median(rates):.0f} MiB/s "
                  f"(runs: {', '.join(f'{r:.0f}' for r in rates)})", flush=True)
    finally:
        server.stop()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
