"""`--metrics HOST:PORT`: the mount's figures in Prometheus text format, over plain HTTP.

A minimal HTTP/1.1 server on trio, run in the mount's nursery: each connection sends one GET
and gets the current figures (any path; `/metrics` by convention), then the connection closes.
No dependency beyond trio. Every metric is described in docs/METRICS.md.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .errors import QuietError
from .store import LATENCY_BUCKETS

if TYPE_CHECKING:
    from .buffers import ReadBudget
    from .store import Health
    from .writer import Uploads

log = logging.getLogger(__name__)
REQUEST_LIMIT = 8192  # bytes of request head read before answering
REQUEST_TIMEOUT = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Sources:
    """Where the figures live: the uploads, the read budget, the store's health."""

    uploads: Uploads
    reads: ReadBudget
    health: Health
    started: float  # time.monotonic() at mount


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise QuietError(f"--metrics {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9100", 2)
    return host.strip("[]") or "127.0.0.1", int(port)


async def listen(addr: str) -> list[trio.SocketListener]:
    """Bind before the mount goes live, so that a taken port is a clear error at start."""
    host, port = parse_addr(addr)
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise QuietError(f"--metrics {addr}: cannot listen there: {exc.strerror}", 2) from None


async def serve(listeners: list[trio.SocketListener], render: Callable[[], str]) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError, trio.TooSlowError):
                head = b""
                with trio.fail_after(REQUEST_TIMEOUT):
                    while b"\r\n\r\n" not in head and len(head) < REQUEST_LIMIT:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        head += chunk
                method = head.split(b" ", 1)[0]
                if method not in (b"GET", b"HEAD"):
                    await stream.send_all(b"HTTP/1.1 405 Method Not Allowed\r\n"
                                          b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                body = render().encode()
                await stream.send_all(
                    f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: "
                    f"{len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + (body if method == b"GET" else b""))

    await trio.serve_listeners(answer, listeners)


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def one(self, name: str, kind: str, help_: str, value: float) -> None:
        self.metric(name, kind, help_, [({}, value)])


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def render(src: Sources) -> str:
    t = _Text()
    up, rd, h = src.uploads, src.reads, src.health
    t.one("s3mount_uptime_seconds", "gauge", "Seconds since the mount started.",
          round(time.monotonic() - src.started, 3))
    # writes
    t.one("s3mount_written_bytes_total", "counter",
          "Bytes applications wrote into files (accepted into part buffers).",
          up.budget.written)
    t.metric("s3mount_uploads_total", "counter",
             "Uploads finished, by result: verified (complete and proven) or failed.",
             [({"result": "verified"}, up.completed), ({"result": "failed"}, up.failed)])
    t.one("s3mount_uploaded_bytes_total", "counter", "Bytes of uploads completed and verified.",
          up.completed_bytes)
    t.one("s3mount_parts_uploaded_total", "counter",
          "Multipart upload parts S3 accepted (UploadPart answers).", h.answered["PART"])
    t.one("s3mount_uploads_in_flight", "gauge", "Files being written or completing.",
          sum(1 for _ in up))
    t.metric("s3mount_write_memory_bytes", "gauge",
             "Bytes of part buffers in use, and the --max-memory budget.",
             [({"state": "used"}, up.budget.used), ({"state": "budget"}, up.budget.capacity)])
    # reads
    c = rd.counts
    t.one("s3mount_read_objects_total", "counter", "Files opened for reading.",
          c["objects_opened"])
    t.one("s3mount_read_bytes_total", "counter", "Bytes served to read() calls.",
          c["bytes_read"])
    t.metric("s3mount_read_verified_objects_total", "counter",
             "Whole-object reads hashed and compared with the object's MD5 or the "
             "checksum S3 keeps, by result.",
             [({"result": "ok"}, c["verified_objects"]),
              ({"result": "failed"}, c["failed_objects"])])
    t.one("s3mount_read_verified_bytes_total", "counter",
          "Bytes of whole-object reads whose MD5 or checksum matched.", c["verified_bytes"])
    t.one("s3mount_read_verified_by_checksum_total", "counter",
          "Whole-object reads proven by a checksum S3 keeps rather than the MD5.",
          c["verified_by_checksum"])
    t.one("s3mount_read_unverified_passes_total", "counter",
          "Reads from offset 0 that skipped ahead, so that the object was not verified.",
          c["unverified_passes"])
    t.metric("s3mount_read_memory_bytes", "gauge",
             "Bytes of read-ahead buffers in use, and the --read-memory budget.",
             [({"state": "used"}, rd.used), ({"state": "budget"}, rd.capacity)])
    _s3(t, h)
    return "\n".join(t.lines) + "\n"


def _s3(t: _Text, h: Health) -> None:
    kinds = sorted(set(h.answered) | set(h.retries) | set(h.errors) | set(h.latency))
    t.metric("s3mount_s3_requests_total", "counter",
             "S3 requests answered (after any retries), by kind.",
             [({"kind": k}, h.answered[k]) for k in kinds])
    t.metric("s3mount_s3_retries_total", "counter", "S3 requests sent again, by kind.",
             [({"kind": k}, h.retries[k]) for k in kinds])
    t.metric("s3mount_s3_errors_total", "counter",
             "S3 requests that failed for good (after retries, or not retryable), by kind.",
             [({"kind": k}, h.errors[k]) for k in kinds])
    samples: list[tuple[Mapping[str, str], float]] = []
    for k in sorted(h.latency):
        hist = h.latency[k]
        for bound, n in zip(LATENCY_BUCKETS, hist.counts, strict=True):
            samples.append(({"kind": k, "le": _number(bound)}, n))
        samples.append(({"kind": k, "le": "+Inf"}, hist.total))
    t.lines += ["# HELP s3mount_s3_request_duration_seconds Time from sending an S3 request to "
                "its answer, retries included, by kind.",
                "# TYPE s3mount_s3_request_duration_seconds histogram"]
    for labels, value in samples:
        t.lines.append(f"s3mount_s3_request_duration_seconds_bucket{_labels(labels)} {value}")
    for k in sorted(h.latency):
        hist = h.latency[k]
        t.lines.append(f's3mount_s3_request_duration_seconds_sum{{kind="{k}"}} '
                       f"{_number(round(hist.sum, 6))}")
        t.lines.append(f's3mount_s3_request_duration_seconds_count{{kind="{k}"}} {hist.total}')
    snap = h.snapshot()
    t.one("s3mount_s3_requests_waiting", "gauge", "S3 requests sent and not yet answered.",
          snap["waiting"])
    t.one("s3mount_s3_oldest_wait_seconds", "gauge",
          "How long the oldest unanswered S3 request has waited (0 when none).",
          snap["oldest_wait_s"] or 0)
    t.one("s3mount_s3_stalls_total", "counter",
          "Stall episodes: requests unanswered for --stall-warning seconds, or retried.",
          h.stalls)
    t.one("s3mount_s3_last_success_timestamp_seconds", "gauge",
          "Unix time of the last S3 request answered (0: none yet).", h.last_success or 0)
    t.one("s3mount_s3_lean_requests_total", "counter",
          "Requests (tries) sent by s3mount's own signer rather than boto3 (0 when off).",
          snap["lean_requests"] or 0)
