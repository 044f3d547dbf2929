"""Rename on S3, which has none: a verified server-side copy, then the delete of the source.

The copy must come back with the source's ETag and size before the source is deleted, so a
failure never loses both: a copy that does not match is removed and the source stays. S3
gives a copy the source's ETag when a single-part object is copied with CopyObject, and
when a multipart object is copied with UploadPartCopy over the source's own parts (their
sizes from HEAD ?partNumber=N); some servers (SeaweedFS) instead keep any ETag on
CopyObject, so that is tried next for objects up to 5 GiB. When no copy can be verified
(ETags that are not MD5s, a server that computes its own), rename fails with EXDEV, and mv
falls back to copying through the mount, where every write is verified. Empty objects
(directory markers) are written anew rather than copied.

`check` holds the rules of which renames are possible at all; `move_dir` moves a directory's
keys and its marker. The namespace (namespace.py) resolves the names, settles files being
written, and updates its tables after a move.

A directory is every key under its prefix: each is copied and verified, and only when all
are does the deletion of the sources begin, so a failure part way leaves every object in at
least one place. At most `max_keys` keys, beyond which rename refuses with EXDEV too. None of
this is atomic: another client can see both names for a while.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from .config import S3_MAX_PUT
from .errors import FsError, IntegrityError, StoreError, first_error
from .etag import EMPTY_MD5, etag_is_md5
from .keys import KeyMap
from .objects import ObjectInfo, Store
from .s3view import Kind, S3View

log = logging.getLogger(__name__)
COPY_CONCURRENCY = 8



def _unverifiable(key: str, why: str) -> FsError:
    return FsError(f"{key}: a server-side copy could not be verified ({why}); refused "
                   "with EXDEV, so mv copies through the mount instead", errno.EXDEV)


def parts_of(etag: str) -> int:
    """Number of parts of a multipart object from its ETag (``abc-3`` -> 3), else 0."""
    _, dash, n = etag.rpartition("-")
    return int(n) if dash and n.isdigit() else 0


async def part_layout(store: Store, key: str, size: int, etag: str) -> list[int] | None:
    """The part sizes of multipart object `key` (`size` bytes, ETag `etag`; HEAD
    ?partNumber=N, pinned to the ETag), or None when the server does not tell them."""
    n = parts_of(etag)
    sizes: list[int | None] = [None] * n

    async def one(number: int, _start: int, _size: int) -> None:
        sizes[number - 1] = await store.part_size(key, number, etag)

    await each_part([0] * n, one, trio.Semaphore(COPY_CONCURRENCY))
    if n and all(s is not None for s in sizes) and sum(s or 0 for s in sizes) == size:
        return [s or 0 for s in sizes]
    return None


async def each_part(sizes: Sequence[int], one: Callable[[int, int, int], Awaitable[None]],
                    limit: trio.Semaphore | trio.CapacityLimiter) -> None:
    """Run `one(number, start, size)` for parts 1..N of these sizes at once, each holding
    `limit`; the first failure is raised (the others are cancelled)."""
    async def run(number: int, start: int, size: int) -> None:
        async with limit:
            await one(number, start, size)

    try:
        async with trio.open_nursery() as nursery:
            start = 0
            for number, size in enumerate(sizes, 1):
                nursery.start_soon(run, number, start, size)
                start += size
    except BaseExceptionGroup as group:
        raise first_error(group) from None


def check(src_kind: Kind, old: str, dst_kind: Kind | None, new: str, noreplace: bool,
          src_busy: bool = False, dst_busy: bool = False) -> None:
    """Refuse a rename of `old` onto `new` that no copy could perform (POSIX's errnos), or
    that would move a file being written (`src_busy`: it or a file below it) or replace one
    (`dst_busy`)."""
    if src_busy:
        raise FsError(f"{old!r} is being written; close it before renaming it", errno.EBUSY)
    if src_kind == "dir" and new.startswith(old + "/"):
        raise FsError(f"cannot move {old!r} into itself ({new!r})", errno.EINVAL)
    if dst_kind is None:
        return
    if noreplace:
        raise FsError(f"{new!r} exists (RENAME_NOREPLACE)", errno.EEXIST)
    if dst_busy:
        raise FsError(f"{new!r} is being written; close it first", errno.EBUSY)
    if src_kind == "file" and dst_kind == "dir":
        raise FsError(f"{new!r} is a directory", errno.EISDIR)
    if src_kind == "dir" and dst_kind == "file":
        raise FsError(f"{new!r} is not a directory", errno.ENOTDIR)


class Renamer:
    def __init__(self, store: Store, max_keys: int, keys: KeyMap | None = None) -> None:
        self.store = store
        self.max_keys = max_keys
        self.keys = keys or KeyMap()
        self.view = S3View(store, self.keys)

    async def move_dir(self, old: str, new: str) -> int:
        """Move directory `old` (every key below it, and its marker) to `new`; returns how
        many keys were below it."""
        n = await self.move_tree(self.keys.dir_prefix(old), self.keys.dir_prefix(new))
        await self._move_marker(old, new)
        return n

    async def _move_marker(self, old: str, new: str) -> None:
        """A marker outside the directory's prefix (a suffix such as `_$folder$`) moves too;
        a directory without one gets one, so that it exists under its new name."""
        marker = self.keys.marker_key(old)
        if marker.startswith(self.keys.dir_prefix(old)):
            if not await self.view.stat(new):
                await self.store.put(self.keys.marker_key(new), b"", EMPTY_MD5)
            return
        if await self.store.head(marker) is not None:
            await self.move_file(marker, self.keys.marker_key(new))
        elif not await self.view.stat(new):
            await self.store.put(self.keys.marker_key(new), b"", EMPTY_MD5)

    async def move_file(self, src: str, dst: str,
                        meta: dict[str, str] | None = None) -> ObjectInfo:
        """Move object `src` to `dst`, its user metadata updated with `meta` if given."""
        info = await self.store.head(src)
        if info is None:
            raise FsError(f"{src}: no such object", errno.ENOENT)
        copied = await self.copy(info, dst, meta)
        await self.store.delete(src)
        return copied

    async def copy(self, info: ObjectInfo, dst: str,
                   meta: dict[str, str] | None = None) -> ObjectInfo:
        """Copy the object `info` (as HEAD answered) to `dst` and verify it; a copy that does
        not match is removed. The copy has the source's user metadata, updated with `meta`,
        and its Content-Type. Raises EXDEV when this server's copies cannot be verified."""
        src = info.key
        if meta is not None:  # changes, merged into the source's own
            meta = {**(info.meta or {}), **meta}
        kept = info.meta if meta is None else meta  # for the copies that are new objects
        if info.size == 0:  # markers: some servers cannot copy them
            await self.store.put(dst, b"", EMPTY_MD5, meta=kept,
                                 content_type=info.content_type)
            return await self._verified(info, dst)
        if not etag_is_md5(info.encryption):
            raise _unverifiable(src, "its ETag is not an MD5 (SSE-KMS or SSE-C)")
        attempts: list[Callable[[], Awaitable[object]]] = []
        if parts_of(info.etag):  # S3 gives a copy over the same parts the same ETag
            attempts.append(lambda: self._copy_parts(info, dst, kept))
        if info.size <= S3_MAX_PUT:  # S3 keeps a single-part ETag; some servers any ETag
            attempts.append(lambda: self.store.copy(src, dst, info.etag, meta=meta))
        got: ObjectInfo | None = None
        for attempt in attempts:
            await attempt()
            got = await self._verified(info, dst)
            if got.etag == info.etag:
                return got
        await self._remove(dst)
        raise _unverifiable(src, f"the server's copy has ETag {got and got.etag}, not "
                            f"{info.etag}")

    async def _verified(self, info: ObjectInfo, dst: str) -> ObjectInfo:
        got = await self.store.head(dst)
        if got is None:
            raise IntegrityError(f"{dst}: missing right after copying {info.key} to it")
        if got.size != info.size:
            await self._remove(dst)
            raise IntegrityError(
                f"copy of {info.key} to {dst} has {got.size} bytes, not {info.size}; the "
                f"copy was removed, {info.key} is intact")
        return got

    async def _remove(self, key: str) -> None:
        try:
            await self.store.delete(key)
        except StoreError as exc:
            log.error("%s: could not delete the copy that failed verification: %s", key, exc)

    async def _copy_parts(self, info: ObjectInfo, dst: str,
                          meta: dict[str, str] | None) -> None:
        sizes = await part_layout(self.store, info.key, info.size, info.etag)
        if sizes is None:
            raise _unverifiable(info.key, "the server does not report its part sizes")
        started = await self.store.create_upload(dst, meta=meta,
                                                 content_type=info.content_type)
        etags: dict[int, str] = {}

        async def one(number: int, start: int, size: int) -> None:
            etags[number] = await self.store.copy_part(
                dst, started.upload_id, number, info.key, start, start + size, info.etag)
        try:
            await each_part(sizes, one, trio.Semaphore(COPY_CONCURRENCY))
            await self.store.complete_upload(
                dst, started.upload_id, [(n, etags[n], None) for n in sorted(etags)])
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self.store.abort_upload(dst, started.upload_id)
                except StoreError as exc:
                    log.error("%s: could not abort the copy's upload: %s", dst, exc)
            raise

    async def move_tree(self, src_prefix: str, dst_prefix: str) -> int:
        """Move every key under `src_prefix` to `dst_prefix`; returns how many."""
        objects = await self._all_under(src_prefix)
        limit = trio.Semaphore(COPY_CONCURRENCY)

        async def copy_one(info: ObjectInfo) -> None:
            async with limit:
                await self.copy(info, dst_prefix + info.key[len(src_prefix):])

        try:
            async with trio.open_nursery() as nursery:
                for info in objects:
                    nursery.start_soon(copy_one, info)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        # Every copy is verified: only now may sources go.
        async def delete_one(key: str) -> None:
            async with limit:
                await self.store.delete(key)

        try:
            async with trio.open_nursery() as nursery:
                for info in objects:
                    nursery.start_soon(delete_one, info.key)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        return len(objects)

    async def _all_under(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        token: str | None = None
        while True:
            page = await self.store.list_page(prefix, None, token)
            out += page.objects
            if len(out) > self.max_keys:
                raise FsError(
                    f"{prefix!r} holds more than {self.max_keys} keys (--rename-max-keys): "
                    "renaming it would copy each one; refused (EXDEV, so mv copies and "
                    "deletes file by file instead)", errno.EXDEV)
            token = page.next_token
            if token is None:
                return out
