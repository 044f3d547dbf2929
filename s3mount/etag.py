"""S3 ETags computed locally, so s3mount can check that S3 holds exactly the bytes it sent.

S3's rules (for objects without SSE-KMS / SSE-C encryption):

- an object written by one PutObject has the hex MD5 of its body as ETag;
- an object written by a multipart upload of N parts has
  ``hex(md5(md5(part 1) || ... || md5(part N))) + "-N"``, even when N is 1.

s3mount writes a file that ends inside its first part with one PutObject and any longer file
as a multipart upload cut by the :class:`~s3mount.schedule.PartSchedule`; :func:`stream_etag`
reproduces that rule. ETags here are lowercase hex without the surrounding double quotes that
S3 puts in its headers; :func:`normalize_etag` brings S3's form to this one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import BinaryIO

from s3mount.config import S3_MAX_PARTS, MiB
from s3mount.schedule import PartSchedule

MD5_SIZE = 16
EMPTY_MD5 = hashlib.md5(b"", usedforsecurity=False).digest()  # of an empty body (markers)


# Encryption modes under which S3's ETag is not an MD5 of the bytes (the value of the
# x-amz-server-side-encryption response header; "SSE-C" stands for a customer key).
NON_MD5_ENCRYPTION = frozenset({"aws:kms", "aws:kms:dsse", "SSE-C"})


_MD5_SHAPE = re.compile(r"[0-9a-f]{32}(-[0-9]+)?")


def md5_shaped(etag: str) -> bool:
    """Whether ``etag`` (this module's form) can be an MD5 or a multipart ETag at all: 32 hex
    digits, then ``-N`` for a multipart object. AIStore's xxhash ETags (16 hex digits) cannot."""
    return _MD5_SHAPE.fullmatch(etag) is not None


def etag_is_md5(encryption: str | None, etag: str | None = None) -> bool:
    """Whether S3 gives objects stored with ``encryption`` an MD5-based ETag (SSE-S3 does),
    and, when an ``etag`` the server answered is given, whether it has the shape of one."""
    if etag is not None and not md5_shaped(normalize_etag(etag)):
        return False
    return (encryption or "").lower() not in {e.lower() for e in NON_MD5_ENCRYPTION}


def verifiable_parts(etag: str) -> int | None:
    """How many part MD5s make ``etag``: 1 for a PutObject's (32 hex digits), N for a
    multipart upload's (``...-N``); None when it has no MD5 shape."""
    etag = normalize_etag(etag)
    if not md5_shaped(etag):
        return None
    _, dash, n = etag.partition("-")
    return int(n) if dash else 1


def single_etag(digest: bytes) -> str:
    """ETag of an object written by one PutObject whose body has MD5 ``digest``."""
    _check_digest(digest)
    return digest.hex()


def multipart_etag(digests: Sequence[bytes]) -> str:
    """ETag of a multipart upload whose parts, in part order, have MD5s ``digests``."""
    if not 1 <= len(digests) <= S3_MAX_PARTS:
        raise ValueError(f"a multipart upload has 1 to {S3_MAX_PARTS} parts, not {len(digests)}")
    combined = hashlib.md5(usedforsecurity=False)
    for digest in digests:
        _check_digest(digest)
        combined.update(digest)
    return f"{combined.hexdigest()}-{len(digests)}"


def etag_like(etag: str, digests: Sequence[bytes]) -> str:
    """What S3 makes of the MD5s of an object's parts, for an object whose ETag is shaped
    like `etag`: the one digest of a single-part object, else the multipart ETag (a
    multipart object of one part has `-1`)."""
    return single_etag(digests[0]) if "-" not in etag else multipart_etag(digests)


def normalize_etag(s: str) -> str:
    """An ETag as S3 sends it (quoted, e.g. ``"ABC-3"``) in this module's form: ``abc-3``."""
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = s[1:-1]
    return s.lower()


class MultipartETag:
    """The ETag of a multipart upload, built from part MD5s that may arrive in any order.

    Adding a part number again replaces its digest, as uploading a part again does in S3.
    """

    def __init__(self) -> None:
        self._digests: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._digests)

    def add_part(self, number: int, md5_digest: bytes) -> None:
        """Record the MD5 of part ``number`` (1-based)."""
        if not 1 <= number <= S3_MAX_PARTS:
            raise ValueError(f"part numbers run from 1 to {S3_MAX_PARTS}, not {number}")
        _check_digest(md5_digest)
        self._digests[number] = bytes(md5_digest)

    def missing(self) -> list[int]:
        """Part numbers below the highest one added that have no digest yet."""
        highest = max(self._digests, default=0)
        return [n for n in range(1, highest + 1) if n not in self._digests]

    def digests(self) -> list[bytes]:
        """The part MD5s in part order (parts 1..N, no gaps)."""
        if gaps := self.missing():
            raise ValueError(f"parts {_abbreviate(gaps)} are missing")
        return [self._digests[n] for n in range(1, len(self._digests) + 1)]

    def value(self) -> str:
        """The upload's ETag; parts must be numbered 1..N without gaps, as s3mount uploads them."""
        if not self._digests:
            raise ValueError("no parts added")
        if gaps := self.missing():
            raise ValueError(f"parts {_abbreviate(gaps)} are missing")
        return multipart_etag([self._digests[n] for n in range(1, len(self._digests) + 1)])


def stream_etag(stream: BinaryIO, schedule: PartSchedule, read_size: int = 1 * MiB) -> str:
    """The ETag s3mount gives an object written from ``stream`` (read to its end) by ``schedule``.

    Memory stays bounded by ``read_size``: parts are hashed chunk by chunk, never held whole.
    """
    if read_size < 1:
        raise ValueError(f"read_size must be at least 1 byte, not {read_size}")
    digests = _part_digests(stream, schedule, read_size)
    if len(digests) <= 1:  # ends inside its first part: one PutObject
        return single_etag(digests[0] if digests else hashlib.md5(usedforsecurity=False).digest())
    return multipart_etag(digests)


def _part_digests(stream: BinaryIO, schedule: PartSchedule, read_size: int) -> list[bytes]:
    """MD5s of the parts ``schedule`` cuts ``stream`` into; a part opens only once it has data."""
    digests: list[bytes] = []
    part = hashlib.md5(usedforsecurity=False)
    left = 0  # bytes the open part still takes; 0 when no part is open
    while chunk := stream.read(read_size):
        view = memoryview(chunk)
        while view:
            if left == 0:
                part, left = hashlib.md5(usedforsecurity=False), _next_size(schedule, digests)
            take = min(left, len(view))
            part.update(view[:take])
            view, left = view[take:], left - take
            if left == 0:
                digests.append(part.digest())
    if left:
        digests.append(part.digest())
    return digests


def _next_size(schedule: PartSchedule, digests: list[bytes]) -> int:
    if len(digests) >= S3_MAX_PARTS:
        raise ValueError(f"stream exceeds the schedule's capacity of {schedule.capacity()} bytes")
    return schedule.size_of(len(digests) + 1)


def _check_digest(digest: bytes) -> None:
    if len(digest) != MD5_SIZE:
        raise ValueError(f"an MD5 digest has {MD5_SIZE} bytes, not {len(digest)}")


def _abbreviate(numbers: list[int], limit: int = 5) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown if len(numbers) <= limit else f"{shown}, ... ({len(numbers)} in all)"
