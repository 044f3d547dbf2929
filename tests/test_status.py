"""`s3mount status MOUNTPOINT` against a live upload through a real mount."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from s3mount.config import MiB
from s3mount.status import socket_path
from tests.conftest import Mount, get, s3mount_cmd

P = 5 * MiB
HOLDER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
for i in range(12):
    os.write(fd, bytes([i]) * (1 << 20))
print("written", flush=True)
sys.stdin.readline()
os.close(fd)
"""


def status(m: Mount, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*s3mount_cmd(), "status", str(m.path), *args],
                          capture_output=True, text=True, timeout=30)


def test_status_shows_a_live_upload(mount_factory: Callable[..., Mount], s3: Any,
                                    bucket: str) -> None:
    before = time.monotonic()
    m = mount_factory(bucket)
    sock = socket_path(str(m.path))
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600  # private to the mounting user
    writer = subprocess.Popen([sys.executable, "-c", HOLDER, str(m.path / "live.bin")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdin is not None
    try:
        assert writer.stdout.readline() == "written\n"
        deadline = time.monotonic() + 30
        while True:  # part 2 gets uploaded while the file stays open (part 1 waits for close)
            doc = json.loads(status(m, "--json").stdout)
            (up,) = doc["uploads"]
            if up["parts_uploaded"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert up["key"] == "live.bin" and up["state"] == "open"
        assert up["bytes_written"] == 12 * MiB
        assert up["bytes_uploaded"] == P and up["parts_uploaded"] == 1
        assert up["parts_started"] == 3 and up["rate_bytes_s"] > 0
        assert doc["bucket"] == bucket and doc["totals"]["in_flight"] == 1
        # The mount started after `before`: its uptime is no more than the time since then
        # (it was once taken from trio's clock, whose offset made it hugely negative).
        assert 0 <= doc["uptime_s"] <= time.monotonic() - before + 0.1
        assert doc["write_memory"]["used"] == 2 * P  # part 1, and the part being filled
        text = status(m).stdout
        assert "live.bin" in text and "5 MiB of 12 MiB uploaded and verified" in text
        assert "[############......" in text and "parts 1/3" in text
    finally:
        writer.communicate("close\n", timeout=60)
    assert get(s3, bucket, "live.bin") == b"".join(bytes([i]) * MiB for i in range(12))
    doc = json.loads(status(m, "--json").stdout)
    assert doc["uploads"] == [] and doc["totals"]["completed"] == 1
    assert doc["totals"]["completed_bytes"] == 12 * MiB
    assert "AWS_SECRET" not in json.dumps(doc) and "secret" not in json.dumps(doc).lower()


def test_status_reports_errors_and_refuses_non_mounts(mount_factory: Callable[..., Mount],
                                                      bucket: str, tmp_path: Any) -> None:
    m = mount_factory(bucket)
    m.allowed_errors.append("outside the rewrite window")
    fd = os.open(m.path / "bad.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, bytes(3 * P))  # part 1 held, part 2 sent, part 3 being filled
        with contextlib.suppress(OSError):
            os.pwrite(fd, b"x", P + 10)  # EINVAL: the upload is aborted
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    text = status(m).stdout
    assert "recent errors:" in text and "outside the rewrite window" in text
    assert "1 failed" in text
    r = subprocess.run([*s3mount_cmd(), "status", str(tmp_path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 6 and "is not a mount point" in r.stderr
    assert len(r.stderr.splitlines()) == 1
