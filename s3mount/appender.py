"""Appending to an existing object: a new upload whose first parts are server-side copies.

`>>`, `O_APPEND` and `curl -C -` write at the end of an object that exists. The first such
write starts a new upload (writer.py) that must begin with the old object's bytes. When the
object is at least one part of the schedule (and S3's 5 MiB minimum), its leading parts are
UploadPartCopy of the old object's own parts (their sizes from HEAD ?partNumber=N, or the whole
object if it is a single-part one), each pinned to its ETag (CopySourceIfMatch). A last part
shorter than 5 MiB cannot be a part that others follow: it is read back (pinned likewise) into
the writer's first buffer (it is read before the copies, for the proof: at most 5 MiB held
outside the write budget for a moment), where the appended bytes follow it through the same
parts and checks as any written bytes. Smaller objects are read back whole and sent again.

Proof, before anything else is written: the copy answers must be MD5s that, combined as S3
combines part MD5s (with the read-back tail's MD5 last), give the old object's ETag. That
proves every copied byte without reading it. A combination that does not match is copied
again (`COPY_VERIFY_ATTEMPTS` times), then the append fails (EIO) and the old object stays.
The copied parts' MD5s join the writer's multipart ETag, so completing the upload still
checks the whole new object's ETag, and the old object is replaced only then.

Where the copy answers are no MD5s (SeaweedFS answers MD5s only to uploads that declare an
additional checksum), the mount finds out whether the server keeps checksums
(`Uploads.checksum_for_copies`) and, if so, copies again in an upload that declares CRC32C.
Where that cannot help, where the server does not tell part sizes, or where the old ETag is no
MD5 of its parts (SSE-KMS, SSE-C), the old bytes are read back and sent again. The big parts'
proof by reading the completed object back (assembler.prove_by_reading) is not used for
appends: the new object would then replace the old one before it is proven, and a failed proof
would remove both.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from .assembler import COPY_VERIFY_ATTEMPTS, MD5_HEX
from .config import S3_MAX_PART, S3_MIN_PART
from .errors import IntegrityError
from .etag import etag_like
from .objects import Extra, Sent
from .renamer import each_part, part_layout, parts_of

if TYPE_CHECKING:
    from .writer import Upload

log = logging.getLogger(__name__)
READ_CHUNK = 1 << 20  # bytes read back at a time


async def begin(up: Upload, key: str, size: int, etag: str) -> None:
    """Start `up` with the bytes of object `key` (`size` bytes, ETag `etag`, which every
    request is pinned to): copied where that can be proven, else read back. Logs one line
    saying which."""
    why = await _copy_in(up, key, size, etag)
    if why is None:
        return
    await read_in(up, key, 0, size, etag)
    log.info("%s: appending: the old object's %d bytes were read back into a new upload (%s)",
             key, size, why)


async def read_in(up: Upload, key: str, start: int, size: int, etag: str,
                  md5: hashlib._Hash | None = None) -> None:
    """Write bytes [start, start + size) of the object, as it is now (If-Match), into `up` at
    the same offsets (updating `md5` with them, if given)."""
    buf = memoryview(bytearray(min(size, READ_CHUNK)))
    done = start
    while done < start + size:
        n = min(len(buf), start + size - done)
        await up.store.get_range(key, done, buf[:n], etag)
        if md5 is not None:
            md5.update(buf[:n])
        await up.write(done, bytes(buf[:n]))
        done += n


async def _layout(up: Upload, key: str, size: int, etag: str) -> list[int] | str:
    """The old object's part sizes, or why its parts cannot be copied."""
    if size < max(S3_MIN_PART, up.mgr.schedule.size_of(1)):
        return "smaller than one part"
    if not up.mgr.append_copies:
        return "this server's copies cannot be proven"
    if MD5_HEX.match(etag):
        return [size] if size <= S3_MAX_PART else "a single-part object larger than a part"
    if not parts_of(etag):
        return f"its ETag {etag} is no MD5 of its bytes"
    sizes = await part_layout(up.store, key, size, etag)
    if sizes is None:
        return "the server does not tell its part sizes"
    if any(not S3_MIN_PART <= s <= S3_MAX_PART for s in sizes[:-1]):
        return "its parts are not all of a size S3 copies"
    return sizes


