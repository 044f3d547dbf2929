"""Bad input (issue 6): names and keys that cannot be files, operations S3 cannot express, and
hostile sizes. Each is driven through a real FUSE mount (level 3) unless the input cannot be
stored in SeaweedFS at all (then in-process, level 2), and every result is checked in the bucket
with boto3. docs/SEMANTICS.md ("Bad input") names these tests."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import random
import shutil
import stat
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from s3mount.config import Config
from s3mount.keys import KeyMap
from s3mount.objects import ListPage, ObjectInfo
from s3mount.s3view import S3View
from s3mount.store import S3Store
from tests.conftest import Mount, get, keys, put
from tests.seaweed import SeaweedServer, find_weed
from tests.test_fs import CTX, ROOT, errno_of, make_fs

MiB = 1 << 20


def oserror(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as exc:
        fn()
    return exc.value.errno


def create(path: Path | bytes, data: bytes = b"", flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644)
    try:
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)


def log_lines(m: Mount, text: str) -> list[str]:
    return [line for line in m.log().splitlines() if text in line]


def wait_for_key(s3: Any, bucket: str, key: str, timeout: float = 10) -> bytes:
    """The object's bytes, once the release that completes it (asynchronous) has run."""
    deadline = time.monotonic() + timeout
    while key not in keys(s3, bucket) and time.monotonic() < deadline:
        time.sleep(0.05)
    return get(s3, bucket, key)


# -- names ------------------------------------------------------------------------------------


def test_name_over_255_bytes(mount_factory: Callable[..., Mount], s3: Any, bucket: str) -> None:
    m = mount_factory(bucket)
    m.allowed_errors.append("a file name may have at most 255 bytes")
    ok, long = "n" * 255, "n" * 256
    create(m.path / ok, b"fits")
    assert oserror(lambda: create(m.path / long, b"x")) == errno.ENAMETOOLONG
    assert oserror(lambda: os.mkdir(m.path / long)) == errno.ENAMETOOLONG
    assert oserror(lambda: os.rename(m.path / ok, m.path / long)) == errno.ENAMETOOLONG
    # two-byte characters: 128 of them are 256 bytes although only 128 characters
    assert oserror(lambda: create(m.path / ("\u00e9" * 128))) == errno.ENAMETOOLONG
    assert oserror(lambda: os.stat(m.path / long)) == errno.ENOENT  # a question, not a change
    assert keys(s3, bucket) == [ok] and get(s3, bucket, ok) == b"fits"
    assert len(log_lines(m, "is 256 bytes; a file name may have at most 255 bytes")) == 4


def test_key_over_1024_bytes(mount_factory: Callable[..., Mount], s3: Any, bucket: str) -> None:
    m = mount_factory(bucket)
    m.allowed_errors.append("would exceed S3's 1024-byte limit")
    deep = m.path
    for c in "abcd":  # four directories of 250 bytes: their markers (1004 bytes) still fit
        deep = deep / (c * 250)
        os.mkdir(deep)
    assert oserror(lambda: create(deep / ("f" * 30), b"x")) == errno.ENAMETOOLONG  # 1034
    assert oserror(lambda: os.mkdir(deep / ("g" * 30))) == errno.ENAMETOOLONG
    create(deep / "f", b"fits")  # a key of 1005 bytes fits
    stored = keys(s3, bucket)
    assert len(stored) == 5 and max(len(k.encode()) for k in stored) <= 1024
    assert get(s3, bucket, "/".join(c * 250 for c in "abcd") + "/f") == b"fits"
    assert len(log_lines(m, "would exceed S3's 1024-byte limit")) == 2


def test_name_not_utf8(mount_factory: Callable[..., Mount], s3: Any, bucket: str) -> None:
    m = mount_factory(bucket)
    m.allowed_errors.append("is not valid UTF-8")
    put(s3, bucket, "ok.txt", b"ok")
    root = os.fsencode(m.path)
    assert oserror(lambda: create(root + b"/latin1-caf\xe9", b"x")) == errno.EINVAL
    assert oserror(lambda: os.mkdir(root + b"/\xff\xfe")) == errno.EINVAL
    assert oserror(lambda: os.rename(root + b"/ok.txt", root + b"/\xff")) == errno.EINVAL
    assert oserror(lambda: os.stat(root + b"/\xff")) == errno.ENOENT
    assert keys(s3, bucket) == ["ok.txt"]
    assert len(log_lines(m, "is not valid UTF-8; S3 keys are UTF-8")) == 3


