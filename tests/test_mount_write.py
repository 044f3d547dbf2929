"""Streaming writes through a real mount (level 3), verified by reading the bucket with boto3."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3mount import checksum
from s3mount.config import MiB
from s3mount.etag import stream_etag
from s3mount.schedule import PartSchedule
from tests.conftest import Mount, get, keys, kill_mount, open_uploads

P = 5 * MiB  # the mounts here use --part-size 5M
SCHEDULE = PartSchedule(P)


def etag_of(path: Path | bytes, schedule: PartSchedule = SCHEDULE) -> str:
    if isinstance(path, bytes):
        return stream_etag(io.BytesIO(path), schedule)
    with open(path, "rb") as f:
        return stream_etag(f, schedule)


def wait_for_key(s3: Any, bucket: str, key: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while key not in keys(s3, bucket):
        assert time.monotonic() < deadline, f"{key} never appeared"
        time.sleep(0.05)


def head_etag(s3: Any, bucket: str, key: str) -> str:
    return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')  # type: ignore[no-any-return]


def s3_md5(s3: Any, bucket: str, key: str) -> str:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    h = hashlib.md5()
    for chunk in iter(lambda: body.read(4 * MiB), b""):
        h.update(chunk)
    return h.hexdigest()


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def gib_source() -> Iterator[Path]:
    """1 GiB of random bytes in memory-backed /dev/shm (the mount never touches local disk)."""
    path = Path("/dev/shm") / f"s3mount-test-{os.getpid()}.bin"
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(16 * MiB))
    yield path
    path.unlink()


def dd(src: Path | str, dst: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dd", f"if={src}", f"of={dst}", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("bs", ["1M", "4k", "1000003"])
def test_dd_one_gib(mounted: Mount, s3: Any, bucket: str, gib_source: Path, bs: str) -> None:
    r = dd(gib_source, mounted.path / "disk.img", f"bs={bs}")
    assert r.returncode == 0, r.stderr
    assert head_etag(s3, bucket, "disk.img") == etag_of(gib_source)
    assert s3_md5(s3, bucket, "disk.img") == file_md5(gib_source)
    assert (mounted.path / "disk.img").stat().st_size == 1024 * MiB
    assert open_uploads(s3, bucket) == []


@pytest.mark.parametrize("size", [0, 1, P - 1, P, P + 1, 2 * P])
def test_sizes(mounted: Mount, s3: Any, bucket: str, size: int) -> None:
    data = os.urandom(size)
    (mounted.path / "f.bin").write_bytes(data)
    if size == 0:  # nothing written: flush leaves it to release, just after close returns
        wait_for_key(s3, bucket, "f.bin")
    assert get(s3, bucket, "f.bin") == data
    assert head_etag(s3, bucket, "f.bin") == etag_of(data)
    assert (mounted.path / "f.bin").read_bytes() == data


def test_part_size_grows(mount_factory: Callable[..., Mount], s3: Any, bucket: str) -> None:
    m = mount_factory(bucket, "--part-growth-every", "2", "--max-memory", "40M")
    data = os.urandom(31 * MiB)  # parts of 5, 5, 10, 10 and 1 MiB
    (m.path / "g.bin").write_bytes(data)
    # Parts 3-5 are big parts (test_bigparts.py). SeaweedFS answers their copies with no MD5
    # until an upload declares a checksum: the first file is proven by reading them back (its
    # ETag is the server's own), and the next declares CRC32C and has the predicted ETag.
    assert head_etag(s3, bucket, "g.bin").endswith("-5")
    assert get(s3, bucket, "g.bin") == data
    (m.path / "h.bin").write_bytes(data)
    assert head_etag(s3, bucket, "h.bin") == etag_of(data, PartSchedule(P, 2))
    assert get(s3, bucket, "h.bin") == data


def test_checksum_option(mount_factory: Callable[..., Mount], s3: Any, bucket: str,
                         tmp_path: Path) -> None:
    """--checksum sha256: every part carries SHA256 and the object's composite matches."""
    m = mount_factory(bucket, "--checksum", "sha256")
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2 * P + 100))
    assert dd(src, m.path / "c.bin", "bs=1M").returncode == 0
    algo = checksum.get("sha256")
    data = src.read_bytes()
    want = algo.composite([algo.part(data[i:i + P]) for i in range(0, len(data), P)])
    r = s3.head_object(Bucket=bucket, Key="c.bin", ChecksumMode="ENABLED")
    assert r["ChecksumSHA256"] == want
    assert r["ETag"].strip('"') == etag_of(data)
    assert "SHA256 " + want in m.log()


