"""Programs people point at a mount (issue 15), each run onto a real mount and its result
compared with the same program's output on local disk, or passed through the program's own
check. Each one used to fail on a pattern streaming can support."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Mount, get, keys, run_ok

run = functools.partial(run_ok, timeout=180)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A local git repository with a few commits, a branch and a tag."""
    root = tmp_path / "repo"
    root.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    run("git", "init", "-q", "-b", "main", str(root), env=env)
    for i in range(3):
        (root / f"file{i}.txt").write_text(f"version {i}\n" * (i + 1) * 100)
        (root / "sub").mkdir(exist_ok=True)
        (root / "sub" / f"n{i}.bin").write_bytes(os.urandom(3000 * (i + 1)))
        run("git", "add", "-A", cwd=root, env=env)
        run("git", "commit", "-q", "-m", f"commit {i}", cwd=root, env=env)
    run("git", "tag", "v1", cwd=root, env=env)
    run("git", "branch", "side", cwd=root, env=env)
    return root


def test_git_clone_of_a_local_repository(mounted: Mount, s3: Any, bucket: str, repo: Path,
                                         tmp_path: Path) -> None:
    """git's config.lock dance: create, write, close, then rename or unlink at once."""
    mounted.allowed_errors.append("S3 has no symbolic links")  # git probes for them
    run("git", "clone", "-q", "--no-hardlinks", str(repo), str(mounted.path / "clone"))
    run("git", "clone", "-q", "--no-hardlinks", str(repo), str(tmp_path / "local"))
    run("git", "-C", str(mounted.path / "clone"), "fsck", "--strict")
    log = run("git", "-C", str(mounted.path / "clone"), "log", "--format=%H %s").stdout
    assert log == run("git", "-C", str(repo), "log", "--format=%H %s").stdout
    r = subprocess.run(["diff", "-r", "-x", ".git", str(tmp_path / "local"),
                        str(mounted.path / "clone")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    assert get(s3, bucket, "clone/file2.txt") == (repo / "file2.txt").read_bytes()
    assert "clone/.git/config" in keys(s3, bucket, "clone/.git/")
    assert not [k for k in keys(s3, bucket) if k.endswith(".lock")]


def test_rdiff_backup_twice(mounted: Mount, s3: Any, bucket: str, tmp_path: Path) -> None:
    """rdiff-backup writes, closes and at once renames or removes its files (and its lock),
    and appends to its log."""
    mounted.allowed_errors.append("S3 has no symbolic links")  # it probes for them
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(20_000 + i))
    (src / "sub" / "x.txt").write_text("one\n")
    dest = mounted.path / "rb"
    run("rdiff-backup", "backup", str(src), str(dest))
    time.sleep(1.1)  # its sessions are named by the second: it refuses two in one second
    (src / "sub" / "x.txt").write_text("two\n")  # same size: only its time tells
    os.utime(src / "sub" / "x.txt", (time.time() + 10, time.time() + 10))
    (src / "f0").unlink()
    run("rdiff-backup", "backup", str(src), str(dest))  # an increment
    r = subprocess.run(["diff", "-r", "-x", "rdiff-backup-data", str(src), str(dest)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
    run("rdiff-backup", "verify", str(dest))
    restored = tmp_path / "restored"
    run("rdiff-backup", "restore", "--at", "1B", str(dest), str(restored))  # the first backup
    assert (restored / "sub" / "x.txt").read_text() == "one\n" and (restored / "f0").exists()
    assert get(s3, bucket, "rb/sub/x.txt") == b"two\n"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with `Range: bytes=N-` support (curl -C -, aria2c resume)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def send_head(self) -> Any:
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        start = int(rng.removeprefix("bytes=").split("-")[0])
        size = path.stat().st_size
        f = open(path, "rb")  # noqa: SIM115 - closed by the base class after copying
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return f


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server (with ranges) over a directory: (base URL, directory)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_RangeHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_curl_resumes_onto_the_mount(mounted: Mount, s3: Any, bucket: str,
                                     http_dir: tuple[str, Path]) -> None:
    """curl -C - appends the rest of a download to a partial file (O_APPEND)."""
    url, www = http_dir
    data = os.urandom(7 * 1024 * 1024 + 11)  # more than one part
    (www / "big.bin").write_bytes(data)
    (mounted.path / "big.bin").write_bytes(data[:3_000_000])  # an interrupted download
    run("curl", "-sS", "-f", "-C", "-", "-o", str(mounted.path / "big.bin"), f"{url}/big.bin")
    assert get(s3, bucket, "big.bin") == data


def test_aria2c_and_ddrescue(mounted: Mount, s3: Any, bucket: str, tmp_path: Path,
                             http_dir: tuple[str, Path]) -> None:
    """Both fsync a file before writing to it (aria2c its control file, ddrescue its map)."""
    url, www = http_dir
    data = os.urandom(6 * 1024 * 1024 + 5)
    (www / "dl.bin").write_bytes(data)
    run("aria2c", "-q", "--file-allocation=none", "--allow-overwrite=true",
        "-d", str(mounted.path), "-o", "dl.bin", f"{url}/dl.bin")
    assert get(s3, bucket, "dl.bin") == data
    assert "dl.bin.aria2" not in keys(s3, bucket)  # its control file, removed when done
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(3_000_000))
    run("ddrescue", "-f", "-q", str(image), str(mounted.path / "rescued.img"),
        str(mounted.path / "rescue.map"))
    assert get(s3, bucket, "rescued.img") == image.read_bytes()
    assert b"finished" in get(s3, bucket, "rescue.map").lower() or b"+" in get(
        s3, bucket, "rescue.map")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tree with old times, odd modes and symbolic links (a source checkout's shape)."""
    root = tmp_path / "tree"
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin" / "tool", 0o755)
    (root / "lib" / "data.bin").write_bytes(os.urandom(6 * 1024 * 1024 + 7))  # two parts
    (root / "lib" / "secret").write_text("private\n")
    os.chmod(root / "lib" / "secret", 0o600)
    os.symlink("../lib/data.bin", root / "bin" / "data")
    os.symlink("nowhere/at/all", root / "dangling")
    for i, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, ns=(1_600_000_000_123_456_789 + i, 1_500_000_000_987_654_321 + i),
                 follow_symlinks=False)
    return root


def _shape(root: Path) -> list[tuple[str, str, int, int]]:
    """(path, type and target, permission bits, mtime in ns) of every entry but directories
    (whose times and modes S3 markers do not keep)."""
    out = []
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        if p.is_symlink():
            out.append((str(p.relative_to(root)), "-> " + os.readlink(p), 0o777,
                        st.st_mtime_ns))
        elif p.is_file():
            out.append((str(p.relative_to(root)), "file", st.st_mode & 0o7777,
                        st.st_mtime_ns))
    return out


def test_cp_a_keeps_links_modes_and_times(mounted: Mount, s3: Any, bucket: str,
                                          tree: Path, tmp_path: Path) -> None:
    run("cp", "-a", str(tree), str(mounted.path / "t"))
    assert _shape(mounted.path / "t") == _shape(tree)
    assert (mounted.path / "t" / "bin" / "data").read_bytes() == (
        tree / "lib" / "data.bin").read_bytes()  # the link is followed
    head = s3.head_object(Bucket=bucket, Key="t/bin/data")
    assert int(head["Metadata"]["mode"]) == 0o120777  # s3fs's form of a link
    assert get(s3, bucket, "t/bin/data") == b"../lib/data.bin"
    run("cp", "-a", str(mounted.path / "t"), str(tmp_path / "back"))  # and out again
    assert _shape(tmp_path / "back") == _shape(tree)


def test_rsync_a_twice_transfers_nothing_the_second_time(mounted: Mount, s3: Any,
                                                         bucket: str, tree: Path) -> None:
    """rsync sets times and modes on its temporary file, then renames it: the rename's copy
    carries them, and the second run's quick check (size and mtime) finds nothing to send."""
    first = run("rsync", "-a", "--stats", f"{tree}/", str(mounted.path / "r")).stdout
    assert "Number of regular files transferred: 3" in first, first
    assert _shape(mounted.path / "r") == _shape(tree)
    second = run("rsync", "-a", "--stats", f"{tree}/", str(mounted.path / "r")).stdout
    assert "Number of regular files transferred: 0" in second, second
    assert "Total transferred file size: 0 bytes" in second, second
    assert get(s3, bucket, "r/lib/secret") == b"private\n"
    assert not [k for k in keys(s3, bucket) if "/." in k]  # no temporary file left


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_ffmpeg_writes_a_video(mounted: Mount, s3: Any, bucket: str, tmp_path: Path,
                               ext: str) -> None:
    """ffmpeg patches its container's header after the data (mp4's mdat size at offset 36,
    mkv's segment size and cues): within part 1, which is held until close."""
    args = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
            "testsrc=duration=3:size=320x240:rate=25", "-c:v", "mpeg4", "-fflags", "+bitexact",
            "-flags", "+bitexact", "-map_metadata", "-1"]
    run(*args, str(tmp_path / f"local.{ext}"))
    run(*args, str(mounted.path / f"video.{ext}"))
    assert get(s3, bucket, f"video.{ext}") == (tmp_path / f"local.{ext}").read_bytes()
    assert run("ffprobe", "-loglevel", "error", "-show_entries", "format=duration", "-of",
               "csv=p=0", str(mounted.path / f"video.{ext}")).stdout.startswith("3.0")


def test_a_database_is_refused_with_a_clear_line(mounted: Mount, s3: Any, bucket: str,
                                                 tmp_path: Path) -> None:
    """A new small sqlite database is written once, in order but for header patches in its
    first part, and works; changing an existing one rewrites pages in place and reads back its
    journal while writing it: random access, refused with an error and a log line saying why,
    the database left as it was."""
    mounted.allowed_errors += ["need random access", "would change the existing object"]
    create = ("import sqlite3, sys\n"
              "c = sqlite3.connect(sys.argv[1])\n"
              "c.execute('create table t(x)')\n"
              "c.executemany('insert into t values (?)', [(i,) for i in range(1000)])\n"
              "c.commit()\n")
    db = mounted.path / "db.sqlite"
    run(sys.executable, "-c", create, str(db))
    local = tmp_path / "copy.sqlite"
    local.write_bytes(get(s3, bucket, "db.sqlite"))
    check = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(" \
            "'select count(*) from t').fetchone()[0])"
    assert run(sys.executable, "-c", check, str(local)).stdout.strip() == "1000"
    before = get(s3, bucket, "db.sqlite")
    change = ("import sqlite3, sys\n"
              "c = sqlite3.connect(sys.argv[1])\n"
              "c.execute('insert into t values (1)')\n"
              "c.commit()\n")
    r = subprocess.run([sys.executable, "-c", change, str(db)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "disk I/O error" in r.stderr, r.stderr
    assert "would change the existing object" in mounted.log()
    assert get(s3, bucket, "db.sqlite") == before