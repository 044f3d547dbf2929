"""The pyfuse3 Operations: translate FUSE calls into inode-table, reader and writer calls.

Thin on purpose: no S3 here. Every handler goes through `_fuse_errors`, the one place where our
exceptions become an errno and a single log line; an unexpected exception becomes EIO with its
traceback logged, and the mount keeps serving.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3
import trio

from .buffers import ReadBudget
from .config import Config, MiB
from .errors import FsError
from .handles import DirHandle, HandleTable, ReadHandle, WriteHandle
from .inodes import InodeTable, Node
from .keys import NAME_MAX, KeyMap, decode_name, join, parent_of, valid_name
from .namespace import Entry, Namespace
from .reader import Reader
from .renamer import Renamer
from .store import Store
from .writer import Uploads, UploadState

log = logging.getLogger(__name__)
LOOKUP_LIST_KEYS = 100  # names a directory's lookup lists, to know a small one completely
P = ParamSpec("P")
R = TypeVar("R")

BLOCK = 1 * MiB  # st_blksize: tools size their I/O by it (cp uses it), FUSE writes are 1 MiB


def _fuse_errors(
        fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Let only FUSEError out of a handler; log each failure once."""
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            level = logging.DEBUG if exc.log_level == "debug" else logging.ERROR
            log.log(level, "%s: %s (%s)", fn.__name__, exc, errno.errorcode.get(exc.errno_, "?"))
            raise pyfuse3.FUSEError(exc.errno_) from None
        except Exception:
            log.exception("%s failed unexpectedly; returning EIO", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def _not_found(path: str) -> FsError:
    err = FsError(f"{path!r}: no such file or directory", errno.ENOENT)
    err.log_level = "debug"
    return err


class S3Fs(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False  # it reorders writes and can send them after flush
    enable_acl = False

    def __init__(self, config: Config, store: Store, nursery: trio.Nursery) -> None:
        super().__init__()
        self.config = config
        self.keys = KeyMap(config.prefix, config.dir_suffix)
        self.ns = Namespace(store, self.keys)
        self.inodes = InodeTable(config.metadata_ttl, self.ns.mount_time)
        self.handles = HandleTable()
        self.read_budget = ReadBudget(config.read_memory)
        self.uploads = Uploads(config, store, nursery)
        self.renamer = Renamer(store, config.rename_max_keys)
        self.store = store
        self.nursery = nursery

    # -- helpers ----------------------------------------------------------------------------

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        is_dir = node.kind == "dir"
        a.st_mode = ((stat.S_IFDIR | self.config.dir_mode) if is_dir
                     else (stat.S_IFREG | self.config.file_mode))
        a.st_nlink = 2 if is_dir else 1
        a.st_uid, a.st_gid = self.config.uid, self.config.gid
        size = node.writer.size if node.writer is not None else node.size
        a.st_size = size
        a.st_blksize = BLOCK
        a.st_blocks = (size + 511) // 512
        ns = int(node.mtime * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        a.entry_timeout = a.attr_timeout = self.config.metadata_ttl
        return a

    def _path(self, parent_inode: int, raw: bytes) -> str:
        parent = self.inodes.get(parent_inode)
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

    async def resolve(self, path: str) -> Node:
        """The node at `path`, from the cache when fresh, else from S3; ENOENT if none."""
        node = self.inodes.cached(path)
        if node is not None:
            return node
        entry = None
        if not self.inodes.known_missing(path) and self.inodes.missing_until(path) is None:
            entry = self.inodes.listed(path) or await self._stat(path)
            if entry is None:
                self.inodes.set_missing(path)
        if entry is None:
            pinned = self.inodes.by_path.get(path)
            if pinned is not None and pinned.pinned:
                return pinned  # emptied here (rm -r): S3 no longer shows it, POSIX does
            raise _not_found(path)
        return self.inodes.upsert(path, entry)

    async def _stat(self, path: str) -> Entry | None:
        """What S3 has at `path`. In a directory whose complete listing is kept but expired
        (one made here by mkdir, or small when listed here before), one LIST of the directory
        answers, and is kept: for --metadata-ttl, names not in it need no request (cp -r and
        tar -x look up each new name first). Elsewhere a HEAD and a one-key LIST."""
        dir_path, _, name = path.rpartition("/")
        parent = self.inodes.by_path.get(dir_path)
        listing = self.inodes.listings.get(dir_path)
        if (path == "" or parent is None or listing is None
                or listing.expires > self.inodes.clock()):
            return await self._stat_and_list(path)
        writes, started = parent.writes, self.inodes.clock()
        entries = await self.ns.small_listing(dir_path)
        if entries is None:  # more than a page: not kept
            self.inodes.listings.pop(dir_path, None)
            return await self.ns.stat(path)
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
        entry, entries = await self.ns.stat_listing(path, LOOKUP_LIST_KEYS)
        node = self.inodes.by_path.get(path)
        if (entries is not None and node is before
                and (before is None or before.writes == writes)):
            # (else this mount may have added a name since the LIST began)
            self._keep_listing(path, entries, started)
        return entry

    def _keep_listing(self, dir_path: str, entries: dict[str, Entry], started: float) -> None:
        """Keep a complete listing that began at `started`, with the files being written
        here (not in S3 yet, but they exist)."""
        names = set(entries) | {n.path.rpartition("/")[2]
                                for n in self.uploads.nodes_in(dir_path)}
        self.inodes.set_listing(dir_path, names, started + self.inodes.ttl, entries)

    async def refresh(self, node: Node) -> Node:
        """Re-read a file's attributes from S3 if they are stale."""
        if node.kind == "file" and not node.detached and not self.inodes.fresh(node):
            entry = await self.ns.stat(node.path)
            if entry is None:
                self.inodes.detach(node)
                raise _not_found(node.path)
            if entry.kind != node.kind:
                self.inodes.detach(node)
                raise FsError(f"{node.path!r} changed kind in S3", errno.ESTALE)
            self.inodes.upsert(node.path, entry)
        return node

    def _check_writable(self) -> None:
        if self.config.read_only:
            raise FsError("the mount is read-only", errno.EROFS)

    # -- metadata ---------------------------------------------------------------------------

    @_fuse_errors
    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            path = self._path(parent_inode, name)
        except FsError as exc:
            if exc.errno_ not in (errno.EINVAL, errno.ENAMETOOLONG):
                raise
            raise _not_found(name.decode(errors="replace")) from None
        node = await self.resolve(path)
        node.lookups += 1
        return self.attrs(node)

    @_fuse_errors
    async def forget(self, inode_list: Any) -> None:
        for ino, n in inode_list:
            self.inodes.forget(ino, n)

    @_fuse_errors
    async def getattr(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs(await self.refresh(self.inodes.get(inode)))

    @_fuse_errors
    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: pyfuse3.FileHandleT | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.refresh(self.inodes.get(inode))
        if fields.update_size:
            self._check_writable()
            if node.writer is not None:  # holes, size promises, cuts within the window
                await node.writer.truncate(attr.st_size)
            elif attr.st_size != node.size:
                raise FsError(f"{node.path!r}: truncate to {attr.st_size} bytes is not "
                              "supported (only to the current size, or to 0 at open)",
                              errno.EOPNOTSUPP)
        # mode, owner and times are accepted and not stored: S3 has no place for them yet,
        # and tools such as cp -a and tar must not fail on plain files.
        return self.attrs(node)

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks = s.f_bfree = s.f_bavail = 2**40 // BLOCK * 1024  # 1 PiB, all free
        s.f_files = s.f_ffree = s.f_favail = 2**32
        s.f_namemax = 255
        return s

    # -- directories ------------------------------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        node = self.inodes.get(inode)
        if node.kind != "dir":
            raise FsError(f"{node.path!r} is not a directory", errno.ENOTDIR)
        node.opens += 1
        return self.handles.add(DirHandle(node))

    async def _dir_entries(self, node: Node) -> AsyncIterator[tuple[str, Entry]]:
        """The listing from S3, with files still being written here added."""
        writing = {n.path.rpartition("/")[2]: n for n in self.uploads.nodes_in(node.path)}
        async for name, entry in self.ns.children(node.path):
            if name in writing and entry.kind == "file":
                continue
            yield name, entry
        for name, wnode in writing.items():
            yield name, Entry("file", wnode.size, wnode.mtime)

    @_fuse_errors
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int,
                      token: pyfuse3.ReaddirToken) -> None:
        h = self.handles.get(fh)
        assert isinstance(h, DirHandle)
        async with h.lock:
            if h.entries is None or start_id != h.pos:
                await self._rewind(h, start_id)
            assert h.entries is not None
            while True:
                item = h.peeked or await anext(h.entries, None)
                if item is None:
                    return
                name, entry = item
                node = self.inodes.upsert(join(h.node.path, name), entry)
                if not pyfuse3.readdir_reply(token, name.encode(),
                                             self.attrs(node), h.pos + 1):
                    h.peeked = item
                    self.inodes.forget(node.ino, 0)
                    return
                node.lookups += 1
                h.pos += 1
                h.peeked = None

    async def _rewind(self, h: DirHandle, start_id: int) -> None:
        """(Re)start the listing and skip to entry `start_id` (after rewinddir or seekdir)."""
        if h.entries is not None:
            await cast(Any, h.entries).aclose()
        h.entries, h.peeked, h.pos = self._dir_entries(h.node), None, 0
        while h.pos < start_id and await anext(h.entries, None) is not None:
            h.pos += 1

    @_fuse_errors
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        h = self.handles.pop(fh)
        assert isinstance(h, DirHandle)
        if h.entries is not None:
            await cast(Any, h.entries).aclose()
        self.inodes.closed(h.node)

    @_fuse_errors
    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_writable()
        path = self._path(parent_inode, name)
        self.keys.check_key(path)
        if await self._exists(path):
            raise FsError(f"{path!r} already exists", errno.EEXIST)
        empty_until = self.inodes.missing_until(path)  # no key lies below it until then
        await self.store.put(self.keys.marker_key(path), b"", _EMPTY_MD5)
        node = self.inodes.upsert(path, self.ns.dir_entry(time.time()))
        node.lookups += 1
        self.inodes.wrote(path)
        if empty_until is not None:
            self.inodes.set_listing(path, set(), empty_until)
        return self.attrs(node)

    async def _exists(self, path: str) -> bool:
        try:
            await self.resolve(path)
        except FsError as exc:
            if exc.errno_ == errno.ENOENT:
                return False
            raise
        return True

    @_fuse_errors
    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    ctx: pyfuse3.RequestContext) -> None:
        self._check_writable()
        path = self._path(parent_inode, name)
        node = await self.resolve(path)
        if node.kind != "dir":
            raise FsError(f"{path!r} is not a directory", errno.ENOTDIR)
        if not await self.ns.is_empty(path) or self.uploads.nodes_in(path):
            self.inodes.drop_listings(path)  # it may be out of date: another client wrote
            raise FsError(f"{path!r} is not empty", errno.ENOTEMPTY)
        marker = await self.store.head(self.keys.marker_key(path))
        if marker is not None and marker.size > 0:
            raise FsError(f"{path!r}: its marker object {marker.key!r} holds {marker.size} "
                          "bytes that the mount does not show; not deleting them (delete the "
                          "object with an S3 client if they are not needed)", errno.ENOTEMPTY)
        await self.store.delete(self.keys.marker_key(path))
        self.inodes.detach(node)
        self.inodes.set_missing(path)
        self.inodes.drop_listings(path)
        self._pin_parent(parent_inode)

    @_fuse_errors
    async def unlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> None:
        self._check_writable()
        path = self._path(parent_inode, name)
        node = await self.resolve(path)
        if node.kind == "dir":
            raise FsError(f"{path!r} is a directory", errno.EISDIR)
        if node.writer is not None:
            raise FsError(f"{path!r} is being written; close it before removing it",
                          errno.EBUSY)
        await self.store.delete(self.keys.file_key(path))
        self.inodes.detach(node)
        self.inodes.set_missing(path)
        self._pin_parent(parent_inode)

    @_fuse_errors
    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: pyfuse3.FileNameT,
                     parent_inode_new: pyfuse3.InodeT, name_new: pyfuse3.FileNameT,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise FsError("exchanging two names (RENAME_EXCHANGE) is not possible on S3",
                          errno.EINVAL)
        old = self._path(parent_inode_old, name_old)
        new = self._path(parent_inode_new, name_new)
        self.keys.check_key(new)
        src = await self.resolve(old)
        if src.writer is not None and src.writer.state is not UploadState.OPEN:
            await src.writer.done.wait()  # closed a moment ago (release is asynchronous)
        if old == new:
            return
        dst = await self._node_or_none(new)
        self._check_rename(src, old, dst, new, flags)
        if src.kind == "file":
            info = await self.renamer.move_file(self.keys.file_key(old),
                                                self.keys.file_key(new))
            self.inodes.move(old, new)
            self.inodes.upsert(new, Entry("file", info.size, info.mtime, info.etag))
        else:
            n = await self.renamer.move_tree(self.keys.dir_prefix(old), self.keys.dir_prefix(new))
            await self._move_marker(old, new)
            log.info("renamed directory %r to %r: %d keys copied and deleted", old, new, n)
            self.inodes.move(old, new)
        self.inodes.wrote(new)
        self.inodes.drop_listings(old)
        self._pin_parent(parent_inode_old)

    def _check_rename(self, src: Node, old: str, dst: Node | None, new: str,
                      flags: int) -> None:
        if (src.writer is not None and src.writer.state is UploadState.OPEN) or any(
                u.node.path.startswith(old + "/") for u in self.uploads):
            raise FsError(f"{old!r} is being written; close it before renaming it",
                          errno.EBUSY)
        if src.kind == "dir" and new.startswith(old + "/"):
            raise FsError(f"cannot move {old!r} into itself ({new!r})", errno.EINVAL)
        if dst is None:
            return
        if flags & pyfuse3.RENAME_NOREPLACE:
            raise FsError(f"{new!r} exists (RENAME_NOREPLACE)", errno.EEXIST)
        if dst.writer is not None:
            raise FsError(f"{new!r} is being written; close it first", errno.EBUSY)
        if src.kind == "file" and dst.kind == "dir":
            raise FsError(f"{new!r} is a directory", errno.EISDIR)
        if src.kind == "dir" and dst.kind == "file":
            raise FsError(f"{new!r} is not a directory", errno.ENOTDIR)

    async def _node_or_none(self, path: str) -> Node | None:
        try:
            node = await self.resolve(path)
        except FsError as exc:
            if exc.errno_ == errno.ENOENT:
                return None
            raise
        if node.kind == "dir" and not await self.ns.is_empty(path):
            raise FsError(f"{path!r} is a directory that is not empty", errno.ENOTEMPTY)
        return node

    async def _move_marker(self, old: str, new: str) -> None:
        """A marker outside the directory's prefix (a suffix such as `_$folder$`) moves too;
        a directory without one gets one, so that it exists under its new name."""
        marker = self.keys.marker_key(old)
        if marker.startswith(self.keys.dir_prefix(old)):
            if not await self.ns.stat(new):
                await self.store.put(self.keys.marker_key(new), b"", _EMPTY_MD5)
            return
        if await self.store.head(marker) is not None:
            await self.renamer.move_file(marker, self.keys.marker_key(new))
        elif not await self.ns.stat(new):
            await self.store.put(self.keys.marker_key(new), b"", _EMPTY_MD5)

    # -- what S3 cannot store: one log line each, and EPERM, which symlink(2), link(2) and
    # mknod(2) give on a filesystem without them (left unimplemented, FUSE would say ENOSYS)

    @_fuse_errors
    async def symlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                      target: pyfuse3.FileNameT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise FsError(f"symlink {name.decode(errors='replace')!r}: S3 has no symbolic links; "
                      "copy the file instead", errno.EPERM)

    @_fuse_errors
    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT,
                   new_name: pyfuse3.FileNameT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise FsError(f"hard link {new_name.decode(errors='replace')!r} to "
                      f"{self.inodes.get(inode).path!r}: S3 has no hard links; copy the file "
                      "instead", errno.EPERM)

    @_fuse_errors
    async def mknod(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, mode: int,
                    rdev: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise FsError(f"mknod {name.decode(errors='replace')!r} (mode {mode:o}): S3 cannot "
                      "store FIFOs, sockets or device nodes; create regular files with "
                      "open(O_CREAT)", errno.EPERM)

    def _pin_parent(self, parent_inode: int) -> None:
        """Removing an entry must not make an implicit parent directory vanish."""
        parent = self.inodes.get(parent_inode)
        parent.pinned = parent.ino != pyfuse3.ROOT_INODE

    # -- files ------------------------------------------------------------------------------

    @_fuse_errors
    async def open(self, inode: pyfuse3.InodeT, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.get(inode)
        if node.kind == "dir":
            raise FsError(f"{node.path!r} is a directory", errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            return await self._open_write(node, flags, ctx)
        if node.writer is not None:
            raise FsError(f"{node.path!r} is being written; it can be read once it is "
                          "closed", errno.EPERM)
        node = await self.refresh(node)
        reader = Reader(self.store, self.keys.file_key(node.path), node.etag, node.size,
                        self.read_budget, self.nursery, self.config.read_ahead_max)
        node.opens += 1
        fh = self.handles.add(ReadHandle(node, reader))
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    async def _open_write(self, node: Node, flags: int,
                          ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self._check_writable()
        if not flags & os.O_TRUNC:
            raise FsError(f"{node.path!r} exists: S3 objects can only be replaced whole, so "
                          "open it with O_TRUNC (as cp, dd and > do); appending and in-place "
                          "edits are not supported", errno.EPERM)
        fh = self._start_upload(node, ctx)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    def _start_upload(self, node: Node, ctx: pyfuse3.RequestContext) -> int:
        if node.writer is not None:
            raise FsError(f"{node.path!r} is already being written by another handle; "
                          "S3 takes one writer per object", errno.EPERM)
        key = self.keys.check_key(node.path)
        node.writer = self.uploads.start(key, node)
        node.opens += 1
        node.mtime = time.time()
        return self.handles.add(WriteHandle(node, node.writer, ctx.pid))

    @_fuse_errors
    async def create(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, mode: int,
                     flags: int, ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_writable()
        path = self._path(parent_inode, name)
        self.keys.check_key(path)
        node = self.inodes.by_path.get(path)
        if node is not None and node.kind == "dir":
            raise FsError(f"{path!r} is a directory", errno.EISDIR)
        if node is None or node.writer is None:
            node = self.inodes.upsert(path, Entry("file", 0, time.time()))
        fh = self._start_upload(node, ctx)
        node.lookups += 1
        self.inodes.wrote(path)
        return (pyfuse3.FileInfo(fh=fh, keep_cache=False),
                self.attrs(node))

    @_fuse_errors
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        h = self.handles.get(fh)
        if not isinstance(h, ReadHandle):
            raise FsError("this handle was opened for writing only", errno.EBADF)
        return await h.reader.read(off, size)  # type: ignore[no-any-return]

    @_fuse_errors
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        h = self.handles.get(fh)
        if not isinstance(h, WriteHandle):
            raise FsError("this handle was opened for reading only", errno.EBADF)
        return await h.upload.write(off, buf)  # type: ignore[no-any-return]

    @_fuse_errors
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        h = self.handles.get(fh)
        if not isinstance(h, WriteHandle):
            return
        if h.upload.state is UploadState.FAILED:  # reported (and logged) when it happened
            raise pyfuse3.FUSEError(h.upload.error.errno_ if h.upload.error else errno.EIO)
        if h.upload.size > 0:  # written, or truncated up
            await self._finish(h)

    @_fuse_errors
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        h = self.handles.get(fh)
        # with no byte written it is a no-op: ddrescue and aria2c fsync before writing
        if isinstance(h, WriteHandle) and (h.upload.bytes_written
                                           or h.upload.state is not UploadState.OPEN):
            await self._finish(h)

    async def _finish(self, h: WriteHandle) -> None:
        """Complete and verify the upload; the node takes the object's attributes."""
        try:
            info = await h.upload.complete()
        finally:
            if h.node.writer is h.upload:
                h.node.writer = None
        if info is not None and h.node.writer is None:
            self.inodes.upsert(h.node.path, Entry("file", info.size, info.mtime, info.etag))
            self.inodes.wrote(h.node.path)  # the object exists from now on

    @_fuse_errors
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        h = self.handles.pop(fh)
        try:
            if isinstance(h, ReadHandle):
                h.reader.close()
            elif isinstance(h, WriteHandle):
                if h.upload.state is UploadState.OPEN:
                    await self._finish(h)  # its error is logged; the kernel discards it
                elif h.node.writer is h.upload:
                    h.node.writer = None
        finally:
            self.inodes.closed(h.node)

    # -- lifecycle --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """At unmount: let completing uploads finish, abort those never closed."""
        await self.uploads.shutdown()


_EMPTY_MD5 = bytes.fromhex("d41d8cd98f00b204e9800998ecf8427e")
