"""Faults between s3mount and S3 (a fault-injecting proxy, tests/faultproxy.py): the data in
the bucket is right, or the writer and reader get an error; never a wrong object, never
wrong bytes."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3mount.config import MiB
from s3mount.etag import stream_etag
from s3mount.schedule import PartSchedule
from tests.conftest import Mount, get, keys, open_uploads, put
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedServer

P = 5 * MiB
OUTAGE = 60  # seconds, as the issue asks: "a 60-second outage in the middle of a dd"


@pytest.fixture
def proxy(s3server: SeaweedServer) -> Iterator[FaultProxy]:
    with FaultProxy(s3server.endpoint_url) as p:
        yield p


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(64 * MiB + 12345))
    return src


def etag_of(path: Path) -> str:
    with open(path, "rb") as f:
        return stream_etag(f, PartSchedule(P))


def dd(src: Path, dst: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", "status=none"],
                          capture_output=True, text=True, timeout=300)


def test_proxy_passes_requests_through(proxy: FaultProxy, s3server: SeaweedServer,
                                       bucket: str) -> None:
    from tests.seaweed import s3_client

    env = s3server.env()
    client = s3_client(proxy.url, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    client.put_object(Bucket=bucket, Key="k", Body=b"through the proxy")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"through the proxy"
    assert client.head_object(Bucket=bucket, Key="k")["ContentLength"] == 17
    assert proxy.counts["requests"] == 3


def test_write_survives_errors_and_resets(mount_factory: Callable[..., Mount], proxy: FaultProxy,
                                          s3: Any, bucket: str, source: Path) -> None:
    """10% of requests answered 503 and 5% reset: the dd completes and the object verifies."""
    m = mount_factory(bucket, "--endpoint-url", proxy.url)
    proxy.error_rate, proxy.reset_rate = 0.10, 0.05
    assert dd(source, m.path / "f.bin").returncode == 0
    proxy.clear()
    assert proxy.counts["errors"] + proxy.counts["resets"] > 0
    head = s3.head_object(Bucket=bucket, Key="f.bin")
    assert head["ETag"].strip('"') == etag_of(source)
    assert hashlib.md5(get(s3, bucket, "f.bin")).digest() == hashlib.md5(
        source.read_bytes()).digest()
    assert open_uploads(s3, bucket) == []


def test_rewritten_part_etag_is_caught(mount_factory: Callable[..., Mount], proxy: FaultProxy,
                                       s3: Any, bucket: str, source: Path) -> None:
    m = mount_factory(bucket, "--endpoint-url", proxy.url)
    m.allowed_errors += ["never came back", "upload aborted", "flush", "release"]
    proxy.rewrite_part_etags = 2  # two bad answers: those parts are sent again
    assert dd(source, m.path / "ok.bin").returncode == 0
    assert proxy.counts["rewritten_etags"] == 2
    assert s3.head_object(Bucket=bucket, Key="ok.bin")["ETag"].strip('"') == etag_of(source)
    proxy.rewrite_part_etags = 10_000  # every answer wrong: close() fails, nothing stored
    r = dd(source, m.path / "bad.bin")
    assert r.returncode != 0 and "Input/output error" in r.stderr
    assert "bad.bin" not in keys(s3, bucket) and open_uploads(s3, bucket) == []


def test_reads_during_faults_are_right_or_fail(mount_factory: Callable[..., Mount],
                                               proxy: FaultProxy, s3: Any, bucket: str,
                                               source: Path) -> None:
    """Truncated bodies, 503s and resets on reads: the bytes read are the object's bytes."""
    data = source.read_bytes()
    put(s3, bucket, "r.bin", data)
    m = mount_factory(bucket, "--endpoint-url", proxy.url)
    m.allowed_errors += ["read", "GET"]
    proxy.truncate_next = 3
    proxy.truncate_rate, proxy.error_rate, proxy.reset_rate = 0.2, 0.05, 0.05
    with open(m.path / "r.bin", "rb") as f:
        got = f.read()
    proxy.clear()
    assert proxy.counts["truncated"] >= 3, proxy.counts
    assert hashlib.md5(got).digest() == hashlib.md5(data).digest()


