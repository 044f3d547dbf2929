"""A lean path for the requests a mount sends most: HEAD object, ranged GET, small PutObject.

boto3 spends about 2 ms of CPU on each request before and after the network (its event hooks,
endpoint rules, parameter checks, signing, an email-parser for the headers): on `ls -l` of a
directory, one HEAD per file, and on `cp -r` of small files, one PUT per file, that is most of
the mount's CPU. This module sends those three requests itself: SigV4-signed (the signing key
is kept for the day), over keep-alive HTTP/1.1 connections of its own, the headers parsed by
hand, a GET body read straight into the caller's buffer. It returns what boto3 would (the same
keys: `ContentLength`, `ETag`, `Metadata`, ...) and raises what boto3 would
(`botocore.exceptions.ClientError` with the error code and HTTP status, or a `ConnectionError`
/ `TimeoutError` for the network), so store.py maps both the same way whichever path a request
took. store.py is its only user: every request to S3 still goes out from there.

Where the endpoint and addressing style come from: the URL boto3 itself presigns for a HEAD of
a key of the bucket, so the two paths address the same host the same way; the region is the
client's. The lean path
is not used (boto3 sends everything) when boto3 is configured in ways it does not follow: a
proxy, a signature other than SigV4, or `--sdk-requests`. An answer it does not expect (a
redirect to another region, a status without a body it knows) goes back to boto3, which knows
what to do with it.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, cast

import botocore.exceptions

log = logging.getLogger(__name__)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"
_SAFE = "-_.~/"  # unreserved characters and the path separator: not percent-encoded (SigV4)
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
META = "x-amz-meta-"


class Unsupported(Exception):
    """An answer the lean path does not handle: the caller sends the request through boto3."""


class _Connection:
    """One keep-alive HTTP/1.1 connection: a socket and a buffered reader over it."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None,
                 connect_timeout: float, timeout: float) -> None:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.rfile = cast(io.BufferedReader, sock.makefile("rb", buffering=64 * 1024))
        self.used = False  # a request went over it: it may since have been closed by the server

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    # Kept connections close with the mount's store, which is never closed by itself.
    __del__ = close


class Response:
    """Status, headers (names lower-cased) and the raw `x-amz-meta-*` names of one answer."""

    def __init__(self, status: int, headers: dict[str, str], meta: dict[str, str]) -> None:
        self.status, self.headers, self.meta = status, headers, meta


