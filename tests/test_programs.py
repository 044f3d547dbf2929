"""Programs people point at a mount (issue 15), each run onto a real mount and its result
compared with the same program's output on local disk, or passed through the program's own
check. Each one used to fail on a pattern streaming can support."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Mount, get, keys


def run(*cmd: str, cwd: Path | None = None, timeout: float = 180,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                       env=env)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


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
