"""Buffers and the budgets that bound them: part buffers for writes, chunk buffers for reads.

A part buffer is an anonymous mapping, so only the bytes written are resident. A whole part
is paid for from the `WriteBudget` (`--max-memory`) before its first byte is written, so a
writer that has started a part can always finish it: parts get full, get uploaded, and give
their bytes back. `acquire` waits when the budget is spent, which is the writers'
backpressure. A writer may hold a part it is not filling (part 1, kept until close so that it
can be patched): when that writer waits for room that nothing being uploaded will free, its
`spare` callback sends such a part now, and its bytes come back. If the budget is held by
parts of files that are open but idle (nothing being uploaded, no byte written anywhere for a
grace period), nothing would ever free room: `acquire` then fails with `ENOBUFS` rather than
hang. Freed buffers are kept for the next
part (a fresh mapping costs a page fault per 4 KiB: 0.9 s of CPU per GiB written, measured,
against 0.04 s for a reused one) as long as buffers in use plus kept stay within the budget;
`trim` drops the kept ones when no upload is active.

Read chunks come from the `ReadBudget` (`--read-memory`) the same way: anonymous mappings that
a GET body is read straight into, kept for reuse within the budget. Prefetching takes room
only when there is some; the bytes a read is waiting for are always taken.
"""

from __future__ import annotations

import collections
import errno
import io
import logging
import mmap
from collections.abc import Callable
from typing import Any

import trio

from .errors import FsError

log = logging.getLogger(__name__)
STALL_GRACE = 5.0  # seconds a writer waits for room while nothing uploads or is written


def _unexported(mem: mmap.mmap) -> bool:
    """True when no view of `mem` is alive, so it can be written again safely. (resize
    refuses while views exist; to the same size it changes nothing.)"""
    try:
        mem.resize(len(mem))
    except (BufferError, OSError, SystemError, ValueError):
        return False
    return True


def _close(mem: mmap.mmap) -> None:
    try:
        mem.close()
    except BufferError:  # a view is still referenced: the mapping goes with it
        log.debug("a part buffer was still referenced when freed")


class KeptBuffers:
    """Freed buffers (anonymous mappings) kept by size for the next user: a fresh mapping
    costs a page fault per 4 KiB. The owner says how much `room` its budget has left; kept
    buffers never take more than that."""

    def __init__(self) -> None:
        self._by_size: dict[int, list[mmap.mmap]] = {}
        self.bytes = 0
        self.mapped = 0  # fresh mappings made, ever (each a page fault per 4 KiB)
        self.viewed = 0  # buffers given back while still viewed: not reused, left to the GC

    def get(self, size: int, room: int) -> mmap.mmap:
        """A buffer of `size` bytes (already paid for): a kept one if there is one of that
        size, else a new mapping, after dropping kept ones that no longer fit in `room`."""
        if stack := self._by_size.get(size):
            self.bytes -= size
            return stack.pop()
        while self.bytes and self.bytes > room:
            self._drop_one()
        self.mapped += 1
        return mmap.mmap(-1, size)

    def put(self, mem: mmap.mmap, room: int) -> None:
        """Keep `mem` if it fits in `room` (bytes its budget has free) and nothing still
        views it; unmap it otherwise."""
        if not _unexported(mem):
            self.viewed += 1
            _close(mem)
        elif self.bytes + len(mem) <= room:
            self._by_size.setdefault(len(mem), []).append(mem)
            self.bytes += len(mem)
        else:
            _close(mem)

    def trim(self) -> None:
        """Unmap every kept buffer."""
        while self.bytes:
            self._drop_one()

    def _drop_one(self) -> None:
        size = next(s for s, stack in self._by_size.items() if stack)
        _close(self._by_size[size].pop())
        self.bytes -= size


class WriteBudget:
    """Bytes of part buffers all uploads may hold together; `acquire` waits for room."""

    def __init__(self, capacity: int, stall_grace: float = STALL_GRACE) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self.in_flight = 0  # of `used`, bytes of parts being uploaded (they come back)
        self.written = 0  # bytes written into parts, ever: shows that writers make progress
        self.stall_grace = stall_grace
        self._lot = trio.lowlevel.ParkingLot()
        self.kept = KeptBuffers()

    async def acquire(self, n: int, who: str = "",
                      spare: Callable[[], bool] | None = None) -> int:
        """Take `n` bytes (at most the whole budget); returns what was taken, to give back
        with `release`. While no room comes and nothing is being uploaded, `spare()` may start
        uploading a part the caller holds (True if it did). Raises `FsError(ENOBUFS)` when no
        room comes within the grace period while nothing is being uploaded."""
        n = min(n, self.capacity)
        while self.used + n > self.capacity:
            if not self.in_flight and spare is not None and spare():
                continue  # its bytes come back once it is uploaded
            written = self.written
            with trio.move_on_after(self.stall_grace) as waited:
                await self._lot.park()
            if (waited.cancelled_caught and not self.in_flight and self.written == written
                    and self.used + n > self.capacity):
                raise FsError(
                    f"{who}: all {self.capacity >> 20} MiB of write buffers (--max-memory) "
                    "are held by files open for writing that are not being written to, so "
                    "no upload can free any; close idle files, or mount with a larger "
                    "--max-memory", errno.ENOBUFS)
        self.used += n
        self.peak = max(self.peak, self.used)
        return n

    def release(self, n: int, in_flight: bool = False) -> None:
        self.used -= n
        if in_flight:
            self.in_flight -= n
        self._lot.unpark_all()

    def ship(self, n: int) -> None:
        """`n` bytes already taken are now being uploaded: they will come back."""
        self.in_flight += n
        self._lot.unpark_all()

    @property
    def kept_bytes(self) -> int:
        return self.kept.bytes

    def buffer(self, size: int) -> mmap.mmap:
        """A buffer of `size` bytes, already paid for with `acquire`."""
        return self.kept.get(size, room=self.capacity - self.used)

    def recycle(self, mem: mmap.mmap) -> None:
        """Take back a buffer whose bytes were released with `release`."""
        self.kept.put(mem, room=self.capacity - self.used)

    def trim(self) -> None:
        """Unmap every kept buffer (nothing is being written)."""
        self.kept.trim()


