"""Reads of one open file: ranged GETs pinned to the object's ETag, with sequential read-ahead.

Each reader keeps a contiguous run of chunks (fetched or in flight) starting at or before the
current offset. A read at the end of the previous one is sequential: the window doubles up to
`max_window` and chunks are prefetched that far ahead, in parallel. Any other read resets the
window and fetches just what was asked. Each chunk's GET body is read straight into a buffer
from the shared `ReadBudget` (buffers.py), which bounds prefetching across all readers; bytes a
read is waiting for are always fetched, budget or not. A chunk's buffer goes back only once its
GET has ended, so a discarded chunk still being fetched counts against the budget.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
from collections import deque
from dataclasses import dataclass, field

import trio

from .buffers import ReadBudget
from .config import MiB
from .store import Store

log = logging.getLogger(__name__)

INITIAL_WINDOW = 1 * MiB
MAX_CHUNK = 8 * MiB


@dataclass(eq=False)
class Chunk:
    start: int
    end: int
    done: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    mem: mmap.mmap | None = None  # the buffer, from the ReadBudget
    error: BaseException | None = None
    fetching: bool = True
    discarded: bool = False


class Reader:
    def __init__(self, store: Store, key: str, etag: str, size: int, budget: ReadBudget,
                 nursery: trio.Nursery, max_window: int) -> None:
        self.store, self.key, self.etag, self.size = store, key, etag, size
        self.budget = budget
        self.nursery = nursery
        self.max_window = max(max_window, INITIAL_WINDOW)
        self.window = INITIAL_WINDOW
        self.chunks: deque[Chunk] = deque()
        self.next_start = 0  # end of the run of chunks
        # Where a sequential read would start. The first read proves nothing: prefetching at
        # once would compete with the bytes it waits for (time to first byte 27 -> 12 ms).
        self.last_end = -1
        self.lock = trio.Lock()
        budget.readers += 1
        self.closed = False

    async def read(self, off: int, size: int) -> bytes:
        async with self.lock:
            end = min(off + size, self.size)
            if off >= end:
                return b""
            sequential = off == self.last_end
            if sequential:
                self.window = min(self.window * 2, self.max_window)
            else:
                self.window = INITIAL_WINDOW
            if not self._covers(off):
                self._reset(off)
            self._drop_before(off)
            self._schedule(end, prefetch=False)
            if sequential:
                self._schedule(end + self.window, prefetch=True)
            data = await self._collect(off, end)
            self.last_end = end
            return data

    def close(self) -> None:
        self._reset(0)
        if not self.closed:
            self.closed = True
            self.budget.readers -= 1
            self.budget.trim_if_idle()

    def _covers(self, off: int) -> bool:
        return bool(self.chunks) and self.chunks[0].start <= off < self.next_start

    def _reset(self, off: int) -> None:
        while self.chunks:
            self._discard(self.chunks.popleft())
        self.next_start = off

    def _drop_before(self, off: int) -> None:
        while self.chunks and self.chunks[0].end <= off:
            self._discard(self.chunks.popleft())

    def _discard(self, chunk: Chunk) -> None:
        chunk.scope.cancel()
        chunk.discarded = True
        if not chunk.fetching:
            self._free(chunk)

    def _free(self, chunk: Chunk) -> None:
        if chunk.mem is not None:
            mem, chunk.mem = chunk.mem, None
            self.budget.give(mem)

    def _schedule(self, target: int, prefetch: bool) -> None:
        """Start fetching chunks until the run reaches `target` (or the budget says stop)."""
        target = min(target, self.size)
        step = min(MAX_CHUNK, max(self.window // 2, 128 * 1024))
        while self.next_start < target:
            start = self.next_start
            end = min(self.size, start + step) if prefetch else min(self.size, max(
                target, start + 128 * 1024))
            mem = self.budget.take(end - start, force=not prefetch)
            if mem is None:
                return
            chunk = Chunk(start, end, mem=mem)
            self.chunks.append(chunk)
            self.next_start = end
            self.nursery.start_soon(self._fetch, chunk)

    async def _fetch(self, chunk: Chunk) -> None:
        assert chunk.mem is not None
        view = memoryview(chunk.mem)[:chunk.end - chunk.start]
        with chunk.scope:
            try:
                await self.store.get_range(self.key, chunk.start, view, self.etag)
            except Exception as exc:  # noqa: BLE001 - handed to the read that needs it
                chunk.error = exc
            finally:
                # The error's traceback may still name the view; released, it no longer
                # pins the buffer, which can then be reused rather than wait for the GC.
                with contextlib.suppress(BufferError):
                    view.release()
        chunk.fetching = False
        chunk.done.set()
        if chunk.discarded:
            self._free(chunk)

    async def _collect(self, off: int, end: int) -> bytes:
        parts: list[memoryview] = []
        for chunk in list(self.chunks):
            if chunk.start >= end:
                break
            if chunk.end <= off:
                continue
            await chunk.done.wait()
            if chunk.error is not None:
                self._reset(self.next_start)
                raise chunk.error
            assert chunk.mem is not None
            parts.append(memoryview(chunk.mem)[max(off, chunk.start) - chunk.start:
                                               min(end, chunk.end) - chunk.start])
        data = b"".join(parts)
        for view in parts:
            view.release()
        return data


class Readers:
    """Opens the readers of a mount: they share its store, read budget and nursery."""

    def __init__(self, store: Store, budget: ReadBudget, nursery: trio.Nursery,
                 max_window: int) -> None:
        self.store, self.budget, self.nursery = store, budget, nursery
        self.max_window = max_window

    def open(self, key: str, etag: str, size: int) -> Reader:
        return Reader(self.store, key, etag, size, self.budget, self.nursery, self.max_window)
