"""Trust: what s3mount can prove about the bytes it stores and serves, and what it shows when
S3 stalls or misbehaves, through the fault proxy (tests/faultproxy.py) in front of SeaweedFS."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from s3mount.checksum import get as algorithm
from s3mount.config import Config, MiB
from s3mount.errors import FsError, IntegrityError
from s3mount.objects import Extra, Sent, Store
from s3mount.probe import ServerTraits
from s3mount.store import S3Store
from s3mount.writer import Uploads
from tests.conftest import Mount, get, keys, open_uploads, s3mount_cmd, start_mount
from tests.faultproxy import FaultProxy
from tests.faults import FaultyStore
from tests.seaweed import SeaweedServer, s3_client
from tests.test_status import HOLDER


@pytest.fixture
def proxy(s3server: SeaweedServer) -> Iterator[FaultProxy]:
    with FaultProxy(s3server.endpoint_url) as p:
        yield p


def proxied(proxy: FaultProxy, s3server: SeaweedServer) -> Any:
    env = s3server.env()
    return s3_client(proxy.url, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])


HEX16 = re.compile(r'^"[0-9a-f]{16}"$')


def test_proxy_fakes_non_md5_etags_consistently(proxy: FaultProxy, s3server: SeaweedServer,
                                                s3: Any, bucket: str) -> None:
    """The ETag rewriter: 16 hex digits everywhere the client sees an ETag, mapped back in
    requests, so a whole multipart upload and pinned GETs still work through it."""
    c = proxied(proxy, s3server)
    proxy.non_md5_etags = True
    body = b"x" * 100
    put = c.put_object(Bucket=bucket, Key="k", Body=body,
                       ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode())
    assert HEX16.match(put["ETag"]) and "ServerSideEncryption" not in put
    head = c.head_object(Bucket=bucket, Key="k")
    assert head["ETag"] == put["ETag"]
    assert c.get_object(Bucket=bucket, Key="k", IfMatch=head["ETag"])["Body"].read() == body
    up = c.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    parts = []
    for n, data in ((1, b"a" * (5 * MiB)), (2, b"b")):
        r = c.upload_part(Bucket=bucket, Key="m", UploadId=up, PartNumber=n, Body=data)
        assert HEX16.match(r["ETag"])
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    done = c.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=up,
                                       MultipartUpload={"Parts": parts})
    assert HEX16.match(done["ETag"])
    assert s3.head_object(Bucket=bucket, Key="m")["ContentLength"] == 5 * MiB + 1
    assert HEX16.match(c.list_objects_v2(Bucket=bucket)["Contents"][0]["ETag"])


def test_proxy_flips_bits_hangs_and_lies_about_sizes(proxy: FaultProxy,
                                                     s3server: SeaweedServer, s3: Any,
                                                     bucket: str) -> None:
    import botocore.exceptions

    s3.put_object(Bucket=bucket, Key="k", Body=b"\x00" * 10)
    c = proxied(proxy, s3server)
    proxy.flip_gets = True
    assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"\x00" * 5 + b"\x01" + \
        b"\x00" * 4
    proxy.flip_gets = False
    proxy.head_extra_bytes = 1
    assert c.head_object(Bucket=bucket, Key="k")["ContentLength"] == 11
    assert len(c.get_object(Bucket=bucket, Key="k")["Body"].read()) == 10
    proxy.clear()
    proxy.hang_until = time.monotonic() + 2
    t0 = time.monotonic()
    with contextlib.suppress(botocore.exceptions.BotoCoreError):  # or answered on a retry
        c.head_object(Bucket=bucket, Key="k")
    assert time.monotonic() - t0 >= 1.5 and proxy.counts["hung"] == 1


# -- a server whose ETags are not MD5s: known at mount start -------------------------------------


def dd(src: Path, dst: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", "status=none"],
                          capture_output=True, text=True, timeout=300)


def test_non_md5_server_refused_at_mount_start(proxy: FaultProxy, s3server: SeaweedServer,
                                               s3: Any, bucket: str, tmp_path: Path) -> None:
    """AIStore-like: 16-hex-digit ETags, no encryption header, no checksums kept. Nothing could
    verify a write, so a read-write mount does not start, and says why and what to do."""
    proxy.non_md5_etags = proxy.strip_checksums = True
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([*s3mount_cmd(), bucket, str(mnt), "--endpoint-url", proxy.url],
                       capture_output=True, text=True, timeout=120, env=os.environ)
    assert r.returncode == 5 and not os.path.ismount(mnt)
    (line,) = r.stderr.strip().splitlines()
    assert "this server's ETags are not MD5s" in line and "came back" not in line
    assert re.search(r"ETag '[0-9a-f]{16}' for a probe object whose MD5 is [0-9a-f]{32}", line)
    assert "--read-only" in line and "--verify read-back" in line
    assert keys(s3, bucket) == [] and proxy.counts["DELETE"] == 1  # the probe, removed
    ro = start_mount(s3server, bucket, tmp_path / "ro", tmp_path / "ro.log", "--endpoint-url",
                     proxy.url, "--read-only")  # reading needs no proof of writes
    ro.unmount()


def test_non_md5_server_with_read_back(mount_factory: Callable[..., Mount], proxy: FaultProxy,
                                       s3: Any, bucket: str, tmp_path: Path) -> None:
    """--verify read-back mounts the same server: dd and `echo > f` store verified objects,
    each read back; a bit flipped while reading back fails close() and leaves nothing."""
    proxy.non_md5_etags = proxy.strip_checksums = True
    m = mount_factory(bucket, "--endpoint-url", proxy.url, "--verify", "read-back")
    assert "verified only by reading each object back" in m.log()
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(12 * MiB + 5))
    gets = proxy.counts["GET"]
    assert dd(src, m.path / "big.bin").returncode == 0
    assert get(s3, bucket, "big.bin") == src.read_bytes()
    assert proxy.counts["GET"] - gets >= 3  # 12 MiB read back in 4 MiB GETs
    r = subprocess.run(["bash", "-c", f"echo hi > {m.path}/small"], timeout=60)
    assert r.returncode == 0 and get(s3, bucket, "small") == b"hi\n"
    m.allowed_errors.append("verification failed")
    proxy.flip_gets = True
    r = dd(src, m.path / "flipped.bin")
    assert r.returncode != 0 and "Input/output error" in r.stderr
    assert "flipped.bin" not in keys(s3, bucket) and open_uploads(s3, bucket) == []
    assert "read back, part 1 has MD5" in m.log() and "came back" not in m.log()


def test_non_md5_server_with_checksums(mount_factory: Callable[..., Mount], proxy: FaultProxy,
                                       s3: Any, bucket: str, tmp_path: Path) -> None:
    """ETags that are not MD5s, but checksums kept: uploads switch to CRC32C, said once, and
    whole reads are verified against the checksums S3 keeps."""
    proxy.non_md5_etags = True
    m = mount_factory(bucket, "--endpoint-url", proxy.url)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(11 * MiB))
    assert dd(src, m.path / "big.bin").returncode == 0
    r = subprocess.run(["bash", "-c", f"echo hi > {m.path}/small"], timeout=60)
    assert r.returncode == 0 and get(s3, bucket, "small") == b"hi\n"
    assert get(s3, bucket, "big.bin") == src.read_bytes()
    said = [x for x in m.log().splitlines() if "not MD5s" in x]
    assert len(said) == 1 and "verified with CRC32C checksums instead" in said[0]
    # Reads are proven by the checksums S3 keeps (HEAD with ChecksumMode), whole object or
    # composed of parts (their sizes from HEAD partNumber=N).
    assert (m.path / "big.bin").read_bytes() == src.read_bytes()
    assert (m.path / "small").read_bytes() == b"hi\n"
    reads = status_doc(m)["reads"]
    assert reads["verified_objects"] == 2 and reads["verified_bytes"] == 11 * MiB + 3
    m.allowed_errors.append("do not match the object's CRC32C checksum")
    proxy.flip_gets = True
    r = subprocess.run(["cat", str(m.path / "big.bin")], capture_output=True, timeout=60)
    assert r.returncode == 1 and b"Input/output error" in r.stderr
    (line,) = [x for x in m.log().splitlines() if "do not match the object's CRC32C" in x]
    assert "big.bin" in line and re.search(r"S3 keeps \S+-3, COMPOSITE\)", line)


# -- verified reads --------------------------------------------------------------------------


def status_doc(m: Mount) -> dict[str, Any]:
    r = subprocess.run([*s3mount_cmd(), "status", str(m.path), "--json"], capture_output=True,
                       text=True, timeout=30)
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def test_flipped_bit_in_a_full_read_is_eio(mount_factory: Callable[..., Mount],
                                           proxy: FaultProxy, s3: Any, bucket: str) -> None:
    """A 3 MiB single-part object (ETag = MD5): a full read is hashed and compared; one bit
    flipped on the way gives EIO on the read that completes it, one error line naming the
    key, and a counter in status. --no-verify-reads turns it off (and the wrong bytes pass)."""
    data = os.urandom(3 * MiB)
    s3.put_object(Bucket=bucket, Key="obj.bin", Body=data)
    m = mount_factory(bucket, "--endpoint-url", proxy.url)
    m.allowed_errors.append("do not match the object's MD5s")
    assert (m.path / "obj.bin").read_bytes() == data
    proxy.flip_gets = True
    r = subprocess.run(["cat", str(m.path / "obj.bin")], capture_output=True, timeout=60)
    assert r.returncode == 1 and b"Input/output error" in r.stderr
    assert 0 < len(r.stdout) < len(data)  # the read that completes the object failed
    said = [x for x in m.log().splitlines() if "do not match the object's MD5s" in x]
    assert len(said) == 1 and "obj.bin" in said[0] and " ERROR " in said[0]
    reads = status_doc(m)["reads"]
    assert reads["verified_objects"] == 1 and reads["failed_objects"] == 1
    assert reads["verified_bytes"] == len(data)
    assert "1 FAILED verification" in subprocess.run(
        [*s3mount_cmd(), "status", str(m.path)], capture_output=True, text=True,
        timeout=30).stdout
    off = mount_factory(bucket, "--endpoint-url", proxy.url, "--no-verify-reads")
    got = (off.path / "obj.bin").read_bytes()
    assert len(got) == len(data) and got != data
    assert status_doc(off)["reads"]["verified_objects"] == 0


# -- stalls and lies -------------------------------------------------------------------------


def test_hang_gives_one_warning_and_status_shows_the_stall(
        mount_factory: Callable[..., Mount], proxy: FaultProxy, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="f", Body=b"y" * 1000)
    m = mount_factory(bucket, "--endpoint-url", proxy.url)
    fd = os.open(m.path / "f", os.O_RDONLY)
    got: list[bytes] = []
    try:
        proxy.hang_until = time.monotonic() + 10
        t0 = time.monotonic()
        reader = threading.Thread(target=lambda: got.append(os.pread(fd, 1000, 0)))
        reader.start()
        while True:  # the warning comes after 5 s
            doc = status_doc(m)
            if doc["s3"]["stalled"] or time.monotonic() - t0 > 9:
                break
            time.sleep(0.5)
        (stalled,) = doc["s3"]["stalled"]
        assert stalled["request"].startswith("GET f ") and stalled["waiting_s"] >= 5
        assert doc["s3"]["waiting"] == 1 and doc["s3"]["oldest_wait_s"] >= 5
        text = subprocess.run([*s3mount_cmd(), "status", str(m.path)], capture_output=True,
                              text=True, timeout=30).stdout
        assert "STALLED" in text and "GET f" in text
        reader.join(60)
    finally:
        os.close(fd)
    assert got == [b"y" * 1000] and time.monotonic() - t0 >= 10
    log = m.log().splitlines()
    warned = [x for x in log if "S3 stall: " in x]
    assert len(warned) == 1 and "GET f " in warned[0]
    assert re.search(r"not answered for 5\.\d s", warned[0])  # checked every 0.5 s
    (over,) = [x for x in log if "S3 stall over" in x]
    took = float(re.search(r"after ([0-9.]+) s", over).group(1))  # type: ignore[union-attr]
    assert "answered" in over and 10 <= took < 40
    h = status_doc(m)["s3"]
    assert h["waiting"] == 0 and h["stalled"] == [] and h["stalls"] == 1
    assert h["retries"].get("GET", 0) >= 1 and h["last_success_s_ago"] < 5


def test_lying_head_fails_at_once(mount_factory: Callable[..., Mount], proxy: FaultProxy,
                                  s3: Any, bucket: str) -> None:
    """HEAD reports one byte more than the object has, ETag unchanged: EIO in under 5 s with
    a line saying the object's size and its bytes disagree (it was retried for ~45 s)."""
    s3.put_object(Bucket=bucket, Key="short.bin", Body=os.urandom(2 * MiB))
    proxy.head_extra_bytes = 1
    m = mount_factory(bucket, "--endpoint-url", proxy.url)
    m.allowed_errors.append("size and its bytes disagree")
    assert os.stat(m.path / "short.bin").st_size == 2 * MiB + 1
    t0 = time.monotonic()
    r = subprocess.run(["cat", str(m.path / "short.bin")], capture_output=True, timeout=60)
    assert time.monotonic() - t0 < 5
    assert r.returncode == 1 and b"Input/output error" in r.stderr
    said = [x for x in m.log().splitlines() if "size and its bytes disagree" in x]
    assert len(said) == 1 and "short.bin" in said[0]
    assert f"given as at least {2 * MiB + 1} bytes" in said[0]


