"""Operations called in-process (level 2) against the real server, and the store's retry policy
and the namespace listing (level 1)."""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import replace
from typing import Any

import botocore.exceptions
import pyfuse3
import pytest
import trio

from s3mount.config import Config
from s3mount.errors import TransientError
from s3mount.fs import S3Fs
from s3mount.keys import KeyMap
from s3mount.s3view import S3View
from s3mount.store import S3Store
from tests.conftest import get, keys, put
from tests.faults import FaultyStore

CTX = pyfuse3.RequestContext()
ROOT = pyfuse3.ROOT_INODE

# Retries are warned about as stalls (store.Health): expected where a test makes them.
pytestmark = pytest.mark.expect_log(r"^s3mount\.store: S3 stall")


def make_fs(config: Config, nursery: trio.Nursery, store: Any = None) -> S3Fs:
    return S3Fs(config, store or S3Store(config), nursery)


async def lookup_path(fs: S3Fs, path: str) -> pyfuse3.EntryAttributes:
    ino = ROOT
    attrs = await fs.getattr(ROOT, CTX)
    for name in path.split("/"):
        attrs = await fs.lookup(ino, name.encode(), CTX)
        ino = attrs.st_ino
    return attrs


async def errno_of(coro: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await coro
    return exc.value.errno


async def test_lookup_getattr_and_shadowing(config: Config, s3: Any, bucket: str,
                                            nursery: trio.Nursery) -> None:
    put(s3, bucket, "a/b.txt", b"hello")
    put(s3, bucket, "conf", b"file")
    put(s3, bucket, "conf/x", b"")
    put(s3, bucket, "m/", b"")
    fs = make_fs(config, nursery)
    b = await lookup_path(fs, "a/b.txt")
    assert b.st_size == 5 and b.st_mode & 0o170000 == 0o100000
    assert (await lookup_path(fs, "conf")).st_mode & 0o040000  # the directory wins
    assert (await lookup_path(fs, "m")).st_mode & 0o040000  # a marker alone is a directory
    assert await errno_of(fs.lookup(ROOT, b"nope", CTX)) == errno.ENOENT
    assert await errno_of(fs.lookup(ROOT, b"\xff\xfe", CTX)) == errno.ENOENT
    assert b.entry_timeout == b.attr_timeout == config.metadata_ttl


async def test_negative_cache_expires(config: Config, s3: Any, bucket: str,
                                      nursery: trio.Nursery) -> None:
    fs = make_fs(replace(config, metadata_ttl=0.5), nursery)
    assert await errno_of(fs.lookup(ROOT, b"late", CTX)) == errno.ENOENT
    put(s3, bucket, "late", b"now")
    assert await errno_of(fs.lookup(ROOT, b"late", CTX)) == errno.ENOENT  # cached
    await trio.sleep(0.6)
    assert (await fs.lookup(ROOT, b"late", CTX)).st_size == 3


@pytest.mark.expect_log(
    r"^s3mount\.fs: (mkdir|rmdir|unlink): 'd' .* \((EEXIST|ENOTEMPTY|EISDIR)\)$",
)
async def test_mkdir_rmdir_unlink(config: Config, s3: Any, bucket: str,
                                  nursery: trio.Nursery) -> None:
    fs = make_fs(config, nursery)
    d = await fs.mkdir(ROOT, b"d", 0o755, CTX)
    assert "d/" in keys(s3, bucket)
    assert await errno_of(fs.mkdir(ROOT, b"d", 0o755, CTX)) == errno.EEXIST
    put(s3, bucket, "d/f", b"x")
    assert await errno_of(fs.rmdir(ROOT, b"d", CTX)) == errno.ENOTEMPTY
    assert await errno_of(fs.unlink(ROOT, b"d", CTX)) == errno.EISDIR
    await fs.lookup(d.st_ino, b"f", CTX)
    await fs.unlink(d.st_ino, b"f", CTX)
    assert keys(s3, bucket) == ["d/"]
    await fs.rmdir(ROOT, b"d", CTX)
    assert keys(s3, bucket) == []
    assert await errno_of(fs.lookup(ROOT, b"d", CTX)) == errno.ENOENT


@pytest.mark.expect_log(r"^s3mount\.fs: \w+: the mount is read-only \(EROFS\)$")
async def test_read_only_refuses_every_change(config: Config, s3: Any, bucket: str,
                                              nursery: trio.Nursery) -> None:
    put(s3, bucket, "f", b"data")
    put(s3, bucket, "d/", b"")
    fs = make_fs(replace(config, read_only=True), nursery)
    f = await fs.lookup(ROOT, b"f", CTX)
    await fs.lookup(ROOT, b"d", CTX)
    assert await errno_of(fs.mkdir(ROOT, b"n", 0o755, CTX)) == errno.EROFS
    assert await errno_of(fs.rmdir(ROOT, b"d", CTX)) == errno.EROFS
    assert await errno_of(fs.unlink(ROOT, b"f", CTX)) == errno.EROFS
    assert await errno_of(fs.create(ROOT, b"c", 0o644, os.O_WRONLY, CTX)) == errno.EROFS
    assert await errno_of(fs.open(f.st_ino, os.O_WRONLY | os.O_TRUNC, CTX)) == errno.EROFS
    assert sorted(keys(s3, bucket)) == ["d/", "f"]


async def test_create_write_flush_then_read(config: Config, s3: Any, bucket: str,
                                            nursery: trio.Nursery) -> None:
    fs = make_fs(config, nursery)
    info, attrs = await fs.create(ROOT, b"new.txt", 0o644, os.O_WRONLY | os.O_TRUNC, CTX)
    await fs.flush(info.fh)  # nothing written yet: does not complete (bash's > does this)
    assert keys(s3, bucket) == []
    assert await fs.write(info.fh, 0, b"hello ") == 6
    assert await fs.write(info.fh, 6, b"world") == 5
    assert (await fs.getattr(attrs.st_ino, CTX)).st_size == 11
    await fs.flush(info.fh)
    assert get(s3, bucket, "new.txt") == b"hello world"
    await fs.release(info.fh)
    rinfo = await fs.open(attrs.st_ino, os.O_RDONLY, CTX)
    assert await fs.read(rinfo.fh, 6, 100) == b"world"
    assert await fs.read(rinfo.fh, 11, 100) == b""
    await fs.release(rinfo.fh)


@pytest.mark.expect_log(r"^s3mount\.fs: lookup failed unexpectedly; returning EIO$")
async def test_unexpected_exception_is_eio_and_mount_keeps_serving(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    put(s3, bucket, "ok", b"1")
    store = FaultyStore(S3Store(config))
    fs = make_fs(config, nursery, store)
    store.head_error = RuntimeError("boom")
    with caplog.at_level(logging.ERROR):
        assert await errno_of(fs.lookup(ROOT, b"ok", CTX)) == errno.EIO
    assert any("lookup failed unexpectedly" in r.message and r.exc_info for r in caplog.records)
    store.head_error = None
    assert (await fs.lookup(ROOT, b"ok", CTX)).st_size == 1


async def test_listing_pages_dedupes_and_hides(config: Config, s3: Any, bucket: str) -> None:
    for k in ["a", "a!", "a.txt", "a/x", "b/", "c", "sub/deep/f"]:
        put(s3, bucket, k, b"")
    ns = S3View(S3Store(config), KeyMap(), page_size=2)  # many pages, shadows across them
    got = {name: e.kind async for name, e in ns.children("")}
    assert got == {"a": "dir", "a!": "file", "a.txt": "file", "b": "dir", "c": "file",
                   "sub": "dir"}


async def test_custom_dir_suffix(config: Config, s3: Any, bucket: str) -> None:
    put(s3, bucket, "d_$folder$", b"")
    put(s3, bucket, "d", b"shadowed file")
    put(s3, bucket, "e/f", b"1")
    ns = S3View(S3Store(config), KeyMap("", "_$folder$"), page_size=1)
    got = {name: e.kind async for name, e in ns.children("")}
    assert got == {"d": "dir", "e": "dir"}
    entry = await ns.stat("d")
    assert entry is not None and entry.kind == "dir"


class FlakyClient:
    """A boto3 client stand-in whose head_object fails `n` times first."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    def head_object(self, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        import datetime
        return {"ContentLength": 3, "ETag": '"abc"',
                "LastModified": datetime.datetime.now(datetime.UTC)}

    def create_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"UploadId": "u"}


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code},
         "ResponseMetadata": {"HTTPStatusCode": status}}, "HeadObject")


@pytest.mark.expect_log(r"^s3mount\.store: HEAD k: .*; retry \d+/5 in")
async def test_store_retries_transient_then_succeeds(config: Config) -> None:
    failures: list[BaseException] = [client_error("SlowDown", 503),
                                      client_error("InternalError", 500),
                                      botocore.exceptions.ReadTimeoutError(endpoint_url="x")]
    client = FlakyClient(failures)
    store = S3Store(replace(config, retries=5), client=client)
    store.policy = replace(store.policy, base=0.001)
    info = await store.head("k")
    assert info is not None and info.etag == "abc" and client.calls == 4


async def test_store_gives_up_and_does_not_retry_permanent_errors(config: Config) -> None:
    client = FlakyClient([client_error("SlowDown", 503)] * 10)
    store = S3Store(replace(config, retries=2), client=client)
    store.policy = replace(store.policy, base=0.001)
    with pytest.raises(TransientError):
        await store.head("k")
    assert client.calls == 3
    denied = FlakyClient([client_error("AccessDenied", 403)])
    store = S3Store(config, client=denied)
    with pytest.raises(Exception, match="AccessDenied"):
        await store.head("k")
    assert denied.calls == 1


@pytest.mark.expect_log(r"^s3mount\.store: CREATE-UPLOAD k: ServiceUnavailable .*; retry \d+ in")
async def test_uploads_retry_until_the_write_deadline_not_a_count(config: Config) -> None:
    """An upload request is retried past --retries for as long as --write-deadline allows
    (an outage only stalls the writer), then fails with a line that says how long."""
    import time

    client = FlakyClient([client_error("ServiceUnavailable", 503)] * 6)
    store = S3Store(replace(config, retries=2, write_deadline=30), client=client)
    store.policy = replace(store.policy, base=0.001, cap=0.01)
    assert (await store.create_upload("k")).upload_id == "u"
    assert client.calls == 7  # six failures, far past --retries 2
    client = FlakyClient([client_error("ServiceUnavailable", 503)] * 10_000)
    store = S3Store(replace(config, retries=2, write_deadline=1.0), client=client)
    store.policy = replace(store.policy, base=0.01, cap=0.05)
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="S3 failed for 1 s"):
        await store.create_upload("k")
    assert 0.9 <= time.monotonic() - t0 < 5 and client.calls > 3


def test_invalid_key_components_are_hidden() -> None:
    km = KeyMap("p/")
    assert km.child_name("", "p/ok") == "ok"
    assert km.child_name("", "p/dir/") == "dir"
    for hidden in ["p/" + "z" * 256, "p/.", "p/..", "p/a\0b", "p//"]:
        assert km.child_name("", hidden) is None
    assert km.child_name("", "p/" + "\u00e9" * 127) is not None  # 254 bytes of UTF-8
    assert km.child_name("", "p/" + "\u00e9" * 128) is None  # 256 bytes


@pytest.mark.expect_log(r"^s3mount\.fs: unlink: 'w\.bin' is being written; .* \(EBUSY\)$")
async def test_unlink_while_writing_is_busy(config: Config, s3: Any, bucket: str,
                                            nursery: trio.Nursery) -> None:
    fs = make_fs(config, nursery)
    info, _ = await fs.create(ROOT, b"w.bin", 0o644, os.O_WRONLY | os.O_TRUNC, CTX)
    await fs.write(info.fh, 0, b"data")
    assert await errno_of(fs.unlink(ROOT, b"w.bin", CTX)) == errno.EBUSY
    await fs.release(info.fh)
    assert get(s3, bucket, "w.bin") == b"data"


@pytest.mark.expect_log(r"^s3mount\.fs: (create|mkdir): key .* \(ENAMETOOLONG\)$")
async def test_key_longer_than_s3_allows(config: Config, s3: Any, bucket: str,
                                         nursery: trio.Nursery) -> None:
    fs = make_fs(config, nursery)
    ino = ROOT
    for c in "abcd":  # four directories of 250 bytes: keys of 1004 bytes still fit
        ino = (await fs.mkdir(ino, (c * 250).encode(), 0o755, CTX)).st_ino
    name = b"f" * 250
    assert await errno_of(fs.create(ino, name, 0o644, os.O_WRONLY, CTX)) == errno.ENAMETOOLONG
    assert await errno_of(fs.mkdir(ino, name, 0o755, CTX)) == errno.ENAMETOOLONG
    assert len(keys(s3, bucket)) == 4


def test_timestamp_parser_agrees_with_botocore() -> None:
    """The fast parser (listings spent a third of their time in dateutil) gives botocore's
    answers for both of S3's forms, and hands anything else to botocore."""
    import botocore.utils

    from s3mount.store import parse_timestamp

    for value in ["2026-11-23T15:12:27.000Z", "2026-11-23T15:12:27Z",
                  "2026-11-23T15:12:27.123456Z", "Mon, 23 Nov 2026 15:12:27 GMT",
                  "Thu, 01 Jan 1970 00:00:00 GMT", "Sun, 29 Feb 2032 23:59:59 GMT",
                  "Tue, 1 Dec 2026 08:05:09 GMT", "1700000000", "2026-11-23T15:12:27+02:00"]:
        assert parse_timestamp(value) == botocore.utils.parse_timestamp(value), value
        assert parse_timestamp(value).utcoffset() is not None
