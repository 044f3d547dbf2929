"""The tail of a big disk: one stream whose parts grow past `--max-memory`, against the 8 MiB
stage, in the same run, on SeaweedFS and on moto's server (`python bench/bigdisk.py`; also run
by `make bench-bigdisk`).

For each server, two streams of the same length are written through a fresh s3mount mount with
`--max-memory 24M` (1 MiB writes, as `dd bs=1M`; bytes vary per MiB):
- "8 MiB stage": the default schedule, so every part is 8 MiB and nothing is copied;
- "big parts": `--part-growth-every 2`, so parts are 8, 8, 16, 16, 32, ... MiB up to two parts
  of `--top` MiB (512 by default: a 2 GiB stream; 4096 for the 4 GiB case, a 16 GiB stream:
  `python bench/bigdisk.py --top 4096 --servers seaweed`), each part past the first two
  assembled by the server (assembler.py);
- on SeaweedFS also "big parts, crc32c": the same with `--checksum crc32c`, with which
  SeaweedFS answers each copy with the MD5 and CRC32C of the copied bytes (no read-back).
Each stream is timed from the first write to the return of close() (the object complete and
verified, big parts proven), and MiB/s is given for the whole stream and for its last stage
alone (the parts of `--top` MiB; from its first write to close). The mount's resident memory
is sampled every 0.1 s: peak per stage, and the process's VmHWM at the end. Results go to
stdout as a markdown table (docs/benchmarks.md holds the figures of one run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from s3mount.config import MiB  # noqa: E402
from s3mount.schedule import PartSchedule  # noqa: E402
from tests.motoserver import MotoServer  # noqa: E402
from tests.seaweed import SeaweedServer  # noqa: E402

Server = SeaweedServer | MotoServer


def rss(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Result:
    server: str
    stream: str
    mib: int
    seconds: float
    last_part_mib: int
    last_part_seconds: float
    peak_by_stage: dict[int, int] = field(default_factory=dict)
    hwm: int = 0
    proof: str = ""

    @property
    def rate(self) -> float:
        return self.mib / self.seconds

    @property
    def last_rate(self) -> float:
        return self.last_part_mib / self.last_part_seconds


@contextmanager
def mounted(server: Server, bucket: str, args: list[str]) -> Iterator[tuple[Path, int, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="s3mount-bigdisk-"))
    mnt, log = tmp / "mnt", tmp / "mount.log"
    mnt.mkdir()
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "s3mount.cli", bucket, str(mnt),
                                 "--endpoint-url", server.endpoint_url, "--foreground",
                                 "--max-memory", "24M", *args], stdout=logf,
                                stderr=subprocess.STDOUT, env={**os.environ, **server.env()})
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mount did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield mnt, proc.pid, log
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        proc.wait(120)


def stream(server: Server, name: str, bucket: str, mib: int, schedule: PartSchedule,
           args: list[str]) -> Result:
    pool = os.urandom(64 * MiB)
    sizes = schedule.parts_for(mib * MiB)
    last_start = sum(s for s in sizes if s < max(sizes)) // MiB
    stage_of_mib = []
    for n, size in enumerate(sizes, 1):
        stage_of_mib += [schedule.stage_of(n)] * (size // MiB)
    with mounted(server, bucket, args) as (mnt, pid, log):
        peaks: dict[int, int] = {}
        at = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                stage = stage_of_mib[min(at[0], len(stage_of_mib) - 1)]
                peaks[stage] = max(peaks.get(stage, 0), rss(pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        t_last = t0
        with open(mnt / "disk.img", "wb", buffering=0) as f:
            for i in range(mib):
                if i == last_start:
                    t_last = time.monotonic()
                at[0] = i
                off = (i * 4099) % (63 * MiB)
                chunk = bytearray(pool[off:off + MiB])
                chunk[:8] = i.to_bytes(8, "little")  # no two MiB alike
                f.write(chunk)
        t1 = time.monotonic()
        done.set()
        sampler.join()
        hwm = rss(pid, "VmHWM")
        text = log.read_text()
    if "uploaded and verified" not in text:
        raise RuntimeError(f"{name}: upload not verified: {text[-2000:]}")
    proof = ("copy answer" if "answers the MD5 of the copied bytes" in text else
             "read-back" if "reading its range of the completed object back" in text else "-")
    return Result(type(server).__name__, name, mib, t1 - t0, mib - last_start, t1 - t_last,
                  peaks, hwm, proof)


def run(server: Server, top_mib: int) -> list[Result]:
    client = server.client()
    big = PartSchedule(8 * MiB, 2)
    sizes: list[int] = []
    n = 1
    while sizes.count(top_mib * MiB) < 2:
        sizes.append(big.size_of(n))
        n += 1
    mib = sum(sizes) // MiB
    out: list[Result] = []
    streams = [("8 MiB stage", PartSchedule(), []),
               ("big parts", big, ["--part-growth-every", "2"])]
    if isinstance(server, SeaweedServer):
        streams.append(("big parts, crc32c", big,
                        ["--part-growth-every", "2", "--checksum", "crc32c"]))
    for name, schedule, args in streams:
        bucket = f"bigdisk-{len(out)}-{os.getpid()}"
        client.create_bucket(Bucket=bucket)
        out.append(stream(server, name, bucket, mib, schedule, args))
        for o in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=o["Key"])
    return out


def table(results: list[Result]) -> str:
    lines = ["| server | stream | MiB | MiB/s (whole, to close) | last stage | MiB/s of the last "
             "stage (to close) | whole vs 8 MiB stage | peak RSS per stage (MiB) | VmHWM (MiB) "
             "| big parts proven by |", "|---|---|--:|--:|--:|--:|--:|---|--:|---|"]
    base: dict[str, float] = {}
    for r in results:
        if r.stream == "8 MiB stage":
            base[r.server] = r.rate
        ratio = r.rate / base[r.server] if r.server in base else float("nan")
        peaks = ", ".join(f"{r.peak_by_stage[s] / MiB:.0f}" for s in sorted(r.peak_by_stage))
        lines.append(f"| {r.server} | {r.stream} | {r.mib} | {r.rate:.0f} | "
                     f"{r.last_part_mib} MiB | {r.last_rate:.0f} | {ratio:.2f} | {peaks} | "
                     f"{r.hwm / MiB:.0f} | {r.proof} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--top", type=int, default=512, help="largest part, MiB (512; 4096)")
    p.add_argument("--servers", default="seaweed,moto")
    ns = p.parse_args()
    results: list[Result] = []
    for name in ns.servers.split(","):
        server: Server = SeaweedServer() if name == "seaweed" else MotoServer()
        server.start()
        try:
            results += run(server, ns.top)
        finally:
            server.stop()
        print(table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
