"""The namespace layer alone (level 1): names, counts, files being written, settling a name
closed a moment ago, and the rename rules, without FUSE."""

from __future__ import annotations

import errno
import os
import time
from typing import Any

import pytest
import trio

from s3mount import namespace as namespace_module
from s3mount import renamer
from s3mount.config import Config
from s3mount.errors import FsError
from s3mount.inodes import ROOT_INODE
from s3mount.namespace import Namespace
from s3mount.store import S3Store
from s3mount.writer import Uploads, UploadState
from tests.conftest import get, keys, put


def make_ns(config: Config, nursery: trio.Nursery) -> Namespace:
    store = S3Store(config)
    return Namespace(config, store, Uploads(config, store, nursery))


async def errno_of(coro: Any) -> int:
    with pytest.raises(FsError) as exc:
        await coro
    return exc.value.errno_


async def test_lookup_counts_and_forget(config: Config, s3: Any, bucket: str,
                                        nursery: trio.Nursery) -> None:
    put(s3, bucket, "d/f", b"abc")
    ns = make_ns(config, nursery)
    d = await ns.lookup(ROOT_INODE, b"d")
    f = await ns.lookup(d.ino, b"f")
    assert (d.kind, f.kind, f.size, f.lookups) == ("dir", "file", 3, 1)
    assert await errno_of(ns.lookup(ROOT_INODE, b"nope")) == errno.ENOENT
    assert await errno_of(ns.lookup(ROOT_INODE, b"a" * 300)) == errno.ENOENT
    ns.forget(f.ino, 1)
    assert "d/f" not in ns.inodes.by_path  # neither known to the kernel nor open
    with pytest.raises(FsError):
        ns.node(f.ino)


async def test_file_being_written_is_listed_with_its_size(config: Config, s3: Any, bucket: str,
                                                          nursery: trio.Nursery) -> None:
    put(s3, bucket, "old", b"x")
    ns = make_ns(config, nursery)
    node, upload = await ns.create(ROOT_INODE, b"new")
    await upload.write(0, b"hello")
    assert node.writing and ns.size(node) == 5
    names = {name async for name, _ in ns.entries(ns.node(ROOT_INODE))}
    assert names == {"old", "new"}
    assert keys(s3, bucket) == ["old"]  # not in S3 until complete
    ns.flushed(node, upload)
    await ns.finish_write(node, upload)
    assert not node.writing and node.size == 5 and get(s3, bucket, "new") == b"hello"


async def test_a_name_closed_a_moment_ago_is_settled_first(config: Config, s3: Any, bucket: str,
                                                           nursery: trio.Nursery) -> None:
    """touch f; cat f: the flush wrote nothing, so the upload completes only at RELEASE, which
    the kernel sends after close() has returned. The open waits for it."""
    ns = make_ns(config, nursery)
    node, upload = await ns.create(ROOT_INODE, b"touched")
    ns.flushed(node, upload)  # close(): nothing written, nothing completed

    async def release_later() -> None:
        await trio.sleep(0.2)
        ns.released(node, upload)
        await ns.finish_write(node, upload)
        ns.closed(node)

    nursery.start_soon(release_later)
    opened = await ns.open_read(node.ino)  # would be EPERM ("being written") unsettled
    assert opened is node and not node.writing and node.size == 0
    assert keys(s3, bucket) == ["touched"]
    # unlink right after close() of an empty file (git's lock files, rdiff-backup)
    node2, upload2 = await ns.create(ROOT_INODE, b"lock")
    ns.flushed(node2, upload2)
    nursery.start_soon(_release, ns, node2, upload2)
    await ns.unlink(ROOT_INODE, b"lock")
    assert keys(s3, bucket) == ["touched"]


async def _release(ns: Namespace, node: Any, upload: Any) -> None:
    await trio.sleep(0.1)
    ns.released(node, upload)
    await ns.finish_write(node, upload)
    ns.closed(node)


@pytest.mark.expect_log("upload aborted: test over")
async def test_a_file_still_open_elsewhere_is_busy_after_the_grace(
        config: Config, bucket: str, nursery: trio.Nursery,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(namespace_module, "SETTLE_GRACE", 0.3)
    ns = make_ns(config, nursery)
    node, upload = await ns.create(ROOT_INODE, b"held")
    ns.flushed(node, upload)  # one descriptor closed, another still open (bash's > dup)
    started = time.monotonic()
    assert await errno_of(ns.open_read(node.ino)) == errno.EPERM
    assert 0.25 < time.monotonic() - started < 2
    await upload.write(0, b"more")  # written since the close: no wait at all
    started = time.monotonic()
    assert await errno_of(ns.unlink(ROOT_INODE, b"held")) == errno.EBUSY
    assert time.monotonic() - started < 0.2
    await upload.abort("test over")
    assert upload.state is UploadState.FAILED


@pytest.mark.expect_log("upload aborted: test over")
async def test_mkdir_rmdir_and_the_write_check(config: Config, s3: Any, bucket: str,
                                               nursery: trio.Nursery) -> None:
    ns = make_ns(config, nursery)
    d = await ns.mkdir(ROOT_INODE, b"d")
    assert keys(s3, bucket) == ["d/"]
    assert await errno_of(ns.mkdir(ROOT_INODE, b"d")) == errno.EEXIST
    node, upload = await ns.create(d.ino, b"f")
    assert await errno_of(ns.rmdir(ROOT_INODE, b"d")) == errno.ENOTEMPTY  # being written
    assert await errno_of(ns.open_write(node.ino, os.O_WRONLY | os.O_TRUNC)) == errno.EPERM
    await upload.abort("test over")
    ns.end_write(node, upload)
    await ns.rmdir(ROOT_INODE, b"d")
    assert keys(s3, bucket) == []


def test_rename_rules() -> None:
    def check(*args: Any) -> int:
        try:
            renamer.check(*args)
        except FsError as exc:
            return exc.errno_
        return 0

    assert check("file", "a", None, "b", False) == 0
    assert check("file", "a", "file", "b", False) == 0
    assert check("file", "a", "file", "b", True) == errno.EEXIST
    assert check("file", "a", "dir", "b", False) == errno.EISDIR
    assert check("dir", "a", "file", "b", False) == errno.ENOTDIR
    assert check("dir", "a", None, "a/b", False) == errno.EINVAL
    assert check("dir", "a", "dir", "ab", False) == 0