def test_outage_past_the_write_deadline_fails_close_and_stores_nothing(
        mount_factory: Callable[..., Mount], proxy: FaultProxy, s3: Any, bucket: str) -> None:
    """S3 gone for longer than --write-deadline: a write or close() fails with EIO within
    the deadline (plus a backoff pause), the log says why, and no object or upload is left."""
    import time

    m = mount_factory(bucket, "--endpoint-url", proxy.url, "--write-deadline", "8")
    m.allowed_errors += ["PART", "PUT", "upload", "flush", "release", "abort", "COMPLETE",
                         "CREATE-UPLOAD"]
    fd = os.open(m.path / "cut.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    t0 = time.monotonic()
    try:
        os.write(fd, os.urandom(3 * MiB))
        proxy.blackout_until = time.monotonic() + 3600
        with pytest.raises(OSError) as failed:
            for _ in range(20):
                os.write(fd, os.urandom(MiB))
            os.close(fd)
            fd = -1
        assert failed.value.errno == errno.EIO
    finally:
        if fd >= 0:
            with pytest.raises(OSError):
                os.close(fd)
    elapsed = time.monotonic() - t0
    proxy.clear()
    assert elapsed < 8 + 15, elapsed
    assert "S3 failed for 8 s" in m.log()
    assert "cut.bin" not in keys(s3, bucket)
    assert open_uploads(s3, bucket) == []


def test_reads_during_an_outage_fail_within_the_read_deadline(
        mount_factory: Callable[..., Mount], proxy: FaultProxy, s3: Any, bucket: str) -> None:
    """A read that S3 cannot answer gives EIO within --read-deadline, never a hang; once S3
    is back the same file reads right."""
    import time

    data = os.urandom(3 * MiB)
    put(s3, bucket, "r.bin", data)
    m = mount_factory(bucket, "--endpoint-url", proxy.url, "--read-deadline", "5",
                      "--retries", "1000")
    m.allowed_errors += ["GET", "read"]
    with open(m.path / "r.bin", "rb") as f:
        assert f.read(4096) == data[:4096]
        proxy.blackout_until = time.monotonic() + 3600
        t0 = time.monotonic()
        with pytest.raises(OSError) as failed:
            f.seek(2 * MiB)
            f.read(4096)
        elapsed = time.monotonic() - t0
        assert failed.value.errno == errno.EIO
        assert 4 <= elapsed < 5 + 10, elapsed
    proxy.clear()
    assert "S3 failed for 5 s" in m.log()
    with open(m.path / "r.bin", "rb") as f:
        assert f.read() == data


def test_malformed_answers_are_errors_not_crashes() -> None:
    """An endpoint answering garbage: the mount refuses with one line, no traceback."""
    import socket
    import threading

    from tests.conftest import s3mount_cmd

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
                             b"X-Huge: " + b"a" * 60_000 + b"\r\nContent-Length: 15\r\n\r\n"
                             b"<not-xml<<</b>>")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        r = subprocess.run([*s3mount_cmd(), "bucket-x", "/tmp", "--endpoint-url", url,
                            "--print-config"], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "AWS_ACCESS_KEY_ID": "a",
                                "AWS_SECRET_ACCESS_KEY": "b"})
        assert r.returncode == 0  # print-config does not talk to S3
        r = subprocess.run([*s3mount_cmd(), "uploads", "list", "bucket-x", "--endpoint-url",
                            url], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "AWS_ACCESS_KEY_ID": "a",
                                "AWS_SECRET_ACCESS_KEY": "b"})
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        stop.set()
        t.join(5)
        srv.close()


def test_minute_long_outage_stalls_the_writer_then_finishes(
        mount_factory: Callable[..., Mount], proxy: FaultProxy, s3: Any, bucket: str,
        source: Path) -> None:
    """A 60 s outage in the middle of a dd: parts are retried (backoff, far past --retries,
    within --write-deadline), the writer waits on the write budget meanwhile, and the object
    verifies in the end."""
    import threading
    import time

    m = mount_factory(bucket, "--endpoint-url", proxy.url)

    def outage() -> None:
        while proxy.counts["PART"] < 2:  # the upload is under way (not the mount's warm-up)
            time.sleep(0.05)
        proxy.blackout_until = time.monotonic() + OUTAGE

    t = threading.Thread(target=outage, daemon=True)
    t.start()
    t0 = time.monotonic()
    assert dd(source, m.path / "o.bin").returncode == 0
    t.join(5)
    assert time.monotonic() - t0 >= OUTAGE  # it did wait out the outage
    assert proxy.counts["resets"] > 0
    assert s3.head_object(Bucket=bucket, Key="o.bin")["ETag"].strip('"') == etag_of(source)
    assert open_uploads(s3, bucket) == []
