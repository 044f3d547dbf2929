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
- `blackout_until`: until this `time.monotonic()`, reset every connection.

Counters of what was done are in `counts`, also one per kind of request (`request_kind`); the
latest requests (method, path) are in `log`. The proxy runs in daemon threads and stops with
`stop()` (or at the end of a `with` block).
"""

from __future__ import annotations

import collections
import http.client
import http.server
import random
import re
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "expect"}
SLOW_DOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate (injected).</Message></Error>")


def request_kind(method: str, path: str) -> str:
    """HEAD, GET, LIST, PUT, PART, DELETE, ... of one request, as S3 sees it."""
    query = path.partition("?")[2]
    if method == "GET" and "list-type=" in query:
        return "LIST"
    if method == "PUT" and "partNumber=" in query:
        return "PART"
    return method


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
        self.counts: collections.Counter[str] = collections.Counter()
        self.log: collections.deque[tuple[str, str]] = collections.deque(maxlen=100_000)
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
        self.blackout_until = 0.0

    def _roll(self, rate: float) -> bool:
        with self.lock:
            return rate > 0 and self.rng.random() < rate

    def _take_truncation(self) -> bool:
        with self.lock:
            take = self.truncate_next > 0
            self.truncate_next -= take
            return take

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    # -- one request --------------------------------------------------------------------------

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length", 0) or 0)
        body = h.rfile.read(length) if length else b""
        self._count("requests")
        self._count(request_kind(h.command, h.path))
        with self.lock:
            self.log.append((h.command, h.path))
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
        status, headers, data = self._forward(h, body)
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
            self._answer(h, status, headers, b"", length=int(upstream_length))
            return
        self._answer(h, status, headers, data)

    def _forward(self, h: http.server.BaseHTTPRequestHandler,
                 body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for k, v in h.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    conn.putheader(k, v)
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