class InjectedListing:
    """The real store, with keys only another S3 server would hold (SeaweedFS refuses `.`,
    `..` and NUL components and folds `//`) added to the listing pages of `extra`."""

    def __init__(self, inner: S3Store, extra: dict[str, tuple[list[str], list[str]]]) -> None:
        self.inner, self.extra = inner, extra

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def list_page(self, prefix: str, delimiter: str | None = "/",
                        token: str | None = None, max_keys: int = 1000) -> ListPage:
        page = await self.inner.list_page(prefix, delimiter, token, max_keys)
        objs, prefixes = self.extra.get(prefix, ([], []))
        if token is not None or not delimiter:
            return page
        more = [ObjectInfo(k, 4, time.time(), "0" * 32) for k in objs]
        return ListPage(page.objects + more, page.prefixes + prefixes, page.next_token)


@pytest.mark.expect_log(
    r"^s3mount\.fs: create: 'nul\\x00x' is not a valid name \(EINVAL\)$",
)
async def test_keys_that_are_no_valid_names(config: Config, s3: Any, bucket: str,
                                            nursery: trio.Nursery,
                                            caplog: pytest.LogCaptureFixture) -> None:
    put(s3, bucket, "ok", b"ok")
    put(s3, bucket, "a/b", b"b")
    hostile = {"": (["nul\0x", ".", ".."], ["./", "../", "nul\0dir/"]),
               "a/": (["a/.", "a/.."], ["a//"])}  # `a//b` lists as prefix `a//` under `a/`
    store = InjectedListing(S3Store(config), hostile)
    ns = S3View(store, KeyMap())  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG, logger="s3mount.keys"):
        root = [name async for name, _ in ns.children("")]
        below = [name async for name, _ in ns.children("a")]
    assert root == ["a", "ok"] and below == ["b"]
    hidden = [r for r in caplog.records if r.message.startswith("hiding key")]
    assert len(hidden) == 9 and all(r.levelno == logging.DEBUG for r in hidden)
    assert "hiding key 'a//': not a valid file name" in caplog.text
    fs = make_fs(config, nursery)
    assert await errno_of(fs.lookup(ROOT, b"nul\0x", CTX)) == errno.ENOENT
    assert await errno_of(fs.create(ROOT, b"nul\0x", 0o644, os.O_WRONLY, CTX)) == errno.EINVAL
    assert sorted(keys(s3, bucket)) == ["a/b", "ok"]


def test_trailing_slash_keys_are_directories(mount_factory: Callable[..., Mount], s3: Any,
                                             bucket: str) -> None:
    put(s3, bucket, "alone/", b"bytes in a directory marker")
    put(s3, bucket, "parent/", b"more bytes")
    put(s3, bucket, "parent/child", b"c")
    m = mount_factory(bucket)
    assert sorted(os.listdir(m.path)) == ["alone", "parent"]
    for d in ("alone", "parent"):
        st = os.stat(m.path / d)
        assert stat.S_ISDIR(st.st_mode) and st.st_size == 0
        assert oserror(lambda d=d: (m.path / d).read_bytes()) == errno.EISDIR
    assert os.listdir(m.path / "alone") == []
    assert os.listdir(m.path / "parent") == ["child"]
    assert (m.path / "parent" / "child").read_bytes() == b"c"
    assert sorted(keys(s3, bucket)) == ["alone/", "parent/", "parent/child"]


class MarkerWithData:
    """The real store, reporting `size` bytes for the marker `key` (SeaweedFS stores no bytes
    under a key ending in `/`; AWS S3 and others do)."""

    def __init__(self, inner: S3Store, key: str, size: int) -> None:
        self.inner, self.key, self.size = inner, key, size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _sized(self, info: ObjectInfo) -> ObjectInfo:
        return dataclasses.replace(info, size=self.size) if info.key == self.key else info

    async def head(self, key: str, checksum: bool = False) -> ObjectInfo | None:
        info = await self.inner.head(key, checksum)
        return None if info is None else self._sized(info)

    async def list_page(self, prefix: str, delimiter: str | None = "/",
                        token: str | None = None, max_keys: int = 1000) -> ListPage:
        page = await self.inner.list_page(prefix, delimiter, token, max_keys)
        return dataclasses.replace(page, objects=[self._sized(o) for o in page.objects])


