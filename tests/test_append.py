"""Appending to an existing object through a real mount, on SeaweedFS and on moto's server,
with a fault proxy between the mount and the server (it counts the requests and the bytes of
GETs, and rewrites copy answers): the old object's parts are copied by the server
(UploadPartCopy) and proven by their MD5s against its ETag, not read back; a small object is
read back and sent again; a copy answer that lies fails the append and leaves the old object
as it was; an object replaced after the open fails the append cleanly."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3mount.config import MiB
from tests.conftest import Mount, start_mount
from tests.faultproxy import FaultProxy
from tests.motoserver import MotoServer
from tests.seaweed import SeaweedServer

Server = SeaweedServer | MotoServer
OLD = 22 * MiB + 12345  # a 5 MiB-part upload of it: 4 parts of 5 MiB, and a short last one
NEW = 3 * MiB + 777


@pytest.fixture
def proxied(target: tuple[Server, Any, str],
            tmp_path: Path) -> Iterator[tuple[Callable[[], Mount], FaultProxy, Any, str]]:
    """A mount of the bucket through a fault proxy (made on demand), the proxy, the client
    and the bucket."""
    server, client, bucket = target
    made: list[Mount] = []
    with FaultProxy(server.endpoint_url) as proxy:

        def make() -> Mount:
            m = start_mount(server, bucket, tmp_path / "mnt",  # type: ignore[arg-type]
                            tmp_path / "mount.log", "--endpoint-url", proxy.url)
            made.append(m)
            return m

        yield make, proxy, client, bucket
        for m in made:
            m.unmount()
            assert "Traceback" not in m.log() and "unexpectedly" not in m.log(), m.log()


def put_old(client: Any, bucket: str, key: str, body: bytes, multipart: bool,
            part: int = 5 * MiB) -> str:
    """Store `body` as one PUT or as a multipart upload of `part`-sized parts; its ETag."""
    if not multipart:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    else:
        up = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for n, off in enumerate(range(0, len(body), part), 1):
            r = client.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=n,
                                   Body=body[off:off + part])
            parts.append({"PartNumber": n, "ETag": r["ETag"]})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up,
                                         MultipartUpload={"Parts": parts})
    return client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')  # type: ignore[no-any-return]


def get(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def open_uploads(client: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def shell_append(path: Path, src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", f'cat "{src}" >> "{path}"'], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("layout", ["single-part", "multipart", "one-part multipart"])
def test_append_copies_the_old_parts(proxied: tuple[Callable[[], Mount], FaultProxy, Any, str],
                                     tmp_path: Path, layout: str) -> None:
    """`>>` onto a 22 MiB object: its parts (the whole of a single-part object, or of a
    multipart one of a single part, whose ETag is `...-1`; the four 5 MiB parts of a
    multipart one, whose short last part is read back) are copied by the server, and no more
    of it is read than that last part; done twice, the second time onto the object the first
    append made."""
    make, proxy, client, bucket = proxied
    old = os.urandom(OLD)
    multipart = layout == "multipart"
    etag = put_old(client, bucket, "log.bin", old, layout != "single-part", part=(
        OLD if layout == "one-part multipart" else 5 * MiB))
    assert etag.endswith("-1") == (layout == "one-part multipart")
    extra, more = os.urandom(NEW), os.urandom(1000)
    src = tmp_path / "extra"
    src.write_bytes(extra)
    m = make()
    proxy.counts.clear()
    r = shell_append(m.path / "log.bin", src)
    assert r.returncode == 0, r.stderr + m.log()
    assert get(client, bucket, "log.bin") == old + extra
    copied = 4 if multipart else 1
    tail = OLD - 20 * MiB if multipart else 0
    assert proxy.counts["get_bytes"] == tail, proxy.counts
    assert proxy.counts["COPY-PART"] in (copied, 2 * copied)  # twice: SeaweedFS, see below
    log = m.log()
    assert (f"log.bin: appending: the old object's first {OLD - tail} bytes were copied by "
            f"the server in {copied} part(s), proven by their MD5s against its ETag; {tail} "
            "bytes read back") in log
    if proxy.counts["COPY-PART"] == 2 * copied:  # answers no MD5s until a checksum declared
        assert "later uploads declare CRC32C" in log
    # Onto the object the mount just made: its own parts (5 MiB each, by the schedule).
    src.write_bytes(more)
    proxy.counts.clear()
    r = shell_append(m.path / "log.bin", src)
    assert r.returncode == 0, r.stderr + m.log()
    assert get(client, bucket, "log.bin") == old + extra + more
    # The first append made parts 5 x 5 MiB and 13122 bytes (multipart), or 22 MiB and NEW.
    copied, tail = (5, OLD + NEW - 25 * MiB) if multipart else (1, NEW)
    assert (proxy.counts["COPY-PART"], proxy.counts["get_bytes"]) == (copied, tail)
    assert open_uploads(client, bucket) == []
    assert os.path.getsize(m.path / "log.bin") == OLD + NEW + 1000


def test_small_object_is_read_back(proxied: tuple[Callable[[], Mount], FaultProxy, Any, str],
                                   tmp_path: Path) -> None:
    make, proxy, client, bucket = proxied
    old = os.urandom(3 * MiB)
    put_old(client, bucket, "small", old, False)
    src = tmp_path / "extra"
    src.write_bytes(b"appended\n")
    m = make()
    proxy.counts.clear()
    r = shell_append(m.path / "small", src)
    assert r.returncode == 0, r.stderr + m.log()
    assert get(client, bucket, "small") == old + b"appended\n"
    assert proxy.counts["COPY-PART"] == 0 and proxy.counts["get_bytes"] == len(old)
    assert (f"small: appending: the old object's {len(old)} bytes were read back into a new "
            "upload (smaller than one part)") in m.log()


def test_lying_copy_answer_fails_and_keeps_the_old_object(
        proxied: tuple[Callable[[], Mount], FaultProxy, Any, str], tmp_path: Path) -> None:
    """Every UploadPartCopy answer rewritten (a wrong MD5): the copies are tried three times,
    then the write and the close fail with EIO; the old object is as it was, no upload is
    left."""
    make, proxy, client, bucket = proxied
    old = os.urandom(OLD)
    etag = put_old(client, bucket, "log.bin", old, True)
    m = make()
    proxy.rewrite_copy_etags = 1000
    fd = os.open(m.path / "log.bin", os.O_WRONLY | os.O_APPEND)
    try:
        with pytest.raises(OSError) as exc:
            os.write(fd, b"more")
        assert exc.value.errno == errno.EIO
    finally:
        with pytest.raises(OSError) as closed:
            os.close(fd)
        assert closed.value.errno == errno.EIO
    assert proxy.counts["rewritten_copy_etags"] == 3 * 4
    assert get(client, bucket, "log.bin") == old
    assert client.head_object(Bucket=bucket, Key="log.bin")["ETag"].strip('"') == etag
    assert open_uploads(client, bucket) == []
    log = m.log()
    assert "never came back with MD5s that make its ETag" in log
    assert log.count("the old object is unchanged") == 1


def test_object_replaced_after_open_fails_cleanly(
        proxied: tuple[Callable[[], Mount], FaultProxy, Any, str]) -> None:
    """The object is replaced by another client between the open and the first write: the
    copies (pinned to the ETag seen at open) fail, the write and the close get EIO, the
    other client's object stays, no upload is left."""
    make, proxy, client, bucket = proxied
    put_old(client, bucket, "log.bin", os.urandom(OLD), True)
    m = make()
    fd = os.open(m.path / "log.bin", os.O_WRONLY | os.O_APPEND)
    theirs = os.urandom(OLD)
    client.put_object(Bucket=bucket, Key="log.bin", Body=theirs)
    try:
        with pytest.raises(OSError) as exc:
            os.write(fd, b"more")
        assert exc.value.errno == errno.EIO
    finally:
        with pytest.raises(OSError):
            os.close(fd)
    assert get(client, bucket, "log.bin") == theirs
    assert open_uploads(client, bucket) == []
    assert "the object changed (ETag no longer matches)" in m.log()


