"""Big parts assembled by the server (assembler.py), on two real S3 servers: SeaweedFS (its
UploadPartCopy answers are no MD5s: parts are proven by reading them back) and moto's server
(it answers the MD5 of the copied bytes). A compressed schedule (5 MiB parts, doubling every 2
parts) reaches parts larger than --max-memory within tens of MiB."""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import boto3
import pytest
import trio

from s3mount import writer
from s3mount.assembler import TMP_DIR, tmp_key
from s3mount.config import Config, MiB
from s3mount.errors import FsError, IntegrityError
from s3mount.etag import stream_etag
from s3mount.schedule import PartSchedule
from s3mount.store import S3Store
from s3mount.writer import Upload, Uploads
from tests.faultproxy import FaultProxy

P = 5 * MiB
# Parts 5, 5, 10, 10, 20, 20, 40 MiB: parts 3 on are big (more than one 5 MiB buffer), parts
# 5 on larger than --max-memory (15 MiB).
SIZE = 5 + 5 + 10 + 10 + 20 + 20 + 7


@dataclass
class Server:
    name: str
    config: Config
    client: Any

    def keys(self) -> list[str]:
        r = self.client.list_objects_v2(Bucket=self.config.bucket)
        return [o["Key"] for o in r.get("Contents", [])]

    def uploads(self) -> list[str]:
        r = self.client.list_multipart_uploads(Bucket=self.config.bucket)
        return [u["Key"] for u in r.get("Uploads", [])]

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.config.bucket,  # type: ignore[no-any-return]
                                      Key=key)["Body"].read()

    def etag(self, key: str) -> str:
        return self.client.head_object(Bucket=self.config.bucket,  # type: ignore[no-any-return]
                                       Key=key)["ETag"].strip('"')


def client_for(config: Config) -> Any:
    creds = config.credentials
    return boto3.client("s3", endpoint_url=config.endpoint_url, region_name="us-east-1",
                        **({"aws_access_key_id": creds.access_key,
                            "aws_secret_access_key": creds.secret_key} if creds else {}))


