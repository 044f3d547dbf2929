"""Fill a bucket with the small demo tree that `make demo` mounts (or, with --list, list it).

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the endpoint from --endpoint-url
or AWS_ENDPOINT_URL (`python -m tests.seaweed env --state-dir .demo` prints all three).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

MiB = 1024 * 1024
TEXT_OBJECTS = {
    "hello.txt": b"Hello from s3mount!\n",
    "docs/readme.md": b"# Demo\n\nThis file is an S3 object under the prefix `docs/`.\n",
    "empty/": b"",  # a directory marker: an empty directory that persists
}
RANDOM_KEY = "data/random.bin"
RANDOM_SIZE = 20 * MiB


def make_client(endpoint_url: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def ensure_bucket(client: S3Client, bucket: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        log.info("creating bucket %s", bucket)
        client.create_bucket(Bucket=bucket)


def seed(client: S3Client, bucket: str) -> None:
    ensure_bucket(client, bucket)
    for key, body in TEXT_OBJECTS.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
        log.info("put s3://%s/%s (%d bytes)", bucket, key, len(body))
    client.put_object(Bucket=bucket, Key=RANDOM_KEY, Body=os.urandom(RANDOM_SIZE))
    log.info("put s3://%s/%s (%d MiB of random bytes)", bucket, RANDOM_KEY, RANDOM_SIZE // MiB)


def list_bucket(client: S3Client, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            print(f"{obj['Size']:>12}  s3://{bucket}/{obj['Key']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"))
    parser.add_argument("--bucket", default="demo-bucket")
    parser.add_argument("--list", action="store_true", help="list the bucket instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    if not args.endpoint_url:
        parser.error("no --endpoint-url and no AWS_ENDPOINT_URL")
    client = make_client(args.endpoint_url)
    if args.list:
        list_bucket(client, args.bucket)
    else:
        seed(client, args.bucket)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
