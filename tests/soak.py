"""`make soak`: writers and readers at once through a real mount, behind the fault proxy,
for some minutes; every object is checked in the bucket directly. Writes docs/reliability.md.

A write that exits non-zero is a loud failure (allowed: the writer was told); a write that
exits 0 with an object that is not its bytes is a corrupt object (the goal is 0); a read that
returns bytes other than the object's is a wrong read (goal 0); an operation that outlives
its timeout is a hang (goal 0).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.faultproxy import FaultProxy  # noqa: E402
from tests.seaweed import SeaweedServer  # noqa: E402

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
OP_TIMEOUT = 300  # seconds; an operation taking longer is counted as a hang


class Soak:
    def __init__(self, mnt: Path, server: SeaweedServer, bucket: str, source: Path) -> None:
        self.mnt, self.bucket, self.source = mnt, bucket, source
        self.s3 = server.client()
        self.data = source.read_bytes()
        self.lock = threading.Lock()
        self.stats: collections.Counter[str] = collections.Counter()
        self.written: dict[str, str] = {}  # key -> md5 of what was written (exit 0)
        self.stop_at = 0.0

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.stats[what] += n

    def writer(self, wid: int, rng: random.Random) -> None:
        (self.mnt / f"w{wid}").mkdir(exist_ok=True)
        n = 0
        while time.monotonic() < self.stop_at:
            n += 1
            key = f"w{wid}/f{n}.bin"
            size = rng.randint(1, 24) * MiB + rng.randint(0, MiB)
            start = rng.randint(0, len(self.data) - size)
            want = hashlib.md5(self.data[start:start + size]).hexdigest()
            try:
                r = subprocess.run(
                    ["dd", f"if={self.source}", f"of={self.mnt / key}", "bs=1M",
                     f"skip={start}", f"count={size}", "iflag=skip_bytes,count_bytes",
                     "status=none"], capture_output=True, timeout=OP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.count("hangs")
                continue
            self.count("writes")
            if r.returncode != 0:
                self.count("loud write failures")
                continue
            got = hashlib.md5(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
            if got.hexdigest() == want:
                self.count("objects verified")
                self.count("bytes written", size)
                with self.lock:
                    self.written[key] = want
            else:
                self.count("corrupt objects")

    def reader(self, rng: random.Random) -> None:
        while time.monotonic() < self.stop_at:
            with self.lock:
                choices = list(self.written.items())
            if not choices:
                time.sleep(0.5)
                continue
            key, want = rng.choice(choices)
            t0 = time.monotonic()
            try:
                digest = hashlib.md5()
                with open(self.mnt / key, "rb") as f:
                    while chunk := f.read(MiB):
                        digest.update(chunk)
                        if time.monotonic() - t0 > OP_TIMEOUT:
                            raise TimeoutError
            except TimeoutError:
                self.count("hangs")
                continue
            except OSError:
                self.count("loud read failures")
                continue
            self.count("reads")
            self.count("reads right" if digest.hexdigest() == want else "wrong reads")


def md5_of_object(s3: object, bucket: str, key: str) -> str:
    digest = hashlib.md5()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]  # type: ignore[attr-defined]
    while chunk := body.read(8 * MiB):
        digest.update(chunk)
    return digest.hexdigest()


def big_write(mnt: Path, s3: object, bucket: str, key: str, big: Path, want: str,
              stats: collections.Counter[str], during: threading.Thread | None = None,
              dd_done: threading.Event | None = None) -> None:
    """One dd of `big` through the mount, checked in the bucket (MD5 of the whole object)."""
    stats["runs"] += 1
    if during is not None:
        during.start()
    try:
        r = subprocess.run(["dd", f"if={big}", f"of={mnt / key}", "bs=1M", "status=none"],
                           capture_output=True, timeout=OP_TIMEOUT * 3)
    except subprocess.TimeoutExpired:
        stats["hangs"] += 1
        return
    finally:
        if dd_done is not None:
            dd_done.set()
        if during is not None:
            during.join()
    if r.returncode != 0:
        stats["loud write failures"] += 1
        return
    if md5_of_object(s3, bucket, key) == want:
        stats["objects verified"] += 1
        stats["bytes written"] += big.stat().st_size
    else:
        stats["corrupt objects"] += 1


def single_stream_phases(mnt: Path, proxy: FaultProxy, s3: object, bucket: str, big: Path,
                         runs: int, outage: float) -> dict[str, collections.Counter[str]]:
    """`runs` dd's of `big` with 10% of requests failing, then one with an outage of
    `outage` seconds in the middle."""
    want = hashlib.md5(big.read_bytes()).hexdigest()
    (mnt / "big").mkdir(exist_ok=True)
    errors: collections.Counter[str] = collections.Counter()
    proxy.error_rate = 0.10
    for n in range(runs):
        big_write(mnt, s3, bucket, f"big/errors{n}.bin", big, want, errors)
    proxy.clear()
    out: collections.Counter[str] = collections.Counter()

    start = proxy.counts["requests"]
    dd_done = threading.Event()

    def blackout() -> None:
        while proxy.counts["requests"] < start + 6:  # the upload is under way
            if dd_done.wait(0.05):
                return
        proxy.blackout_until = time.monotonic() + outage
        out["outages"] += 1

    big_write(mnt, s3, bucket, "big/outage.bin", big, want, out,
              threading.Thread(target=blackout), dd_done)
    proxy.clear()
    happened = "" if out["outages"] else " (it ended before the outage began: not a test)"
    return {f"dd of {big.stat().st_size >> 20} MiB, 10% of requests failing": errors,
            f"dd of {big.stat().st_size >> 20} MiB, S3 unreachable for {outage:g} s in the "
            f"middle{happened}": out}


def read_whole(path: Path) -> tuple[str | None, float]:
    """(MD5 of the file read through the mount, or None on an error), and the seconds taken."""
    t0 = time.monotonic()
    digest = hashlib.md5()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(MiB):
                digest.update(chunk)
    except OSError:
        return None, time.monotonic() - t0
    return digest.hexdigest(), time.monotonic() - t0


def trust_phases(mnt: Path, proxy: FaultProxy, written: dict[str, str], log: Path,
                 reads: int) -> list[tuple[str, str]]:
    """Faults a checksum or a timeout must catch, on objects the soak wrote: a bit flipped in
    every GET body, S3 silent for 10 s, HEAD over-reporting sizes by one byte."""
    rng = random.Random(11)
    keys = rng.sample(sorted(written), min(reads, len(written)))
    rows = []
    proxy.flip_gets = True
    results = [read_whole(mnt / k) for k in keys]
    proxy.clear()
    eio = sum(r[0] is None for r in results)
    wrong = sum(r[0] is not None and r[0] != written[k] for k, r in zip(keys, results,
                                                                       strict=True))
    rows.append((f"one bit flipped in every GET body: whole reads of {len(keys)} objects "
                 "(1-25 MiB, single-part and multipart)",
                 f"{eio} EIO, **{wrong} wrong**, {len(keys) - eio - wrong} right"))
    before = log.read_text(errors="replace").count("S3 stall: ")
    proxy.hang_until = time.monotonic() + 10
    with_threads: list[tuple[str | None, float]] = []
    threads = [threading.Thread(target=lambda k=k: with_threads.append(read_whole(mnt / k)))
               for k in keys[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(OP_TIMEOUT)
    proxy.clear()
    text = log.read_text(errors="replace")
    warned = text.count("S3 stall: ") - before
    over = [float(x) for x in re.findall(r"S3 stall over: .* after ([0-9.]+) s", text)[-warned:]]
    ok = sum(r[0] is not None for r in with_threads)
    rows.append(("S3 silent for 10 s (connections accepted, never answered) during 4 reads",
                 f"{ok}/4 reads right after {max(r[1] for r in with_threads):.1f} s; "
                 f"{warned} stall warnings, one per request waiting; stalls lasted "
                 f"{min(over, default=0):.1f}-{max(over, default=0):.1f} s"))
    proxy.head_extra_bytes = 1
    lies = [read_whole(mnt / k) for k in keys[:5]]
    proxy.clear()
    right = sum(r[0] == written[k] for k, r in zip(keys, lies, strict=False))
    failed = [r[1] for r in lies if r[0] is None]
    rows.append(("HEAD reporting one byte more than the object has: 5 reads (a size the "
                 "mount took from a listing does not lie, and reads right)",
                 f"{len(failed)} EIO (slowest after {max(failed, default=0):.2f} s), "
                 f"{right} right, **{len(lies) - len(failed) - right} wrong**"))
    return rows


def status_json(mnt: Path) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "s3mount.cli", "status", str(mnt), "--json"],
                       capture_output=True, text=True, timeout=30)
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--writers", type=int, default=16)
    ap.add_argument("--readers", type=int, default=16)
    ap.add_argument("--error-rate", type=float, default=0.10)
    ap.add_argument("--big-runs", type=int, default=3,
                    help="dd's of 1 GiB with 10%% of requests failing, before the mix")
    ap.add_argument("--big-size", type=int, default=1024, metavar="MiB")
    ap.add_argument("--outage", type=float, default=60, metavar="SECONDS")
    ap.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    ap.add_argument("--trust-reads", type=int, default=20,
                    help="objects read whole with a bit flipped in every GET body")
    args = ap.parse_args()
    faults = {"error_rate": args.error_rate, "reset_rate": 0.02, "truncate_rate": 0.05}
    server = SeaweedServer().start()
    source = Path("/dev/shm") / f"s3mount-soak-{os.getpid()}.bin"
    source.write_bytes(os.urandom(64 * MiB))
    big = Path("/dev/shm") / f"s3mount-soak-big-{os.getpid()}.bin"
    with open(big, "wb") as f:
        for _ in range(args.big_size):
            f.write(os.urandom(MiB))
    work = Path(tempfile.mkdtemp(prefix="s3mount-soak-"))
    mnt = work / "mnt"
    mnt.mkdir()
    proc = None
    try:
        bucket = "soak"
        server.client().create_bucket(Bucket=bucket)
        with FaultProxy(server.endpoint_url) as proxy:
            with open(work / "mount.log", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "s3mount.cli", bucket, str(mnt), "--foreground",
                     "--endpoint-url", proxy.url], stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, **server.env()})
            deadline = time.monotonic() + 30
            while not os.path.ismount(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"mount failed: {(work / 'mount.log').read_text()}")
                time.sleep(0.1)
            t_single = time.monotonic()
            phases = single_stream_phases(mnt, proxy, server.client(), bucket, big,
                                          args.big_runs, args.outage)
            single_elapsed = time.monotonic() - t_single
            single_hwm = vm_hwm_mib(proc.pid)
            for name, value in faults.items():
                setattr(proxy, name, value)
            soak = Soak(mnt, server, bucket, source)
            soak.stop_at = time.monotonic() + args.minutes * 60
            rng = random.Random(7)
            threads = [threading.Thread(target=soak.writer, args=(i, random.Random(rng.random())))
                       for i in range(args.writers)]
            threads += [threading.Thread(target=soak.reader, args=(random.Random(rng.random()),))
                        for _ in range(args.readers)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(args.minutes * 60 + 2 * OP_TIMEOUT)
                if t.is_alive():
                    soak.count("hangs")
            elapsed = time.monotonic() - t0
            proxy.clear()
            hwm = vm_hwm_mib(proc.pid)
            counts = dict(proxy.counts)
            health = status_json(mnt)
            trust = trust_phases(mnt, proxy, soak.written, work / "mount.log", args.trust_reads)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        if proc is not None:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()
        source.unlink(missing_ok=True)
        big.unlink(missing_ok=True)
    text = report(soak.stats, counts, faults, args, elapsed, hwm, phases, single_elapsed,
                  single_hwm, health, trust)
    Path(args.out).write_text(text)
    print(text)
    bad = soak.stats["corrupt objects"] + soak.stats["wrong reads"] + soak.stats["hangs"]
    bad += sum(c["corrupt objects"] + c["hangs"] for c in phases.values())
    return 1 if bad else 0


def report(stats: collections.Counter[str], proxy: dict[str, int], faults: dict[str, float],
           args: argparse.Namespace, elapsed: float, hwm: float,
           phases: dict[str, collections.Counter[str]], single_elapsed: float,
           single_hwm: float, health: dict[str, Any], trust: list[tuple[str, str]]) -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rows = [("writes (dd of 1-25 MiB)", stats["writes"]),
            ("objects verified in the bucket (MD5 of the whole object)",
             stats["objects verified"]),
            ("bytes written and verified", f"{stats['bytes written'] / MiB:.0f} MiB"),
            ("loud write failures (dd exited non-zero)", stats["loud write failures"]),
            ("**corrupt objects** (dd exited 0, object differs)", stats["corrupt objects"]),
            ("reads through the mount", stats["reads"]),
            ("reads that returned the object's bytes", stats["reads right"]),
            ("loud read failures (EIO)", stats["loud read failures"]),
            ("**wrong reads**", stats["wrong reads"]),
            ("**hangs** (an operation over 300 s)", stats["hangs"]),
            ("whole reads the mount verified against the ETag (`s3mount status`)",
             f"{health['reads']['verified_objects']} "
             f"({health['reads']['verified_bytes'] / MiB:.0f} MiB), "
             f"{health['reads']['failed_objects']} failed"),
            ("S3 stall episodes (one warning each) / retries by kind",
             f"{health['s3']['stalls']} / "
             + ", ".join(f"{k} {v}" for k, v in sorted(health['s3']['retries'].items())))]
    injected = ", ".join(f"{k} {v}" for k, v in sorted(proxy.items()))
    single = [f"| {name} | {c['runs']} | {c['bytes written'] / MiB:.0f} MiB | "
              f"{c['objects verified']} | {c['loud write failures']} | "
              f"**{c['corrupt objects']}** | **{c['hangs']}** |" for name, c in phases.items()]
    return "\n".join([
        "# Reliability", "",
        f"Measured {datetime.date.today().isoformat()} by `make soak` "
        f"({args.minutes:g} minutes, {args.writers} writers and {args.readers} readers at "
        f"once). Machine: {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}; SeaweedFS on the same host, behind the fault proxy of "
        "`tests/faultproxy.py`.", "",
        "## One stream at a time", "",
        "| fault | runs | bytes written and verified | objects verified | loud failures "
        "| corrupt objects | hangs |", "|---|---|---|---|---|---|---|", *single, "",
        f"Elapsed {single_elapsed:.0f} s; peak RSS of the mount {single_hwm:.0f} MiB "
        f"(`--max-memory` 24 MiB).", "",
        f"## {args.writers} writers and {args.readers} readers at once", "",
        "Faults injected on every request: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.0%}" for k, v in faults.items())
        + f". The proxy saw: {injected}.", "",
        "| outcome | count |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
        f"Elapsed {elapsed:.0f} s; peak RSS of the mount over the whole soak {hwm:.0f} MiB. "
        "What the README says to expect: about 60 MiB for the process at idle, `--max-memory` "
        "24 MiB, `--read-memory` 128 MiB, up to 1 MiB per file operation in flight "
        f"({args.writers + args.readers} processes here, a reader with up to two requests "
        f"once the kernel reads ahead: about {args.writers + 2 * args.readers} MiB), and up "
        "to 4 MiB of read replies per file waiting to be hashed by verified reads "
        f"({4 * args.readers} MiB), so about "
        f"{60 + 24 + 128 + args.writers + 6 * args.readers} MiB.", "",
        "## Trust: faults only a checksum or a clock can catch", "",
        "Run after the mix, on objects it wrote, with no other fault injected.", "",
        "| fault | outcome |", "|---|---|", *[f"| {k} | {v} |" for k, v in trust], "",
        "`tests/test_trust.py` checks each of these on its own, and a server whose ETags are "
        "not MD5s (refused at mount start with advice; with checksums, or with `--verify "
        "read-back`, every write verified).", "",
        "The fast fault tests (`tests/test_faults.py`, part of `make test`) check each fault "
        "on its own: 10% errors and 5% resets during a dd, rewritten part ETags (caught every "
        "time: resent, or EIO at close), truncated GET bodies (the bytes read are right), a "
        "60 s outage (the writer waits, the object verifies), an outage past "
        "`--write-deadline` (close fails with EIO, no object), reads during an outage (EIO "
        "within `--read-deadline`), and an endpoint answering malformed XML with a huge "
        "header (one error line, no traceback).", ""])


if __name__ == "__main__":
    sys.exit(main())