def test_shell_tools(mounted: Mount, s3: Any, bucket: str, tmp_path: Path) -> None:
    mnt = mounted.path
    sh = lambda cmd: subprocess.run(["bash", "-c", cmd], cwd=mnt, capture_output=True,  # noqa: E731
                                    text=True, timeout=120)
    assert sh("echo x > echo.txt").returncode == 0
    assert get(s3, bucket, "echo.txt") == b"x\n"
    assert sh("seq 1 100000 | tee tee.txt > /dev/null").returncode == 0
    assert get(s3, bucket, "tee.txt") == "".join(f"{i}\n" for i in range(1, 100001)).encode()
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(7 * MiB + 3))
    assert sh(f"cp {src} cp.bin").returncode == 0
    assert get(s3, bucket, "cp.bin") == src.read_bytes()
    assert sh("echo again > echo.txt").returncode == 0  # > on an existing file replaces it
    assert get(s3, bucket, "echo.txt") == b"again\n"


def test_tar_extract(mounted: Mount, s3: Any, bucket: str, tmp_path: Path) -> None:
    tree = {"top.txt": b"top\n", "d/one.bin": os.urandom(12 * MiB + 5), "d/e/two.txt": b"2",
            "d/e/empty": b""}
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in tree.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o640
            tar.addfile(info, io.BytesIO(data))
    r = subprocess.run(["tar", "-xf", str(archive), "-C", str(mounted.path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    wait_for_key(s3, bucket, "d/e/empty")
    for name, data in tree.items():
        assert get(s3, bucket, name) == data
    assert (mounted.path / "d" / "one.bin").read_bytes() == tree["d/one.bin"]


def test_rewrite_outside_the_window_fails_and_leaves_nothing(mounted: Mount, s3: Any,
                                                             bucket: str) -> None:
    """Part 1 and the part being filled can be rewritten; a part already sent cannot."""
    mounted.allowed_errors.append("outside the rewrite window")
    fd = os.open(mounted.path / "o.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, b"a" * (3 * P + 100))  # part 1 held, parts 2 and 3 sent, part 4 filling
    os.pwrite(fd, b"head", 0)
    os.pwrite(fd, b"tail", 3 * P + 50)
    with pytest.raises(OSError) as exc:
        os.pwrite(fd, b"b", P + 10)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(OSError) as exc:
        os.close(fd)  # close() reports the failed upload too
    assert exc.value.errno == errno.EINVAL
    assert keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []
    lines = [line for line in mounted.log().splitlines() if "outside the rewrite window" in line]
    assert len(lines) == 1, lines
    assert "o.bin: write of 1 bytes at offset 5242890" in lines[0]
    assert f"bytes 0-{P} (part 1), bytes {3 * P}-{3 * P + 100} (part 4)" in lines[0]


IDLE_HOLDER = """
import os, sys
fds = [os.open(os.path.join(sys.argv[1], f"idle{i}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
       for i in range(2)]
for fd in fds:
    os.write(fd, b"header")
print("ready", flush=True)
sys.stdin.readline()
for fd in fds:
    os.close(fd)
"""


def test_idle_open_files_holding_the_budget_give_enobufs_not_a_hang(
        mount_factory: Callable[..., Mount], s3: Any, bucket: str) -> None:
    """Each file being written holds one part of --max-memory; when idle open files hold
    it all, a writer that needs a part fails with ENOBUFS after the grace period."""
    m = mount_factory(bucket, "--max-memory", "10M")
    m.allowed_errors.append("held by files open for writing")
    # The idle files are held by another process: a process that holds them itself would
    # flush (complete) them when it forks and execs dd (close-on-exec closes a copy).
    holder = subprocess.Popen(
        [sys.executable, "-c", IDLE_HOLDER, str(m.path)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "ready\n"
    t0 = time.monotonic()
    r = dd("/dev/zero", m.path / "big.bin", "bs=1M", "count=20")
    assert r.returncode != 0 and "No buffer space available" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 30
    holder.communicate("close\n", timeout=30)  # the idle files still complete and verify
    assert holder.returncode == 0
    assert [get(s3, bucket, f"idle{i}") for i in range(2)] == [b"header", b"header"]
    assert "big.bin" not in keys(s3, bucket) and open_uploads(s3, bucket) == []
    assert "--max-memory" in m.log()
    # With the budget free again, the same write succeeds.
    assert dd("/dev/zero", m.path / "big.bin", "bs=1M", "count=20").returncode == 0


def test_refusals(mounted: Mount, s3: Any, bucket: str) -> None:
    mounted.allowed_errors += ["in place", "one writer", "being written"]
    f = mounted.path / "r.txt"
    f.write_bytes(b"orig")
    for flags in (os.O_WRONLY, os.O_RDWR):  # opening changes nothing; a write would
        fd = os.open(f, flags)
        try:
            with pytest.raises(OSError) as exc:
                os.pwrite(fd, b"X", 1)
            assert exc.value.errno == errno.EPERM
        finally:
            os.close(fd)
    fd = os.open(mounted.path / "busy.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"x" * 1000)
        with pytest.raises(OSError) as exc:
            os.open(mounted.path / "busy.bin", os.O_WRONLY | os.O_TRUNC)
        assert exc.value.errno == errno.EPERM
        with pytest.raises(OSError) as exc:
            os.open(mounted.path / "busy.bin", os.O_RDONLY)
        assert exc.value.errno == errno.EPERM
    finally:
        os.close(fd)
    assert get(s3, bucket, "r.txt") == b"orig"
    assert get(s3, bucket, "busy.bin") == b"x" * 1000
    log = mounted.log()
    assert "would change the existing object" in log and "one writer per object" in log


def test_file_being_written_shows_its_size(mounted: Mount, s3: Any, bucket: str) -> None:
    path = mounted.path / "growing.bin"
    with open(path, "wb", buffering=0) as f:
        f.write(os.urandom(3 * MiB))
        assert path.stat().st_size == 3 * MiB
        assert "growing.bin" in os.listdir(mounted.path)
        assert keys(s3, bucket) == []  # not in the bucket until it completes
        f.write(os.urandom(4 * MiB))
        time.sleep(1.1)  # past the attribute TTL
        assert path.stat().st_size == 7 * MiB
    assert s3.head_object(Bucket=bucket, Key="growing.bin")["ContentLength"] == 7 * MiB


def test_fsync_completes_and_later_writes_go_on(mounted: Mount, s3: Any, bucket: str) -> None:
    """fsync completes the upload; a later write on the handle starts a new one that begins
    with the object's bytes (vim writes, syncs and rewrites the start of its swap file)."""
    fd = os.open(mounted.path / "s.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"synced")
        os.fsync(fd)
        assert get(s3, bucket, "s.bin") == b"synced"
        os.fsync(fd)  # nothing new: its result again
        os.write(fd, b" more")
        os.pwrite(fd, b"S", 0)  # within the first part: applied
        os.fsync(fd)
        assert get(s3, bucket, "s.bin") == b"Synced more"
        os.write(fd, b"!")
    finally:
        os.close(fd)
    assert get(s3, bucket, "s.bin") == b"Synced more!"
    (mounted.path / "v.txt").write_bytes(b"one\ntwo\n")
    subprocess.run(["vim", "-es", "-u", "NONE", "-c", "%s/one/ONE/", "-c", "wq",
                    str(mounted.path / "v.txt")], check=True, timeout=60)  # with its swap file
    assert get(s3, bucket, "v.txt") == b"ONE\ntwo\n"
    assert not [k for k in keys(s3, bucket) if k.endswith(".swp")]


def test_fsync_before_any_byte_is_a_no_op(mounted: Mount, s3: Any, bucket: str) -> None:
    """ddrescue and aria2c fsync (or fdatasync) before they write: no empty object, and the
    writes that follow go on."""
    fd = os.open(mounted.path / "n.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.fsync(fd)
        os.fdatasync(fd)
        os.ftruncate(fd, 3 * P)  # a size promise alone is nothing new either
        os.fsync(fd)
        assert "n.bin" not in keys(s3, bucket)
        os.write(fd, b"data")
        os.pwrite(fd, b"more", P + 1)
    finally:
        os.close(fd)
    want = b"data" + bytes(P - 3) + b"more"
    assert get(s3, bucket, "n.bin") == want + bytes(3 * P - len(want))


def test_kill_9_leaves_no_object(mount_factory: Callable[..., Mount], s3: Any,
                                 bucket: str) -> None:
    """kill -9 of the mount in the middle of a dd: no partial object, the upload is findable;
    mounting again shows exactly what was complete before, and the name can be written anew."""
    m = mount_factory(bucket)
    before = os.urandom(P + 7)
    (m.path / "before.bin").write_bytes(before)
    proc = subprocess.Popen(["dd", "if=/dev/urandom", f"of={m.path / 'k.bin'}", "bs=1M",
                             "count=100000"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not open_uploads(s3, bucket):  # wait until a multipart upload is under way
            assert time.monotonic() < deadline
            time.sleep(0.2)
        kill_mount(m)
        assert proc.wait(60) != 0  # the writer is told
    finally:
        proc.kill()
    assert keys(s3, bucket) == ["before.bin"]
    assert open_uploads(s3, bucket) == ["k.bin"]  # findable, for `s3mount uploads`
    again = mount_factory(bucket)
    assert sorted(os.listdir(again.path)) == ["before.bin"]
    assert (again.path / "before.bin").read_bytes() == before
    (again.path / "k.bin").write_bytes(b"second try")
    assert get(s3, bucket, "k.bin") == b"second try"


def test_sigterm_finishes_closed_and_aborts_open(mount_factory: Callable[..., Mount],
                                                 s3: Any, bucket: str) -> None:
    m = mount_factory(bucket)
    m.allowed_errors.append("still open when the mount stopped")
    (m.path / "closed.bin").write_bytes(b"c" * (P + 1))
    fd = os.open(m.path / "open.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(fd, os.urandom(P + 100))
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(60) == 0
    with contextlib.suppress(OSError):
        os.close(fd)
    assert keys(s3, bucket) == ["closed.bin"]
    assert open_uploads(s3, bucket) == []
    assert "still open when the mount stopped" in m.log()


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_sixteen_concurrent_writers(mount_factory: Callable[..., Mount], s3: Any,
                                    bucket: str, tmp_path: Path) -> None:
    m = mount_factory(bucket, "--max-memory", "20M")
    sources = []
    for i in range(16):
        src = tmp_path / f"src{i}.bin"
        src.write_bytes(os.urandom(4 * P + i * 4097))
        sources.append(src)
    errors: list[str] = []

    def write(i: int) -> None:
        r = dd(sources[i], m.path / f"c{i}.bin", "bs=1M")
        if r.returncode:
            errors.append(r.stderr)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    for i, src in enumerate(sources):
        assert head_etag(s3, bucket, f"c{i}.bin") == etag_of(src)
        assert get(s3, bucket, f"c{i}.bin") == src.read_bytes()
    # 16 files x 21 MiB passed through; buffers are bounded by --max-memory (20 MiB)
    assert vm_hwm_kib(m.proc.pid) < 200 * 1024


def test_calls_right_after_close_see_the_settled_file(mounted: Mount, s3: Any,
                                                      bucket: str) -> None:
    """Release is asynchronous: `touch f; cat f`, and unlink or rename of an empty file just
    closed (git's and borg's lock files), wait for it instead of failing (EPERM, EBUSY)."""
    m = mounted.path
    for i in range(20):  # the race is lost only now and then without settling
        subprocess.run(f"touch {m}/t{i} && cat {m}/t{i} && : > {m}/l{i} && rm {m}/l{i} "
                       f"&& : > {m}/r{i} && mv {m}/r{i} {m}/s{i} && echo x > {m}/s{i} "
                       f"&& cat {m}/s{i} >/dev/null", shell=True, check=True)
    assert sorted(keys(s3, bucket)) == sorted([f"t{i}" for i in range(20)]
                                              + [f"s{i}" for i in range(20)])
    assert get(s3, bucket, "s7") == b"x\n" and get(s3, bucket, "t3") == b""


def test_open_without_o_trunc_then_truncate_to_zero_replaces(mounted: Mount, s3: Any,
                                                             bucket: str) -> None:
    """vim's :w, `sort -o F` onto an existing F, `tar -g` snapshots: open without O_TRUNC,
    ftruncate(0), write. Opened and closed without a write, the object is unchanged; an O_RDWR
    handle reads the old bytes until it truncates."""
    m = mounted.path
    (m / "f").write_bytes(b"old contents\n")
    etag = s3.head_object(Bucket=bucket, Key="f")["ETag"]
    os.close(os.open(m / "f", os.O_WRONLY))
    assert s3.head_object(Bucket=bucket, Key="f")["ETag"] == etag
    fd = os.open(m / "f", os.O_RDWR)
    assert os.read(fd, 3) == b"old"
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"new\n", 0)
    os.close(fd)
    assert get(s3, bucket, "f") == b"new\n"
    (m / "lines").write_bytes(b"b\nc\na\n")
    subprocess.run(["sort", "-o", str(m / "lines"), str(m / "lines")], check=True)
    assert get(s3, bucket, "lines") == b"a\nb\nc\n"
    os.truncate(m / "lines", 0)  # by path, no handle: the object is replaced by an empty one
    assert get(s3, bucket, "lines") == b""
    (m / "v.txt").write_bytes(b"one\ntwo\n")
    subprocess.run(["vim", "-es", "-u", "NONE", "-c", "%s/one/ONE/", "-c", "wq",
                    str(m / "v.txt")], check=True, timeout=60)
    assert get(s3, bucket, "v.txt") == b"ONE\ntwo\n"