@pytest.mark.expect_log(
    r"^s3mount\.fs: open: 'alone' is a directory \(EISDIR\)$",
    r"^s3mount\.fs: rmdir: 'alone': its marker object 'alone/' holds \d+ bytes",
)
async def test_rmdir_keeps_a_marker_that_holds_data(config: Config, s3: Any, bucket: str,
                                                    nursery: trio.Nursery,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    put(s3, bucket, "alone/", b"")
    fs = make_fs(config, nursery, MarkerWithData(S3Store(config), "alone/", 27))
    d = await fs.lookup(ROOT, b"alone", CTX)
    assert stat.S_ISDIR(d.st_mode) and d.st_size == 0
    assert await errno_of(fs.open(d.st_ino, os.O_RDONLY, CTX)) == errno.EISDIR
    assert await errno_of(fs.rmdir(ROOT, b"alone", CTX)) == errno.ENOTEMPTY
    assert "'alone': its marker object 'alone/' holds 27 bytes that the mount does not " \
        "show; not deleting them" in caplog.text
    await fs.mkdir(ROOT, b"made", 0o755, CTX)  # a marker made here is empty: rmdir removes it
    await fs.rmdir(ROOT, b"made", CTX)
    assert keys(s3, bucket) == ["alone/"]


def test_unicode_normalisation_forms_are_distinct(mount_factory: Callable[..., Mount],
                                                  s3: Any, bucket: str) -> None:
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    assert unicodedata.normalize("NFC", nfd) == nfc and nfc != nfd
    put(s3, bucket, nfd, b"decomposed")
    m = mount_factory(bucket)
    assert os.listdir(m.path) == [nfd]
    assert oserror(lambda: os.stat(m.path / nfc)) == errno.ENOENT
    # O_EXCL: the kernel and s3mount must not find the NFD file under the NFC name
    create(m.path / nfc, b"composed", os.O_EXCL)
    assert sorted(os.listdir(os.fsencode(m.path))) == sorted([nfc.encode(), nfd.encode()])
    assert (m.path / nfc).read_bytes() == b"composed"
    assert (m.path / nfd).read_bytes() == b"decomposed"
    assert sorted(keys(s3, bucket)) == sorted([nfc, nfd])
    assert get(s3, bucket, nfd) == b"decomposed" and get(s3, bucket, nfc) == b"composed"
    create(m.path / nfd, b"replaced")  # O_TRUNC on one replaces only that one
    os.unlink(m.path / nfc)
    assert keys(s3, bucket) == [nfd] and get(s3, bucket, nfd) == b"replaced"


# -- operations S3 cannot express -------------------------------------------------------------


def test_fifo_and_device_are_eperm_symlink_link_and_mknod_file_work(
        mount_factory: Callable[..., Mount], s3: Any, bucket: str, tmp_path: Path) -> None:
    put(s3, bucket, "f", b"data")
    m = mount_factory(bucket)
    m.allowed_errors += ["S3 cannot store FIFOs"]
    assert oserror(lambda: os.mkfifo(m.path / "fifo")) == errno.EPERM
    assert oserror(lambda: os.mknod(m.path / "dev", stat.S_IFCHR | 0o600,
                                    os.makedev(1, 3))) == errno.EPERM
    assert len(log_lines(m, "S3 cannot store FIFOs")) == 2
    # a symbolic link is an object in s3fs-fuse's form: the target as its body
    os.symlink("f", m.path / "ln")
    subprocess.run(["ln", "-s", "no/such/target", str(m.path / "ln2")], check=True)
    assert os.readlink(m.path / "ln") == "f" and (m.path / "ln").read_bytes() == b"data"
    assert os.readlink(m.path / "ln2") == "no/such/target"
    assert stat.S_ISLNK(os.lstat(m.path / "ln").st_mode)
    assert oserror(lambda: os.symlink("f", m.path / "ln")) == errno.EEXIST
    # mknod of a regular file makes an empty file, as open(O_CREAT) does
    os.mknod(m.path / "empty", stat.S_IFREG | 0o644)
    assert oserror(lambda: os.mknod(m.path / "empty", stat.S_IFREG | 0o644)) == errno.EEXIST
    # a hard link is a verified server-side copy: the names do not share later changes
    os.link(m.path / "f", m.path / "hl")
    assert (m.path / "hl").read_bytes() == b"data"
    assert oserror(lambda: os.link(m.path / "f", m.path / "hl")) == errno.EEXIST
    assert sorted(keys(s3, bucket)) == ["empty", "f", "hl", "ln", "ln2"]
    assert get(s3, bucket, "empty") == b"" and get(s3, bucket, "hl") == b"data"
    # tar -x of an archive with hard links: the second name is there, with the bytes
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"linked bytes")
    os.link(src / "a", src / "b")
    subprocess.run(["tar", "-cf", str(tmp_path / "t.tar"), "-C", str(src), "a", "b"],
                   check=True)
    (m.path / "x").mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "t.tar"), "-C", str(m.path / "x")],
                   check=True)
    assert get(s3, bucket, "x/a") == get(s3, bucket, "x/b") == b"linked bytes"


