"""rename(2) through a real mount: verified server-side copy, then delete; checked in the
bucket with boto3."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import io
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3mount.config import Config, MiB
from s3mount.errors import FsError, IntegrityError
from s3mount.etag import stream_etag
from s3mount.objects import ObjectInfo
from s3mount.renamer import Renamer, parts_of
from s3mount.schedule import PartSchedule
from s3mount.store import S3Store
from tests.conftest import Mount, get, keys, open_uploads, put
from tests.faults import FaultyStore

P = 5 * MiB
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, str(old).encode(), AT_FDCWD, str(new).encode(), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def etag_of(data: bytes) -> str:
    return stream_etag(io.BytesIO(data), PartSchedule(P))


def etag(s3: Any, bucket: str, key: str) -> str:
    return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')  # type: ignore[no-any-return]


@pytest.mark.parametrize("size", [0, 1000, 3 * P + 7])
def test_rename_file_keeps_bytes_and_etag(mounted: Mount, s3: Any, bucket: str,
                                          size: int) -> None:
    data = os.urandom(size)
    (mounted.path / "a.bin").write_bytes(data)
    # Right after close: an empty file is still completing (see SEMANTICS); rename waits.
    os.rename(mounted.path / "a.bin", mounted.path / "b.bin")
    before = etag_of(data)
    assert keys(s3, bucket) == ["b.bin"]
    assert get(s3, bucket, "b.bin") == data
    assert etag(s3, bucket, "b.bin") == before  # multipart: copied over the same parts
    assert (mounted.path / "b.bin").read_bytes() == data
    assert not (mounted.path / "a.bin").exists()
    assert parts_of(before) == (4 if size > P else 0)
    assert open_uploads(s3, bucket) == []


def test_rename_replaces_target_and_moves_between_directories(mounted: Mount, s3: Any,
                                                              bucket: str) -> None:
    (mounted.path / "d").mkdir()
    (mounted.path / "d" / "old.txt").write_bytes(b"old")
    (mounted.path / "new.txt").write_bytes(b"new")
    os.rename(mounted.path / "new.txt", mounted.path / "d" / "old.txt")
    assert (mounted.path / "d" / "old.txt").read_bytes() == b"new"
    assert sorted(os.listdir(mounted.path)) == ["d"]
    assert keys(s3, bucket) == ["d/", "d/old.txt"]
    assert get(s3, bucket, "d/old.txt") == b"new"


def test_rename_flags_and_refusals(mounted: Mount, s3: Any, bucket: str) -> None:
    mounted.allowed_errors += ["RENAME_NOREPLACE", "RENAME_EXCHANGE", "into itself",
                               "is a directory", "not empty"]
    m = mounted.path
    (m / "a").write_bytes(b"a")
    (m / "b").write_bytes(b"b")
    (m / "dir").mkdir()
    (m / "full").mkdir()
    (m / "full" / "x").write_bytes(b"x")
    cases = [
        (lambda: renameat2(m / "a", m / "b", RENAME_NOREPLACE), errno.EEXIST),
        (lambda: renameat2(m / "a", m / "b", RENAME_EXCHANGE), errno.EINVAL),
        (lambda: os.rename(m / "dir", m / "dir" / "sub"), errno.EINVAL),
        (lambda: os.rename(m / "a", m / "dir"), errno.EISDIR),
        (lambda: os.rename(m / "dir", m / "full"), errno.ENOTEMPTY),
    ]
    for call, code in cases:
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == code
    assert get(s3, bucket, "a") == b"a" and get(s3, bucket, "b") == b"b"
    renameat2(m / "a", m / "c", RENAME_NOREPLACE)  # free target: fine
    assert sorted(keys(s3, bucket)) == ["b", "c", "dir/", "full/", "full/x"]


def test_rename_directory_moves_every_key(mounted: Mount, s3: Any, bucket: str) -> None:
    m = mounted.path
    (m / "src" / "sub").mkdir(parents=True)
    (m / "src" / "one").write_bytes(b"1")
    (m / "src" / "sub" / "two").write_bytes(os.urandom(P + 1))
    put(s3, bucket, "src/implicit/three", b"3")  # a directory without marker
    (m / "empty").mkdir()
    os.rename(m / "src", m / "empty")  # over an empty directory: allowed
    assert sorted(keys(s3, bucket)) == ["empty/", "empty/implicit/three", "empty/one",
                                        "empty/sub/", "empty/sub/two"]
    assert (m / "empty" / "implicit" / "three").read_bytes() == b"3"
    assert not (m / "src").exists()
    os.rename(m / "empty", m / "moved")
    # (SeaweedFS keeps listing emptied prefixes, so the root listing is not checked here.)
    assert sorted(keys(s3, bucket)) == ["moved/", "moved/implicit/three", "moved/one",
                                        "moved/sub/", "moved/sub/two"]
    assert sorted(os.listdir(m / "moved")) == ["implicit", "one", "sub"]
    assert (m / "moved" / "one").read_bytes() == b"1"


def test_rename_of_implicit_directory_leaves_it_visible(mounted: Mount, s3: Any,
                                                        bucket: str) -> None:
    put(s3, bucket, "imp/f", b"f")
    os.rename(mounted.path / "imp", mounted.path / "exp")
    assert sorted(keys(s3, bucket)) == ["exp/f"]
    assert os.listdir(mounted.path / "exp") == ["f"]


def test_directory_over_the_key_cap_is_refused_and_mv_copies(
        mount_factory: Callable[..., Mount], s3: Any, bucket: str) -> None:
    m = mount_factory(bucket, "--rename-max-keys", "3")
    m.allowed_errors.append("--rename-max-keys")
    for i in range(5):
        put(s3, bucket, f"big/f{i}", str(i).encode())
    with pytest.raises(OSError) as exc:
        os.rename(m.path / "big", m.path / "other")
    assert exc.value.errno == errno.EXDEV
    assert len(keys(s3, bucket, "big/")) == 5 and keys(s3, bucket, "other") == []
    r = subprocess.run(["mv", str(m.path / "big"), str(m.path / "other")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [get(s3, bucket, f"other/f{i}") for i in range(5)] == [b"0", b"1", b"2", b"3", b"4"]
    assert keys(s3, bucket, "big") == []


def test_rename_of_file_being_written_is_busy(mounted: Mount) -> None:
    mounted.allowed_errors.append("being written")
    with open(mounted.path / "w", "wb") as f:
        f.write(b"x")
        with pytest.raises(OSError) as exc:
            os.rename(mounted.path / "w", mounted.path / "v")
        assert exc.value.errno == errno.EBUSY


@pytest.mark.parametrize("wrong", ["etag", "size"])
async def test_copy_that_does_not_verify_leaves_the_source(config: Config, s3: Any,
                                                           bucket: str, wrong: str) -> None:
    class WrongCopy(FaultyStore):
        async def head(self, key: str, checksum: bool = False) -> ObjectInfo | None:
            info = await self.inner.head(key, checksum)
            if info is not None and key == "dst":
                return (dataclasses.replace(info, etag="0" * 32) if wrong == "etag"
                        else dataclasses.replace(info, size=info.size - 1))
            return info

    put(s3, bucket, "src", b"precious")
    renamer = Renamer(WrongCopy(S3Store(config)), 100)
    with pytest.raises(FsError) as exc:
        await renamer.move_file("src", "dst")
    if wrong == "etag":  # EXDEV: mv then copies through the mount, verified there
        assert exc.value.errno_ == errno.EXDEV and "could not be verified" in str(exc.value)
    else:
        assert isinstance(exc.value, IntegrityError) and "src is intact" in str(exc.value)
    assert keys(s3, bucket) == ["src"] and get(s3, bucket, "src") == b"precious"


async def test_object_changed_during_copy_is_not_copied(config: Config, s3: Any,
                                                        bucket: str) -> None:
    put(s3, bucket, "src", b"v1")
    store = S3Store(config)
    info = await store.head("src")
    assert info is not None
    put(s3, bucket, "src", b"v2 is longer")
    with pytest.raises(Exception, match="changed|Precondition|412"):
        await Renamer(store, 100).copy(info, "dst")
    assert keys(s3, bucket) == ["src"]


def test_rename_directory_with_suffix_markers(mount_factory: Callable[..., Mount], s3: Any,
                                              bucket: str) -> None:
    m = mount_factory(bucket, "--dir-suffix", "_$folder$")
    (m.path / "d" / "e").mkdir(parents=True)
    (m.path / "d" / "e" / "f").write_bytes(b"f")
    assert sorted(keys(s3, bucket)) == ["d/e/f", "d/e_$folder$", "d_$folder$"]
    os.rename(m.path / "d", m.path / "g")
    assert sorted(keys(s3, bucket)) == ["g/e/f", "g/e_$folder$", "g_$folder$"]
    assert (m.path / "g" / "e" / "f").read_bytes() == b"f"
