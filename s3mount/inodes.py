"""The inode table: inode <-> path, kernel lookup counts and forget, attribute and negative caches.

A path keeps its inode while the kernel remembers it (lookup count > 0) or a handle is open on
it. Attributes are trusted for `ttl` seconds; so is the knowledge that a path does not exist,
and a directory's complete list of names (`Listing`): a name not in it does not exist, and a
name in it that S3 listed has the entry the listing showed.
"""

from __future__ import annotations

import errno
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import FsError
from .meta import FileMeta
from .s3view import Entry, Kind

ROOT_INODE = 1
NEGATIVE_CACHE_MAX = 10_000
LISTINGS_MAX = 64  # directories whose complete list of names is kept
LISTING_NAMES_MAX = 2_000  # names in one kept list (one LIST page, plus names written here)


@dataclass
class Node:
    ino: int
    path: str
    kind: Kind
    size: int = 0
    mtime: float = 0.0
    etag: str = ""
    meta: FileMeta | None = None  # from the object's metadata (None: not read yet)
    lookups: int = 0
    opens: int = 0
    expires: float = 0.0
    writing: bool = False  # being written here: its size and existence are ours, not S3's
    detached: bool = field(default=False)  # no longer reachable by its path
    pinned: bool = False  # a directory we emptied ourselves: it exists until rmdir or forget
    writes: int = 0  # names this mount made appear in this directory (see InodeTable.wrote)
    etag_seen: str = ""  # the ETag `meta` belongs to
    target: bytes | None = None  # a symbolic link's target, once read
    meta_pending: bool = False  # `meta` was set here and is not stored yet: S3's is older

    def apply(self, entry: Entry, expires: float) -> None:
        self.size, self.mtime, self.etag = entry.size, entry.mtime, entry.etag
        if not self.meta_pending and (entry.meta is not None or entry.etag != self.etag_seen):
            self.meta = entry.meta  # (a LIST entry of the same object keeps what HEAD said)
        if entry.etag != self.etag_seen:
            self.target = None
        self.etag_seen = entry.etag
        self.expires = expires

    @property
    def is_symlink(self) -> bool:
        return self.kind == "file" and self.meta is not None and self.meta.is_symlink


@dataclass
class Listing:
    """Every name in a directory, as a complete listing showed it (or as mkdir left it), plus
    the names this mount has made appear since. Until `expires`, other names do not exist."""

    names: set[str]
    expires: float
    # The entries S3 listed, until this mount changes the name (create, unlink, rename).
    entries: dict[str, Entry] = field(default_factory=dict)
    # Whether a lookup answered from it may start the file's first read (namespace.py,
    # `_start_first_read`): not while one started is not taken by an open, nor after a
    # readdir of the directory.
    first_reads: bool = True
    # False: the names S3 listed are known, but a name not in them may exist (the warm-up's
    # listing of the top directory, `Namespace.warmed_up`)
    complete: bool = True


