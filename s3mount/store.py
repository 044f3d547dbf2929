"""The only module that talks to S3: async wrappers over boto3, one retry policy, errors mapped.

Every call runs in a worker thread under our own limiter (never trio's default one), carries
socket timeouts, and is retried with exponential backoff and full jitter until an overall
deadline. boto3's own retries are off so that the two policies do not multiply. boto3 >= 1.36
would add CRC32 checksums and `aws-chunked` bodies that several S3-compatible servers reject:
we switch that off and send Content-MD5 ourselves.

`Health` keeps what the mount knows of S3's health: requests waiting and since when, retries
and errors by kind, latencies, the last success. A request unanswered for 5 s
(`Config.stall_warning`), or retried, is in trouble, and opens a *stall episode*: one warning
when it starts, one line when no request is in trouble any more, however many retries and
requests it takes; trouble within 30 s of the last episode continues it quietly.
"""

from __future__ import annotations

import base64
import collections
import datetime
import email.utils
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import botocore.utils
import trio

from .checksum import KEPT, Algorithm
from .config import Config, mask
from .errors import (
    AccessDenied,
    NoSuchBucket,
    NoSuchKey,
    PreconditionFailed,
    QuietError,
    SizeMismatch,
    StoreError,
    TransientError,
)
from .etag import normalize_etag
from .objects import (
    Body,
    Extra,
    ListPage,
    Meta,
    ObjectInfo,
    PartDone,
    Sent,
    Started,
    UploadInfo,
)
from .wire import SEND_BLOCK, SMALL_BODY, Unsupported, Wire

log = logging.getLogger(__name__)
T = TypeVar("T")

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
_TRANSIENT = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestTimeTooSkewed", "BadDigest", "IncompleteBody", "500", "502",
    "503", "504",
}
_NETWORK_ERRORS = (
    botocore.exceptions.ConnectionError,  # endpoint refused, connect timeout, proxy
    botocore.exceptions.HTTPClientError,  # connection closed or reset mid-request, timeouts
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    ConnectionError,
    TimeoutError,
)


def _read_body_into(body: Any, into: memoryview) -> int:
    """Read a GET body into `into` without a copy: straight from the http.client response
    under botocore's StreamingBody and urllib3 (their read() returns a new bytes object per
    call). Returns the body's length, counting bytes beyond `into` (read and dropped). The
    final urllib3 read sees the end and returns the connection to its pool."""
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    n = 0
    if raw is None or fp is None or not hasattr(fp, "readinto"):
        while n < len(into) and (data := body.read(len(into) - n)):
            into[n:n + len(data)] = data
            n += len(data)
        return n + len(body.read())
    while n < len(into) and (got := fp.readinto(into[n:])):
        n += got
    return n + len(raw.read())


