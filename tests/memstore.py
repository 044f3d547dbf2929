"""An in-memory `Store` that answers as AWS S3 does, for tests where a server adds nothing.

One bucket held in dicts, with what the filesystem relies on: HEAD (with the additional
checksum on request), ListObjectsV2 (prefix, delimiter, common prefixes, MaxKeys, continuation
tokens, keys in UTF-8 binary order), ranged GETs pinned with If-Match, PutObject checked
against Content-MD5 and the additional checksum, multipart uploads (5 MiB minimum for every
part but the last, the multipart ETag, composite checksums), CopyObject and UploadPartCopy with
CopySourceIf-Match, HEAD ?partNumber=N, DeleteObject, ListMultipartUploads and ListParts.

Failures raise the exceptions `S3Store` raises for the same S3 answer (see `store.classify`),
with the same messages where callers or logs depend on them. AWS S3 is the reference where
servers differ (tests/test_store_contract.py holds MemStore, SeaweedFS and moto to one
contract and names each server's known differences).

Every call is a trio checkpoint before and after its effect, so that concurrent handlers
interleave as they do with requests in flight to a real server; the effect itself is atomic.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from s3mount.checksum import Algorithm
from s3mount.config import S3_MAX_PARTS, S3_MIN_PART
from s3mount.errors import (
    NoSuchKey,
    PreconditionFailed,
    SizeMismatch,
    StoreError,
    TransientError,
)
from s3mount.etag import etag_is_md5
from s3mount.objects import Body, Extra, ListPage, ObjectInfo, PartDone, Sent, Started, UploadInfo

MAX_LIST_KEYS = 1000  # S3 returns at most this many entries a page, whatever MaxKeys asks


@dataclass
class _Object:
    data: bytes
    etag: str
    mtime: float
    checksum: str | None = None  # the stored additional checksum (composite for multipart)
    part_sizes: list[int] | None = None  # for an object made by a multipart upload
    meta: dict[str, str] = field(default_factory=dict)  # user metadata
    content_type: str = "binary/octet-stream"  # S3's default


@dataclass
class _Part:
    data: bytes
    etag: str
    checksum: str | None


@dataclass
class _Upload:
    key: str
    upload_id: str
    initiated: float
    algorithm: Algorithm | None
    parts: dict[int, _Part] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


def _read(body: Body | memoryview) -> bytes:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    body.seek(0)
    return body.read()


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _error(cls: type[StoreError], what: str, code: str, message: str) -> StoreError:
    """Our exception for an S3 error answer, worded as `store.classify` words it."""
    return cls(f"{what}: {code} {message}")


def _bad_digest(what: str, name: str) -> StoreError:
    # BadDigest is retried by S3Store (a body damaged on the way); it fails the same way each
    # time, so S3Store gives up after its deadline with this code in the message.
    return _error(TransientError, what, "BadDigest",
                  f"The {name} you specified did not match the calculated checksum. (gave up)")


class MemStore:
    """One bucket in memory; see the module docstring. `encryption` plays a bucket whose
    default encryption is that (``aws:kms``: ETags are no MD5s, as on AWS)."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 encryption: str | None = None) -> None:
        self.clock = clock
        self.encryption = encryption
        self.objects: dict[str, _Object] = {}
        self.uploads: dict[str, _Upload] = {}
        self.calls: list[str] = []  # one line per request, as "HEAD key", for request counts
        self._upload_numbers = itertools.count(1)

    # -- helpers for tests ------------------------------------------------------------------

    def stored_keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def data(self, key: str) -> bytes:
        return self.objects[key].data

    def put_now(self, key: str, data: bytes = b"") -> None:
        """Store an object at once, as another client would (no checkpoint, no request)."""
        self.objects[key] = _Object(data, self._etag(_md5(data).hex()), self._now())

    # -- plumbing ---------------------------------------------------------------------------

    async def _request(self, line: str) -> None:
        self.calls.append(line)
        await trio.lowlevel.checkpoint()

    def _now(self) -> float:
        return float(int(self.clock()))  # S3's Last-Modified has whole seconds

    def _etag(self, md5_etag: str) -> str:
        """The ETag S3 gives: the MD5-based one, or an opaque one under SSE-KMS / SSE-C."""
        if etag_is_md5(self.encryption):
            return md5_etag
        _, dash, n = md5_etag.partition("-")
        return secrets.token_hex(16) + (f"-{n}" if dash else "")

    def _info(self, key: str, obj: _Object, checksum: bool = False,
              head: bool = False) -> ObjectInfo:
        """As HEAD (`head`: with metadata and Content-Type) or LIST answer for the object."""
        return ObjectInfo(key, len(obj.data), obj.mtime, obj.etag,
                          obj.checksum if checksum else None, self.encryption,
                          meta=dict(obj.meta) if head else None,
                          content_type=obj.content_type if head else None)

    def _upload(self, what: str, key: str, upload_id: str) -> _Upload:
        up = self.uploads.get(upload_id)
        if up is None or up.key != key:
            raise _error(NoSuchKey, what, "NoSuchUpload", "The specified upload does not "
                         "exist. The upload ID may be invalid, or the upload may have been "
                         "aborted or completed.")
        return up

    def _source(self, what: str, src: str, etag: str) -> _Object:
        obj = self.objects.get(src)
        if obj is None:
            raise _error(NoSuchKey, what, "NoSuchKey", "The specified key does not exist.")
        if obj.etag != etag:
            raise PreconditionFailed(f"{what}: the object changed (ETag no longer matches)")
        return obj

    @staticmethod
    def _check_extra(what: str, data: bytes, checksum: Extra | None) -> str | None:
        if checksum is None:
            return None
        algo, value = checksum
        if algo.part(data) != value:
            raise _bad_digest(what, algo.s3_name)
        return value

    # -- metadata ---------------------------------------------------------------------------

    async def check_bucket(self) -> None:
        await self._request("HEAD-BUCKET")

    async def head(self, key: str, checksum: bool = False) -> ObjectInfo | None:
        await self._request(f"HEAD {key}")
        obj = self.objects.get(key)
        return None if obj is None else self._info(key, obj, checksum, head=True)

    async def list_page(self, prefix: str, delimiter: str | None = "/",
                        token: str | None = None, max_keys: int = 1000) -> ListPage:
        await self._request(f"LIST {prefix!r}")
        after, after_prefix = _decode_token(token)
        limit = min(max_keys, MAX_LIST_KEYS)
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last = ("k", "")
        for key in sorted(k for k in self.objects if k.startswith(prefix)):
            if after is not None and (key <= after or (after_prefix and key.startswith(after))):
                continue
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            common = key[:cut + len(delimiter)] if delimiter and cut >= 0 else None
            if common is not None and prefixes and prefixes[-1] == common:
                continue
            if len(objects) + len(prefixes) == limit:
                return ListPage(objects, prefixes, _encode_token(last))
            if common is not None:
                prefixes.append(common)
                last = ("p", common)
            else:
                objects.append(self._info(key, self.objects[key]))
                last = ("k", key)
        return ListPage(objects, prefixes, None)

    # -- data -------------------------------------------------------------------------------

    async def get_range(self, key: str, start: int, into: memoryview, etag: str) -> None:
        end = start + len(into)
        what = f"GET {key} [{start}, {end})"
        await self._request(what)
        obj = self.objects.get(key)
        if obj is None:
            raise PreconditionFailed(f"{what}: the object was deleted while the file was "
                                     "open; bytes not yet read cannot be read")
        if obj.etag != etag:
            raise PreconditionFailed(f"{what}: the object changed (ETag no longer matches)")
        got = obj.data[start:end]
        into[:len(got)] = got
        if len(got) != len(into):  # S3Store: no such bytes under this ETag, permanent
            raise SizeMismatch(f"{key}: the object's size and its bytes disagree: its size "
                               f"was given as at least {end} bytes, but S3 holds "
                               f"{len(obj.data)} under the same ETag {etag}")

    async def put(self, key: str, body: Body, md5: bytes, checksum: Extra | None = None,
                  meta: dict[str, str] | None = None,
                  content_type: str | None = None) -> Sent:
        what = f"PUT {key}"
        await self._request(what)
        data = _read(body)
        if _md5(data) != md5:
            raise _bad_digest(what, "Content-MD5")
        stored = self._check_extra(what, data, checksum)
        obj = _Object(data, self._etag(_md5(data).hex()), self._now(), stored,
                      meta=dict(meta or {}), content_type=content_type or "binary/octet-stream")
        self.objects[key] = obj
        await trio.lowlevel.checkpoint()
        return Sent(obj.etag, stored, self.encryption)

    async def create_upload(self, key: str, algorithm: Algorithm | None = None,
                            meta: dict[str, str] | None = None,
                            content_type: str | None = None) -> Started:
        await self._request(f"CREATE-UPLOAD {key}")
        upload_id = f"mem-{next(self._upload_numbers)}-{secrets.token_hex(8)}"
        self.uploads[upload_id] = _Upload(key, upload_id, self.clock(), algorithm,
                                          meta=dict(meta or {}), content_type=content_type)
        return Started(upload_id, self.encryption)

    def _check_part_number(self, what: str, number: int) -> None:
        if not 1 <= number <= S3_MAX_PARTS:
            raise _error(StoreError, what, "InvalidArgument",
                         f"Part number must be an integer between 1 and {S3_MAX_PARTS}, "
                         "inclusive")

    async def upload_part(self, key: str, upload_id: str, number: int,
                          body: Body, md5: bytes, checksum: Extra | None = None) -> Sent:
        what = f"PART {number} of {key}"
        await self._request(what)
        data = _read(body)
        up = self._upload(what, key, upload_id)
        self._check_part_number(what, number)
        if _md5(data) != md5:
            raise _bad_digest(what, "Content-MD5")
        if checksum is not None and checksum[0] != up.algorithm:
            raise _error(StoreError, what, "InvalidRequest",
                         f"Checksum Type mismatch occurred, expected checksum Type: "
                         f"{up.algorithm and up.algorithm.name}, actual checksum Type: "
                         f"{checksum[0].name}")
        stored = self._check_extra(what, data, checksum)
        if stored is None and up.algorithm is not None:
            stored = up.algorithm.part(data)
        part = _Part(data, self._etag(_md5(data).hex()), stored)
        up.parts[number] = part
        await trio.lowlevel.checkpoint()
        return Sent(part.etag, checksum[1] if checksum else None, self.encryption)

    async def complete_upload(self, key: str, upload_id: str,
                              parts: Sequence[PartDone]) -> str:
        what = f"COMPLETE {key}"
        await self._request(what)
        up = self._upload(what, key, upload_id)
        chosen = self._chosen_parts(what, up, parts)
        digests = b"".join(_md5(p.data) for p in chosen)
        etag = self._etag(f"{_md5(digests).hex()}-{len(chosen)}")
        summed = None
        if up.algorithm is not None:
            summed = up.algorithm.composite([p.checksum or "" for p in chosen])
        self.objects[key] = _Object(b"".join(p.data for p in chosen), etag, self._now(),
                                    summed, [len(p.data) for p in chosen], meta=up.meta,
                                    content_type=up.content_type or "binary/octet-stream")
        del self.uploads[upload_id]
        await trio.lowlevel.checkpoint()
        return etag

    def _chosen_parts(self, what: str, up: _Upload, parts: Sequence[PartDone]) -> list[_Part]:
        if not parts:
            raise _error(StoreError, what, "MalformedXML", "The XML you provided was not "
                         "well-formed or did not validate against our published schema")
        numbers = [n for n, _, _ in parts]
        if numbers != sorted(set(numbers)):
            raise _error(StoreError, what, "InvalidPartOrder", "The list of parts was not in "
                         "ascending order. Parts must be ordered by part number.")
        chosen = []
        for number, etag, extra in parts:
            part = up.parts.get(number)
            if part is None or part.etag != etag or (
                    extra is not None and extra[1] != part.checksum):
                raise _error(StoreError, what, "InvalidPart", f"Part {number} could not be "
                             "found, or its entity tag or checksum did not match.")
            chosen.append(part)
        for number, part in zip(numbers[:-1], chosen[:-1], strict=True):
            if len(part.data) < S3_MIN_PART:
                raise _error(StoreError, what, "EntityTooSmall",
                             f"Your proposed upload (part {number}, {len(part.data)} bytes) "
                             "is smaller than the minimum allowed size")
        return chosen

    async def abort_upload(self, key: str, upload_id: str) -> None:
        what = f"ABORT {key}"
        await self._request(what)
        self._upload(what, key, upload_id)
        del self.uploads[upload_id]

    async def copy(self, src: str, dst: str, etag: str, meta: dict[str, str] | None = None,
                   content_type: str | None = None) -> str:
        """CopyObject: the copy is one part, so its ETag is the MD5 of its bytes (as on AWS,
        even when the source was a multipart upload). Metadata is the source's, or `meta`
        (REPLACE, the Content-Type kept unless given)."""
        what = f"COPY {src} -> {dst}"
        await self._request(what)
        obj = self._source(what, src, etag)
        self.objects[dst] = _Object(
            obj.data, self._etag(_md5(obj.data).hex()), self._now(),
            meta=dict(obj.meta if meta is None else meta),
            content_type=content_type or obj.content_type)
        await trio.lowlevel.checkpoint()
        return self.objects[dst].etag

    async def copy_part_checked(self, dst: str, upload_id: str, number: int, src: str,
                                size: int, etag: str, checksum: Algorithm | None,
                                start: int = 0) -> Sent:
        got = await self.copy_part(dst, upload_id, number, src, start, start + size, etag)
        stored = self.uploads[upload_id].parts[number].checksum
        return Sent(got, stored if checksum is not None else None)

    async def copy_part(self, dst: str, upload_id: str, number: int, src: str, start: int,
                        end: int, etag: str) -> str:
        what = f"COPY-PART {number} {src} -> {dst}"
        await self._request(what)
        up = self._upload(what, dst, upload_id)
        self._check_part_number(what, number)
        obj = self._source(what, src, etag)
        if not 0 <= start < end <= len(obj.data):
            raise _error(StoreError, what, "InvalidRange",
                         "The requested range is not satisfiable")
        data = obj.data[start:end]
        stored = up.algorithm.part(data) if up.algorithm is not None else None
        up.parts[number] = _Part(data, self._etag(_md5(data).hex()), stored)
        await trio.lowlevel.checkpoint()
        return up.parts[number].etag

    async def part_size(self, key: str, number: int, etag: str) -> int | None:
        what = f"HEAD {key} part {number}"
        await self._request(what)
        obj = self.objects.get(key)
        if obj is None:
            raise _error(NoSuchKey, what, "404", "")
        if obj.etag != etag:
            raise PreconditionFailed(f"{what}: the object changed (ETag no longer matches)")
        sizes = obj.part_sizes or [len(obj.data)]
        if not 1 <= number <= len(sizes):
            raise _error(StoreError, what, "416", "")
        return None if obj.part_sizes is None else sizes[number - 1]

    async def delete(self, key: str) -> None:
        await self._request(f"DELETE {key}")
        self.objects.pop(key, None)

    async def upload_parts(self, key: str, upload_id: str) -> tuple[int, int]:
        what = f"LIST-PARTS {key}"
        await self._request(what)
        up = self._upload(what, key, upload_id)
        return len(up.parts), sum(len(p.data) for p in up.parts.values())

    async def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        await self._request("LIST-UPLOADS")
        found = [u for u in self.uploads.values() if u.key.startswith(prefix)]
        found.sort(key=lambda u: (u.key, u.initiated))
        return [UploadInfo(u.key, u.upload_id, u.initiated) for u in found]


def _encode_token(last: tuple[str, str]) -> str:
    kind, name = last
    return base64.urlsafe_b64encode(f"{kind}{name}".encode()).decode("ascii")


def _decode_token(token: str | None) -> tuple[str | None, bool]:
    """The last key or common prefix of the page before, and whether it was a common prefix
    (S3's tokens are opaque too)."""
    if token is None:
        return None, False
    text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
    return text[1:], text[0] == "p"


class FirstGetMemStore(MemStore):
    """A MemStore that also offers `get_first` (s3mount/objects.py `FirstGet`): a GET of an
    object's first bytes pinned to no ETag, answered as a HEAD is."""

    async def get_first(self, key: str, into: memoryview) -> tuple[ObjectInfo, int] | None:
        await self._request(f"GET {key} [0, {len(into)})")
        obj = self.objects.get(key)
        if obj is None:
            return None
        n = min(len(into), len(obj.data))
        into[:n] = obj.data[:n]
        return self._info(key, obj, head=True), n
