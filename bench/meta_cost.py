"""What keeping times and modes costs where no upload or rename carries them (issue 15).

A `chmod` or `touch -d` on a file that is already closed is stored by a copy of the object onto
itself (CopyObject with the new metadata, META_DELAY seconds later: namespace.py `set_attrs`).
This measures that case on its own SeaweedFS: for objects of each size (written through the
mount, then closed), `chmod 600` through a fresh mount, timed three ways: the system call
itself, until the new mode is in the bucket (HEAD with boto3, polled every 10 ms), and the
server's CPU time over it. For comparison, the cases that cost no copy: `cp -a` of a
single-part file (times ride on the PutObject) against plain `cp`.
Usage: python -m bench.meta_cost [--sizes-kib 4,65536,1048576] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.verify_cost import cpu_seconds, mount, unmount
from tests.seaweed import SeaweedServer

MiB = 1 << 20


def wait_mode(s3: object, bucket: str, key: str, mode: int, deadline: float) -> float:
    while time.monotonic() < deadline:
        meta = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})  # type: ignore[attr-defined]
        if meta.get("mode") and int(meta["mode"]) & 0o7777 == mode:
            return time.monotonic()
        time.sleep(0.01)
    raise SystemExit(f"{key}: mode {mode:o} never reached the bucket")


def chmod_cost(server: SeaweedServer, bucket: str, key: str, tmp: Path,
               mode: int) -> tuple[float, float, float]:
    """(seconds of the chmod call, seconds until the bucket has the mode, server CPU-s)."""
    s3 = server.client()
    mnt = tmp / "mnt"
    proc = mount(server, bucket, mnt, tmp / "mount.log")
    try:
        os.stat(mnt / key)
        cpu0 = cpu_seconds(server.pid)
        t0 = time.monotonic()
        os.chmod(mnt / key, mode)
        t1 = time.monotonic()
        t2 = wait_mode(s3, bucket, key, mode, t0 + 600)
        cpu = cpu_seconds(server.pid) - cpu0
    finally:
        unmount(proc, mnt)
    return t1 - t0, t2 - t0, cpu


def cp_time(mnt: Path, src: Path, name: str, *flags: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["cp", *flags, str(src), str(mnt / name)], check=True)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-kib", default="4,65536,1048576")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) * 1024 for s in args.sizes_kib.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="s3mount-metacost-"))
    shm = Path(tempfile.mkdtemp(prefix="s3mount-metacost-", dir="/dev/shm"))
    server = SeaweedServer().start()
    try:
        bucket = "metacost"
        server.client().create_bucket(Bucket=bucket)
        print("| object | chmod call (ms) | until stored (s) | server CPU-s | runs |")
        print("|---|--:|--:|--:|---|")
        for size in sizes:
            src = shm / "src.bin"
            with open(src, "wb") as f:
                left = size
                while left:
                    f.write(os.urandom(min(left, MiB)))
                    left -= min(left, MiB)
            key = f"f-{size}"
            mnt = tmp / "mnt"
            proc = mount(server, bucket, mnt, tmp / "mount.log")
            try:
                shutil.copyfile(src, mnt / key)
            finally:
                unmount(proc, mnt)
            calls, stored, cpus = [], [], []
            for run in range(args.runs):
                c, s, cpu = chmod_cost(server, bucket, key, tmp, 0o600 if run % 2 else 0o640)
                calls.append(c * 1000)
                stored.append(s)
                cpus.append(cpu)
            label = f"{size // 1024} KiB" if size < MiB else f"{size // MiB} MiB"
            print(f"| {label} | {statistics.median(calls):.1f} | "
                  f"{statistics.median(stored):.2f} | {statistics.median(cpus):.2f} | "
                  f"{', '.join(f'{x:.2f}' for x in stored)} |", flush=True)
        src = shm / "small.bin"
        src.write_bytes(os.urandom(4096))
        mnt = tmp / "mnt"
        proc = mount(server, bucket, mnt, tmp / "mount.log")
        try:
            plain = [cp_time(mnt, src, f"cp-{i}") for i in range(args.runs * 5)]
            keep = [cp_time(mnt, src, f"cpa-{i}", "-a") for i in range(args.runs * 5)]
        finally:
            unmount(proc, mnt)
        print(f"\n4 KiB file, median of {len(plain)}: cp {statistics.median(plain) * 1000:.1f} "
              f"ms, cp -a {statistics.median(keep) * 1000:.1f} ms")
    finally:
        server.stop()
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
