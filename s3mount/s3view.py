"""What exists at a path, and what a directory holds, as S3 shows it (no caching, no state).

A directory is a common prefix, or a zero-byte marker object named path + dir-suffix. If a file
and a directory share a name, the directory wins and the file is hidden. Listings stream page by
page: a directory of any size is listed in memory bounded by one page plus the few names that
may still be shadowed (see `_Shadows`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import trio

from .errors import first_error
from .keys import KeyMap
from .meta import FileMeta
from .objects import ListPage, ObjectInfo, Store

log = logging.getLogger(__name__)

Kind = Literal["file", "dir"]


@dataclass(frozen=True)
class Entry:
    kind: Kind
    size: int = 0
    mtime: float = 0.0
    etag: str = ""
    # What the object's user metadata says (times, mode, owner, link-ness), from a HEAD;
    # None where only a LIST was seen, which carries none.
    meta: FileMeta | None = None

    @property
    def is_symlink(self) -> bool:
        return self.kind == "file" and self.meta is not None and self.meta.is_symlink


def file_entry(info: ObjectInfo, listing_attrs: bool = False) -> Entry:
    """The entry of a file from what S3 answered about its object (HEAD: with metadata). With
    `listing_attrs` (--attrs-from listing) a LIST's answer is complete: no metadata to read."""
    if info.meta is not None:
        meta: FileMeta | None = FileMeta.from_headers(info.meta, info.key)
    else:
        meta = FileMeta() if listing_attrs else None
    return Entry("file", info.size, info.mtime, info.etag, meta)


