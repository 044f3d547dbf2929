"""A fault-injecting HTTP proxy on 127.0.0.1, between s3mount and the real S3 server.

The test sets the faults on the running proxy; each request is forwarded whole (SigV4 stays
valid because the Host header is passed through unchanged) unless a fault says otherwise:

- `error_rate`: answer 503 SlowDown without forwarding;
- `reset_rate`: close the connection without an answer (before forwarding);
- `latency`: seconds added before forwarding;
- `truncate_rate`: for GETs, send the headers and only half of the body, then close;
- `truncate_next`: do that to the next this many GETs;
- `rewrite_part_etags`: answer this many UploadPart requests with a wrong ETag;
- `rewrite_copy_etags`: answer this many UploadPartCopy requests with a wrong ETag (in the
  CopyPartResult body);
- `blackout_until`: until this `time.monotonic()`, reset every connection;
- `hang_until`: until this `time.monotonic()`, accept each request and never answer it; when
  the time comes, reset the connection (a server that went silent);
- `non_md5_etags`: a server whose ETags are not MD5s and that does not say so (AIStore with
  xxhash): every ETag it answers (headers of PUT, UploadPart, HEAD, GET; XML of Complete,
  LIST, copies) becomes 16 hex digits, and the encryption header is dropped; ETags in requests
  (If-Match, the parts of a Complete) are mapped back, so the server behind still works;
- `strip_checksums`: a server that keeps no additional checksums: x-amz-checksum-* headers
  and Checksum* XML elements are removed from answers;
- `flip_gets`: flip one bit in the middle of every GET body;
- `head_extra_bytes`: HEAD answers report this many bytes more than the object has.

Counters of what was done are in `counts`, also one per kind of request (`request_kind`) and
the bytes of GET bodies answered (`get_bytes`); the latest requests (method, path) are in
`log`, and in `spans` with when each arrived and when its answer was sent (`in_series` counts
the round trips they took one after another). The proxy runs in daemon threads and stops with
`stop()` (or at the end of a `with` block).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.client
import http.server
import random
import re
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "expect"}
_XML_ETAG = re.compile(rb"<ETag>(&quot;|&#34;|\")?([0-9a-fA-F-]+)(&quot;|&#34;|\")?</ETag>")
_XML_CHECKSUM = re.compile(rb"<Checksum[A-Z0-9]+>[^<]*</Checksum[A-Z0-9]+>")
SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate (injected).</Message></Error>")


@dataclasses.dataclass(frozen=True)
class Span:
    """One request through the proxy: its kind and path, when it arrived and was answered."""

    kind: str
    path: str
    arrived: float
    answered: float


def in_series(spans: Iterable[Span]) -> list[Span]:
    """The longest chain of requests each sent after the one before it was answered: the
    round trips a client waited for one after another (requests that overlap are one round
    trip), first to last."""
    ordered = sorted(spans, key=lambda s: s.arrived)
    chain: dict[int, list[Span]] = {}
    best: list[Span] = []
    for i, s in enumerate(ordered):
        before = [chain[j] for j in range(i) if ordered[j].answered <= s.arrived]
        chain[i] = max(before, key=len, default=[]) + [s]
        if len(chain[i]) > len(best):
            best = chain[i]
    return best


def request_kind(method: str, path: str) -> str:
    """HEAD, GET, LIST, PUT, PART, DELETE, ... of one request, as S3 sees it."""
    query = path.partition("?")[2]
    if method == "GET" and "list-type=" in query:
        return "LIST"
    if method == "PUT" and "partNumber=" in query:
        return "PART"
    return method


def _resign(h: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    """Sign a request again after changing it, with the secret from the environment (the
    test server's), for the access key and region it was signed for."""
    import os

    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials

    auth = h.headers.get("Authorization", "")
    m = re.search(r"Credential=([^/]+)/\d+/([^/]+)/", auth)
    if m is None:
        return
    sha = h.headers.get("X-Amz-Content-SHA256", botocore.auth.UNSIGNED_PAYLOAD)
    if sha != botocore.auth.UNSIGNED_PAYLOAD:
        sha = hashlib.sha256(body).hexdigest()
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"):
        del h.headers[name]
    keep = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP
            and k.lower() not in ("content-length", "user-agent")}
    req = botocore.awsrequest.AWSRequest(h.command, f"http://{h.headers['Host']}{h.path}",
                                         headers=keep, data=body)
    creds = botocore.credentials.Credentials(m.group(1), os.environ["AWS_SECRET_ACCESS_KEY"])

    class Signer(botocore.auth.S3SigV4Auth):
        def payload(self, request: Any) -> str:
            return sha

    Signer(creds, "s3", m.group(2)).add_auth(req)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"):
        h.headers[name] = req.headers[name]


