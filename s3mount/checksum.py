"""Additional checksums computed the way S3 computes them: CRC32C and SHA256 to verify uploads
where the ETag is no MD5 (SSE-KMS, SSE-C) or where the user asks for a second check, and every
algorithm S3 may keep (`KEPT`: CRC32, CRC32C, CRC64NVME, SHA1, SHA256) to verify reads.

Per GiB on this project's 2-core machine (one core): CRC32C 0.07 CPU-s (the `crc32c`
package), CRC64NVME 0.14 (awscrt, when installed), CRC32 0.38 with zlib and a quarter of
that with ISA-L (the `isal` package, used when installed: 0.13 against zlib's 0.56 measured in
the same loaded minute), SHA1 0.65, SHA256 0.70, against MD5's 1.74: any checksum S3
keeps is a cheaper proof of a read than the ETag's MD5.

S3's rules for an upload sent with ``ChecksumAlgorithm``:

- a part (or a single PutObject) has the checksum of its bytes, sent and returned as base64 of
  the big-endian digest (4 bytes for CRC32C, 32 for SHA256);
- a multipart object has the *composite* checksum: the same algorithm over the concatenated
  binary part checksums, in part order, then ``-N`` for N parts
  (``ChecksumType=COMPOSITE``), or, for the CRCs, a *full-object* one: the CRC of all its
  bytes, as if uploaded whole (``ChecksumType=FULL_OBJECT``; CRC64NVME is always that).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import crc32c as _crc32c

try:  # CRC32 (boto3's default checksum since 1.36) with carry-less multiplies: 4x zlib's speed
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - depends on the environment
    _crc32 = zlib.crc32
try:  # CRC64NVME, the checksum AWS S3 keeps of every new object: only with awscrt installed
    from awscrt import checksums as _crt  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    _crt = None


class _Crc:
    """A CRC computed piece by piece, with hashlib's update/digest: `step(data, value)` goes on
    from `value`, and the digest is `width` bytes, big-endian (as S3 sends it)."""

    def __init__(self, step: Callable[[bytes | memoryview, int], int], width: int) -> None:
        self.step, self.width, self.value = step, width, 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = int(self.step(data, self.value))

    def digest(self) -> bytes:
        return self.value.to_bytes(self.width, "big")


def _crc(step: Callable[[bytes | memoryview, int], int], width: int
         ) -> tuple[Callable[[bytes | memoryview], bytes], Callable[[], _Crc]]:
    """The one-call digest and the piece-by-piece hasher of one CRC."""
    def hasher() -> _Crc:
        return _Crc(step, width)

    def digest(data: bytes | memoryview) -> bytes:
        h = hasher()
        h.update(data)
        return h.digest()
    return digest, hasher


def _crc64nvme(data: bytes | memoryview, value: int) -> int:
    assert _crt is not None
    return int(_crt.crc64nvme(data, value))


def _sha256_digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _sha1_digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha1(data, usedforsecurity=False).digest()


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
    # At most ~0.15 CPU-s per GiB: cheaper on the event loop than a hand-over to a thread
    # (reader.py hashes reads with it there)
    fast: bool = False

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
    "crc32c": Algorithm("crc32c", "CRC32C", *_crc(_crc32c.crc32c, 4), fast=True),
    "sha256": Algorithm("sha256", "SHA256", _sha256_digest, hashlib.sha256),
}
# Every algorithm S3 may keep, cheapest first (what reads are verified with when S3 keeps one).
KEPT = {
    "crc32c": ALGORITHMS["crc32c"],
    **({"crc64nvme": Algorithm("crc64nvme", "CRC64NVME", *_crc(_crc64nvme, 8), fast=True)}
       if _crt is not None else {}),
    "crc32": Algorithm("crc32", "CRC32", *_crc(_crc32, 4), fast=_crc32 is not zlib.crc32),
    "sha1": Algorithm("sha1", "SHA1", _sha1_digest,
                      lambda: hashlib.sha1(usedforsecurity=False)),
    "sha256": ALGORITHMS["sha256"],
}
DEFAULT_FOR_ENCRYPTED = "crc32c"  # used when ETags turn out not to be MD5s and none was chosen


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def kept(name: str) -> Algorithm:
    """An algorithm S3 may keep, by our name ("crc32")."""
    return KEPT[name]


def get(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown checksum {name!r}; choose one of "
                         f"{', '.join(ALGORITHMS)}") from None
