"""`make bench`: s3mount against the raw boto3 client on the same local SeaweedFS server.

Workloads: sequential write of 1 GiB and 4 GiB (`dd bs=1M` from a random file in /dev/shm),
sequential cold read of 1 GiB; the raw client uploads/downloads the same bytes with the same
part size and concurrency. Each figure is the median of --runs runs; the peak RSS (VmHWM) of
the mount process is read from /proc. Writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.seaweed import SeaweedServer  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
ROOT = Path(__file__).resolve().parent.parent


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


class MountProc:
    def __init__(self, server: SeaweedServer, bucket: str, mnt: Path, log: Path) -> None:
        mnt.mkdir(parents=True, exist_ok=True)
        self.mnt = mnt
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "s3mount.cli", bucket, str(mnt), "--endpoint-url",
                 server.endpoint_url, "--foreground"], stdout=f, stderr=subprocess.STDOUT,
                env={**os.environ, **server.env()})
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mount failed, see {log}")
            time.sleep(0.05)

    def stop(self) -> float:
        hwm = vm_hwm_mib(self.proc.pid)
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False)
        self.proc.wait(60)
        return hwm


def dd(src: str, dst: str, count_mib: int | None = None) -> None:
    args = ["dd", f"if={src}", f"of={dst}", "bs=1M", "iflag=fullblock", "status=none"]
    if count_mib:
        args.append(f"count={count_mib}")
    subprocess.run(args, check=True)


def bench_s3mount(server: SeaweedServer, s3: Any, src: Path, runs: int,
                  work: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"write 1 GiB": [], "write 4 GiB": [], "read 1 GiB": [],
                                   "rss write 4 GiB": []}
    for run in range(runs):
        bucket = f"bench-s3mount-{run}"
        s3.create_bucket(Bucket=bucket)
        m = MountProc(server, bucket, work / f"mnt{run}", work / "s3mount.log")
        one, four = f"{m.mnt}/one.bin", f"{m.mnt}/four.bin"
        out["write 1 GiB"].append(1024 / timed(partial(dd, str(src), one)))
        cmd = f"cat {src} {src} {src} {src} | dd of={four} bs=1M iflag=fullblock status=none"
        out["write 4 GiB"].append(4096 / timed(partial(
            subprocess.run, ["bash", "-o", "pipefail", "-c", cmd], check=True)))
        out["rss write 4 GiB"].append(m.stop())
        m = MountProc(server, bucket, work / f"mnt{run}", work / "s3mount.log")
        out["read 1 GiB"].append(1024 / timed(partial(dd, one, "/dev/null")))
        m.stop()
    return out


def bench_raw(s3: Any, src: Path, runs: int) -> dict[str, list[float]]:
    cfg = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB,
                         max_concurrency=4)
    out: dict[str, list[float]] = {"write 1 GiB": [], "read 1 GiB": []}
    for run in range(runs):
        bucket = f"bench-raw-{run}"
        s3.create_bucket(Bucket=bucket)
        with open(src, "rb") as f:
            out["write 1 GiB"].append(1024 / timed(
                lambda f=f, b=bucket: s3.upload_fileobj(f, b, "one.bin", Config=cfg)))
        with open(os.devnull, "wb") as f:
            out["read 1 GiB"].append(1024 / timed(
                lambda f=f, b=bucket: s3.download_fileobj(b, "one.bin", f, Config=cfg)))
    return out


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return (f"{os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; SeaweedFS on the same "
            "host (127.0.0.1)")


def report(ours: dict[str, list[float]], raw: dict[str, list[float]], runs: int) -> str:
    med = {k: statistics.median(v) for k, v in ours.items()}
    rmed = {k: statistics.median(v) for k, v in raw.items()}
    rows = []
    for k in ("write 1 GiB", "write 4 GiB", "read 1 GiB"):
        r = rmed.get(k)
        ratio = f"{med[k] / r:.2f}" if r else "-"
        rows.append(f"| {k} (MiB/s) | {med[k]:.0f} | {r:.0f} | {ratio} |" if r else
                    f"| {k} (MiB/s) | {med[k]:.0f} | - | - |")
    rows.append(f"| peak RSS writing 4 GiB (MiB) | {med['rss write 4 GiB']:.0f} | - | - |")
    date = datetime.date.today().isoformat()
    return "\n".join([
        "# Benchmarks", "",
        f"Measured {date} by `make bench` (median of {runs} runs). Machine: {machine()}.", "",
        "s3mount with default options (8 MiB parts, --max-memory 24M, --upload-concurrency 4);",
        "the raw client is boto3 `upload_fileobj`/`download_fileobj` with 8 MiB parts and",
        "concurrency 4. Writes are `dd bs=1M` from a random file in /dev/shm; the 4 GiB",
        "write is that file four times through a pipe. Reads are cold (fresh mount).", "",
        "| workload | s3mount | raw boto3 | s3mount / raw |", "|---|---|---|---|", *rows, "",
        "Raw figures of every run:", "", "```",
        *[f"s3mount {k}: {', '.join(f'{x:.1f}' for x in v)}" for k, v in ours.items()],
        *[f"raw {k}: {', '.join(f'{x:.1f}' for x in v)}" for k, v in raw.items()],
        "```", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    src = Path("/dev/shm") / f"s3mount-bench-{os.getpid()}.bin"
    with open(src, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(16 * MiB))
    server = SeaweedServer().start()
    try:
        s3 = server.client()
        with tempfile.TemporaryDirectory() as work:
            ours = bench_s3mount(server, s3, src, args.runs, Path(work))
        raw = bench_raw(s3, src, args.runs)
    finally:
        server.stop()
        src.unlink()
    text = report(ours, raw, args.runs)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