class FaultProxy:
    def __init__(self, upstream: str, seed: int = 1) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.error_rate = 0.0
        self.reset_rate = 0.0
        self.latency = 0.0
        self.truncate_rate = 0.0
        self.truncate_next = 0
        self.rewrite_part_etags = 0
        self.rewrite_copy_etags = 0
        self.blackout_until = 0.0
        self.hang_until = 0.0
        self.non_md5_etags = False
        self.strip_checksums = False
        self.flip_gets = False
        self.head_extra_bytes = 0
        self.fakes: dict[str, str] = {}  # fake ETag -> the server's real one
        self.counts: collections.Counter[str] = collections.Counter()
        self.log: collections.deque[tuple[str, str]] = collections.deque(maxlen=100_000)
        # (kind, path, arrived, answered) by time.monotonic(), answered 0.0 if never
        self.spans: collections.deque[Span] = collections.deque(maxlen=100_000)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clear(self) -> None:
        self.error_rate = self.reset_rate = self.latency = self.truncate_rate = 0.0
        self.rewrite_part_etags = self.rewrite_copy_etags = self.truncate_next = 0
        self.head_extra_bytes = 0
        self.blackout_until = self.hang_until = 0.0
        self.non_md5_etags = self.strip_checksums = self.flip_gets = False

    def _roll(self, rate: float) -> bool:
        with self.lock:
            return rate > 0 and self.rng.random() < rate

    def _take_truncation(self) -> bool:
        with self.lock:
            take = self.truncate_next > 0
            self.truncate_next -= take
            return take

    def _count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    # -- one request --------------------------------------------------------------------------

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        try:
            self._handle(h)
        finally:
            with self.lock:
                self.spans.append(Span(request_kind(h.command, h.path), h.path, arrived,
                                       time.monotonic()))

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length", 0) or 0)
        body = h.rfile.read(length) if length else b""
        self._count("requests")
        self._count(request_kind(h.command, h.path))
        with self.lock:
            self.log.append((h.command, h.path))
        if time.monotonic() < self.hang_until:
            self._count("hung")
            while time.monotonic() < self.hang_until:
                time.sleep(0.05)
            self._reset(h)
            return
        if time.monotonic() < self.blackout_until or self._roll(self.reset_rate):
            self._count("resets")
            self._reset(h)
            return
        if self._roll(self.error_rate):
            self._count("errors")
            self._answer(h, 503, {"Content-Type": "application/xml"}, SLOW_DOWN)
            return
        if self.latency:
            time.sleep(self.latency)
        if self.non_md5_etags:
            body = self._real_etags(h, body)
        status, headers, data = self._forward(h, body)
        if self.non_md5_etags:
            headers, data = self._fake_etags(headers, data)
        if self.strip_checksums:
            headers = {k: v for k, v in headers.items()
                       if not k.lower().startswith("x-amz-checksum-")}
            data = _XML_CHECKSUM.sub(b"", data)
        if request_kind(h.command, h.path) == "GET" and status in (200, 206):
            self._count("get_bytes", len(data))
        if self.flip_gets and request_kind(h.command, h.path) == "GET" and data and \
                status in (200, 206):
            self._count("flipped")
            i = len(data) // 2
            data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
        is_part = h.command == "PUT" and "partNumber=" in h.path and "uploadId=" in h.path
        is_copy = is_part and "x-amz-copy-source" in {k.lower() for k in h.headers}
        if is_copy:
            self._count("COPY-PART")
        if is_copy and status == 200:
            with self.lock:
                rewrite = self.rewrite_copy_etags > 0
                self.rewrite_copy_etags -= rewrite
            if rewrite:
                self._count("rewritten_copy_etags")
                data = re.sub(rb"<ETag>[^<]*</ETag>", b"<ETag>&quot;" + b"0" * 32
                              + b"&quot;</ETag>", data)
        elif is_part and status == 200:
            with self.lock:
                rewrite = self.rewrite_part_etags > 0
                self.rewrite_part_etags -= rewrite
            if rewrite:
                self._count("rewritten_etags")
                headers = {k: ('"' + "0" * 32 + '"' if k.lower() == "etag" else v)
                           for k, v in headers.items()}
        if h.command == "GET" and status in (200, 206) and len(data) > 1 and (
                self._take_truncation() or self._roll(self.truncate_rate)):
            self._count("truncated")
            self._answer(h, status, headers, data[: len(data) // 2], close=True,
                         length=len(data))
            return
        upstream_length = next((v for k, v in headers.items() if k.lower() == "content-length"),
                               None)
        if h.command == "HEAD" and upstream_length is not None:
            extra = self.head_extra_bytes if status == 200 else 0
            if extra:
                self._count("lying_heads")
            self._answer(h, status, headers, b"", length=int(upstream_length) + extra)
            return
        self._answer(h, status, headers, data)

    def _fake(self, real: str) -> str:
        fake = hashlib.md5(real.encode()).hexdigest()[:16]
        with self.lock:
            self.fakes[fake] = real
        return fake

    def _real(self, etag: str) -> str:
        with self.lock:
            return self.fakes.get(etag.strip('"').lower(), etag.strip('"'))

    def _fake_etags(self, headers: dict[str, str],
                    data: bytes) -> tuple[dict[str, str], bytes]:
        out = {}
        for k, v in headers.items():
            if k.lower() == "x-amz-server-side-encryption":
                continue
            out[k] = f'"{self._fake(v.strip(chr(34)).lower())}"' if k.lower() == "etag" else v
        if b"<ETag>" in data:
            self._count("faked_xml_etags")
            data = _XML_ETAG.sub(lambda m: b"<ETag>&quot;" + self._fake(
                m.group(2).decode().lower()).encode() + b"&quot;</ETag>", data)
        return out, data

    def _real_etags(self, h: http.server.BaseHTTPRequestHandler, body: bytes) -> bytes:
        """Requests name the fake ETags the client was given: the server wants its own (and
        a new signature, since If-Match is signed)."""
        changed = False
        for name in ("If-Match", "x-amz-copy-source-if-match"):
            if (value := h.headers.get(name)) is not None:
                del h.headers[name]
                h.headers[name] = f'"{self._real(value)}"'
                changed = True
        if h.command == "POST" and b"<ETag>" in body:
            body = _XML_ETAG.sub(lambda m: b'<ETag>"' + self._real(
                m.group(2).decode()).encode() + b'"</ETag>', body)
            changed = True
        if changed:
            _resign(h, body)
        return body

    def _forward(self, h: http.server.BaseHTTPRequestHandler,
                 body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for k, v in h.headers.items():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    conn.putheader(k, v)
            if body or h.headers.get("Content-Length") is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body if body else None)
            r = conn.getresponse()
            data = r.read()
            headers = {k: v for k, v in r.getheaders() if k.lower() not in HOP_BY_HOP}
            return r.status, headers, data
        finally:
            conn.close()

    @staticmethod
    def _answer(h: http.server.BaseHTTPRequestHandler, status: int, headers: dict[str, str],
                data: bytes, close: bool = False, length: int | None = None) -> None:
        h.send_response_only(status)
        for k, v in headers.items():
            if k.lower() != "content-length":
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data) if length is None else length))
        if close:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
        h.wfile.flush()

    @staticmethod
    def _reset(h: http.server.BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        try:  # RST rather than FIN: SO_LINGER 0
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    b"\x01\x00\x00\x00\x00\x00\x00\x00")
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