async def _copy_in(up: Upload, key: str, size: int, etag: str) -> str | None:
    """Copy the old object's parts into `up` and prove them; None when done, else why not
    (nothing was written then)."""
    sizes = await _layout(up, key, size, etag)
    if isinstance(sizes, str):
        return sizes
    count = len(sizes) if sizes[-1] >= S3_MIN_PART else len(sizes) - 1
    if count == 0:
        return "its only part is smaller than 5 MiB"
    base = sum(sizes[:count])
    tail = bytearray(size - base)  # the last part, under 5 MiB, if it cannot be copied
    if tail:
        await up.store.get_range(key, base, memoryview(tail), etag)
    tail_md5 = [hashlib.md5(tail).digest()] if tail else []
    asked = False
    upload_id = await up.begin_multipart()
    if not up.md5_etags:  # the bucket encrypts (SSE-KMS, SSE-C): ETags are no MD5s
        await up.drop_multipart()
        return "the bucket's ETags are no MD5s"
    attempt = 0
    while True:
        sents = await _copy_parts(up, key, upload_id, sizes[:count], etag)
        answers = [s.etag for s in sents]
        if not all(MD5_HEX.match(a) for a in answers):
            mgr = up.mgr
            if not asked and up.algo is None and mgr.chosen is None:
                asked = True  # the server may answer MD5s to an upload with a checksum
                mgr.try_checksum = not mgr.copies_need_checksum
                await mgr.checksum_for_copies()
                if mgr.algorithm() is not None:
                    upload_id = await up.begin_multipart(again=True)
                    continue
            await up.drop_multipart()
            mgr.append_copies = False
            return f"the server's copy answers are no MD5s ({answers[0]})"
        if up.algo is not None and any(s.checksum is None for s in sents):
            raise IntegrityError(f"{key}: appending: the server did not return the "
                                 f"{up.algo.s3_name} checksums of the parts it copied, so "
                                 "they cannot be verified; the old object is unchanged")
        digests = [bytes.fromhex(a) for a in answers] + tail_md5
        combined = etag_like(etag, digests)
        if combined == etag:
            break
        attempt += 1
        if attempt == COPY_VERIFY_ATTEMPTS:
            raise IntegrityError(
                f"{key}: appending: the server's copies of the old object's {count} part(s) "
                f"never came back with MD5s that make its ETag {etag} (they make {combined}); "
                "the old object is unchanged")
        log.warning("%s: appending: the copies of the old object's parts make ETag %s, not "
                    "its %s (attempt %d/%d); copying them again", key, combined, etag,
                    attempt, COPY_VERIFY_ATTEMPTS)
    up.adopt_copies([(n, d, a, _extra(up, s)) for n, d, a, s in
                     zip(sizes[:count], digests, answers, sents, strict=False)])
    if tail:
        await up.write(base, bytes(tail))
    log.info("%s: appending: the old object's first %d bytes were copied by the server in %d "
             "part(s), proven by their MD5s against its ETag; %d bytes read back", key, base,
             count, len(tail))
    return None


def _extra(up: Upload, sent: Sent) -> Extra | None:
    return (up.algo, sent.checksum) if up.algo is not None and sent.checksum else None


async def _copy_parts(up: Upload, key: str, upload_id: str, sizes: list[int],
                      etag: str) -> list[Sent]:
    """UploadPartCopy of the old object's parts `sizes` as parts 1..K, in parallel."""
    sents: list[Sent | None] = [None] * len(sizes)

    async def one(number: int, start: int, size: int) -> None:
        sents[number - 1] = await up.store.copy_part_checked(
            key, upload_id, number, key, size, etag, up.algo, start=start)

    await each_part(sizes, one, up.mgr.part_slots)
    return [s for s in sents if s is not None]