def _range_total(content_range: Any) -> int | None:
    """The object size in a Content-Range answer ("bytes 0-9/10"), if it says."""
    total = str(content_range or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _extra_args(checksum: Extra | None) -> dict[str, str]:
    return {} if checksum is None else {checksum[0].field: checksum[1]}


def _object_args(meta: Meta | None, content_type: str | None) -> dict[str, Any]:
    """User metadata and Content-Type for PutObject, CreateMultipartUpload, CopyObject."""
    args: dict[str, Any] = {}
    if meta:
        args["Metadata"] = meta
    if content_type:
        args["ContentType"] = content_type
    return args


def _head_answer(key: str, answer: dict[str, Any] | Exception) -> ObjectInfo | None | StoreError:
    """One key's answer to `head_many`: its attributes, None (no such key), or the error."""
    if not isinstance(answer, Exception):
        return _info(key, answer)
    err = classify(answer, f"HEAD {key}")
    return None if isinstance(err, NoSuchKey) else err


def _info(key: str, r: dict[str, Any]) -> ObjectInfo:
    """An object's attributes from a HeadObject answer (or a GET's read as one)."""
    algo = next((a for a in KEPT.values() if r.get(a.field)), None)
    return ObjectInfo(key, int(r["ContentLength"]), r["LastModified"].timestamp(),
                      normalize_etag(r.get("ETag", "")), str(r[algo.field]) if algo else None,
                      _encryption(r), dict(r.get("Metadata") or {}),
                      r.get("ContentType") or None, algo.name if algo else None,
                      r.get("ChecksumType") if algo else None)


def _encryption(r: dict[str, Any]) -> str | None:
    if r.get("SSECustomerAlgorithm"):
        return "SSE-C"
    enc = r.get("ServerSideEncryption")
    return str(enc) if enc else None


def _returned_checksum(r: dict[str, Any], checksum: Extra | None) -> str | None:
    if checksum is None:
        return None
    got = r.get(checksum[0].field)
    return str(got) if got else None


def _lean_body(body: Body, headers: dict[str, str] | None
               ) -> tuple[memoryview, dict[str, str]] | None:
    """A PUT's body as the lean path (wire.py) sends it, from where its bytes are, with its
    headers; None for a body only readable as a file, or headers only boto3 can send."""
    if headers is None:
        return None
    if isinstance(body, bytes | bytearray):
        return memoryview(body), headers
    getbuffer = getattr(body, "getbuffer", None)
    return None if getbuffer is None else (memoryview(getbuffer()), headers)


def _lean_put_headers(md5: bytes, checksum: Extra | None, meta: Meta | None,
                      content_type: str | None) -> dict[str, str] | None:
    """A PutObject's headers for the lean path (wire.py), or None where only boto3 knows
    how to send them (values that are not plain ASCII)."""
    headers = {"content-md5": _b64(md5)}
    if content_type:
        headers["content-type"] = content_type
    if checksum is not None:
        headers[f"x-amz-checksum-{checksum[0].s3_name.lower()}"] = checksum[1]
    for k, v in (meta or {}).items():
        headers[f"x-amz-meta-{k.lower()}"] = v
    if not all(v.isascii() and v.isprintable() and k.isascii() for k, v in headers.items()):
        return None
    return headers


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _rewound(body: Body) -> Any:
    """The body ready to send (again, on a retry): a file-like body from its start, and one
    that offers its buffer (`getbuffer`, as PartBody does) as a `_SendBody` over it."""
    if isinstance(body, bytes | bytearray):
        return body
    body.seek(0)
    getbuffer = getattr(body, "getbuffer", None)
    if getbuffer is None:
        return body
    view = getbuffer()
    # botocore sends a file-like body after `Expect: 100-continue`, waiting for the
    # server's go-ahead: a round trip that only pays off when a large body might be
    # refused. A small one goes as bytes, in the request's first packets (a small file's
    # PUT, cp -r: 0.3 ms a file of 3.9 measured; the copy is a few microseconds).
    return bytes(view) if len(view) <= SMALL_BODY else _SendBody(view)




class _SendBody:
    """A body for botocore that reads as slices of the buffer, not copies of it: urllib3
    sends a file-like body as `read(blocksize)` then `sendall` of each block, and
    `PartBody.read` returns bytes (a copy). A memoryview slice goes to sendall as it is, so
    the only copy left is the kernel's. Profiled: 0.13 s of CPU per GiB sent for the copy
    (__memmove in the sending threads), and the per-block Python work of 128 KiB blocks."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, len(self._view))[whence]
        self._pos = min(max(0, base + offset), len(self._view))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else min(len(self._view),
                                                                   self._pos + size)
        data = self._view[self._pos:end]
        self._pos = end
        return data


def classify(exc: BaseException, what: str) -> StoreError:
    """Turn a botocore/network exception into one of ours."""
    if isinstance(exc, StoreError):  # raised by our own checks inside a call
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        msg = f"{what}: {code or status} {err.get('Message', '')}".strip()
        if code in ("PreconditionFailed",) or status == 412:
            return PreconditionFailed(f"{what}: the object changed (ETag no longer matches)")
        if code == "NoSuchBucket":
            return NoSuchBucket(msg)
        if code in _NOT_FOUND or status == 404:
            return NoSuchKey(msg)
        if code in _DENIED or status == 403:
            return AccessDenied(msg)
        if code in _TRANSIENT or status >= 500 or status == 429:
            return TransientError(msg)
        return StoreError(msg)
    if isinstance(exc, _NETWORK_ERRORS):
        return TransientError(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AccessDenied(f"{what}: no AWS credentials found")
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(eq=False)
class Pending:
    """One request of ours (with its retries) that S3 has not answered yet."""

    kind: str  # GET, PUT, PART, HEAD, LIST, COMPLETE, ...
    what: str  # kind and key, as in log lines
    since: float  # time.monotonic()
    retries: int = 0
    warned: bool = False
    last_error: str = ""


@dataclass(eq=False)
class Histogram:
    """Request durations (seconds) in LATENCY_BUCKETS, cumulative as Prometheus has them."""

    counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    total: int = 0
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.total += 1
        self.sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1


EPISODE_QUIET = 30.0  # seconds without trouble that end a stall episode for the log


class Health:
    """S3's health as this mount sees it; updated from the event loop only.

    A request that is retried, or unanswered for `stall_after` seconds, is in trouble. The
    first one opens a *stall episode*: one warning. The episode lasts while any request is in
    trouble; its end is one line. Trouble that comes back within EPISODE_QUIET seconds of the
    last episode's end continues that episode quietly (debug lines), so that a server failing
    one request in ten gives one warning, not one per retry."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self.pending: dict[int, Pending] = {}
        self.answered: collections.Counter[str] = collections.Counter()
        self.retries: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, Histogram] = collections.defaultdict(Histogram)
        self.stalls = 0  # episodes warned about
        self.last_success: float | None = None  # time.time()
        self.troubled = 0  # requests in trouble, still pending
        self.loud = False  # the current episode was warned about
        self.episode_requests = 0  # requests in trouble in the current episode
        self.last_episode_end = -float("inf")  # time.monotonic()
        # Requests sent by the lean path (wire.py) so far; None while boto3 sends all.
        self.lean_requests: Callable[[], int | None] = lambda: None

    def begin(self, what: str) -> Pending:
        p = Pending(what.partition(" ")[0], what, time.monotonic())
        self.pending[id(p)] = p
        return p

    def retried(self, p: Pending, err: StoreError, pause: float) -> None:
        p.retries += 1
        p.last_error = str(err)
        self.retries[p.kind] += 1
        self._trouble(p, f"failed after {time.monotonic() - p.since:.1f} s ({err}); "
                         f"retrying in {pause:.1f} s")

    def stalled(self, now: float) -> None:
        """Note each request unanswered for `stall_after` seconds as in trouble."""
        for p in list(self.pending.values()):
            if now - p.since >= self.stall_after:
                self._trouble(p, f"not answered for {now - p.since:.1f} s; waiting")

    def _trouble(self, p: Pending, how: str) -> None:
        if p.warned:
            return
        p.warned = True
        self.troubled += 1
        self.episode_requests += 1
        if self.troubled > 1 or self.episode_requests > 1:
            log.debug("S3 stall goes on: %s %s", p.what, how)
            return
        self.loud = time.monotonic() - self.last_episode_end >= EPISODE_QUIET
        if self.loud:
            self.stalls += 1
            log.warning("S3 stall: %s %s (one warning per stall; its end is logged)",
                        p.what, how)
        else:
            log.debug("S3 stall again: %s %s", p.what, how)

    def end(self, p: Pending, ok: bool) -> None:
        self.pending.pop(id(p), None)
        took = time.monotonic() - p.since
        if ok:
            self.answered[p.kind] += 1
            self.latency[p.kind].observe(took)
            self.last_success = time.time()
        else:
            self.errors[p.kind] += 1
        if not p.warned:
            return
        self.troubled -= 1
        if self.troubled:
            return
        level = (logging.WARNING if not ok else logging.INFO) if self.loud else logging.DEBUG
        log.log(level, "S3 stall over: %s %s after %.1f s (%d %s; %d %s in trouble in this "
                "stall)", p.what, "answered" if ok else "failed for good", took, p.retries,
                "retry" if p.retries == 1 else "retries", self.episode_requests,
                "request" if self.episode_requests == 1 else "requests")
        self.episode_requests = 0
        self.last_episode_end = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        waiting = sorted(self.pending.values(), key=lambda p: p.since)
        return {
            "waiting": len(waiting),
            "oldest_wait_s": round(now - waiting[0].since, 1) if waiting else None,
            "stalled": [{"request": p.what, "waiting_s": round(now - p.since, 1),
                         "retries": p.retries, "last_error": p.last_error}
                        for p in waiting if p.warned],
            "stalls": self.stalls,
            "answered": dict(self.answered), "retries": dict(self.retries),
            "errors": dict(self.errors), "lean_requests": self.lean_requests(),
            "last_success_s_ago": None if self.last_success is None else
            round(time.time() - self.last_success, 1),
        }


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts and by an overall deadline."""

    retries: int = 8
    base: float = 0.2
    cap: float = 10.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


class S3Store:
    """The real store: boto3 in worker threads."""

    def __init__(self, config: Config, client: Any | None = None) -> None:
        self.bucket = config.bucket
        self.config = config
        self.policy = RetryPolicy(retries=config.retries)
        self.limiter = trio.CapacityLimiter(config.max_connections)
        self.client = client if client is not None else make_client(config)
        self.health = Health(config.stall_warning)
        # HEAD, GET, PUT, UploadPart, DELETE and LIST go the lean way (wire.py) unless told
        # not to, or given a client of the caller's (tests), whose requests must all go
        # through it.
        self.wire = None if client is not None or config.sdk_requests else Wire.for_client(
            self.client, config.bucket, config.connect_timeout, config.request_timeout,
            parse_timestamp)
        self.health.lean_requests = lambda: None if self.wire is None else self.wire.sent

    def _either(self, lean: Callable[[Wire], T] | None, sdk: Callable[[], T]) -> T:
        """`lean` through the lean path where it is on (None: this request cannot go that
        way), else `sdk` through boto3; an answer the lean path does not handle turns it off
        and goes to boto3 too. Runs in the request's worker thread."""
        if lean is not None and (wire := self.wire) is not None:
            try:
                return lean(wire)
            except Unsupported as exc:
                self._lean_off(exc)
        return sdk()

    def _lean_off(self, why: BaseException) -> None:
        """An answer the lean path does not handle: boto3 sends every request from now on."""
        if self.wire is not None:
            self.wire = None
            log.info("S3 answered in a way s3mount's lean requests do not handle (%s): every "
                     "request goes through boto3 from now on", why)

    async def watch_stalls(self) -> None:
        """Runs for the mount's life: warns about requests S3 leaves unanswered."""
        while True:
            await trio.sleep(min(0.5, self.health.stall_after / 4))
            self.health.stalled(time.monotonic())

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[], T], deadline: float,
                    attempts: int | None) -> T:
        """Run `fn` in a worker thread; retry transient failures until `deadline` seconds have
        passed or (when not None) after `attempts` retries."""
        pending = self.health.begin(what)
        ok = False
        try:
            result = await self._attempts(what, fn, deadline, attempts, pending)
            ok = True
            return result
        finally:
            self.health.end(pending, ok)

    async def _attempts(self, what: str, fn: Callable[[], T], deadline: float,
                        attempts: int | None, pending: Pending) -> T:
        give_up = time.monotonic() + deadline
        attempt = 0
        while True:
            try:
                return await trio.to_thread.run_sync(fn, limiter=self.limiter)
            except Exception as exc:  # noqa: BLE001 - classified right here
                err = classify(exc, what)
            if not isinstance(err, TransientError):
                raise err
            if attempts is not None and attempt >= attempts:
                raise TransientError(f"{err} (gave up after {attempt} retries)")
            pause = self.policy.delay(attempt)
            if time.monotonic() + pause > give_up:
                raise TransientError(f"{err} (S3 failed for {deadline:.0f} s: gave up)")
            attempt += 1
            of = f"/{attempts}" if attempts is not None else ""
            log.debug("%s; retry %d%s in %.2f s", err, attempt, of, pause)
            self.health.retried(pending, err, pause)
            await trio.sleep(pause)

    def _read_call(self, what: str, fn: Callable[[], T]) -> Any:
        """Reads and metadata: `--retries` retries, at most `--read-deadline` seconds."""
        return self._call(what, fn, self.config.read_deadline, self.policy.retries)

    def _write_call(self, what: str, fn: Callable[[], T]) -> Any:
        """Uploads: retried for as long as `--write-deadline` allows, whatever the count, so
        that an outage shorter than the deadline only stalls the writer."""
        return self._call(what, fn, self.config.write_deadline, None)

    # -- metadata ---------------------------------------------------------------------------

    async def check_bucket(self) -> None:
        """Fail fast (one attempt) with a QuietError when the bucket cannot be used."""
        try:
            await trio.to_thread.run_sync(
                lambda: self.client.head_bucket(Bucket=self.bucket), limiter=self.limiter)
        except Exception as exc:  # noqa: BLE001
            raise bucket_error(self.bucket, self.config.endpoint_url, exc) from None

    async def head(self, key: str, checksum: bool = False) -> ObjectInfo | None:
        """The object's attributes, or None; `checksum` asks for its additional checksum."""
        args = {"ChecksumMode": "ENABLED"} if checksum else {}

        def call() -> dict[str, Any]:
            return self._either(lambda wire: wire.head_object(key, checksum),
                                lambda: self.client.head_object(Bucket=self.bucket, Key=key,
                                                                **args))
        try:
            r = await self._read_call(f"HEAD {key}", call)
        except NoSuchKey:
            return None
        return _info(key, r)

    async def head_many(self, keys: list[str],
                        each: Callable[[int, ObjectInfo | None | StoreError], None] | None = None
                        ) -> list[ObjectInfo | None | StoreError]:
        """What `head` says of each key (checksum not asked), sent together in one worker
        thread's turn (wire.py `head_objects`: all at once, one connection each): the
        thread hand-over, not the HEAD, is most of a lone HEAD's CPU (`ls -l`). A key that
        failed has the error a HEAD of it alone would raise, not retried: the caller asks
        again alone. `each(index, answer)` runs in the caller's trio thread as each answer
        comes, before this returns (possibly twice for a key, if the lean path turned off
        part way). Without the lean path, boto3's HEADs go one per worker thread, at once."""
        if self.wire is None:
            return await self._heads_apart(keys, each)
        token = trio.lowlevel.current_trio_token()
        # Answers that come while the trio thread has not yet taken the earlier ones go with
        # them, in one wake-up of it (each wake-up is a hand-over between the threads).
        ready: list[tuple[int, ObjectInfo | None | StoreError]] = []
        lock = threading.Lock()

        def give() -> None:
            with lock:
                batch = ready[:]
                ready.clear()
            for i, answer in batch:
                assert each is not None
                each(i, answer)

        def told(i: int, answer: dict[str, Any] | Exception) -> None:
            if each is None:
                return
            info = _head_answer(keys[i], answer)
            with lock:
                ready.append((i, info))
                first = len(ready) == 1
            if first:  # else a `give` is queued and not yet run: it takes this one too
                token.run_sync_soon(give)

        answers = await self._read_call(
            f"HEAD of {len(keys)} keys", lambda: self._either(
                lambda wire: wire.head_objects(keys, len(keys), told), lambda: None))
        if answers is None:  # the lean path turned off part way: boto3 sends them all
            return await self._heads_apart(keys, each)
        return [_head_answer(key, a) for key, a in zip(keys, answers, strict=True)]

    async def _heads_apart(self, keys: list[str],
                           each: Callable[[int, ObjectInfo | None | StoreError], None] | None
                           ) -> list[ObjectInfo | None | StoreError]:
        """`head_many` through boto3: each key's `head` in a worker thread of its own, all at
        once."""
        out: list[ObjectInfo | None | StoreError] = [None] * len(keys)

        async def one(i: int) -> None:
            try:
                out[i] = await self.head(keys[i])
            except StoreError as exc:
                out[i] = exc
            if each is not None:
                each(i, out[i])
        async with trio.open_nursery() as nursery:
            for i in range(len(keys)):
                nursery.start_soon(one, i)
        return out

    async def get_first(self, key: str, into: memoryview) -> tuple[ObjectInfo, int] | None:
        """One GET of the object's first `len(into)` bytes, of whatever version is there (no
        If-Match), read as a HEAD too: what HEAD would say, and how many bytes came; None if
        there is no object. An empty object (no byte 0: 416) is asked by HEAD."""
        def sdk() -> tuple[dict[str, Any], int]:
            r = self.client.get_object(Bucket=self.bucket, Key=key,
                                       Range=f"bytes=0-{len(into) - 1}")
            return r, _read_body_into(r["Body"], into)

        def call() -> tuple[dict[str, Any], int] | None:
            try:
                r, n = self._either(lambda wire: wire.get_first(key, into), sdk)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                    return None  # no byte 0: an empty object
                raise
            r["ContentLength"] = _range_total(r.get("ContentRange")) or n
            return r, n
        try:
            got = await self._read_call(f"GET {key} (its first bytes)", call)
        except NoSuchKey:
            return None
        if got is None:
            info = await self.head(key)
            return None if info is None else (info, 0)
        r, n = got
        info = _info(key, r)
        return info, min(n, len(into), info.size)

    async def list_page(self, prefix: str, delimiter: str | None = "/",
                        token: str | None = None, max_keys: int = 1000) -> ListPage:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            args["Delimiter"] = delimiter
        if token:
            args["ContinuationToken"] = token
        r = await self._read_call(f"LIST {prefix!r}", lambda: self._either(
            lambda wire: wire.list_objects_v2(prefix, delimiter, token, max_keys),
            lambda: self.client.list_objects_v2(**args)))
        objects = [ObjectInfo(o["Key"], int(o["Size"]), o["LastModified"].timestamp(),
                              normalize_etag(o.get("ETag", ""))) for o in r.get("Contents", [])]
        prefixes = [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        nxt = r.get("NextContinuationToken") if r.get("IsTruncated") else None
        return ListPage(objects, prefixes, nxt)

    # -- data -------------------------------------------------------------------------------

    async def get_range(self, key: str, start: int, into: memoryview, etag: str) -> None:
        """Fill `into` with the bytes of `key` from `start`, only if its ETag is still `etag`."""
        end = start + len(into)

        def short(holds: str) -> SizeMismatch:
            return SizeMismatch(
                f"{key}: the object's size and its bytes disagree: its size was given as at "
                f"least {end} bytes, but S3 {holds} under the same ETag {etag}; retrying "
                "will not change that (the server's metadata is wrong, or the object was "
                "replaced without a new ETag)")

        def call() -> None:
            try:
                got, content_range = self._get_into(key, start, into, etag)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                    raise short(f"has no byte at offset {start}") from None
                raise
            if got != end - start:
                total = _range_total(content_range)
                if total is not None and total < end:  # not a cut connection: S3 has no more
                    raise short(f"holds {total}")
                raise botocore.exceptions.IncompleteReadError(
                    actual_bytes=got, expected_bytes=end - start)
        what = f"GET {key} [{start}, {end})"
        try:
            await self._read_call(what, call)
        except NoSuchKey:
            # An open file whose object is gone: EIO, as when it changed (ENOENT means nothing
            # to read(2)), and logged as an error, not as the debug line of a failed lookup.
            raise PreconditionFailed(f"{what}: the object was deleted while the file was "
                                     "open; bytes not yet read cannot be read") from None

    def _get_into(self, key: str, start: int, into: memoryview,
                  etag: str) -> tuple[int, str | None]:
        """One ranged GET pinned to `etag` into `into`: the body's length, its Content-Range."""
        def sdk() -> tuple[int, str | None]:
            r = self.client.get_object(Bucket=self.bucket, Key=key, IfMatch=f'"{etag}"',
                                       Range=f"bytes={start}-{start + len(into) - 1}")
            return _read_body_into(r["Body"], into), r.get("ContentRange")
        return self._either(lambda wire: wire.get_object_into(key, start, into, etag), sdk)

    async def put(self, key: str, body: Body, md5: bytes, checksum: Extra | None = None,
                  meta: Meta | None = None, content_type: str | None = None) -> Sent:
        """PutObject; `meta` is user metadata (keys without `x-amz-meta-`)."""
        extra = {**_extra_args(checksum), **_object_args(meta, content_type)}
        lean = _lean_body(body, _lean_put_headers(md5, checksum, meta, content_type))
        r = await self._write_call(f"PUT {key}", lambda: self._either(
            None if lean is None else lambda wire: wire.put_object(key, *lean),
            lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=_rewound(body),
                                           ContentMD5=_b64(md5), **extra)))
        return Sent(normalize_etag(r.get("ETag", "")), _returned_checksum(r, checksum),
                    _encryption(r))

    async def create_upload(self, key: str, algorithm: Algorithm | None = None,
                            meta: Meta | None = None,
                            content_type: str | None = None) -> Started:
        """CreateMultipartUpload; the object gets `meta` and `content_type` when complete."""
        extra: dict[str, Any] = ({} if algorithm is None else
                                 {"ChecksumAlgorithm": algorithm.s3_name,
                                  "ChecksumType": "COMPOSITE"})
        extra.update(_object_args(meta, content_type))
        r = await self._write_call(f"CREATE-UPLOAD {key}", lambda: self.client
                                   .create_multipart_upload(Bucket=self.bucket, Key=key,
                                                            **extra))
        return Started(str(r["UploadId"]), _encryption(r))

    async def upload_part(self, key: str, upload_id: str, number: int,
                          body: Body, md5: bytes, checksum: Extra | None = None) -> Sent:
        extra = _extra_args(checksum)
        lean = _lean_body(body, _lean_put_headers(md5, checksum, None, None))
        r = await self._write_call(f"PART {number} of {key}", lambda: self._either(
            None if lean is None else lambda wire: wire.upload_part(key, upload_id, number, *lean),
            lambda: self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                Body=_rewound(body), ContentMD5=_b64(md5), **extra)))
        return Sent(normalize_etag(r.get("ETag", "")), _returned_checksum(r, checksum),
                    _encryption(r))

    async def complete_upload(self, key: str, upload_id: str,
                              parts: Sequence[PartDone]) -> str:
        spec = {"Parts": [_part_spec(p) for p in parts]}
        r = await self._write_call(f"COMPLETE {key}", lambda: self.client
                                   .complete_multipart_upload(Bucket=self.bucket, Key=key,
                                                              UploadId=upload_id,
                                                              MultipartUpload=spec))
        return normalize_etag(r.get("ETag", ""))

    async def abort_upload(self, key: str, upload_id: str) -> None:
        await self._write_call(f"ABORT {key}", lambda: self.client.abort_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id))

    async def copy(self, src: str, dst: str, etag: str, meta: Meta | None = None,
                   content_type: str | None = None) -> str:
        """Server-side copy of `src` (only while its ETag is `etag`) to `dst`; up to 5 GiB.
        With `meta` None the copy keeps the source's metadata and Content-Type; else its user
        metadata is `meta` (MetadataDirective REPLACE) and its Content-Type `content_type` or,
        when None, the source's (one HEAD more: REPLACE would otherwise reset it)."""
        extra: dict[str, Any] = {"MetadataDirective": "COPY"}
        if meta is not None:
            if content_type is None:
                info = await self.head(src)
                content_type = info.content_type if info is not None else None
            extra = {"MetadataDirective": "REPLACE", "Metadata": meta,
                     **_object_args(None, content_type)}
        r = await self._write_call(f"COPY {src} -> {dst}", lambda: self.client.copy_object(
            Bucket=self.bucket, Key=dst, CopySource={"Bucket": self.bucket, "Key": src},
            CopySourceIfMatch=f'"{etag}"', **extra))
        return normalize_etag(r.get("CopyObjectResult", {}).get("ETag", ""))

    async def copy_part(self, dst: str, upload_id: str, number: int, src: str, start: int,
                        end: int, etag: str) -> str:
        """UploadPartCopy of bytes [start, end) of `src` as part `number` of `dst`."""
        r = await self._write_call(f"COPY-PART {number} {src} -> {dst}", lambda: self.client
                                   .upload_part_copy(
            Bucket=self.bucket, Key=dst, UploadId=upload_id, PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": src}, CopySourceIfMatch=f'"{etag}"',
            CopySourceRange=f"bytes={start}-{end - 1}"))
        return normalize_etag(r.get("CopyPartResult", {}).get("ETag", ""))

    async def copy_part_checked(self, dst: str, upload_id: str, number: int, src: str,
                                size: int, etag: str, checksum: Algorithm | None,
                                start: int = 0) -> Sent:
        """UploadPartCopy of `size` bytes of `src` from `start` (the whole of a temporary
        object, or a part of an object appended to) as part `number` of `dst`, with the
        additional checksum the server answers for it when `dst`'s upload declared one."""
        r = await self._write_call(f"COPY-PART {number} {src} -> {dst}", lambda: self.client
                                   .upload_part_copy(
            Bucket=self.bucket, Key=dst, UploadId=upload_id, PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": src}, CopySourceIfMatch=f'"{etag}"',
            CopySourceRange=f"bytes={start}-{start + size - 1}"))
        result = r.get("CopyPartResult", {})
        got = result.get(checksum.field) if checksum is not None else None
        return Sent(normalize_etag(result.get("ETag", "")), str(got) if got else None)

    async def part_size(self, key: str, number: int, etag: str) -> int | None:
        """Size of part `number` of a multipart object, or None if the server cannot say.
        Pinned to `etag`; moto's server compares If-Match with the part's own ETag instead,
        so a refusal there is asked again unpinned if the object still has `etag` (a HEAD);
        callers that copy pin their copies too."""
        def call(pinned: bool) -> dict[str, Any]:
            return self._either(
                lambda wire: wire.head_object(key, part=number,
                                              if_match=etag if pinned else None),
                lambda: self.client.head_object(Bucket=self.bucket, Key=key, PartNumber=number,
                                                **({"IfMatch": f'"{etag}"'} if pinned else {})))
        what = f"HEAD {key} part {number}"
        try:
            r = await self._read_call(what, functools.partial(call, True))
        except PreconditionFailed:
            info = await self.head(key)
            if info is None or info.etag != etag:
                raise  # (the object did change)
            r = await self._read_call(what, functools.partial(call, False))
        if "PartsCount" not in r:
            return None
        return int(r["ContentLength"])

    async def delete(self, key: str) -> None:
        await self._write_call(f"DELETE {key}", lambda: self._either(
            lambda wire: wire.delete_object(key),
            lambda: self.client.delete_object(Bucket=self.bucket, Key=key)))

    async def upload_parts(self, key: str, upload_id: str) -> tuple[int, int]:
        """Number of parts and bytes a multipart upload holds so far."""
        count = size = 0
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        while True:
            r = await self._read_call(f"LIST-PARTS {key}", functools.partial(
                self.client.list_parts, **args))
            parts = r.get("Parts", [])
            count += len(parts)
            size += sum(int(p.get("Size", 0)) for p in parts)
            if not r.get("IsTruncated"):
                return count, size
            args["PartNumberMarker"] = r["NextPartNumberMarker"]

    async def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        out: list[UploadInfo] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            r = await self._read_call("LIST-UPLOADS", functools.partial(
                self.client.list_multipart_uploads, **args))
            out += [UploadInfo(u["Key"], u["UploadId"], u["Initiated"].timestamp())
                    for u in r.get("Uploads", [])]
            if not r.get("IsTruncated"):
                return out
            args.update(KeyMarker=r["NextKeyMarker"], UploadIdMarker=r["NextUploadIdMarker"])


