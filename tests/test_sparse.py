"""Holes and size promises through a real mount: the tools that move disk images and
decompress files skip runs of zeros by seeking forward, and many end with ftruncate. Each
object must equal, byte for byte, the same tool's output on local disk."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3mount.config import MiB
from tests.conftest import Mount, get, keys, open_uploads

P = 5 * MiB  # the mounts here use --part-size 5M
IMAGE_SIZE = 50 * MiB
# (offset, length) of the data in the sparse image; the rest is holes. The hole from 1 MiB
# to 9 MiB spans the boundary of parts 1 and 2, the one from 11 MiB to 23.5 MiB three more,
# and the image ends with a hole of 9 MiB (tools end it with ftruncate).
EXTENTS = [(0, MiB), (9 * MiB, 2 * MiB), (23 * MiB + MiB // 2, 300_000), (40 * MiB, MiB)]


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sparse disk image on local disk: truncate, then writes at a few offsets."""
    path = tmp_path_factory.mktemp("sparse") / "disk.img"
    with open(path, "wb") as f:
        f.truncate(IMAGE_SIZE)
        for off, n in EXTENTS:
            f.seek(off)
            f.write(os.urandom(n))
    assert os.stat(path).st_blocks * 512 < IMAGE_SIZE // 4  # it really is sparse here
    return path


def same(s3: Any, bucket: str, key: str, local: Path) -> None:
    """The object `key` holds exactly the bytes of the local file `local`."""
    body = get(s3, bucket, key)
    want = local.read_bytes()
    assert len(body) == len(want), (key, len(body), len(want))
    assert hashlib.md5(body).digest() == hashlib.md5(want).digest(), key
    assert open_uploads(s3, bucket) == []


@pytest.mark.parametrize("args", [[], ["--sparse=always"]], ids=["auto", "always"])
def test_cp_of_a_sparse_image(mounted: Mount, s3: Any, bucket: str, image: Path,
                              tmp_path: Path, args: list[str]) -> None:
    local = tmp_path / "local.img"
    run("cp", *args, str(image), str(local))
    run("cp", *args, str(image), str(mounted.path / "disk.img"))
    assert local.read_bytes() == image.read_bytes()
    same(s3, bucket, "disk.img", local)
    assert not [line for line in mounted.log().splitlines() if " ERROR " in line]


def test_dd_conv_sparse(mounted: Mount, s3: Any, bucket: str, image: Path,
                        tmp_path: Path) -> None:
    local = tmp_path / "local.img"
    for out in (local, mounted.path / "dd.img"):
        run("dd", f"if={image}", f"of={out}", "bs=64K", "conv=sparse", "status=none")
    same(s3, bucket, "dd.img", local)


