"""Listing, stat and reads through a real mount (level 3), plus mkdir/rmdir/unlink, statfs,
--read-only, prefix mounts and --dir-suffix; every result is checked against the bucket as boto3
sees it."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

from s3mount.config import GiB, MiB, TiB
from tests.conftest import Mount, get, keys, put, start_mount
from tests.seaweed import SeaweedServer

LONG = "a" * 300  # one key component longer than NAME_MAX (255 bytes)

# What the tree bucket holds (key -> body) and what the mount must show for it.
TREE: dict[str, bytes] = {
    "top.txt": b"top level\n",
    "space name.txt": b"spaces are fine",
    "empty/": b"",  # marker of an empty directory
    "m/": b"",  # marker of a directory that also has content
    "m/inside.txt": b"inside m",
    "x/y/z.txt": b"deep, with implicit parents",
    "conf": b"a file hidden by the directory of the same name",
    "conf/inner.txt": b"inner",
    "bad//double": b"double slash",
    f"long/{LONG}/f": b"below a component that is too long",
    "sizes/zero": b"",
    "sizes/three-mib": random.Random(3).randbytes(3 * MiB + 17),
    "ünïcödé/façade €.txt": "grüße, ☃".encode(),
    "日本語/ファイル.txt": "こんにちは".encode(),
}
# path -> content for every file the mount shows; directories listed separately
VISIBLE_FILES: dict[str, bytes] = {
    "top.txt": TREE["top.txt"],
    "space name.txt": TREE["space name.txt"],
    "m/inside.txt": TREE["m/inside.txt"],
    "x/y/z.txt": TREE["x/y/z.txt"],
    "conf/inner.txt": TREE["conf/inner.txt"],
    "sizes/zero": b"",
    "sizes/three-mib": TREE["sizes/three-mib"],
    "ünïcödé/façade €.txt": TREE["ünïcödé/façade €.txt"],
    "日本語/ファイル.txt": TREE["日本語/ファイル.txt"],
}
VISIBLE_DIRS = {"empty", "m", "x", "x/y", "conf", "bad", "long", "sizes", "ünïcödé",
                "日本語"}

DATA_SIZE = 40 * MiB
DATA = random.Random(40).randbytes(DATA_SIZE)


# -- module-scoped buckets and mounts ---------------------------------------------------------


def _log_problems(m: Mount) -> list[str]:
    text = m.log()
    problems = [text] if "Traceback" in text or "unexpectedly" in text else []
    problems += [line for line in text.splitlines()
                 if " ERROR " in line and not any(a in line for a in m.allowed_errors)]
    return problems


@contextlib.contextmanager
def module_mount(server: SeaweedServer, bucket: str, where: Path, *args: str) -> Iterator[Mount]:
    m = start_mount(server, bucket, where / "mnt", where / "mount.log", *args)
    try:
        yield m
    finally:
        m.unmount()
    problems = _log_problems(m)
    assert not problems, "unexpected errors in the mount log:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def tree_bucket(s3: Any) -> str:
    name = f"mread-tree-{os.getpid()}"
    s3.create_bucket(Bucket=name)
    for key, body in TREE.items():
        put(s3, name, key, body)
    return name


@pytest.fixture(scope="module")
def tree_mount(s3server: SeaweedServer, tree_bucket: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    with module_mount(s3server, tree_bucket, tmp_path_factory.mktemp("tree")) as m:
        yield m


@pytest.fixture(scope="module")
def data_mount(s3server: SeaweedServer, s3: Any,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    name = f"mread-data-{os.getpid()}"
    s3.create_bucket(Bucket=name)
    put(s3, name, "rand40", DATA)
    assert s3.head_object(Bucket=name, Key="rand40")["ContentLength"] == DATA_SIZE
    with module_mount(s3server, name, tmp_path_factory.mktemp("data")) as m:
        yield m


def expected_tree(s3: Any, bucket: str) -> tuple[set[str], dict[str, bytes]]:
    """The directories and files the tree bucket must show. SeaweedFS cleans `bad//double`
    to `bad/double` (a valid name, then visible); a server that keeps the key as given must
    have it hidden, leaving `bad` empty."""
    stored = set(keys(s3, bucket))
    files = dict(VISIBLE_FILES)
    if "bad//double" not in stored:
        assert "bad/double" in stored
        files["bad/double"] = TREE["bad//double"]
    return set(VISIBLE_DIRS), files


def walk(root: Path) -> tuple[list[str], list[str]]:
    dirs: list[str] = []
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel + "/"
        dirs += [prefix + d for d in dirnames]
        files += [prefix + f for f in filenames]
    return dirs, files


def open_close(path: Path, flags: int) -> None:
    os.close(os.open(path, flags))


def errno_of(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as exc:
        fn()
    return exc.value.errno


# -- the tree: listing and stat ---------------------------------------------------------------


def test_tree_bucket_holds_what_the_tests_assume(s3: Any, tree_bucket: str) -> None:
    stored = set(keys(s3, tree_bucket))
    expected = set(TREE) - {"bad//double"}
    assert expected <= stored
    assert f"long/{LONG}/f" in stored  # the server kept the over-long component
    assert stored - expected <= {"bad//double", "bad/double"}
    assert len(stored) == len(TREE)


def test_listdir_and_walk_show_exactly_the_tree(tree_mount: Mount, s3: Any,
                                                tree_bucket: str) -> None:
    dirs, files = expected_tree(s3, tree_bucket)
    root = tree_mount.path
    top = os.listdir(root)
    assert len(top) == len(set(top)), f"duplicate entries: {sorted(top)}"
    assert set(top) == {p for p in dirs | set(files) if "/" not in p}
    walked_dirs, walked_files = walk(root)
    assert sorted(walked_dirs) == sorted(dirs)  # sorted lists: also no duplicates
    assert sorted(walked_files) == sorted(files)
    assert os.listdir(root / "empty") == []
    assert os.listdir(root / "long") == []  # its only child has a component > 255 bytes
    assert os.listdir(root / "conf") == ["inner.txt"]
    assert sorted(os.listdir(root / "m")) == ["inside.txt"]


def test_find_shows_exactly_the_tree(tree_mount: Mount, s3: Any, tree_bucket: str) -> None:
    dirs, files = expected_tree(s3, tree_bucket)
    r = subprocess.run(["find", ".", "-mindepth", "1", "-printf", r"%y %P\0"],
                       cwd=tree_mount.path, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    found = [item.decode() for item in r.stdout.split(b"\0") if item]
    assert sorted(found) == sorted([f"d {d}" for d in dirs] + [f"f {f}" for f in files])


def test_conflicting_name_is_a_directory(tree_mount: Mount) -> None:
    # SeaweedFS refuses a marker "conf/" next to a file "conf", so only the implicit case
    assert stat.S_ISDIR(os.stat(tree_mount.path / "conf").st_mode)
    assert (tree_mount.path / "conf" / "inner.txt").read_bytes() == b"inner"
    assert errno_of(lambda: open_close(tree_mount.path / "conf", os.O_RDWR)) == errno.EISDIR


def test_hidden_names_do_not_resolve(tree_mount: Mount) -> None:
    assert errno_of(lambda: os.stat(tree_mount.path / "long" / LONG)) in (errno.ENOENT,
                                                                          errno.ENAMETOOLONG)
    assert errno_of(lambda: os.stat(tree_mount.path / "nothing-here")) == errno.ENOENT


def test_stat_sizes_mtimes_and_default_modes(tree_mount: Mount, s3: Any,
                                             tree_bucket: str) -> None:
    dirs, files = expected_tree(s3, tree_bucket)
    for path, body in files.items():
        st = os.stat(tree_mount.path / path)
        head = s3.head_object(Bucket=tree_bucket, Key=path)
        assert st.st_size == len(body) == head["ContentLength"], path
        assert abs(st.st_mtime - head["LastModified"].timestamp()) <= 2, path
        assert stat.S_IMODE(st.st_mode) == 0o644 and stat.S_ISREG(st.st_mode), path
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    for path in dirs | {""}:
        st = os.stat(tree_mount.path / path)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755, path
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_mode_and_owner_options(mount_factory: Callable[..., Mount], tree_bucket: str) -> None:
    m = mount_factory(tree_bucket, "--file-mode", "0600", "--dir-mode", "0700",
                      "--uid", "1234", "--gid", "5678")
    f = os.stat(m.path / "x" / "y" / "z.txt")
    d = os.stat(m.path / "x" / "y")
    root = os.stat(m.path)
    assert stat.S_ISREG(f.st_mode) and stat.S_IMODE(f.st_mode) == 0o600
    assert stat.S_ISDIR(d.st_mode) and stat.S_IMODE(d.st_mode) == 0o700
    assert stat.S_IMODE(root.st_mode) == 0o700
    for st in (f, d, root):
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    ls = subprocess.run(["ls", "-ln", str(m.path / "x" / "y")], capture_output=True, text=True,
                        timeout=30)
    assert "-rw------- 1 1234 5678" in ls.stdout


def test_cat_every_file(tree_mount: Mount, s3: Any, tree_bucket: str) -> None:
    _, files = expected_tree(s3, tree_bucket)
    for path, body in files.items():
        r = subprocess.run(["cat", path], cwd=tree_mount.path, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == body, path
        assert get(s3, tree_bucket, path) == body


# -- reads of a 40 MiB random object ----------------------------------------------------------


def test_sequential_read_whole_object(data_mount: Mount) -> None:
    path = data_mount.path / "rand40"
    assert path.stat().st_size == DATA_SIZE
    with open(path, "rb", buffering=0) as f:
        out = bytearray()
        sizes = [4096, MiB, 3 * MiB + 5, 128 * 1024]
        i = 0
        while chunk := f.read(sizes[i % len(sizes)]):
            out += chunk
            i += 1
    assert bytes(out) == DATA
    r = subprocess.run(["cat", str(path)], capture_output=True, timeout=120)
    assert hashlib.md5(r.stdout).hexdigest() == hashlib.md5(DATA).hexdigest()


def test_random_preads(data_mount: Mount) -> None:
    rng = random.Random(7)
    fd = os.open(data_mount.path / "rand40", os.O_RDONLY)
    try:
        for _ in range(300):
            size = rng.choice([1, 7, 4096, 65536, 131073, MiB, 2 * MiB + 3])
            off = rng.randrange(DATA_SIZE)
            assert os.pread(fd, size, off) == DATA[off:off + size], (off, size)
    finally:
        os.close(fd)


def test_reads_across_chunk_boundaries(data_mount: Mount) -> None:
    cases = []
    for boundary in (MiB, 2 * MiB, 8 * MiB, 16 * MiB, 24 * MiB, 32 * MiB, 33 * MiB):
        for before, size in ((1, 2), (100, 200), (4096, 8192), (MiB // 2, MiB), (3, 9 * MiB)):
            cases.append((boundary - before, size))
    fd = os.open(data_mount.path / "rand40", os.O_RDONLY)
    try:
        for off, size in cases:
            assert os.pread(fd, size, off) == DATA[off:off + size], (off, size)
        for off, size in reversed(cases):  # backwards too: every read is a seek
            assert os.pread(fd, size, off) == DATA[off:off + size], (off, size)
    finally:
        os.close(fd)


def test_reads_at_and_past_eof(data_mount: Mount) -> None:
    fd = os.open(data_mount.path / "rand40", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, DATA_SIZE - 10) == DATA[-10:]
        assert os.pread(fd, MiB, DATA_SIZE - 1) == DATA[-1:]
        assert os.pread(fd, 10, DATA_SIZE) == b""
        assert os.pread(fd, 10, DATA_SIZE + 12345) == b""
        assert os.pread(fd, MiB, 10 * DATA_SIZE) == b""
        os.lseek(fd, DATA_SIZE - 5, os.SEEK_SET)
        assert os.read(fd, 100) == DATA[-5:]
        assert os.read(fd, 100) == b""
        assert os.pread(fd, 3, 0) == DATA[:3]  # still usable after EOF
    finally:
        os.close(fd)


@pytest.mark.parametrize(("skip", "count"), [(0, 2), (1, 1), (7, 3), (8, 1), (31, 9),
                                             (39, None), (40, None), (45, 1)])
def test_dd_skip(data_mount: Mount, skip: int, count: int | None) -> None:
    args = ["dd", f"if={data_mount.path / 'rand40'}", "bs=1M", f"skip={skip}", "status=none"]
    if count is not None:
        args.append(f"count={count}")
    r = subprocess.run(args, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    end = None if count is None else (skip + count) * MiB
    assert r.stdout == DATA[skip * MiB:end]


def test_concurrent_readers(data_mount: Mount) -> None:
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        with open(data_mount.path / "rand40", "rb", buffering=0) as f:
            for _ in range(40):
                off, size = rng.randrange(DATA_SIZE), rng.choice([4096, MiB, 5 * MiB])
                f.seek(off)
                data = f.read(size)
                if data != DATA[off:off + size]:
                    errors.append(f"reader {seed}: wrong bytes at {off} (+{size})")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


# -- big objects, big directories ----------------------------------------------------------


@pytest.mark.timeout(900)
def test_one_gib_object_reads_back(mount_factory: Callable[..., Mount], s3: Any,
                                   bucket: str) -> None:
    src = Path("/dev/shm") / f"s3mount-read-{os.getpid()}.bin"
    md5 = hashlib.md5()
    try:
        with open(src, "wb") as f:
            for _ in range(64):
                chunk = os.urandom(16 * MiB)
                md5.update(chunk)
                f.write(chunk)
        with open(src, "rb") as f:
            s3.upload_fileobj(f, bucket, "gib.bin", Config=TransferConfig(
                multipart_chunksize=64 * MiB, max_concurrency=4))
    finally:
        src.unlink(missing_ok=True)
    try:
        assert s3.head_object(Bucket=bucket, Key="gib.bin")["ContentLength"] == GiB
        m = mount_factory(bucket)
        assert (m.path / "gib.bin").stat().st_size == GiB
        got, n = hashlib.md5(), 0
        with subprocess.Popen(["cat", str(m.path / "gib.bin")], stdout=subprocess.PIPE) as proc:
            out = proc.stdout
            assert out is not None
            for chunk in iter(lambda: out.read(4 * MiB), b""):
                got.update(chunk)
                n += len(chunk)
            assert proc.wait(60) == 0
        assert n == GiB
        assert got.hexdigest() == md5.hexdigest()
    finally:
        s3.delete_object(Bucket=bucket, Key="gib.bin")  # give the server its disk back


@pytest.mark.timeout(600)
def test_directory_of_ten_thousand_keys(mount_factory: Callable[..., Mount],
                                        s3server: SeaweedServer, s3: Any, bucket: str) -> None:
    names = {f"f{i:05d}-{'x' * (i % 7)}.txt" for i in range(10_000)}
    client = s3server.client(BotoConfig(max_pool_connections=32))
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda n: client.put_object(Bucket=bucket, Key=f"big/{n}", Body=b"1"),
                      names))
    put(s3, bucket, "big-sibling.txt", b"next to big/")  # sorts right after the listing
    put(s3, bucket, "bi", b"sorts before it")
    assert len(keys(s3, bucket, "big/")) == 10_000
    m = mount_factory(bucket)
    listed = os.listdir(m.path / "big")
    assert len(listed) == 10_000
    assert set(listed) == names
    assert sorted(os.listdir(m.path)) == ["bi", "big", "big-sibling.txt"]
    with os.scandir(m.path / "big") as it:
        entries = list(it)
    assert len(entries) == 10_000 and all(e.is_file() for e in entries)
    for name in random.Random(1).sample(sorted(names), 20):
        assert (m.path / "big" / name).read_bytes() == b"1"


# -- changes: mkdir, rmdir, unlink ------------------------------------------------------------


def test_mkdir_writes_marker_and_rmdir_deletes_it(mounted: Mount, s3: Any,
                                                  bucket: str) -> None:
    mounted.allowed_errors += ["not empty", "already exists"]
    d = mounted.path / "d"
    os.mkdir(d)
    assert keys(s3, bucket) == ["d/"]
    assert s3.head_object(Bucket=bucket, Key="d/")["ContentLength"] == 0
    assert stat.S_ISDIR(os.stat(d).st_mode)
    assert os.listdir(d) == []
    assert errno_of(lambda: os.mkdir(d)) == errno.EEXIST
    put(s3, bucket, "d/f.txt", b"data")
    assert errno_of(lambda: os.rmdir(d)) == errno.ENOTEMPTY
    assert sorted(keys(s3, bucket)) == ["d/", "d/f.txt"]
    os.unlink(d / "f.txt")
    assert keys(s3, bucket) == ["d/"]
    os.rmdir(d)
    assert keys(s3, bucket) == []
    assert not os.path.exists(d)
    assert os.listdir(mounted.path) == []


def test_mkdir_nested_and_empty_dirs_persist(mount_factory: Callable[..., Mount], s3: Any,
                                             bucket: str) -> None:
    m = mount_factory(bucket)
    os.makedirs(m.path / "a" / "b" / "c")
    assert sorted(keys(s3, bucket)) == ["a/", "a/b/", "a/b/c/"]
    m.unmount()
    m2 = mount_factory(bucket)  # a fresh mount sees them from S3 alone
    assert os.listdir(m2.path / "a" / "b") == ["c"]
    assert os.listdir(m2.path / "a" / "b" / "c") == []


def test_rmdir_of_implicit_directory_with_content(mounted: Mount, s3: Any, bucket: str) -> None:
    mounted.allowed_errors.append("not empty")
    put(s3, bucket, "i/j/k.txt", b"k")
    assert errno_of(lambda: os.rmdir(mounted.path / "i")) == errno.ENOTEMPTY
    assert errno_of(lambda: os.rmdir(mounted.path / "i" / "j")) == errno.ENOTEMPTY
    assert keys(s3, bucket) == ["i/j/k.txt"]


def test_rmdir_after_emptying_an_implicit_directory(mounted: Mount, s3: Any,
                                                    bucket: str) -> None:
    put(s3, bucket, "i/j.txt", b"j")
    put(s3, bucket, "keep.txt", b"k")
    os.unlink(mounted.path / "i" / "j.txt")
    time.sleep(1.5)  # past --metadata-ttl, as in `rm -r` of a tree that takes a while
    os.rmdir(mounted.path / "i")  # ENOENT today: `rm -r` reports "cannot remove"
    assert keys(s3, bucket) == ["keep.txt"]


def test_hidden_keys_are_logged_at_debug(mount_factory: Callable[..., Mount],
                                         tree_bucket: str) -> None:
    m = mount_factory(tree_bucket, "--debug")
    assert os.listdir(m.path / "long") == []
    hidden = [line for line in m.log().splitlines() if "hiding key" in line and LONG in line]
    assert len(hidden) == 1, hidden
    assert " DEBUG " in hidden[0]


def test_rm_deletes_the_object(mounted: Mount, s3: Any, bucket: str) -> None:
    mounted.allowed_errors.append("is a directory")
    put(s3, bucket, "gone.txt", b"bye")
    put(s3, bucket, "stays.txt", b"hi")
    put(s3, bucket, "dir/inner", b"in")
    r = subprocess.run(["rm", "gone.txt"], cwd=mounted.path, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(keys(s3, bucket)) == ["dir/inner", "stays.txt"]
    assert not (mounted.path / "gone.txt").exists()
    assert errno_of(lambda: os.unlink(mounted.path / "gone.txt")) == errno.ENOENT
    assert errno_of(lambda: os.unlink(mounted.path / "dir")) in (errno.EISDIR, errno.EPERM)
    os.unlink(mounted.path / "dir" / "inner")
    assert keys(s3, bucket) == ["stays.txt"]
    # SeaweedFS keeps listing the emptied "dir/" as a common prefix (real S3 does not)
    assert set(os.listdir(mounted.path)) - {"dir"} == {"stays.txt"}


def test_statfs_reports_a_large_filesystem(mounted: Mount) -> None:
    sv = os.statvfs(mounted.path)
    assert sv.f_blocks * sv.f_frsize >= TiB
    assert sv.f_bavail * sv.f_frsize >= TiB
    assert sv.f_namemax == 255
    r = subprocess.run(["df", "-P", str(mounted.path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[-1].split()
    assert line[-1] == str(mounted.path)
    assert int(line[1]) * 1024 >= TiB  # 1024-byte blocks with -P


# -- mount options: --read-only, prefix, --dir-suffix -----------------------------------------


def snapshot(s3: Any, bucket: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    return out


def test_read_only_refuses_every_change(mount_factory: Callable[..., Mount], s3: Any,
                                        bucket: str) -> None:
    put(s3, bucket, "f.txt", b"keep me")
    put(s3, bucket, "d/", b"")
    put(s3, bucket, "full/g.txt", b"g")
    before = snapshot(s3, bucket)
    m = mount_factory(bucket, "--read-only")
    m.allowed_errors.append("read-only")
    p = m.path
    attempts: dict[str, Callable[[], object]] = {
        "create": lambda: open_close(p / "new.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        "truncate-open": lambda: open_close(p / "f.txt", os.O_WRONLY | os.O_TRUNC),
        "open-rw": lambda: open_close(p / "f.txt", os.O_RDWR),
        "mkdir": lambda: os.mkdir(p / "nd"),
        "rmdir": lambda: os.rmdir(p / "d"),
        "unlink": lambda: os.unlink(p / "f.txt"),
        "unlink-deep": lambda: os.unlink(p / "full" / "g.txt"),
        "touch-existing": lambda: os.utime(p / "f.txt"),
        "touch-new": lambda: open_close(p / "t.txt", os.O_WRONLY | os.O_CREAT),
        "truncate": lambda: os.truncate(p / "f.txt", 0),
    }
    codes = {name: errno_of(fn) for name, fn in attempts.items()}
    assert codes == dict.fromkeys(attempts, errno.EROFS)
    r = subprocess.run(["touch", str(p / "f.txt"), str(p / "n.txt")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert (p / "f.txt").read_bytes() == b"keep me"  # reading still works
    assert sorted(os.listdir(p)) == ["d", "f.txt", "full"]
    assert snapshot(s3, bucket) == before
    assert get(s3, bucket, "f.txt") == b"keep me"


@pytest.mark.parametrize("style", ["url", "option"])
def test_prefix_mount(mount_factory: Callable[..., Mount], s3: Any, bucket: str,
                      style: str) -> None:
    for key, body in {"outside.txt": b"o", "some/other.txt": b"s",
                      "some/prefixed-sibling.txt": b"not below the prefix",
                      "some/prefix/a.txt": b"a", "some/prefix/sub/b.txt": b"b",
                      "some/prefix/": b""}.items():
        put(s3, bucket, key, body)
    args = ((f"s3://{bucket}/some/prefix/",) if style == "url"
            else (bucket, "--prefix", "some/prefix"))
    m = mount_factory(*args)
    m.allowed_errors.append("not empty")
    assert sorted(os.listdir(m.path)) == ["a.txt", "sub"]
    assert (m.path / "a.txt").read_bytes() == b"a"
    assert os.listdir(m.path / "sub") == ["b.txt"]
    assert (m.path / "sub" / "b.txt").read_bytes() == b"b"
    assert not (m.path / "outside.txt").exists()
    assert not (m.path / "some").exists()
    (m.path / "new.txt").write_bytes(b"written through the prefix mount")
    os.mkdir(m.path / "nd")
    os.unlink(m.path / "a.txt")
    assert get(s3, bucket, "some/prefix/new.txt") == b"written through the prefix mount"
    assert sorted(keys(s3, bucket)) == sorted([
        "outside.txt", "some/other.txt", "some/prefixed-sibling.txt", "some/prefix/",
        "some/prefix/new.txt", "some/prefix/nd/", "some/prefix/sub/b.txt"])
    assert errno_of(lambda: os.rmdir(m.path / "sub")) == errno.ENOTEMPTY
    os.rmdir(m.path / "nd")
    assert "some/prefix/nd/" not in keys(s3, bucket)
    assert sorted(os.listdir(m.path)) == ["new.txt", "sub"]


def test_dir_suffix(mount_factory: Callable[..., Mount], s3: Any, bucket: str) -> None:
    put(s3, bucket, "d_$folder$", b"")
    put(s3, bucket, "e_$folder$", b"")
    put(s3, bucket, "e/f.txt", b"f")
    put(s3, bucket, "plain.txt", b"p")
    m = mount_factory(bucket, "--dir-suffix", "_$folder$")
    assert sorted(os.listdir(m.path)) == ["d", "e", "plain.txt"]
    assert stat.S_ISDIR(os.stat(m.path / "d").st_mode)
    assert stat.S_ISDIR(os.stat(m.path / "e").st_mode)
    assert os.listdir(m.path / "d") == []
    assert os.listdir(m.path / "e") == ["f.txt"]
    os.mkdir(m.path / "n")
    stored = set(keys(s3, bucket))
    assert "n_$folder$" in stored and "n/" not in stored
    assert s3.head_object(Bucket=bucket, Key="n_$folder$")["ContentLength"] == 0
    assert stat.S_ISDIR(os.stat(m.path / "n").st_mode)
    os.rmdir(m.path / "d")
    os.rmdir(m.path / "n")
    assert sorted(keys(s3, bucket)) == ["e/f.txt", "e_$folder$", "plain.txt"]


# -- an object replaced under an open reader ------------------------------------------------


@pytest.mark.timeout(300)
def test_object_changed_under_reader_gives_eio(mount_factory: Callable[..., Mount], s3: Any,
                                               bucket: str) -> None:
    size = 100 * MiB
    old = random.Random(1).randbytes(size)
    new = random.Random(2).randbytes(size)
    put(s3, bucket, "obj", old)
    m = mount_factory(bucket)
    m.allowed_errors.append("changed")
    fd = os.open(m.path / "obj", os.O_RDONLY)
    try:
        assert os.pread(fd, MiB, 0) == old[:MiB]
        put(s3, bucket, "obj", new)
        assert get(s3, bucket, "obj")[:16] == new[:16]
        # near data may already be prefetched: then it is the old version, never the new one
        try:
            assert os.pread(fd, 4096, MiB) == old[MiB:MiB + 4096]
        except OSError as exc:
            assert exc.errno == errno.EIO
        assert errno_of(lambda: os.pread(fd, MiB, 90 * MiB)) == errno.EIO
        assert errno_of(lambda: os.pread(fd, MiB, 50 * MiB)) == errno.EIO
    finally:
        os.close(fd)
    assert "changed" in m.log()
    time.sleep(1.2)  # past the attribute TTL: a new open reads the new version
    fd = os.open(m.path / "obj", os.O_RDONLY)
    try:
        assert os.pread(fd, MiB, 90 * MiB) == new[90 * MiB:91 * MiB]
    finally:
        os.close(fd)


def test_kernel_reads_ahead_a_mebibyte(mounted: Mount) -> None:
    """As root the mount raises its read-ahead to 1 MiB (FUSE's largest read request)."""
    dev = os.stat(mounted.path).st_dev
    bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    deadline = time.monotonic() + 10
    while bdi.read_text().strip() != "1024":
        assert time.monotonic() < deadline, bdi.read_text()
        time.sleep(0.1)
