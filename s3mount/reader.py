"""Reads of one open file: ranged GETs pinned to the object's ETag, with sequential read-ahead.

Each reader keeps a contiguous run of chunks (fetched or in flight) starting at or before the
current offset. A read at the end of the previous one is sequential: the window doubles up to
`max_window` and chunks are prefetched that far ahead, in parallel. Any other read resets the
window and fetches just what was asked. Prefetched bytes across all readers are bounded by a
shared `ReadBudget`; bytes a read is waiting for are always fetched, budget or not.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import trio

from .config import MiB
from .store import Store

log = logging.getLogger(__name__)

INITIAL_WINDOW = 1 * MiB
MAX_CHUNK = 8 * MiB


class ReadBudget:
    """Bytes of prefetched data all readers may hold together."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def try_take(self, n: int) -> bool:
        if self.used + n > self.capacity:
            return False
        self.used += n
        return True

    def force_take(self, n: int) -> None:
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


@dataclass(eq=False)
class Chunk:
    start: int
    end: int
    done: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    data: bytes | None = None
    error: BaseException | None = None


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
        chunk.data = None
        self.budget.give(chunk.end - chunk.start)

    def _schedule(self, target: int, prefetch: bool) -> None:
        """Start fetching chunks until the run reaches `target` (or the budget says stop)."""
        target = min(target, self.size)
        step = min(MAX_CHUNK, max(self.window // 2, 128 * 1024))
        while self.next_start < target:
            start = self.next_start
            end = min(self.size, start + step) if prefetch else min(self.size, max(
                target, start + 128 * 1024))
            if prefetch:
                if not self.budget.try_take(end - start):
                    return
            else:
                self.budget.force_take(end - start)
            chunk = Chunk(start, end)
            self.chunks.append(chunk)
            self.next_start = end
            self.nursery.start_soon(self._fetch, chunk)

    async def _fetch(self, chunk: Chunk) -> None:
        with chunk.scope:
            try:
                chunk.data = await self.store.get_range(self.key, chunk.start, chunk.end,
                                                        self.etag)
            except Exception as exc:  # noqa: BLE001 - handed to the read that needs it
                chunk.error = exc
        chunk.done.set()

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
            assert chunk.data is not None
            view = memoryview(chunk.data)
            parts.append(view[max(off, chunk.start) - chunk.start: min(end, chunk.end)
                              - chunk.start])
        return b"".join(parts)
