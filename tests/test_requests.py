"""How many S3 requests an operation costs (docs/benchmarks.md, "Profiles and fixes"), and that
the caches which save them stay within --metadata-ttl. Counted by a proxy between the mount and
the server (tests/faultproxy.py) or by a store wrapper."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from s3mount.config import Config
from s3mount.errors import StoreError
from s3mount.fs import S3Fs
from s3mount.keys import KeyMap
from s3mount.mount import _warm_up
from s3mount.store import S3Store
from tests.conftest import Mount, get, keys, put
from tests.faultproxy import FaultProxy, in_series
from tests.faults import FaultyStore
from tests.seaweed import SeaweedServer
from tests.test_writer import uploads, write_all

CTX = pyfuse3.RequestContext()
ROOT = pyfuse3.ROOT_INODE
ROUND_TRIP = 0.1  # seconds the proxy holds each request, to tell round trips apart


@pytest.fixture
def proxy(s3server: SeaweedServer) -> Iterator[FaultProxy]:
    with FaultProxy(s3server.endpoint_url) as p:
        yield p


class CountingStore(FaultyStore):
    """Counts HEADs (and GETs of a file's first bytes, which stand in for one) and LISTs; a
    HEAD fails when `no_heads` is set."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.heads = self.lists = 0
        self.no_heads = False

    async def head(self, key: str, checksum: bool = False) -> Any:
        self.heads += 1
        if self.no_heads:
            raise StoreError(f"HEAD {key}: not expected")
        return await super().head(key, checksum)

    async def get_first(self, key: str, into: memoryview) -> Any:
        self.heads += 1
        if self.no_heads:
            raise StoreError(f"GET {key} (its first bytes): not expected")
        return await self.inner.get_first(key, into)

    async def list_page(self, *args: Any) -> Any:
        self.lists += 1
        return await self.inner.list_page(*args)


async def test_single_put_is_verified_by_its_answer_without_a_head(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery) -> None:
    """The PutObject answer carries the ETag S3 computed (and checked against Content-MD5):
    no HEAD follows it. A multipart upload is still checked by a HEAD after completion."""
    store = CountingStore(S3Store(config))
    store.no_heads = True
    up = uploads(config, nursery, store).start("small")
    await write_all(up, b"four" * 1024)
    info = await up.complete()
    assert info.size == 4096 and get(s3, bucket, "small") == b"four" * 1024
    assert info.etag == s3.head_object(Bucket=bucket, Key="small")["ETag"].strip('"')
    store.no_heads = False
    up = uploads(config, nursery, store).start("big")
    await write_all(up, os.urandom(config.part_size + 1))
    await up.complete()
    assert store.heads == 1


async def test_new_directory_answers_lookups_of_new_names_from_its_listing(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery) -> None:
    """mkdir here: the directory is known to be empty, so looking up names in it (as cp -r
    does before each create) costs no request; names written here are found. Once
    --metadata-ttl has passed, one LIST of the directory answers again, and a name another
    client added shows."""
    store = CountingStore(S3Store(config))
    fs = S3Fs(replace(config, metadata_ttl=0.5), store, nursery)
    d = await fs.mkdir(ROOT, b"d", 0o755, CTX)
    store.heads = store.lists = 0
    for name in (b"a", b"b", b"c"):
        assert await errno_of(fs.lookup(d.st_ino, name, CTX)) == errno.ENOENT
        info, _ = await fs.create(d.st_ino, name, 0o644, os.O_WRONLY, CTX)
        await fs.write(info.fh, 0, name)
        await fs.flush(info.fh)
        await fs.release(info.fh)
    assert (store.heads, store.lists) == (0, 0)
    put(s3, bucket, "d/other", b"from another client")
    await trio.sleep(0.6)
    assert await errno_of(fs.lookup(d.st_ino, b"new", CTX)) == errno.ENOENT
    assert (store.heads, store.lists) == (0, 1)  # the whole directory, once
    assert (await fs.lookup(d.st_ino, b"other", CTX)).st_size == 19
    for name in ("a", "b", "c"):  # expired attributes; the fresh listing has them
        assert (await fs.lookup(d.st_ino, name.encode(), CTX)).st_size == 1
    assert await errno_of(fs.lookup(d.st_ino, b"new2", CTX)) == errno.ENOENT
    # the listing answers for names written here; the other client's file needs its HEAD
    # for its times and mode, which no LIST carries
    assert (store.heads, store.lists) == (1, 1)
    assert sorted(keys(s3, bucket)) == ["d/", "d/a", "d/b", "d/c", "d/other"]


async def test_listing_taken_while_this_mount_writes_is_not_kept(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery) -> None:
    """A file whose upload completes while the directory is being listed may be missing from
    the listing: that listing is not kept, so the file is never reported missing."""
    store = CountingStore(S3Store(config))
    fs = S3Fs(replace(config, metadata_ttl=30), store, nursery)
    d = await fs.mkdir(ROOT, b"d", 0o755, CTX)
    info, _ = await fs.create(d.st_ino, b"f", 0o644, os.O_WRONLY, CTX)
    await fs.write(info.fh, 0, b"x")
    fs.ns.inodes.listings["d"].expires = 0  # the next lookup in d lists it again
    real = store.inner.list_page

    async def list_then_finish_upload(*args: Any) -> Any:
        page = await real(*args)  # taken before the upload completes
        await fs.flush(info.fh)
        return page
    store.inner.list_page = list_then_finish_upload
    assert await errno_of(fs.lookup(d.st_ino, b"g", CTX)) == errno.ENOENT
    store.inner.list_page = real
    await fs.release(info.fh)
    fs.ns.inodes.forget(fs.ns.inodes.by_path["d/f"].ino, 1)  # the kernel forgets it
    assert "d/f" not in fs.ns.inodes.by_path
    assert (await fs.lookup(d.st_ino, b"f", CTX)).st_size == 1


async def errno_of(coro: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await coro
    return exc.value.errno


def test_cp_r_of_small_files_costs_one_put_each(mount_factory: Callable[..., Mount],
                                                proxy: FaultProxy, s3: Any, bucket: str,
                                                tmp_path: Path) -> None:
    """cp -r into the mount: per file one PutObject and nothing else (it was 2 HEADs, a LIST
    and a PUT): the new directory's listing answers the lookups, the PUT's answer verifies."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i:02d}").write_bytes(os.urandom(4096))
    m = mount_factory(bucket, "--endpoint-url", proxy.url, "--metadata-ttl", "30")
    proxy.counts.clear()
    subprocess.run(["cp", "-r", str(src), str(m.path / "d")], check=True, timeout=60)
    counts = {k: v for k, v in proxy.counts.items() if k not in ("requests", "get_bytes")}
    # the lookup of d (a GET of d's first bytes, 404, for its HEAD, and LIST d/: the
    # warm-up's listing of the top directory answers only for names it shows), the marker
    # d/, the 20 files
    assert counts == {"GET": 1, "LIST": 1, "PUT": 21}, list(proxy.log)
    for i in range(20):
        assert get(s3, bucket, f"d/f{i:02d}") == (src / f"f{i:02d}").read_bytes()


def test_fresh_mount_has_warmed_up_its_client(mount_factory: Callable[..., Mount],
                                              proxy: FaultProxy, bucket: str) -> None:
    """Before the mount is live it has sent a HEAD, a LIST and a GET (of a key that is not
    there), so the first lookup and read do not pay for boto3's preparing each kind of request
    and for opening connections (time to first byte on a fresh mount 34 -> 22 ms)."""
    m = mount_factory(bucket, "--endpoint-url", proxy.url)
    sent = [(method, path.partition("?")[0].rsplit("/", 1)[-1]) for method, path in proxy.log]
    assert ("HEAD", ".s3mount-warm-up") in sent and ("GET", ".s3mount-warm-up") in sent
    assert proxy.counts["LIST"] == 1
    assert "warming up" not in m.log()


def test_open_on_a_fresh_mount_costs_one_round_trip(mount_factory: Callable[..., Mount],
                                                    proxy: FaultProxy, s3: Any,
                                                    bucket: str) -> None:
    """Opening d/f and reading a byte on a fresh mount: the warm-up's listing of the top
    directory answers the lookup of d, which starts d's listing (a LIST of up to 100 names)
    in the background; f's lookup sends a GET of its first MiB, whose answer says what a
    HEAD would (its metadata: times, mode, owner, link-ness) and holds what the first read
    asks: one round trip (two when f's lookup sent a HEAD and the GET beside it; three when
    the GET waited for the HEAD), two requests, as the raw client's one GET plus the
    listing. A file of 1 MiB, which the kernel's first read asks whole, is verified by its
    ETag without a HEAD for its checksum, which that read would wait for. The attributes are
    the metadata's. A name changed by this mount is not answered from the listing."""
    body = os.urandom(1024 * 1024)  # one read of the kernel's: verified without a HEAD
    s3.put_object(Bucket=bucket, Key="d/f.bin", Body=body, Metadata={
        "mode": str(stat.S_IFREG | 0o640), "uid": "1234", "gid": "2345",
        "mtime": "1600000000.5", "atime": "1600000001", "ctime": "1600000002"})
    put(s3, bucket, "d/g.bin", b"another")
    m = mount_factory(bucket, "--endpoint-url", proxy.url, "--metadata-ttl", "30")
    proxy.counts.clear()
    proxy.spans.clear()
    proxy.latency = ROUND_TRIP  # each request takes this long: overlapping ones count once
    with open(m.path / "d" / "f.bin", "rb") as f:
        assert f.read(1) == body[:1]
        assert f.read() == body[1:]
    assert len(in_series(proxy.spans)) == 1, list(proxy.spans)
    counts = {k: v for k, v in proxy.counts.items() if k not in ("requests", "get_bytes")}
    assert counts == {"LIST": 2, "GET": 1}, list(proxy.log)  # (LIST d/ and d/f.bin/)
    proxy.latency = 0
    st = os.stat(m.path / "d" / "f.bin")
    assert (st.st_mode, st.st_uid, st.st_gid) == (stat.S_IFREG | 0o640, 1234, 2345)
    assert (st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns) == (
        1_600_000_000_500_000_000, 1_600_000_001_000_000_000, 1_600_000_002_000_000_000)
    assert proxy.counts["requests"] == 3  # all known from the GET
    assert os.stat(m.path / "d" / "g.bin").st_size == 7  # from the listing too
    (m.path / "d" / "g.bin").write_bytes(b"replaced here")
    os.unlink(m.path / "d" / "f.bin")
    assert os.stat(m.path / "d" / "g.bin").st_size == 13
    assert not (m.path / "d" / "f.bin").exists()
    assert sorted(os.listdir(m.path / "d")) == ["g.bin"]


def test_first_reads_are_not_started_for_lookups_that_want_attributes(
        mount_factory: Callable[..., Mount], proxy: FaultProxy, s3: Any, bucket: str) -> None:
    """The GET sent with a file's HEAD at its lookup is wasted when no open follows: `ls -l`
    (a readdir, then a lookup of each name) sends none, and lookups by path (`stat`, `rsync`)
    send one per listing: none more until an open takes it. `ls -l` costs a HEAD per file,
    as before."""
    for name in "abcde":
        put(s3, bucket, f"d/{name}", name.encode() * 1000)
    m = mount_factory(bucket, "--endpoint-url", proxy.url, "--metadata-ttl", "30")
    proxy.counts.clear()
    out = subprocess.run(["ls", "-l", str(m.path / "d")], check=True, capture_output=True,
                         text=True).stdout
    assert out.count("1000") == 5
    assert proxy.counts["GET"] == 0 and proxy.counts["HEAD"] == 5, dict(proxy.counts)

    m = mount_factory(bucket, "--endpoint-url", proxy.url, "--metadata-ttl", "30")
    proxy.counts.clear()
    for name in "abc":
        assert os.stat(m.path / "d" / name).st_size == 1000
    assert proxy.counts["GET"] == 1, dict(proxy.counts)  # the first stat's, then no more
    assert (m.path / "d" / "d").read_bytes() == b"d" * 1000  # its GET after its HEAD
    # a: a GET for its HEAD; b, c: a HEAD each; d: its HEAD, then its read's GET
    assert proxy.counts["GET"] == 2 and proxy.counts["HEAD"] == 3, dict(proxy.counts)


def test_ls_l_reads_ahead_the_heads_of_a_listed_directory(
        mount_factory: Callable[..., Mount], proxy: FaultProxy, s3: Any, bucket: str) -> None:
    """`ls -l` of N files sends at most one HEAD each, at once rather than one after another
    (once it asks for the first file's attributes after the readdir, the others are read
    ahead, s3mount/lookahead.py): the longest chain of requests in series is far shorter
    than N, no lookup lists the directory again, and the modes and times the objects'
    metadata hold show. `find` (names only) sends no HEAD of an entry."""
    n = 120
    modes = {i: stat.S_IFREG | (0o600 if i % 2 else 0o640) for i in range(n)}

    def put_one(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"d/f{i:03d}", Body=b"x" * i,
                      Metadata={"mode": str(modes[i]), "mtime": str(1_500_000_000 + i)})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put_one, range(n)))
    m = mount_factory(bucket, "--endpoint-url", proxy.url, "--metadata-ttl", "30")
    proxy.counts.clear()
    found = subprocess.run(["find", str(m.path / "d")], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    assert len(found) == n + 1
    entry_heads = [p for k, p in proxy.log if k == "HEAD" and "/d/" in p]
    # (d's lookup: from the warm-up's listing of the top directory)
    assert entry_heads == [] and proxy.counts["HEAD"] == 0, list(proxy.log)

    m = mount_factory(bucket, "--endpoint-url", proxy.url, "--metadata-ttl", "30")
    proxy.counts.clear()
    proxy.spans.clear()
    proxy.latency = 0.02
    out = subprocess.run(["ls", "-l", "--time-style=+%s", str(m.path / "d")], check=True,
                         capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    proxy.latency = 0
    lines = out.stdout.splitlines()[1:]
    assert len(lines) == n
    for i, line in enumerate(lines):
        mode, _, _, _, size, mtime, name = line.split()
        assert (name, mode, int(size), int(mtime)) == (
            f"f{i:03d}", stat.filemode(modes[i]), i, 1_500_000_000 + i), line
    counts = {k: v for k, v in proxy.counts.items() if k != "requests"}
    # d's lookup: its LIST (ahead: the top directory's listing answered it); the readdir: a
    # LIST; then one HEAD per file
    assert counts == {"HEAD": n, "LIST": 2}, counts
    chain = in_series(proxy.spans)
    assert len(chain) <= n // 4, [(s.kind, s.path) for s in chain]


def test_attrs_from_listing_shows_ls_l_from_the_lists_alone(
        mount_factory: Callable[..., Mount], proxy: FaultProxy, s3: Any, bucket: str) -> None:
    """--attrs-from listing (rclone's --use-server-modtime, goofys's way): `ls -l` of N files
    sends the LISTs and no HEAD, and each file shows what a LIST says (size, Last-Modified)
    with the mount's mode and owner, whatever its metadata holds (an s3fs symlink's too); a
    lookup by path, whose HEAD brings the metadata, shows the same. What the mount writes is
    stored as with `object`: a symlink made through it is a link in the bucket and reads back
    as one. The default mount shows the metadata (the contrast)."""
    n = 40
    for i in range(n):
        s3.put_object(Bucket=bucket, Key=f"d/f{i:03d}", Body=b"x" * i,
                      Metadata={"mode": str(stat.S_IFREG | 0o600), "uid": "1234",
                                "mtime": str(1_500_000_000 + i)})
    s3.put_object(Bucket=bucket, Key="d/link", Body=b"f000",
                  Metadata={"mode": str(stat.S_IFLNK | 0o777)})
    listed = {o["Key"].rpartition("/")[2]: int(o["LastModified"].timestamp())
              for o in s3.list_objects_v2(Bucket=bucket, Prefix="d/")["Contents"]}

    m = mount_factory(bucket, "--endpoint-url", proxy.url, "--metadata-ttl", "30",
                      "--attrs-from", "listing")
    proxy.counts.clear()
    out = subprocess.run(["ls", "-ln", "--time-style=+%s", str(m.path / "d")], check=True,
                         capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    lines = out.stdout.splitlines()[1:]
    assert len(lines) == n + 1
    for line in lines:
        mode, _, uid, _, size, mtime, name = line.split()
        body = 4 if name == "link" else int(name[1:])
        assert (mode, int(uid), int(size), int(mtime)) == (
            "-rw-r--r--", os.getuid(), body, listed[name]), line
    counts = {k: v for k, v in proxy.counts.items() if k != "requests"}
    assert counts == {"LIST": 2}, counts  # d's lookup, the readdir: no HEAD

    fresh = mount_factory(bucket, "--endpoint-url", proxy.url, "--attrs-from", "listing")
    proxy.counts.clear()
    st = os.lstat(fresh.path / "d" / "f007")  # looked up by path: its HEAD, or a GET for one
    assert proxy.counts["HEAD"] + proxy.counts["GET"] >= 1, dict(proxy.counts)
    assert (stat.filemode(st.st_mode), st.st_uid, int(st.st_mtime)) == (
        "-rw-r--r--", os.getuid(), listed["f007"])

    os.symlink("f001", m.path / "d" / "made")
    assert os.readlink(m.path / "d" / "made") == "f001"
    stored = s3.head_object(Bucket=bucket, Key="d/made")
    assert stat.S_ISLNK(int(stored["Metadata"]["mode"]))
    assert s3.get_object(Bucket=bucket, Key="d/made")["Body"].read() == b"f001"

    default = mount_factory(bucket, "--endpoint-url", proxy.url)
    st = os.lstat(default.path / "d" / "f007")
    assert (stat.filemode(st.st_mode), st.st_uid, int(st.st_mtime)) == (
        "-rw-------", 1234, 1_500_000_007)
    assert os.readlink(default.path / "d" / "link") == "f000"


S3FS_META = {"mode": str(stat.S_IFREG | 0o640), "uid": "1234", "gid": "2345",
             "mtime": "1600000000.5", "atime": "1600000001", "ctime": "1600000002"}


async def fresh_fs(config: Config, proxy: FaultProxy, nursery: trio.Nursery) -> S3Fs:
    """S3Fs as mount.py starts it (the warm-up, its listing of the top directory kept) over a
    store that can look files up by a GET of their first bytes, through the proxy."""
    config = replace(config, endpoint_url=proxy.url, metadata_ttl=30)
    store = S3Store(config)
    top = await _warm_up(store, KeyMap(config.prefix, config.dir_suffix))
    fs = S3Fs(config, store, nursery)
    assert top is not None
    fs.ns.warmed_up(*top)
    return fs


async def test_open_on_a_fresh_mount_costs_one_round_trip_with_first_gets(
        config: Config, proxy: FaultProxy, s3: Any, bucket: str,
        nursery: trio.Nursery) -> None:
    """Opening d/f and reading a byte on a fresh mount, as the kernel asks it (LOOKUP d,
    LOOKUP f, OPEN, READ), over a store that offers `get_first`: the warm-up's listing of the
    top directory answers the lookup of d; f's lookup sends a GET of its first MiB (its
    answer carries what a HEAD would: ETag, size, the s3fs metadata) with the LIST that says
    whether f is a directory, and d's listing goes in the background: one round trip, and
    the read is served by that GET. The attributes are the metadata's. A lookup in d
    afterwards is answered by d's listing and its own GET."""
    body = os.urandom(1024 * 1024)  # one read of the kernel's: verified without a HEAD
    s3.put_object(Bucket=bucket, Key="d/f.bin", Body=body, Metadata=S3FS_META)
    s3.put_object(Bucket=bucket, Key="d/g.bin", Body=b"another", Metadata=S3FS_META)
    fs = await fresh_fs(config, proxy, nursery)
    proxy.counts.clear()
    proxy.spans.clear()
    proxy.latency = ROUND_TRIP
    d = await fs.lookup(ROOT, b"d", CTX)
    f = await fs.lookup(d.st_ino, b"f.bin", CTX)
    info = await fs.open(f.st_ino, os.O_RDONLY, CTX)
    assert await fs.read(info.fh, 0, 1) == body[:1]
    chain = in_series(proxy.spans)
    assert len(chain) == 1, list(proxy.spans)
    assert (f.st_mode, f.st_uid, f.st_gid, f.st_size) == (stat.S_IFREG | 0o640, 1234, 2345,
                                                          len(body))
    assert (f.st_mtime_ns, f.st_atime_ns, f.st_ctime_ns) == (
        1_600_000_000_500_000_000, 1_600_000_001_000_000_000, 1_600_000_002_000_000_000)
    proxy.latency = 0
    assert await fs.read(info.fh, 1, len(body)) == body[1:]
    await fs.release(info.fh)
    await trio.sleep(0.1)  # (d's listing, in the background, has come)
    counts = {k: v for k, v in proxy.counts.items() if k not in ("requests", "get_bytes")}
    # f's first MiB (the whole file) and the LIST of f/ at once, d's listing alongside
    assert counts == {"GET": 1, "LIST": 2}, list(proxy.log)
    proxy.counts.clear()
    g = await fs.lookup(d.st_ino, b"g.bin", CTX)
    assert (g.st_size, g.st_mode) == (7, stat.S_IFREG | 0o640)
    assert await errno_of(fs.lookup(d.st_ino, b"nothing", CTX)) == errno.ENOENT
    info = await fs.open(g.st_ino, os.O_RDONLY, CTX)
    assert await fs.read(info.fh, 0, 100) == b"another"
    await fs.release(info.fh)
    counts = {k: v for k, v in proxy.counts.items() if k not in ("requests", "get_bytes")}
    assert counts == {"GET": 1}, list(proxy.log)


async def test_first_gets_are_bounded_for_lookups_no_open_follows(
        config: Config, proxy: FaultProxy, s3: Any, bucket: str,
        nursery: trio.Nursery) -> None:
    """A lookup by path that no open follows (`stat`) wastes its GET's body, up to 1 MiB:
    once a GET found a file in a directory, the next lookups there send HEADs until an open
    takes it or --metadata-ttl passes; a GET of a name that is not there, or a directory's,
    costs what a HEAD would and closes nothing."""
    for name in ("a", "b", "c"):
        put(s3, bucket, f"e/{name}", name.encode() * 5000)
    for i in range(120):  # more than a lookup lists: e's listing is not known
        put(s3, bucket, f"e/z{i:03d}", b"z")
    fs = await fresh_fs(config, proxy, nursery)
    await trio.sleep(0.1)
    e = await fs.lookup(ROOT, b"e", CTX)
    await trio.sleep(0.2)  # (e's listing, in the background: incomplete, not kept)
    proxy.counts.clear()
    assert await errno_of(fs.lookup(e.st_ino, b"nothing", CTX)) == errno.ENOENT
    for name in (b"a", b"b", b"c"):
        assert (await fs.lookup(e.st_ino, name, CTX)).st_size == 5000
    counts = {k: v for k, v in proxy.counts.items() if k not in ("requests", "get_bytes")}
    # the missing name: a GET (404) and a LIST; a: a GET; b and c: a HEAD each; and a LIST
    # of x/ each
    assert counts == {"GET": 2, "HEAD": 2, "LIST": 4}, list(proxy.log)
    assert proxy.counts["get_bytes"] <= 5000 + 1000, dict(proxy.counts)
    a = fs.ns.inodes.by_path["e/a"].ino
    info = await fs.open(pyfuse3.InodeT(a), os.O_RDONLY, CTX)  # the open takes it
    assert await fs.read(info.fh, 0, 10) == b"a" * 10
    await fs.release(info.fh)
    fs.ns.inodes.by_path["e/b"].expires = 0
    assert (await fs.lookup(e.st_ino, b"b", CTX)).st_size == 5000
    assert proxy.counts["GET"] == 3 and proxy.counts["HEAD"] == 2, list(proxy.log)
