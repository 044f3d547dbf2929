"""Big parts assembled by the server: a part larger than one buffer is never held in memory.

A part of the schedule larger than the sub-part size (the first stage's part size,
`--part-size`, 6 MiB by default) is a *big part*. Its bytes stream, one buffer at a time, as the
sub-parts of a temporary multipart upload under a hidden key (`tmp_key`:
`PREFIX.s3mount-tmp/PATH.ID.partN`); each sub-part is sent like a part (Content-MD5, its ETag
compared, re-sent on mismatch, retried under `--write-deadline`). While they stream, the MD5 of
the whole big part is computed locally (sub-part after sub-part, in order, in a worker thread).
Once the big part is complete, the temporary object is completed (its ETag checked against the
one built from the sub-parts' MD5s), UploadPartCopy copies it into part N of the real upload,
and it is deleted. This runs in the background while the writer fills the next part
(pipelined), and costs no buffer memory: memory is the same at every stage of the schedule.

Proof of the copy, chosen per answer and logged once per mount (`Uploads.note_proof`):
- S3 and moto answer UploadPartCopy with the MD5 of the copied bytes: it must equal the local
  MD5 (a wrong MD5 is copied again, `COPY_VERIFY_ATTEMPTS` times, then the upload fails).
  Where the upload declared an additional checksum (`--checksum`, or see below), the answer's
  checksum must also equal the one computed locally while the sub-parts streamed.
- SeaweedFS answers a multipart-style ETag of its stored chunks (`-N`), which proves nothing,
  unless the upload declared a checksum: then it answers the MD5 and the CRC32C of the copied
  bytes (measured, SeaweedFS 4.48). So an upload that gets such an answer proves its big parts
  after the object is completed, before close() returns, by reading each one's range of the
  final object back (ranged GETs pinned to the object's ETag, one buffer at a time) and
  comparing the MD5 (`prove_by_reading`; a mismatch removes the object), and, if the server
  returns checksums, the mount's later uploads declare CRC32C, so that their copies are
  proven by their answers (`Uploads.checksum_for_copies`).
Nothing is accepted unverified; any failure aborts the temporary upload and deletes the
temporary object (a killed mount leaves them: `s3mount uploads list|abort` finds them).
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import TYPE_CHECKING

import crc32c
import trio

from . import checksum
from .buffers import Part
from .checksum import Algorithm
from .config import S3_MAX_KEY_BYTES
from .errors import FsError, IntegrityError, StoreError
from .etag import multipart_etag
from .keys import HIDDEN_PREFIX

if TYPE_CHECKING:
    from .writer import Upload

log = logging.getLogger(__name__)
TMP_DIR = HIDDEN_PREFIX + "tmp/"
COPY_VERIFY_ATTEMPTS = 3
MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


def tmp_key(prefix: str, key: str, upload_id: str, number: int) -> str:
    """The temporary object big part `number` of `key`'s upload `upload_id` is assembled in:
    `PREFIX.s3mount-tmp/PATH.ID.partN`, ID the first 16 hex digits of the SHA-256 of the
    upload id (PATH replaced by its SHA-256 if the key would pass S3's 1024 bytes)."""
    tag = hashlib.sha256(upload_id.encode()).hexdigest()[:16]
    rest = key[len(prefix):]
    name = f"{prefix}{TMP_DIR}{rest}.{tag}.part{number}"
    if len(name.encode()) > S3_MAX_KEY_BYTES:
        name = f"{prefix}{TMP_DIR}{hashlib.sha256(rest.encode()).hexdigest()}.{tag}.part{number}"
    return name


class Running:
    """An additional checksum of a big part, computed as its sub-parts stream."""

    def __init__(self, algo: Algorithm) -> None:
        self.algo = algo
        self.crc = 0
        self.sha = hashlib.sha256()

    def update(self, view: memoryview) -> None:
        if self.algo.name == "crc32c":
            self.crc = int(crc32c.crc32c(view, value=self.crc))
        else:
            self.sha.update(view)

    def value(self) -> str:
        if self.algo.name == "crc32c":
            return checksum.b64(self.crc.to_bytes(4, "big"))
        return checksum.b64(self.sha.digest())


def _sub_hash(view: memoryview, whole: hashlib._Hash, extra: Running | None) -> bytes:
    """MD5 of one sub-part, and the running MD5 (and checksum) of the big part updated with
    it (in a worker thread; sub-parts take their turn in order)."""
    whole.update(view)
    if extra is not None:
        extra.update(view)
    return hashlib.md5(view).digest()


class BigPart:
    """Part `number` of an upload, `size` bytes from stream offset `start`, being assembled."""

    def __init__(self, up: Upload, number: int, size: int, start: int, sub_size: int) -> None:
        self.up, self.number, self.size, self.start = up, number, size, start
        self.sub_size = sub_size
        assert up.upload_id is not None
        self.tmp = tmp_key(up.mgr.prefix, up.key, up.upload_id, number)
        self.tmp_id: str | None = None  # the temporary upload, until completed or aborted
        self.tmp_etag: str | None = None  # the temporary object, until deleted
        self.md5 = hashlib.md5()
        self.extra = Running(up.algo) if up.algo is not None else None
        self.sub_md5s: dict[int, bytes] = {}
        self.sub_etags: dict[int, str] = {}
        self.subs = 0  # sub-parts started
        self.shipped = 0  # bytes of sub-parts shipped
        self.hashed = 0  # sub-parts whose bytes are in `md5`
        self.pending = 0  # sub-part tasks running
        self.lot = trio.lowlevel.ParkingLot()
        self.stage = "streaming"  # then "copying", "proven", "failed"

    @property
    def full(self) -> bool:
        return self.shipped == self.size

    async def create(self) -> None:
        started = await self.up.store.create_upload(self.tmp)
        self.tmp_id = started.upload_id
        self.up.bigs[self.number] = self
        log.debug("%s: big part %d (%d MiB) assembled in %s", self.up.key, self.number,
                  self.size >> 20, self.tmp)

    def next_sub(self) -> tuple[int, int, int]:
        """Number, size and stream offset of the next sub-part buffer."""
        done = self.subs * self.sub_size
        return self.subs + 1, min(self.sub_size, self.size - done), self.start + done

    def ship(self, part: Part) -> None:
        """Start sending a filled sub-part in the background."""
        up = self.up
        part.ship(up.mgr.budget)
        self.shipped += part.fill
        self.pending += 1
        up.inflight += 1
        up.mgr.nursery.start_soon(self._send_sub, part)

    async def _send_sub(self, part: Part) -> None:
        up, n = self.up, part.number
        try:
            with part.view() as view:
                while self.hashed < n - 1:
                    await self.lot.park()
                if up.failed:
                    return
                digest = await trio.to_thread.run_sync(_sub_hash, view, self.md5, self.extra,
                                                       limiter=up.mgr.hashers)
                self.hashed = n
                self.lot.unpark_all()
                self.sub_md5s[n] = digest
                async with up.mgr.part_slots:
                    if up.failed:
                        return
                    assert self.tmp_id is not None
                    self.sub_etags[n] = await up.send_verified(
                        f"part {self.number} sub-part {n}", self.tmp, self.tmp_id, n, view,
                        digest, None)
        except FsError as exc:
            up.error = up.error or exc
        except Exception as exc:
            log.exception("%s: part %d sub-part %d failed unexpectedly", up.key, self.number, n)
            up.error = up.error or FsError(f"{up.key}: part {self.number}: {exc}")
        finally:
            if self.hashed < n:  # skipped: the next ones must not wait for it
                self.hashed = n
            part.free(up.mgr.budget)
            self.pending -= 1
            self.lot.unpark_all()
            up.inflight -= 1
            up.settled.unpark_all()

    def seal(self) -> None:
        """The big part has all its bytes: complete, copy and verify it in the background."""
        self.up.inflight += 1
        self.up.mgr.nursery.start_soon(self._assemble)

    async def _assemble(self) -> None:
        up = self.up
        try:
            while self.pending:
                await self.lot.park()
            if up.error is None and not up.failed:
                self.stage = "copying"
                digest = await self._complete_and_copy()
                up.etag.add_part(self.number, digest)
                up.bytes_uploaded += self.shipped
                self.stage = "proven"
        except Exception as exc:  # noqa: BLE001 - kept for the writer (record_failure)
            up.record_failure(exc, f"big part {self.number}")
        finally:
            if self.stage != "proven":
                self.stage = "failed"
            with trio.CancelScope(shield=True):
                await self.discard()
            up.inflight -= 1
            up.settled.unpark_all()

    async def _complete_and_copy(self) -> bytes:
        up = self.up
        numbers = sorted(self.sub_etags)
        assert numbers == list(range(1, self.subs + 1)) and self.tmp_id is not None
        tmp_id, self.tmp_id = self.tmp_id, None
        self.tmp_etag = await up.store.complete_upload(
            self.tmp, tmp_id, [(n, self.sub_etags[n], None) for n in numbers])
        want = multipart_etag([self.sub_md5s[n] for n in numbers])
        if self.tmp_etag != want:
            raise IntegrityError(f"{up.key}: part {self.number}: its temporary object "
                                 f"{self.tmp} has ETag {self.tmp_etag}, expected {want}")
        digest = self.md5.digest()
        assert up.upload_id is not None
        want_extra = self.extra.value() if self.extra is not None else None
        for attempt in range(1, COPY_VERIFY_ATTEMPTS + 1):
            async with up.mgr.part_slots:
                sent = await up.store.copy_part_checked(
                    up.key, up.upload_id, self.number, self.tmp, self.shipped, self.tmp_etag,
                    up.algo)
            answer = sent.etag
            if up.algo is not None and sent.checksum is None:
                raise IntegrityError(
                    f"{up.key}: the server did not return the {up.algo.s3_name} checksum of "
                    f"part {self.number} copied from {self.tmp}, so it cannot be verified")
            if want_extra is not None and sent.checksum != want_extra:
                assert up.algo is not None
                problem = f"{up.algo.s3_name} {sent.checksum}, expected {want_extra}"
            elif answer == digest.hex():
                up.mgr.note_proof(answer, digest, up.algo)
                up.etags[self.number] = answer
                if up.algo is not None and sent.checksum is not None:
                    up.checksums[self.number] = (up.algo, sent.checksum)
                return digest
            elif not MD5_HEX.match(answer) and up.algo is None:  # no MD5: read it back
                up.mgr.note_proof(answer, digest, up.algo)
                up.etags[self.number] = answer
                up.read_back.append((self.number, self.start, self.shipped, digest))
                return digest
            else:
                problem = f"ETag {answer}, expected {digest.hex()}"
            log.warning("%s: part %d was copied from %s with %s (attempt %d/%d); copying it "
                        "again", up.key, self.number, self.tmp, problem, attempt,
                        COPY_VERIFY_ATTEMPTS)
        raise IntegrityError(f"{up.key}: part {self.number} never came back from UploadPartCopy "
                             "with the MD5 of its bytes")

    async def discard(self) -> None:
        """Remove the temporary upload or object, whatever happened (never raises)."""
        self.up.bigs.pop(self.number, None)
        try:
            if self.tmp_id is not None:
                tmp_id, self.tmp_id = self.tmp_id, None
                await self.up.store.abort_upload(self.tmp, tmp_id)
            if self.tmp_etag is not None:
                self.tmp_etag = None
                await self.up.store.delete(self.tmp)
        except StoreError as exc:
            log.error("%s: could not remove the temporary object %s (%s); `s3mount uploads "
                      "abort` can remove it later", self.up.key, self.tmp, exc)


async def prove_by_reading(up: Upload, etag: str) -> None:
    """Read back the big parts whose copy answer proved nothing from the completed object
    (pinned to its ETag `etag`), one buffer at a time, and compare their MD5s."""
    budget = up.mgr.budget
    size = up.mgr.sub_size
    for number, start, length, digest in up.read_back:
        whole = hashlib.md5()
        taken = await budget.acquire(size, up.key)
        mem = budget.buffer(size)
        try:
            for off in range(start, start + length, size):
                with memoryview(mem)[:min(size, start + length - off)] as view:
                    await up.store.get_range(up.key, off, view, etag)
                    await trio.to_thread.run_sync(whole.update, view, limiter=up.mgr.hashers)
        finally:
            budget.release(taken)
            budget.recycle(mem)
        if whole.digest() != digest:
            await up.remove_bad_object(f"part {number} read back with MD5 "
                                       f"{whole.hexdigest()}, expected {digest.hex()}")
        log.debug("%s: part %d proven by reading it back", up.key, number)
