"""The tail of a big disk: one stream whose parts grow past `--max-memory`, against the 8 MiB
stage, in the same run, on SeaweedFS and on moto's server (`python bench/bigdisk.py`; run by
`make bench` after bench/run.py, and alone by `make bench-bigdisk`).

For each server, two streams of the same length are written through a fresh s3mount mount with
`--max-memory 24M --part-size 8M` (the part size its figures in docs/benchmarks.md were taken
with, the default until 2026-11-29; 1 MiB writes, as `dd bs=1M`; bytes vary per MiB):
- "8 MiB stage": every part 8 MiB (`--part-growth-every 10000`), nothing is copied;
- "big parts": `--part-growth-every 2`, so parts are 8, 8, 16, 16, 32, ... MiB up to two parts
  of `--top` MiB (`--tops 512,4096` by default: a 2 GiB stream; then the 4 GiB case on
  SeaweedFS only, since moto keeps objects in memory: `--part-growth-every 1`, parts of 8, 16,
  ... 4096 MiB, an 8 GiB stream), each part past the first two assembled by the server
  (assembler.py);
- on SeaweedFS also "big parts, crc32c": the same with `--checksum crc32c`, with which
  SeaweedFS answers each copy with the MD5 and CRC32C of the copied bytes (no read-back).
Each stream is timed from the first write to the return of close() (the object complete and
verified, big parts proven), and MiB/s is given for the whole stream and for its last stage
alone (the parts of `--top` MiB; from its first write to close). The mount's resident memory
is sampled every 0.1 s: peak per stage, and the process's VmHWM at the end; the CPU time
(user + system) of the mount and of the server process, per GiB written, shows where the work
goes. Each stream gets a fresh server (SeaweedFS slows down as it fills; every stream starts
alike). Results go to stdout as markdown tables and, with `--out FILE`, replace the part of FILE
between the BEGIN/END markers below (docs/benchmarks.md, "The tail of a big disk").
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
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
from bench.verify_cost import cpu_seconds  # noqa: E402
from s3mount.config import GiB, MiB  # noqa: E402
from s3mount.schedule import PartSchedule  # noqa: E402
from tests.motoserver import MotoServer  # noqa: E402
from tests.seaweed import SeaweedServer  # noqa: E402

Server = SeaweedServer | MotoServer
BEGIN = "<!-- bigdisk {top}: BEGIN (written by bench/bigdisk.py --out) -->"
END = "<!-- bigdisk {top}: END -->"


def rss(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return 0


def disk_used(server: Server) -> int:
    if not isinstance(server, SeaweedServer):
        return 0
    return sum(p.stat().st_blocks * 512 for p in server.data_dir.rglob("*") if p.is_file())


def server_pid(server: Server) -> int:
    if isinstance(server, SeaweedServer):
        return server.pid
    assert server.proc is not None
    return server.proc.pid


@dataclass
class Result:
    server: str
    stream: str
    top: int
    mib: int
    seconds: float
    last_part_mib: int
    last_part_seconds: float
    peak_by_stage: dict[int, int] = field(default_factory=dict)
    hwm: int = 0
    proof: str = ""
    mount_cpu: float = 0.0
    server_cpu: float = 0.0
    disk: int = 0  # bytes the server's data directory holds at the end (SeaweedFS)

    @property
    def rate(self) -> float:
        return self.mib / self.seconds

    @property
    def last_rate(self) -> float:
        return self.last_part_mib / self.last_part_seconds

    def per_gib(self, cpu: float) -> float:
        return cpu / (self.mib / 1024)


@contextmanager
def mounted(server: Server, bucket: str, args: list[str]) -> Iterator[tuple[Path, int, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="s3mount-bigdisk-"))
    mnt, log = tmp / "mnt", tmp / "mount.log"
    mnt.mkdir()
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "s3mount.cli", bucket, str(mnt),
                                 "--endpoint-url", server.endpoint_url, "--foreground",
                                 "--max-memory", "24M", "--part-size", "8M", *args], stdout=logf,
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


def stream(server: Server, name: str, top: int, bucket: str, mib: int,
           schedule: PartSchedule, args: list[str]) -> Result:
    pool = os.urandom(64 * MiB)
    sizes = schedule.parts_for(mib * MiB)
    last_start = sum(s for s in sizes if s < max(sizes)) // MiB
    stage_of_mib = []
    for n, size in enumerate(sizes, 1):
        stage_of_mib += [schedule.stage_of(n)] * (size // MiB)
    spid = server_pid(server)
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
        mount_cpu0, server_cpu0 = cpu_seconds(pid), cpu_seconds(spid)
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
        mount_cpu, server_cpu = cpu_seconds(pid) - mount_cpu0, cpu_seconds(spid) - server_cpu0
        done.set()
        sampler.join()
        hwm = rss(pid, "VmHWM")
        text = log.read_text()
    if "uploaded and verified" not in text:
        raise RuntimeError(f"{name}: upload not verified: {text[-2000:]}")
    proof = ("copy answer" if "answers the MD5 of the copied bytes" in text else
             "read-back" if "reading its range of the completed object back" in text else "-")
    kind = "SeaweedFS" if isinstance(server, SeaweedServer) else "moto"
    return Result(kind, name, top, mib, t1 - t0, mib - last_start, t1 - t_last, peaks, hwm,
                  proof, mount_cpu, server_cpu, disk_used(server))


def run(kind: str, top_mib: int, growth: int) -> list[Result]:
    """The streams of one server kind up to parts of `top_mib`, each on a fresh server."""
    big = PartSchedule(8 * MiB, growth)
    sizes: list[int] = []
    n = 1
    while sizes.count(top_mib * MiB) < growth:  # one stage of the largest parts
        sizes.append(big.size_of(n))
        n += 1
    mib = sum(sizes) // MiB
    out: list[Result] = []
    # The baseline never grows (10,000 parts of 8 MiB): longer than 7.8 GiB, the default would.
    streams = [("8 MiB stage", PartSchedule(8 * MiB, 10000), ["--part-growth-every", "10000"]),
               ("big parts", big, ["--part-growth-every", str(growth)])]
    if kind == "seaweed" and top_mib <= 1024:  # (the 4 GiB case: disk for one stream only)
        streams.append(("big parts, crc32c", big,
                        ["--part-growth-every", str(growth), "--checksum", "crc32c"]))
    for name, schedule, args in streams:
        free = shutil.disk_usage(tempfile.gettempdir()).free
        if kind == "seaweed" and free < 3 * mib * MiB:
            raise SystemExit(f"{name}: {free / GiB:.0f} GiB free in {tempfile.gettempdir()}, "
                             f"need {3 * mib / 1024:.0f} GiB for a {mib} MiB stream on SeaweedFS")
        server: Server = SeaweedServer() if kind == "seaweed" else MotoServer()
        server.start()
        try:
            bucket = f"bigdisk-{len(out)}-{os.getpid()}"
            server.client().create_bucket(Bucket=bucket)
            out.append(stream(server, name, top_mib, bucket, mib, schedule, args))
        finally:
            server.stop()
        print(f"  {kind} {name} up to {top_mib} MiB parts: {out[-1].rate:.0f} MiB/s",
              file=sys.stderr, flush=True)
    return out


def table(results: list[Result]) -> str:
    lines = ["| server | largest part | stream | MiB | MiB/s (whole, to close) | MiB/s of the "
             "last stage (to close) | whole vs 8 MiB stage | peak RSS per stage (MiB) | VmHWM "
             "(MiB) | CPU-s/GiB, mount | CPU-s/GiB, server | server disk (MiB) | big parts "
             "proven by |", "|---|--:|---|--:|--:|--:|--:|---|--:|--:|--:|--:|---|"]
    base: dict[tuple[str, int], float] = {}
    for r in results:
        if r.stream == "8 MiB stage":
            base[r.server, r.top] = r.rate
        ratio = r.rate / base[r.server, r.top] if (r.server, r.top) in base else float("nan")
        peaks = ", ".join(f"{r.peak_by_stage[s] / MiB:.0f}" for s in sorted(r.peak_by_stage))
        lines.append(f"| {r.server} | {r.top} MiB | {r.stream} | {r.mib} | {r.rate:.0f} | "
                     f"{r.last_rate:.0f} | {ratio:.2f} | {peaks} | {r.hwm / MiB:.0f} | "
                     f"{r.per_gib(r.mount_cpu):.2f} | {r.per_gib(r.server_cpu):.2f} | "
                     f"{r.disk / MiB:.0f} | {r.proof} |")
    return "\n".join(lines)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def write_section(out: Path, top: int, text: str) -> None:
    """Replace the block of largest part `top` in `out` (each largest part has its own, so
    one can be measured again alone)."""
    old = out.read_text()
    begin, end = BEGIN.format(top=top), END.format(top=top)
    if begin not in old or end not in old:
        raise SystemExit(f"{out}: no {begin} ... {end} block to replace")
    head, rest = old.split(begin, 1)
    out.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tops", default="512,4096",
                   help="largest parts to reach, MiB, comma-separated (default 512,4096)")
    p.add_argument("--servers", default="seaweed,moto")
    p.add_argument("--growth-4g", type=int, default=1, help="--part-growth-every for tops "
                   "above 1024 MiB (default 1: 8, 16, ... 2048, 4096 MiB, an 8 GiB stream; "
                   "SeaweedFS keeps the deleted temporary objects on disk)")
    p.add_argument("--out", type=Path, help="markdown file whose bigdisk block is replaced")
    ns = p.parse_args()
    results: list[Result] = []
    for top in (int(t) for t in ns.tops.split(",")):
        t0, load0 = time.monotonic(), loadavg()
        these: list[Result] = []
        for kind in ns.servers.split(","):
            if kind == "moto" and top > 1024:
                print(f"  moto skipped for {top} MiB parts (it keeps objects in memory)",
                      file=sys.stderr)
                continue
            these += run(kind, top, ns.growth_4g if top > 1024 else 2)
            print(table(results + these), flush=True)
        results += these
        minutes = (time.monotonic() - t0) / 60
        text = (f"Measured {datetime.date.today().isoformat()} by `python bench/bigdisk.py "
                f"--tops {top} --servers {ns.servers}` in {minutes:.0f} min (load average "
                f"{load0} at the start, {loadavg()} at the end; one run per stream, each on a "
                f"fresh server).\n\n{table(these)}")
        if ns.out:
            write_section(ns.out, top, text)
            print(f"wrote the {top} MiB block of {ns.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
