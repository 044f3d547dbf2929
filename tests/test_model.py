"""Random sequences of namespace and file operations on the in-process filesystem over MemStore,
each answer (errno or result) checked against a plain model of a directory tree (level 2).

The model is docs/SEMANTICS.md in a few lines: directories made by mkdir, files that are
either complete objects or being written through one handle (sequential writes; size as
written so far; readers get EPERM, unlink EBUSY, rename EBUSY, a second writer EPERM; the
object appears when the upload completes: the flush or fsync of a handle with data (an
fsync with none is a no-op), or the release), rmdir of a non-empty directory ENOTEMPTY,
mkdir of an existing name EEXIST, and
rename's checks in the order S3Fs makes them. Operations are called as the kernel calls
them: a path is walked with lookups from the root; open(O_CREAT) on an existing file is an
open with O_TRUNC. metadata_ttl=0, so no answer depends on time.

A failing example is printed by hypothesis as the shortest list of operations that shows it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pyfuse3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3mount.config import Config, MiB
from s3mount.fs import S3Fs
from tests.memstore import FirstGetMemStore, MemStore

# The one line S3Fs logs for each refusal, e.g. "mkdir: 'a' already exists (EEXIST)".
REFUSAL = r"^s3mount\.fs: \w+: .* \(E[A-Z]+\)$"
CTX = pyfuse3.RequestContext()
ROOT = pyfuse3.ROOT_INODE
BIG = 5 * MiB + 3  # two parts: a multipart upload, and renames by UploadPartCopy
NAMES = ["a", "b", "c"]
PATHS = NAMES + [f"{d}/{n}" for d in NAMES for n in NAMES]
MAX_HANDLES = 3

Result = tuple[Any, ...]


def _ok(*values: Any) -> Result:
    return ("ok", *values)


def _err(code: int) -> Result:
    return ("err", errno.errorcode[code])


# -- the model ---------------------------------------------------------------------------------


@dataclass
class MHandle:
    path: str
    data: bytearray = field(default_factory=bytearray)
    open: bool = True  # not completed yet
    dead: bool = False  # completed, then its file was removed or replaced by a rename


@dataclass
class Model:
    dirs: set[str] = field(default_factory=lambda: {""})  # every directory lookups find
    markers: set[str] = field(default_factory=set)  # directories with a marker key
    files: dict[str, bytes] = field(default_factory=dict)  # complete objects
    handles: list[MHandle] = field(default_factory=list)

    def writing(self, path: str) -> MHandle | None:
        return next((h for h in self.handles if h.open and h.path == path), None)

    def kind(self, path: str) -> str | None:
        if path in self.dirs:
            return "dir"
        if path in self.files or self.writing(path):
            return "file"
        return None

    def size(self, path: str) -> int:
        w = self.writing(path)
        return len(w.data) if w else len(self.files.get(path, b""))

    def keys_below(self, path: str) -> bool:
        return any(k.startswith(path + "/") for k in [*self.files, *self.markers])

    def listed(self, path: str) -> bool:
        """S3 shows the directory: its marker, or a key below it. A directory this mount
        emptied (no marker, no key) is still found by lookups, but listings lack it."""
        return path in self.markers or self.keys_below(path)

    def children(self, path: str) -> list[str]:
        below = path + "/" if path else ""
        names = {p[len(below):] for p in [*self.dirs, *self.files,
                                          *(h.path for h in self.handles if h.open)]
                 if p.startswith(below) and p != path and "/" not in p[len(below):]
                 and (p not in self.dirs or self.listed(p))}
        return sorted(names)

    def parent_error(self, path: str) -> Result | None:
        """The errno of walking to `path`'s directory, if any."""
        parts = path.split("/")[:-1]
        for i in range(len(parts)):
            kind = self.kind("/".join(parts[:i + 1]))
            if kind is None:
                return _err(errno.ENOENT)
            if kind == "file":
                return _err(errno.ENOTDIR)
        return None

    def complete(self, h: MHandle) -> None:
        self.files[h.path] = bytes(h.data)
        h.open = False

    def uploads_below(self, path: str) -> bool:
        return any(h.open and h.path.startswith(path + "/") for h in self.handles)

    def remove_dir(self, path: str) -> None:
        for d in [d for d in self.dirs if d == path or d.startswith(path + "/")]:
            self.dirs.discard(d)
            self.markers.discard(d)

    # each operation returns what S3Fs must answer

    def stat(self, path: str) -> Result:
        if err := self.parent_error(path):
            return err
        kind = self.kind(path)
        if kind is None:
            return _err(errno.ENOENT)
        return _ok(kind, self.size(path) if kind == "file" else 0)

    def mkdir(self, path: str) -> Result:
        if err := self.parent_error(path):
            return err
        if self.kind(path) is not None:
            return _err(errno.EEXIST)
        self.dirs.add(path)
        self.markers.add(path)
        return _ok()

    def rmdir(self, path: str) -> Result:
        if err := self.parent_error(path):
            return err
        kind = self.kind(path)
        if kind is None:
            return _err(errno.ENOENT)
        if kind == "file":
            return _err(errno.ENOTDIR)
        if self.children(path):
            return _err(errno.ENOTEMPTY)
        self.remove_dir(path)
        return _ok()

    def unlink(self, path: str) -> Result:
        if err := self.parent_error(path):
            return err
        kind = self.kind(path)
        if kind is None:
            return _err(errno.ENOENT)
        if kind == "dir":
            return _err(errno.EISDIR)
        if self.writing(path):
            return _err(errno.EBUSY)
        del self.files[path]
        self._bury(path)
        return _ok()

    def _bury(self, path: str) -> None:
        """Completed handles of a file removed (or replaced by a rename) write no more."""
        for h in self.handles:
            if not h.open and h.path == path:
                h.dead = True

    def open_write(self, path: str) -> Result:
        if err := self.parent_error(path):
            return err
        if self.kind(path) == "dir":
            return _err(errno.EISDIR)
        if self.writing(path):
            return _err(errno.EPERM)
        self.handles.append(MHandle(path))
        return _ok()

    def write(self, h: MHandle, data: bytes) -> Result:
        """After its upload completed (fsync, or a flush with data), a handle's write starts
        a new upload that begins with the file's bytes as they are then."""
        if not h.open:
            if h.dead:
                return _err(errno.EBADF)
            if self.writing(h.path):
                return _err(errno.EPERM)
            h.open, h.data = True, bytearray(self.files[h.path])
        h.data += data
        return _ok(len(data))

    def write_offset(self, h: MHandle) -> int:
        return len(h.data) if h.open or h.dead else len(self.files.get(h.path, b""))

    def flush(self, h: MHandle, sync: bool) -> Result:
        if h.open and h.data:  # (an fsync with nothing written is a no-op)
            self.complete(h)
        return _ok()

    def release(self, h: MHandle) -> Result:
        if h.open:
            self.complete(h)
        self.handles.remove(h)
        return _ok()

    def cat(self, path: str) -> Result:
        if err := self.parent_error(path):
            return err
        kind = self.kind(path)
        if kind is None:
            return _err(errno.ENOENT)
        if kind == "dir":
            return _err(errno.EISDIR)
        if self.writing(path):
            return _err(errno.EPERM)
        return _ok(self.files[path])

    def ls(self, path: str) -> Result:
        if path and (err := self.stat(path))[0] == "err":
            return err
        if self.kind(path) == "file":
            return _err(errno.ENOTDIR)
        prefix = path + "/" if path else ""
        return _ok([(n, self.kind(prefix + n), self.size(prefix + n)
                     if self.kind(prefix + n) == "file" else 0) for n in self.children(path)])

    def rename(self, old: str, new: str, noreplace: bool) -> Result:
        for p in (old, new):  # both directories are looked up before the call
            if self.parent_error(p) == _err(errno.ENOENT):
                return _err(errno.ENOENT)
        for p in (old, new):
            if err := self.parent_error(p):
                return err
        src = self.kind(old)
        if src is None:
            return _err(errno.ENOENT)
        if old == new:
            return _ok()
        dst = self.kind(new)
        if dst == "dir" and (self.keys_below(new) or self.uploads_below(new)):
            return _err(errno.ENOTEMPTY)
        if self.writing(old) or self.uploads_below(old):
            return _err(errno.EBUSY)
        if src == "dir" and new.startswith(old + "/"):
            return _err(errno.EINVAL)
        if dst is not None:
            if noreplace:
                return _err(errno.EEXIST)
            if self.writing(new):
                return _err(errno.EBUSY)
            if src == "file" and dst == "dir":
                return _err(errno.EISDIR)
            if src == "dir" and dst == "file":
                return _err(errno.ENOTDIR)
        if src == "file":
            self.files[new] = self.files.pop(old)
            self._bury(new)
            for h in self.handles:  # handles follow the file (its inode)
                if h.path == old:
                    h.path = new
            return _ok()
        # the keys below move; the marker too, and a directory without one gets one when
        # nothing lies below it (so that it exists under its new name)
        marked = old in self.markers or new in self.markers or not self.keys_below(old)
        moving = [d for d in self.dirs if d == old or d.startswith(old + "/")]
        moving_markers = [d for d in self.markers if d == old or d.startswith(old + "/")]
        self.remove_dir(new)
        for d in moving:
            self.dirs.discard(d)
        for d in moving_markers:
            self.markers.discard(d)
        self.dirs.update(new + d[len(old):] for d in moving)
        self.markers.update(new + d[len(old):] for d in moving_markers)
        for h in self.handles:  # completed handles below follow their files
            if h.path.startswith(old + "/"):
                h.path = new + h.path[len(old):]
        if marked:
            self.markers.add(new)
        for p in [p for p in self.files if p.startswith(old + "/")]:
            self.files[new + p[len(old):]] = self.files.pop(p)
        return _ok()


