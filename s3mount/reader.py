"""Reads of one open file: ranged GETs pinned to the object's ETag, with sequential read-ahead.

Each reader keeps a contiguous run of chunks (fetched or in flight) starting at or before the
current offset. A read at the end of the previous one is sequential: the window doubles up to
`max_window` and chunks are prefetched that far ahead, in parallel. Any other read resets the
window and fetches just what was asked. Each chunk's GET body is read straight into a buffer
from the shared `ReadBudget` (buffers.py), which bounds prefetching across all readers; bytes a
read is waiting for are always fetched, budget or not. A chunk's buffer goes back only once its
GET has ended, so a discarded chunk still being fetched counts against the budget.

Verified reads: when the object's ETag is the MD5 of its bytes (one PutObject: 32 hex digits)
and the reads go from offset 0 to the end in order, the bytes served are hashed as they go (in
a worker thread, behind the reads) and compared at the end; a mismatch fails the read that
completes the object with EIO. Re-reads of bytes already hashed are fine; a read that skips
ahead ends the verification of that pass (counted as unverified).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
from collections import deque
from dataclasses import dataclass, field

import trio

from .buffers import ReadBudget
from .config import MiB
from .errors import IntegrityError, SizeMismatch
from .etag import etag_is_md5, single_part_md5
from .store import Store

log = logging.getLogger(__name__)

INITIAL_WINDOW = 1 * MiB
MAX_CHUNK = 8 * MiB
VERIFY_QUEUE = 8  # reads served but not yet hashed, per reader, before reads wait


def _update(md5: hashlib._Hash, views: list[memoryview]) -> None:
    for view in views:
        md5.update(view)


class _Verifier:
    """The MD5 of the bytes one reader serves from offset 0 on, hashed in a worker thread
    while the reads go on (MD5 runs at ~600 MB/s per core: not on the event loop)."""

    def __init__(self, want: bytes, nursery: trio.Nursery, limiter: trio.CapacityLimiter
                 ) -> None:
        self.want = want
        self.pos = 0  # bytes handed to the hasher
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.send, recv = trio.open_memory_channel[memoryview](VERIFY_QUEUE)
        self.finished = trio.Event()
        nursery.start_soon(self._hash, recv, limiter)

    async def _hash(self, recv: trio.MemoryReceiveChannel[memoryview],
                    limiter: trio.CapacityLimiter) -> None:
        try:
            async with recv:
                async for view in recv:
                    batch = [view]
                    with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                        while len(batch) < VERIFY_QUEUE:
                            batch.append(recv.receive_nowait())
                    await trio.to_thread.run_sync(_update, self.md5, batch, limiter=limiter)
        finally:
            self.finished.set()

    def abandon(self) -> None:
        self.send.close()


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
        budget.counts["objects_opened"] += 1
        self.closed = False
        self.want = single_part_md5(etag) if budget.verify else None
        self.verifier: _Verifier | None = None
        # Set once the bytes failed verification: the kernel retries a failed read-ahead with
        # a smaller read at its offset, which must fail too (on this handle, until reopened).
        self.failed: str | None = None

    async def read(self, off: int, size: int) -> bytes:
        async with self.lock:
            if self.failed is not None:
                err = IntegrityError(self.failed)
                err.log_level = "debug"  # said once, when it was found
                raise err
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
            try:
                data = await self._collect(off, end)
            except SizeMismatch as exc:
                self.failed = str(exc)
                raise
            self.last_end = end
            self.budget.counts["bytes_read"] += len(data)
            if self.want is not None:
                await self._verify(off, data)
            return data

    async def _verify(self, off: int, data: bytes) -> None:
        """Hash what this read serves, if it continues the bytes hashed so far; the read that
        completes the object waits for the hash and fails on a mismatch."""
        v = self.verifier
        if v is None:
            if off != 0:
                return
            v = self.verifier = _Verifier(self.want or b"", self.nursery, self.budget.hashers)
        end = off + len(data)
        if end <= v.pos:
            return  # bytes hashed already: a re-read
        if off > v.pos:  # skipped ahead: this pass proves nothing
            self.budget.counts["unverified_passes"] += 1
            self._stop_verifying()
            return
        await v.send.send(memoryview(data)[v.pos - off:])
        v.pos = end
        if v.pos < self.size:
            return
        self.verifier = None
        v.send.close()
        await v.finished.wait()
        if v.md5.digest() == v.want:
            self.budget.counts["verified_objects"] += 1
            self.budget.counts["verified_bytes"] += self.size
            return
        await self._mismatch(v.md5.hexdigest())

    async def _mismatch(self, got: str) -> None:
        info = await self.store.head(self.key)
        if info is not None and not etag_is_md5(info.encryption):  # SSE-KMS: no MD5 after all
            if self.budget.verify:
                log.warning("%s is stored with %s encryption: its ETag is not an MD5, so "
                            "reads on this mount are not verified", self.key, info.encryption)
            self.budget.verify = False
            return
        self.budget.counts["failed_objects"] += 1
        self.failed = (
            f"{self.key}: the {self.size} bytes read do not match the object's MD5 (its ETag "
            f"is {self.etag}; they hash to {got}): S3 or the network delivered wrong bytes; "
            "open and read the file again")
        raise IntegrityError(self.failed)

    def _stop_verifying(self) -> None:
        if self.verifier is not None:
            self.verifier.abandon()
            self.verifier = None

    def close(self) -> None:
        self._stop_verifying()
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
