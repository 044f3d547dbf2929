"""Small programs the harness runs in a subprocess, under a timeout, and times from inside.

On a mount: the random 256 KiB reads and the time to first byte (the other workloads are dd, cp,
ls and find). For the raw S3 client: every workload, with boto3 as the mounts would use it
(8 MiB parts, concurrency 4). Each prints one JSON line: {"seconds": ..., "maxrss_mib": ...,
...}; the raw transfers add "cpu_seconds", the user + system CPU time of this process (all its
threads) over the timed part, as the harness measures a mount's from /proc. The raw client
reads its endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.

    python -m bench.probe fs-randread FILE --size BYTES --block BYTES --count N --seed N
    python -m bench.probe fs-ttfb FILE
    python -m bench.probe raw-upload BUCKET KEY --src FILE [--repeat N]   (FILE - : stdin)
    python -m bench.probe raw-upload-dir BUCKET PREFIX --src DIR
    python -m bench.probe raw-download BUCKET KEY
    python -m bench.probe raw-randread BUCKET KEY --size BYTES --block BYTES --count N --seed N
    python -m bench.probe raw-ttfb BUCKET KEY
    python -m bench.probe raw-list BUCKET PREFIX [--recursive]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
PART_SIZE = 8 * MiB
CONCURRENCY = 4


def random_offsets(size: int, block: int, count: int, seed: int) -> list[int]:
    """count distinct block-aligned offsets in [0, size), the same for every system."""
    slots = size // block
    return [i * block for i in random.Random(seed).sample(range(slots), min(count, slots))]


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, all threads."""
    t = os.times()
    return t.user + t.system


def fs_randread(path: str, size: int, block: int, count: int, seed: int) -> dict[str, Any]:
    offsets = random_offsets(size, block, count, seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.monotonic()
        for off in offsets:
            got = len(os.pread(fd, block, off))
            if got != block:
                raise SystemExit(f"short read at {off}: {got} of {block} bytes")
        seconds = time.monotonic() - t0
    finally:
        os.close(fd)
    return {"seconds": seconds, "reads": len(offsets)}


def fs_ttfb(path: str) -> dict[str, Any]:
    t0 = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        got = os.read(fd, 1)
        seconds = time.monotonic() - t0
    finally:
        os.close(fd)
    if len(got) != 1:
        raise SystemExit("read no byte")
    return {"seconds": seconds}


class Repeated(io.RawIOBase):
    """A file read `times` times in a row, as one stream that cannot seek (like a pipe)."""

    def __init__(self, path: str, times: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._left = times

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while True:
            n = self._f.readinto(buf)
            if n or self._left <= 1:
                return n
            self._left -= 1
            self._f.seek(0)

    def close(self) -> None:
        self._f.close()
        super().close()


def _client(pool: int = 10) -> Any:
    from botocore.config import Config

    from tests.seaweed import s3_client

    return s3_client(os.environ["AWS_ENDPOINT_URL"], os.environ["AWS_ACCESS_KEY_ID"],
                     os.environ["AWS_SECRET_ACCESS_KEY"], Config(max_pool_connections=pool))


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                          max_concurrency=CONCURRENCY)


def raw_upload(bucket: str, key: str, src: str, repeat: int) -> dict[str, Any]:
    s3, cfg = _client(), _transfer_config()
    stream: Any = (sys.stdin.buffer if src == "-" else  # a pipe, as `cat ... | dd` on a mount
                   open(src, "rb") if repeat == 1 else Repeated(src, repeat))  # noqa: SIM115
    with stream:
        t0, c0 = time.monotonic(), cpu_seconds()
        s3.upload_fileobj(stream, bucket, key, Config=cfg)
        seconds, cpu = time.monotonic() - t0, cpu_seconds() - c0
    return {"seconds": seconds, "cpu_seconds": cpu,
            "bytes": s3.head_object(Bucket=bucket, Key=key)["ContentLength"]}


def raw_upload_dir(bucket: str, prefix: str, src: str) -> dict[str, Any]:
    s3 = _client(CONCURRENCY)
    files = sorted(Path(src).iterdir())

    def put(path: Path) -> None:
        s3.put_object(Bucket=bucket, Key=prefix + path.name, Body=path.read_bytes())

    t0 = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(put, files))
    return {"seconds": time.monotonic() - t0, "files": len(files)}