class PartBody(io.RawIOBase):
    """A read-only file over a buffer, so that botocore sends it without copying it whole.
    `getbuffer` hands the buffer itself to a sender that can send it without any copy
    (store.py: the socket sends straight from the part buffer)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._view)

    def getbuffer(self) -> memoryview:
        """The whole body, not a copy (as io.BytesIO.getbuffer); valid while the part is."""
        return self._view

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = min(max(0, base + offset), len(self._view))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self._view) - self._pos)
        b[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view),
                                                                   self._pos + size)
        data = self._view[self._pos:end].tobytes()
        self._pos = end
        return data


ZEROS = memoryview(bytes(1024 * 1024))  # copied into part buffers for holes, a slice at a time


class Part:
    """One part buffer, paid for (`taken`) from the budget before it was made; its first
    byte is byte `start` of the stream. Bytes past `fill` may be a previous part's."""

    def __init__(self, number: int, size: int, taken: int, budget: WriteBudget,
                 start: int = 0) -> None:
        self.number = number
        self.start = start
        self.mem = budget.buffer(size)
        self.fill = 0
        self.taken = taken
        self.shipped = False

    @property
    def full(self) -> bool:
        return self.fill == len(self.mem)

    @property
    def room(self) -> int:
        return len(self.mem) - self.fill

    @property
    def end(self) -> int:
        """Offset in the stream just past the bytes filled."""
        return self.start + self.fill

    def put(self, view: memoryview) -> int:
        """Append as much of `view` as fits; returns how many bytes."""
        n = min(len(view), self.room)
        self.mem[self.fill:self.fill + n] = view[:n]
        self.fill += n
        return n

    def put_zeros(self, n: int) -> int:
        """Append up to `n` zero bytes (as many as fit), written explicitly: a reused buffer
        holds old bytes. No allocation: slices of one shared block of zeros."""
        n = min(n, self.room)
        end = self.fill + n
        while self.fill < end:
            k = min(end - self.fill, len(ZEROS))
            self.mem[self.fill:self.fill + k] = ZEROS[:k]
            self.fill += k
        return n

    def patch(self, off: int, view: memoryview) -> None:
        """Overwrite filled bytes from stream offset `off` (all within `start`..`end`)."""
        at = off - self.start
        assert at >= 0 and at + len(view) <= self.fill
        self.mem[at:at + len(view)] = view

    def view(self) -> memoryview:
        return memoryview(self.mem)[: self.fill]

    def ship(self, budget: WriteBudget) -> None:
        """The part is being uploaded: its bytes will come back to the budget."""
        self.shipped = True
        budget.ship(self.taken)

    def free(self, budget: WriteBudget) -> None:
        budget.release(self.taken, in_flight=self.shipped)
        self.taken = 0
        budget.recycle(self.mem)


READ_BUFFER_MIN = 128 * 1024


def read_buffer_size(n: int) -> int:
    """Chunk buffers come in powers of two from 128 KiB, so that freed ones fit the next."""
    size = READ_BUFFER_MIN
    while size < n:
        size *= 2
    return size


class ReadBudget:
    """Bytes of chunk buffers all readers hold together, fetched or being fetched."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self.readers = 0  # open readers; with none, kept buffers are unmapped
        self.kept = KeptBuffers()
        # Verified reads (reader.py): on unless --no-verify-reads; the counts of what readers
        # served and proved, for status and metrics.
        self.verify = True
        self.md5_etags = True  # False: the probe (or an SSE-KMS object) showed they are not
        self.counts: collections.Counter[str] = collections.Counter()
        self.hashers = trio.CapacityLimiter(2)
        self.part_sizes = True  # until the server shows it cannot tell them (HEAD partNumber)
        # Reads prefer an additional checksum S3 keeps to the ETag's MD5 (cheaper), until a
        # checksum is shown wrong; keys whose checksum disagreed are then proven by their MD5,
        # and those whose MD5 then agreed are `checksum_cured`.
        self.prefer_checksums = True
        self.checksum_doubted: set[str] = set()
        self.checksum_cured: set[str] = set()

    def take(self, n: int, force: bool = False) -> mmap.mmap | None:
        """A buffer of at least `n` bytes, or None when it does not fit (unless `force`)."""
        size = read_buffer_size(n)
        if not force and self.used + size > self.capacity:
            return None
        self.used += size
        self.peak = max(self.peak, self.used)
        return self.kept.get(size, room=self.capacity - self.used)

    def give(self, mem: mmap.mmap) -> None:
        self.used -= len(mem)
        self.kept.put(mem, room=self.capacity - self.used)
        self.trim_if_idle()

    def trim_if_idle(self) -> None:
        if not self.readers and not self.used:
            self.kept.trim()
