"""Locally computed ETags match S3's rules for PutObject and multipart uploads."""

from __future__ import annotations

import hashlib
import io
import random
from typing import BinaryIO, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3mount.config import S3_MAX_PARTS, MiB
from s3mount.etag import (
    MultipartETag,
    multipart_etag,
    normalize_etag,
    single_etag,
    stream_etag,
)
from s3mount.schedule import PartSchedule

EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
PART = 5 * MiB
SCHEDULE = PartSchedule(part_size=PART, growth_every=2)  # parts: 5, 5, 10, 10, 20 ... MiB


def md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def pattern(n: int) -> bytes:
    """``n`` bytes that differ from part to part, so misplaced cuts change the ETag."""
    block = bytes(range(251))  # a prime length, so no part boundary lines up with it
    return (block * (n // len(block) + 1))[:n]


def direct_etag(data: bytes, schedule: PartSchedule) -> str:
    """The ETag s3mount's uploader produces, computed with the whole body in memory."""
    if len(data) <= schedule.size_of(1):
        return md5(data).hex()
    digests, offset = [], 0
    for size in schedule.parts_for(len(data)):
        digests.append(md5(data[offset : offset + size]))
        offset += size
    return hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(digests)}"


class ShortReads(io.RawIOBase):
    """A stream that returns fewer bytes than asked, as pipes and sockets do."""

    def __init__(self, data: bytes, most: int) -> None:
        self._data, self._pos, self._most = data, 0, most

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # typeshed: Buffer
        n = min(len(buffer), self._most, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_known_multipart_vector() -> None:
    # Verified against a real S3 server.
    digests = [md5(b"a" * PART), md5(b"b" * 1000)]
    assert multipart_etag(digests) == "8c6f96fe400c627d9394af6161f5921d-2"


def test_known_vector_through_stream() -> None:
    body = io.BytesIO(b"a" * PART + b"b" * 1000)
    assert stream_etag(body, SCHEDULE) == "8c6f96fe400c627d9394af6161f5921d-2"


def test_single_etag() -> None:
    assert single_etag(md5(b"")) == EMPTY_MD5
    assert single_etag(md5(b"hello")) == "5d41402abc4b2a76b9719d911017c592"


def test_multipart_of_one_part_has_suffix() -> None:
    digest = md5(b"hello")
    assert multipart_etag([digest]) == md5(digest).hex() + "-1"


@pytest.mark.parametrize("count", [0, S3_MAX_PARTS + 1])
def test_multipart_part_count_limits(count: int) -> None:
    with pytest.raises(ValueError, match="parts"):
        multipart_etag([md5(b"")] * count)


@pytest.mark.parametrize("digest", [b"", b"x" * 15, b"x" * 17])
def test_digest_must_be_md5_sized(digest: bytes) -> None:
    with pytest.raises(ValueError, match="MD5"):
        single_etag(digest)
    with pytest.raises(ValueError, match="MD5"):
        multipart_etag([md5(b""), digest])
    with pytest.raises(ValueError, match="MD5"):
        MultipartETag().add_part(1, digest)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ('"D41D8CD98F00B204E9800998ECF8427E"', EMPTY_MD5),
        ("8C6F96FE400C627D9394AF6161F5921D-2", "8c6f96fe400c627d9394af6161f5921d-2"),
        (' "abc-3" ', "abc-3"),
        ('"', '"'),
        ("", ""),
    ],
)
def test_normalize_etag(raw: str, normal: str) -> None:
    assert normalize_etag(raw) == normal


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=40), st.randoms())
def test_multipart_accumulator_ignores_arrival_order(
    parts: list[bytes], rnd: random.Random
) -> None:
    numbered = list(enumerate((md5(p) for p in parts), start=1))
    rnd.shuffle(numbered)
    etag = MultipartETag()
    for number, digest in numbered:
        etag.add_part(number, digest)
    assert len(etag) == len(parts)
    assert etag.missing() == []
    assert etag.value() == multipart_etag([md5(p) for p in parts])


def test_multipart_accumulator_replaces_reuploaded_part() -> None:
    etag = MultipartETag()
    etag.add_part(1, md5(b"old"))
    etag.add_part(2, md5(b"two"))
    etag.add_part(1, md5(b"new"))
    assert etag.value() == multipart_etag([md5(b"new"), md5(b"two")])


def test_multipart_accumulator_refuses_gaps_and_nothing() -> None:
    etag = MultipartETag()
    with pytest.raises(ValueError, match="no parts"):
        etag.value()
    etag.add_part(1, md5(b"1"))
    etag.add_part(4, md5(b"4"))
    assert etag.missing() == [2, 3]
    with pytest.raises(ValueError, match="2, 3"):
        etag.value()


@pytest.mark.parametrize("number", [0, -1, S3_MAX_PARTS + 1])
def test_multipart_accumulator_part_number_range(number: int) -> None:
    with pytest.raises(ValueError, match="part numbers"):
        MultipartETag().add_part(number, md5(b""))


def test_empty_stream_is_md5_of_nothing() -> None:
    assert stream_etag(io.BytesIO(b""), SCHEDULE) == EMPTY_MD5


# Lengths around the first part boundary and the first stage boundary (parts 2 -> 3).
LENGTHS = [0, 1, PART - 1, PART, PART + 1, 2 * PART, 2 * PART + 1]
READ_SIZES = [MiB - 1, 3 * MiB + 7, 1 * MiB]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("read_size", READ_SIZES)
def test_stream_etag_matches_direct(length: int, read_size: int) -> None:
    data = pattern(length)
    assert stream_etag(io.BytesIO(data), SCHEDULE, read_size) == direct_etag(data, SCHEDULE)


def test_part_size_stream_is_one_put_and_one_more_byte_is_two_parts() -> None:
    assert "-" not in stream_etag(io.BytesIO(pattern(PART)), SCHEDULE)
    assert stream_etag(io.BytesIO(pattern(PART + 1)), SCHEDULE).endswith("-2")
    assert stream_etag(io.BytesIO(pattern(2 * PART)), SCHEDULE).endswith("-2")
    assert stream_etag(io.BytesIO(pattern(2 * PART + 1)), SCHEDULE).endswith("-3")


def test_stream_etag_crosses_stage() -> None:
    # Parts 5 + 5 + 10 MiB, then one byte into part 4.
    data = pattern(4 * PART + 1)
    assert stream_etag(io.BytesIO(data), SCHEDULE, 2 * MiB + 3) == direct_etag(data, SCHEDULE)
    assert direct_etag(data, SCHEDULE).endswith("-4")


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 * PART + 3), st.integers(1, 4 * MiB))
def test_stream_etag_short_reads(length: int, most: int) -> None:
    data = pattern(length)
    stream = cast(BinaryIO, ShortReads(data, most))  # read() returns at most `most` bytes
    assert stream_etag(stream, SCHEDULE, read_size=most + 1) == direct_etag(data, SCHEDULE)


def test_stream_etag_refuses_bad_read_size() -> None:
    with pytest.raises(ValueError, match="read_size"):
        stream_etag(io.BytesIO(b"x"), SCHEDULE, read_size=0)