# -- --metrics ---------------------------------------------------------------------------------



def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_move_while_writing_and_reading(mount_factory: Callable[..., Mount], s3: Any,
                                                bucket: str) -> None:
    port = free_port()
    m = mount_factory(bucket, "--metrics", f"127.0.0.1:{port}")
    first = scrape(port)
    assert first["s3mount_written_bytes_total"] == 0
    assert first["s3mount_uploads_in_flight"] == 0
    assert first['s3mount_write_memory_bytes{state="budget"}'] > 0
    writer = subprocess.Popen([sys.executable, "-c", HOLDER, str(m.path / "big.bin")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    try:
        assert writer.stdout.readline() == "written\n"
        deadline = time.monotonic() + 30
        # (part 1 is held until close for the rewrite window; part 2 is sent meanwhile)
        while (during := scrape(port))["s3mount_parts_uploaded_total"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert during["s3mount_written_bytes_total"] == 12 * MiB
        assert during["s3mount_uploads_in_flight"] == 1
        assert during['s3mount_write_memory_bytes{state="used"}'] > 0
        assert during['s3mount_s3_request_duration_seconds_count{kind="PART"}'] == 1
    finally:
        writer.communicate("close\n", timeout=60)
    assert writer.returncode == 0
    (m.path / "small.txt").write_bytes(b"small and single-part\n")
    after = scrape(port)
    assert after['s3mount_uploads_total{result="verified"}'] == 2
    assert after["s3mount_uploaded_bytes_total"] == 12 * MiB + 22
    assert after["s3mount_uploads_in_flight"] == 0
    assert after['s3mount_s3_requests_total{kind="PUT"}'] >= 1
    assert after['s3mount_s3_request_duration_seconds_bucket{kind="PART",le="+Inf"}'] == 3
    assert (m.path / "big.bin").read_bytes() == get(s3, bucket, "big.bin")
    assert (m.path / "small.txt").read_bytes() == b"small and single-part\n"
    read = scrape(port)
    assert read["s3mount_read_objects_total"] == 2
    assert read["s3mount_read_bytes_total"] == 12 * MiB + 22
    # Both whole reads proven: the multipart one with its part sizes asked of S3.
    assert read['s3mount_read_verified_objects_total{result="ok"}'] == 2
    assert read["s3mount_read_verified_bytes_total"] == 12 * MiB + 22
    assert read['s3mount_s3_requests_total{kind="GET"}'] > after.get(
        's3mount_s3_requests_total{kind="GET"}', 0)
    assert read["s3mount_s3_last_success_timestamp_seconds"] > time.time() - 60
    # The GETs and the small PUT went out through the lean path (wire.py).
    assert read["s3mount_s3_lean_requests_total"] >= read['s3mount_s3_requests_total{kind="GET"}']


def test_multipart_full_read_verified_with_part_sizes_from_s3(
        mount_factory: Callable[..., Mount], proxy: FaultProxy, s3: Any, bucket: str) -> None:
    """A multipart object with parts of 5 MiB and 7 MiB + 3 (not the mount's schedule): its
    part sizes come from HEAD partNumber=N, and a full read is proven against its ETag; a
    flipped bit in the second part gives EIO."""
    data = os.urandom(12 * MiB + 3)
    up = s3.create_multipart_upload(Bucket=bucket, Key="multi.bin")["UploadId"]
    parts = []
    for n, (a, b) in enumerate(((0, 5 * MiB), (5 * MiB, len(data))), 1):
        r = s3.upload_part(Bucket=bucket, Key="multi.bin", UploadId=up, PartNumber=n,
                           Body=data[a:b])
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="multi.bin", UploadId=up,
                                 MultipartUpload={"Parts": parts})
    m = mount_factory(bucket, "--endpoint-url", proxy.url)
    m.allowed_errors.append("do not match the object's MD5s")
    assert (m.path / "multi.bin").read_bytes() == data
    reads = status_doc(m)["reads"]
    assert reads["verified_objects"] == 1 and reads["verified_bytes"] == len(data)
    assert proxy.counts["HEAD"] >= 2  # the part sizes, asked of S3
    proxy.flip_gets = True
    r = subprocess.run(["cat", str(m.path / "multi.bin")], capture_output=True, timeout=60)
    assert r.returncode == 1 and b"Input/output error" in r.stderr
    said = [x for x in m.log().splitlines() if "do not match the object's MD5s" in x]
    assert len(said) == 1 and "multi.bin" in said[0] and "-2" in said[0]
    assert status_doc(m)["reads"]["failed_objects"] == 1


# -- level 1: the shapes and decisions behind the above -----------------------------------------


def test_etag_shapes() -> None:
    from s3mount.etag import etag_is_md5, md5_shaped, verifiable_parts

    md5 = hashlib.md5(b"x").hexdigest()
    assert md5_shaped(md5) and md5_shaped(md5 + "-12")
    assert not md5_shaped("d8544b05c512320c") and not md5_shaped(md5 + "-") and \
        not md5_shaped(md5.upper())
    assert etag_is_md5(None, f'"{md5}"') and not etag_is_md5(None, '"d8544b05c512320c"')
    assert not etag_is_md5("aws:kms", md5) and etag_is_md5("AES256", md5)
    assert verifiable_parts(md5) == 1 and verifiable_parts(md5 + "-3") == 3
    assert verifiable_parts("d8544b05c512320c") is None


@pytest.mark.expect_log(r"^s3mount\.probe: s3://bkt/: this server's ETags are not MD5s")
def test_probe_decisions() -> None:
    from s3mount.errors import QuietError
    from s3mount.objects import Sent
    from s3mount.probe import PROBE_BODY, decide, traits_of

    algo = algorithm("crc32c")
    md5 = hashlib.md5(PROBE_BODY).digest()
    want = algo.part(PROBE_BODY)
    cfg = Config(bucket="bkt", mountpoint="/m")
    good = traits_of(Sent(md5.hex()), md5, algo, want)
    assert good.etags_are_md5 and not good.checksums
    decide(cfg, good)
    kms = traits_of(Sent(hashlib.md5(b"other").hexdigest(), want, "aws:kms"), md5, algo, want)
    assert not kms.etags_are_md5 and kms.checksums
    decide(cfg, kms)  # checksums prove uploads
    xx = traits_of(Sent("d8544b05c512320c"), md5, algo, want)
    assert not xx.provable
    with pytest.raises(QuietError) as err:
        decide(cfg, xx)
    assert err.value.exitcode == 5 and "\n" not in err.value.message
    assert "this server's ETags are not MD5s" in err.value.message
    assert "--verify read-back" in err.value.message and "--read-only" in err.value.message
    decide(dataclasses.replace(cfg, verify="read-back"), xx)  # reading back proves them


def test_probe_objects_are_hidden_at_the_root() -> None:
    from s3mount.keys import PROBE_PREFIX, KeyMap

    km = KeyMap("pre/")
    assert km.child_name("", "pre/" + PROBE_PREFIX + "0123abcd") is None
    # every `.s3mount-` name is s3mount's own (probes, big parts' temporary objects)
    assert km.child_name("d", "pre/d/" + PROBE_PREFIX + "x") is None
    assert km.child_name("", "pre/.s3mountx") == ".s3mountx"


class XxhashStore(FaultyStore):
    """A server whose ETags are 16 hex digits and that keeps no checksums, unit level."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.real: dict[str, str] = {}  # our 16-digit ETag -> the server's

    def _fake(self, sent: Sent) -> Sent:
        self.real[sent.etag[:16]] = sent.etag
        return Sent(sent.etag[:16])

    async def upload_part(self, key: str, upload_id: str, number: int, body: Any,
                          md5: bytes, checksum: Extra | None = None) -> Sent:
        return self._fake(await self.inner.upload_part(key, upload_id, number, body, md5,
                                                       checksum))

    async def put(self, key: str, body: Any, md5: bytes, checksum: Extra | None = None,
                  **attrs: Any) -> Sent:
        return self._fake(await self.inner.put(key, body, md5, checksum, **attrs))

    async def get_range(self, key: str, start: int, into: memoryview, etag: str) -> None:
        await self.inner.get_range(key, start, into, self.real.get(etag, etag))


@pytest.mark.expect_log(r"^s3mount\.writer: bucket \S+: this server's ETags are not MD5s")
async def test_unprovable_uploads_fail_at_open_once_learnt(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    """Without the mount-start probe (it could not run), the first upload learns that
    nothing can verify one: it fails with the reason (sent once, not three times), and every
    later file fails at open, which `echo > f` reports (bash drops the error of close)."""
    caplog.set_level(logging.WARNING, "s3mount.writer")
    store = XxhashStore(S3Store(config))
    mgr = Uploads(config, store, nursery)
    up = mgr.start("first")
    await up.write(0, b"a" * 1000)
    with pytest.raises(IntegrityError, match="does not support additional checksums"):
        await up.complete()
    assert "first" not in keys(s3, bucket)
    with pytest.raises(FsError, match="this server's ETags are not MD5s") as err:
        mgr.start("second")
    assert err.value.errno_ == errno.EIO and "--verify read-back" in str(err.value)
    said = [r.message for r in caplog.records if "not MD5s" in r.message]
    assert len(said) == 1 and "came back" not in said[0]
    read_back = Uploads(dataclasses.replace(config, verify="read-back"), store, nursery)
    read_back.adopt(ServerTraits(False, False, algorithm("crc32c"), "(test)"))
    up = read_back.start("third")
    await up.write(0, b"b" * 1000)
    await up.complete()
    assert get(s3, bucket, "third") == b"b" * 1000


# -- reads proven by the checksums S3 keeps ----------------------------------------------------


def boto3_defaults(endpoint: str, env: dict[str, str]) -> Any:
    """A boto3 client with boto3 1.36+'s default checksums (a CRC32 with every upload)."""
    from botocore.config import Config as BotoConfig
    return s3_client(endpoint, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                     BotoConfig(request_checksum_calculation="when_supported",
                                response_checksum_validation="when_supported"))


def upload_file(client: Any, bucket: str, key: str, data: bytes, tmp: Path) -> None:
    """boto3's upload_file in 5 MiB parts, with the client's checksum defaults."""
    from boto3.s3.transfer import TransferConfig
    src = tmp / f"{key}.src"
    src.write_bytes(data)
    client.upload_file(str(src), bucket, key, Config=TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))


def test_reads_proven_by_the_checksum_s3_keeps(mount_factory: Callable[..., Mount],
                                               proxy: FaultProxy, s3server: SeaweedServer,
                                               s3: Any, bucket: str, tmp_path: Path) -> None:
    """Objects as boto3 stores them by default carry a CRC32 (a PutObject: of the whole
    object; upload_file: composite `-3`, ChecksumType COMPOSITE on SeaweedFS): full reads
    are proven by it, not by the MD5 (status counts them), and a flipped bit gives EIO
    naming the checksum. Later passes of an object whose checksum refused one are proven
    by its MD5. Small objects and objects without a checksum are proven by their MD5."""
    c = boto3_defaults(s3server.endpoint_url, s3server.env())
    put, multi, small, plain = (os.urandom(3 * MiB), os.urandom(12 * MiB + 3),
                                os.urandom(100_000), os.urandom(2 * MiB))
    c.put_object(Bucket=bucket, Key="put.bin", Body=put)
    upload_file(c, bucket, "multi.bin", multi, tmp_path)
    c.put_object(Bucket=bucket, Key="small.bin", Body=small)
    s3.put_object(Bucket=bucket, Key="plain.bin", Body=plain)  # no checksum sent: none kept
    head = s3.head_object(Bucket=bucket, Key="multi.bin", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"].endswith("-3") and head["ChecksumType"] == "COMPOSITE"
    assert "ChecksumCRC32" in s3.head_object(Bucket=bucket, Key="put.bin",
                                             ChecksumMode="ENABLED")
    m = mount_factory(bucket, "--endpoint-url", proxy.url)
    for key, data in (("put.bin", put), ("multi.bin", multi), ("small.bin", small),
                      ("plain.bin", plain)):
        assert (m.path / key).read_bytes() == data
    reads = status_doc(m)["reads"]
    assert reads["verified_objects"] == 4 and reads["verified_by_checksum"] == 2
    assert reads["verified_bytes"] == 17 * MiB + 100_003 and reads["failed_objects"] == 0
    m.allowed_errors += ["do not match the object's CRC32 checksum",
                         "do not match the object's MD5s"]
    proxy.flip_gets = True
    for key in ("put.bin", "multi.bin"):
        r = subprocess.run(["cat", str(m.path / key)], capture_output=True, timeout=60)
        assert r.returncode == 1 and b"Input/output error" in r.stderr
    lines = [x for x in m.log().splitlines() if "do not match the object's CRC32" in x]
    assert len(lines) == 2 and "put.bin" in lines[0] and "multi.bin" in lines[1]
    assert "-3, COMPOSITE)" in lines[1]
    # The next pass of a refused object is proven by its MD5: wrong bytes still fail...
    r = subprocess.run(["cat", str(m.path / "put.bin")], capture_output=True, timeout=60)
    assert r.returncode == 1
    assert any("put.bin" in x and "MD5s" in x for x in m.log().splitlines())
    proxy.flip_gets = False  # ... and right ones pass
    assert (m.path / "put.bin").read_bytes() == put
    reads = status_doc(m)["reads"]
    assert reads["failed_objects"] == 3 and reads["verified_objects"] == 5
    assert reads["verified_by_checksum"] == 2
    assert "checksums look wrong" not in m.log()  # one object: taken as wrong bytes


async def read_whole(store: Store, key: str, budget: Any, nursery: trio.Nursery) -> bytes:
    from s3mount.reader import Reader
    info = await store.head(key)
    assert info is not None
    reader = Reader(store, key, info.etag, info.size, budget, nursery, 8 * MiB)
    out = bytearray()
    try:
        while len(out) < info.size:
            out += await reader.read(len(out), MiB)
    finally:
        reader.close()
    return bytes(out)


async def test_moto_composite_checksum_without_its_suffix_is_not_trusted(
        moto_config: Config, motoserver: Any, nursery: trio.Nursery, tmp_path: Path) -> None:
    """moto keeps boto3's CRC32 too, but gives a composite value without its `-N` and without
    its ChecksumType: that shape proves nothing (taken as a whole-object CRC it would refuse
    right bytes with EIO), so the multipart object is proven by its MD5s instead (its part
    sizes from HEAD partNumber=N, which store.part_size asks again without If-Match when moto
    answers 412 to the object's ETag). The PutObject's CRC32 proves its read."""
    from s3mount.buffers import ReadBudget
    c = boto3_defaults(motoserver.endpoint_url, motoserver.env())
    bucket = moto_config.bucket
    put, multi = os.urandom(2 * MiB), os.urandom(10 * MiB + 3)
    c.put_object(Bucket=bucket, Key="put.bin", Body=put)
    upload_file(c, bucket, "multi.bin", multi, tmp_path)
    store = S3Store(moto_config)
    info = await store.head("multi.bin", checksum=True)
    assert info is not None and info.checksum_algorithm == "crc32"
    # No `-3`, and HEAD does not say COMPOSITE either (GetObjectAttributes does).
    assert info.checksum_type is None and "-" not in (info.checksum or "-")
    budget = ReadBudget(64 * MiB)
    assert await read_whole(store, "put.bin", budget, nursery) == put
    assert await read_whole(store, "multi.bin", budget, nursery) == multi
    assert budget.counts["verified_objects"] == 2 and budget.counts["verified_by_checksum"] == 1
    assert budget.counts["unverified_passes"] == 0 and budget.counts["failed_objects"] == 0


class WrongChecksums(FaultyStore):
    """A server whose kept checksums are all wrong (HEAD with ChecksumMode lies)."""

    async def head(self, key: str, checksum: bool = False) -> Any:
        info = await self.inner.head(key, checksum)
        if checksum and info is not None and info.checksum is not None:
            return dataclasses.replace(info, checksum="AAAAAA==")
        return info


@pytest.mark.expect_log(r"^s3mount\.reader: the checksums this server keeps disagreed with 3 "
                        r"objects that their ETags \(MD5s\) then proved")
async def test_wrong_checksums_fall_back_to_md5(config: Config, s3server: SeaweedServer,
                                                nursery: trio.Nursery,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A checksum that refuses a pass fails it (EIO), and that object's later passes are
    proven by its MD5; once that proves 3 objects, the server's checksums are taken to be
    wrong: said once, and reads use the ETags from then on."""
    from s3mount.buffers import ReadBudget
    c = boto3_defaults(s3server.endpoint_url, s3server.env())
    data = {f"k{i}": os.urandom(2 * MiB) for i in range(4)}
    for key, body in data.items():
        c.put_object(Bucket=config.bucket, Key=key, Body=body)
    store = WrongChecksums(S3Store(config))
    budget = ReadBudget(64 * MiB)
    for key in ("k0", "k1", "k2"):
        with pytest.raises(IntegrityError, match="CRC32 checksum"):
            await read_whole(store, key, budget, nursery)
        assert budget.prefer_checksums
        assert await read_whole(store, key, budget, nursery) == data[key]
    assert not budget.prefer_checksums
    assert await read_whole(store, "k3", budget, nursery) == data["k3"]
    assert budget.counts["verified_objects"] == 4 and budget.counts["failed_objects"] == 3
    assert budget.counts["verified_by_checksum"] == 0
    assert len([r for r in caplog.records if "checksums look wrong" in r.message]) == 1


@pytest.mark.parametrize("proof", ["crc32", "md5"])
async def test_verified_reads_are_views_and_their_buffers_are_reused(
        proof: str, config: Config, s3server: SeaweedServer, nursery: trio.Nursery) -> None:
    """A read within one chunk is a view of its buffer, not a copy. The verifier hashes
    those views behind the reads (on the event loop for a fast CRC, in a worker thread for
    MD5), so a chunk the reads have passed keeps its buffer until its bytes are hashed:
    nothing still viewed goes back to the budget, which would leave its mapping to the
    garbage collector and cost a fresh one (a page fault per 4 KiB) for the next chunk."""
    from s3mount.buffers import ReadBudget
    from s3mount.reader import Reader
    data = os.urandom(96 * MiB + 12345)
    # boto3's defaults send (and SeaweedFS keeps) a CRC32; the test client sends none.
    c = (boto3_defaults(s3server.endpoint_url, s3server.env()) if proof == "crc32"
         else s3server.client())
    c.put_object(Bucket=config.bucket, Key="k", Body=data)
    store = S3Store(config)
    info = await store.head("k")
    assert info is not None
    budget = ReadBudget(64 * MiB)
    reader = Reader(store, "k", info.etag, info.size, budget, nursery, 16 * MiB)
    views = 0
    try:
        for off in range(0, len(data), MiB):
            got = await reader.read(off, MiB)
            views += isinstance(got, memoryview)
            assert got == data[off:off + MiB]
            del got
    finally:
        reader.close()
    assert budget.counts["verified_objects"] == 1 and budget.counts["failed_objects"] == 0
    assert budget.counts["verified_by_checksum"] == (proof == "crc32")
    assert views >= 90  # all but the reads that straddle two chunks
    assert budget.kept.viewed == 0  # no chunk went back while the hasher still had it
    # The window's chunks (1, 2, 4 and 8 MiB as it grows), reused: about 10 mappings, not one
    # per chunk read (~17).
    assert budget.kept.mapped <= 12
    assert budget.used == 0 and budget.kept.bytes == 0


class SizesAsked(FaultyStore):
    """Counts the part sizes asked; `flip` flips one byte of each GET that starts at 0."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.asked: list[int] = []
        self.flip = False

    async def part_size(self, key: str, number: int, etag: str) -> int | None:
        self.asked.append(number)
        return await self.inner.part_size(key, number, etag)  # type: ignore[attr-defined,no-any-return]

    async def get_range(self, key: str, start: int, into: memoryview, etag: str) -> None:
        await self.inner.get_range(key, start, into, etag)
        if self.flip and start == 0:
            into[100] ^= 1


def multipart(client: Any, bucket: str, key: str, sizes: list[int]) -> bytes:
    """An object uploaded in parts of these sizes (MiB), with the client's checksums."""
    data = os.urandom(sum(sizes) * MiB)
    up = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts, at = [], 0
    for n, size in enumerate(sizes, 1):
        r = client.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=n,
                               Body=data[at:at + size * MiB])
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
        at += size * MiB
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up,
                                     MultipartUpload={"Parts": parts})
    return data


async def test_equal_parts_are_guessed_from_the_first_and_last(
        config: Config, s3: Any, nursery: trio.Nursery) -> None:
    """A full read of a multipart object needs its part sizes. Parts 1 and N are asked; when
    the parts before N, all of part 1's size, add up to the object with part N, the parts
    between are taken to be that size, not asked one by one. A flipped bit still fails the
    read, once S3's own sizes show the guess was right. Where it was not (parts 6, 7, 5, 6
    look equal from their ends), that pass is counted unverified, not failed, and the next
    pass of the reader asks every size and is verified."""
    from s3mount.buffers import ReadBudget
    from s3mount.reader import Reader
    equal = multipart(s3, config.bucket, "equal", [5, 5, 5, 5, 5, 2])
    uneven = multipart(s3, config.bucket, "uneven", [6, 7, 5, 6])
    store = SizesAsked(S3Store(config))

    async def passes(key: str, n: int, budget: ReadBudget) -> bytes:
        info = await store.head(key)
        assert info is not None
        reader = Reader(store, key, info.etag, info.size, budget, nursery, 8 * MiB)  # type: ignore[arg-type]
        try:
            for _ in range(n):
                out = bytearray()
                while len(out) < info.size:
                    out += await reader.read(len(out), MiB)
        finally:
            reader.close()
        return bytes(out)

    budget = ReadBudget(64 * MiB)
    assert await passes("equal", 2, budget) == equal
    assert store.asked == [1, 6]  # once for both passes
    assert budget.counts["verified_objects"] == 2
    store.asked.clear()
    store.flip = True
    with pytest.raises(IntegrityError, match="do not match the object's MD5s"):
        await passes("equal", 1, budget)
    assert store.asked == [1, 6, 2, 3, 4, 5]  # the guess checked before the read fails
    store.flip = False
    store.asked.clear()
    budget = ReadBudget(64 * MiB)
    assert await passes("uneven", 2, budget) == uneven
    assert store.asked == [1, 4, 2, 3]  # part 2 showed the guess wrong: then 3 for pass 2
    assert budget.counts["unverified_passes"] == 1 and budget.counts["verified_objects"] == 1
    assert budget.counts["failed_objects"] == 0
