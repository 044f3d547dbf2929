"""Additional checksums: the arithmetic against the real server, `--checksum` uploads, and
buckets whose ETags are not MD5s (SSE-KMS, simulated by a wrapped store over the real one)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import os
import secrets
from dataclasses import replace
from typing import Any

import crc32c
import pytest
import trio

from s3mount import checksum
from s3mount.config import Config, MiB
from s3mount.errors import IntegrityError
from s3mount.etag import etag_is_md5
from s3mount.objects import Extra, Meta, ObjectInfo, Sent, Started
from s3mount.store import S3Store
from s3mount.writer import Upload, Uploads
from tests.conftest import get, keys, open_uploads
from tests.faults import FaultyStore

P = 5 * MiB
KMS_LINE = (r"^s3mount\.writer: bucket \S+: this server's ETags are not MD5s \(objects are stored "
            r"with aws:kms encryption\)")


def local_composite(algo: checksum.Algorithm, data: bytes, part: int = P) -> str:
    if len(data) <= part:
        return algo.part(data)
    return algo.composite([algo.part(data[i:i + part]) for i in range(0, len(data), part)])


async def write_all(up: Upload, data: bytes, chunk: int = 1 * MiB) -> None:
    for off in range(0, len(data), chunk):
        await up.write(off, data[off:off + chunk])


def head_checksum(s3: Any, bucket: str, key: str, algo: checksum.Algorithm) -> str | None:
    r = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return r.get(algo.field)  # type: ignore[no-any-return]


# -- arithmetic --------------------------------------------------------------------------------


def test_known_values() -> None:
    check = checksum.get("crc32c").digest(b"123456789")
    assert check == (0xE3069283).to_bytes(4, "big")  # the CRC-32C check value (RFC 3720)
    assert checksum.get("sha256").part(b"abc") == base64.b64encode(
        hashlib.sha256(b"abc").digest()).decode()
    with pytest.raises(ValueError, match="unknown checksum 'md4'"):
        checksum.get("md4")
    with pytest.raises(ValueError):
        checksum.get("crc32c").composite([])


@pytest.mark.parametrize("name", sorted(checksum.ALGORITHMS))
def test_composite_matches_the_server(s3: Any, bucket: str, name: str) -> None:
    """The server's own composite checksum of a 3-part upload equals ours."""
    algo = checksum.get(name)
    parts = [os.urandom(P), os.urandom(P), os.urandom(1234)]
    up = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm=algo.s3_name)
    done = []
    for n, body in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key="k", UploadId=up["UploadId"], PartNumber=n,
                           Body=body, **{algo.field: algo.part(body)})
        assert r[algo.field] == algo.part(body)
        done.append({"PartNumber": n, "ETag": r["ETag"], algo.field: algo.part(body)})
    s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": done})
    assert head_checksum(s3, bucket, "k", algo) == algo.composite(
        [algo.part(p) for p in parts])
    assert algo.composite([algo.part(p) for p in parts]).endswith("-3")


def test_which_encryption_keeps_md5_etags() -> None:
    assert etag_is_md5(None) and etag_is_md5("AES256")
    assert not etag_is_md5("aws:kms") and not etag_is_md5("aws:kms:dsse")
    assert not etag_is_md5("SSE-C")


# -- --checksum crc32c / sha256 ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(checksum.ALGORITHMS))
@pytest.mark.parametrize("size", [0, 1000, 2 * P + 17])
async def test_chosen_checksum_is_sent_and_verified(config: Config, s3: Any, bucket: str,
                                                    nursery: trio.Nursery, name: str,
                                                    size: int) -> None:
    algo = checksum.get(name)
    data = os.urandom(size)
    up = Uploads(replace(config, checksum=name), S3Store(config), nursery).start(
        "f")
    await write_all(up, data)
    info = await up.complete()
    assert get(s3, bucket, "f") == data
    stored = head_checksum(s3, bucket, "f", algo)
    assert stored == info.checksum == local_composite(algo, data)
    assert info.etag == s3.head_object(Bucket=bucket, Key="f")["ETag"].strip('"')


@pytest.mark.expect_log(
    r"^s3mount\.writer: (once|never): part \d+ came back with CRC32C AAAAAA==, expected",
)
async def test_corrupt_part_checksum_is_resent_then_fails(config: Config, s3: Any,
                                                          bucket: str,
                                                          nursery: trio.Nursery) -> None:
    class BadSums(FaultyStore):
        bad = 1

        async def upload_part(self, key: str, upload_id: str, number: int, body: Any,
                              md5: bytes, checksum: Extra | None = None) -> Sent:
            sent = await self.inner.upload_part(key, upload_id, number, body, md5, checksum)
            if self.bad > 0:
                self.bad -= 1
                return dataclasses.replace(sent, checksum="AAAAAA==")
            return sent

    cfg = replace(config, checksum="crc32c")
    store = BadSums(S3Store(config))
    data = os.urandom(2 * P + 5)
    up = Uploads(cfg, store, nursery).start("once")
    await write_all(up, data)
    await up.complete()  # one bad answer: the part is sent again and all is well
    assert get(s3, bucket, "once") == data

    store.bad = 100
    up = Uploads(cfg, store, nursery).start("never")
    with pytest.raises(IntegrityError, match="CRC32C AAAAAA==, expected"):
        await write_all(up, data)
        await up.complete()
    assert "never" not in keys(s3, bucket)
    assert open_uploads(s3, bucket) == []


