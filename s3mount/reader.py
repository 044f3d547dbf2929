"""Reads of one open file: ranged GETs pinned to the object's ETag, with sequential read-ahead.

Each reader keeps a contiguous run of chunks (fetched or in flight) starting at or before the
current offset. A read at the end of the previous one is sequential: the window doubles up to
`max_window` and chunks are prefetched that far ahead, in parallel. Any other read resets the
window and fetches just what was asked. Each chunk's GET body is read straight into a buffer
from the shared `ReadBudget` (buffers.py), which bounds prefetching across all readers; bytes a
read is waiting for are always fetched, budget or not. A chunk's buffer goes back only once its
GET has ended, so a discarded chunk still being fetched counts against the budget.

First reads: a file looked up by its path on a fresh mount (`open("d/f")`) gets its first GET
started with the HEAD that learns its metadata (`Readers.start_first_read`), so that the read
after the open waits for no further round trip; an open within `SPARE_TTL` takes that reader
over, and one nobody opens is closed.

Verified reads: when the reads go from offset 0 to the end in order, the bytes served are
hashed as they go (in a worker thread, behind the reads) and compared at the end; a mismatch
fails the read that completes the object with EIO. Re-reads of bytes already hashed are fine; a
read that skips ahead ends the verification of that pass (counted as unverified). The proof is
the cheapest the object offers: an additional checksum S3 keeps (HEAD with ChecksumMode: CRC32C,
CRC64NVME, CRC32, SHA1, SHA256; of the whole object, or composite `-N` of its parts), else the
ETag when it is an MD5 (one PutObject: the MD5 of its bytes; a multipart upload: the MD5 of its
parts' MD5s). Composite values need the part sizes, asked of S3 by HEAD partNumber=N. Objects
up to CHECKSUM_MIN with an MD5 ETag skip the HEAD: hashing them costs less than asking.
A checksum that disagrees while the ETag is an MD5 fails the read, and later passes of that
object are proven by the MD5 instead; when that proves WRONG_CHECKSUMS such objects, the server's
checksums are taken to be wrong (said once) and reads on the mount stop preferring them.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import mmap
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from . import checksum
from .buffers import ReadBudget
from .checksum import Hasher
from .config import MiB
from .errors import IntegrityError, SizeMismatch, StoreError
from .etag import etag_is_md5, etag_like, verifiable_parts
from .objects import FirstGet, ObjectInfo, Store

log = logging.getLogger(__name__)

INITIAL_WINDOW = 1 * MiB
MAX_CHUNK = 8 * MiB
# Reads served but not yet hashed, per reader, before reads wait: their bytes stay alive until
# hashed (at most this many read replies, 1 MiB each, beyond --read-memory).
VERIFY_QUEUE = 4
# The kernel's first read request of a file (mount.py raises its read-ahead to 1 MiB): what a
# first read started before the open fetches.
FIRST_READ = 1 * MiB
SPARE_TTL = 1.0  # seconds a first read started before an open waits for that open
# Objects this small with an MD5 ETag are proven by it without asking for a checksum: MD5 of
# 1 MiB is ~1.7 ms of CPU, about what a HEAD costs the mount and the server together. Up to
# and including 1 MiB: one read of the kernel's (1 MiB) serves such a file whole, and would
# wait for that HEAD (a round trip more for the first byte of a file of exactly 1 MiB).
CHECKSUM_MIN = 1 * MiB
# Objects whose checksum refused a pass that their MD5 then proved, before the server's
# checksums are taken to be wrong rather than those passes' bytes.
WRONG_CHECKSUMS = 3


# What a read served, handed to the hasher: its bytes, and what to call once they are hashed
# (they may be a view of a read chunk, which cannot be reused until then).
_Served = tuple[memoryview, Callable[[], None] | None]


def _done_with(batch: list[_Served]) -> None:
    """Forget the bytes of `batch` (emptied), then say that they are done with."""
    dones = [done for _, done in batch]
    batch.clear()
    for done in dones:
        if done is not None:
            done()


def _hash_segments(segments: list[tuple[Hasher, memoryview]]) -> None:
    for hasher, view in segments:
        hasher.update(view)


@dataclass(frozen=True)
class _Plan:
    """What one pass is proven against: `parts` pieces, each hashed by `new`, which
    `combine` turns into a value that must equal `expected`."""

    expected: str
    parts: int
    new: Callable[[], Hasher]
    combine: Callable[[list[bytes]], str]
    what: str  # for messages: "MD5s (its ETag is ...)"
    md5: bool = False  # proven by the ETag (else by an additional checksum)
    inline: bool = False  # hashed on the event loop (a fast CRC), else in a worker thread


def _md5_plan(etag: str, parts: int) -> _Plan:
    return _Plan(etag, parts, lambda: hashlib.md5(usedforsecurity=False),
                 functools.partial(etag_like, etag),
                 f"MD5s (its ETag is {etag})", md5=True)


def _checksum_plan(info: ObjectInfo) -> _Plan | None:
    """The plan for an object S3 keeps an additional checksum of (HEAD with ChecksumMode):
    `b64` of the whole object, or `b64-N` composed of its N parts' checksums. None when the
    value's shape is not one of these: a composite value without its `-N` (moto's), or a
    suffix-less value of a multipart object not said to be FULL_OBJECT, proves nothing."""
    if info.checksum is None or info.checksum_algorithm is None:
        return None
    algo = checksum.kept(info.checksum_algorithm)
    value, dash, n = info.checksum.partition("-")
    if dash and not n.isdigit():
        return None
    kind = info.checksum_type
    if dash and kind not in (None, "COMPOSITE"):
        return None
    if not dash and (kind == "COMPOSITE" or (
            "-" in info.etag and kind != "FULL_OBJECT")):
        return None
    try:
        size = len(base64.b64decode(value, validate=True))
    except ValueError:
        return None
    if size != len(algo.digest(b"")):
        return None
    parts = int(n) if dash else 1

    def combine(digests: list[bytes]) -> str:
        sums = [checksum.b64(d) for d in digests]
        return sums[0] if not dash else algo.composite(sums)
    return _Plan(info.checksum, parts, algo.hasher, combine,
                 f"{algo.s3_name} checksum (S3 keeps {info.checksum}"
                 f"{', ' + kind if kind else ''})", inline=algo.fast)


class _Verifier:
    """The digests of the parts of what one reader serves from offset 0 on, hashed in a
    worker thread while the reads go on (MD5 runs at ~600 MB/s per core: not on the event
    loop), or on the event loop where the plan is a fast CRC (`_Plan.inline`: cheaper than
    the hand-over to a thread). `plan()` says what to compare with (None: nothing),
    `part_size(n, parts)` gives part n's size (None: unknown, so nothing can be verified)."""

    def __init__(self, plan: Callable[[], Awaitable[_Plan | None]],
                 part_size: Callable[[int, int], Awaitable[int | None]],
                 nursery: trio.Nursery, limiter: trio.CapacityLimiter) -> None:
        self.part_size = part_size
        self.plan: _Plan | None = None
        self.pos = 0  # bytes handed to the hasher
        self.digests: list[bytes] = []
        self.hashed = 0
        self.hasher: Hasher | None = None  # of the part being hashed
        self.left = 0  # bytes of that part still to come
        self.unknown = False  # no plan, or a part size could not be had
        self.send, recv = trio.open_memory_channel[_Served](VERIFY_QUEUE)
        self.finished = trio.Event()
        nursery.start_soon(self._hash, plan, recv, limiter)

    async def _hash(self, plan: Callable[[], Awaitable[_Plan | None]],
                    recv: trio.MemoryReceiveChannel[_Served],
                    limiter: trio.CapacityLimiter) -> None:
        batch: list[_Served] = []
        async with recv:
            try:
                self.plan = await plan()
                self.unknown = self.plan is None
                while True:
                    try:
                        batch.append(await recv.receive())
                    except trio.EndOfChannel:
                        break
                    with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                        while len(batch) < VERIFY_QUEUE:
                            batch.append(recv.receive_nowait())
                    await self._hash_batch([view for view, _ in batch], limiter)
                    _done_with(batch)
            except Exception:  # a background task must not take the mount down
                log.exception("verifying a read failed unexpectedly; that read is not verified")
                self.unknown = True
            finally:
                # What was sent but never hashed (an error, a cancel): its chunks can go.
                # Before the channel closes, so nothing sent is left in it.
                _done_with(batch)
                with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                    while True:
                        _done_with([recv.receive_nowait()])
                self.finished.set()

    async def _hash_batch(self, batch: list[memoryview], limiter: trio.CapacityLimiter
                          ) -> None:
        if self.unknown or self.plan is None:
            return  # drain: the reads go on, unverified
        segments: list[tuple[Hasher, memoryview]] = []
        ends: list[Hasher] = []
        for view in batch:
            while view and not self.unknown:
                if self.left == 0:
                    size = await self._next_size(len(self.digests) + len(ends) + 1)
                    if size is None:
                        break
                    self.hasher, self.left = self.plan.new(), size
                assert self.hasher is not None
                take = min(self.left, len(view))
                segments.append((self.hasher, view[:take]))
                view, self.left = view[take:], self.left - take
                if self.left == 0:
                    ends.append(self.hasher)
        if self.plan.inline:
            _hash_segments(segments)
        else:
            await trio.to_thread.run_sync(_hash_segments, segments, limiter=limiter)
        self.digests += [h.digest() for h in ends]
        self.hashed += sum(len(v) for _, v in segments)

    async def _next_size(self, number: int) -> int | None:
        assert self.plan is not None
        parts = self.plan.parts
        size = None if number > parts else await self.part_size(number, parts)
        if not size:
            self.unknown = True
        return size

    def result(self) -> str | None:
        """What the bytes served give, if every part was hashed whole; else None."""
        if (self.unknown or self.plan is None or len(self.digests) != self.plan.parts
                or self.hashed != self.pos):
            return None
        return self.plan.combine(self.digests)

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
    pins: int = 0  # reads served from it whose bytes the verifier has not hashed yet


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
        # A pass is proven by an additional checksum if S3 keeps one (asked when a pass
        # starts), else by the ETag when it is made of MD5s.
        self.md5_parts = verifiable_parts(etag) if budget.md5_etags else None
        self.verifier: _Verifier | None = None
        self.sizes: dict[int, int] = {}  # part sizes S3 gave (part number: bytes)
        self.uniform: bool | None = None  # parts 2..N-1 taken to be part 1's size
        # Set once the bytes failed verification: the kernel retries a failed read-ahead with
        # a smaller read at its offset, which must fail too (on this handle, until reopened).
        self.failed: str | None = None

    async def read(self, off: int, size: int) -> bytes | memoryview:
        """Bytes [off, off + size) of the object, or fewer at its end. A read within one
        chunk is a view of that chunk's buffer, not a copy: it stays valid as long as it is
        referenced (a buffer still viewed is never reused), but it should be dropped once
        replied, for the buffer to be reused."""
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
                data, chunk = await self._collect(off, end)
            except SizeMismatch as exc:
                self.failed = str(exc)
                raise
            self.last_end = end
            self.budget.counts["bytes_read"] += len(data)
            if self.budget.verify:
                await self._verify(off, data, chunk)
            return data

    async def _verify(self, off: int, data: bytes | memoryview, chunk: Chunk | None) -> None:
        """Hash what this read serves, if it continues the bytes hashed so far; the read that
        completes the object waits for the hash and fails on a mismatch."""
        v = self.verifier
        if v is None:
            if off != 0:
                return
            v = self.verifier = _Verifier(self._plan, self._part_size, self.nursery,
                                          self.budget.hashers)
        end = off + len(data)
        if end <= v.pos:
            return  # bytes hashed already: a re-read
        if off > v.pos:  # skipped ahead: this pass proves nothing
            log.debug("%s: a read at %d skips ahead of the %d bytes hashed: this pass is not "
                      "verified", self.key, off, v.pos)
            self.budget.counts["unverified_passes"] += 1
            self._stop_verifying()
            return
        done = None
        if chunk is not None:  # its buffer waits for the hasher before it is reused
            chunk.pins += 1
            done = functools.partial(self._unpin, chunk)
        try:
            await v.send.send((memoryview(data)[v.pos - off:], done))
        except trio.BrokenResourceError:  # the hashing task ended (logged there)
            if done is not None:
                done()
            self._stop_verifying()
            return
        except BaseException:  # not sent (a cancelled read): the hasher will not unpin it
            if done is not None:
                done()
            raise
        v.pos = end
        if v.pos < self.size:
            return
        self.verifier = None
        v.send.close()
        await v.finished.wait()
        got = v.result()
        if got is None or v.plan is None:
            log.debug("%s: read whole, but not verified (%s)", self.key,
                      "nothing to prove it by" if v.plan is None else "a part size unknown")
            self.budget.counts["unverified_passes"] += 1
        elif got == v.plan.expected:
            self.budget.counts["verified_objects"] += 1
            self.budget.counts["verified_bytes"] += self.size
            if not v.plan.md5:
                self.budget.counts["verified_by_checksum"] += 1
            elif self.key in self.budget.checksum_doubted:
                self._checksum_was_wrong()
        elif not await self._guess_held(v.plan.parts):
            log.debug("%s: read whole, but not verified: its parts are not all of one size, "
                      "as was guessed", self.key)
            self.budget.counts["unverified_passes"] += 1
        else:
            await self._mismatch(v.plan, got)

    async def _plan(self) -> _Plan | None:
        md5 = None if self.md5_parts is None else _md5_plan(self.etag, self.md5_parts)
        if md5 is not None and (self.size <= CHECKSUM_MIN or not self.budget.prefer_checksums
                                or self.key in self.budget.checksum_doubted):
            return md5
        try:
            info = await self.store.head(self.key, checksum=True)
        except StoreError as exc:
            log.debug("%s: no checksum to verify this read against (%s)", self.key, exc)
            return md5
        if info is None or info.etag != self.etag:
            return None  # gone or replaced: the reads pinned to the ETag will say so
        if not etag_is_md5(info.encryption):
            md5 = None  # SSE-KMS, SSE-C: the ETag only looks like an MD5
        return _checksum_plan(info) or md5

    def _checksum_was_wrong(self) -> None:
        """The MD5 proved bytes of an object whose checksum refused an earlier pass: wrong
        bytes that time, or a wrong checksum. Once it happens to WRONG_CHECKSUMS objects, the
        server's checksums are taken to be wrong (its ETags are used from then on)."""
        cured = self.budget.checksum_cured
        cured.add(self.key)
        if len(cured) >= WRONG_CHECKSUMS and self.budget.prefer_checksums:
            self.budget.prefer_checksums = False
            log.warning("the checksums this server keeps disagreed with %d objects that their "
                        "ETags (MD5s) then proved, the last %s: reads on this mount are "
                        "verified by ETags from now on (the server's checksums look wrong)",
                        len(cured), self.key)

    async def _part_size(self, number: int, parts: int) -> int | None:
        """Size of part `number` of `parts`: the whole object for a single-part one; else
        asked of S3 (HEAD partNumber=N), since a schedule of our own would prove nothing.
        Parts 1 and N are asked first: when the parts before N, all of part 1's size, would
        add up to the object with part N, that is taken as the layout (every tool cuts a
        stream into equal parts) and the parts between are not asked, one HEAD per part
        (128 per GiB of boto3's 8 MiB parts). A guess cannot make wrong bytes pass (they
        would have to give the right digests at the wrong boundaries); a pass it fails is
        checked against the sizes S3 gives before its read fails (`_guess_held`)."""
        if parts == 1:
            return self.size
        if self.uniform is None and parts > 2:
            first, last = await self._ask_size(1), await self._ask_size(parts)
            self.uniform = (first is not None and last is not None
                            and 0 < last <= first and (parts - 1) * first + last == self.size)
        if self.uniform and 1 < number < parts:
            return self.sizes[1]
        return await self._ask_size(number)

    async def _guess_held(self, parts: int) -> bool:
        """After a pass failed with the part sizes guessed: whether S3 gives the same sizes
        (then the bytes were wrong). If not, such passes ask every size from now on."""
        if not self.uniform:
            return True  # nothing was guessed
        for number in range(2, parts):
            if await self._ask_size(number) != self.sizes[1]:
                self.uniform = False
                return False
        return True

    async def _ask_size(self, number: int) -> int | None:
        """Part `number`'s size as S3 gives it (asked once per reader); None if unknown."""
        if number in self.sizes:
            return self.sizes[number]
        if not self.budget.part_sizes:
            return None
        try:
            size = await self.store.part_size(self.key, number, self.etag)
        except StoreError as exc:
            log.debug("%s: part %d's size unknown (%s): this read is not verified", self.key,
                      number, exc)
            return None
        if size is None and self.budget.part_sizes:
            self.budget.part_sizes = False
            log.info("this server does not tell the part sizes of multipart objects (HEAD "
                     "partNumber): reads of multipart objects are not verified")
        if size is not None:
            self.sizes[number] = size
        return size

    async def _mismatch(self, plan: _Plan, got: str) -> None:
        if not plan.md5 and self.md5_parts is not None:
            # Wrong bytes, or a wrong checksum: later passes are proven by the MD5 instead.
            self.budget.checksum_doubted.add(self.key)
        if plan.md5:
            info = await self.store.head(self.key)
            if info is not None and not etag_is_md5(info.encryption):  # SSE-KMS: no MD5s
                if self.budget.md5_etags:
                    log.warning("%s is stored with %s encryption: its ETag is not an MD5, so "
                                "reads on this mount are verified only by checksums S3 keeps",
                                self.key, info.encryption)
                self.budget.md5_etags = False
                self.budget.counts["unverified_passes"] += 1
                return
        self.budget.counts["failed_objects"] += 1
        self.failed = (
            f"{self.key}: the {self.size} bytes read do not match the object's {plan.what}; "
            f"they give {got}: S3 or the network delivered wrong bytes; open and read the "
            "file again")
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

    def fetch_first(self, end: int) -> bool:
        """Start fetching bytes [0, end) as one GET, if nothing was fetched yet and the
        budget has room (a read is expected soon); False if not started."""
        end = min(end, self.size)
        if self.chunks or end <= 0 or self.closed:
            return False
        mem = self.budget.take(end)
        if mem is None:
            return False
        chunk = Chunk(0, end, mem=mem)
        self.chunks.append(chunk)
        self.next_start = end
        self.nursery.start_soon(self._fetch, chunk)
        return True

    def fetched_first(self, mem: mmap.mmap, end: int) -> None:
        """Bytes [0, end) are in `mem` (from the read budget) already: fetched before the
        open, by the GET that looked the file up (`Readers.get_first`)."""
        chunk = Chunk(0, end, mem=mem, fetching=False)
        chunk.done.set()
        self.chunks.append(chunk)
        self.next_start = end

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
        if not chunk.fetching and not chunk.pins:
            self._free(chunk)

    def _unpin(self, chunk: Chunk) -> None:
        chunk.pins -= 1
        if chunk.discarded and not chunk.fetching and not chunk.pins:
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
        if chunk.discarded and not chunk.pins:
            self._free(chunk)

    async def _collect(self, off: int, end: int) -> tuple[bytes | memoryview, Chunk | None]:
        """Bytes [off, end): a view of the one chunk that holds them (and that chunk), else
        a copy joined from the chunks (and None)."""
        parts: list[memoryview] = []
        chunks: list[Chunk] = []
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
            chunks.append(chunk)
        if len(parts) == 1:
            # A copy of 1 MiB costs the mount more than the rest of the read (perf: 0.2 CPU-s
            # per GiB of 1.1, malloc's page faults included); pyfuse3 replies from any buffer.
            return parts[0], chunks[0]
        data = b"".join(parts)
        for view in parts:
            view.release()
        return data, None