@pytest.fixture(params=["seaweed", "moto"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    name = request.param
    config = request.getfixturevalue("config" if name == "seaweed" else "moto_config")
    config = replace(config, part_size=P, part_growth_every=2, max_memory=15 * MiB)
    client = client_for(config)
    yield Server(name, config, client)
    client.close()


async def stream(config: Config, nursery: trio.Nursery, key: str, data: bytes,
                 chunk: int = 1 * MiB) -> tuple[Uploads, Upload]:
    mgr = Uploads(config, S3Store(config), nursery)
    up = mgr.start(key)
    for off in range(0, len(data), chunk):
        await up.write(off, data[off:off + chunk])
    return mgr, up


def predicted(data: bytes, config: Config) -> str:
    return stream_etag(io.BytesIO(data), PartSchedule(config.part_size,
                                                      config.part_growth_every))


async def test_big_parts_round_trip(server: Server, nursery: trio.Nursery,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="s3mount.writer")
    data = os.urandom(SIZE * MiB)
    mgr, up = await stream(server.config, nursery, "big.bin", data)
    info = await up.complete()
    assert up.parts_started == 7
    assert server.get("big.bin") == data
    assert server.etag("big.bin") == info.etag
    assert info.etag.endswith("-7")
    if server.name == "moto":  # the copy answer is the MD5: proven by it, ETag as predicted
        assert mgr.proof == "copy" and up.read_back == []
        assert info.etag == predicted(data, server.config)
    else:  # SeaweedFS: its copy answer is no MD5, so each big part was read back
        assert mgr.proof == "read-back"
        assert sorted(n for n, *_ in up.read_back) == [3, 4, 5, 6, 7]
        assert "reading its range of the completed object back" in caplog.text
    assert server.keys() == ["big.bin"]  # the temporary objects are gone
    assert server.uploads() == []
    assert mgr.budget.used == 0
    assert mgr.budget.peak <= server.config.max_memory


async def test_stream_ending_in_a_big_part_and_patches_in_it(
        server: Server, nursery: trio.Nursery) -> None:
    data = bytearray(os.urandom((5 + 5 + 10 + 3) * MiB + 12345))  # ends in part 4's 1st buffer
    mgr, up = await stream(server.config, nursery, "tail.bin", bytes(data))
    await up.write(20 * MiB + 7, b"patched")  # the sub-part being filled can be patched
    data[20 * MiB + 7:20 * MiB + 14] = b"patched"
    await up.complete()
    assert server.get("tail.bin") == data
    assert server.keys() == ["tail.bin"] and server.uploads() == []


@pytest.mark.expect_log(r"^s3mount\.assembler: bad\.bin: part [34] was copied from "
                        r"\.s3mount-tmp/bad\.bin\.\w+\.part[34] with ETag 0{32}, expected")
async def test_copy_answer_rewritten_fails_close_and_leaves_nothing(
        server: Server, nursery: trio.Nursery) -> None:
    with FaultProxy(server.config.endpoint_url or "") as proxy:
        config = replace(server.config, endpoint_url=proxy.url)
        proxy.rewrite_copy_etags = 1000
        data = os.urandom((5 + 5 + 10 + 1) * MiB)
        _, up = await stream(config, nursery, "bad.bin", data)
        with pytest.raises(IntegrityError, match="UploadPartCopy"):
            await up.complete()
        assert proxy.counts["rewritten_copy_etags"] == 2 * writer_attempts()  # parts 3, 4
    assert server.keys() == [] and server.uploads() == []


def writer_attempts() -> int:
    from s3mount.assembler import COPY_VERIFY_ATTEMPTS
    return COPY_VERIFY_ATTEMPTS


@pytest.mark.expect_log(r"^s3mount\.store: S3 stall")
async def test_failed_requests_during_sub_parts_and_copies(server: Server,
                                                           nursery: trio.Nursery) -> None:
    with FaultProxy(server.config.endpoint_url or "", seed=7) as proxy:
        config = replace(server.config, endpoint_url=proxy.url, retries=8)
        proxy.error_rate = 0.1
        data = os.urandom(SIZE * MiB)
        _, up = await stream(config, nursery, "flaky.bin", data)
        info = await up.complete()
        assert proxy.counts["errors"] > 0 and proxy.counts["COPY-PART"] >= 5
    assert server.get("flaky.bin") == data and server.etag("flaky.bin") == info.etag
    assert server.keys() == ["flaky.bin"] and server.uploads() == []


async def test_write_past_the_schedule_capacity_is_efbig(
        server: Server, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "MAX_PARTS", 3)  # capacity: 5 + 5 + 10 MiB
    mgr = Uploads(server.config, S3Store(server.config), nursery)
    up = mgr.start("full.bin")
    data = os.urandom(1 * MiB)
    for n in range(20):
        await up.write(n * MiB, data)
    with pytest.raises(FsError, match="capacity of 20 MiB in 3 parts") as exc:
        await up.write(20 * MiB, b"x")
    assert exc.value.errno_ == errno.EFBIG
    assert server.keys() == [] and server.uploads() == []


async def test_with_a_checksum_seaweedfs_answers_copies_with_md5_and_crc32c(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    """An upload that declares CRC32C gets the MD5 and CRC32C of the copied bytes from
    SeaweedFS: its big parts are proven by the copy answers, and the object's ETag is the one
    `s3mount etag` predicts."""
    caplog.set_level("INFO", logger="s3mount.writer")
    config = replace(config, part_size=P, part_growth_every=2, max_memory=15 * MiB,
                     checksum="crc32c")
    data = os.urandom(SIZE * MiB)
    mgr, up = await stream(config, nursery, "sum.bin", data)
    info = await up.complete()
    assert mgr.proof == "copy" and up.read_back == []
    assert "(and their CRC32C, which is checked too)" in caplog.text
    assert s3.get_object(Bucket=bucket, Key="sum.bin")["Body"].read() == data
    assert info.etag == predicted(data, config) and info.checksum is not None
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["sum.bin"]


async def test_after_a_read_back_later_uploads_declare_crc32c(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="s3mount.writer")
    config = replace(config, part_size=P, part_growth_every=2, max_memory=15 * MiB)
    mgr = Uploads(config, S3Store(config), nursery)
    data = os.urandom((5 + 5 + 10 + 10 + 3) * MiB)
    for name in ("first.bin", "second.bin"):
        up = mgr.start(name)
        for off in range(0, len(data), MiB):
            await up.write(off, data[off:off + MiB])
        info = await up.complete()
        assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == data
        if name == "first.bin":  # proven by reading back; the mount learns
            assert sorted(n for n, *_ in up.read_back) == [3, 4] and up.algo is None
            assert mgr.copies_need_checksum
        else:  # declared CRC32C: proven by the copy answers, ETag as predicted
            assert up.read_back == [] and up.algo is not None
            assert info.etag == predicted(data, config)
    assert "later uploads declare CRC32C: with it, this server answers" in caplog.text
    assert s3.list_objects_v2(Bucket=bucket, Prefix=TMP_DIR).get("Contents") is None


class SlowCopies:
    """A store whose copies take a second, noting the sub-parts sent meanwhile."""

    def __init__(self, inner: S3Store) -> None:
        self.inner = inner
        self.copying = 0
        self.sent_while_copying: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def copy_part_checked(self, *args: Any) -> Any:
        self.copying += 1
        try:
            await trio.sleep(1)
            return await self.inner.copy_part_checked(*args)
        finally:
            self.copying -= 1

    async def upload_part(self, key: str, upload_id: str, number: int, *args: Any) -> Any:
        if self.copying and TMP_DIR in key:
            self.sent_while_copying.append((key, number))
        return await self.inner.upload_part(key, upload_id, number, *args)


async def test_the_next_big_part_streams_while_the_previous_is_copied(
        server: Server, nursery: trio.Nursery) -> None:
    store = SlowCopies(S3Store(server.config))
    mgr = Uploads(server.config, store, nursery)  # type: ignore[arg-type]
    up = mgr.start("pipe.bin")
    data = os.urandom(SIZE * MiB)
    for off in range(0, len(data), MiB):
        await up.write(off, data[off:off + MiB])
    await up.complete()
    assert server.get("pipe.bin") == data
    # Sub-parts of parts 4 on went up while an earlier part was being copied.
    later = {int(key.rpartition(".part")[2]) for key, _ in store.sent_while_copying}
    assert later and min(later) >= 4, store.sent_while_copying


def test_tmp_key_is_hidden_and_bounded() -> None:
    key = tmp_key("pre/", "pre/dir/disk.img", "upload-id", 7)
    assert key.startswith("pre/" + TMP_DIR + "dir/disk.img.") and key.endswith(".part7")
    long = tmp_key("", "x" * 1000, "id", 1)
    assert len(long.encode()) <= 1024 and long.startswith(TMP_DIR)
