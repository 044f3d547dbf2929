"""Trust: what s3mount can prove about the bytes it stores and serves, and what it shows when
S3 stalls or misbehaves, through the fault proxy (tests/faultproxy.py) in front of SeaweedFS."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from s3mount.config import MiB
from tests.faultproxy import FaultProxy
from tests.seaweed import SeaweedServer, s3_client


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
    import time

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
