"""Streaming uploads: writes become a verified multipart upload in bounded memory.

Bytes go into the current part buffer (`buffers.py`: an anonymous mmap, reused when freed).
A write past the end (a hole) first fills the gap with zeros through the same buffers; an
`ftruncate` past the end promises zeros up to that size, added at close. A full buffer is
shipped when the next byte arrives: hashed in a worker thread, uploaded with Content-MD5 in
the background, its returned ETag compared with the MD5 (re-sent on mismatch). Part 1 is the
exception: it stays in memory until close and is sent last (S3 takes parts in any order), so
that a program can patch a header anywhere in it. Writes at earlier offsets are applied while
their bytes are in memory (part 1, and the part being filled); anywhere else they fail with
EINVAL and abort the upload. A stream that ends inside its first part becomes one PutObject.

Buffers are paid for from a global `WriteBudget`; when it is spent, `write()` waits for an
upload to finish (backpressure). A writer that waits while nothing is uploading sends its
part 1 early rather than hold it (it can no longer be patched then). Completing a multipart
upload checks the object's ETag (HEAD) against the locally built one; a PutObject is checked
by its answer (its ETag is the MD5 the server computed of what it stored). Any failure aborts
the upload, removes an object that failed verification, and is raised from `complete()` so
that `close()` returns it.

A part larger than one buffer (`--part-size`) is a big part: its bytes stream as a temporary
object that the server copies into the part (`assembler.py`), so memory is the same at every
stage of the schedule. A write that would pass the schedule's capacity (10,000 parts) fails
with EFBIG.

Where the bucket encrypts with SSE-KMS or SSE-C, or the server's ETags are no MD5s at all
(the probe at mount start, `probe.py`, or the shape of an answer shows it), an additional
checksum (`checksum.py`, CRC32C unless `--checksum` chose one) replaces the ETag checks for
parts and for the object. With `--verify read-back`, each completed object is also read back
and its MD5s compared with those of the bytes sent, which proves it on any server.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from . import checksum
from .assembler import TMP_DIR, BigPart, prove_by_reading
from .buffers import Part, PartBody, WriteBudget
from .checksum import Algorithm
from .config import S3_MAX_PARTS, Config
from .errors import FsError, IntegrityError, StoreError
from .etag import MultipartETag, etag_is_md5, md5_shaped
from .objects import Extra, ObjectInfo, Sent, Store
from .schedule import PartSchedule, human_size

if TYPE_CHECKING:
    from .probe import ServerTraits

log = logging.getLogger(__name__)
PART_VERIFY_ATTEMPTS = 3  # sends of one part whose returned ETag disagrees with its MD5
READ_BACK_CHUNK = 4 * 1024 * 1024  # bytes per GET of --verify read-back
MAX_PARTS = S3_MAX_PARTS  # a name of its own, so that a test can lower it
T = TypeVar("T")

NOT_MD5 = "this server's ETags are not MD5s"
ADVICE = ("mount with --verify read-back (or --read-only), or set the server to MD5 ETags or "
          "to keep additional checksums")


class UploadState(enum.Enum):
    OPEN = "open"  # takes writes
    COMPLETING = "completing"  # closed (flush, fsync or release): parts finishing
    DONE = "done"  # the object is complete and verified
    FAILED = "failed"  # aborted; `Upload.error` says why


def _hashes(view: memoryview, algo: Algorithm | None,
            md5: bytes | None = None) -> tuple[bytes, Extra | None]:
    """MD5 of the bytes (unless known), and the additional checksum when one is used (in a
    worker thread)."""
    digest = md5 if md5 is not None else hashlib.md5(view).digest()
    return digest, None if algo is None else (algo, algo.part(view))


class Upload:
    """One file being written: its parts, their MD5s and ETags, and its outcome."""

    def __init__(self, mgr: Uploads, key: str) -> None:
        self.mgr, self.store, self.key = mgr, mgr.store, key
        self.end = 0  # end of the stream: bytes written, holes included
        self.promised = 0  # a size set by ftruncate past the end: zeros up to it at close
        self.bytes_uploaded = 0  # in parts whose ETag matched
        self.started = time.monotonic()
        self.first: Part | None = None  # part 1 while it is held in memory
        self.part: Part | None = None  # the part being filled (part 1 at first), or a sub-part
        self.big: BigPart | None = None  # the big part being filled, if any
        self.bigs: dict[int, BigPart] = {}  # big parts not yet done, by number (status)
        # Big parts whose copy answer was no MD5: (number, start, length, MD5), read back.
        self.read_back: list[tuple[int, int, int, bytes]] = []
        self.parts_started = 0
        # An append's leading parts, copied from the old object by the server (appender.py):
        # their sizes; the stream's own parts follow them, from `base` on, by the schedule.
        self.copied: list[int] = []
        self.base = 0
        self.etag = MultipartETag()
        self.etags: dict[int, str] = {}
        self.checksums: dict[int, Extra] = {}
        self.algo: Algorithm | None = None  # additional checksum of this upload, if any
        self.md5_etags = True  # False once S3 says it encrypts so that ETags are no MD5s
        self.upload_id: str | None = None
        self.error: FsError | None = None
        self.result: ObjectInfo | None = None
        self.state = UploadState.OPEN
        self.lock = trio.Lock()
        self.inflight = 0
        self.settled = trio.lowlevel.ParkingLot()  # woken when a part task ends
        self.done = trio.Event()
        # User metadata and Content-Type the object gets (set by the namespace; they travel
        # with CreateMultipartUpload or the PUT), and what was sent (None: not yet).
        self.meta: dict[str, str] = {}
        self.content_type: str | None = None
        self.meta_sent: dict[str, str] | None = None

    @property
    def failed(self) -> bool:
        return self.state is UploadState.FAILED

    @property
    def bytes_written(self) -> int:
        """The file's size as stat shows it: the bytes written (holes included), or the size
        set by ftruncate if that is larger (its zeros are added at close)."""
        return max(self.end, self.promised)

    # -- writing ----------------------------------------------------------------------------

    async def write(self, off: int, data: bytes) -> int:
        async with self.lock:
            if self.error is not None and self.state is UploadState.OPEN:
                await self._fail(self.error)  # a part failed in the background
            self._check_open()
            view = memoryview(data)
            part = self.part
            if off == self.end and part is not None and len(view) <= part.room:
                self._advance(part.put(view))  # fast path: it fits in the current buffer
                return len(data)
            try:
                if off < self.end:
                    n = min(len(view), self.end - off)
                    self._patch(off, view[:n])
                    off, view = off + n, view[n:]
                if view and off > self.end:
                    await self._append_zeros(off - self.end)
                await self._append(view)
            except FsError as exc:
                await self._fail(exc)
                raise
            return len(data)

    async def truncate(self, size: int) -> None:
        """ftruncate: past the end, zeros up to `size` at close (unless written before then);
        below it, only bytes still in memory can be cut (else the upload is aborted)."""
        async with self.lock:
            if size == self.bytes_written:
                return
            self._check_open()
            if size >= self.end:
                self.promised = size
                return
            try:
                self._cut(size)
            except FsError as exc:
                await self._fail(exc)
                raise

    def _advance(self, n: int) -> None:
        self.end += n
        self.mgr.budget.written += n

    async def _append(self, view: memoryview) -> None:
        while view:
            part = await self._room()
            n = part.put(view)
            self._advance(n)
            view = view[n:]

    async def _append_zeros(self, n: int) -> None:
        """A hole: zeros through the part buffers, like written bytes."""
        while n:
            part = await self._room()
            k = part.put_zeros(n)
            self._advance(k)
            n -= k

    def _patch(self, off: int, view: memoryview) -> None:
        """Apply a write below the end to the parts in memory, or refuse it (EINVAL)."""
        parts = self._held()
        spans = [(p, max(off, p.start), min(off + len(view), p.end)) for p in parts]
        spans = [(p, lo, hi) for p, lo, hi in spans if lo < hi]
        if sum(hi - lo for _, lo, hi in spans) != len(view):
            raise FsError(
                f"{self.key}: write of {len(view)} bytes at offset {off} is outside the "
                f"rewrite window ({self._window()}; {self.end} bytes written): "
                "bytes written earlier can be changed only while they are in memory "
                "(part 1 until close, and the part being filled); upload aborted",
                errno.EINVAL)
        for p, lo, hi in spans:
            p.patch(lo, view[lo - off:hi - off])

    def _held(self) -> list[Part]:
        """The parts in memory that hold written bytes: part 1 and the part being filled."""
        parts = [self.first] if self.first is not None else []
        if self.part is not None and self.part is not self.first:
            parts.append(self.part)
        return parts

    def _window(self) -> str:
        spans = [f"bytes {p.start}-{p.end} (part {p.number})" if p is not self.part or
                 self.big is None else f"bytes {p.start}-{p.end} (sub-part {p.number} of big "
                 f"part {self.big.number})" for p in self._held()]
        if self.first is None and self.parts_started > len(self.copied) + 1:
            spans.insert(0, f"part {len(self.copied) + 1} was already sent: --max-memory was "
                         "full")
        if self.copied:
            spans.insert(0, f"bytes 0-{self.base} were copied from the old object by the "
                         "server and cannot be changed")
        return "rewritable now: " + (", ".join(spans) or "nothing")

    def _cut(self, size: int) -> None:
        """Shrink the stream to `size` bytes, all of whose bytes past it are in memory."""
        part = self.part
        copied = len(self.copied)  # parts before the stream's own (an append's copies)
        if part is None:  # nothing written after an append's copies: all of it was copied
            low = self.end
        elif self.first is not None and part.number <= copied + 2 and self.big is None:
            low = self.base  # the stream's first part and the part being filled, in memory
        else:
            low = part.start
        if part is None or size < low:
            raise FsError(
                f"{self.key}: truncate to {size} bytes is not supported: bytes from {low} "
                f"on were already sent ({self._window()}; {self.end} bytes "
                "written); upload aborted", errno.EOPNOTSUPP)
        if size < part.start:  # back into part 1: part 2 goes
            assert self.first is not None
            part.free(self.mgr.budget)
            self.part = part = self.first
            self.parts_started = copied + 1
        part.fill = size - part.start
        self.end = self.promised = size

    def _check_open(self) -> None:
        if self.error is not None:
            raise FsError(f"{self.key}: the upload failed ({self.error}); nothing more can "
                          "be written", self.error.errno_)
        if self.state is not UploadState.OPEN:
            raise FsError(f"{self.key}: the upload was already completed (close, flush or "
                          "fsync); reopen the file with O_TRUNC to write it again", errno.EBADF)

    async def _room(self) -> Part:
        """The current part buffer with room in it; ships a full one first (part 1 is
        kept, and the multipart upload starts: the stream is longer than one part)."""
        part = self.part
        if part is not None and not part.full:
            return part
        if part is not None:
            self.part = None
            if self.big is not None:
                self.big.ship(part)
                if self.big.full:
                    self.big.seal()
                    self.big = None
            elif part is not self.first:
                self._ship(part)
            elif self.upload_id is None:
                await self._create()
        if self.big is None:
            number, size, start = self._next_part()
            if number > len(self.copied) + 1 and self._is_big(size):
                big = BigPart(self, number, size, start, self.mgr.sub_size)
                await big.create()
                self.big, self.parts_started = big, number
        if self.big is not None:
            number, size, start = self.big.next_sub()
        taken = await self.mgr.budget.acquire(size, self.key, spare=self._spare_first)
        if self.state is UploadState.FAILED:  # aborted while it waited (a second SIGTERM)
            self.mgr.budget.release(taken)
            assert self.error is not None
            raise self.error
        self.part = Part(number, size, taken, self.mgr.budget, start)
        if self.big is not None:
            self.big.subs = number
            return self.part
        if number == len(self.copied) + 1:
            self.first = self.part
        self.parts_started = number
        return self.part

    def _next_part(self) -> tuple[int, int, int]:
        """Number, size and stream offset of the next part, or EFBIG past the schedule."""
        number = self.parts_started + 1
        own = number - len(self.copied)  # its number among the stream's own parts
        schedule = self.mgr.schedule
        if number > MAX_PARTS:
            raise FsError(
                f"{self.key}: the stream reached the part schedule's capacity of "
                f"{human_size(schedule.capacity(MAX_PARTS))} in {MAX_PARTS} parts (S3's "
                "limit); nothing more can be written to this file; upload aborted (mount with "
                "a larger --part-size or a smaller --part-growth-every)", errno.EFBIG)
        size = schedule.size_of(own)
        if size > self.mgr.budget.capacity and not self._is_big(size) and \
                schedule.size_of(own - 1) <= self.mgr.budget.capacity:
            log.warning("%s: part %d is %d MiB, more than --max-memory; this stream now "
                        "holds one part at a time", self.key, number, size >> 20)
        return number, size, self.base + schedule.capacity(own - 1)

    def _is_big(self, size: int) -> bool:
        """A part assembled by the server: larger than a buffer, and its copy can be proven
        by MD5 (uploads where ETags are no MD5s, SSE-KMS or SSE-C, hold their parts whole)."""
        return size > self.mgr.sub_size and self.md5_etags

    def _spare_first(self) -> bool:
        """The budget is full and nothing uploads: send part 1 now rather than wait for
        room that would never come (it can no longer be patched)."""
        first = self.first
        if first is None or first is self.part or self.upload_id is None:
            return False
        log.debug("%s: --max-memory is full, so part 1 is sent now, not at close", self.key)
        self.first = None
        self._ship(first)
        return True

    def _ship(self, part: Part) -> None:
        """Start uploading a full part in the background."""
        assert self.upload_id is not None
        part.ship(self.mgr.budget)
        self.inflight += 1
        self.mgr.nursery.start_soon(self._send_part, part, self.upload_id)

    async def _declared(self, send: Callable[[Algorithm | None], Awaitable[T]],
                        traits: Callable[[T], tuple[str | None, str | None]],
                        undo: Callable[[T], Awaitable[object]] | None = None) -> T:
        """`send(algo)` with the mount's additional checksum, if any. If S3's answer (its
        encryption, and its ETag if it has one: `traits`) says ETags are no MD5s here, and no
        checksum was declared, nothing could verify it: undo it and send it again with one,
        where the server keeps checksums."""
        algo = self.mgr.algorithm()
        answer = await send(algo)
        self.md5_etags = self.mgr.learn(*traits(answer))
        if not self.md5_etags and algo is None and self.mgr.algorithm() is not None:
            if undo is not None:
                await undo(answer)
            algo = self.mgr.algorithm()
            answer = await send(algo)
        self.algo = algo
        return answer

    def _object_attrs(self) -> dict[str, Any]:
        """The metadata and Content-Type to send now, noted as sent."""
        self.meta_sent = dict(self.meta)
        return {"meta": self.meta_sent, "content_type": self.content_type}

    async def _create(self) -> str:
        started = await self._declared(
            lambda algo: self.store.create_upload(self.key, algo, **self._object_attrs()),
            lambda s: (s.encryption, None),
            lambda s: self.store.abort_upload(self.key, s.upload_id))
        self.upload_id = started.upload_id
        log.debug("%s: multipart upload %s started", self.key, self.upload_id)
        return started.upload_id

    # -- appends (appender.py) --------------------------------------------------------------

    async def begin_multipart(self, again: bool = False) -> str:
        """The multipart upload, started now if it was not; `again`: abort it first and start
        a new one (with the additional checksum the mount chooses now)."""
        async with self.lock:
            self._check_open()
            if again:
                await self.drop_multipart()
            return self.upload_id or await self._create()

    async def drop_multipart(self) -> None:
        """Abort the multipart upload begun for copies that are not used."""
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            await self.store.abort_upload(self.key, upload_id)

    def adopt_copies(self, parts: list[tuple[int, bytes, str, Extra | None]]) -> None:
        """Parts 1..K are the old object's bytes, copied by the server and proven
        (appender.py): (size, MD5, ETag, checksum) of each. The stream goes on after them."""
        assert self.end == 0 and self.parts_started == 0 and self.upload_id is not None
        for number, (_, digest, etag, extra) in enumerate(parts, 1):
            self.etag.add_part(number, digest)
            self.etags[number] = etag
            if extra is not None:
                self.checksums[number] = extra
        self.copied = [size for size, *_ in parts]
        self.base = self.end = self.bytes_uploaded = sum(self.copied)
        self.parts_started = len(parts)

    def record_failure(self, exc: Exception, what: str) -> None:
        """Keep the first failure of a background task (a part, a big part) for the writer
        to see; one that is not ours is logged with its traceback first."""
        if not isinstance(exc, FsError):
            log.exception("%s: %s failed unexpectedly", self.key, what)
            exc = FsError(f"{self.key}: {what}: {exc}")
        self.error = self.error or exc

    async def _send_part(self, part: Part, upload_id: str) -> None:
        """Background task: never raises; a failure is kept for the writer to see."""
        try:
            async with self.mgr.part_slots:
                if self.state is UploadState.FAILED:
                    return
                with part.view() as view:
                    digest, extra = await trio.to_thread.run_sync(
                        _hashes, view, self.algo, limiter=self.mgr.hashers)
                    self.etag.add_part(part.number, digest)
                    etag = await self.send_verified(f"part {part.number}", self.key,
                                                    upload_id, part.number, view, digest,
                                                    extra)
                self.etags[part.number] = etag
                if extra is not None:
                    self.checksums[part.number] = extra
                self.bytes_uploaded += part.fill
        except Exception as exc:  # noqa: BLE001 - kept for the writer (record_failure)
            self.record_failure(exc, f"part {part.number}")
        finally:
            part.free(self.mgr.budget)
            self.inflight -= 1
            self.settled.unpark_all()

    async def send_verified(self, what: str, key: str, upload_id: str, number: int,
                            view: memoryview, digest: bytes, extra: Extra | None) -> str:
        """Send part `number` of upload `upload_id` of `key` (`what`: "part N", or a big
        part's sub-part) until S3's answer matches its checksums; returns its ETag."""
        for attempt in range(1, PART_VERIFY_ATTEMPTS + 1):
            sent = await self.store.upload_part(key, upload_id, number, PartBody(view), digest,
                                                extra)
            problem = self._check_sent(what, sent, digest, extra)
            if problem is None:
                return sent.etag
            if problem.startswith(NOT_MD5):  # sending it again cannot change that
                raise IntegrityError(f"{self.key}: {what}: {problem}")
            log.warning("%s: %s %s (attempt %d/%d); sending it again", self.key, what,
                        problem, attempt, PART_VERIFY_ATTEMPTS)
        raise IntegrityError(f"{self.key}: {what} never came back with the "
                             f"checksums of what was sent: {problem}")

    def _check_sent(self, what: str, sent: Sent, digest: bytes,
                    extra: Extra | None) -> str | None:
        """What is wrong with S3's answer to a part or PUT, or None when it matches."""
        if extra is not None:
            algo, want = extra
            if sent.checksum is None:
                self.mgr.checksums_kept = False
                raise IntegrityError(
                    f"{self.key}: the server did not return the {algo.s3_name} checksum sent "
                    f"with {what}, so it cannot be verified: this server does not support "
                    "additional checksums (mount with --checksum auto on a bucket without "
                    "SSE-KMS, or with --verify read-back)")
            if sent.checksum != want:
                return f"came back with {algo.s3_name} {sent.checksum}, expected {want}"
        if self.md5_etags and sent.etag != digest.hex():
            if self.mgr.learn(sent.encryption, sent.etag):
                return f"came back with ETag {sent.etag}, expected {digest.hex()}"
            self.md5_etags = False
        if not self.md5_etags and extra is None and not self.mgr.read_back:
            return (f"{NOT_MD5} (it answered ETag {sent.etag} for {what}, whose MD5 is "
                    f"{digest.hex()}), so nothing can verify this upload: {ADVICE}")
        return None

    # -- completion -------------------------------------------------------------------------

    async def complete(self) -> ObjectInfo:
        """Finish, verify and return the object; idempotent. Raises the upload's failure."""
        async with self.lock:
            if self.state is UploadState.OPEN:
                self.state = UploadState.COMPLETING
                self.mgr.nursery.start_soon(self._complete_task)
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    async def _complete_task(self) -> None:
        try:
            self.result = await self._finish()
            self.state = UploadState.DONE
            log.info("%s: uploaded and verified, %d bytes, ETag %s%s", self.key,
                     self.result.size, self.result.etag,
                     f", {self.algo.s3_name} {self.result.checksum}" if self.algo else "")
        except FsError as exc:
            await self._fail(exc)
        except Exception as exc:
            log.exception("%s: unexpected failure while completing", self.key)
            await self._fail(FsError(f"{self.key}: {exc}", errno.EIO))
        finally:
            self.done.set()
            self.mgr.forget(self)

    async def _finish(self) -> ObjectInfo:
        if self.promised > self.end:
            await self._append_zeros(self.promised - self.end)
        part = self.part
        if part is not None and part is not self.first and not part.fill:
            part.free(self.mgr.budget)  # emptied by a truncate
            self.part = None
            if self.big is not None:
                self.big.subs -= 1
            else:
                self.parts_started -= 1
        if self.big is not None:
            big, self.big = self.big, None
            if self.part is not None:
                big.ship(self.part)
                self.part = None
            if big.subs:
                big.seal()
            else:  # emptied by a truncate
                await big.discard()
                self.parts_started -= 1
        if not self.copied and (self.parts_started == 0 or
                                self.parts_started == 1 and self.first is not None):
            return await self._put_single()
        for held in reversed(self._held()):  # the last part, then part 1
            self._ship(held)
        self.part = self.first = None
        while self.inflight:
            await self.settled.park()
        if self.error is not None:
            raise self.error
        numbers = sorted(self.etags)
        summed = None
        if self.algo is not None:
            summed = self.algo.composite([self.checksums[n][1] for n in numbers])
        assert self.upload_id is not None
        answer = await self.store.complete_upload(
            self.key, self.upload_id,
            [(n, self.etags[n], self.checksums.get(n)) for n in numbers])
        self.upload_id = None  # completed: nothing left to abort
        # With parts proven by reading them back, the object's ETag is built by the server
        # from its own answers for them: the one completion answered.
        expected = answer if self.read_back else self.etag.value()
        info = await self._verify(expected if self.md5_etags else None, summed)
        if self.read_back:
            await prove_by_reading(self, info.etag)
            await self.mgr.checksum_for_copies()
        return info

    async def _put_single(self) -> ObjectInfo:
        """One PutObject, verified by its answer: S3 checked the body against Content-MD5 (and
        the additional checksum), and answers with the stored object's ETag (and checksum),
        which must equal the local ones. A HEAD afterwards would return that same ETag: one
        more round trip per small file (cp -r: 14 -> 10 ms a file), no more proof."""
        if self.upload_id is not None:  # started, then truncated back into part 1
            upload_id, self.upload_id = self.upload_id, None
            await self.store.abort_upload(self.key, upload_id)
        part, self.part, self.first = self.first, None, None
        if part is not None:
            part.ship(self.mgr.budget)
        md5: list[bytes] = []
        try:
            with part.view() if part is not None else memoryview(b"") as view:

                async def send(algo: Algorithm | None) -> tuple[Sent, bytes, Extra | None]:
                    digest, extra = await trio.to_thread.run_sync(
                        _hashes, view, algo, md5[0] if md5 else None,
                        limiter=self.mgr.hashers)
                    md5[:] = [digest]
                    async with self.mgr.part_slots:
                        body = PartBody(view) if part is not None else b""
                        sent = await self.store.put(self.key, body, digest, extra,
                                                    **self._object_attrs())
                        return sent, digest, extra

                sent, digest, extra = await self._declared(
                    send, lambda a: (a[0].encryption, a[0].etag))
        finally:
            if part is not None:
                part.free(self.mgr.budget)
        self.bytes_uploaded = self.end
        try:
            problem = self._check_sent("the PUT", sent, digest, extra)
        except IntegrityError as exc:  # stored, but unproven: it must not stay
            problem = str(exc).removeprefix(f"{self.key}: ")
        if problem:
            await self.remove_bad_object(f"the PUT {problem}")
        if self.mgr.read_back:
            await self._read_back(sent.etag, [(self.end, digest)])
        return ObjectInfo(self.key, self.end, time.time(), sent.etag,
                          sent.checksum, sent.encryption)

    async def _verify(self, etag: str | None, summed: str | None) -> ObjectInfo:
        """Compare the stored object with what was sent: size, and the ETag and/or the
        additional checksum (whichever this upload can use)."""
        info = await self.store.head(self.key, checksum=summed is not None)
        if info is None:
            raise IntegrityError(f"{self.key}: the object is missing right after its upload")
        wrong = []
        if info.size != self.end:
            wrong.append(f"size {info.size}, expected {self.end}")
        if etag is not None and info.etag != etag and not md5_shaped(info.etag):
            self.mgr.learn(info.encryption, info.etag)
            if summed is None and not self.mgr.read_back:
                wrong.append(f"ETag {info.etag}: {NOT_MD5}, so nothing can verify this "
                             f"upload: {ADVICE}")
        elif etag is not None and info.etag != etag:
            wrong.append(f"ETag {info.etag}, expected {etag}")
        if summed is not None and info.checksum != summed:
            assert self.algo is not None
            wrong.append(f"{self.algo.s3_name} {info.checksum}, expected {summed}")
        if wrong:
            await self.remove_bad_object("stored " + "; ".join(wrong))
        if self.mgr.read_back:
            await self._read_back(info.etag, self._part_digests())
        return info

    def _part_digests(self) -> list[tuple[int, bytes]]:
        """(size, MD5) of each part sent, in order: every part but the last is full."""
        digests = self.etag.digests()
        own = len(digests) - len(self.copied)
        sizes = (self.copied + [self.mgr.schedule.size_of(n) for n in range(1, own)])[
            :len(digests) - 1]
        sizes.append(self.end - sum(sizes))
        return list(zip(sizes, digests, strict=True))

    async def _read_back(self, etag: str, parts: list[tuple[int, bytes]]) -> None:
        """--verify read-back: GET the stored object (pinned to `etag`) and compare the MD5 of
        each part's bytes with that of the bytes sent; a mismatch removes the object."""
        buf = memoryview(bytearray(min(READ_BACK_CHUNK, max(self.end, 1))))
        pos = 0
        for number, (size, want) in enumerate(parts, 1):
            md5 = hashlib.md5(usedforsecurity=False)
            for start in range(pos, pos + size, len(buf)):
                view = buf[:min(len(buf), pos + size - start)]
                try:
                    await self.store.get_range(self.key, start, view, etag)
                except StoreError as exc:  # unproven: it must not stay as if it were
                    await self.remove_bad_object(f"it could not be read back: {exc}")
                await trio.to_thread.run_sync(md5.update, view, limiter=self.mgr.hashers)
            pos += size
            if md5.digest() != want:
                await self.remove_bad_object(
                    f"read back, part {number} has MD5 {md5.hexdigest()}, but the bytes sent "
                    f"have {want.hex()}")
        log.debug("%s: read back and verified, %d bytes", self.key, pos)

    async def remove_bad_object(self, detail: str) -> None:
        try:
            await self.store.delete(self.key)
        except StoreError as exc:
            log.error("%s: could not delete the object that failed verification: %s",
                      self.key, exc)
        raise IntegrityError(f"{self.key}: verification failed, object removed: {detail}")

    async def _fail(self, exc: FsError) -> None:
        """Record the failure, abort the multipart upload, free the buffers."""
        self.error = self.error or exc
        self.state = UploadState.FAILED
        for part in self._held():
            part.free(self.mgr.budget)
        self.part = self.first = None
        while self.inflight:  # parts not yet sent are skipped; a part sent after the abort
            await self.settled.park()  # would keep storage alive
        if self.big is not None:  # being filled: its temporary upload goes too
            big, self.big = self.big, None
            await big.discard()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                await self.store.abort_upload(self.key, upload_id)
            except StoreError as err:
                log.error("%s: could not abort multipart upload %s (%s); `s3mount uploads` "
                          "can remove it later", self.key, upload_id, err)
        if not self.done.is_set():
            self.done.set()
            self.mgr.forget(self)

    async def fail(self, exc: FsError) -> None:
        """Fail the upload with `exc` (not logged here: the caller's answer carries it)."""
        if self.state not in (UploadState.DONE, UploadState.FAILED):
            await self._fail(exc)

    async def abort(self, reason: str) -> None:
        if self.state in (UploadState.DONE, UploadState.FAILED):
            return
        log.error("%s: upload aborted: %s", self.key, reason)
        await self._fail(FsError(f"{self.key}: {reason}", errno.EIO))


class Uploads:
    """All uploads of a mount, the shared write budget and the limits on concurrency."""

    def __init__(self, config: Config, store: Store, nursery: trio.Nursery) -> None:
        self.store = store
        self.nursery = nursery
        self.bucket = config.bucket
        self.prefix = config.prefix
        self.sub_size = config.part_size  # buffers of big parts (assembler.py)
        self.proof: str | None = None  # how big parts are proven on this server (logged once)
        # The server answers UploadPartCopy with MD5s only for uploads that declare a checksum
        # (SeaweedFS): new uploads declare CRC32C.
        self.copies_need_checksum = False
        self.append_copies = True  # until appends learn that copies cannot be proven here
        self.try_checksum = False  # after a read-back, until checksum_for_copies looked
        self.schedule = PartSchedule(config.part_size, config.part_growth_every)
        self.chosen = None if config.checksum == "auto" else checksum.get(config.checksum)
        self.etags_are_md5 = True  # until S3 answers that it encrypts with SSE-KMS / SSE-C
        self.checksums_kept: bool | None = None  # known once the mount-start probe ran
        self.probed_md5: bool | None = None  # likewise
        self.read_back = config.verify == "read-back"
        self.budget = WriteBudget(config.max_memory)
        self.part_slots = trio.Semaphore(config.upload_concurrency)
        self.hashers = trio.CapacityLimiter(2)
        self.active: dict[int, Upload] = {}
        self.completed = self.completed_bytes = self.failed = 0  # since the mount started

    def algorithm(self) -> Algorithm | None:
        """The additional checksum new uploads use: the chosen one, else CRC32C once the
        bucket has shown that its ETags are no MD5s or big parts' copies need one to be
        proven (unless the probe showed that the server keeps no checksums: then only
        --verify read-back proves uploads), else none."""
        if (self.chosen is not None or self.checksums_kept is False
                or (self.etags_are_md5 and not self.copies_need_checksum)):
            return self.chosen
        return checksum.get(checksum.DEFAULT_FOR_ENCRYPTED)

    def adopt(self, traits: ServerTraits | None) -> None:
        """What the probe at mount start found (probe.py logged it); None: it did not run."""
        if traits is not None:
            self.etags_are_md5 = self.probed_md5 = traits.etags_are_md5
            self.checksums_kept = traits.checksums

    def learn(self, encryption: str | None, etag: str | None = None) -> bool:
        """Note the encryption S3 reported for an upload, and the shape of the ETag it
        answered; True if its ETags are MD5s."""
        if etag_is_md5(encryption, etag) and self.probed_md5 is not False:
            return True
        if self.etags_are_md5:
            self.etags_are_md5 = False
            algo = self.algorithm()
            why = (f"objects are stored with {encryption} encryption" if encryption else
                   f"it answered ETag {etag}")
            how = (f"uploads are verified with {algo.s3_name} checksums instead" if algo else
                   "uploads are verified by reading each object back" if self.read_back else
                   f"nothing can verify uploads: {ADVICE}")
            log.warning("bucket %s: %s (%s): %s", self.bucket, NOT_MD5, why, how)
        return False

    def unprovable(self) -> bool:
        """Whether this mount has learnt that nothing can verify an upload: ETags are not
        MD5s, the server returns no checksums, and --verify read-back is off."""
        return not (self.etags_are_md5 or self.checksums_kept is not False or self.read_back)

    def note_proof(self, answer: str, digest: bytes, algo: Algorithm | None) -> None:
        """Log once per mount how big parts are proven, from the first copy answer."""
        proof = "copy" if answer == digest.hex() else "read-back"
        if self.proof == proof:
            return
        self.proof = proof
        if proof == "copy":
            log.info("big parts are assembled by the server (UploadPartCopy) and proven by its "
                     "answer: this server answers the MD5 of the copied bytes%s",
                     f" (and their {algo.s3_name}, which is checked too)" if algo else "")
            return
        log.info("big parts are assembled by the server (UploadPartCopy), whose answer here "
                 "is no MD5 (%s): each big part of this upload is proven by reading its range "
                 "of the completed object back and comparing its MD5, before close returns",
                 answer)
        self.try_checksum = self.chosen is None

    async def checksum_for_copies(self) -> None:
        """After a read-back: if the server returns additional checksums (a PUT of a few bytes
        with CRC32C under the hidden prefix shows it), later uploads declare CRC32C, for which
        a server like SeaweedFS answers copies with the MD5 (and CRC32C) of the bytes."""
        if not self.try_checksum:
            return
        self.try_checksum = False
        algo = checksum.get(checksum.DEFAULT_FOR_ENCRYPTED)
        key, body = self.prefix + TMP_DIR + "checksum-probe", b"s3mount"
        want = algo.part(body)
        try:
            sent = await self.store.put(key, body, hashlib.md5(body).digest(), (algo, want))
            await self.store.delete(key)
        except StoreError as exc:
            log.info("could not find out whether the server returns checksums (%s): big parts "
                     "stay proven by reading them back", exc)
            return
        if sent.checksum != want:
            log.info("the server does not return CRC32C checksums: big parts stay proven by "
                     "reading them back")
            return
        self.copies_need_checksum = True
        log.info("later uploads declare CRC32C: with it, this server answers UploadPartCopy "
                 "with the MD5 of the copied bytes (and their CRC32C), which proves big parts "
                 "without reading them back")

    def start(self, key: str) -> Upload:
        if self.unprovable():  # fail at open, where `echo > f` sees it (bash drops close's)
            raise FsError(f"{key}: {NOT_MD5} and it returns no additional checksums, so "
                          f"nothing can verify an upload: {ADVICE}", errno.EIO)
        up = Upload(self, key)
        self.active[id(up)] = up
        return up

    def forget(self, up: Upload) -> None:
        if self.active.pop(id(up), None) is not None:
            if up.state is UploadState.DONE:
                self.completed += 1
                self.completed_bytes += up.bytes_written
            else:
                self.failed += 1
        if not self.active:
            self.budget.trim()

    def __iter__(self) -> Iterator[Upload]:
        return iter(list(self.active.values()))

    async def abort_all(self, reason: str) -> int:
        """Abort every upload, completing ones too (a second SIGTERM); returns how many."""
        ups = [up for up in self if up.state in (UploadState.OPEN, UploadState.COMPLETING)]
        for up in ups:
            await up.abort(reason)
        return len(ups)

    async def shutdown(self) -> None:
        """Completing uploads finish; uploads still open (never closed) are aborted."""
        for up in self:
            if up.state is UploadState.OPEN:
                await up.abort("the file was still open when the mount stopped")
        for up in self:
            await up.done.wait()