def _part_spec(part: PartDone) -> dict[str, Any]:
    number, etag, checksum = part
    return {"PartNumber": number, "ETag": f'"{etag}"', **_extra_args(checksum)}


def _session(config: Config) -> Any:
    if config.credentials is not None:
        return boto3.session.Session(aws_access_key_id=config.credentials.access_key,
                                     aws_secret_access_key=config.credentials.secret_key,
                                     region_name=config.region)
    try:
        return boto3.session.Session(profile_name=config.profile, region_name=config.region)
    except botocore.exceptions.ProfileNotFound:
        raise QuietError(f"AWS profile {config.profile!r} not found in ~/.aws/config") from None


def credential_summary(config: Config) -> str:
    """Which credentials a mount would use, with the keys masked."""
    if config.credentials is not None:
        return (f"access key {mask(config.credentials.access_key)} from "
                f"{config.credentials.source}")
    creds = _session(config).get_credentials()
    if creds is None:
        return "none found"
    return f"access key {mask(creds.access_key)} from boto3 ({creds.method})"


def make_client(config: Config) -> Any:
    """A boto3 S3 client with our timeouts, no SDK retries and no default CRC checksums."""
    session = _session(config)
    if session.get_credentials() is None:
        raise QuietError("no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY, or use --keyfile or --profile", 3)
    bc = botocore.config.Config(
        connect_timeout=config.connect_timeout,
        read_timeout=config.request_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=config.max_connections,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Bodies carry Content-MD5, a signed header the server checks the body against, so
        # SHA256-signing the payload as well (botocore does on http endpoints) only hashes
        # every byte a third time. botocore already skips it on https.
        s3={"addressing_style": "path" if config.endpoint_url else "auto",
            "payload_signing_enabled": False},
    )
    region = config.region or session.region_name or "us-east-1"
    # botocore parses every timestamp with dateutil: a third of the time of a LIST (profiled).
    session._session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=parse_timestamp)
    client = session.client("s3", endpoint_url=config.endpoint_url, region_name=region,
                            config=bc)
    _set_send_block(client, SEND_BLOCK)
    return client