def test_rewrites_after_an_append_with_copied_parts(
        proxied: tuple[Callable[[], Mount], FaultProxy, Any, str]) -> None:
    """After an append whose first parts were copied: a write into the read-back tail (held in
    memory, in the first buffer) is applied; a write into the copied bytes is refused like any
    rewrite outside the window (EINVAL, one log line naming the copied bytes), the upload is
    aborted and the old object stays."""
    make, proxy, client, bucket = proxied
    old = os.urandom(OLD)
    put_old(client, bucket, "a.bin", old, True)
    put_old(client, bucket, "b.bin", old, True)
    m = make()
    m.allowed_errors.append("outside the rewrite window")
    fd = os.open(m.path / "a.bin", os.O_WRONLY)
    try:
        os.pwrite(fd, b"new", OLD)
        os.pwrite(fd, b"PATCH", OLD - 10)  # in the last old part, read back
    finally:
        os.close(fd)
    assert get(client, bucket, "a.bin") == old[:-10] + b"PATCH" + old[-5:] + b"new"
    fd = os.open(m.path / "b.bin", os.O_WRONLY)
    try:
        os.pwrite(fd, b"new", OLD)
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"X", 100)  # in a copied part
        assert exc.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError):
            os.close(fd)
    assert get(client, bucket, "b.bin") == old
    assert open_uploads(client, bucket) == []
    lines = [ln for ln in m.log().splitlines() if "outside the rewrite window" in ln]
    assert len(lines) == 1 and f"bytes 0-{20 * MiB} were copied from the old object" in lines[0]


def test_unprovable_copies_fall_back_to_reading_back(s3server: SeaweedServer,
                                                     tmp_path: Path) -> None:
    """SeaweedFS behind a proxy that strips checksums: its copy answers are no MD5s, and it
    cannot be asked for them (an upload declaring CRC32C gets no checksum back), so the append
    reads the old bytes back and sends them again, saying why; the next append on the mount
    does not try copies again."""
    client = s3server.client()
    bucket = f"app-fallback-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    old = os.urandom(OLD)
    put_old(client, bucket, "log.bin", old, True)
    with FaultProxy(s3server.endpoint_url) as proxy:
        proxy.strip_checksums = True
        m = start_mount(s3server, bucket, tmp_path / "mnt", tmp_path / "mount.log",
                        "--endpoint-url", proxy.url)
        try:
            src = tmp_path / "extra"
            src.write_bytes(b"one\n")
            assert shell_append(m.path / "log.bin", src).returncode == 0, m.log()
            src.write_bytes(b"two\n")
            proxy.counts.clear()
            assert shell_append(m.path / "log.bin", src).returncode == 0, m.log()
            assert proxy.counts["COPY-PART"] == 0 and proxy.counts["get_bytes"] == OLD + 4
        finally:
            m.unmount()
    assert get(client, bucket, "log.bin") == old + b"one\ntwo\n"
    assert open_uploads(client, bucket) == []
    log = m.log()
    assert (f"the old object's {OLD} bytes were read back into a new upload (the server's "
            "copy answers are no MD5s") in log
    assert (f"the old object's {OLD + 4} bytes were read back into a new upload (this "
            "server's copies cannot be proven)") in log
    client.close()