class _Sink(io.RawIOBase):
    """/dev/null that counts: seekable, since s3transfer stalls writing 1 GiB into a stream that
    is not (it got stuck at 80 MiB), so the download goes the way a file's would."""

    def __init__(self) -> None:
        self.n = self.pos = self.end = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.end}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, b: Any) -> int:
        size = len(memoryview(b).cast("B"))
        self.n += size
        self.pos += size
        self.end = max(self.end, self.pos)
        return size


def raw_download(bucket: str, key: str) -> dict[str, Any]:
    s3, cfg = _client(), _transfer_config()
    sink = _Sink()
    t0, c0 = time.monotonic(), cpu_seconds()
    s3.download_fileobj(bucket, key, sink, Config=cfg)
    seconds, cpu = time.monotonic() - t0, cpu_seconds() - c0
    if sink.n != sink.end:
        raise SystemExit(f"wrote {sink.n} bytes for a {sink.end}-byte object")
    return {"seconds": seconds, "cpu_seconds": cpu, "bytes": sink.n}


def raw_randread(bucket: str, key: str, size: int, block: int, count: int,
                 seed: int) -> dict[str, Any]:
    s3 = _client()
    offsets = random_offsets(size, block, count, seed)
    t0 = time.monotonic()
    for off in offsets:
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={off}-{off + block - 1}")
        got = len(body["Body"].read())
        if got != block:
            raise SystemExit(f"short read at {off}: {got} of {block} bytes")
    return {"seconds": time.monotonic() - t0, "reads": len(offsets)}


def raw_ttfb(bucket: str, key: str) -> dict[str, Any]:
    s3 = _client()  # a fresh client, as a fresh mount: no connection yet
    t0 = time.monotonic()
    got = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].read()
    seconds = time.monotonic() - t0
    if len(got) != 1:
        raise SystemExit("read no byte")
    return {"seconds": seconds}


def raw_list(bucket: str, prefix: str, recursive: bool) -> dict[str, Any]:
    """ls -l: one level (keys and common prefixes); find: every key below prefix."""
    s3 = _client()
    kwargs: dict[str, str] = {"Bucket": bucket, "Prefix": prefix}
    if not recursive:
        kwargs["Delimiter"] = "/"
    count = 0
    t0 = time.monotonic()
    for page in s3.get_paginator("list_objects_v2").paginate(**kwargs):
        count += len(page.get("Contents", [])) + len(page.get("CommonPrefixes", []))
    return {"seconds": time.monotonic() - t0, "entries": count}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("op", choices=("fs-randread", "fs-ttfb", "raw-upload", "raw-upload-dir",
                                   "raw-download", "raw-randread", "raw-ttfb", "raw-list"))
    ap.add_argument("args", nargs="+")
    ap.add_argument("--src")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--size", type=int)
    ap.add_argument("--block", type=int)
    ap.add_argument("--count", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recursive", action="store_true")
    a = ap.parse_args(argv)
    p = a.args
    if a.op == "fs-randread":
        out = fs_randread(p[0], a.size, a.block, a.count, a.seed)
    elif a.op == "fs-ttfb":
        out = fs_ttfb(p[0])
    elif a.op == "raw-upload":
        out = raw_upload(p[0], p[1], a.src, a.repeat)
    elif a.op == "raw-upload-dir":
        out = raw_upload_dir(p[0], p[1], a.src)
    elif a.op == "raw-download":
        out = raw_download(p[0], p[1])
    elif a.op == "raw-randread":
        out = raw_randread(p[0], p[1], a.size, a.block, a.count, a.seed)
    elif a.op == "raw-ttfb":
        out = raw_ttfb(p[0], p[1])
    else:
        out = raw_list(p[0], p[1], a.recursive)
    out["maxrss_mib"] = maxrss_mib()
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
