"""The workloads, each twice: on a mounted directory (dd, cp, ls, find, bench.probe) and with the
raw boto3 client (bench.probe raw-*). Each returns its figure; any failure is a BenchError.

Writes are timed until the command returns *and* the object is in the bucket with its full size
(or all the small files are listed): a mount that uploads after close() (rclone with
--vfs-cache-mode writes) is not faster for it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import ClientError

from bench.systems import ROOT, BenchError, clean_env, run_cmd

if TYPE_CHECKING:
    from tests.seaweed import SeaweedServer

MiB = 1024 * 1024
KiB = 1024
POLL = 0.05  # seconds between checks that a write has reached the bucket
SEED = 20261122  # the random offsets, the same for every system and run

DATA_KEY = "data/big.bin"
LIST_PREFIX = "list/"
TREE_PREFIX = "tree/"
TTFB_PREFIX = "ttfb/"
SMALL_PREFIX = "small/"


@dataclass(frozen=True)
class Sizes:
    big_mib: int = 1024  # the sequential write and read; the random reads' file
    big_times: int = 4  # the big write: the file this many times through a pipe
    files: int = 1000  # created by cp -r
    file_kib: int = 4
    list_objects: int = 10_000  # ls -l
    find_entries: int = 1000  # files and directories under the find
    rand_reads: int = 200
    rand_kib: int = 256

    def size(self, mib: int) -> str:
        return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"

    @property
    def tree(self) -> tuple[int, int]:
        """(directories, files per directory) so that directories + files == find_entries."""
        dirs = max(1, self.find_entries // 25)
        return dirs, (self.find_entries - dirs) // dirs


FULL = Sizes()
QUICK = Sizes(big_mib=64, files=100, list_objects=1000, find_entries=100, rand_reads=50)


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_better: bool
    session: str  # which mount it is measured on: write, read, random, meta


# Throughput figures that also get the CPU time their process used per GiB moved: the mount
# process's user + system time (/proc/PID/stat) around the workload, the raw client's inside
# its probe. On a 2-core machine shared with the server, CPU taken by the client is taken from
# the server, and CPU-s/GiB varies far less than MiB/s when others use the machine.
CPU_OF = {"write": "write_cpu", "write_big": "write_big_cpu", "read": "read_cpu"}
CPU_UNIT = "CPU-s/GiB"


def moved_mib(sz: Sizes, key: str) -> int:
    """MiB a throughput workload moves."""
    return sz.big_mib * (sz.big_times if key == "write_big" else 1)


def figures(sz: Sizes) -> list[Figure]:
    dirs, per_dir = sz.tree
    big = sz.size(sz.big_mib * sz.big_times)
    return [
        Figure("write", f"sequential write {sz.size(sz.big_mib)}", "MiB/s", True, "write"),
        Figure("write_cpu", f"sequential write {sz.size(sz.big_mib)}: CPU of the process",
               CPU_UNIT, False, "write"),
        Figure("write_big", f"sequential write {big}", "MiB/s", True, "write"),
        Figure("write_big_cpu", f"sequential write {big}: CPU of the process", CPU_UNIT, False,
               "write"),
        Figure("create", f"create {sz.files:,} files of {sz.file_kib} KiB", "s", False, "write"),
        Figure("read", f"sequential cold read {sz.size(sz.big_mib)}", "MiB/s", True, "read"),
        Figure("read_cpu", f"sequential cold read {sz.size(sz.big_mib)}: CPU of the process",
               CPU_UNIT, False, "read"),
        Figure("randread", f"random {sz.rand_kib} KiB reads ({sz.rand_reads} preads)",
               "ms per read", False, "random"),
        Figure("ttfb", "time to first byte (fresh mount, fresh object)", "ms", False, "meta"),
        Figure("ls", f"ls -l of {sz.list_objects:,} objects", "s", False, "meta"),
        Figure("find", f"find over {dirs + dirs * per_dir:,} entries", "s", False, "meta"),
        Figure("rss_write", "peak RSS, writes", "MiB", False, "write"),
        Figure("rss_read", "peak RSS, reads and listings", "MiB", False, "read"),
    ]


@dataclass
class Env:
    """What the workloads share: the server, a client, the sizes and the local source files."""

    server: SeaweedServer
    s3: Any
    sizes: Sizes
    src: Path  # big_mib of random bytes in /dev/shm
    small_dir: Path  # files x file_kib random files in /dev/shm
    data_bucket: str
    raw_rss: list[float] = field(default_factory=list)
    raw_cpu: list[float] = field(default_factory=list)  # CPU seconds of each raw transfer

    def timeout(self, mib: float) -> float:
        """For moving mib MiB: generous (10 MiB/s + a minute); it only catches hangs."""
        return 60 + mib / 10

    def meta_timeout(self, entries: int) -> float:
        return 60 + entries / 20


# --- sources and seeding ---------------------------------------------------------------------


def make_sources(shm: Path, sz: Sizes) -> tuple[Path, Path]:
    src = shm / "big.bin"
    with open(src, "wb") as f:
        for _ in range(sz.big_mib):
            f.write(os.urandom(MiB))
    small = shm / "small"
    small.mkdir()
    for i in range(sz.files):
        (small / f"f{i:05d}.bin").write_bytes(os.urandom(sz.file_kib * KiB))
    return src, small


def seed(env: Env) -> None:
    """The read bucket, with boto3 directly: the big file, the ls directory, the find tree."""
    sz = env.sizes
    s3 = env.server.client(Config(max_pool_connections=32))
    s3.create_bucket(Bucket=env.data_bucket)
    # The big file as a new user's boto3 (1.36+) or aws CLI stores it: their default checksums
    # send a CRC32 with every part, which the server keeps (composite) and verified reads use;
    # the test client sends none.
    seeder = env.server.client(Config(max_pool_connections=32,
                                      request_checksum_calculation="when_supported"))
    seeder.upload_file(str(env.src), env.data_bucket, DATA_KEY)
    seeder.close()
    dirs, per_dir = sz.tree
    keys = [f"{LIST_PREFIX}obj-{i:05d}" for i in range(sz.list_objects)]
    keys += [f"{TREE_PREFIX}d{d:03d}/f{f:03d}" for d in range(dirs) for f in range(per_dir)]
    body = b"x" * 100
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=env.data_bucket, Key=k, Body=body), keys))
    s3.close()


def ttfb_key(system: str, run: int) -> str:
    return f"{TTFB_PREFIX}{system}-{run}.bin"


def put_ttfb_object(env: Env, system: str, run: int) -> str:
    key = ttfb_key(system, run)
    env.s3.put_object(Bucket=env.data_bucket, Key=key, Body=os.urandom(MiB))
    return key


def drop_bucket(s3: Any, bucket: str) -> None:
    """Delete a write bucket and its objects (SeaweedFS frees the volumes of a deleted bucket)."""
    try:
        s3.delete_bucket(Bucket=bucket)
        return
    except ClientError:
        pass
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=bucket)


# --- waiting for the bucket ------------------------------------------------------------------


def wait_object(env: Env, bucket: str, key: str, size: int, deadline: float) -> None:
    while True:
        try:
            got = env.s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
            if got == size:
                return
            state = f"{got} bytes of {size}"
        except ClientError as exc:
            state = str(exc.response.get("Error", {}).get("Code", exc))
        if time.monotonic() > deadline:
            raise BenchError(f"{key} not in the bucket in time ({state})")
        time.sleep(POLL)


def count_files(env: Env, bucket: str, prefix: str) -> int:
    n = 0
    for page in env.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        n += sum(not o["Key"].endswith("/") for o in page.get("Contents", []))
    return n


def wait_files(env: Env, bucket: str, prefix: str, count: int, deadline: float) -> None:
    while (n := count_files(env, bucket, prefix)) != count:
        if time.monotonic() > deadline:
            raise BenchError(f"{n} of {count} files under {prefix} in the bucket in time")
        time.sleep(POLL * 4)


# --- on a mount ------------------------------------------------------------------------------


def fs_write(env: Env, mnt: Path, bucket: str, times: int) -> float:
    """dd bs=1M of the source (times > 1: that many copies through a pipe); MiB/s."""
    mib = env.sizes.big_mib * times
    key = f"write-{times}x.bin"
    dst = mnt / key
    if times == 1:
        cmd = ["dd", f"if={env.src}", f"of={dst}", "bs=1M", "status=none"]
    else:
        cat = " ".join([shlex.quote(str(env.src))] * times)
        cmd = ["bash", "-o", "pipefail", "-c",
               f"cat {cat} | dd of={shlex.quote(str(dst))} bs=1M iflag=fullblock status=none"]
    timeout = env.timeout(mib)
    t0 = time.monotonic()
    run_cmd(cmd, timeout)
    wait_object(env, bucket, key, mib * MiB, t0 + timeout)
    return mib / (time.monotonic() - t0)


def fs_create(env: Env, mnt: Path, bucket: str) -> float:
    """cp -r of the small files' directory into the mount; seconds."""
    timeout = env.meta_timeout(env.sizes.files) * 2
    t0 = time.monotonic()
    run_cmd(["cp", "-r", str(env.small_dir), str(mnt / SMALL_PREFIX.rstrip("/"))], timeout)
    wait_files(env, bucket, SMALL_PREFIX, env.sizes.files, t0 + timeout)
    return time.monotonic() - t0


