"""Big parts through a real mount, on SeaweedFS and on moto's server: a compressed schedule
(`--part-size 5M --part-growth-every 2`) reaching parts larger than --max-memory, verified with
boto3; memory that does not grow with the part size (VmHWM); `s3mount status` during a big
part; a kill -9 in the middle of one, and `s3mount uploads list|abort` removing what is left,
temporary objects included; the temporary names hidden from listings."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3mount.assembler import TMP_DIR
from s3mount.config import MiB
from tests.conftest import Mount, kill_mount, s3mount_cmd, start_mount
from tests.motoserver import MotoServer
from tests.seaweed import SeaweedServer

COMPRESSED = ("--part-size", "5M", "--part-growth-every", "2")
Server = SeaweedServer | MotoServer


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    made: list[Mount] = []

    def make(server: Server, bucket: str, *args: str) -> Mount:
        n = len(made)
        m = start_mount(server, bucket, tmp_path / f"mnt{n}",  # type: ignore[arg-type]
                        tmp_path / f"mount{n}.log", *COMPRESSED, *args)
        made.append(m)
        return m

    yield make
    for m in made:
        m.unmount()
        assert "Traceback" not in m.log() and "unexpectedly" not in m.log(), m.log()


def all_keys(client: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def open_uploads(client: Any, bucket: str) -> list[str]:
    return sorted(u["Key"] for u in
                  client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def vm_hwm(pid: int) -> int:
    """Peak resident set of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def uploads_cmd(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*s3mount_cmd(), "uploads", *args, "--endpoint-url",
                           server.endpoint_url], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **server.env()})


def status(m: Mount) -> dict[str, Any]:
    r = subprocess.run([*s3mount_cmd(), "status", str(m.path), "--json"], capture_output=True,
                       text=True, timeout=30)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_stream_of_big_parts_in_constant_memory(
        target: tuple[Server, Any, str], mounts: Callable[..., Mount], tmp_path: Path) -> None:
    """Parts 5, 5, 10, 10, 20, 20, 40, 40, 80 MiB (moto, in memory: up to 40 MiB) with 24 MiB
    of buffers; the object is verified with boto3 (bytes, and on moto the ETag `s3mount etag`
    predicts), and the mount's peak RSS stays bounded while parts are up to 3x --max-memory."""
    server, client, bucket = target
    size = (300 if isinstance(server, SeaweedServer) else 110) * MiB + 4321
    src = tmp_path / "src.bin"
    with open(src, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(size % MiB))
    m = mounts(server, bucket, "--max-memory", "24M")
    before = vm_hwm(m.proc.pid)
    dd = subprocess.Popen(["dd", f"if={src}", f"of={m.path / 'disk.img'}", "bs=1M"],
                          stderr=subprocess.DEVNULL)
    seen: list[dict[str, Any]] = []
    while dd.poll() is None:
        doc = status(m)
        seen += [b for u in doc["uploads"] for b in u.get("big_parts", [])]
        assert TMP_DIR.rstrip("/") not in os.listdir(m.path)  # hidden while assembled
        time.sleep(0.3)
    assert dd.returncode == 0, m.log()
    peak = vm_hwm(m.proc.pid)
    body = client.get_object(Bucket=bucket, Key="disk.img")["Body"]
    digest = hashlib.md5()
    while chunk := body.read(8 * MiB):
        digest.update(chunk)
    assert digest.digest() == hashlib.md5(src.read_bytes()).digest()
    etag = client.head_object(Bucket=bucket, Key="disk.img")["ETag"].strip('"')
    predicted = subprocess.run([*s3mount_cmd(), "etag", *COMPRESSED, str(src)],
                               capture_output=True, text=True, check=True).stdout.strip()
    log = m.log()
    if isinstance(server, MotoServer):
        assert etag == predicted
        assert "proven by its answer: this server answers the MD5" in log
    else:  # SeaweedFS builds the object's ETag from its own copy answers
        assert etag != predicted and etag.endswith(predicted[predicted.index("-"):])
        assert "proven by reading its range of the completed object back" in log
    assert all_keys(client, bucket) == ["disk.img"] and open_uploads(client, bucket) == []
    assert seen and {b["part"] for b in seen} <= set(range(3, 11))
    assert all(b["temporary_key"].startswith(TMP_DIR + "disk.img.") for b in seen)
    print(f"{type(server).__name__}: VmHWM {before >> 20} MiB at start, {peak >> 20} MiB "
          f"after {size >> 20} MiB in parts up to {'80' if size > 200 * MiB else '40'} MiB")
    assert peak - before < 24 * MiB + 40 * MiB  # buffers, plus what the copies and GETs cost
    assert peak < 150 * MiB


def test_kill_in_a_big_part_leaves_what_uploads_abort_removes(
        target: tuple[Server, Any, str], mounts: Callable[..., Mount]) -> None:
    server, client, bucket = target
    m = mounts(server, bucket, "--max-memory", "15M")
    dd = subprocess.Popen(["dd", "if=/dev/urandom", f"of={m.path / 'disk.img'}", "bs=1M",
                           "count=100000"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(k.startswith(TMP_DIR) for k in open_uploads(client, bucket)):
            assert time.monotonic() < deadline, m.log()
            time.sleep(0.1)
        kill_mount(m)
        dd.wait(60)
    finally:
        dd.kill()
    assert "disk.img" not in all_keys(client, bucket)
    left = open_uploads(client, bucket)
    assert "disk.img" in left and any(k.startswith(TMP_DIR + "disk.img.") for k in left)
    # A temporary object, as a mount killed between completing and deleting one leaves it.
    client.put_object(Bucket=bucket, Key=TMP_DIR + "disk.img.0123456789abcdef.part9",
                      Body=b"x")
    r = uploads_cmd(server, "list", bucket)
    assert r.returncode == 0, r.stderr
    assert "(big part being assembled)" in r.stdout
    assert "disk.img.0123456789abcdef.part9 (temporary object of a big part)" in r.stdout
    r = uploads_cmd(server, "abort", bucket, "--older-than", "0s")
    assert r.returncode == 0, r.stderr
    assert "1 temporary object(s) deleted" in r.stdout
    assert open_uploads(client, bucket) == []
    assert [k for k in all_keys(client, bucket) if not k.endswith("/")] == []


def test_temporary_names_are_hidden(target: tuple[Server, Any, str],
                                    mounts: Callable[..., Mount]) -> None:
    server, client, bucket = target
    client.put_object(Bucket=bucket, Key=TMP_DIR + "a.bin.0123456789abcdef.part3", Body=b"x")
    client.put_object(Bucket=bucket, Key="d/.s3mount-other", Body=b"x")
    client.put_object(Bucket=bucket, Key="d/seen", Body=b"x")
    m = mounts(server, bucket)
    assert os.listdir(m.path) == ["d"]
    assert os.listdir(m.path / "d") == ["seen"]


def test_abort_stale_uploads_at_mount_removes_temporary_ones(
        mount_factory: Callable[..., Mount], s3: Any, bucket: str) -> None:
    s3.create_multipart_upload(Bucket=bucket, Key=TMP_DIR + "a.bin.0123456789abcdef.part3")
    s3.put_object(Bucket=bucket, Key=TMP_DIR + "b.bin.0123456789abcdef.part4", Body=b"x")
    s3.put_object(Bucket=bucket, Key="kept.bin", Body=b"x")
    m = mount_factory(bucket, "--abort-stale-uploads", "0s")
    assert open_uploads(s3, bucket) == []
    assert all_keys(s3, bucket) == ["kept.bin"]
    assert "deleted the stale temporary object .s3mount-tmp/b.bin." in m.log()
