"""The file-handle table: what each open file or directory handle of the kernel refers to."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

from .errors import FsError
from .inodes import Node
from .reader import Reader
from .s3view import Entry
from .writer import Upload


@dataclass(eq=False)
class DirHandle:
    node: Node
    pos: int = 0  # offset (entry index) the next readdir continues from
    entries: AsyncIterator[tuple[str, Entry]] | None = None
    peeked: tuple[str, Entry] | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)


@dataclass(eq=False)
class ReadHandle:
    node: Node
    reader: Reader


@dataclass(eq=False)
class WriteHandle:
    """A file opened for writing. `upload` is None while an existing file opened without
    O_TRUNC is unchanged (it may be read through `reader` if opened O_RDWR)."""

    node: Node
    upload: Upload | None
    pid: int = 0
    reader: Reader | None = None


Handle = DirHandle | ReadHandle | WriteHandle


class HandleTable:
    def __init__(self) -> None:
        self._next = 1
        self._handles: dict[int, Handle] = {}

    def add(self, handle: Handle) -> int:
        fh = self._next
        self._next += 1
        self._handles[fh] = handle
        return fh

    def get(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FsError(f"unknown file handle {fh}", errno.EBADF) from None

    def pop(self, fh: int) -> Handle:
        handle = self.get(fh)
        del self._handles[fh]
        return handle