class Wire:
    """Sends HEAD, GET and PUT of objects of one bucket; thread-safe (a pool of connections,
    one per request at a time)."""

    def __init__(self, base: str, region: str, credentials: Any, connect_timeout: float,
                 timeout: float, parse_time: Callable[[str], Any]) -> None:
        url = urllib.parse.urlsplit(base)
        self.tls = ssl.create_default_context() if url.scheme == "https" else None
        self.host = url.hostname or ""
        self.port = url.port or (443 if self.tls else 80)
        default_port = (url.scheme == "https" and self.port == 443) or (
            url.scheme == "http" and self.port == 80)
        self.host_header = url.netloc if not default_port else self.host
        self.path = url.path.rstrip("/")  # "/bucket" (path style) or "" (virtual host)
        self.region = region
        self.credentials = credentials
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self.parse_time = parse_time
        self.pool: list[_Connection] = []
        self.lock = threading.Lock()
        self.keys: dict[tuple[str, str], bytes] = {}  # (day, secret) -> signing key
        self.sent = 0  # requests sent (s3mount status: lean_requests)

    @classmethod
    def for_client(cls, client: Any, bucket: str, connect_timeout: float, timeout: float,
                   parse_time: Callable[[str], Any]) -> Wire | None:
        """A lean path addressing `bucket` as `client` does, or None (and why, at debug)
        where boto3 must send everything."""
        why = _unsuitable(client)
        if why is None:
            try:
                url = client.generate_presigned_url(
                    "head_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)
            except Exception as exc:  # noqa: BLE001 - any reason means: use boto3
                why = f"cannot presign ({exc})"
        if why is None:
            parts = urllib.parse.urlsplit(url)
            proxies = urllib.request.getproxies()
            if not parts.path.endswith("/k") or parts.scheme not in ("http", "https"):
                why = f"boto3 addresses this endpoint in a way the lean path does not ({url})"
            elif parts.scheme in proxies and not urllib.request.proxy_bypass(
                    parts.hostname or ""):
                why = "requests go through a proxy"
        if why is not None:
            log.debug("every request goes through boto3: %s", why)
            return None
        base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path[:-2], "", ""))
        return cls(base, client.meta.region_name, client._request_signer._credentials,
                   connect_timeout,
                   timeout, parse_time)

    # -- the three requests, shaped as boto3's answers -----------------------------------

    def head_object(self, key: str, checksum: bool = False) -> dict[str, Any]:
        headers = {"x-amz-checksum-mode": "ENABLED"} if checksum else {}
        r = self._request("HEAD", key, headers, None, None)
        return self._object_fields(r, "HeadObject")

    def get_object_into(self, key: str, start: int, into: memoryview,
                        etag: str) -> tuple[int, str | None]:
        """Bytes of `key` from `start` into `into`, if its ETag is `etag`: how many came, and
        the Content-Range (its total size). A body longer than `into` is read and dropped."""
        end = start + len(into)
        headers = {"range": f"bytes={start}-{end - 1}", "if-match": f'"{etag}"'}
        got: list[int] = [0]
        r = self._request("GET", key, headers, None, (into, got))
        return got[0], r.headers.get("content-range")

    def put_object(self, key: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """PutObject of a body in memory; `headers` as sent (content-md5, x-amz-meta-*, ...)."""
        r = self._request("PUT", key, headers, body, None)
        return self._object_fields(r, "PutObject")

    def _object_fields(self, r: Response, op: str) -> dict[str, Any]:
        h = r.headers
        out: dict[str, Any] = {"ETag": h.get("etag", ""), "Metadata": r.meta}
        if "content-length" in h and op == "HeadObject":
            out["ContentLength"] = int(h["content-length"])
        if "last-modified" in h:
            out["LastModified"] = self.parse_time(h["last-modified"])
        for name, value in h.items():
            if name.startswith("x-amz-checksum-"):
                kind = name[len("x-amz-checksum-"):]
                if kind == "type":
                    out["ChecksumType"] = value
                elif kind != "mode":
                    out["Checksum" + kind.upper()] = value
        for name, field in (("content-type", "ContentType"),
                            ("x-amz-server-side-encryption", "ServerSideEncryption"),
                            ("x-amz-server-side-encryption-customer-algorithm",
                             "SSECustomerAlgorithm")):
            if name in h:
                out[field] = h[name]
        return out

    # -- plumbing ------------------------------------------------------------------------

    def _request(self, method: str, key: str, headers: dict[str, str], body: bytes | None,
                 into: tuple[memoryview, list[int]] | None) -> Response:
        path = self.path + "/" + urllib.parse.quote(key, safe=_SAFE)
        signed = self._sign(method, path, headers, body)
        head = [f"{method} {path} HTTP/1.1\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in signed.items()]
        head.append("\r\n")
        message = "".join(head).encode("latin-1") + (body or b"")
        self.sent += 1
        for fresh in (False, True):
            conn: _Connection | None = None
            try:
                conn = self._connection(fresh)
                conn.sock.sendall(message)
                r = self._response(conn, method, into)
            except (ConnectionResetError, BrokenPipeError, _Closed) as exc:
                reused = conn is not None and conn.used
                if conn is not None:
                    conn.close()
                if reused and not fresh:
                    continue  # the server closed a kept connection: once more on a new one
                raise ConnectionError(f"connection to {self.host_header} lost: {exc}") from None
            except OSError as exc:  # refused, timed out, name unknown, TLS
                if conn is not None:
                    conn.close()
                if isinstance(exc, TimeoutError | ConnectionError):
                    raise
                raise ConnectionError(f"{self.host_header}: {exc}") from None
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            conn.used = True
            if r.headers.get("connection", "").lower() == "close":
                conn.close()
            else:
                with self.lock:
                    self.pool.append(conn)
            return r
        raise AssertionError("unreachable")

    def _connection(self, fresh: bool) -> _Connection:
        if not fresh:
            with self.lock:
                if self.pool:
                    return self.pool.pop()
        return _Connection(self.host, self.port, self.tls, self.connect_timeout, self.timeout)

    def _response(self, conn: _Connection, method: str,
                  into: tuple[memoryview, list[int]] | None) -> Response:
        rfile = conn.rfile
        line = rfile.readline(65537)
        if not line:
            raise _Closed("closed before an answer")
        try:
            status = int(line.split(None, 2)[1])
        except (IndexError, ValueError):
            raise ConnectionError(f"not an HTTP answer: {line[:80]!r}") from None
        headers: dict[str, str] = {}
        meta: dict[str, str] = {}
        while True:
            raw = rfile.readline(65537)
            if raw in (b"\r\n", b"\n"):
                break
            if not raw:
                raise ConnectionError("the connection closed within an answer's headers")
            name, _, value = raw.decode("latin-1").partition(":")
            name, value = name.strip(), value.strip()
            low = name.lower()
            headers[low] = f"{headers[low]}, {value}" if low in headers else value
            if low.startswith(META):
                meta[name[len(META):]] = value
        has_body = method != "HEAD" and status not in (204, 304) and status >= 200
        if 200 <= status < 300:
            if has_body:
                if into is not None:
                    self._read_into(conn, headers, into)
                else:
                    self._drain(conn, headers)
            return Response(status, headers, meta)
        text = self._drain(conn, headers) if has_body else b""
        if status in (301, 302, 307, 308) or (status == 400 and b"AuthorizationHeaderMalformed"
                                               in text):
            raise Unsupported(f"HTTP {status}")
        code = _CODE.search(text)
        message = _MESSAGE.search(text)
        error = {"Code": code.group(1).decode("utf-8", "replace") if code else str(status),
                 "Message": message.group(1).decode("utf-8", "replace") if message else ""}
        answer: Any = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
        raise botocore.exceptions.ClientError(answer, method)

    def _read_into(self, conn: _Connection, headers: dict[str, str],
                   into: tuple[memoryview, list[int]]) -> None:
        view, got = into
        length = self._length(headers)
        if length is None:  # chunked: rare for a GET of an object; read it whole
            data = self._drain(conn, headers)
            n = min(len(data), len(view))
            view[:n] = data[:n]
            got[0] = len(data)
            return
        n = 0
        want = min(length, len(view))
        while n < want:
            k = conn.rfile.readinto(view[n:want])
            if not k:
                raise _Closed(f"the body ended after {n} of {length} bytes")
            n += k
        rest = length - n
        while rest > 0:  # longer than asked: read and drop, so the connection can be reused
            chunk = conn.rfile.read(min(rest, 1 << 20))
            if not chunk:
                raise _Closed(f"the body ended {rest} bytes early")
            rest -= len(chunk)
        got[0] = length

    def _drain(self, conn: _Connection, headers: dict[str, str]) -> bytes:
        length = self._length(headers)
        if length is not None:
            data = conn.rfile.read(length)
            if len(data) != length:
                raise _Closed(f"the body ended after {len(data)} of {length} bytes")
            return data
        if "chunked" not in headers.get("transfer-encoding", "").lower():
            headers["connection"] = "close"
            return conn.rfile.read()
        out = bytearray()
        while True:
            size_line = conn.rfile.readline(65537)
            if not size_line:
                raise _Closed("the chunked body ended early")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while conn.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += conn.rfile.read(size)
            conn.rfile.readline(65537)

    @staticmethod
    def _length(headers: dict[str, str]) -> int | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return None
        value = headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    def _sign(self, method: str, path: str, headers: dict[str, str],
              body: bytes | None) -> dict[str, str]:
        """The request's headers with SigV4's: every header sent is signed."""
        creds = self.credentials.get_frozen_credentials()
        now = time.gmtime()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", now)
        day = amz_date[:8]
        out = {k.lower(): v.strip() for k, v in headers.items()}
        out["host"] = self.host_header
        out["x-amz-date"] = amz_date
        out["x-amz-content-sha256"] = UNSIGNED if body else EMPTY_SHA256
        if body is not None:
            out["content-length"] = str(len(body))
        if creds.token:
            out["x-amz-security-token"] = creds.token
        names = sorted(out)
        signed_names = ";".join(names)
        canonical = "\n".join([method, path, "", *(f"{n}:{out[n]}" for n in names), "",
                               signed_names, out["x-amz-content-sha256"]])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
        key = self._signing_key(day, creds.secret_key)
        signature = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                f"SignedHeaders={signed_names}, Signature={signature}")
        return out

    def _signing_key(self, day: str, secret: str) -> bytes:
        key = self.keys.get((day, secret))
        if key is None:
            key = ("AWS4" + secret).encode("utf-8")
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
            self.keys = {(day, secret): key}
        return key


class _Closed(Exception):
    """The server closed the connection before or within an answer."""


def _unsuitable(client: Any) -> str | None:
    """Why boto3 must send every request for this client, or None."""
    config = client.meta.config
    if getattr(config, "signature_version", None) not in (None, "s3v4", "v4"):
        return f"signature version {config.signature_version}"
    if getattr(config, "proxies", None):
        return "requests go through a proxy"
    if getattr(getattr(client, "_request_signer", None), "_credentials", None) is None:
        return "no credentials"
    if (config.s3 or {}).get("use_accelerate_endpoint"):
        return "transfer acceleration"
    return None