_DD_BYTES = re.compile(r"^(\d+) bytes", re.MULTILINE)


def fs_read(env: Env, mnt: Path) -> float:
    """dd of the seeded big object to /dev/null; MiB/s."""
    mib = env.sizes.big_mib
    t0 = time.monotonic()
    out = run_cmd(["dd", f"if={mnt / DATA_KEY}", "of=/dev/null", "bs=1M"], env.timeout(mib))
    seconds = time.monotonic() - t0
    m = _DD_BYTES.search(out.stderr)
    if not m or int(m.group(1)) != mib * MiB:
        raise BenchError(f"dd read {m.group(1) if m else '?'} bytes of {mib * MiB}")
    return mib / seconds


def probe(args: list[str], timeout: float, env: dict[str, str] | None = None,
          stdin_from: str | None = None) -> dict[str, Any]:
    """Run bench.probe with `args`; `stdin_from`: a shell command piped into it."""
    cmd = [sys.executable, "-m", "bench.probe", *args]
    if stdin_from is not None:
        cmd = ["bash", "-o", "pipefail", "-c",
               f"{stdin_from} | {' '.join(shlex.quote(a) for a in cmd)}"]
    out = run_cmd(cmd, timeout, env=env, cwd=ROOT)
    try:
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"bench.probe {args[0]} printed {out.stdout[-200:]!r}") from None
    return result


