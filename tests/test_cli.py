"""The command line as a user meets it: help and version, one clear line for each bad setup,
detaching once the mount is live, `s3mount etag`, and a bucket named like a subcommand."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3mount import __version__
from s3mount.config import MiB
from s3mount.options import split_bucket
from tests.conftest import Mount, get, keys, put, s3mount_cmd
from tests.seaweed import SeaweedServer

FAIL_WITHIN = 10.0  # seconds a bad setup may take to be reported


def script() -> list[str]:
    """The installed console script, next to the interpreter running the tests."""
    return [str(Path(sys.executable).parent / "s3mount")]


def run(args: list[str], env: dict[str, str] | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*s3mount_cmd(), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_with_stdin(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*s3mount_cmd(), *args], capture_output=True, input=stdin,
                          timeout=60)


def mount_lines(path: Path) -> list[str]:
    """Lines of /proc/mounts for `path` (a mount point appears once per stacked mount)."""
    text = Path("/proc/mounts").read_text()
    return [line for line in text.splitlines() if line.split()[1] == str(path)]


def processes_with(arg: str) -> list[int]:
    """Live (not zombie) processes whose command line has `arg` as one argument."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if arg.encode() in argv and state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path


def assert_one_line_failure(args: list[str], mountpoint: Path, *, code: int, says: str,
                            env: dict[str, str] | None = None) -> str:
    """Run s3mount expecting a user error; return its one stderr line."""
    before = len(mount_lines(mountpoint))
    start = time.monotonic()
    r = run(args, env=env, timeout=FAIL_WITHIN)
    took = time.monotonic() - start
    lines = r.stderr.splitlines()
    assert took < FAIL_WITHIN
    assert r.returncode == code, r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("s3mount: "), r.stderr
    assert says in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert len(mount_lines(mountpoint)) == before  # nothing mounted (or unmounted)
    assert wait_until(lambda: not processes_with(str(mountpoint)), 5), "a process stayed"
    return lines[0]


# -- help, version ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["script", "module"])
def test_help_and_version(how: str) -> None:
    cmd = script() if how == "script" else s3mount_cmd()
    h = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=30)
    assert h.returncode == 0, h.stderr
    assert h.stdout.startswith("usage: s3mount")
    for option in ("--read-only", "--endpoint-url", "--part-size", "--foreground"):
        assert option in h.stdout
    v = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=30)
    assert v.returncode == 0, v.stderr
    assert v.stdout.strip() == f"s3mount {__version__}"
    e = subprocess.run([*cmd, "etag", "--help"], capture_output=True, text=True, timeout=30)
    assert e.returncode == 0 and e.stdout.startswith("usage: s3mount etag")


def test_no_arguments_is_a_usage_error() -> None:
    r = run([])
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("s3mount: ")
    assert "Traceback" not in r.stderr


# -- bad setups: one line, non-zero, fast, nothing left behind --------------------------------

MODES = {"detached": [], "foreground": ["--foreground"]}


@pytest.mark.parametrize("mode", MODES)
def test_no_such_bucket(s3server: SeaweedServer, mnt: Path, mode: str) -> None:
    assert_one_line_failure(["no-such-bucket-here", str(mnt), *MODES[mode]], mnt, code=4,
                            says="bucket 'no-such-bucket-here' does not exist")


@pytest.mark.parametrize("mode", MODES)
def test_endpoint_unreachable(s3server: SeaweedServer, bucket: str, mnt: Path,
                              mode: str) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    assert_one_line_failure([bucket, str(mnt), "--endpoint-url", url, *MODES[mode]], mnt,
                            code=5, says=f"cannot reach {url}")