async def test_server_ignoring_checksums_fails_loudly(config: Config, s3: Any, bucket: str,
                                                      nursery: trio.Nursery) -> None:
    class Ignores(FaultyStore):
        async def put(self, key: str, body: Any, md5: bytes, checksum: Extra | None = None,
                      meta: Meta | None = None, content_type: str | None = None) -> Sent:
            sent = await self.inner.put(key, body, md5, None, meta, content_type)
            return dataclasses.replace(sent, checksum=None)

    up = Uploads(replace(config, checksum="sha256"), Ignores(S3Store(config)),
                 nursery).start("f")
    await write_all(up, b"hello")
    with pytest.raises(IntegrityError, match="did not return the SHA256 checksum"):
        await up.complete()


async def test_stored_checksum_mismatch_removes_the_object(config: Config, s3: Any,
                                                           bucket: str,
                                                           nursery: trio.Nursery) -> None:
    class WrongHead(FaultyStore):
        async def head(self, key: str, checksum: bool = False) -> ObjectInfo | None:
            info = await self.inner.head(key, checksum)
            return None if info is None else dataclasses.replace(info, checksum="AAAAAA==-3")

    up = Uploads(replace(config, checksum="crc32c"), WrongHead(S3Store(config)),
                 nursery).start("f")
    await write_all(up, os.urandom(2 * P + 1))
    with pytest.raises(IntegrityError, match=r"stored CRC32C AAAAAA==-3, expected \S+-3"):
        await up.complete()
    assert keys(s3, bucket) == []


# -- buckets whose ETags are not MD5s ----------------------------------------------------------