class S3View:
    def __init__(self, store: Store, keys: KeyMap, page_size: int = 1000,
                 listing_attrs: bool = False) -> None:
        self.store = store
        self.keys = keys
        self.page_size = page_size
        # --attrs-from listing: a listed file's entry is complete without its HEAD
        self.listing_attrs = listing_attrs
        self.mount_time = time.time()

    def dir_entry(self, mtime: float | None = None) -> Entry:
        return Entry("dir", 0, mtime if mtime is not None else self.mount_time)

    async def stat(self, path: str) -> Entry | None:
        """The entry at `path` (see `stat_listing`)."""
        return (await self.stat_listing(path))[0]

    async def stat_listing(self, path: str, list_keys: int = 0,
                           head: Callable[[str], Awaitable[ObjectInfo | None]] | None = None
                           ) -> tuple[Entry | None, dict[str, Entry] | None]:
        """The entry at `path`: a directory if any key lies below it or its marker exists,
        else a file if its key exists, else None. The S3 calls run concurrently. With
        `list_keys`, the LIST that looks below `path` asks for that many names, one level
        deep: a directory holding no more comes back with its complete listing as well (what
        `small_listing` returns), so that looking up its entries next costs no request.
        `head` asks for the file's key in place of the store's HEAD (a GET that also fetches
        its first bytes, reader.py `Readers.get_first`)."""
        if path == "":
            return self.dir_entry(), None
        found: dict[str, object] = {}

        async def run(name: str, fn: object) -> None:
            found[name] = await fn  # type: ignore[misc]

        prefix = self.keys.dir_prefix(path)
        try:
            async with trio.open_nursery() as n:
                n.start_soon(run, "file", (head or self.store.head)(self.keys.file_key(path)))
                n.start_soon(run, "below", self.store.list_page(
                    prefix, "/" if list_keys else None, None, max(list_keys, 1)))
                if self.keys.dir_suffix != "/":
                    n.start_soon(run, "marker", self.store.head(self.keys.marker_key(path)))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        below = found["below"]
        marker = found.get("marker")
        assert isinstance(below, ListPage)
        if below.objects or below.prefixes or marker is not None:
            mtime = marker.mtime if isinstance(marker, ObjectInfo) else None
            if mtime is None and below.objects and below.objects[0].key == self.keys.marker_key(
                    path):
                mtime = below.objects[0].mtime
            listing = (self._listing(path, prefix, below)
                       if list_keys and below.next_token is None else None)
            return self.dir_entry(mtime), listing
        info = found["file"]
        if isinstance(info, ObjectInfo):
            return file_entry(info), None
        return None, None

    async def children(self, path: str) -> AsyncIterator[tuple[str, Entry]]:
        """Every (name, entry) in directory `path`, each name once, directories winning."""
        prefix = self.keys.dir_prefix(path)
        shadows = _Shadows(self.keys.dir_suffix, self)
        token: str | None = None
        while True:
            page = await self.store.list_page(prefix, "/", token, self.page_size)
            for rel, name, entry in self._page_items(path, prefix, page):
                for item in shadows.advance(rel):
                    yield item
                shadows.add(name, entry)
            if page.next_token is None:
                break
            token = page.next_token
        for item in shadows.drain():
            yield item

    async def small_listing(self, path: str, max_keys: int = 0) -> dict[str, Entry] | None:
        """Every name in directory `path` with its entry, from one LIST page (of `max_keys`
        names, else a full page); None when the directory holds more."""
        prefix = self.keys.dir_prefix(path)
        page = await self.store.list_page(prefix, "/", None, max_keys or self.page_size)
        if page.next_token is not None:
            return None
        return self._listing(path, prefix, page)

    def page_listing(self, path: str, page: ListPage) -> dict[str, Entry]:
        """The entries of directory `path` in one complete page listed one level deep."""
        return self._listing(path, self.keys.dir_prefix(path), page)

    def _listing(self, path: str, prefix: str, page: ListPage) -> dict[str, Entry]:
        """The entries of one complete page, each name once, directories winning."""
        shadows = _Shadows(self.keys.dir_suffix, self)
        out: dict[str, Entry] = {}
        for rel, name, entry in self._page_items(path, prefix, page):
            out.update(shadows.advance(rel))
            shadows.add(name, entry)
        out.update(shadows.drain())
        return out

    def _page_items(self, path: str, prefix: str,
                    page: ListPage) -> Iterator[tuple[str, str, Entry]]:
        """(key relative to the directory, entry name, entry) in key order, valid names only."""
        items: list[tuple[str, ObjectInfo | None]] = [(p, None) for p in page.prefixes]
        items += [(o.key, o) for o in page.objects]
        items.sort(key=lambda t: t[0])
        suffix = self.keys.dir_suffix
        for key, obj in items:
            rel = key[len(prefix):]
            if obj is None:
                entry = self.dir_entry()
            elif key == self.keys.marker_key(path) or key == prefix:
                continue  # this directory's own marker
            elif suffix != "/" and rel.endswith(suffix) and obj.size == 0:
                key = key[: -len(suffix)]
                entry = self.dir_entry(obj.mtime)
            else:
                entry = file_entry(obj, self.listing_attrs)
            name = self.keys.child_name(path, key)
            if name is not None:
                yield rel, name, entry

    async def is_empty(self, path: str) -> bool:
        """True if nothing but the directory's own marker lies below `path`."""
        page = await self.store.list_page(self.keys.dir_prefix(path), None, None, 2)
        own = {self.keys.marker_key(path), self.keys.dir_prefix(path)}
        return all(o.key in own for o in page.objects)


class _Shadows:
    """Holds each name back until the listing has passed every key that could shadow it.

    Keys for a name n are n (file), n + "/" (common prefix) and n + suffix (marker); the
    listing is sorted, so once it passes max(n + "/", n + suffix) nothing more about n can come.
    Only names that are prefixes of the keys in between are held: a handful, in practice.
    """

    def __init__(self, suffix: str, view: S3View) -> None:
        self.suffix = suffix
        self.view = view
        self.pending: dict[str, Entry] = {}

    def _limit(self, name: str) -> str:
        return max(name + "/", name + self.suffix)

    def advance(self, rel: str) -> Iterator[tuple[str, Entry]]:
        done = [n for n in self.pending if rel > self._limit(n)]
        for n in done:
            yield n, self.pending.pop(n)

    def add(self, name: str, entry: Entry) -> None:
        old = self.pending.get(name)
        if old is None or (entry.kind == "dir" and old.kind == "file"):
            if old is not None:
                log.debug("file %r is hidden by a directory of the same name", name)
            self.pending[name] = entry
        elif old.kind == "dir" and entry.kind == "dir" and entry.mtime != self.view.mount_time:
            self.pending[name] = entry  # keep the marker's mtime

    def drain(self) -> Iterator[tuple[str, Entry]]:
        yield from self.pending.items()
        self.pending.clear()
