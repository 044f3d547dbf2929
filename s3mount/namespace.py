"""The namespace: which names exist, what each one is, and what this mount is doing to them.

It owns the inode table and its caches (inodes.py), the key map (keys.py), the view of the
bucket (s3view.py) and the being-written state of each name: a file being written here exists
and has the size written so far, although S3 has no object for it yet, and listings include it.
Metadata changes (mkdir, rmdir, unlink, rename) are carried out here, copies by the renamer.
The Operations class (fs.py) calls one method here per FUSE request and turns what comes back
into FUSE answers.

Release is asynchronous: `close()` returns after FLUSH, and the kernel sends RELEASE later, so
the next call on the same name can arrive while the file is still being written. Every call
that can see a name therefore `settle`s it first: it waits for a file closed a moment ago to
finish (or fail) before it answers.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import trio

from . import appender, renamer
from .config import S3_MAX_PUT, Config
from .errors import FsError, StoreError
from .etag import EMPTY_MD5
from .inodes import LISTINGS_MAX, ROOT_INODE, InodeTable, Listing, Node
from .keys import NAME_MAX, KeyMap, decode_name, join, parent_of, valid_name
from .lookahead import AHEAD_HEADS, Lookahead
from .meta import (
    DEFAULT_CONTENT_TYPE,
    SYMLINK_MODE,
    FileMeta,
    guess_content_type,
    link_target,
    symlink_body,
)
from .objects import ListPage, ObjectInfo, Store, many_heads_of
from .renamer import Renamer
from .s3view import Entry, S3View, file_entry
from .writer import Upload, Uploads, UploadState

log = logging.getLogger(__name__)
LOOKUP_LIST_KEYS = 100  # names a directory's lookup lists, to know a small one completely
# How long a call on a name waits for the RELEASE of a file closed (flushed) since its last
# write: the kernel sends it right after the last close, so it comes within milliseconds
# unless the file is still open elsewhere.
SETTLE_GRACE = 2.0
FIRST_GET_PAUSE = 1.0  # seconds at least before a GET no open took is followed by another
META_DELAY = 1.0  # seconds set times wait for a rename to carry them (rsync's temporary file)


def not_found(path: str) -> FsError:
    err = FsError(f"{path!r}: no such file or directory", errno.ENOENT)
    err.log_level = "debug"
    return err


@dataclass(eq=False)
class Writing:
    """A file being written here: its node and its upload."""

    node: Node
    upload: Upload
    flushed_at: int = -1  # bytes written when it was last flushed (closed); -1: never
    released: trio.Event = field(default_factory=trio.Event)  # its last handle was released

    @property
    def idle_since_close(self) -> bool:
        return self.flushed_at == self.upload.bytes_written


class Namespace:
    def __init__(self, config: Config, store: Store, uploads: Uploads,
                 nursery: trio.Nursery | None = None) -> None:
        self.config = config
        self.store = store
        self.uploads = uploads
        self.nursery = nursery  # for metadata stored a moment later (None: at once)
        self.pending_meta: dict[int, Node] = {}  # by inode: times or modes not stored yet
        self.keys = KeyMap(config.prefix, config.dir_suffix)
        self.view = S3View(store, self.keys, listing_attrs=config.listing_attrs)
        self.inodes = InodeTable(config.metadata_ttl, self.view.mount_time)
        self.renamer = Renamer(store, config.rename_max_keys, self.keys)
        self.writing: dict[int, Writing] = {}  # by inode
        # Starts fetching a file's first read (path, entry) -> started; set by fs.py
        self.first_read: Callable[[str, Entry], bool] | None = None
        self.first_reads: dict[str, Listing] = {}  # by path: started, no open yet
        # Looks a file up by one GET of its first bytes, kept for an open (key) -> what a
        # HEAD says; set by fs.py when the store can (objects.py `FirstGet`)
        self.first_get: Callable[[str], Awaitable[ObjectInfo | None]] | None = None
        # Directories not listed where such a GET found a file no open has taken yet: none
        # other there until (monotonic time, the file's path)
        self.first_gets: dict[str, tuple[float, str]] = {}
        # Directories being listed for lookups to come (`_list_ahead`), by path
        self.listing_ahead: dict[str, trio.Event] = {}
        # The HEADs of a listed directory's files, started when `ls -l` asks for the first
        # (none with --attrs-from listing: a listed file needs no HEAD)
        self.ahead = Lookahead(nursery if config.metadata_ttl > 0
                               and not config.listing_attrs else None,
                               self._fetch_ahead, min(AHEAD_HEADS, config.max_connections - 4),
                               config.metadata_ttl)

    # -- names ------------------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        return self.inodes.get(ino)

    def path_of(self, parent_ino: int, raw: bytes) -> str:
        """The path of entry `raw` in directory `parent_ino`; EINVAL for no valid name."""
        parent = self.inodes.get(parent_ino)
        if parent.kind != "dir":
            raise FsError(f"{parent.path!r} is not a directory", errno.ENOTDIR)
        name = decode_name(raw)
        if name == ".":
            return parent.path
        if name == "..":
            return parent_of(parent.path)
        if len(raw) > NAME_MAX:  # the kernel leaves this check to the filesystem
            raise FsError(f"name {name[:40]!r}... is {len(raw)} bytes; a file name may have "
                          f"at most {NAME_MAX} bytes", errno.ENAMETOOLONG)
        if not valid_name(name):
            raise FsError(f"{name!r} is not a valid name", errno.EINVAL)
        return join(parent.path, name)

    def size(self, node: Node) -> int:
        w = self.writing.get(node.ino)
        return w.upload.bytes_written if w is not None else node.size

    def check_writable(self) -> None:
        if self.config.read_only:
            raise FsError("the mount is read-only", errno.EROFS)

    # -- lookups ----------------------------------------------------------------------------

    async def lookup(self, parent_ino: int, raw: bytes) -> Node:
        """The node of an entry, counted as known to the kernel; ENOENT for no valid name."""
        try:
            path = self.path_of(parent_ino, raw)
        except FsError as exc:
            if exc.errno_ not in (errno.EINVAL, errno.ENAMETOOLONG):
                raise
            raise not_found(raw.decode(errors="replace")) from None
        node = await self.resolve(path)
        self.inodes.looked_up(node)
        return node

    def looked_up(self, node: Node) -> None:
        """The kernel was told of `node` once more (a readdir entry)."""
        self.inodes.looked_up(node)

    def forget(self, ino: int, n: int) -> None:
        self.inodes.forget(ino, n)

    async def getattr(self, ino: int) -> Node:
        return await self.refresh(self.inodes.get(ino))

    async def resolve(self, path: str) -> Node:
        """The node at `path`, from the cache when fresh, else from S3; ENOENT if none."""
        node = self.inodes.cached(path)
        if node is not None and (node.meta is not None or node.kind != "file" or node.writing):
            self.ahead.claimed(path)
            return node
        known = self.inodes.by_path.get(path)
        if (known is not None and known.kind == "file" and known.meta is None
                and not known.writing and await self._wait_ahead(path)):
            node = self.inodes.cached(path)
            if node is not None and node.meta is not None:
                return node
        if node is not None:  # listed (LIST has no metadata): its HEAD says the rest
            entry = await self._head_file(path)
            if entry is not None:
                return self.inodes.upsert(path, entry)
        entry = None
        if self.first_get is None and (ev := self.listing_ahead.get(parent_of(path))) is not None:
            await ev.wait()  # the directory's listing is on its way: it answers
        if not self.inodes.known_missing(path) and self.inodes.missing_until(path) is None:
            entry = self.inodes.listed(path)
            if entry is not None and entry.kind == "dir":
                self._list_ahead(path, parent_of(path))
            if entry is not None and entry.kind == "file" and entry.meta is None:
                known = self.inodes.by_path.get(path)
                if known is not None and known.meta is not None and known.etag == entry.etag:
                    entry = replace(entry, meta=known.meta)  # the same object, seen before
                else:
                    entry = await self._listed_file(path, entry)  # its times, mode, link-ness
            entry = entry or await self._stat(path)
            if entry is None:
                self.inodes.set_missing(path)
        if entry is None:
            pinned = self.inodes.by_path.get(path)
            if pinned is not None and pinned.pinned:
                return pinned  # emptied here (rm -r): S3 no longer shows it, POSIX does
            raise not_found(path)
        return self.inodes.upsert(path, entry)

    def _list_ahead(self, path: str, dir_path: str) -> None:
        """Directory `path` was looked up from its parent's listing, without a request. If
        that is the warm-up's listing of the top directory (a fresh mount's first lookups):
        a lookup by path sent a LIST of up to LOOKUP_LIST_KEYS of its names with its HEAD,
        and lookups in it went on from that listing; that LIST starts now, in the background,
        unless its listing is known. A lookup in it meanwhile waits for it, except where a
        GET can look a file up with its first bytes (`first_get`): that is one round trip,
        not two. (From a directory's own complete listing, nothing starts: `find` looks up
        the subdirectories it is about to read anyway.)"""
        parent = self.inodes.listings.get(dir_path)
        listing = self.inodes.listings.get(path)
        if (self.nursery is None or self.inodes.ttl <= 0 or path in self.listing_ahead
                or parent is None or parent.complete
                or (listing is not None and listing.expires > self.inodes.clock())):
            return
        self.listing_ahead[path] = trio.Event()
        self.nursery.start_soon(self._list_dir_ahead, path)

    async def _list_dir_ahead(self, path: str) -> None:
        try:
            node = self.inodes.by_path.get(path)
            writes, started = (node.writes if node else 0), self.inodes.clock()
            entries = await self.view.small_listing(path, LOOKUP_LIST_KEYS)
            if (entries is not None and self.inodes.by_path.get(path) is node
                    and (node is None or node.writes == writes)):
                # (else this mount may have added a name since the LIST began)
                self._keep_listing(path, entries, started)
        except FsError as exc:  # a lookup that needs it sends its own requests
            log.debug("listing %r ahead of lookups: %s", path, exc)
        finally:
            self.listing_ahead.pop(path).set()

    async def _listed_file(self, path: str, listed: Entry) -> Entry | None:
        """The file at `path`, which its directory's listing shows, with its metadata: one
        GET of its first bytes where the store can and a first read may start (below), else
        its HEAD (with the first read's GET, pinned to the listed ETag, sent alongside)."""
        listing = self.inodes.listings.get(parent_of(path))
        gated = self._first_gets_paused(parent_of(path))
        if (self.first_get is not None and listing is not None and listing.first_reads
                and listed.size > 0 and not gated):
            listing.first_reads = False
            self._first_read_started(path, listing)
            info = None
            try:
                info = await self.first_get(self.keys.file_key(path))
            finally:
                if info is None or info.size == 0:  # nothing kept for an open
                    listing.first_reads = True
                    self.first_reads.pop(path, None)
            return None if info is None else file_entry(info)
        if not gated:
            self._start_first_read(path, listed)
        return await self._head_file(path)

    def _first_read_started(self, path: str, listing: Listing) -> None:
        self.first_reads[path] = listing
        while len(self.first_reads) > LISTINGS_MAX:
            del self.first_reads[next(iter(self.first_reads))]

    def _start_first_read(self, path: str, entry: Entry) -> None:
        """A file looked up by its path, found in its directory's listing, with no metadata
        known: most likely `open("d/f")`, whose read would otherwise wait for the GET after
        this lookup's HEAD. Its first GET starts now, alongside the HEAD (reader.py,
        `Readers.start_first_read`). Once one is started, no other is in the directory until
        an open takes it (`cat d/f; cat d/g` go on; a `stat` or `rsync` of each name wastes
        one GET per listing), and a readdir stops them for the listing (`ls -l`, `find`:
        their lookups are for attributes)."""
        listing = self.inodes.listings.get(path.rpartition("/")[0])
        if listing is None or not listing.first_reads or self.first_read is None:
            return
        if self.first_read(path, entry):
            listing.first_reads = False
            self._first_read_started(path, listing)

    async def _wait_ahead(self, path: str) -> bool:
        """Wait for the HEAD of `path` read ahead after a readdir (lookahead.py), if one is
        under way or starts now; False if there is none."""
        ev = self.ahead.wanted(path)
        if ev is None:
            return False
        await ev.wait()
        return True

    async def _fetch_ahead(self, paths: list[str], done: Callable[[str], None]) -> None:
        """Read ahead the metadata of files a readdir listed (a HEAD each; several sent
        together where the store can), and record it unless this mount changed the name
        meanwhile or S3 no longer has it (then a lookup sends its own requests); `done(path)`
        as each one is."""
        todo: list[tuple[str, Node, Node, int]] = []
        for path in paths:
            node = self.inodes.by_path.get(path)
            parent = self.inodes.by_path.get(parent_of(path))
            if (node is not None and parent is not None and node.kind == "file"
                    and node.meta is None and not node.writing):
                todo.append((path, node, parent, parent.writes))
            else:
                done(path)

        def record(i: int, info: ObjectInfo | None | StoreError) -> None:
            path, node, parent, writes = todo[i]
            if isinstance(info, StoreError):
                log.debug("reading ahead the attributes of %r: %s", path, info)
            elif (info is not None and self.inodes.by_path.get(path) is node
                    and self.inodes.by_path.get(parent_of(path)) is parent
                    and parent.writes == writes and not node.writing and node.meta is None):
                self.inodes.upsert(path, file_entry(info))
            done(path)

        many = many_heads_of(self.store)
        if len(todo) > 1 and many is not None:
            await many.head_many([self.keys.file_key(path) for path, *_ in todo], record)
            return
        for i, (path, *_) in enumerate(todo):
            record(i, await self.store.head(self.keys.file_key(path)))

    async def _head_file(self, path: str) -> Entry | None:
        """The file at `path` with its metadata (one HEAD), or None if there is none."""
        info = await self.store.head(self.keys.file_key(path))
        return None if info is None else file_entry(info)

    async def _resolve_or_none(self, path: str) -> Node | None:
        try:
            return await self.resolve(path)
        except FsError as exc:
            if exc.errno_ == errno.ENOENT:
                return None
            raise

    async def _stat(self, path: str) -> Entry | None:
        """What S3 has at `path`. In a directory whose complete listing is kept but expired
        (one made here by mkdir, or small when listed here before), one LIST of the directory
        answers, and is kept: for --metadata-ttl, names not in it need no request (cp -r and
        tar -x look up each new name first). Elsewhere a HEAD and a one-key LIST."""
        dir_path, _, name = path.rpartition("/")
        parent = self.inodes.by_path.get(dir_path)
        listing = self.inodes.listings.get(dir_path)
        if (path == "" or parent is None or listing is None or not listing.complete
                or listing.expires > self.inodes.clock()):
            return await self._stat_and_list(path)
        writes, started = parent.writes, self.inodes.clock()
        entries = await self.view.small_listing(dir_path)
        if entries is None:  # more than a page: not kept
            self.inodes.listings.pop(dir_path, None)
            return await self.view.stat(path)
        if parent.writes == writes and self.inodes.by_path.get(dir_path) is parent:
            # (else this mount added a name since the LIST began, which it may lack)
            self._keep_listing(dir_path, entries, started)
        return entries.get(name)

    async def _stat_and_list(self, path: str) -> Entry | None:
        """A HEAD and a one-level LIST of up to LOOKUP_LIST_KEYS names: a small directory's
        listing comes with its lookup and is kept, so that its entries are then known (an
        open of `d/f` on a fresh mount costs two round trips, not three)."""
        before = self.inodes.by_path.get(path)
        writes, started = (before.writes if before else 0), self.inodes.clock()
        first_get = self._first_get_gate(path)
        entry: Entry | None = None
        try:
            entry, entries = await self.view.stat_listing(path, LOOKUP_LIST_KEYS, first_get)
        finally:
            if first_get is not None:
                self._first_get_ended(path, entry)
        node = self.inodes.by_path.get(path)
        if (entries is not None and node is before
                and (before is None or before.writes == writes)):
            # (else this mount may have added a name since the LIST began)
            self._keep_listing(path, entries, started)
        return entry

    def _first_get_gate(self, path: str) -> Callable[[str], Awaitable[ObjectInfo | None]] | None:
        """`first_get` for the lookup of `path`, a name in a directory whose listing is not
        known, if a GET of its first bytes may stand in for its HEAD: an open is likely (a
        lookup by path: `cat d/f`), and a GET no open takes wastes at most FIRST_READ bytes
        (1 MiB; a GET of a missing key or of a directory's name costs what a HEAD does). So
        once one found a file in a directory, no other does there until an open takes it or
        --metadata-ttl (at least 1 s) passes; a readdir of the directory closes it as long."""
        dir_path = parent_of(path)
        parent = self.inodes.by_path.get(dir_path)
        if self.first_get is None or path == "" or parent is None or parent.kind != "dir":
            return None
        if self._first_gets_paused(dir_path):
            return None
        now = self.inodes.clock()
        self.first_gets[dir_path] = (now + self._first_get_pause(), path)
        if len(self.first_gets) > LISTINGS_MAX:
            for d in [d for d, (until, _) in self.first_gets.items() if until <= now]:
                del self.first_gets[d]
        return self.first_get

    def _first_gets_paused(self, dir_path: str) -> bool:
        """A GET in place of a HEAD found a file in `dir_path` and no open has taken it yet
        (or a readdir there wants attributes): no first read starts there for now."""
        gate = self.first_gets.get(dir_path)
        return gate is not None and gate[0] > self.inodes.clock()

    def _first_get_pause(self) -> float:
        return max(self.inodes.ttl, FIRST_GET_PAUSE)

    def _first_get_ended(self, path: str, entry: Entry | None) -> None:
        """The GET in place of `path`'s HEAD ended: unless it found a file with bytes (kept
        for an open), the directory's gate opens again."""
        dir_path = parent_of(path)
        gate = self.first_gets.get(dir_path)
        if (gate is not None and gate[1] == path
                and (entry is None or entry.kind != "file" or entry.size == 0)):
            del self.first_gets[dir_path]

    def warmed_up(self, page: ListPage, started: float) -> None:
        """The mount's warm-up listed its top directory (up to LOOKUP_LIST_KEYS names, one
        level, at monotonic time `started`): what it shows is kept for --metadata-ttl, so that
        the first path looked up on a fresh mount costs no request for its first component.
        Only what it shows: a name not in it is looked up in S3 as before, since it was taken
        before the mount was live (a script that mounts, has another client write a new name,
        then looks at it, finds it as without this listing). A directory it shows is listed
        ahead (`_list_ahead`)."""
        if page.next_token is None:
            entries = self.view.page_listing("", page)
            self.inodes.set_listing("", set(entries), started + self.inodes.ttl, entries,
                                    complete=False)
            if (top := self.inodes.listings.get("")) is not None:
                # Its files' lookups start no first read: nothing says an open for reading
                # follows (`>>` of a file there would fetch a MiB for nothing), and a lookup
                # of one cost a HEAD before, then the GET after the open, as now.
                top.first_reads = False

    def _keep_listing(self, dir_path: str, entries: dict[str, Entry], started: float) -> None:
        """Keep a complete listing that began at `started`, with the files being written
        here (not in S3 yet, but they exist)."""
        names = set(entries) | set(self._being_written_in(dir_path))
        self.inodes.set_listing(dir_path, names, started + self.inodes.ttl, entries)

    async def refresh(self, node: Node) -> Node:
        """Re-read a file's attributes from S3 if they are stale."""
        if node.kind == "file" and not node.detached and not node.writing and (
                not self.inodes.fresh(node) or node.meta is None):
            if (node.meta is None and await self._wait_ahead(node.path)
                    and self.inodes.by_path.get(node.path) is node and node.meta is not None
                    and self.inodes.fresh(node)):
                return node
            entry = await self.view.stat(node.path)
            if entry is None:
                self.inodes.detach(node)
                raise not_found(node.path)
            if entry.kind != node.kind:
                self.inodes.detach(node)
                raise FsError(f"{node.path!r} changed kind in S3", errno.ESTALE)
            self.inodes.upsert(node.path, entry)
        else:
            self.ahead.claimed(node.path)
        return node

    # -- directories ------------------------------------------------------------------------

    def opendir(self, ino: int) -> Node:
        node = self.inodes.get(ino)
        if node.kind != "dir":
            raise FsError(f"{node.path!r} is not a directory", errno.ENOTDIR)
        self.inodes.opened(node)
        return node

    def closed(self, node: Node) -> None:
        """A handle on `node` (file or directory) was released."""
        self.inodes.closed(node)

    def _being_written_in(self, dir_path: str) -> dict[str, Node]:
        """Files being written directly inside `dir_path`, by name."""
        out = {}
        for w in self.writing.values():
            dir_of, _, name = w.node.path.rpartition("/")
            if dir_of == dir_path and not w.node.detached:
                out[name] = w.node
        return out

    async def entries(self, node: Node) -> AsyncIterator[tuple[str, Entry]]:
        """The directory's entries as S3 lists them, with the files being written here. A
        LIST carries no metadata: a file's times, mode and link-ness come from a HEAD when
        it is looked up (`resolve`), not for every entry listed (`ls` of 100,000 names)."""
        writing = self._being_written_in(node.path)
        listing = self.inodes.listings.get(node.path)
        if listing is not None:
            listing.first_reads = False
        if self.first_get is not None:  # lookups after a readdir want attributes
            self.first_gets[node.path] = (self.inodes.clock() + self._first_get_pause(), "")
        self.ahead.listing(node.path)
        async for name, entry in self.view.children(node.path):
            if name in writing and entry.kind == "file":
                continue
            yield name, entry
        for name, wnode in writing.items():
            yield name, Entry("file", wnode.size, wnode.mtime, meta=wnode.meta)

    def entry_node(self, dir_node: Node, name: str, entry: Entry) -> Node:
        """The node of a listed entry (readdir), not yet counted as known to the kernel. A
        file whose metadata is not known is read ahead once `ls -l` asks for attributes."""
        node = self.inodes.upsert(join(dir_node.path, name), entry)
        if node.kind == "file" and node.meta is None and not node.writing:
            self.ahead.listed(dir_node.path, name)
        return node

    async def mkdir(self, parent_ino: int, raw: bytes) -> Node:
        self.check_writable()
        path = self.path_of(parent_ino, raw)
        self.keys.check_key(path)
        if await self._resolve_or_none(path) is not None:
            raise FsError(f"{path!r} already exists", errno.EEXIST)
        empty_until = self.inodes.missing_until(path)  # no key lies below it until then
        await self.store.put(self.keys.marker_key(path), b"", EMPTY_MD5)
        node = self.inodes.upsert(path, self.view.dir_entry(time.time()))
        self.inodes.looked_up(node)
        self.inodes.wrote(path)
        if empty_until is not None:
            self.inodes.set_listing(path, set(), empty_until)
        return node

    async def rmdir(self, parent_ino: int, raw: bytes) -> None:
        self.check_writable()
        path = self.path_of(parent_ino, raw)
        node = await self.resolve(path)
        if node.kind != "dir":
            raise FsError(f"{path!r} is not a directory", errno.ENOTDIR)
        for child in list(self._being_written_in(path).values()):
            await self.settle(child)  # rm -r right after the files in it were closed
        if not await self.view.is_empty(path) or self._being_written_in(path):
            self.inodes.drop_listings(path)  # it may be out of date: another client wrote
            err = FsError(f"{path!r} is not empty", errno.ENOTEMPTY)
            err.log_level = "debug"  # an answer, not a failure: rm -r and cleanups ask
            raise err
        marker = await self.store.head(self.keys.marker_key(path))
        if marker is not None and marker.size > 0:
            raise FsError(f"{path!r}: its marker object {marker.key!r} holds {marker.size} "
                          "bytes that the mount does not show; not deleting them (delete the "
                          "object with an S3 client if they are not needed)", errno.ENOTEMPTY)
        await self.store.delete(self.keys.marker_key(path))
        self.inodes.detach(node)
        self.inodes.set_missing(path)
        self.inodes.drop_listings(path)
        self._pin_parent(parent_ino)

    def _pin_parent(self, parent_ino: int) -> None:
        """Removing an entry must not make an implicit parent directory vanish."""
        parent = self.inodes.get(parent_ino)
        parent.pinned = parent.ino != ROOT_INODE

    # -- files ------------------------------------------------------------------------------

    async def unlink(self, parent_ino: int, raw: bytes) -> None:
        self.check_writable()
        path = self.path_of(parent_ino, raw)
        node = await self.resolve(path)
        if node.kind == "dir":
            raise FsError(f"{path!r} is a directory", errno.EISDIR)
        await self.settle(node)
        if node.writing:
            raise FsError(f"{path!r} is being written; close it before removing it",
                          errno.EBUSY)
        await self.store.delete(self.keys.file_key(path))
        self.inodes.detach(node)
        self.inodes.set_missing(path)
        self._pin_parent(parent_ino)

    async def rename(self, old_parent: int, old_raw: bytes, new_parent: int, new_raw: bytes,
                     noreplace: bool) -> None:
        self.check_writable()
        old = self.path_of(old_parent, old_raw)
        new = self.path_of(new_parent, new_raw)
        self.keys.check_key(new)
        src = await self.resolve(old)
        await self.settle(src)
        if old == new:
            return
        dst = await self._resolve_or_none(new)
        if dst is not None:
            if dst.kind == "dir" and (self._being_written_in(new)
                                      or not await self.view.is_empty(new)):
                raise FsError(f"{new!r} is a directory that is not empty", errno.ENOTEMPTY)
            await self.settle(dst)
        below = old + "/"
        renamer.check(src.kind, old, dst.kind if dst else None, new, noreplace,
                      src_busy=src.writing or any(w.node.path.startswith(below)
                                                  for w in self.writing.values()),
                      dst_busy=dst is not None and dst.writing)
        if src.kind == "file":
            pending = self.pending_meta.pop(src.ino, None)  # rsync: set on its temporary file
            src.meta_pending = False
            info = await self.renamer.move_file(
                self.keys.file_key(old), self.keys.file_key(new),
                src.meta.to_headers() if pending is not None and src.meta else None)
            self.inodes.move(old, new)
            self.inodes.upsert(new, file_entry(info))
        else:
            n = await self.renamer.move_dir(old, new)
            log.info("renamed directory %r to %r: %d keys copied and deleted", old, new, n)
            self.inodes.move(old, new)
        self.inodes.wrote(new)
        self.inodes.drop_listings(old)
        self._pin_parent(old_parent)

    async def make_empty(self, parent_ino: int, raw: bytes) -> Node:
        """A new empty file at the name, stored at once (mknod of a regular file)."""
        self.check_writable()
        path = self.path_of(parent_ino, raw)
        key = self.keys.check_key(path)
        if await self._resolve_or_none(path) is not None:
            raise FsError(f"{path!r} already exists", errno.EEXIST)
        sent = await self.store.put(key, b"", EMPTY_MD5)
        if sent.etag != EMPTY_MD5.hex() and sent.encryption is None:
            raise FsError(f"{path!r}: S3 answered ETag {sent.etag} for an empty object",
                          errno.EIO)
        node = self.inodes.upsert(path, Entry("file", 0, time.time(), sent.etag))
        self.inodes.looked_up(node)
        self.inodes.wrote(path)
        return node

    async def link(self, ino: int, parent_ino: int, raw: bytes) -> Node:
        """A second name for a file: a verified server-side copy. The two names do not share
        later changes (S3 has no hard links)."""
        self.check_writable()
        src = self.inodes.get(ino)
        if src.kind == "dir":
            raise FsError(f"{src.path!r} is a directory: no hard links to directories",
                          errno.EPERM)
        path = self.path_of(parent_ino, raw)
        key = self.keys.check_key(path)
        await self.settle(src)
        if src.writing:
            raise FsError(f"{src.path!r} is being written; close it before linking it",
                          errno.EBUSY)
        if await self._resolve_or_none(path) is not None:
            raise FsError(f"{path!r} already exists", errno.EEXIST)
        info = await self.store.head(self.keys.file_key(src.path))
        if info is None:
            self.inodes.detach(src)
            raise not_found(src.path)
        copied = await self.renamer.copy(info, key)
        node = self.inodes.upsert(path, Entry("file", copied.size, copied.mtime, copied.etag))
        self.inodes.looked_up(node)
        self.inodes.wrote(path)
        return node

    async def symlink(self, parent_ino: int, raw: bytes, target: bytes,
                      uid: int, gid: int) -> Node:
        """A symbolic link, stored as s3fs-fuse stores one: an object whose body is the
        target and whose `mode` metadata has S_IFLNK (meta.py)."""
        self.check_writable()
        path = self.path_of(parent_ino, raw)
        key = self.keys.check_key(path)
        try:
            body = symlink_body(target)
        except ValueError as exc:
            raise FsError(f"symlink {path!r}: {exc}", errno.EINVAL) from None
        if await self._resolve_or_none(path) is not None:
            raise FsError(f"{path!r} already exists", errno.EEXIST)
        now = time.time_ns()
        meta = FileMeta(mtime_ns=now, ctime_ns=now, mode=SYMLINK_MODE, uid=uid, gid=gid)
        md5 = hashlib.md5(body, usedforsecurity=False).digest()
        sent = await self.store.put(key, body, md5, meta=meta.to_headers(),
                                    content_type=DEFAULT_CONTENT_TYPE)
        if sent.etag != md5.hex() and sent.encryption is None:
            raise FsError(f"{path!r}: the link's object came back with ETag {sent.etag}, "
                          f"not {md5.hex()}", errno.EIO)
        node = self.inodes.upsert(path, Entry("file", len(body), now / 1e9, sent.etag, meta))
        node.target = body
        self.inodes.looked_up(node)
        self.inodes.wrote(path)
        return node

    async def readlink(self, ino: int) -> bytes:
        node = await self.refresh(self.inodes.get(ino))
        if not node.is_symlink:
            raise FsError(f"{node.path!r} is not a symbolic link", errno.EINVAL)
        if node.target is None:
            body = memoryview(bytearray(node.size))
            await self.store.get_range(self.keys.file_key(node.path), 0, body, node.etag)
            target = link_target(bytes(body))
            if target is None:
                raise FsError(f"{node.path!r}: its object is marked a symbolic link but holds "
                              "no valid target", errno.EIO)
            node.target = target
        return node.target

    async def open_read(self, ino: int) -> Node:
        """A file to read, with fresh attributes; counted open until `closed`."""
        node = self.inodes.get(ino)
        if node.kind == "dir":
            raise FsError(f"{node.path!r} is a directory", errno.EISDIR)
        await self.settle(node)
        if node.writing:
            raise FsError(f"{node.path!r} is being written; it can be read once it is "
                          "closed", errno.EPERM)
        node = await self.refresh(node)
        self.inodes.opened(node)
        listing = self.first_reads.pop(node.path, None)
        if listing is not None:  # its first read was started, and is used: go on so
            listing.first_reads = True
        gate = self.first_gets.get(parent_of(node.path))
        if gate is not None and gate[1] == node.path:
            del self.first_gets[parent_of(node.path)]
        return node

    async def open_write(self, ino: int, flags: int) -> tuple[Node, Upload | None]:
        """An existing file opened for writing. With O_TRUNC, a new upload that will replace
        it; without, no upload yet (None): the object stays as it is unless the handle
        truncates it to 0 (`truncate`), and a write that would change it is refused."""
        node = self.inodes.get(ino)
        if node.kind == "dir":
            raise FsError(f"{node.path!r} is a directory", errno.EISDIR)
        self.check_writable()
        await self.settle(node)
        if flags & os.O_TRUNC:
            upload = self._start_write(node)
        elif node.writing:
            raise FsError(f"{node.path!r} is already being written by another handle; "
                          "S3 takes one writer per object", errno.EPERM)
        else:
            node, upload = await self.refresh(node), None
        self.inodes.opened(node)
        return node, upload

    async def write_existing(self, node: Node, off: int, synced: bool = False) -> Upload:
        """The upload for the first write into an existing file opened without O_TRUNC, or
        for a write after fsync completed the handle's upload (`synced`). At its end (`>>`,
        O_APPEND, `curl -C -`): a new upload that starts with the object's bytes, its parts
        copied by the server where that can be proven, else read back and sent again
        (appender.py), then takes the write. After an fsync anywhere the rewrite window
        reaches (vim's swap file): the same, the old bytes read back, so that they can be
        patched. The old object is replaced only when the new one is verified. Anywhere else,
        a write into an object opened without O_TRUNC would change it in place: EPERM."""
        if node.detached:
            raise FsError(f"{node.path!r} was removed or replaced since this handle's upload "
                          "completed; nothing more can be written through it", errno.EBADF)
        if off != node.size and not (synced and off < node.size):
            raise FsError(f"{node.path!r}: a write at offset {off} would change the existing "
                          f"object ({node.size} bytes) in place; S3 objects can only be "
                          "replaced whole: open it with O_TRUNC (as cp, dd and > do) or "
                          "truncate it to 0 first; appending at its end works", errno.EPERM)
        await self.settle(node)
        upload = self._start_write(node)
        key = self.keys.file_key(node.path)
        try:
            if synced:  # the rewrite window must reach the old bytes: they are read back
                await appender.read_in(upload, key, 0, node.size, node.etag)
                log.info("%s: writing after fsync: its %d bytes were read back into a new "
                         "upload", key, node.size)
            else:
                await appender.begin(upload, key, node.size, node.etag)
        except FsError as exc:  # the handle keeps the failed upload: its writes and its
            with trio.CancelScope(shield=True):  # close() return the failure
                await upload.fail(exc)
            self._done_writing(node, upload)
        except BaseException:
            with trio.CancelScope(shield=True):
                await upload.abort("appending failed while the old bytes were copied or read "
                                   "back; the old object is unchanged")
            self._done_writing(node, upload)
            raise
        return upload

    async def truncate(self, node: Node, size: int, upload: Upload | None,
                       handle: bool) -> Upload | None:
        """Truncate `node` to `size` bytes, through a write handle (`handle`; `upload` is what
        it writes, None if nothing yet) or by path. Returns the handle's upload: a file opened
        without O_TRUNC and truncated to 0 becomes a new upload, as if opened with O_TRUNC."""
        self.check_writable()
        if upload is not None or size == self.size(node):
            if size != self.size(node):
                raise FsError(f"{node.path!r}: truncate to {size} bytes is not supported "
                              "(only to the current size, or to 0 before writing)",
                              errno.EOPNOTSUPP)
            return upload
        if size != 0:
            raise FsError(f"{node.path!r}: truncate to {size} bytes is not supported (only to "
                          "the current size, or to 0 before writing)", errno.EOPNOTSUPP)
        await self.settle(node)
        if handle:
            return self._start_write(node)
        if node.writing:
            raise FsError(f"{node.path!r} is being written; close it before truncating it",
                          errno.EBUSY)
        sent = await self.store.put(self.keys.check_key(node.path), b"", EMPTY_MD5)
        if sent.etag != EMPTY_MD5.hex() and sent.encryption is None:
            raise FsError(f"{node.path!r}: truncated to 0 bytes, but S3 answered ETag "
                          f"{sent.etag} for the empty object", errno.EIO)
        self.inodes.upsert(node.path, Entry("file", 0, time.time(), sent.etag))
        self.inodes.wrote(node.path)
        return None

    async def create(self, parent_ino: int, raw: bytes,
                     mode: int | None = None) -> tuple[Node, Upload]:
        """A new (or replaced) file at the name, being written; known to the kernel."""
        self.check_writable()
        path = self.path_of(parent_ino, raw)
        self.keys.check_key(path)
        node = self.inodes.by_path.get(path)
        if node is not None and node.kind == "dir":
            raise FsError(f"{path!r} is a directory", errno.EISDIR)
        if node is not None:
            await self.settle(node)
            node = self.inodes.by_path.get(path)  # (the settled upload may have replaced it)
        if node is None or not node.writing:
            node = self.inodes.upsert(path, Entry("file", 0, time.time()))
        upload = self._start_write(node, mode)
        self.inodes.opened(node)
        self.inodes.looked_up(node)
        self.inodes.wrote(path)
        return node, upload

    def _start_write(self, node: Node, mode: int | None = None) -> Upload:
        """A new upload for `node`: its object gets the node's metadata (s3fs's convention,
        meta.py) with a new mtime, `mode` if given (create's), and a Content-Type guessed
        from the name."""
        if node.writing:
            raise FsError(f"{node.path!r} is already being written by another handle; "
                          "S3 takes one writer per object", errno.EPERM)
        upload = self.uploads.start(self.keys.check_key(node.path))
        now = time.time_ns()
        meta = replace(node.meta or FileMeta(), mtime_ns=now, ctime_ns=now)
        if mode is not None:
            meta = replace(meta, mode=stat.S_IFREG | stat.S_IMODE(mode))
        upload.meta = meta.to_headers()
        upload.content_type = guess_content_type(node.path.rpartition("/")[2])
        self.writing[node.ino] = Writing(node, upload)
        node.writing, node.meta, node.target = True, meta, None
        node.mtime = now / 1e9
        return upload

    # -- the end of a write -----------------------------------------------------------------

    def flushed(self, node: Node, upload: Upload) -> None:
        """A handle writing `upload` was closed (FLUSH): its RELEASE may follow."""
        w = self.writing.get(node.ino)
        if w is not None and w.upload is upload:
            w.flushed_at = upload.bytes_written

    async def finish_write(self, node: Node, upload: Upload) -> None:
        """Complete and verify the upload; the name then shows the object. Raises its
        failure."""
        try:
            await upload.complete()
        finally:
            self._done_writing(node, upload)
        if upload.meta_sent is not None and upload.meta != upload.meta_sent:
            # times or modes set after the upload began (cp -a of a file of many parts)
            await self._store_meta(node)

    def released(self, node: Node, upload: Upload) -> None:
        """The last handle of an upload was released (RELEASE)."""
        w = self.writing.get(node.ino)
        if w is not None and w.upload is upload:
            w.released.set()

    def end_write(self, node: Node, upload: Upload) -> None:
        """A released upload that is not open: failed, or done (a flush completed it); one
        still completing is left to the call that completes it."""
        if upload.state in (UploadState.DONE, UploadState.FAILED):
            self._done_writing(node, upload)

    def _done_writing(self, node: Node, upload: Upload) -> None:
        """Once per upload: the name stops being written, and shows the object if the upload
        succeeded."""
        w = self.writing.get(node.ino)
        if w is None or w.upload is not upload:
            return
        del self.writing[node.ino]
        node.writing = False
        if upload.state is UploadState.DONE and upload.result is not None:
            info = upload.result
            meta = FileMeta.from_headers(upload.meta)  # (stored by finish_write if late)
            self.inodes.upsert(node.path, Entry("file", info.size, info.mtime, info.etag, meta))
            self.inodes.wrote(node.path)  # the object exists from now on

    async def settle(self, node: Node) -> None:
        """Wait for a file that was closed a moment ago to finish being written (or fail), so
        that a call right after close() sees the object rather than a file being written."""
        w = self.writing.get(node.ino)
        if w is None:
            return
        if w.upload.state is UploadState.OPEN:
            if not w.idle_since_close:
                return  # written since it was last closed: open elsewhere
            with trio.move_on_after(SETTLE_GRACE):
                await w.released.wait()
            if not w.released.is_set():
                return  # still open elsewhere
        await w.upload.done.wait()
        self._done_writing(node, w.upload)

    async def shutdown(self) -> None:
        """At unmount: store pending times and modes, let completing uploads finish, abort
        those never closed."""
        for node in list(self.pending_meta.values()):
            await self._store_meta(node)
        await self.uploads.shutdown()

    # -- times, modes, owners ---------------------------------------------------------------

    async def set_attrs(self, node: Node, **changes: int) -> None:
        """chmod, chown, utimens: kept in the object's metadata (meta.py). A file being
        written takes them with its upload (or, set after the upload began, by a copy onto
        itself once complete); a closed file gets them by a copy onto itself META_DELAY
        seconds later, unless a rename (which copies anyway) carries them first. Directories
        and implicit ones accept them and store nothing."""
        if node.kind == "dir":
            return
        self.check_writable()
        current = node.meta or FileMeta()
        new = replace(current, **changes)
        if new == current:
            return
        node.meta = new
        w = self.writing.get(node.ino)
        if w is not None:
            w.upload.meta = {**w.upload.meta, **new.to_headers()}
            return
        node.meta_pending = True
        if node.ino not in self.pending_meta:
            self.pending_meta[node.ino] = node
            if self.nursery is not None:
                self.nursery.start_soon(self._store_meta_later, node)
            else:
                await self._store_meta(node)

    async def _store_meta_later(self, node: Node) -> None:
        await trio.sleep(META_DELAY)
        if self.pending_meta.get(node.ino) is node:  # (else a rename carried them)
            await self._store_meta(node)

    async def _store_meta(self, node: Node) -> None:
        """Copy the object onto itself with the node's metadata merged into its own (the
        copy keeps the bytes and the ETag). Failures are logged: the bytes are safe."""
        self.pending_meta.pop(node.ino, None)
        node.meta_pending = False
        if node.detached or node.writing or node.meta is None:
            return
        key = self.keys.file_key(node.path)
        try:
            info = await self.store.head(key)
            if info is None:
                return
            if info.size > S3_MAX_PUT:
                log.warning("%s: times and modes not stored: a copy onto itself is limited to "
                            "5 GiB", key)
                return
            headers = {**(info.meta or {}), **node.meta.to_headers()}
            if headers != info.meta:
                await self.store.copy(key, key, info.etag, meta=headers,
                                      content_type=info.content_type)
        except FsError as exc:
            log.warning("%s: times and modes not stored: %s", key, exc)
