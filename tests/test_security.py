"""Who may use a mount: private to the mounting user unless --allow-other, and the kernel
checks modes (default_permissions) when others are let in. Level 3, real mounts."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Mount, keys, start_mount
from tests.seaweed import SeaweedServer

NOBODY = 65534


def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30,
                          user=NOBODY, group=NOBODY, extra_groups=[])


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="s3mount-sec-"))
    d.chmod(0o755)
    yield d
    for child in d.iterdir():
        child.rmdir()
    d.rmdir()


def mount_in(server: SeaweedServer, bucket: str, where: Path, tmp_path: Path,
             *args: str) -> Mount:
    return start_mount(server, bucket, where / "mnt", tmp_path / "mount.log", *args)


def test_default_mount_is_private(s3server: SeaweedServer, bucket: str, public_dir: Path,
                                  tmp_path: Path, s3: Any) -> None:
    (public_dir / "check").mkdir()
    assert as_nobody("ls", str(public_dir)).returncode == 0  # the path itself is reachable
    (public_dir / "check").rmdir()
    m = mount_in(s3server, bucket, public_dir, tmp_path)
    try:
        (m.path / "mine.txt").write_bytes(b"private")
        r = as_nobody("ls", str(m.path))
        assert r.returncode != 0 and "Permission denied" in r.stderr, r
        r = as_nobody("sh", "-c", f"echo x > {m.path}/theirs.txt")
        assert r.returncode != 0 and "Permission denied" in r.stderr, r
        assert keys(s3, bucket) == ["mine.txt"]
    finally:
        m.unmount()


def test_allow_other_lets_others_read_and_modes_still_apply(
        s3server: SeaweedServer, bucket: str, public_dir: Path, tmp_path: Path,
        s3: Any) -> None:
    """With --allow-other another user reads (modes 0644/0755) but cannot write into a
    directory owned by the mounting user: the kernel checks modes (default_permissions)."""
    m = mount_in(s3server, bucket, public_dir, tmp_path, "--allow-other")
    try:
        (m.path / "shared.txt").write_bytes(b"for everyone")
        r = as_nobody("cat", str(m.path / "shared.txt"))
        assert r.returncode == 0 and r.stdout == "for everyone", r
        r = as_nobody("sh", "-c", f"echo x > {m.path}/theirs.txt")
        assert r.returncode != 0 and "Permission denied" in r.stderr, r
        r = as_nobody("rm", "-f", str(m.path / "shared.txt"))
        assert r.returncode != 0, r
        assert keys(s3, bucket) == ["shared.txt"]
    finally:
        m.unmount()
    log = (tmp_path / "mount.log").read_text()
    assert "Traceback" not in log and os.environ.get("AWS_SECRET_ACCESS_KEY", "\0") not in log