class Readers:
    """Opens the readers of a mount: they share its store, read budget and nursery."""

    def __init__(self, store: Store, budget: ReadBudget, nursery: trio.Nursery,
                 max_window: int) -> None:
        self.store, self.budget, self.nursery = store, budget, nursery
        self.max_window = max_window

        # first reads started before an open, by (key, ETag): see `start_first_read`
        self.spares: dict[tuple[str, str], Reader] = {}

    def open(self, key: str, etag: str, size: int) -> Reader:
        """A reader of the object; the one whose first read was started for it, if any."""
        self.budget.counts["objects_opened"] += 1
        spare = self.spares.pop((key, etag), None)
        if spare is not None and spare.size == size:
            return spare
        if spare is not None:
            spare.close()
        return self._new(key, etag, size)

    def _new(self, key: str, etag: str, size: int) -> Reader:
        return Reader(self.store, key, etag, size, self.budget, self.nursery, self.max_window)

    def start_first_read(self, key: str, etag: str, size: int) -> bool:
        """Start fetching what the first read of the object will ask (its first
        FIRST_READ bytes, pinned to `etag`) for an open expected within SPARE_TTL; closed
        (its GET cancelled, its buffer back) if none comes. False if not started (nothing to
        read, one already started, or no room in the read budget)."""
        if size <= 0 or (key, etag) in self.spares:
            return False
        reader = self._new(key, etag, size)
        if not reader.fetch_first(FIRST_READ):
            reader.close()
            return False
        self._spare(key, etag, reader)
        return True

    async def get_first(self, store: FirstGet, key: str) -> ObjectInfo | None:
        """What a HEAD of `key` says, learnt from one GET of its first FIRST_READ bytes (not
        pinned: its answer gives the ETag), whose bytes are kept for an open within SPARE_TTL
        (as `start_first_read`'s). Without room in the read budget, a HEAD."""
        mem = self.budget.take(FIRST_READ)
        if mem is None:
            return await self.store.head(key)
        got = None
        view = memoryview(mem)[:FIRST_READ]
        try:
            got = await store.get_first(key, view)
        finally:
            with contextlib.suppress(BufferError):  # (see `Reader._fetch`)
                view.release()
            if got is None or got[0].size == 0:
                self.budget.give(mem)
        if got is None:
            return None
        info, n = got
        if info.size > 0:
            old = self.spares.pop((key, info.etag), None)
            if old is not None:
                old.close()
            reader = self._new(key, info.etag, info.size)
            reader.fetched_first(mem, min(n, info.size))
            self._spare(key, info.etag, reader)
        return info

    def _spare(self, key: str, etag: str, reader: Reader) -> None:
        self.spares[(key, etag)] = reader
        self.nursery.start_soon(self._expire, key, etag, reader)

    async def _expire(self, key: str, etag: str, reader: Reader) -> None:
        await trio.sleep(SPARE_TTL)
        if self.spares.get((key, etag)) is reader:
            del self.spares[(key, etag)]
            log.debug("%s: the first read started at its lookup was not used (no open)", key)
            reader.close()
