"""What verified reads cost: 1 GiB read through a mount with and without --no-verify-reads.

Starts its own SeaweedFS, stores four 1 GiB objects: a single-part one (PutObject) and a
multipart one (written through s3mount, its default parts: 8 MiB until 2026-11-29, then 6),
neither with an additional checksum, and
the same two shapes as boto3 1.44 stores them with its default checksums (PutObject with a
CRC32; `upload_file`: 8 MiB parts, a composite CRC32), then reads each with
`dd bs=1M of=/dev/null` through a fresh mount, alternating the two settings, RUNS times.
Reports the median MiB/s and the mount process's CPU-seconds per GiB (user + system, from
/proc). Usage: python -m bench.verify_cost [--runs N] [--mib M]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from botocore.config import Config

from tests.seaweed import SeaweedServer

MOUNT_WAIT = 30.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mount(server: SeaweedServer, bucket: str, mnt: Path, log: Path,
          *args: str) -> subprocess.Popen[bytes]:
    mnt.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "s3mount.cli", bucket, str(mnt),
                                 "--endpoint-url", server.endpoint_url, "--foreground", *args],
                                stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, **server.env()})
    deadline = time.monotonic() + MOUNT_WAIT
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"mount failed: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def unmount(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    proc.wait(60)


def read_once(server: SeaweedServer, bucket: str, key: str, tmp: Path,
              args: list[str]) -> tuple[float, float, int]:
    """Seconds and mount CPU-seconds to read `key` whole through a fresh mount, and the
    number of objects the mount verified (from `s3mount status`)."""
    mnt = tmp / "mnt"
    proc = mount(server, bucket, mnt, tmp / "mount.log", *args)
    try:
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        subprocess.run(["dd", f"if={mnt / key}", "of=/dev/null", "bs=1M", "status=none"],
                       check=True, timeout=600)
        secs, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
        doc = json.loads(subprocess.run(
            [sys.executable, "-m", "s3mount.cli", "status", str(mnt), "--json"],
            capture_output=True, check=True, text=True).stdout)
        return secs, cpu, int(doc["reads"]["verified_objects"])
    finally:
        unmount(proc, mnt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=1024)
    ns = ap.parse_args()
    size = ns.mib << 20
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm, SeaweedServer() as server:
        tmp = Path(shm)
        src = tmp / "src.bin"
        with open(src, "wb") as f:
            for _ in range(ns.mib):
                f.write(os.urandom(1 << 20))
        s3 = server.client()
        s3.create_bucket(Bucket="verifycost")
        with open(src, "rb") as f:
            s3.put_object(Bucket="verifycost", Key="single.bin", Body=f)
        # boto3's defaults (request_checksum_calculation="when_supported"): a CRC32 is sent
        # and kept, of the whole object for a PutObject, composite for upload_file's parts.
        crc = server.client(Config(request_checksum_calculation="when_supported"))
        with open(src, "rb") as f:
            crc.put_object(Bucket="verifycost", Key="single-crc32.bin", Body=f)
        crc.upload_file(str(src), "verifycost", "multi-crc32.bin")
        for key in ("single-crc32.bin", "multi-crc32.bin"):
            head = s3.head_object(Bucket="verifycost", Key=key, ChecksumMode="ENABLED")
            print(f"{key}: kept checksum CRC32 {head.get('ChecksumCRC32')} "
                  f"({head.get('ChecksumType', 'type not said')})")
        proc = mount(server, "verifycost", tmp / "w", tmp / "write.log")
        try:
            subprocess.run(["dd", f"if={src}", f"of={tmp / 'w' / 'multi.bin'}", "bs=1M",
                            "status=none"], check=True, timeout=900)
        finally:
            unmount(proc, tmp / "w")
        src.unlink()
        print(f"{ns.mib} MiB read with dd bs=1M through a fresh mount; median of {ns.runs}")
        print("| object | verified reads | MiB/s | mount CPU-s per GiB | verified |")
        print("|---|---|---|---|---|")
        for key in ("single.bin", "multi.bin", "single-crc32.bin", "multi-crc32.bin"):
            results: dict[str, list[tuple[float, float, int]]] = {"on": [], "off": []}
            for _ in range(ns.runs):
                for name, args in (("on", []), ("off", ["--no-verify-reads"])):
                    results[name].append(read_once(server, "verifycost", key, tmp, args))
            for name, runs in results.items():
                secs = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                print(f"| {key} | {name} | {size / secs / (1 << 20):.0f} | "
                      f"{cpu / (size / (1 << 30)):.2f} | {sum(r[2] for r in runs)}/{len(runs)} |")
        log = (tmp / "mount.log").read_text()
        if "do not match" in log:
            raise SystemExit("a read failed verification: " + log[-2000:])


if __name__ == "__main__":
    main()
