"""The lean request path (s3mount/wire.py) against boto3 on SeaweedFS and moto's server: the
same answers for the same objects, keys that need encoding, kept connections the server
closed, and when boto3 sends everything instead. The store's contract tests
(test_store_contract.py) run through it too: S3Store uses it by default."""

from __future__ import annotations

import base64
import hashlib
import socket
from dataclasses import replace
from typing import Any

import botocore.exceptions
import pytest

from s3mount.config import Config
from s3mount.store import S3Store
from s3mount.wire import Wire

KEYS = ["plain", "sp ace+x.txt", "a b/c+d", "ünï/cödé~", "odd%20name", "dir//twice",
        "q?x=1&y#z", "*(x)!'"]


@pytest.fixture(params=["seaweed", "moto"])
def store(request: pytest.FixtureRequest) -> Any:
    config: Config = request.getfixturevalue("config" if request.param == "seaweed"
                                             else "moto_config")
    store = S3Store(config)
    store.server = request.param  # type: ignore[attr-defined]
    return store


def _wire(store: S3Store) -> Wire:
    assert store.wire is not None, "the lean path is on by default"
    return store.wire


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


FIELDS = ("ContentLength", "ETag", "LastModified", "ContentType", "Metadata")


@pytest.mark.parametrize("key", KEYS)
def test_head_get_and_put_answer_as_boto3_does(store: S3Store, key: str) -> None:
    wire, client = _wire(store), store.client
    body = bytes(range(256)) * 40
    r = wire.put_object(key, body, {"content-md5": _md5(body), "content-type": "text/x-test",
                                    "x-amz-meta-mode": "33188", "x-amz-meta-mtime": "17.5"})
    got = client.get_object(Bucket=store.bucket, Key=key)
    assert got["Body"].read() == body
    assert r["ETag"] == got["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    lean = wire.head_object(key)
    sdk = client.head_object(Bucket=store.bucket, Key=key)
    assert {f: lean.get(f) for f in FIELDS} == {f: sdk.get(f) for f in FIELDS}
    assert lean["Metadata"] == {"mode": "33188", "mtime": "17.5"}
    into = bytearray(1000)
    n, content_range = wire.get_object_into(key, 100, memoryview(into), lean["ETag"][1:-1])
    assert (n, content_range) == (1000, f"bytes 100-1099/{len(body)}")
    assert bytes(into) == body[100:1100]


def test_checksums_come_back_as_boto3_names_them(store: S3Store) -> None:
    wire, client = _wire(store), store.client
    client.put_object(Bucket=store.bucket, Key="summed", Body=b"x" * 1000,
                      ChecksumAlgorithm="CRC32")
    sdk = client.head_object(Bucket=store.bucket, Key="summed", ChecksumMode="ENABLED")
    lean = wire.head_object("summed", checksum=True)
    assert lean["ChecksumCRC32"] == sdk["ChecksumCRC32"]
    assert lean.get("ChecksumType") == sdk.get("ChecksumType")


def test_errors_are_boto3_client_errors_with_code_and_status(store: S3Store) -> None:
    wire = _wire(store)
    wire.put_object("k", b"abc", {"content-md5": _md5(b"abc")})
    etag = wire.head_object("k")["ETag"][1:-1]
    cases: list[tuple[Any, int]] = [
        (lambda: wire.head_object("missing"), 404),
        (lambda: wire.get_object_into("missing", 0, memoryview(bytearray(3)), etag), 404),
        (lambda: wire.get_object_into("k", 0, memoryview(bytearray(3)), "0" * 32), 412),
        (lambda: wire.get_object_into("k", 10, memoryview(bytearray(3)), etag), 416),
    ]
    if store.server != "moto":  # type: ignore[attr-defined]  # moto ignores Content-MD5
        cases.append((lambda: wire.put_object("bad", b"abc", {"content-md5": _md5(b"abd")}),
                      400))
    for call, status in cases:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            call()
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    # After each error the connection is still usable (its body was read to the end).
    assert wire.head_object("k")["ContentLength"] == 3


def test_a_kept_connection_the_server_closed_is_not_used(store: S3Store) -> None:
    wire = _wire(store)
    wire.put_object("k", b"abc", {"content-md5": _md5(b"abc")})
    if store.server == "moto":  # type: ignore[attr-defined]
        assert wire.pool == []  # moto's server says Connection: close: none is kept
        return
    assert len(wire.pool) == 1
    wire.pool[0].sock.shutdown(socket.SHUT_RDWR)  # as a server's idle timeout would
    assert wire.head_object("k")["ContentLength"] == 3
    assert len(wire.pool) == 1


def test_heads_sent_together_answer_as_boto3_does(store: S3Store) -> None:
    """`head_objects` (ls -l's read ahead): each key's answer as boto3's HEAD gives it, a
    missing key's 404 as boto3 raises it, more keys than connections at once, and the
    connections kept after (SeaweedFS; moto's server closes each one)."""
    wire, client = _wire(store), store.client
    keys = [*KEYS, "missing", "plain"]
    for i, key in enumerate(KEYS):
        wire.put_object(key, b"k" * i, {"content-md5": _md5(b"k" * i),
                                        "x-amz-meta-mtime": str(i)})
    sent = wire.sent
    answers = wire.head_objects(keys, 3)
    assert wire.sent == sent + len(keys)
    for key, answer in zip(keys, answers, strict=True):
        if key == "missing":
            assert isinstance(answer, botocore.exceptions.ClientError)
            assert answer.response["Error"]["Code"] in ("404", "NoSuchKey")
            assert answer.response["ResponseMetadata"]["HTTPStatusCode"] == 404
            continue
        assert isinstance(answer, dict), answer
        sdk = client.head_object(Bucket=store.bucket, Key=key)
        assert {f: answer.get(f) for f in FIELDS} == {f: sdk.get(f) for f in FIELDS}
    if store.server == "seaweed":  # type: ignore[attr-defined]
        assert 1 <= len(wire.pool) <= 3


async def test_the_store_sends_many_heads_in_one_call(config: Config) -> None:
    """`S3Store.head_many`: what `head` says of each key, None for a missing one, in one
    worker thread's turn, through the lean path or (--sdk-requests) boto3 alike."""
    for sdk in (False, True):
        store = S3Store(replace(config, sdk_requests=sdk))
        for i in range(5):
            await store.put(f"many/{i}", b"m" * i, hashlib.md5(b"m" * i).digest())
        keys = [f"many/{i}" for i in range(5)] + ["many/none"]
        told: dict[int, Any] = {}
        got = await store.head_many(keys, told.__setitem__)
        assert got[-1] is None and told == dict(enumerate(got))
        assert got[:-1] == [await store.head(k) for k in keys[:-1]]
        assert [i.size for i in got[:-1] if i is not None] == list(range(5))


def test_a_range_past_the_end_reports_what_came_and_the_size(store: S3Store) -> None:
    """The store calls a short answer a size mismatch from these two figures."""
    wire = _wire(store)
    body = b"0123456789" * 100
    wire.put_object("whole", body, {"content-md5": _md5(body)})
    into = bytearray(20)
    n, content_range = wire.get_object_into("whole", 990, memoryview(into),
                                            hashlib.md5(body).hexdigest())
    assert n == 10 and bytes(into[:10]) == body[990:]
    assert content_range == "bytes 990-999/1000"
    assert wire.head_object("whole")["ContentLength"] == 1000


def test_sdk_requests_and_proxies_send_everything_through_boto3(
        config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    assert S3Store(config).wire is not None
    assert S3Store(replace(config, sdk_requests=True)).wire is None
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    assert S3Store(config).wire is None


async def test_the_store_gets_and_puts_through_the_lean_path(config: Config) -> None:
    """S3Store's own HEAD, GET and small PUT go the lean way."""
    store = S3Store(config)
    body = b"lean" * 100
    await store.put("via-store", body, hashlib.md5(body).digest())
    info = await store.head("via-store")
    assert info is not None and info.size == len(body)
    into = bytearray(len(body))
    await store.get_range("via-store", 0, memoryview(into), info.etag)
    assert bytes(into) == body
    assert _wire(store).sent == 3


LISTED = ("Key", "Size", "LastModified", "ETag")


def test_listing_pages_answer_as_boto3_does(store: S3Store) -> None:
    """Keys that need encoding, common prefixes and continuation, page by page."""
    wire, client = _wire(store), store.client
    for key in [*KEYS, "sub/one", "sub/two", "sub/deeper/three"]:
        client.put_object(Bucket=store.bucket, Key=key, Body=key.encode())
    for prefix, delimiter in (("", "/"), ("", None), ("sub/", "/")):
        lean_pages, sdk_pages = [], []
        token = None
        while True:
            page = wire.list_objects_v2(prefix, delimiter, token, 2)
            lean_pages.append(page)
            token = page.get("NextContinuationToken")
            if not page["IsTruncated"]:
                break
        args: dict[str, Any] = {"Bucket": store.bucket, "Prefix": prefix, "MaxKeys": 2}
        if delimiter:
            args["Delimiter"] = delimiter
        for page in client.get_paginator("list_objects_v2").paginate(**args):
            sdk_pages.append(page)
        assert [[{f: o[f] for f in LISTED} for o in p["Contents"]] for p in lean_pages] == [
            [{f: o[f] for f in LISTED} for o in p.get("Contents", [])] for p in sdk_pages]
        assert [p["CommonPrefixes"] for p in lean_pages] == [
            p.get("CommonPrefixes", []) for p in sdk_pages]
    listed = [o["Key"] for p in lean_pages for o in p["Contents"]]
    assert listed == ["sub/one", "sub/two"]


def test_a_large_body_waits_for_continue_and_a_refusal_is_read_as_such(store: S3Store) -> None:
    """A part larger than 1 MiB goes after the server's 100 Continue, from the caller's
    buffer; a part of an upload that does not exist is S3's NoSuchUpload, not a reset."""
    wire, client = _wire(store), store.client
    part = memoryview(bytearray(b"p" * (5 * 1024 * 1024 + 3)))
    upload = client.create_multipart_upload(Bucket=store.bucket, Key="parts")["UploadId"]
    r = wire.upload_part("parts", upload, 1, part, {"content-md5": _md5(part.tobytes())})
    assert r["ETag"] == f'"{hashlib.md5(part).hexdigest()}"'
    client.complete_multipart_upload(Bucket=store.bucket, Key="parts", UploadId=upload,
                                     MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                 "ETag": r["ETag"]}]})
    assert client.get_object(Bucket=store.bucket, Key="parts")["Body"].read() == part
    with pytest.raises(botocore.exceptions.ClientError) as info:
        wire.upload_part("parts", "no-such-upload", 1, part,
                         {"content-md5": _md5(part.tobytes())})
    with pytest.raises(botocore.exceptions.ClientError) as sdk:
        client.upload_part(Bucket=store.bucket, Key="parts", UploadId="no-such-upload",
                           PartNumber=1, Body=part.tobytes())
    got = [(e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"])
           for e in (info.value, sdk.value)]
    assert got[0] == got[1]
    if store.server == "seaweed":  # type: ignore[attr-defined]  # moto: 500, InternalError
        assert got[0] == (404, "NoSuchUpload")


def test_part_heads_and_deletes_answer_as_boto3_does(store: S3Store) -> None:
    wire, client = _wire(store), store.client
    upload = client.create_multipart_upload(Bucket=store.bucket, Key="two")["UploadId"]
    parts = []
    for number, size in ((1, 5 * 1024 * 1024), (2, 1000)):
        r = client.upload_part(Bucket=store.bucket, Key="two", UploadId=upload,
                               PartNumber=number, Body=b"t" * size)
        parts.append({"PartNumber": number, "ETag": r["ETag"]})
    etag = client.complete_multipart_upload(Bucket=store.bucket, Key="two", UploadId=upload,
                                            MultipartUpload={"Parts": parts})["ETag"]
    for number in (1, 2):
        sdk = client.head_object(Bucket=store.bucket, Key="two", PartNumber=number)
        lean = wire.head_object("two", part=number)
        assert (lean["ContentLength"], lean.get("PartsCount")) == (
            sdk["ContentLength"], sdk.get("PartsCount"))
    assert wire.head_object("two", part=2)["ContentLength"] == 1000
    if store.server == "seaweed":  # type: ignore[attr-defined]  # moto: If-Match on parts
        assert wire.head_object("two", part=1, if_match=etag[1:-1])["PartsCount"] == 2
    wire.delete_object("two")
    wire.delete_object("two")  # deleting what is gone is no error, as in S3
    assert "Contents" not in client.list_objects_v2(Bucket=store.bucket, Prefix="two")
