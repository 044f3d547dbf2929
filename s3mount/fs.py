"""The pyfuse3 Operations: FUSE arguments in, one call to the layer below, FUSE answers out.

Names, attributes and metadata changes go to the namespace (namespace.py), bytes to a reader
(reader.py) or an upload (writer.py). No S3 and no policy here. Every handler goes through
`_fuse_errors`, the one place where our exceptions become an errno and a single log line; an
unexpected exception becomes EIO with its traceback logged, and the mount keeps serving.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3
import trio

from .buffers import ReadBudget
from .config import Config, MiB
from .errors import FsError
from .handles import DirHandle, HandleTable, ReadHandle, WriteHandle
from .inodes import Node
from .meta import FileMeta
from .namespace import Namespace
from .objects import Store, first_get_of
from .reader import Reader, Readers
from .s3view import Entry
from .writer import Uploads, UploadState

log = logging.getLogger(__name__)
_NO_META = FileMeta()
P = ParamSpec("P")
R = TypeVar("R")

# setattr's fields -> (the attribute carrying the value, the FileMeta field it sets)
_SETATTR = (("update_mode", "st_mode", "mode"), ("update_uid", "st_uid", "uid"),
            ("update_gid", "st_gid", "gid"), ("update_mtime", "st_mtime_ns", "mtime_ns"),
            ("update_atime", "st_atime_ns", "atime_ns"),
            ("update_ctime", "st_ctime_ns", "ctime_ns"))

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


class S3Fs(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False  # it reorders writes and can send them after flush
    enable_acl = False

    def __init__(self, config: Config, store: Store, nursery: trio.Nursery) -> None:
        super().__init__()
        self.config = config
        self.uploads = Uploads(config, store, nursery)
        self.ns = Namespace(config, store, self.uploads, nursery)
        self.read_budget = ReadBudget(config.read_memory)  # shared by all readers
        self.readers = Readers(store, self.read_budget, nursery, config.read_ahead_max)
        self.handles = HandleTable()
        self.ns.first_read = lambda path, entry: self.readers.start_first_read(
            self.ns.keys.file_key(path), entry.etag, entry.size)
        first_get = first_get_of(store)
        if first_get is not None:
            self.ns.first_get = functools.partial(self.readers.get_first, first_get)

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        """The node's attributes: what its object's metadata says (s3fs's and rclone's
        convention, meta.py), else the mount's options and the object's Last-Modified. With
        --attrs-from listing, the latter always (the metadata says only what is a symlink):
        a file shows the same whether a listing or a HEAD found it."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        meta = _NO_META if self.config.listing_attrs else node.meta or _NO_META
        if node.kind == "dir":
            a.st_mode, a.st_nlink = stat.S_IFDIR | self.config.dir_mode, 2
        elif node.is_symlink:
            a.st_mode, a.st_nlink = stat.S_IFLNK | 0o777, 1
        else:
            bits = self.config.file_mode if meta.mode is None else stat.S_IMODE(meta.mode)
            a.st_mode, a.st_nlink = stat.S_IFREG | bits, 1
        if node.detached:
            a.st_nlink = 0  # unlinked while open
        a.st_uid = self.config.uid if meta.uid is None else meta.uid
        a.st_gid = self.config.gid if meta.gid is None else meta.gid
        size = self.ns.size(node)
        a.st_size = size
        a.st_blksize = BLOCK
        a.st_blocks = (size + 511) // 512
        mtime = int(node.mtime * 1e9) if meta.mtime_ns is None else meta.mtime_ns
        a.st_mtime_ns = mtime
        a.st_atime_ns = mtime if meta.atime_ns is None else meta.atime_ns
        a.st_ctime_ns = mtime if meta.ctime_ns is None else meta.ctime_ns
        # A file seen only in a listing: the kernel must ask again (a lookup, whose HEAD
        # brings its metadata) before it shows more than the name.
        unknown = node.kind == "file" and node.meta is None and not node.writing
        a.entry_timeout = a.attr_timeout = 0 if unknown else self.config.metadata_ttl
        return a

    # -- metadata ---------------------------------------------------------------------------

    @_fuse_errors
    async def lookup(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs(await self.ns.lookup(parent_inode, name))

    @_fuse_errors
    async def forget(self, inode_list: Any) -> None:
        for ino, n in inode_list:
            self.ns.forget(ino, n)

    @_fuse_errors
    async def getattr(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs(await self.ns.getattr(inode))

    @_fuse_errors
    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: pyfuse3.FileHandleT | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self.ns.getattr(inode)
        if fields.update_size:
            h = self.handles.get(fh) if fh is not None else None
            if (isinstance(h, WriteHandle) and h.upload is not None
                    and h.upload.state is UploadState.OPEN):
                await h.upload.truncate(attr.st_size)  # holes, size promises, cuts in memory
            elif isinstance(h, WriteHandle):
                h.upload = await self.ns.truncate(node, attr.st_size, h.upload, handle=True)
            else:
                await self.ns.truncate(node, attr.st_size, None, handle=False)
        changes = {key: getattr(attr, name) for flag, name, key in _SETATTR
                   if getattr(fields, flag)}
        if changes:
            await self.ns.set_attrs(node, **changes)
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
        return self.handles.add(DirHandle(self.ns.opendir(inode)))

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
                node = self.ns.entry_node(h.node, name, entry)
                if not pyfuse3.readdir_reply(token, name.encode(),
                                             self.attrs(node), h.pos + 1):
                    h.peeked = item
                    self.ns.forget(node.ino, 0)
                    return
                self.ns.looked_up(node)  # readdir_reply counts as a lookup
                h.pos += 1
                h.peeked = None

    async def _rewind(self, h: DirHandle, start_id: int) -> None:
        """(Re)start the listing and skip to entry `start_id` (after rewinddir or seekdir)."""
        if h.entries is not None:
            await cast(Any, h.entries).aclose()
        entries: AsyncIterator[tuple[str, Entry]] = self.ns.entries(h.node)
        h.entries, h.peeked, h.pos = entries, None, 0
        while h.pos < start_id and await anext(h.entries, None) is not None:
            h.pos += 1

    @_fuse_errors
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        h = self.handles.pop(fh)
        assert isinstance(h, DirHandle)
        if h.entries is not None:
            await cast(Any, h.entries).aclose()
        self.ns.closed(h.node)

    @_fuse_errors
    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs(await self.ns.mkdir(parent_inode, name))

    @_fuse_errors
    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                    ctx: pyfuse3.RequestContext) -> None:
        await self.ns.rmdir(parent_inode, name)

    @_fuse_errors
    async def unlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                     ctx: pyfuse3.RequestContext) -> None:
        await self.ns.unlink(parent_inode, name)

    @_fuse_errors
    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: pyfuse3.FileNameT,
                     parent_inode_new: pyfuse3.InodeT, name_new: pyfuse3.FileNameT,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            self.ns.check_writable()
            raise FsError("exchanging two names (RENAME_EXCHANGE) is not possible on S3",
                          errno.EINVAL)
        await self.ns.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                             noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    @_fuse_errors
    async def symlink(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT,
                      target: pyfuse3.FileNameT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs(await self.ns.symlink(parent_inode, name, target, ctx.uid,
                                                ctx.gid))

    @_fuse_errors
    async def readlink(self, inode: pyfuse3.InodeT,
                       ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        return await self.ns.readlink(inode)

    @_fuse_errors
    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT,
                   new_name: pyfuse3.FileNameT,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs(await self.ns.link(inode, new_parent_inode, new_name))

    @_fuse_errors
    async def mknod(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, mode: int,
                    rdev: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if stat.S_ISREG(mode):
            return self.attrs(await self.ns.make_empty(parent_inode, name))
        # EPERM, as mknod(2) gives on a filesystem without them (FUSE alone says ENOSYS)
        raise FsError(f"mknod {name.decode(errors='replace')!r} (mode {mode:o}): S3 cannot "
                      "store FIFOs, sockets or device nodes", errno.EPERM)

    # -- files ------------------------------------------------------------------------------

    @_fuse_errors
    async def open(self, inode: pyfuse3.InodeT, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            node, upload = await self.ns.open_write(inode, flags)
            reader = None
            if upload is None and flags & os.O_ACCMODE == os.O_RDWR:
                reader = self._reader(node)
            fh = self.handles.add(WriteHandle(node, upload, ctx.pid, reader))
            return pyfuse3.FileInfo(fh=fh, keep_cache=False)
        node = await self.ns.open_read(inode)
        fh = self.handles.add(ReadHandle(node, self._reader(node)))
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    def _reader(self, node: Node) -> Reader:
        return self.readers.open(self.ns.keys.file_key(node.path), node.etag, node.size)

    @_fuse_errors
    async def create(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, mode: int,
                     flags: int, ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node, upload = await self.ns.create(parent_inode, name, mode)
        fh = self.handles.add(WriteHandle(node, upload, ctx.pid))
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self.attrs(node)

    @_fuse_errors
    # pyfuse3 types it bytes, but replies from any buffer (PyObject_GetBuffer): a view of
    # the read chunk saves a copy of every read (reader.py).
    async def read(self, fh: pyfuse3.FileHandleT, off: int,  # type: ignore[override]
                   size: int) -> bytes | memoryview:
        h = self.handles.get(fh)
        if isinstance(h, WriteHandle) and h.upload is not None:
            raise FsError(f"{h.node.path!r} is being written: it can be read once it is "
                          "closed (programs that read back what they write, such as "
                          "databases, need random access, which S3 objects do not give)",
                          errno.EPERM)
        reader = h.reader if isinstance(h, ReadHandle | WriteHandle) else None
        if reader is None:
            raise FsError("this handle was opened for writing only", errno.EBADF)
        return await reader.read(off, size)

    @_fuse_errors
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        h = self.handles.get(fh)
        if not isinstance(h, WriteHandle):
            raise FsError("this handle was opened for reading only", errno.EBADF)
        if h.upload is None or h.upload.state is UploadState.DONE:
            async with h.lock:  # (the first write into an existing object starts its upload)
                if h.upload is None or h.upload.state is UploadState.DONE:
                    if h.reader is not None:
                        h.reader.close()
                        h.reader = None
                    h.upload = await self.ns.write_existing(h.node, off,
                                                            synced=h.upload is not None)
        return await h.upload.write(off, buf)

    @_fuse_errors
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        h = self.handles.get(fh)
        if not isinstance(h, WriteHandle) or h.upload is None:
            return
        if h.upload.state is UploadState.FAILED:  # reported (and logged) when it happened
            raise pyfuse3.FUSEError(h.upload.error.errno_ if h.upload.error else errno.EIO)
        self.ns.flushed(h.node, h.upload)
        if h.upload.bytes_written > 0:
            await self.ns.finish_write(h.node, h.upload)

    @_fuse_errors
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        h = self.handles.get(fh)
        # with no byte written it is a no-op: ddrescue and aria2c fsync before writing
        if isinstance(h, WriteHandle) and h.upload is not None and (
                h.upload.end or h.upload.state is not UploadState.OPEN):
            await self.ns.finish_write(h.node, h.upload)

    @_fuse_errors
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        h = self.handles.pop(fh)
        try:
            if isinstance(h, ReadHandle | WriteHandle) and h.reader is not None:
                h.reader.close()
            if isinstance(h, WriteHandle) and h.upload is not None:
                self.ns.released(h.node, h.upload)
                if h.upload.state is UploadState.OPEN:
                    await self.ns.finish_write(h.node, h.upload)  # its error is logged; the
                else:  # kernel discards it
                    self.ns.end_write(h.node, h.upload)
        finally:
            self.ns.closed(h.node)

    # -- lifecycle --------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """At unmount: let completing uploads finish, abort those never closed."""
        await self.ns.shutdown()
