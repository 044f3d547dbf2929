"""What the filesystem asks of S3 and what S3 answers: the `Store` protocol and its value
types. No boto3 here: `store.py` implements the protocol with it, `tests/memstore.py` in
memory, and the layers above (namespace, reader, writer, renamer, fs) depend only on this."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from .checksum import Algorithm
from .errors import StoreError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float
    etag: str  # without quotes
    checksum: str | None = None  # additional checksum, when asked for and stored
    encryption: str | None = None  # x-amz-server-side-encryption, or "SSE-C"
    # From HEAD only (None from LIST): user metadata, keys without `x-amz-meta-` (meta.py
    # reads them), and the Content-Type.
    meta: dict[str, str] | None = field(default=None, hash=False)
    content_type: str | None = None
    checksum_algorithm: str | None = None  # our name of `checksum`'s algorithm ("crc32c")
    checksum_type: str | None = None  # "COMPOSITE" or "FULL_OBJECT", when S3 says


@dataclass(frozen=True)
class Sent:
    """What S3 answered to a PutObject or UploadPart."""

    etag: str
    checksum: str | None = None  # the additional checksum S3 computed, if one was sent
    encryption: str | None = None


@dataclass(frozen=True)
class Started:
    """What S3 answered to CreateMultipartUpload."""

    upload_id: str
    encryption: str | None = None


@dataclass(frozen=True)
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]
    next_token: str | None


@dataclass(frozen=True)
class UploadInfo:
    key: str
    upload_id: str
    initiated: float


class Store(Protocol):
    """What the filesystem needs from S3; tests wrap it to inject faults."""

    async def head(self, key: str, checksum: bool = False) -> ObjectInfo | None: ...
    async def list_page(self, prefix: str, delimiter: str | None = "/",
                        token: str | None = None, max_keys: int = 1000) -> ListPage: ...
    async def get_range(self, key: str, start: int, into: memoryview, etag: str) -> None: ...
    async def put(self, key: str, body: Body, md5: bytes, checksum: Extra | None = None,
                  meta: Meta | None = None, content_type: str | None = None) -> Sent: ...
    async def create_upload(self, key: str, algorithm: Algorithm | None = None,
                            meta: Meta | None = None,
                            content_type: str | None = None) -> Started: ...
    async def upload_part(self, key: str, upload_id: str, number: int,
                          body: Body, md5: bytes, checksum: Extra | None = None) -> Sent: ...
    async def complete_upload(self, key: str, upload_id: str,
                              parts: Sequence[PartDone]) -> str: ...
    async def abort_upload(self, key: str, upload_id: str) -> None: ...
    async def copy(self, src: str, dst: str, etag: str, meta: Meta | None = None,
                   content_type: str | None = None) -> str: ...
    async def copy_part(self, dst: str, upload_id: str, number: int, src: str, start: int,
                        end: int, etag: str) -> str: ...
    async def copy_part_checked(self, dst: str, upload_id: str, number: int, src: str,
                                size: int, etag: str, checksum: Algorithm | None,
                                start: int = 0) -> Sent: ...
    async def part_size(self, key: str, number: int, etag: str) -> int | None: ...
    async def delete(self, key: str) -> None: ...


class FirstGet(Protocol):
    """What a store may offer besides `Store` (optional: `first_get_of` says whether it does):
    one GET of an object's first bytes, pinned to no ETag, whose answer says what a HEAD
    would (ETag, metadata, Last-Modified, Content-Type; the size from Content-Range). A lookup
    of a file that an open is likely to follow learns its attributes and the bytes of its
    first read in one round trip (namespace.py, reader.py `Readers.get_first`)."""

    async def get_first(self, key: str, into: memoryview) -> tuple[ObjectInfo, int] | None:
        """`into` filled with the object's first bytes: what a HEAD says of the object, and how
        many bytes came (min(size, len(into))); None if there is no object at `key`."""
        ...


class ManyHeads(Protocol):
    """What a store may offer besides `Store` (optional: `many_heads_of` says whether it
    does): the HEADs of several keys at once, for less CPU than as many `head` calls
    (lookahead.py, `ls -l`)."""

    async def head_many(self, keys: list[str],
                        each: Callable[[int, ObjectInfo | None | StoreError], None] | None = None
                        ) -> list[ObjectInfo | None | StoreError]:
        """What `head` says of each key, or the error a HEAD of it alone would raise; also
        given to `each(index, answer)` as each comes (in the caller's thread)."""
        ...


def many_heads_of(store: object) -> ManyHeads | None:
    """`store` as a ManyHeads, if it offers `head_many` (wrappers forward it)."""
    fn = getattr(store, "head_many", None)
    return cast(ManyHeads, store) if callable(fn) else None


def first_get_of(store: object) -> FirstGet | None:
    """`store` as a FirstGet, if it offers `get_first` (wrappers forward it)."""
    fn = getattr(store, "get_first", None)
    return cast(FirstGet, store) if callable(fn) else None


# An additional checksum to send: the algorithm and the base64 value.
Extra = tuple[Algorithm, str]
# User metadata as boto3's `Metadata=` takes it: keys without `x-amz-meta-` (meta.py makes it).
Meta = dict[str, str]
# A part for CompleteMultipartUpload: number, ETag, and the additional checksum it was sent with.
PartDone = tuple[int, str, Extra | None]


class SeekableBody(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...


Body = bytes | bytearray | SeekableBody