class KmsStore(FaultyStore):
    """The real store, answering as S3 does for a bucket with SSE-KMS default encryption:
    every response says aws:kms and no ETag is the MD5 of anything."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.creates: list[str | None] = []
        self.puts: list[str | None] = []
        self.real: dict[str, str] = {}  # our made-up part ETag -> the server's

    @staticmethod
    def _etag() -> str:
        return secrets.token_hex(16)

    async def complete_upload(self, key: str, upload_id: str, parts: Any) -> str:
        return await self.inner.complete_upload(  # type: ignore[no-any-return]
            key, upload_id, [(n, self.real[e], c) for n, e, c in parts])

    async def create_upload(self, key: str, algorithm: Any = None, meta: Meta | None = None,
                            content_type: str | None = None) -> Started:
        self.creates.append(algorithm and algorithm.name)
        started = await self.inner.create_upload(key, algorithm, meta, content_type)
        return dataclasses.replace(started, encryption="aws:kms")

    async def upload_part(self, key: str, upload_id: str, number: int, body: Any,
                          md5: bytes, checksum: Extra | None = None) -> Sent:
        sent = await self.inner.upload_part(key, upload_id, number, body, md5, checksum)
        made_up = self._etag()
        self.real[made_up] = sent.etag
        return dataclasses.replace(sent, etag=made_up, encryption="aws:kms")

    async def put(self, key: str, body: Any, md5: bytes, checksum: Extra | None = None,
                  meta: Meta | None = None, content_type: str | None = None) -> Sent:
        self.puts.append(checksum and checksum[0].name)
        sent = await self.inner.put(key, body, md5, checksum, meta, content_type)
        return dataclasses.replace(sent, etag=self._etag(), encryption="aws:kms")

    async def head(self, key: str, checksum: bool = False) -> ObjectInfo | None:
        info = await self.inner.head(key, checksum)
        if info is None:
            return None
        return dataclasses.replace(info, etag=self._etag() + "-9", encryption="aws:kms")


@pytest.mark.expect_log(KMS_LINE)
async def test_kms_bucket_multipart_verified_by_crc32c(config: Config, s3: Any, bucket: str,
                                                       nursery: trio.Nursery,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    caplog.set_level(logging.WARNING, "s3mount.writer")
    store = KmsStore(S3Store(config))
    mgr = Uploads(config, store, nursery)
    algo = checksum.get("crc32c")
    blobs = {}
    for name in ("a", "b"):
        blobs[name] = os.urandom(2 * P + 3)
        up = mgr.start(name)
        await write_all(up, blobs[name])
        await up.complete()
        assert get(s3, bucket, name) == blobs[name]
        assert head_checksum(s3, bucket, name, algo) == local_composite(algo, blobs[name])
    # The first upload learnt it: started plain, aborted, started again with CRC32C.
    assert store.creates == [None, "crc32c", "crc32c"]
    assert open_uploads(s3, bucket) == []
    said = [r.message for r in caplog.records if "not MD5s" in r.message]
    assert len(said) == 1 and "aws:kms" in said[0] and "CRC32C" in said[0]


@pytest.mark.expect_log(KMS_LINE)
async def test_kms_bucket_single_put_sent_again_with_checksum(config: Config, s3: Any,
                                                              bucket: str,
                                                              nursery: trio.Nursery) -> None:
    store = KmsStore(S3Store(config))
    mgr = Uploads(config, store, nursery)
    for name in ("first", "second"):
        up = mgr.start(name)
        await write_all(up, name.encode() * 100)
        info = await up.complete()
        assert get(s3, bucket, name) == name.encode() * 100
        assert info.checksum == checksum.get("crc32c").part(name.encode() * 100)
    assert store.puts == [None, "crc32c", "crc32c"]  # only the first had to be sent twice


@pytest.mark.expect_log(KMS_LINE)
async def test_kms_bucket_with_sha256_chosen(config: Config, s3: Any, bucket: str,
                                             nursery: trio.Nursery) -> None:
    store = KmsStore(S3Store(config))
    up = Uploads(replace(config, checksum="sha256"), store, nursery).start(
        "f")
    data = os.urandom(P + 1)
    await write_all(up, data)
    await up.complete()
    assert store.creates == ["sha256"]  # chosen up front: nothing to start again
    assert head_checksum(s3, bucket, "f", checksum.get("sha256")) == local_composite(
        checksum.get("sha256"), data)


def test_crc32c_package_is_hardware_or_software_but_correct() -> None:
    data = os.urandom(1 << 20)
    a = checksum.get("crc32c").digest(data)
    b = checksum.get("crc32c").digest(data[:1000] + data[1000:])
    assert a == b == crc32c.crc32c(data).to_bytes(4, "big")


# -- the checksums S3 may keep, for reads --------------------------------------------------


def test_kept_algorithms_known_values_and_pieces() -> None:
    """Every algorithm S3 may keep gives its published check value for "123456789", and the
    same digest fed in pieces as whole (what verified reads rely on)."""
    check = {"crc32": 0xCBF43926, "crc32c": 0xE3069283, "crc64nvme": 0xAE8B14860A799888}
    assert set(checksum.KEPT) == {"crc32", "crc32c", "crc64nvme", "sha1", "sha256"}
    data = os.urandom(3 * MiB + 5)
    for name, algo in checksum.KEPT.items():
        assert checksum.kept(name) is algo and algo.field == f"Checksum{algo.s3_name}"
        if name in check:
            size = 8 if name == "crc64nvme" else 4
            assert algo.digest(b"123456789") == check[name].to_bytes(size, "big"), name
        h = algo.hasher()
        for i in range(0, len(data), 1000003):
            h.update(memoryview(data)[i:i + 1000003])
        assert h.digest() == algo.digest(data), name
    assert checksum.kept("sha1").digest(b"abc") == hashlib.sha1(b"abc").digest()
    assert "crc32" not in checksum.ALGORITHMS  # --checksum choices are unchanged


def test_crc32_is_computed_by_isal_with_zlibs_values() -> None:
    """CRC32, boto3's default checksum and so the one most reads are proven by, is computed by
    ISA-L (the `isal` package, a dependency: about a quarter of zlib's CPU per GiB): the values
    zlib gives, whole and fed in pieces from memoryviews as verified reads feed it."""
    import zlib

    from isal import isal_zlib

    algo = checksum.kept("crc32")
    h = algo.hasher()
    assert getattr(h, "step", None) is isal_zlib.crc32
    data = os.urandom(5 * MiB + 17)
    for i in range(0, len(data), MiB):
        h.update(memoryview(data)[i:i + MiB])
    assert h.digest() == zlib.crc32(data).to_bytes(4, "big") == algo.digest(data)
    assert algo.digest(b"") == zlib.crc32(b"").to_bytes(4, "big")


def test_fast_checksums_prove_reads_on_the_event_loop() -> None:
    """A read proven by a CRC (CRC32 by ISA-L, CRC32C, CRC64NVME: at most ~0.15 CPU-s per
    GiB) is hashed on the event loop, which costs less than handing each read to a worker
    thread; SHA and the ETag's MD5 (0.65-1.74 CPU-s per GiB) are hashed in a worker thread."""
    from s3mount.objects import ObjectInfo
    from s3mount.reader import _checksum_plan, _md5_plan

    def plan_for(name: str) -> Any:
        algo = checksum.kept(name)
        info = ObjectInfo("k", 3, 0.0, "e" * 32, checksum=algo.part(b"abc"),
                          checksum_algorithm=name)
        plan = _checksum_plan(info)
        assert plan is not None and plan.expected == algo.part(b"abc")
        return plan

    assert plan_for("crc32").inline and plan_for("crc32c").inline
    assert not plan_for("sha256").inline and not plan_for("sha1").inline
    if "crc64nvme" in checksum.KEPT:
        assert plan_for("crc64nvme").inline
    assert not _md5_plan("e" * 32, 1).inline
