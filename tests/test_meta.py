"""File attributes in S3 user metadata (s3mount/meta.py), in s3fs-fuse's and rclone's convention.

Three levels: encoding and decoding alone, with values s3fs and rclone write (from their sources,
docs/METADATA.md); the store against SeaweedFS (put, multipart, copy carry metadata and
Content-Type, head returns them); and interop with the real tools: s3fs-fuse mounted on the
same bucket (what it writes we read, what we write it shows), and rclone's mtime both ways.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from s3mount.config import Config
from s3mount.meta import (
    SYMLINK_MODE,
    FileMeta,
    format_time,
    guess_content_type,
    link_target,
    parse_mode,
    parse_time,
    symlink_body,
)
from s3mount.store import S3Store
from tests.conftest import Mount
from tests.seaweed import SeaweedServer

NS = 1_000_000_000
# 2001-02-03 04:05:06.123456789 UTC
T1 = 981173106 * NS + 123456789


# -- level 0: encoding and decoding -----------------------------------------------------------


def test_to_headers_writes_s3fs_keys_and_formats() -> None:
    meta = FileMeta(mtime_ns=T1, atime_ns=T1 + 1, ctime_ns=981173106 * NS,
                    mode=stat.S_IFREG | 0o640, uid=1000, gid=100)
    assert meta.to_headers() == {
        "mtime": "981173106.123456789", "atime": "981173106.123456790", "ctime": "981173106",
        "mode": "33184", "uid": "1000", "gid": "100",
    }
    assert FileMeta(mtime_ns=5 * NS).to_headers() == {"mtime": "5"}  # only what is set
    assert FileMeta().to_headers() == {}
    assert FileMeta().is_empty and not FileMeta(uid=0).is_empty


def test_time_format_keeps_leading_zeros_of_the_fraction() -> None:
    # s3fs reads the digits after the point as a count of nanoseconds (metaheader.cpp
    # cvt_string_to_time), rclone as a decimal fraction: with all nine digits both agree.
    assert format_time(7 * NS + 5) == "7.000000005"
    assert format_time(7 * NS + 500_000_000) == "7.500000000"
    assert format_time(0) == "0"
    assert format_time(-1_500_000_000) == "-1.500000000"  # rclone's form before 1970


@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))
def test_time_round_trip_is_exact(ns: int) -> None:
    text = format_time(ns)
    assert parse_time(text) == ns
    if ns >= 0:  # as s3fs reads it: whole seconds, and the digits after the point as ns
        sec, _, frac = text.partition(".")
        assert int(sec) * NS + int(frac or "0") == ns


def test_reads_what_s3fs_writes() -> None:
    # Measured: `echo hello > f.txt; touch -d '2001-02-03 04:05:06.123456789' f.txt;
    # chmod 600 f.txt` and `ln -s target/x.txt link` through s3fs 1.90 (Debian 12).
    f = FileMeta.from_headers({"atime": "981173106.123456789", "ctime": "1795862252",
                               "gid": "0", "mode": "33152", "mtime": "981173106.123456789",
                               "uid": "0"})
    assert f == FileMeta(mtime_ns=T1, atime_ns=T1, ctime_ns=1795862252 * NS,
                         mode=stat.S_IFREG | 0o600, uid=0, gid=0)
    link = FileMeta.from_headers({"atime": "1795862252", "ctime": "1795862252", "gid": "0",
                                  "mode": "41471", "mtime": "1795862252", "uid": "0"})
    assert link.is_symlink and link.mode == SYMLINK_MODE and not f.is_symlink
    assert FileMeta.from_headers({"mode": "16877"}).mode == stat.S_IFDIR | 0o755  # mkdir
    # boto3 gives the keys without the prefix; raw HTTP headers have it, in any case
    assert FileMeta.from_headers({"X-Amz-Meta-Mtime": "981173106.123456789",
                                  "x-amz-meta-mode": "33152"}) == FileMeta(
        mtime_ns=T1, mode=stat.S_IFREG | 0o600)


def test_reads_what_rclone_writes() -> None:
    # rclone's s3 backend: mtime = swift.TimeToFloatString, trailing zeros trimmed
    assert FileMeta.from_headers({"mtime": "1354040105.123456789"}).mtime_ns == (
        1354040105 * NS + 123456789)
    assert FileMeta.from_headers({"mtime": "1354040105.5"}).mtime_ns == 1354040105 * NS + NS // 2
    assert FileMeta.from_headers({"mtime": "1354040105"}).mtime_ns == 1354040105 * NS
    # rclone --metadata from a local file: mode in octal ("%0o"), times RFC 3339, ids decimal
    m = FileMeta.from_headers({"mode": "100644", "uid": "1000", "gid": "1000",
                               "atime": "2006-01-02T15:04:05.999999999+07:00",
                               "btime": "2006-01-02T08:04:05Z", "md5chksum": "xyz"})
    assert m == FileMeta(atime_ns=1136189045 * NS + 999999999, mode=stat.S_IFREG | 0o644,
                         uid=1000, gid=1000)
    assert parse_mode("40755") == stat.S_IFDIR | 0o755  # decimal 40755 has no valid type
    assert parse_mode("120777") == SYMLINK_MODE


def test_reads_s3sync_and_gcs_keys_as_s3fs_does() -> None:
    # metaheader.cpp get_mode/get_uid/get_gid/get_mtime fall back to these
    assert FileMeta.from_headers({"permissions": "420", "owner": "7", "group": "8"}) == (
        FileMeta(mode=0o644, uid=7, gid=8))  # no type bits: the key decides, as in s3fs
    assert FileMeta.from_headers({"goog-reserved-posix-mode": "755",
                                  "goog-reserved-file-mtime": "1600000000"}) == FileMeta(
        mtime_ns=1600000000 * NS, mode=0o755)
    # s3fs's own keys win over the fallbacks
    assert FileMeta.from_headers({"mode": "33188", "permissions": "511"}).mode == 0o100644
    assert parse_mode("0644") == 0o644 and parse_mode("0x1a4") == 0o644  # strtoll base 0


def test_unreadable_values_are_ignored_with_a_debug_line(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="s3mount.meta")
    got = FileMeta.from_headers({"mtime": "UTIME_OMIT", "atime": "yesterday", "ctime": "",
                                 "mode": "rwxr-xr-x", "uid": "-1", "gid": str(2**32)}, "k")
    assert got == FileMeta()
    lines = [r.getMessage() for r in caplog.records]
    assert "k: ignoring unreadable metadata mtime='UTIME_OMIT'" in lines  # s3fs >= 1.93 can
    assert len(lines) == 6
    assert parse_mode("99999") is None and parse_mode("270000") is None  # no file type
    assert parse_time("9223372036") is not None  # year 2262
    assert parse_time("9223372037") is None  # would overflow a 64-bit st_mtime_ns
    assert FileMeta.from_headers(None) == FileMeta()


def test_symlink_bodies() -> None:
    assert symlink_body("../a b/c") == b"../a b/c"
    assert symlink_body(b"\xff") == b"\xff"  # any bytes but NUL
    assert link_target(b"target/x.txt") == b"target/x.txt"
    assert link_target(b"target\n") == b"target"  # s3fs trims white space when it reads
    for bad in (b"", b"a\0b", b"x" * 4096):
        assert link_target(bad) is None
        with pytest.raises(ValueError):
            symlink_body(bad)


@pytest.mark.parametrize(("name", "expected"), [
    ("index.html", "text/html"), ("a/b/style.css", "text/css"), ("p.PNG", "image/png"),
    ("data.json", "application/json"), ("x.tar.gz", "application/gzip"),
    ("README", "application/octet-stream"), (".bashrc", "application/octet-stream"),
    ("f.unknownext", "application/octet-stream"), ("dir/", "application/x-directory"),
])
def test_guess_content_type(name: str, expected: str) -> None:
    assert guess_content_type(name) == expected


# -- level 1: the store against SeaweedFS -------------------------------------------------------


def md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


async def test_put_and_head_carry_meta_and_content_type(config: Config) -> None:
    store = S3Store(config)
    meta = FileMeta(mtime_ns=T1, mode=stat.S_IFREG | 0o751, uid=1234, gid=4321)
    await store.put("a.html", b"<p>", md5(b"<p>"), meta=meta.to_headers(),
                    content_type=guess_content_type("a.html"))
    info = await store.head("a.html")
    assert info is not None and info.content_type == "text/html"
    assert info.meta == meta.to_headers()
    assert FileMeta.from_headers(info.meta) == meta
    await store.put("plain", b"x", md5(b"x"))  # as before: no metadata
    plain = await store.head("plain")
    assert plain is not None and plain.meta == {}
    assert FileMeta.from_headers(plain.meta) == FileMeta()


async def test_multipart_upload_carries_meta_and_content_type(config: Config) -> None:
    store = S3Store(config)
    meta = FileMeta(mtime_ns=T1, atime_ns=T1, mode=stat.S_IFREG | 0o600)
    started = await store.create_upload("m.png", meta=meta.to_headers(),
                                        content_type="image/png")
    sent = await store.upload_part("m.png", started.upload_id, 1, b"abc", md5(b"abc"))
    await store.complete_upload("m.png", started.upload_id, [(1, sent.etag, None)])
    info = await store.head("m.png")
    assert info is not None and info.content_type == "image/png"
    assert FileMeta.from_headers(info.meta) == meta


async def test_copy_keeps_or_replaces_meta(config: Config) -> None:
    store = S3Store(config)
    old = FileMeta(mtime_ns=1 * NS, mode=stat.S_IFREG | 0o644)
    new = FileMeta(mtime_ns=T1, mode=stat.S_IFREG | 0o600, uid=5)
    sent = await store.put("src.css", b"b{}", md5(b"b{}"), meta=old.to_headers(),
                           content_type="text/css")
    await store.copy("src.css", "kept", sent.etag)  # meta None: a copy of everything
    kept = await store.head("kept")
    assert kept is not None and kept.content_type == "text/css"
    assert FileMeta.from_headers(kept.meta) == old
    # REPLACE: the new metadata; the Content-Type is the source's (REPLACE alone would reset
    # it: SeaweedFS answers binary/octet-stream then, measured)
    await store.copy("src.css", "replaced", sent.etag, meta=new.to_headers())
    replaced = await store.head("replaced")
    assert replaced is not None and replaced.content_type == "text/css"
    assert FileMeta.from_headers(replaced.meta) == new
    await store.copy("src.css", "typed", sent.etag, meta={}, content_type="text/plain")
    typed = await store.head("typed")
    assert typed is not None and typed.content_type == "text/plain" and typed.meta == {}
    # onto itself: how times are set on an object already stored (rclone's SetModTime)
    await store.copy("src.css", "src.css", sent.etag, meta=new.to_headers())
    same = await store.head("src.css")
    assert same is not None and same.etag == sent.etag and same.content_type == "text/css"
    assert FileMeta.from_headers(same.meta) == new


async def test_seaweedfs_keeps_no_metadata_on_directory_markers(config: Config) -> None:
    """A fact of the test server (docs/METADATA.md): SeaweedFS stores "d/" as a directory and
    drops its user metadata, so directory times and modes cannot be kept there (s3fs shows
    its defaults for them). A plain object keeps it."""
    store = S3Store(config)
    meta = FileMeta(mtime_ns=T1, mode=stat.S_IFDIR | 0o700).to_headers()
    await store.put("d/", b"", md5(b""), meta=meta, content_type=guess_content_type("d/"))
    marker = await store.head("d/")
    assert marker is not None and marker.meta == {}
    await store.put("f", b"", md5(b""), meta=meta)
    plain = await store.head("f")
    assert plain is not None and plain.meta == meta


# -- level 3: interop with s3fs-fuse and rclone -------------------------------------------------


def _env_without_aws() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}


@pytest.fixture
def s3fs_mount(s3server: SeaweedServer, tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a bucket with the real s3fs-fuse (foreground, its own process); unmounted and
    stopped by pid in teardown."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def mount(bucket: str) -> Path:
        n = len(procs)
        mnt, log_path, passwd = (tmp_path / f"s3fs{n}", tmp_path / f"s3fs{n}.log",
                                 tmp_path / f"s3fs{n}.passwd")
        mnt.mkdir()
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{s3server.access_key}:{s3server.secret_key}\n")
        opts = (f"url={s3server.endpoint_url},use_path_request_style,passwd_file={passwd},"
                "stat_cache_expire=1")
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(["s3fs", bucket, str(mnt), "-f", "-o", opts],
                                    stdout=logf, stderr=subprocess.STDOUT,
                                    env=_env_without_aws())
        procs.append((proc, mnt))
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"s3fs did not mount:\n{log_path.read_text()}")
            time.sleep(0.05)
        return mnt

    yield mount
    for proc, mnt in procs:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_what_s3fs_writes_reads_right(config: Config, s3fs_mount: Callable[[str], Path],
                                      s3: Any, bucket: str) -> None:
    mnt = s3fs_mount(bucket)
    (mnt / "f.txt").write_bytes(b"hello\n")
    subprocess.run(["touch", "-d", "2001-02-03 04:05:06.123456789 UTC", str(mnt / "f.txt")],
                   check=True)
    os.chmod(mnt / "f.txt", 0o640)
    os.symlink("target/x.txt", mnt / "link")
    seen = os.stat(mnt / "f.txt")  # what s3fs itself shows

    info = trio.run(S3Store(config).head, "f.txt")
    assert info is not None
    meta = FileMeta.from_headers(info.meta, "f.txt")
    assert meta.mtime_ns == T1 == seen.st_mtime_ns
    assert meta.mode == stat.S_IFREG | 0o640 == seen.st_mode
    assert (meta.uid, meta.gid) == (os.getuid(), os.getgid()) == (seen.st_uid, seen.st_gid)
    assert info.content_type == guess_content_type("f.txt") == "text/plain"
    link = trio.run(S3Store(config).head, "link")
    assert link is not None
    link_meta = FileMeta.from_headers(link.meta, "link")
    assert link_meta.is_symlink and link_meta.mode == SYMLINK_MODE
    body = s3.get_object(Bucket=bucket, Key="link")["Body"].read()
    assert link_target(body) == b"target/x.txt"


PAGE = FileMeta(mtime_ns=T1, atime_ns=T1, ctime_ns=T1, mode=stat.S_IFREG | 0o751, uid=1234,
                gid=4321)
# Nanoseconds with leading and with trailing zeros: s3fs reads the digits after the point as a
# count of nanoseconds, so only the nine-digit form reads right in both tools.
BIG = FileMeta(mtime_ns=1_700_000_000 * NS + 5, mode=stat.S_IFREG | 0o600)
RETIMED = FileMeta(mtime_ns=1 * NS + 250_000_000, mode=stat.S_IFREG | 0o444, uid=0, gid=0)


async def _write_with_store(config: Config) -> None:
    """A page, a link to it, a multipart object and a copy with new attributes, each with its
    attributes encoded by meta.py and sent by the store."""
    store = S3Store(config)
    await store.put("site/index.html", b"<p>hi</p>", md5(b"<p>hi</p>"),
                    meta=PAGE.to_headers(), content_type=guess_content_type("index.html"))
    link = FileMeta(mtime_ns=1_600_000_000 * NS, mode=SYMLINK_MODE, uid=os.getuid(),
                    gid=os.getgid())
    body = symlink_body("site/index.html")
    await store.put("home", body, md5(body), meta=link.to_headers())
    started = await store.create_upload("big.bin", meta=BIG.to_headers())
    sent = await store.upload_part("big.bin", started.upload_id, 1, b"x" * 10, md5(b"x" * 10))
    await store.complete_upload("big.bin", started.upload_id, [(1, sent.etag, None)])
    info = await store.head("site/index.html")
    assert info is not None
    await store.copy("site/index.html", "copy.html", info.etag, meta=RETIMED.to_headers())


def test_what_s3mount_writes_s3fs_shows_right(config: Config,
                                              s3fs_mount: Callable[[str], Path]) -> None:
    trio.run(_write_with_store, config)
    mnt = s3fs_mount(config.bucket)
    st_page = os.stat(mnt / "site/index.html")
    assert (st_page.st_mtime_ns, st_page.st_atime_ns, st_page.st_mode, st_page.st_uid,
            st_page.st_gid) == (T1, T1, stat.S_IFREG | 0o751, 1234, 4321)
    assert os.path.islink(mnt / "home")
    assert os.readlink(mnt / "home") == "site/index.html"
    assert (mnt / "home").read_bytes() == b"<p>hi</p>"  # followed through s3fs
    assert os.lstat(mnt / "home").st_mtime_ns == 1_600_000_000 * NS
    st_big = os.stat(mnt / "big.bin")
    assert (st_big.st_mtime_ns, st_big.st_mode) == (BIG.mtime_ns, BIG.mode)
    st_copy = os.stat(mnt / "copy.html")
    assert (st_copy.st_mtime_ns, st_copy.st_mode) == (RETIMED.mtime_ns, RETIMED.mode)


def _rclone(server: SeaweedServer, tmp_path: Path, *args: str) -> str:
    env = {**_env_without_aws(),
           "RCLONE_CONFIG": str(tmp_path / "rclone.conf"),  # none: the remote is all in env
           "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "Other",
           "RCLONE_CONFIG_S3_ENDPOINT": server.endpoint_url,
           "RCLONE_CONFIG_S3_ACCESS_KEY_ID": server.access_key,
           "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": server.secret_key,
           "RCLONE_CONFIG_S3_FORCE_PATH_STYLE": "true"}
    out = subprocess.run(["rclone", *args], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_rclone_mtime_both_ways(config: Config, s3server: SeaweedServer,
                                tmp_path: Path) -> None:
    ours = FileMeta(mtime_ns=T1, mode=stat.S_IFREG | 0o644)
    trio.run(partial(S3Store(config).put, "ours.txt", b"x", md5(b"x"), meta=ours.to_headers()))
    listed = json.loads(_rclone(s3server, tmp_path, "lsjson", f"s3:{config.bucket}"))
    by_name = {e["Name"]: e for e in listed}
    assert by_name["ours.txt"]["ModTime"] == "2001-02-03T04:05:06.123456789Z"

    local = tmp_path / "theirs.css"
    local.write_bytes(b"a{}")
    os.chmod(local, 0o604)
    os.utime(local, ns=(T1, 1_500_000_000 * NS + 250_000_000))
    _rclone(s3server, tmp_path, "copyto", "-M", str(local), f"s3:{config.bucket}/theirs.css")
    info = trio.run(S3Store(config).head, "theirs.css")
    assert info is not None
    theirs = FileMeta.from_headers(info.meta, "theirs.css")
    assert theirs.mtime_ns == 1_500_000_000 * NS + 250_000_000  # "1500000000.25"
    assert theirs.mode == stat.S_IFREG | 0o604  # --metadata: octal "100604"
    assert theirs.atime_ns == T1  # --metadata: RFC 3339
    # Go's mime package adds a charset to text types; the type is the one we guess
    assert info.content_type == "text/css; charset=utf-8"
    assert info.content_type.split(";")[0] == guess_content_type("theirs.css")


def test_files_links_and_times_cross_between_s3fs_and_s3mount_mounts(
        s3fs_mount: Callable[[str], Path], mount_factory: Callable[..., Mount],
        bucket: str) -> None:
    """Both tools mounted on one bucket: what each writes (a file, a mode, a time, a link),
    the other shows as written."""
    theirs = s3fs_mount(bucket)
    ours = mount_factory(bucket, "--metadata-ttl", "0").path
    (theirs / "by-s3fs.txt").write_bytes(b"from s3fs\n")
    os.chmod(theirs / "by-s3fs.txt", 0o640)
    os.utime(theirs / "by-s3fs.txt", ns=(T1, T1))
    os.symlink("by-s3fs.txt", theirs / "s3fs-link")
    (ours / "by-s3mount.txt").write_bytes(b"from s3mount\n")
    os.chmod(ours / "by-s3mount.txt", 0o600)
    os.utime(ours / "by-s3mount.txt", ns=(T1 + 5, T1 + 5))
    os.symlink("by-s3mount.txt", ours / "s3mount-link")
    time.sleep(2)  # s3mount stores times set on a closed file a second later; s3fs caches 1 s
    for mnt in (ours, theirs):
        for name, mode, ns in (("by-s3fs.txt", 0o640, T1), ("by-s3mount.txt", 0o600, T1 + 5)):
            st = os.stat(mnt / name)
            assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (mode, ns), (mnt, name)
        assert os.readlink(mnt / "s3fs-link") == "by-s3fs.txt"
        assert os.readlink(mnt / "s3mount-link") == "by-s3mount.txt"
        assert (mnt / "s3mount-link").read_bytes() == b"from s3mount\n"
        assert (mnt / "s3fs-link").read_bytes() == b"from s3fs\n"
