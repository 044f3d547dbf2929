"""`s3mount uploads list|abort` and `--abort-stale-uploads`: incomplete multipart uploads left
by a killed mount are found and aborted; checked with boto3."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from s3mount.options import parse_age
from tests.conftest import Mount, keys, kill_mount, open_uploads, s3mount_cmd
from tests.seaweed import SeaweedServer


def uploads(server: SeaweedServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*s3mount_cmd(), "uploads", *args, "--endpoint-url",
                           server.endpoint_url], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **server.env()})


def leave_upload_behind(m: Mount, s3: Any, bucket: str, name: str) -> None:
    """Kill -9 the mount while dd streams into it: its multipart upload stays."""
    proc = subprocess.Popen(["dd", "if=/dev/urandom", f"of={m.path / name}", "bs=1M",
                             "count=100000"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not open_uploads(s3, bucket):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1)  # a part or two more
        kill_mount(m)
        proc.wait(60)
    finally:
        proc.kill()


def test_parse_age() -> None:
    assert [parse_age(a) for a in ("0s", "90m", "12h", "7d", "1w", "1.5h")] == [
        0, 5400, 43200, 604800, 604800, 5400]
    for bad in ("", "7", "7y", "-1d", "d"):
        with pytest.raises(Exception, match="invalid age"):
            parse_age(bad)


def test_list_and_abort_what_a_killed_mount_left(mount_factory: Callable[..., Mount],
                                                 s3server: SeaweedServer, s3: Any,
                                                 bucket: str) -> None:
    leave_upload_behind(mount_factory(bucket), s3, bucket, "disk.img")
    assert keys(s3, bucket) == [] and open_uploads(s3, bucket) == ["disk.img"]

    r = uploads(s3server, "list", bucket)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.endswith("disk.img"))
    started, age, parts, size = row.split()[0:2], row.split()[2], row.split()[3], row.split()[4:6]
    assert int(parts) >= 1 and size[1] == "MiB" and float(size[0]) >= 5
    assert "1 incomplete upload(s)" in r.stdout and started and age

    r = uploads(s3server, "abort", bucket)
    assert r.returncode == 2 and "--older-than" in r.stderr and len(r.stderr.splitlines()) == 1
    r = uploads(s3server, "abort", bucket, "--older-than", "1h")
    assert r.returncode == 0 and "0 upload(s) aborted" in r.stdout
    assert open_uploads(s3, bucket) == ["disk.img"]
    r = uploads(s3server, "abort", bucket, "--older-than", "0s")
    assert r.returncode == 0 and "aborted disk.img" in r.stdout, r.stderr
    assert open_uploads(s3, bucket) == []
    r = uploads(s3server, "list", bucket)
    assert "no incomplete uploads" in r.stdout


def test_prefix_limits_what_is_listed_and_aborted(s3server: SeaweedServer, s3: Any,
                                                  bucket: str) -> None:
    for key in ("keep/a", "drop/b"):
        s3.create_multipart_upload(Bucket=bucket, Key=key)
    r = uploads(s3server, "list", f"s3://{bucket}/drop/")
    assert "drop/b" in r.stdout and "keep/a" not in r.stdout
    assert uploads(s3server, "abort", f"s3://{bucket}/drop/", "--older-than", "0s"
                   ).returncode == 0
    assert open_uploads(s3, bucket) == ["keep/a"]


def test_mount_aborts_stale_uploads_at_start(mount_factory: Callable[..., Mount], s3: Any,
                                             bucket: str) -> None:
    s3.create_multipart_upload(Bucket=bucket, Key="pre/old.bin")
    s3.create_multipart_upload(Bucket=bucket, Key="other/old.bin")
    m = mount_factory(f"s3://{bucket}/pre/", "--abort-stale-uploads", "0s")
    assert open_uploads(s3, bucket) == ["other/old.bin"]  # only under the mounted prefix
    assert "aborted stale multipart upload of pre/old.bin" in m.log()