class InodeTable:
    def __init__(self, ttl: float, root_mtime: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self.next_ino = ROOT_INODE + 1
        root = Node(ROOT_INODE, "", "dir", mtime=root_mtime, lookups=1, expires=float("inf"))
        self.by_ino: dict[int, Node] = {ROOT_INODE: root}
        self.by_path: dict[str, Node] = {"": root}
        self.negative: OrderedDict[str, float] = OrderedDict()
        self.listings: OrderedDict[str, Listing] = OrderedDict()

    def __len__(self) -> int:
        return len(self.by_ino)

    def get(self, ino: int) -> Node:
        try:
            return self.by_ino[ino]
        except KeyError:
            raise FsError(f"unknown inode {ino}", errno.ENOENT) from None

    def cached(self, path: str) -> Node | None:
        """The node at `path` if its attributes are still fresh."""
        node = self.by_path.get(path)
        if node is not None and (node.expires > self.clock() or node.writing):
            return node
        return None

    def fresh(self, node: Node) -> bool:
        return node.expires > self.clock() or node.writing

    def upsert(self, path: str, entry: Entry) -> Node:
        """Record what S3 says is at `path`; a changed kind gets a new inode."""
        self.negative.pop(path, None)
        node = self.by_path.get(path)
        if node is not None and node.kind != entry.kind:
            self.detach(node)
            node = None
        if node is None:
            node = Node(self.next_ino, path, entry.kind)
            self.next_ino += 1
            self.by_ino[node.ino] = node
            self.by_path[path] = node
        if not node.writing:
            node.apply(entry, self.clock() + self.ttl)
        return node

    def detach(self, node: Node) -> None:
        """`node` is no longer at its path (deleted, replaced); it lives until forgotten."""
        if self.by_path.get(node.path) is node:
            del self.by_path[node.path]
        self._unlist(node.path)
        node.detached = True
        self._maybe_drop(node)

    def move(self, old: str, new: str) -> None:
        """Paths under `old` (and `old` itself) are now under `new` (a rename): their nodes
        keep their inodes; whatever was at a new path is detached."""
        below = old + "/"
        moving = [n for p, n in self.by_path.items() if p == old or p.startswith(below)]
        for node in moving:
            del self.by_path[node.path]
        for node in moving:
            path = new + node.path[len(old):]
            if (there := self.by_path.get(path)) is not None:
                self.detach(there)
            node.path = path
            self.by_path[path] = node
            self.negative.pop(path, None)
        self.set_missing(old)

    def forget(self, ino: int, n: int) -> None:
        node = self.by_ino.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - n)
        self._maybe_drop(node)

    def looked_up(self, node: Node) -> None:
        """The kernel now knows `node` once more (a lookup, create, mkdir or readdir entry)."""
        node.lookups += 1

    def opened(self, node: Node) -> None:
        node.opens += 1

    def closed(self, node: Node) -> None:
        node.opens -= 1
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        if node.lookups == 0 and node.opens == 0 and node.ino != ROOT_INODE:
            self.by_ino.pop(node.ino, None)
            if self.by_path.get(node.path) is node:
                del self.by_path[node.path]

    # -- negative cache ----------------------------------------------------------------------

    def known_missing(self, path: str) -> bool:
        until = self.negative.get(path)
        if until is None:
            return False
        if until > self.clock():
            return True
        del self.negative[path]
        return False

    def set_missing(self, path: str) -> None:
        self._unlist(path)
        if self.ttl <= 0:
            return
        self.negative[path] = self.clock() + self.ttl
        self.negative.move_to_end(path)
        while len(self.negative) > NEGATIVE_CACHE_MAX:
            self.negative.popitem(last=False)

    def missing_until(self, path: str) -> float | None:
        """Until when `path` is known not to exist (None: not known)."""
        until = self.negative.get(path)
        if until is not None and until > self.clock():
            return until
        dir_path, _, name = path.rpartition("/")
        listing = self.listings.get(dir_path)
        if (listing is not None and listing.complete and listing.expires > self.clock()
                and name not in listing.names):
            return listing.expires
        return None

    # -- complete listings -------------------------------------------------------------------

    def set_listing(self, dir_path: str, names: set[str], expires: float,
                    entries: dict[str, Entry] | None = None, complete: bool = True) -> None:
        """`names` are all the names in `dir_path` until `expires` (a listing's start + ttl),
        or only some of them (not `complete`); `entries` what S3 listed for them."""
        if self.ttl <= 0 or len(names) > LISTING_NAMES_MAX:
            self.listings.pop(dir_path, None)
            return
        self.listings[dir_path] = Listing(names, expires, dict(entries or {}),
                                          complete=complete)
        self.listings.move_to_end(dir_path)
        while len(self.listings) > LISTINGS_MAX:
            self.listings.popitem(last=False)

    def listed(self, path: str) -> Entry | None:
        """The entry a fresh listing of `path`'s directory showed for it, if any."""
        dir_path, _, name = path.rpartition("/")
        listing = self.listings.get(dir_path)
        if listing is None or listing.expires <= self.clock():
            return None
        return listing.entries.get(name)

    def _unlist(self, path: str) -> None:
        dir_path, _, name = path.rpartition("/")
        listing = self.listings.get(dir_path)
        if listing is not None:
            listing.entries.pop(name, None)

    def drop_listings(self, path: str) -> None:
        """Forget the listings of `path` and of the directories below it."""
        below = path + "/"
        for p in [p for p in self.listings if p == path or p.startswith(below) or path == ""]:
            del self.listings[p]

    def wrote(self, path: str) -> None:
        """This mount made `path` appear (create, a completed upload, mkdir, rename): the
        directory's listing gets the name, and a listing of it still under way is not kept
        (it may have been taken before the name appeared; see `Node.writes`)."""
        dir_path, _, name = path.rpartition("/")
        parent = self.by_path.get(dir_path)
        if parent is not None:
            parent.writes += 1
        listing = self.listings.get(dir_path)
        if listing is not None:
            listing.names.add(name)
            listing.entries.pop(name, None)
            if len(listing.names) > LISTING_NAMES_MAX:
                del self.listings[dir_path]
        self.drop_listings(path)