def test_unlinked_open_file_has_no_links(mount_factory: Callable[..., Mount], s3: Any,
                                         bucket: str) -> None:
    put(s3, bucket, "f", b"data")
    m = mount_factory(bucket)
    fd = os.open(m.path / "f", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_nlink == 1
        os.unlink(m.path / "f")
        assert os.fstat(fd).st_nlink == 0  # POSIX: no name left
    finally:
        os.close(fd)


def getlk_from_another_process(path: Path) -> tuple[int, int]:
    """(l_type, l_pid) that F_GETLK reports to a second process asking for a write lock."""
    code = (
        "import fcntl, os, struct, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "q = struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0)\n"
        "r = struct.unpack('hhqqi4x', fcntl.fcntl(fd, fcntl.F_GETLK, q))\n"
        "print(r[0], r[4])\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_locks_are_local_to_this_machine(mount_factory: Callable[..., Mount], s3: Any,
                                         bucket: str) -> None:
    put(s3, bucket, "db", b"data")
    m = mount_factory(bucket)
    f = m.path / "db"
    fd = os.open(f, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = subprocess.run(["flock", "-n", str(f), "true"])
        assert held.returncode == 1  # another process on this machine sees the lock
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert subprocess.run(["flock", "-n", str(f), "true"]).returncode == 0
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # POSIX (fcntl) record lock
        assert getlk_from_another_process(f) == (fcntl.F_RDLCK, os.getpid())
        fcntl.lockf(fd, fcntl.LOCK_UN)
        assert getlk_from_another_process(f)[0] == fcntl.F_UNLCK
    finally:
        os.close(fd)
    wfd = os.open(m.path / "new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fcntl.lockf(wfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(wfd, b"locked while written")
    os.close(wfd)
    assert get(s3, bucket, "new") == b"locked while written"
    assert get(s3, bucket, "db") == b"data"
    assert not log_lines(m, " ERROR ")


def test_fallocate_is_not_supported(mount_factory: Callable[..., Mount], s3: Any,
                                    bucket: str, tmp_path: Path) -> None:
    m = mount_factory(bucket)
    r = subprocess.run(["fallocate", "-l", "1M", str(m.path / "pre")], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "Operation not supported" in r.stderr
    assert wait_for_key(s3, bucket, "pre") == b""  # fallocate(1) created it, then failed
    # glibc's posix_fallocate falls back to writing a zero byte every 4 KiB past the end:
    # holes, so the file grows with zeros.
    fd = os.open(m.path / "emulated", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"0123456789")
    os.posix_fallocate(fd, 0, MiB)
    assert os.fstat(fd).st_size == MiB
    os.close(fd)
    assert get(s3, bucket, "emulated") == b"0123456789" + bytes(MiB - 10)
    # cp and dd do not preallocate
    src = tmp_path / "src"
    src.write_bytes(random.Random(1).randbytes(3 * MiB + 5))
    subprocess.run(["cp", str(src), str(m.path / "cp")], check=True)
    subprocess.run(["dd", f"if={src}", f"of={m.path / 'dd'}", "bs=1M", "status=none"],
                   check=True)
    assert get(s3, bucket, "cp") == get(s3, bucket, "dd") == src.read_bytes()


def test_o_append(mount_factory: Callable[..., Mount], s3: Any, bucket: str) -> None:
    """Appending to an existing object makes a new upload that starts with its bytes; a write
    anywhere else into it is refused."""
    put(s3, bucket, "old", b"old bytes")
    m = mount_factory(bucket)
    m.allowed_errors.append("would change the existing object")
    fd = os.open(m.path / "old", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b" and more")
        os.write(fd, b"!")
    finally:
        os.close(fd)
    assert get(s3, bucket, "old") == b"old bytes and more!"
    fd = os.open(m.path / "old", os.O_WRONLY)
    try:
        assert oserror(lambda: os.pwrite(fd, b"X", 3)) == errno.EPERM
    finally:
        os.close(fd)
    fd = os.open(m.path / "new", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for part in (b"one ", b"two ", b"three"):
        os.write(fd, part)
    os.close(fd)
    subprocess.run(["bash", "-c", f"echo first >> {m.path}/log; echo again >> {m.path}/log"],
                   check=True)
    assert get(s3, bucket, "old") == b"old bytes and more!"
    assert get(s3, bucket, "new") == b"one two three"
    assert get(s3, bucket, "log") == b"first\nagain\n"
    assert len(log_lines(m, "would change the existing object")) == 1


def test_o_direct(mount_factory: Callable[..., Mount], s3: Any, bucket: str,
                  tmp_path: Path) -> None:
    m = mount_factory(bucket)
    data = random.Random(2).randbytes(7 * MiB + MiB // 2 + 3)
    fd = os.open(m.path / "py", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT)
    pos = 0
    for size in (1000, 3000, MiB + 7, 5 * MiB):  # neither sizes nor buffers aligned
        pos += os.write(fd, data[pos:pos + size])
    os.close(fd)
    assert get(s3, bucket, "py") == data[:pos]
    src = tmp_path / "src"
    src.write_bytes(data)
    subprocess.run(["dd", f"if={src}", f"of={m.path / 'dd'}", "bs=1M", "oflag=direct",
                    "status=none"], check=True)  # the last, partial block too
    assert get(s3, bucket, "dd") == data
    out = tmp_path / "out"
    subprocess.run(["dd", f"if={m.path / 'dd'}", f"of={out}", "bs=1M", "iflag=direct",
                    "status=none"], check=True)
    assert hashlib.md5(out.read_bytes()).digest() == hashlib.md5(data).digest()
    fd = os.open(m.path / "dd", os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 4097, 3 * MiB + 1) == data[3 * MiB + 1:3 * MiB + 4098]
    finally:
        os.close(fd)
    assert not log_lines(m, " ERROR ")


def test_truncate_chmod_chown_utime(mount_factory: Callable[..., Mount], s3: Any,
                                    bucket: str) -> None:
    put(s3, bucket, "f", b"0123456789")
    etag = s3.head_object(Bucket=bucket, Key="f")["ETag"]
    m = mount_factory(bucket)
    m.allowed_errors.append("truncate to 5 bytes is not supported")
    f = m.path / "f"
    before = os.stat(f)
    assert oserror(lambda: os.truncate(f, 5)) == errno.EOPNOTSUPP
    os.truncate(f, 10)  # to the current size: nothing to do
    os.chmod(f, 0o600)
    os.chown(f, 1234, 5678)
    os.utime(f, (1_000_000, 1_000_000))
    after = os.stat(f)  # at once, although stored a moment later
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_size) == (
        0o100600, 1234, 5678, 10)
    assert after.st_mtime == 1_000_000 != before.st_mtime
    deadline = time.monotonic() + 10
    while "mtime" not in s3.head_object(Bucket=bucket, Key="f")["Metadata"]:
        assert time.monotonic() < deadline, "the times were not stored"
        time.sleep(0.2)
    head = s3.head_object(Bucket=bucket, Key="f")
    assert head["Metadata"] == {"mode": str(0o100600), "uid": "1234", "gid": "5678",
                                "mtime": "1000000", "atime": "1000000"}
    assert head["ETag"] == etag and get(s3, bucket, "f") == b"0123456789"  # bytes untouched
    assert len(log_lines(m, "truncate to 5 bytes is not supported")) == 1


# -- sizes ------------------------------------------------------------------------------------


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def make_keys_fast(server: SeaweedServer, bucket: str, folder: str, names: list[str],
                   scratch: Path) -> None:
    """Zero-byte objects `folder/NAME` through the filer (`weed filer.copy`): ten times faster
    than 100,000 PutObjects (about 20 s against 190 s here); they are real keys in the bucket,
    listed and HEAD-able like any other (their ETag is empty)."""
    src = scratch / folder
    src.mkdir(parents=True)
    for name in names:
        (src / name).touch()
    url = f"http://127.0.0.1:{server.ports.filer}/buckets/{bucket}/"
    subprocess.run([find_weed(), "filer.copy", "-c", "32", str(src), url], check=True,
                   capture_output=True, timeout=300)
    shutil.rmtree(src)


@pytest.mark.slow
def test_directory_of_100000_entries(mount_factory: Callable[..., Mount],
                                     s3server: SeaweedServer, s3: Any, bucket: str,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = 100_000
    names = [f"entry-{i:06d}{'-x' * (i % 5)}" for i in range(n - 2)]
    t0 = time.monotonic()
    make_keys_fast(s3server, bucket, "huge", names, tmp_path / "scratch")
    put(s3, bucket, "huge/a-real-put", b"read me")
    put(s3, bucket, "huge/zz-last", b"last")
    names += ["a-real-put", "zz-last"]
    setup = time.monotonic() - t0
    assert len(keys(s3, bucket, "huge/")) == n
    m = mount_factory(bucket)
    baseline = vm_hwm_kib(m.proc.pid)
    t1 = time.monotonic()
    listed = os.listdir(m.path / "huge")
    listing = time.monotonic() - t1
    assert len(listed) == n and set(listed) == set(names)
    assert os.stat(m.path / "huge" / names[n // 2]).st_size == 0
    assert os.stat(m.path / "huge" / "zz-last").st_size == 4
    assert (m.path / "huge" / "a-real-put").read_bytes() == b"read me"
    hwm = vm_hwm_kib(m.proc.pid)
    with capsys.disabled():
        print(f"\n100,000 entries: setup {setup:.1f} s, listdir {listing:.1f} s, mount VmHWM "
              f"{baseline // 1024} MiB at start, {hwm // 1024} MiB after the listing")
    assert hwm < 200 * 1024, f"mount peak RSS {hwm // 1024} MiB"


# -- files deleted while open -----------------------------------------------------------------


def test_object_deleted_under_a_reader(mount_factory: Callable[..., Mount], s3: Any,
                                       bucket: str) -> None:
    data = random.Random(3).randbytes(20 * MiB)
    put(s3, bucket, "big", data)
    put(s3, bucket, "other", b"still here")
    m = mount_factory(bucket)
    m.allowed_errors.append("the object was deleted while the file was open")
    fd = os.open(m.path / "big", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == data[:4096]
        s3.delete_object(Bucket=bucket, Key="big")
        assert oserror(lambda: os.pread(fd, 4096, 15 * MiB)) == errno.EIO
        try:  # bytes already read may come from the kernel's page cache: the old ones
            assert os.pread(fd, 4096, 0) == data[:4096]
        except OSError as exc:
            assert exc.errno == errno.EIO
    finally:
        os.close(fd)
    assert (m.path / "other").read_bytes() == b"still here"  # the mount keeps serving
    time.sleep(1.2)  # --metadata-ttl
    assert oserror(lambda: os.stat(m.path / "big")) == errno.ENOENT
    assert log_lines(m, "GET big [")[0].split(" ERROR ")[1].startswith("s3mount.fs: read:")
    assert "Traceback" not in m.log()


def test_unlink_of_a_file_open_for_reading(mount_factory: Callable[..., Mount], s3: Any,
                                           bucket: str) -> None:
    data = random.Random(4).randbytes(20 * MiB)
    put(s3, bucket, "f", data)
    m = mount_factory(bucket)
    m.allowed_errors.append("the object was deleted while the file was open")
    fd = os.open(m.path / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == data[:100]
        os.unlink(m.path / "f")  # allowed, and the object is gone at once
        assert keys(s3, bucket) == []
        assert oserror(lambda: os.stat(m.path / "f")) == errno.ENOENT
        assert oserror(lambda: os.pread(fd, 100, 10 * MiB)) == errno.EIO
    finally:
        os.close(fd)
    assert os.listdir(m.path) == []
