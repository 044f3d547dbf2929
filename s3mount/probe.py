"""Know the server before the first write: what its answers can prove.

At the start of a read-write mount, one small object under the mount's hidden name
(`keys.PROBE_PREFIX` + random hex, at the root of the mounted prefix) is PUT with Content-MD5
and an additional checksum, then deleted. Its answer says

- whether the server's ETags are MD5s: 32 hex digits, equal to the MD5 of the body, and no
  encryption header saying otherwise (SSE-KMS, SSE-C);
- whether it keeps additional checksums: the one sent comes back.

`decide` turns that into the mount's verification plan, or refuses a mount on which nothing
could prove what s3mount stores (`QuietError` with one line of advice).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass

import trio

from . import checksum
from .checksum import Algorithm
from .config import Config
from .errors import AccessDenied, QuietError, StoreError
from .etag import etag_is_md5
from .keys import PROBE_PREFIX, KeyMap
from .objects import Sent
from .store import S3Store

log = logging.getLogger(__name__)

PROBE_BODY = b"s3mount probe: this object is written and deleted at mount start\n"


@dataclass(frozen=True)
class ServerTraits:
    """What the probe's answer showed."""

    etags_are_md5: bool
    checksums: bool  # the additional checksum sent came back, equal
    algorithm: Algorithm  # the one sent
    answer: str  # what the server answered, in words, for messages

    @property
    def provable(self) -> bool:
        return self.etags_are_md5 or self.checksums


def algorithm_for(config: Config) -> Algorithm:
    return checksum.get(checksum.DEFAULT_FOR_ENCRYPTED if config.checksum == "auto"
                        else config.checksum)


async def probe(store: S3Store, keys: KeyMap, algo: Algorithm) -> ServerTraits:
    """PUT the probe object (with an additional checksum; again without if the server refuses
    that), then delete it."""
    key = keys.file_key(PROBE_PREFIX + secrets.token_hex(8))
    md5 = hashlib.md5(PROBE_BODY, usedforsecurity=False).digest()
    want = algo.part(PROBE_BODY)
    try:
        sent = await store.put(key, PROBE_BODY, md5, (algo, want))
    except AccessDenied:
        raise
    except StoreError as exc:  # some servers reject x-amz-checksum-* headers outright
        log.debug("probe PUT with %s refused (%s); sending it without", algo.s3_name, exc)
        sent = await store.put(key, PROBE_BODY, md5)
    try:
        await store.delete(key)
    except StoreError as exc:
        log.warning("could not delete the probe object %s (%s); it is hidden from listings "
                    "and can be deleted by hand", key, exc)
    return traits_of(sent, md5, algo, want)


def traits_of(sent: Sent, md5: bytes, algo: Algorithm, want: str) -> ServerTraits:
    is_md5 = etag_is_md5(sent.encryption, sent.etag) and sent.etag == md5.hex()
    echoed = sent.checksum == want
    enc = f"encryption {sent.encryption}" if sent.encryption else "no encryption header"
    sums = (f"{algo.s3_name} echoed" if echoed else
            f"{algo.s3_name} sent, {'none' if sent.checksum is None else sent.checksum} "
            "echoed")
    answer = (f"ETag {sent.etag!r} for a probe object whose MD5 is {md5.hex()}, {enc}, "
              f"{sums}")
    return ServerTraits(is_md5, echoed, algo, answer)


def decide(config: Config, traits: ServerTraits) -> None:
    """Refuse a mount whose writes nothing could verify; log what will verify them."""
    where = f"s3://{config.bucket}/{config.prefix}"
    if traits.etags_are_md5:
        log.debug("%s: ETags are MD5s (%s)", where, traits.answer)
        return
    if traits.checksums:
        log.warning("%s: this server's ETags are not MD5s (it answered %s): uploads are "
                    "verified with %s checksums instead", where, traits.answer,
                    traits.algorithm.s3_name)
        return
    if config.verify == "read-back":
        log.warning("%s: this server's ETags are not MD5s and it keeps no additional "
                    "checksums (it answered %s): uploads are verified only by reading each "
                    "object back (--verify read-back)", where, traits.answer)
        return
    raise QuietError(
        f"{where}: this server's ETags are not MD5s and it returns no additional checksums "
        f"(it answered {traits.answer}), so nothing could verify what s3mount uploads; "
        "mount with --read-only, set the server to MD5 ETags or to keep checksums, or mount "
        "with --verify read-back (each file is read back and hashed before close() returns: "
        "one more read of every byte written)", 5)


async def learn_server(store: S3Store, config: Config) -> ServerTraits | None:
    """Probe (bounded in time) and decide; None when the probe could not run, in which case
    uploads learn from their own answers."""
    keys = KeyMap(config.prefix, config.dir_suffix)
    try:
        with trio.fail_after(2 * (config.connect_timeout + config.request_timeout)):
            traits = await probe(store, keys, algorithm_for(config))
    except (StoreError, trio.TooSlowError) as exc:
        log.warning("could not probe s3://%s/%s with a test object (%s); uploads will learn "
                    "what the server's answers prove from the first ones", config.bucket,
                    config.prefix, exc or "timed out")
        return None
    decide(config, traits)
    return traits