def test_rsync_sparse(mounted: Mount, s3: Any, bucket: str, image: Path,
                      tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    run("rsync", "-S", str(image), str(tmp_path / "local") + "/")
    run("rsync", "-S", str(image), str(mounted.path) + "/")
    same(s3, bucket, "disk.img", tmp_path / "local" / "disk.img")
    assert keys(s3, bucket) == ["disk.img"]  # rsync's temporary file was renamed


def test_tar_extract_sparse(mounted: Mount, s3: Any, bucket: str, image: Path,
                            tmp_path: Path) -> None:
    archive = tmp_path / "sparse.tar"
    run("tar", "-cSf", str(archive), "-C", str(image.parent), image.name)
    assert archive.stat().st_size < IMAGE_SIZE // 4  # holes are not in the archive
    (tmp_path / "local").mkdir()
    run("tar", "-xSf", str(archive), "-C", str(tmp_path / "local"))
    run("tar", "-xSf", str(archive), "-C", str(mounted.path))
    same(s3, bucket, "disk.img", tmp_path / "local" / "disk.img")


ZERO_RUNS = os.urandom(300_000) + bytes(12 * MiB) + os.urandom(100_000) + bytes(3 * MiB)


@pytest.mark.parametrize("tool", ["xz", "zstd", "lz4"])
def test_decompressors_write_holes(mounted: Mount, s3: Any, bucket: str, tmp_path: Path,
                                   tool: str) -> None:
    """Decompressing a file with long runs of zeros, next to it on the mount (as on local
    disk): the tools seek over the zeros of their output file."""
    src = tmp_path / "runs.bin"
    src.write_bytes(ZERO_RUNS)
    compress = {"xz": ["xz", "-k", "-0"], "zstd": ["zstd", "-q", "-k"],
                "lz4": ["lz4", "-q", "-k", "-f"]}[tool]
    suffix = {"xz": ".xz", "zstd": ".zst", "lz4": ".lz4"}[tool]
    packed = src.with_name(src.name + suffix)
    run(*compress, str(src), *([str(packed)] if tool == "lz4" else []))
    decompress: dict[str, Callable[[Path], list[str]]] = {
        "xz": lambda p: ["xz", "-d", "-k", str(p)],
        "zstd": lambda p: ["zstd", "-q", "-d", str(p), "-o", str(p.with_suffix(""))],
        "lz4": lambda p: ["lz4", "-q", "-d", str(p), str(p.with_suffix(""))],
    }
    (tmp_path / "local").mkdir()
    local_packed = tmp_path / "local" / packed.name
    local_packed.write_bytes(packed.read_bytes())
    run(*decompress[tool](local_packed))
    run("cp", str(packed), str(mounted.path / packed.name))
    run(*decompress[tool](mounted.path / packed.name))
    local = tmp_path / "local" / "runs.bin"
    assert local.read_bytes() == ZERO_RUNS
    same(s3, bucket, "runs.bin", local)


def test_dd_seek_and_truncate_set_the_size(mounted: Mount, s3: Any, bucket: str,
                                           tmp_path: Path) -> None:
    """dd seek= (ftruncate to the seek offset, then writes), and truncate -s alone."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * MiB + 17))
    for args in (["bs=1k", "count=1", "seek=5"], ["bs=1M", "seek=7"],
                 ["bs=1M", "seek=12", "count=0"]):
        name = "dd-" + "-".join(args)
        local = tmp_path / name
        run("dd", f"if={src}", f"of={local}", *args, "status=none")
        run("dd", f"if={src}", f"of={mounted.path / name}", *args, "status=none")
        same(s3, bucket, name, local)
    run("truncate", "-s", "12M", str(mounted.path / "t"))  # a new file of 12 MiB of zeros
    assert get(s3, bucket, "t") == bytes(12 * MiB)


def test_ftruncate_first_then_sequential_writes(mounted: Mount, s3: Any, bucket: str) -> None:
    """A download manager's way: ftruncate to the final size, then write from 0."""
    data = os.urandom(11 * MiB + 5)
    fd = os.open(mounted.path / "pre", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.ftruncate(fd, len(data))
        assert os.fstat(fd).st_size == len(data)
        for off in range(0, len(data), MiB):
            os.write(fd, data[off:off + MiB])
        assert os.fstat(fd).st_size == len(data)
    finally:
        os.close(fd)
    assert get(s3, bucket, "pre") == data


def test_seek_over_zeros_then_ftruncate_at_the_end(mounted: Mount, s3: Any, bucket: str,
                                                   tmp_path: Path) -> None:
    """A tool that writes sparse output: lseek over each run of zeros, and ftruncate to the
    final size when the file ends with one."""
    chunks = [os.urandom(MiB), bytes(7 * MiB), os.urandom(MiB // 3), bytes(6 * MiB + 1)]
    outputs = (tmp_path / "local.bin", mounted.path / "sparse.bin")
    for out in outputs:
        with open(out, "wb") as f:
            for chunk in chunks:
                if any(chunk):
                    f.write(chunk)
                else:
                    f.seek(len(chunk), os.SEEK_CUR)
            f.truncate(f.tell())
    assert outputs[0].read_bytes() == b"".join(chunks)
    same(s3, bucket, "sparse.bin", outputs[0])


def test_a_hole_costs_no_memory_of_its_own(mount_factory: Callable[..., Mount], s3: Any,
                                           bucket: str) -> None:
    """A 512 MiB hole streams through the part buffers: the mount's peak RSS grows by
    about --max-memory, not by the hole."""
    m = mount_factory(bucket, "--max-memory", "24M")
    before = vm_hwm_mib(m.proc.pid)
    with open(m.path / "hole.bin", "wb") as f:
        f.write(b"start")
        f.seek(512 * MiB)
        f.write(b"end")
    grew = vm_hwm_mib(m.proc.pid) - before
    print(f"512 MiB hole: mount peak RSS {before} -> {before + grew} MiB")
    assert grew < 50, f"peak RSS grew by {grew} MiB for a 512 MiB hole"  # 22 measured
    info = s3.head_object(Bucket=bucket, Key="hole.bin")
    assert info["ContentLength"] == 512 * MiB + 3
    body = s3.get_object(Bucket=bucket, Key="hole.bin", Range=f"bytes={512 * MiB - 2}-")
    assert body["Body"].read() == b"\0\0end"
    assert s3.get_object(Bucket=bucket, Key="hole.bin", Range="bytes=0-5")[
        "Body"].read() == b"start\0"


def vm_hwm_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")