def _set_send_block(client: Any, size: int) -> None:
    """Send request bodies in blocks of `size` (botocore sets urllib3's blocksize to
    128 KiB, with no option for it): 8 times fewer read/sendall rounds in Python per part.
    Each block is one sendall, whose timeout covers the whole block: 1 MiB within the
    request timeout. Through botocore's private attributes; where they are not (another
    botocore), its default stays."""
    manager = getattr(getattr(client._endpoint, "http_session", None), "_manager", None)
    pool_kw = getattr(manager, "connection_pool_kw", None)
    if isinstance(pool_kw, dict) and "blocksize" in pool_kw:
        pool_kw["blocksize"] = size
    else:
        log.debug("botocore's connection pool has no blocksize: request bodies are sent in "
                  "its default blocks")


_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                        "Sep", "Oct", "Nov", "Dec"), 1)}


def parse_timestamp(value: str) -> datetime.datetime:
    """S3's two timestamp forms, ISO 8601 in XML bodies ("2026-11-23T15:12:27.000Z") and
    HTTP dates in headers ("Mon, 23 Nov 2026 15:12:27 GMT"), as aware UTC datetimes, ten times
    faster than botocore's dateutil; anything else goes to botocore's parser. An HTTP date in
    RFC 7231's fixed form is cut by position (a HEAD's Last-Modified, one per file of `ls -l`:
    email.utils took 4% of the mount's time there), any other by email.utils."""
    try:
        if value.endswith("Z"):
            return datetime.datetime.fromisoformat(value[:-1]).replace(
                tzinfo=datetime.UTC)
        if value.endswith(" GMT"):
            if len(value) == 29 and value[3:5] == ", " and value[16] == " ":
                return datetime.datetime(
                    int(value[12:16]), _MONTHS[value[8:11]], int(value[5:7]), int(value[17:19]),
                    int(value[20:22]), int(value[23:25]), tzinfo=datetime.UTC)
            return email.utils.parsedate_to_datetime(value)
    except (ValueError, TypeError, KeyError):
        pass
    return botocore.utils.parse_timestamp(value)


def bucket_error(bucket: str, endpoint: str | None, exc: BaseException) -> QuietError:
    """One clear line for the ways a bucket can be unusable at mount time."""
    where = endpoint or "AWS S3"
    err = classify(exc, f"bucket {bucket!r}")
    if isinstance(err, NoSuchKey | NoSuchBucket):
        return QuietError(f"bucket {bucket!r} does not exist at {where}", 4)
    if isinstance(err, AccessDenied):
        return QuietError(f"access to bucket {bucket!r} at {where} denied: check the "
                          "credentials and the bucket policy", 3)
    if isinstance(err, TransientError):
        return QuietError(f"cannot reach {where}: {exc}", 5)
    return QuietError(f"cannot use bucket {bucket!r} at {where}: {err}", 5)