def _rand_args(sz: Sizes) -> list[str]:
    return ["--size", str(sz.big_mib * MiB), "--block", str(sz.rand_kib * KiB),
            "--count", str(sz.rand_reads), "--seed", str(SEED)]


def fs_randread(env: Env, mnt: Path) -> float:
    sz = env.sizes
    r = probe(["fs-randread", str(mnt / DATA_KEY), *_rand_args(sz)],
              env.timeout(sz.rand_reads * sz.rand_kib / 1024) + 60)
    return float(r["seconds"]) / int(r["reads"]) * 1000


def fs_ttfb(env: Env, mnt: Path, key: str) -> float:
    return float(probe(["fs-ttfb", str(mnt / key)], 120)["seconds"]) * 1000


def _timed_listing(cmd: list[str], expect: int, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    out = run_cmd(cmd, timeout)
    seconds = time.monotonic() - t0
    got = len(out.stdout.splitlines())
    if got != expect:
        raise BenchError(f"{what} printed {got} lines, expected {expect}")
    return seconds


def fs_ls(env: Env, mnt: Path) -> float:
    n = env.sizes.list_objects
    # ls -l prints a "total" line, then one line per object
    return _timed_listing(["ls", "-l", str(mnt / LIST_PREFIX.rstrip("/"))], n + 1,
                          env.meta_timeout(n), "ls -l")


def fs_find(env: Env, mnt: Path) -> float:
    dirs, per_dir = env.sizes.tree
    # find prints the starting directory too
    return _timed_listing(["find", str(mnt / TREE_PREFIX.rstrip("/"))],
                          dirs + dirs * per_dir + 1, env.meta_timeout(dirs * per_dir), "find")


# --- with the raw client ---------------------------------------------------------------------


def raw_probe(env: Env, args: list[str], timeout: float,
              stdin_from: str | None = None) -> dict[str, Any]:
    r = probe(args, timeout, clean_env(env.server.env()), stdin_from)
    env.raw_rss.append(float(r["maxrss_mib"]))
    if "cpu_seconds" in r:
        env.raw_cpu.append(float(r["cpu_seconds"]))
    return r


def raw_write(env: Env, bucket: str, times: int) -> float:
    """upload_fileobj of the source; times > 1: of the same `cat` pipe as `fs_write`'s (both
    pay for it on the shared cores); MiB/s."""
    mib = env.sizes.big_mib * times
    key = f"write-{times}x.bin"
    if times == 1:
        r = raw_probe(env, ["raw-upload", bucket, key, "--src", str(env.src)],
                      env.timeout(mib))
    else:
        r = raw_probe(env, ["raw-upload", bucket, key, "--src", "-"], env.timeout(mib),
                      stdin_from="cat " + " ".join([shlex.quote(str(env.src))] * times))
    if r["bytes"] != mib * MiB:
        raise BenchError(f"uploaded {r['bytes']} bytes of {mib * MiB}")
    return mib / float(r["seconds"])


def raw_create(env: Env, bucket: str) -> float:
    r = raw_probe(env, ["raw-upload-dir", bucket, SMALL_PREFIX, "--src", str(env.small_dir)],
                  env.meta_timeout(env.sizes.files) * 2)
    return float(r["seconds"])


def raw_read(env: Env) -> float:
    mib = env.sizes.big_mib
    r = raw_probe(env, ["raw-download", env.data_bucket, DATA_KEY], env.timeout(mib))
    if r["bytes"] != mib * MiB:
        raise BenchError(f"downloaded {r['bytes']} bytes of {mib * MiB}")
    return mib / float(r["seconds"])


def raw_randread(env: Env) -> float:
    sz = env.sizes
    r = raw_probe(env, ["raw-randread", env.data_bucket, DATA_KEY, *_rand_args(sz)],
                  env.timeout(sz.rand_reads * sz.rand_kib / 1024) + 60)
    return float(r["seconds"]) / int(r["reads"]) * 1000


def raw_ttfb(env: Env, key: str) -> float:
    return float(raw_probe(env, ["raw-ttfb", env.data_bucket, key], 120)["seconds"]) * 1000


def raw_ls(env: Env) -> float:
    n = env.sizes.list_objects
    r = raw_probe(env, ["raw-list", env.data_bucket, LIST_PREFIX], env.meta_timeout(n))
    if r["entries"] != n:
        raise BenchError(f"listed {r['entries']} objects, expected {n}")
    return float(r["seconds"])


def raw_find(env: Env) -> float:
    dirs, per_dir = env.sizes.tree
    r = raw_probe(env, ["raw-list", env.data_bucket, TREE_PREFIX, "--recursive"],
                  env.meta_timeout(dirs * per_dir))
    if r["entries"] != dirs * per_dir:
        raise BenchError(f"listed {r['entries']} keys, expected {dirs * per_dir}")
    return float(r["seconds"])


# --- the sessions: what runs on one fresh mount ------------------------------------------------

Step = tuple[str, Callable[[Path | None], float]]


def session_steps(env: Env, kind: str, session: str, bucket: str, ttfb: str) -> list[Step]:
    """(figure key, workload) in order; the workload gets the mountpoint (None for raw)."""
    if kind == "raw":
        raw: dict[str, list[Step]] = {
            "write": [("write", lambda _: raw_write(env, bucket, 1)),
                      ("write_big", lambda _: raw_write(env, bucket, env.sizes.big_times)),
                      ("create", lambda _: raw_create(env, bucket))],
            "read": [("read", lambda _: raw_read(env))],
            "random": [("randread", lambda _: raw_randread(env))],
            "meta": [("ttfb", lambda _: raw_ttfb(env, ttfb)),
                     ("ls", lambda _: raw_ls(env)),
                     ("find", lambda _: raw_find(env))],
        }
        return raw[session]

    def on(fn: Callable[[Path], float]) -> Callable[[Path | None], float]:
        def step(mnt: Path | None) -> float:
            assert mnt is not None
            return fn(mnt)
        return step

    fs: dict[str, list[Step]] = {
        "write": [("write", on(lambda m: fs_write(env, m, bucket, 1))),
                  ("write_big", on(lambda m: fs_write(env, m, bucket, env.sizes.big_times))),
                  ("create", on(lambda m: fs_create(env, m, bucket)))],
        "read": [("read", on(lambda m: fs_read(env, m)))],
        "random": [("randread", on(lambda m: fs_randread(env, m)))],
        "meta": [("ttfb", on(lambda m: fs_ttfb(env, m, ttfb))),
                 ("ls", on(lambda m: fs_ls(env, m))),
                 ("find", on(lambda m: fs_find(env, m)))],
    }
    return fs[session]