@pytest.mark.parametrize("mode", MODES)
def test_no_credentials(s3server: SeaweedServer, bucket: str, mnt: Path, tmp_path: Path,
                        mode: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(home)
    assert_one_line_failure([bucket, str(mnt), "--endpoint-url", s3server.endpoint_url,
                             *MODES[mode]], mnt, code=3, says="no AWS credentials", env=env)


def test_mountpoint_missing(s3server: SeaweedServer, bucket: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert_one_line_failure([bucket, str(missing)], missing, code=6, says="does not exist")
    assert not missing.exists()


def test_mountpoint_is_a_file(s3server: SeaweedServer, bucket: str, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"not a directory")
    assert_one_line_failure([bucket, str(f)], f, code=6, says="is not a directory")
    assert f.read_bytes() == b"not a directory"


@pytest.mark.parametrize("mode", MODES)
def test_mountpoint_already_mounted(mounted: Mount, s3: Any, bucket: str, mode: str) -> None:
    put(s3, bucket, "still.txt", b"here")
    assert len(mount_lines(mounted.path)) == 1
    before = len(mount_lines(mounted.path))
    r = run([bucket, str(mounted.path), *MODES[mode]], timeout=FAIL_WITHIN)
    assert r.returncode == 6, r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("s3mount: ")
    assert "already a mount point" in r.stderr and "Traceback" not in r.stderr
    assert len(mount_lines(mounted.path)) == before  # nothing stacked on top
    assert (mounted.path / "still.txt").read_bytes() == b"here"  # the first mount still works
    assert mounted.proc.poll() is None


@pytest.mark.parametrize(("args", "says"), [
    (["--part-size", "1M"], "--part-size"),
    (["--part-size", "6G"], "--part-size"),
    (["--part-size", "lots"], "invalid size"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--file-mode", "999"], "invalid mode"),
    (["--max-memory", "5M", "--part-size", "8M"], "--max-memory"),
    (["--upload-concurrency", "0"], "--upload-concurrency"),
    (["--dir-suffix", ""], "--dir-suffix"),
    (["--checksum", "md5"], "--checksum: invalid choice"),
    (["--prefix", "p/"], "either in s3://BUCKET/PREFIX or with --prefix"),
])
def test_invalid_option(s3server: SeaweedServer, bucket: str, mnt: Path, args: list[str],
                        says: str) -> None:
    spec = f"s3://{bucket}/x/" if args[0] == "--prefix" else bucket
    assert_one_line_failure([spec, str(mnt), *args], mnt, code=2, says=says)


@pytest.mark.parametrize("name", [
    "Bad_Bucket!", "UPPER", "s3://-dash-first", "sp ace", "s3://", "a", "ab",
])
def test_invalid_bucket_name(s3server: SeaweedServer, mnt: Path, name: str) -> None:
    assert_one_line_failure([name, str(mnt)], mnt, code=2, says="invalid bucket name")


# -- detached mode ----------------------------------------------------------------------------


@pytest.fixture
def cleanup_mount() -> Iterator[list[Path]]:
    """Mount points to unmount (and daemons to kill) if a test leaves them behind."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        if os.path.ismount(path):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False)
        for pid in processes_with(str(path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


@pytest.mark.timeout(120)
def test_detached_mount_lifecycle(s3server: SeaweedServer, s3: Any, bucket: str, mnt: Path,
                                  tmp_path: Path, cleanup_mount: list[Path]) -> None:
    cleanup_mount.append(mnt)
    put(s3, bucket, "before.txt", b"was there")
    log = tmp_path / "s3mount.log"
    r = run([bucket, str(mnt), "--part-size", "5M", "--log-file", str(log)], timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    assert os.path.ismount(mnt)  # live as soon as the command returns
    daemons = processes_with(str(mnt))
    assert len(daemons) == 1, daemons
    assert (mnt / "before.txt").read_bytes() == b"was there"
    data = os.urandom(6 * MiB + 7)
    (mnt / "after.bin").write_bytes(data)
    assert get(s3, bucket, "after.bin") == data
    assert sorted(os.listdir(mnt)) == ["after.bin", "before.txt"]
    u = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True,
                       timeout=30)
    assert u.returncode == 0, u.stderr
    assert not os.path.ismount(mnt)
    assert wait_until(lambda: not processes_with(str(mnt)), 30), "the daemon did not exit"
    text = log.read_text()
    assert "mounted s3://" in text and "unmounted" in text
    assert " ERROR " not in text and "Traceback" not in text
    assert sorted(keys(s3, bucket)) == ["after.bin", "before.txt"]


# -- s3mount etag -----------------------------------------------------------------------------


@pytest.mark.parametrize(("part_size", "size", "parts"), [
    ("5M", 12 * MiB, "-3"),
    ("5M", 1000, ""),
    (None, 20 * MiB + 1, "-4"),  # the default part size (6M) on both sides
])
def test_etag_matches_what_s3_gives_a_mounted_write(
        mount_factory: Callable[..., Mount], s3: Any, bucket: str, tmp_path: Path,
        part_size: str | None, size: int, parts: str) -> None:
    m = mount_factory(bucket, "--part-size", part_size or "6M")
    src = tmp_path / "src.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    with open(m.path / "f.bin", "wb") as f:
        for i in range(0, size, MiB):
            f.write(data[i:i + MiB])
    assert get(s3, bucket, "f.bin") == data
    etag = s3.head_object(Bucket=bucket, Key="f.bin")["ETag"].strip('"')
    if parts:
        assert etag.endswith(parts)
    else:
        assert etag == hashlib.md5(data).hexdigest()
    opt = ["--part-size", part_size] if part_size else []
    r = run(["etag", *opt, str(src)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == etag
    r2 = run_with_stdin(["etag", *opt, "-"], data)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.decode().strip() == etag


def test_etag_with_other_part_size_differs(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(12 * MiB))
    five = run(["etag", "--part-size", "5M", str(src)]).stdout.strip()
    eight = run(["etag", str(src)]).stdout.strip()
    assert five.endswith("-3") and eight.endswith("-2") and five != eight


def test_etag_errors_are_one_line(tmp_path: Path) -> None:
    for args, says in ((["etag", str(tmp_path / "nope")], "No such file"),
                       (["etag", str(tmp_path)], "Is a directory"),
                       (["etag", "--part-size", "1M", "-"], "part")):
        r = run(args)
        assert r.returncode != 0
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("s3mount: "), r.stderr
        assert says in r.stderr and "Traceback" not in r.stderr


# -- a bucket named like a subcommand ---------------------------------------------------------


def test_bucket_named_etag(mount_factory: Callable[..., Mount], s3: Any, tmp_path: Path) -> None:
    assert split_bucket("s3://etag", None) == ("etag", "")
    assert split_bucket("s3://etag/sub/dir/", None) == ("etag", "sub/dir/")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket="etag")
    put(s3, "etag", "in-etag.txt", b"bucket etag")
    m = mount_factory("s3://etag")
    assert "in-etag.txt" in os.listdir(m.path)
    assert (m.path / "in-etag.txt").read_bytes() == b"bucket etag"
    (m.path / "written.txt").write_bytes(b"via s3://etag")
    assert get(s3, "etag", "written.txt") == b"via s3://etag"
    # the bare word stays the subcommand: `s3mount etag DIR` hashes DIR and fails
    other = tmp_path / "other"
    other.mkdir()
    r = run(["etag", str(other)])
    assert r.returncode == 1 and "Is a directory" in r.stderr
    assert not os.path.ismount(other)
    s3.delete_object(Bucket="etag", Key="in-etag.txt")
    s3.delete_object(Bucket="etag", Key="written.txt")
