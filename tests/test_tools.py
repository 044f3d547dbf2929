"""Everyday tools pointed at a real mount: each must exit 0 and leave a tree identical to a
local reference (`diff -r`), checked again object by object in the bucket with boto3."""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from s3mount.config import MiB
from tests.conftest import Mount, get, keys, run_ok

BIG = 6 * MiB + 123  # two parts with the tests' 5 MiB part size


run = functools.partial(run_ok, timeout=120)


@pytest.fixture
def ref(tmp_path: Path) -> Path:
    """A small tree with an empty file, a multipart-sized file, nesting and odd names."""
    root = tmp_path / "ref"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "small.txt").write_bytes(b"hello\n" * 100)
    (root / "with space é.txt").write_bytes(b"names survive")
    (root / "sub" / "big.bin").write_bytes(os.urandom(BIG))
    (root / "sub" / "deeper" / "leaf.dat").write_bytes(os.urandom(5000))
    return root


def same_tree(a: Path, b: Path) -> None:
    r = subprocess.run(["diff", "-r", str(a), str(b)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def same_objects(s3: Any, bucket: str, ref: Path, prefix: str) -> None:
    """Every file of `ref` is an object under `prefix` with the same bytes."""
    files = sorted(p for p in ref.rglob("*") if p.is_file())
    for f in files:
        assert get(s3, bucket, prefix + str(f.relative_to(ref))) == f.read_bytes(), f
    stored = [k for k in keys(s3, bucket, prefix) if not k.endswith("/")]
    assert sorted(stored) == sorted(prefix + str(f.relative_to(ref)) for f in files)


def test_cp_r_and_cp_a(mounted: Mount, s3: Any, bucket: str, ref: Path) -> None:
    run("cp", "-r", str(ref), str(mounted.path / "cp"))
    run("cp", "-a", str(ref), str(mounted.path / "cpa"))  # times and modes: accepted
    for name in ("cp", "cpa"):
        same_tree(ref, mounted.path / name)
        same_objects(s3, bucket, ref, f"{name}/")


def test_tar_into_and_out_of_the_mount(mounted: Mount, s3: Any, bucket: str, ref: Path,
                                       tmp_path: Path) -> None:
    (mounted.path / "x").mkdir()
    tar = subprocess.Popen(["tar", "-C", str(ref), "-cf", "-", "."], stdout=subprocess.PIPE)
    r = subprocess.run(["tar", "-C", str(mounted.path / "x"), "-xf", "-"], stdin=tar.stdout,
                       capture_output=True, text=True, timeout=120)
    assert tar.stdout is not None
    tar.stdout.close()
    assert tar.wait(60) == 0 and r.returncode == 0, r.stderr
    same_tree(ref, mounted.path / "x")
    same_objects(s3, bucket, ref, "x/")
    # tar -c writing its archive into the mount, and reading a tree from it
    run("tar", "-C", str(ref), "-cf", str(mounted.path / "a.tar"), ".")
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-C", str(out), "-xf", str(mounted.path / "a.tar"))
    same_tree(ref, out)
    run("tar", "-C", str(mounted.path / "x"), "-cf", str(tmp_path / "b.tar"), ".")
    out2 = tmp_path / "out2"
    out2.mkdir()
    run("tar", "-C", str(out2), "-xf", str(tmp_path / "b.tar"))
    same_tree(ref, out2)


def test_rsync(mounted: Mount, s3: Any, bucket: str, ref: Path) -> None:
    """rsync -a writes a temporary file and renames it; --inplace writes new files."""
    run("rsync", "-a", f"{ref}/", f"{mounted.path}/rs/")
    same_tree(ref, mounted.path / "rs")
    same_objects(s3, bucket, ref, "rs/")
    assert not [k for k in keys(s3, bucket, "rs/") if "/." in k]  # no temp files left
    (ref / "small.txt").write_bytes(b"changed\n")
    run("rsync", "-a", f"{ref}/", f"{mounted.path}/rs/")  # again: replaces by rename
    assert get(s3, bucket, "rs/small.txt") == b"changed\n"
    run("rsync", "-r", "--inplace", f"{ref}/", f"{mounted.path}/rsi/")
    same_tree(ref, mounted.path / "rsi")


def test_unzip_gzip_split(mounted: Mount, s3: Any, bucket: str, ref: Path,
                          tmp_path: Path) -> None:
    archive = tmp_path / "ref.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(ref.rglob("*")):
            z.write(f, f.relative_to(ref))
    run("unzip", "-q", str(archive), "-d", str(mounted.path / "unz"))
    same_tree(ref, mounted.path / "unz")
    same_objects(s3, bucket, ref, "unz/")

    big = ref / "sub" / "big.bin"
    with open(mounted.path / "big.gz", "wb") as f:
        assert subprocess.run(["gzip", "-c", "-n", str(big)], stdout=f,
                              timeout=120).returncode == 0
    assert gzip.decompress(get(s3, bucket, "big.gz")) == big.read_bytes()

    (mounted.path / "parts").mkdir()
    run("split", "-b", "2M", str(big), str(mounted.path / "parts" / "p-"))
    pieces = sorted(k for k in keys(s3, bucket, "parts/p-"))
    assert len(pieces) == 4
    assert b"".join(get(s3, bucket, k) for k in pieces) == big.read_bytes()


def test_python_copytree_dd_fsync_install_mv(mounted: Mount, s3: Any, bucket: str,
                                             ref: Path, tmp_path: Path) -> None:
    shutil.copytree(ref, mounted.path / "py")  # copy2: sendfile, then utime and chmod
    same_tree(ref, mounted.path / "py")
    same_objects(s3, bucket, ref, "py/")

    big = ref / "sub" / "big.bin"
    run("dd", f"if={big}", f"of={mounted.path / 'dd.bin'}", "bs=1M", "conv=fsync",
        "status=none")
    assert get(s3, bucket, "dd.bin") == big.read_bytes()

    run("install", "-D", "-m", "600", str(ref / "small.txt"),
        str(mounted.path / "inst" / "small.txt"))
    assert get(s3, bucket, "inst/small.txt") == (ref / "small.txt").read_bytes()

    local = tmp_path / "moving.txt"
    local.write_bytes(b"across file systems")
    run("mv", str(local), str(mounted.path / "moved.txt"))  # into the mount: copy + unlink
    assert not local.exists() and get(s3, bucket, "moved.txt") == b"across file systems"
    run("mv", str(mounted.path / "moved.txt"), str(local))  # and out again
    assert local.read_bytes() == b"across file systems"
    assert "moved.txt" not in keys(s3, bucket)
    run("mv", str(mounted.path / "py"), str(mounted.path / "py2"))  # within: rename
    same_tree(ref, mounted.path / "py2")
    same_objects(s3, bucket, ref, "py2/")
