"""A lean path for the requests a mount sends most: HEAD, GET, PUT, UploadPart, DELETE, LIST.

boto3 spends about 2 ms of CPU on each request before and after the network (its event hooks,
endpoint rules, parameter checks, signing, an email-parser for the headers): on `ls -l` of a
directory, one HEAD per file, and on `cp -r` of small files, one PUT per file, that is most of
the mount's CPU. This module sends those requests itself: SigV4-signed (the signing key
is kept for the day), over keep-alive HTTP/1.1 connections of its own, the headers parsed by
hand, a GET body read straight into the caller's buffer, a part sent from its own buffer
after the server's `100 Continue` (a refusal then arrives as an answer, not as a reset). It
returns what boto3 would (the same
keys: `ContentLength`, `ETag`, `Metadata`, ...) and raises what boto3 would
(`botocore.exceptions.ClientError` with the error code and HTTP status, or a `ConnectionError`
/ `TimeoutError` for the network), so store.py maps both the same way whichever path a request
took. store.py is its only user: every request to S3 still goes out from there.

Where the endpoint and addressing style come from: the URL boto3 itself presigns for a HEAD of
a key of the bucket, so the two paths address the same host the same way; the region is the
client's. The lean path is not used (boto3 sends everything) when boto3 is configured in ways it
does not follow: a proxy, a signature other than SigV4, transfer acceleration, or
`--sdk-requests`. An answer it does not expect (a redirect to another region) turns it off
for the mount's life: boto3 knows what to do with those.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import logging
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, cast
from xml.etree import ElementTree

import botocore.exceptions

log = logging.getLogger(__name__)

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"
_SAFE = "-_.~/"  # unreserved characters and the path separator: not percent-encoded (SigV4)
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
META = "x-amz-meta-"
SMALL_BODY = 1024 * 1024  # larger bodies wait for 100 Continue before they are sent
SEND_BLOCK = 1024 * 1024  # bytes per sendall of a large body
CONTINUE_WAIT = 1.0  # seconds to wait for 100 Continue before sending the body anyway


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

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    # Kept connections close with the mount's store, which is never closed by itself.
    __del__ = close


class Response:
    """Status, headers (names lower-cased), the raw `x-amz-meta-*` names and the body of one
    answer."""

    def __init__(self, status: int, headers: dict[str, str], meta: dict[str, str]) -> None:
        self.status, self.headers, self.meta = status, headers, meta
        self.body = b""  # the body of a success not read into the caller's buffer
        self.unsent = False  # answered before the request's body was sent
        self.error: Exception | None = None  # S3's error, as boto3 raises it
        self.got = 0  # the length of a body read into the caller's buffer


class Wire:
    """Sends the lean requests for one bucket; thread-safe (a pool of connections, one per
    request at a time)."""

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
                   connect_timeout, timeout, parse_time)

    # -- the requests, answered as boto3 answers them --------------------------------------

    def head_object(self, key: str, checksum: bool = False, part: int | None = None,
                    if_match: str | None = None) -> dict[str, Any]:
        """HeadObject; of part `part` (its size, and the object's `PartsCount`) if given."""
        headers = {"x-amz-checksum-mode": "ENABLED"} if checksum else {}
        if if_match is not None:
            headers["if-match"] = f'"{if_match}"'
        r = self._request("HEAD", key, headers, query=None if part is None
                          else {"partNumber": str(part)})
        return self._object_fields(r, "HeadObject")

    def head_objects(self, keys: list[str], parallel: int,
                     each: Callable[[int, dict[str, Any] | Exception], None] | None = None
                     ) -> list[dict[str, Any] | Exception]:
        """HeadObject of each key, `parallel` at once on as many connections, all from the
        calling thread (one wait on whichever answers first): a HEAD's own CPU, without a
        thread's hand-over per request. Each key's answer, or what a HEAD of it alone would
        raise (`ClientError`, `ConnectionError`, `TimeoutError`), also given to `each` (its
        index, the answer) as it comes; an answer the lean path does not handle raises
        `Unsupported` for the keys not answered yet."""
        out: list[dict[str, Any] | Exception] = [TimeoutError("not sent")] * len(keys)
        waiting: dict[socket.socket, tuple[int, _Connection]] = {}
        todo = iter(range(len(keys)))

        def start(i: int) -> None:
            conn: _Connection | None = None
            try:
                message, _ = self._message("HEAD", keys[i], {}, None, None)
                conn = self._connection()
                conn.sock.sendall(message)
                waiting[conn.sock] = (i, conn)
            except Exception as exc:  # noqa: BLE001 - this key's answer
                answered(i, cast(Exception, self._lost(exc, conn)))

        def answered(i: int, answer: dict[str, Any] | Exception) -> None:
            out[i] = answer
            if each is not None:
                each(i, answer)

        for i in itertools.islice(todo, parallel):
            start(i)
        try:
            while waiting:
                ready = select.select(list(waiting), [], [], self.timeout)[0]
                if not ready:
                    for i, conn in waiting.values():
                        answered(i, cast(Exception, self._lost(
                            TimeoutError(f"no answer from {self.host_header} in "
                                         f"{self.timeout:.0f} s"), conn)))
                    waiting.clear()
                    break
                for sock in ready:
                    i, conn = waiting.pop(sock)
                    try:
                        r = self._response(conn, "HEAD", None)
                    except Unsupported:
                        conn.close()
                        raise
                    except Exception as exc:  # noqa: BLE001 - this key's answer
                        answered(i, cast(Exception, self._lost(exc, conn)))
                    else:
                        self._keep(conn, r)
                        answered(i, r.error or self._object_fields(r, "HeadObject"))
                    if (nxt := next(todo, None)) is not None:
                        start(nxt)
        finally:
            for _, conn in waiting.values():
                conn.close()
        return out

    def delete_object(self, key: str) -> None:
        self._request("DELETE", key, {})

    def get_object_into(self, key: str, start: int, into: memoryview,
                        etag: str) -> tuple[int, str | None]:
        """Bytes of `key` from `start` into `into`, if its ETag is `etag`: how many came, and
        the Content-Range (its total size). A body longer than `into` is read and dropped."""
        r = self._get(key, start, into, etag)
        return r.got, r.headers.get("content-range")

    def get_first(self, key: str, into: memoryview) -> tuple[dict[str, Any], int]:
        """The first bytes of `key` into `into`, of whatever version is there: the answer's
        fields as boto3's GetObject gives them (`ContentRange` says the object's size), and
        how many bytes came."""
        r = self._get(key, 0, into, None)
        return self._object_fields(r, "GetObject"), r.got

    def _get(self, key: str, start: int, into: memoryview, etag: str | None) -> Response:
        headers = {"range": f"bytes={start}-{start + len(into) - 1}"}
        if etag is not None:
            headers["if-match"] = f'"{etag}"'
        return self._request("GET", key, headers, into=into)

    def put_object(self, key: str, body: bytes | memoryview,
                   headers: dict[str, str]) -> dict[str, Any]:
        """PutObject of a body in memory; `headers` as sent (content-md5, x-amz-meta-*, ...)."""
        r = self._request("PUT", key, headers, body)
        return self._object_fields(r, "PutObject")

    def upload_part(self, key: str, upload_id: str, number: int, body: memoryview,
                    headers: dict[str, str]) -> dict[str, Any]:
        """UploadPart of a body in memory, sent from its buffer; `headers` as put_object's."""
        r = self._request("PUT", key, headers, body,
                          query={"partNumber": str(number), "uploadId": upload_id})
        return self._object_fields(r, "UploadPart")

    def list_objects_v2(self, prefix: str, delimiter: str | None, token: str | None,
                        max_keys: int) -> dict[str, Any]:
        """One page of ListObjectsV2, as boto3 answers it: `Contents` (Key, Size,
        LastModified, ETag), `CommonPrefixes`, `IsTruncated`, `NextContinuationToken`. Keys
        are asked URL-encoded (as boto3 does: XML cannot carry every byte a key may hold)."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys),
                 "encoding-type": "url"}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        return self._listing(self._request("GET", None, {}, query=query).body)

    def _listing(self, xml: bytes) -> dict[str, Any]:
        root = ElementTree.fromstring(xml)
        ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        encoded = root.findtext(ns + "EncodingType") == "url"

        def name(text: str | None) -> str:
            return urllib.parse.unquote_plus(text or "") if encoded else text or ""
        contents = [{"Key": name(c.findtext(ns + "Key")),
                     "Size": int(c.findtext(ns + "Size") or 0),
                     "LastModified": self.parse_time(c.findtext(ns + "LastModified") or ""),
                     "ETag": c.findtext(ns + "ETag") or ""}
                    for c in root.iterfind(ns + "Contents")]
        prefixes = [{"Prefix": name(p.findtext(ns + "Prefix"))}
                    for p in root.iterfind(ns + "CommonPrefixes")]
        out: dict[str, Any] = {"Contents": contents, "CommonPrefixes": prefixes,
                               "IsTruncated": root.findtext(ns + "IsTruncated") == "true"}
        token = root.findtext(ns + "NextContinuationToken")
        if token:
            out["NextContinuationToken"] = token
        return out

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
        for name, field in (("content-type", "ContentType"), ("content-range", "ContentRange"),
                            ("x-amz-server-side-encryption", "ServerSideEncryption"),
                            ("x-amz-server-side-encryption-customer-algorithm",
                             "SSECustomerAlgorithm")):
            if name in h:
                out[field] = h[name]
        if "x-amz-mp-parts-count" in h:
            out["PartsCount"] = int(h["x-amz-mp-parts-count"])
        return out

    # -- plumbing ------------------------------------------------------------------------

    def _request(self, method: str, key: str | None, headers: dict[str, str],
                 body: bytes | memoryview | None = None, into: memoryview | None = None,
                 query: dict[str, str] | None = None) -> Response:
        """One request for `key` (None: the bucket) with `query` parameters; a successful
        answer's body goes into `into` if given (`Response.got`: its length), else into
        `Response.body`. A body larger
        than SMALL_BODY waits for the server's `100 Continue` before it is sent, so that a
        refusal (a wrong signature, a missing upload) is read as such, not as a reset."""
        message, expect = self._message(method, key, headers, body, query)
        conn: _Connection | None = None
        try:
            conn = self._connection()
            conn.sock.sendall(message)
            line = self._send_after_continue(conn, body) if expect else None
            r = self._response(conn, method, into, line)
        except BaseException as exc:
            raise self._lost(exc, conn) from None
        self._keep(conn, r)
        if r.error is not None:
            raise r.error
        return r

    def _message(self, method: str, key: str | None, headers: dict[str, str],
                 body: bytes | memoryview | None, query: dict[str, str] | None
                 ) -> tuple[bytes, bool]:
        """The signed request (with `body` unless it waits for `100 Continue`), and whether
        it does; counted as sent."""
        path = (self.path + "/" + urllib.parse.quote(key, safe=_SAFE) if key is not None
                else self.path or "/")
        qs = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                      for k, v in sorted((query or {}).items()))
        expect = body is not None and len(body) > SMALL_BODY
        signed = self._sign(method, path, qs, headers, body)
        if expect:  # not signed (nor by boto3): a proxy may drop it
            signed["expect"] = "100-continue"
        target = f"{path}?{qs}" if qs else path
        head = [f"{method} {target} HTTP/1.1\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in signed.items()]
        head.append("\r\n")
        message = "".join(head).encode("latin-1")
        if body is not None and not expect:
            message += body
        self.sent += 1
        return message, expect

    def _lost(self, exc: BaseException, conn: _Connection | None) -> BaseException:
        """A request on `conn` failed with `exc`: the connection is closed, and what to raise
        (a network failure as boto3 raises it, worth a retry)."""
        if conn is not None:
            conn.close()
        if isinstance(exc, ConnectionResetError | BrokenPipeError | _Closed):
            return ConnectionError(f"connection to {self.host_header} lost: {exc}")
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError | ConnectionError):
            # refused, name unknown, TLS: as boto3's connection errors, worth a retry
            return ConnectionError(f"{self.host_header}: {exc}")
        return exc

    def _keep(self, conn: _Connection, r: Response) -> None:
        """After answer `r` was read whole: `conn` serves again unless it must close."""
        if r.headers.get("connection", "").lower() == "close" or r.unsent:
            conn.close()
        else:  # an error's body was read to its end: the connection serves again
            with self.lock:
                self.pool.append(conn)

    def _send_after_continue(self, conn: _Connection, body: bytes | memoryview | None
                             ) -> bytes | None:
        """Wait (at most CONTINUE_WAIT) for the server's go-ahead, then send `body` in
        SEND_BLOCK blocks (each sendall's timeout covers one block). Returns the status line
        of a final answer that came instead of `100 Continue` (the body unsent), else None."""
        assert body is not None
        if select.select([conn.sock], [], [], CONTINUE_WAIT)[0]:
            line = conn.rfile.readline(65537)
            if not line:
                raise _Closed("closed before an answer")
            if b" 100 " not in line[:13] and not line.rstrip().endswith(b" 100"):
                return line  # refused before the body: the answer says why
            _skip_headers(conn.rfile)
        view = memoryview(body).cast("B")
        for at in range(0, len(view), SEND_BLOCK):
            conn.sock.sendall(view[at:at + SEND_BLOCK])
        return None

    def _connection(self) -> _Connection:
        """A kept connection, or a new one. A kept connection with something to read before
        a request was sent was closed by the server (its idle timeout; urllib3 checks the
        same way): it is dropped."""
        while True:
            with self.lock:
                if not self.pool:
                    break
                conn = self.pool.pop()
            if not select.select([conn.sock], [], [], 0)[0]:
                return conn
            conn.close()
        return _Connection(self.host, self.port, self.tls, self.connect_timeout, self.timeout)

    def _response(self, conn: _Connection, method: str, into: memoryview | None,
                  line: bytes | None = None) -> Response:
        """Read one answer; `line` is its status line when already read (the body of the
        request then was not sent: the connection is not reused)."""
        unsent = line is not None
        rfile = conn.rfile
        while True:
            if line is None:
                line = rfile.readline(65537)
            if not line:
                raise _Closed("closed before an answer")
            try:
                status = int(line.split(None, 2)[1])
            except (IndexError, ValueError):
                raise ConnectionError(f"not an HTTP answer: {line[:80]!r}") from None
            if status >= 200:
                break
            _skip_headers(rfile)  # an interim answer (a 100 Continue after the body)
            line, unsent = None, False
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
        has_body = method != "HEAD" and status not in (204, 304)
        if 200 <= status < 300 and not unsent:
            r = Response(status, headers, meta)
            if has_body:
                if into is not None:
                    r.got = self._read_into(conn, headers, into)
                else:
                    r.body = self._drain(conn, headers)
            return r
        text = self._drain(conn, headers) if has_body else b""
        if status in (301, 302, 307, 308) or (status == 400 and b"AuthorizationHeaderMalformed"
                                               in text):
            raise Unsupported(f"HTTP {status}")
        code = _CODE.search(text)
        message = _MESSAGE.search(text)
        error = {"Code": code.group(1).decode("utf-8", "replace") if code else str(status),
                 "Message": message.group(1).decode("utf-8", "replace") if message else ""}
        answer: Any = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
        r = Response(status, headers, meta)
        r.unsent = unsent
        r.error = botocore.exceptions.ClientError(answer, method)
        return r

    def _read_into(self, conn: _Connection, headers: dict[str, str], view: memoryview) -> int:
        """The body into `view` (what does not fit is read and dropped): its length."""
        length = self._length(headers)
        if length is None:  # chunked: rare for a GET of an object; read it whole
            data = self._drain(conn, headers)
            n = min(len(data), len(view))
            view[:n] = data[:n]
            return len(data)
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
        return length

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
                _skip_headers(conn.rfile)  # the trailer
                return bytes(out)
            out += conn.rfile.read(size)
            conn.rfile.readline(65537)

    @staticmethod
    def _length(headers: dict[str, str]) -> int | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return None
        value = headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    def _sign(self, method: str, path: str, qs: str, headers: dict[str, str],
              body: bytes | memoryview | None) -> dict[str, str]:
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
        canonical = "\n".join([method, path, qs, *(f"{n}:{out[n]}" for n in names), "",
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


def _skip_headers(rfile: io.BufferedReader) -> None:
    """Read up to the blank line that ends a header block (or the connection's end)."""
    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
        pass


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