# -- the filesystem, called as the kernel calls it ---------------------------------------------


class Token:
    """Stands in for pyfuse3's ReaddirToken: room for a few entries per readdir call."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.entries: list[tuple[bytes, pyfuse3.EntryAttributes, int]] = []


def fake_readdir_reply(token: Token, name: bytes, attrs: pyfuse3.EntryAttributes,
                       next_id: int) -> bool:
    if len(token.entries) >= token.room:
        return False
    token.entries.append((name, attrs, next_id))
    return True


def kind_of(attrs: pyfuse3.EntryAttributes) -> str:
    return "dir" if attrs.st_mode & 0o170000 == 0o040000 else "file"


class Fs:
    def __init__(self, fs: S3Fs) -> None:
        self.fs = fs
        self.handles: list[int] = []  # file handles, in the model's order

    async def walk(self, path: str) -> pyfuse3.EntryAttributes:
        attrs = await self.fs.getattr(ROOT, CTX)
        for name in [n for n in path.split("/") if n]:
            attrs = await self.fs.lookup(attrs.st_ino, name.encode(), CTX)
        return attrs

    async def parent(self, path: str) -> int:
        return (await self.walk(path.rpartition("/")[0])).st_ino

    def name(self, path: str) -> bytes:
        return path.rpartition("/")[2].encode()

    async def stat(self, path: str) -> Result:
        attrs = await self.walk(path)
        again = await self.fs.getattr(attrs.st_ino, CTX)
        assert (kind_of(again), again.st_size) == (kind_of(attrs), attrs.st_size)
        return _ok(kind_of(attrs), attrs.st_size if kind_of(attrs) == "file" else 0)

    async def mkdir(self, path: str) -> Result:
        attrs = await self.fs.mkdir(await self.parent(path), self.name(path), 0o755, CTX)
        assert kind_of(attrs) == "dir"
        return _ok()

    async def rmdir(self, path: str) -> Result:
        await self.fs.rmdir(await self.parent(path), self.name(path), CTX)
        return _ok()

    async def unlink(self, path: str) -> Result:
        await self.fs.unlink(await self.parent(path), self.name(path), CTX)
        return _ok()

    async def open_write(self, path: str) -> Result:
        """open(O_WRONLY | O_CREAT | O_TRUNC): the kernel looks the name up first."""
        parent = await self.parent(path)
        try:
            attrs = await self.fs.lookup(parent, self.name(path), CTX)
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENOENT:
                raise
            info, _ = await self.fs.create(parent, self.name(path), 0o644,
                                           os.O_WRONLY | os.O_CREAT | os.O_TRUNC, CTX)
        else:
            if kind_of(attrs) == "dir":
                raise pyfuse3.FUSEError(errno.EISDIR) from None  # the kernel's answer
            info = await self.fs.open(attrs.st_ino, os.O_WRONLY | os.O_TRUNC, CTX)
        self.handles.append(info.fh)
        return _ok()

    async def cat(self, path: str) -> Result:
        attrs = await self.walk(path)
        if kind_of(attrs) == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)  # the kernel's answer
        info = await self.fs.open(attrs.st_ino, os.O_RDONLY, CTX)
        try:
            data = await self.fs.read(info.fh, 0, attrs.st_size + 10)
        finally:
            await self.fs.release(info.fh)
        return _ok(data)

    async def ls(self, path: str) -> Result:
        attrs = await self.walk(path)
        fh = await self.fs.opendir(attrs.st_ino, CTX)
        out = []
        pos = 0
        try:
            while True:
                token = Token(room=2)
                await self.fs.readdir(fh, pos, token)  # type: ignore[arg-type]
                if not token.entries:
                    break
                for name, a, next_id in token.entries:
                    kind = kind_of(a)
                    out.append((name.decode(), kind, a.st_size if kind == "file" else 0))
                    pos = next_id
        finally:
            await self.fs.releasedir(fh)
        return _ok(sorted(out))

    async def rename(self, old: str, new: str, noreplace: bool) -> Result:
        await self.fs.rename(await self.parent(old), self.name(old), await self.parent(new),
                             self.name(new), pyfuse3.RENAME_NOREPLACE if noreplace else 0,
                             CTX)
        return _ok()


# -- operations ---------------------------------------------------------------------------------

paths = st.sampled_from(NAMES * 3 + PATHS)  # top-level names more often: more collisions
handle_numbers = st.integers(0, MAX_HANDLES - 1)
sizes = st.sampled_from([0, 1, 3, 50, 50, 1000, BIG])
operations = st.one_of(
    st.tuples(st.just("mkdir"), paths),
    st.tuples(st.just("rmdir"), paths),
    st.tuples(st.just("unlink"), paths),
    st.tuples(st.just("open_write"), paths),
    st.tuples(st.just("write"), handle_numbers, sizes, st.integers(0, 255)),
    st.tuples(st.just("flush"), handle_numbers),
    st.tuples(st.just("fsync"), handle_numbers),
    st.tuples(st.just("release"), handle_numbers),
    st.tuples(st.just("stat"), paths),
    st.tuples(st.just("cat"), paths),
    st.tuples(st.just("ls"), st.sampled_from(["", *NAMES])),
    st.tuples(st.just("rename"), paths, paths, st.booleans()),
)


async def apply(model: Model, fs: Fs, op: tuple[Any, ...]) -> tuple[Result, Result] | None:
    """Run one operation on both; None when it does not apply (no such handle)."""
    name, *args = op
    if name in ("write", "flush", "fsync", "release"):
        if not model.handles:
            return None
        i = args[0] % len(model.handles)
        h = model.handles[i]
        if name == "write":
            data = bytes([args[2]]) * args[1]
            offset = model.write_offset(h)
            return model.write(h, data), await _answer(fs.fs.write(fs.handles[i], offset, data))
        if name == "release":
            fh = fs.handles.pop(i)
            return model.release(h), await _answer(fs.fs.release(fh))
        call = (fs.fs.flush(fs.handles[i]) if name == "flush"
                else fs.fs.fsync(fs.handles[i], False))
        return model.flush(h, name == "fsync"), await _answer(call)
    if name == "open_write" and len(model.handles) >= MAX_HANDLES:
        return None
    want = getattr(model, name)(*args)
    got = await _answer(getattr(fs, name)(*args))
    return want, got


async def _answer(coro: Any) -> Result:
    try:
        got = await coro
    except pyfuse3.FUSEError as exc:
        return _err(exc.errno)
    if got is None:
        return _ok()
    return got if isinstance(got, tuple) else _ok(got)


def initial(files: set[str], empty_dirs: set[str], markers: bool,
            first_get: bool = False) -> tuple[Model, MemStore]:
    """A bucket that other clients wrote: files, their directories (with markers or
    implicit), and empty directories (markers). With `first_get`, a store that can look
    files up by a GET of their first bytes (namespace.py uses it in place of HEADs)."""
    model, store = Model(), (FirstGetMemStore() if first_get else MemStore())
    files = {f for f in files if f.partition("/")[0] not in files}
    for f in sorted(files):
        data = f.encode() * 3
        model.files[f] = data
        store.put_now(f, data)
        if "/" in f:
            model.dirs.add(f.partition("/")[0])
    for d in sorted(empty_dirs - files):
        model.dirs.add(d)
        model.markers.add(d)
    if markers:
        model.markers |= model.dirs - {""}
    for d in model.markers:
        store.put_now(d + "/")
    return model, store


async def run(ops: list[tuple[Any, ...]], start: tuple[Model, MemStore]) -> None:
    config = Config(bucket="mem", mountpoint="/nonexistent", metadata_ttl=0,
                    part_size=5 * MiB, max_memory=64 * MiB)
    model, store = start
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            fs = Fs(S3Fs(config, store, nursery))
            done: list[str] = []
            for op in ops:
                pair = await apply(model, fs, op)
                if pair is None:
                    continue
                want, got = pair
                done.append(f"{op} -> {_short(got)}")
                assert got == want, (f"operation {op}: S3Fs answered {_short(got)}, the model "
                                     f"{_short(want)}; after:\n  " + "\n  ".join(done[:-1]))
            while fs.handles:
                await fs.fs.release(fs.handles.pop())
                model.release(model.handles[-1])
            assert _bucket(store) == _expected_keys(model), "the bucket is not the model"
            await fs.fs.shutdown()
            nursery.cancel_scope.cancel()


def _short(r: Result) -> str:
    text = repr(r)
    return text if len(text) < 200 else text[:200] + "..."


def _bucket(store: MemStore) -> dict[str, bytes]:
    return {k: store.data(k) for k in store.stored_keys()}


def _expected_keys(model: Model) -> dict[str, bytes]:
    out = {d + "/": b"" for d in model.markers}
    out.update(model.files)
    return out


@pytest.mark.expect_log(REFUSAL)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(paths, max_size=5), st.sets(st.sampled_from(NAMES), max_size=2), st.booleans(),
       st.lists(operations, max_size=50), st.booleans())
def test_operations_agree_with_the_model(files: set[str], empty_dirs: set[str], markers: bool,
                                         ops: list[tuple[Any, ...]], first_get: bool) -> None:
    with mock.patch.object(pyfuse3, "readdir_reply", fake_readdir_reply):
        trio.run(run, ops, initial(files, empty_dirs, markers, first_get))



@pytest.mark.expect_log(REFUSAL)
def test_rename_over_a_directory_being_written_into() -> None:
    """Found by the model: POSIX answers ENOTEMPTY, as rmdir of that directory does."""
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            fs = Fs(S3Fs(Config(bucket="mem", mountpoint="/nonexistent", metadata_ttl=0),
                         MemStore(), nursery))
            await fs.mkdir("b")
            await fs.open_write("b/a")
            await fs.mkdir("c")
            assert await _answer(fs.rmdir("b")) == _err(errno.ENOTEMPTY)
            assert await _answer(fs.rename("c", "b", False)) == _err(errno.ENOTEMPTY)
            nursery.cancel_scope.cancel()

    trio.run(main)
