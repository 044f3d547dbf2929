"""`make bench`: s3mount side by side with s3fs-fuse, rclone mount (--vfs-cache-mode off, and
writes) and the raw boto3 client, on one local SeaweedFS server.

Every system runs the same workloads (bench/workloads.py) on fresh mounts (bench/systems.py):
sequential writes of 1 GiB and 4 GiB, cp -r of 1,000 files of 4 KiB, a cold sequential read of
1 GiB, random 256 KiB reads, time to first byte, ls -l of 10,000 objects, find over 1,000
entries; and the peak RSS of the mount process. Each figure is the median of --runs runs; the
table and the chart go to docs/benchmarks.md and docs/benchmarks.png (bench/report.py).
A system that fails to mount or fails a workload is reported as "failed: reason".
--quick tries the harness with small sizes and one run, and writes to /tmp instead.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import machine  # noqa: E402
from bench.report import Meta, Results, chart, fmt, markdown  # noqa: E402
from bench.systems import (  # noqa: E402
    ROOT,
    SYSTEMS,
    BenchError,
    Mount,
    System,
    is_mounted,
    log_tail,
    unmount,
    version,
)
from bench.workloads import (  # noqa: E402
    CPU_OF,
    FULL,
    QUICK,
    Env,
    Step,
    drop_bucket,
    figures,
    make_sources,
    moved_mib,
    put_ttfb_object,
    seed,
    session_steps,
    ttfb_key,
)
from tests.seaweed import SeaweedServer  # noqa: E402

DATA_BUCKET = "bench-data"
SESSIONS = ("write", "read", "random", "meta")  # each on a fresh mount, in this order
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
KEPT_SECTION = "## Profiles and fixes"  # this section of the old report and all after it
QUICK_OUT = Path(tempfile.gettempdir()) / "s3mount-bench-quick.md"
PARTIAL_OUT = Path(tempfile.gettempdir()) / "s3mount-bench-partial.md"
ALWAYS_BIG = ("s3mount", "raw")  # the big write runs every run for these (see Bench)


def say(text: str) -> None:
    print(text, flush=True)


class Bench:
    def __init__(self, env: Env, systems: list[System], runs: int, work: Path,
                 big_runs: int) -> None:
        self.env, self.systems, self.runs, self.work = env, systems, runs, work
        self.big_runs = big_runs
        self.res = Results()
        self.figs = {f.key: f for f in figures(env.sizes)}
        self.notes: list[str] = []
        # The big write's ratio of these two is a target (issue 13): a median of every run.
        self.every_run = [s.name for s in systems if s.name in ALWAYS_BIG]
        if big_runs < runs:
            sz = env.sizes
            times = "once" if big_runs == 1 else f"{big_runs} times"
            titles = " and ".join(SYSTEMS[n].title for n in self.every_run)
            others = "each other system" if self.every_run else "each system"
            but = (f"; {titles} run it every run, since their ratio is a target"
                   if self.every_run else "")
            self.notes.append(
                f"The {sz.size(sz.big_mib * sz.big_times)} write runs {times} for {others} "
                f"(`--big-runs {big_runs}`), not {runs} times, to keep the whole run under 20 "
                f"minutes, and so does the peak RSS of its write mount, which includes it{but}.")

    def run(self) -> Results:
        for run in range(self.runs):
            # Each run starts with the next system: none is always first after the seed.
            turn = run % len(self.systems)
            for system in self.systems[turn:] + self.systems[:turn]:
                say(f"--- run {run + 1}/{self.runs}: {system.title}")
                rss: dict[str, list[float | None]] = {"rss_write": [], "rss_read": []}
                for session in SESSIONS:
                    key = "rss_write" if session == "write" else "rss_read"
                    rss[key].append(self.session(system, run, session))
                for key, values in rss.items():
                    if values and all(v is not None for v in values):
                        self.res.add(system.name, key, max(v for v in values if v is not None))
        for system in self.systems:
            for key in ("rss_write", "rss_read"):
                if not self.res.runs(system.name, key):
                    self.res.fail(system.name, key, "not measured: a workload of that mount "
                                  "failed in every run")
        return self.res

    def session(self, system: System, run: int, session: str) -> float | None:
        """Run one session's workloads on a fresh mount; the mount's peak RSS, or None unless
        every workload of the session ran (none skipped) and passed."""
        name = system.name
        rss_key = "rss_write" if session == "write" else "rss_read"
        all_steps = session_steps(self.env, system.kind, session, "", "")
        skip = {"write_big"} if run >= self.big_runs and name not in self.every_run else set()
        keys = [k for k, _ in all_steps if not self.res.failed(name, k) and k not in skip]
        if not keys:
            return None
        failed_before = len(self.res.errors.get(name, {}))
        bucket = f"bench-w-{name}-{run}" if session == "write" else self.env.data_bucket
        ttfb = ttfb_key(name, run)
        scratch = self.work / f"scratch-{name}-{run}-{session}"
        scratch.mkdir()
        try:
            try:
                if session == "write":
                    self.env.s3.create_bucket(Bucket=bucket)
                if session == "meta" and "ttfb" in keys:
                    put_ttfb_object(self.env, name, run)
            except Exception as exc:  # noqa: BLE001 - the server refused: these figures fail
                for key in keys:
                    self._fail(name, key, f"preparing the {session} bucket: {exc}")
                return None
            steps = [(k, fn) for k, fn in session_steps(self.env, system.kind, session, bucket,
                                                        ttfb) if k in keys]
            if system.kind == "raw":
                self.env.raw_rss.clear()
                for key, fn in steps:
                    self.step(system, key, partial(fn, None), None)
                rss = max(self.env.raw_rss, default=None)
            else:
                rss = self.mounted(system, run, session, bucket, scratch, steps)
        finally:
            if session == "write":
                with contextlib.suppress(Exception):
                    drop_bucket(self.env.s3, bucket)
            shutil.rmtree(scratch, ignore_errors=True)
        if len(self.res.errors.get(name, {})) > failed_before or len(keys) < len(all_steps):
            return None
        if rss is None:
            self.res.fail(name, rss_key, "no peak RSS: the process was gone before it was read")
        return rss

    def mounted(self, system: System, run: int, session: str, bucket: str, scratch: Path,
                steps: list[Step]) -> float | None:
        log = self.work / f"{system.name}.log"
        mnt = self.work / f"mnt-{system.name}-{run}-{session}"
        rss_key = "rss_write" if session == "write" else "rss_read"
        try:
            try:
                mount = Mount(system, self.env.server, bucket, mnt, scratch, log)
            except FileNotFoundError as exc:
                raise BenchError(f"{exc.filename} is not installed (make bench-deps)") from None
        except BenchError as exc:
            say(f"    {session} mount: FAILED: {exc}")
            for key, _ in steps:
                self._fail(system.name, key, str(exc))
            self.res.fail(system.name, rss_key, str(exc))
            return None
        try:
            for key, fn in steps:
                self.step(system, key, partial(fn, mnt), mount)
        finally:
            rss = mount.stop()
        say(f"    {session} mount: peak RSS " + ("-" if rss is None else f"{rss:.0f} MiB"))
        return rss

    def step(self, system: System, key: str, fn: Callable[[], float],
             mount: Mount | None) -> None:
        fig = self.figs[key]
        # The server's dirty pages (the seed's, the last workload's) go to disk now, not
        # during this workload, where the kernel's writeback would take CPU from whichever
        # system comes next.
        os.sync()
        t0 = time.monotonic()
        self.env.raw_cpu.clear()
        try:
            if mount is not None:
                mount.check()
            cpu0 = mount.cpu_seconds() if mount is not None else None
            quiet0 = machine.snapshot()
            value = fn()
            cpu = self._cpu_used(mount, cpu0)
            noise = machine.noise(quiet0, machine.snapshot())
        except BenchError as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - any surprise is one failed figure
            reason = f"{type(exc).__name__}: {exc}"
        else:
            self.res.add(system.name, key, value)
            self.res.noise.setdefault(system.name, {}).setdefault(key, []).append(noise)
            say(f"    {fig.label}: {fmt(value)} {fig.unit} ({time.monotonic() - t0:.1f} s; "
                f"{noise.brief()})")
            if key in CPU_OF:
                self._add_cpu(system, key, cpu)
            return
        if key in CPU_OF:
            self.res.fail(system.name, CPU_OF[key], f"{fig.label} failed")
        if mount is not None and mount.proc.poll() is not None and "mount process" not in reason:
            reason += f" (mount process exited with {mount.proc.returncode})"
        self.res.fail(system.name, key, reason)
        say(f"    {fig.label}: FAILED: {reason}")
        if mount is not None:
            say(f"      log tail: {log_tail(mount.log, 5)}")


    def _fail(self, name: str, key: str, reason: str) -> None:
        """A figure failed, and so did the CPU time measured with it."""
        self.res.fail(name, key, reason)
        if key in CPU_OF:
            self.res.fail(name, CPU_OF[key], reason)

    def _cpu_used(self, mount: Mount | None, before: float | None) -> float | None:
        """CPU seconds the mount process (or the raw probe) used during the last workload."""
        if mount is None:
            return self.env.raw_cpu[-1] if self.env.raw_cpu else None
        after = mount.cpu_seconds()
        return None if before is None or after is None else after - before

    def _add_cpu(self, system: System, key: str, cpu: float | None) -> None:
        cpu_key = CPU_OF[key]
        if cpu is None:
            self.res.fail(system.name, cpu_key, "no CPU time: the process was gone")
            return
        per_gib = cpu / (moved_mib(self.env.sizes, key) / 1024)
        self.res.add(system.name, cpu_key, per_gib)
        say(f"    {self.figs[cpu_key].label}: {fmt(per_gib)} {self.figs[cpu_key].unit} "
            f"({cpu:.2f} s)")


def versions(systems: list[System], server: SeaweedServer) -> list[str]:
    import boto3

    from tests.seaweed import find_weed

    out = []
    names = {s.name for s in systems}
    if "s3mount" in names:
        out.append(version([sys.executable, "-m", "s3mount.cli", "--version"]))
    if "s3fs" in names:
        out.append(version(["s3fs", "--version"]).replace("Amazon Simple Storage Service "
                                                          "File System ", "s3fs "))
    if names & {"rclone", "rclone-writes"}:
        out.append(version(["rclone", "version"]))
    out.append(f"boto3 {boto3.__version__}")
    out.append("SeaweedFS " + version([find_weed(), "version"]).replace("version ", ""))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="runs per figure, the median is reported "
                    "(default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help=f"small sizes ({QUICK.big_mib} MiB, {QUICK.files} files, "
                    f"{QUICK.list_objects} objects), 1 run, output to {QUICK_OUT}")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)")
    ap.add_argument("--big-runs", type=int, default=1,
                    help="runs of the 4 GiB write (and so of the write mount's peak RSS), at "
                    "most --runs (default 1: it takes about a minute per system); s3mount and "
                    "raw boto3 run it every run, their ratio being a target")
    ap.add_argument("--out", type=Path, help=f"markdown report; the chart goes next to it as "
                    f".png (default {DEFAULT_OUT.relative_to(ROOT)}; with --quick {QUICK_OUT}, "
                    f"with a subset of --systems {PARTIAL_OUT})")
    args = ap.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        ap.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    args.systems = [SYSTEMS[n] for n in SYSTEMS if n in names]
    # docs/ only from a full run: a quick or partial one goes to /tmp unless --out says otherwise
    partial = len(args.systems) < len(SYSTEMS)
    args.out = args.out or (QUICK_OUT if args.quick else PARTIAL_OUT if partial else DEFAULT_OUT)
    if args.runs < 1 or args.big_runs < 1:
        ap.error("--runs and --big-runs must be at least 1")
    return args


def cleanup(work: Path, shm: Path, server: SeaweedServer | None) -> None:
    for mnt in sorted(work.glob("mnt-*")):
        if is_mounted(mnt):
            unmount(mnt)
    if server is not None:
        server.stop()
    shutil.rmtree(shm, ignore_errors=True)
    if any(is_mounted(m) for m in work.glob("mnt-*")):
        say(f"warning: a mount under {work} would not go away; not removing {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # kill PID cleans up too, as Ctrl-C does
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started with & by a script
        signal.signal(signal.SIGINT, _interrupt)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sizes = QUICK if args.quick else FULL
    start = time.monotonic()
    date = datetime.date.today().isoformat()
    work = Path(tempfile.mkdtemp(prefix="s3mount-bench-"))
    shm = Path(tempfile.mkdtemp(prefix="s3mount-bench-", dir="/dev/shm"))
    server: SeaweedServer | None = None
    try:
        say(f"sources in {shm}, mounts in {work}")
        src, small = make_sources(shm, sizes)
        server = SeaweedServer().start()
        env = Env(server, server.client(), sizes, src, small, DATA_BUCKET)
        say(f"SeaweedFS at {server.endpoint_url}; seeding {DATA_BUCKET}")
        t0 = time.monotonic()
        seed(env)
        say(f"seeded in {time.monotonic() - t0:.0f} s")
        vers = versions(args.systems, server)
        bench = Bench(env, args.systems, args.runs, work, min(args.big_runs, args.runs))
        res = bench.run()
    finally:
        cleanup(work, shm, server)
    minutes = (time.monotonic() - start) / 60
    meta = Meta(date, args.runs, args.quick, sizes, minutes, vers, bench.notes)
    figs = figures(sizes)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    try:
        chart(res, figs, args.systems, meta, png)
        chart_link: str | None = png.name
    except ImportError as exc:
        say(f"no chart: {exc}")
        chart_link = None
    text = markdown(res, figs, args.systems, meta, chart_link)
    if out.exists() and KEPT_SECTION in (old := out.read_text()):
        # Written by hand from profiles (how a miss was explained or fixed): kept as it is.
        text = text.rstrip("\n") + "\n\n" + old[old.index(KEPT_SECTION):]
    out.write_text(text)
    say("")
    say(text)
    say(f"wrote {out} and {png if chart_link else 'no chart'} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
