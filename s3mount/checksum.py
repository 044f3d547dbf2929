"""Additional checksums (CRC32C, SHA256) computed the way S3 computes them, to verify uploads
where the ETag is no MD5 (SSE-KMS, SSE-C) or where the user asks for a second check.

S3's rules for an upload sent with ``ChecksumAlgorithm``:

- a part (or a single PutObject) has the checksum of its bytes, sent and returned as base64 of
  the big-endian digest (4 bytes for CRC32C, 32 for SHA256);
- a multipart object has the *composite* checksum: the same algorithm over the concatenated
  binary part checksums, in part order, then ``-N`` for N parts
  (``ChecksumType=COMPOSITE``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import crc32c as _crc32c


def _crc32c_digest(data: bytes | memoryview) -> bytes:
    return int(_crc32c.crc32c(data)).to_bytes(4, "big")


def _sha256_digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


class _Crc32c:
    """CRC32C computed piece by piece, with hashlib's update/digest."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = _crc32c.crc32c(data, self.value)

    def digest(self) -> bytes:
        return int(self.value).to_bytes(4, "big")


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


@dataclass(frozen=True)
class Algorithm:
    """One additional-checksum algorithm, under the names S3 uses for it."""

    name: str  # as on our command line: "crc32c"
    s3_name: str  # ChecksumAlgorithm value: "CRC32C"
    digest: Callable[[bytes | memoryview], bytes]
    hasher: Callable[[], Hasher]  # the same, piece by piece

    @property
    def field(self) -> str:
        """The request/response member that carries it: ``ChecksumCRC32C``."""
        return f"Checksum{self.s3_name}"

    def part(self, data: bytes | memoryview) -> str:
        """The checksum S3 reports for one part (or one PutObject) with these bytes."""
        return b64(self.digest(data))

    def composite(self, part_checksums: Sequence[str]) -> str:
        """The checksum S3 reports for a multipart object with these part checksums."""
        if not part_checksums:
            raise ValueError("a multipart upload has at least one part")
        joined = b"".join(base64.b64decode(c) for c in part_checksums)
        return f"{b64(self.digest(joined))}-{len(part_checksums)}"


ALGORITHMS = {
    "crc32c": Algorithm("crc32c", "CRC32C", _crc32c_digest, _Crc32c),
    "sha256": Algorithm("sha256", "SHA256", _sha256_digest, hashlib.sha256),
}
DEFAULT_FOR_ENCRYPTED = "crc32c"  # used when ETags turn out not to be MD5s and none was chosen


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def get(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown checksum {name!r}; choose one of "
                         f"{', '.join(ALGORITHMS)}") from None
