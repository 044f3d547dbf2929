"""`s3mount status MOUNTPOINT`: what a running mount is doing, from its control socket.

Each mount listens on a unix socket private to the mounting user (mode 0600, in
/run/s3mount as root, else $XDG_RUNTIME_DIR/s3mount or /tmp/s3mount-UID), named after a hash of
the mountpoint. A client connects and reads one JSON document: every upload in flight (key,
bytes written, bytes uploaded and verified, parts, rate, time left to drain, big parts being
assembled by the server with their stage and temporary key), totals since the
mount started, the write budget, and the last errors logged. No secrets are in it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import QuietError
from .options import Parser
from .schedule import human_size

if TYPE_CHECKING:
    from .config import Config
    from .store import Health
    from .writer import Uploads

log = logging.getLogger(__name__)
RECENT_ERRORS = 20
# What readers served and proved (reader.py): files opened for reading, bytes served, whole
# objects proven (by their MD5 or an additional checksum S3 keeps), not (EIO), and passes that
# skipped ahead; of those proven, how many by a checksum.
READ_COUNTS = ("objects_opened", "bytes_read", "verified_objects", "verified_bytes",
               "failed_objects", "unverified_passes", "verified_by_checksum")
BAR = 30


def socket_path(mountpoint: str) -> Path:
    digest = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    if os.getuid() == 0:
        base = Path("/run/s3mount")
    elif runtime := os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(runtime) / "s3mount"
    else:
        base = Path(f"/tmp/s3mount-{os.getuid()}")
    return base / f"{digest}.sock"


class RecentErrors(logging.Handler):
    """Keeps the last ERROR lines for the status view."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: collections.deque[str] = collections.deque(maxlen=RECENT_ERRORS)

    def emit(self, record: logging.LogRecord) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        self.lines.append(f"{stamp} {record.getMessage()}")


def snapshot(config: Config, uploads: Uploads, started: float, errors: RecentErrors,
             reads: Mapping[str, int] | None = None,
             health: Health | None = None) -> dict[str, Any]:
    now = time.monotonic()
    items = []
    for up in uploads:
        elapsed = max(now - up.started, 1e-6)
        rate = up.bytes_uploaded / elapsed
        backlog = up.bytes_written - up.bytes_uploaded
        items.append({
            "key": up.key, "state": up.state.value, "bytes_written": up.bytes_written,
            "bytes_uploaded": up.bytes_uploaded, "parts_started": up.parts_started,
            "parts_uploaded": len(up.etags), "elapsed_s": round(elapsed, 1),
            "rate_bytes_s": round(rate), "drain_s": round(backlog / rate, 1) if rate else None,
            "big_parts": [{"part": b.number, "size": b.size, "streamed": b.shipped,
                           "stage": b.stage, "temporary_key": b.tmp}
                          for b in sorted(up.bigs.values(), key=lambda b: b.number)],
        })
    budget = uploads.budget
    return {
        "bucket": config.bucket, "prefix": config.prefix, "mountpoint": config.mountpoint,
        "pid": os.getpid(), "uptime_s": round(time.monotonic() - started, 1),
        "uploads": items,
        "totals": {"in_flight": len(items), "completed": uploads.completed,
                   "completed_bytes": uploads.completed_bytes, "failed": uploads.failed},
        "write_memory": {"budget": budget.capacity, "used": budget.used, "peak": budget.peak},
        "reads": {k: int((reads or {}).get(k, 0)) for k in READ_COUNTS},
        "s3": health.snapshot() if health is not None else None,
        "recent_errors": list(errors.lines),
    }


async def serve(path: Path, make_doc: Callable[[], dict[str, Any]],
                started: Callable[[], None] = lambda: None) -> None:
    """Answer each connection on `path` with the current snapshot; runs until cancelled.
    `started()` is called once the socket is listening."""
    import trio  # lazy: only the mount serves; `s3mount status` does without trio's import

    _prepare(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(8)
    started()

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(json.dumps(make_doc()).encode())

    try:
        await trio.serve_listeners(answer, [trio.SocketListener(sock)])
    finally:
        _remove(path)


def _prepare(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove(path)  # left by a mount that was killed


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def fetch(mountpoint: str) -> dict[str, Any]:
    path = socket_path(mountpoint)
    if not os.path.ismount(mountpoint):
        raise QuietError(f"{mountpoint} is not a mount point", 6)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            data = b"".join(iter(lambda: s.recv(65536), b""))
    except OSError as exc:
        raise QuietError(f"no s3mount answers for {mountpoint} ({path}: {exc.strerror}); "
                         "is it an s3mount mount of this user?", 6) from None
    doc: dict[str, Any] = json.loads(data)
    return doc


def _bar(done: int, total: int) -> str:
    filled = BAR if total <= 0 else min(BAR, BAR * done // total)
    return "[" + "#" * filled + "." * (BAR - filled) + "]"


def render(doc: dict[str, Any]) -> str:
    t = doc["totals"]
    mem = doc["write_memory"]
    lines = [f"s3://{doc['bucket']}/{doc['prefix']} on {doc['mountpoint']} (pid {doc['pid']}, "
             f"up {doc['uptime_s']:.0f} s)",
             f"uploads: {t['in_flight']} in flight, {t['completed']} completed "
             f"({human_size(t['completed_bytes'])}), {t['failed']} failed; write memory "
             f"{human_size(mem['used'])} of {human_size(mem['budget'])} "
             f"(peak {human_size(mem['peak'])})"]
    for u in doc["uploads"]:
        drain = "-" if u["drain_s"] is None else f"{u['drain_s']:.0f} s"
        lines.append(f"  {u['key']}  ({u['state']})")
        lines.append(f"    {_bar(u['bytes_uploaded'], u['bytes_written'])} "
                     f"{human_size(u['bytes_uploaded'])} of {human_size(u['bytes_written'])} "
                     f"uploaded and verified, parts {u['parts_uploaded']}/"
                     f"{u['parts_started']}, {human_size(u['rate_bytes_s'])}/s, "
                     f"drains in {drain}")
        for b in u.get("big_parts", []):
            lines.append(f"    big part {b['part']} ({human_size(b['size'])}): {b['stage']}, "
                         f"{human_size(b['streamed'])} streamed to {b['temporary_key']}")
    r = doc.get("reads") or {}
    if r:
        failed = f", {r['failed_objects']} FAILED verification" if r["failed_objects"] else ""
        lines.append(f"reads: {r['objects_opened']} opened, {human_size(r['bytes_read'])} "
                     f"served; {r['verified_objects']} whole objects verified "
                     f"({human_size(r['verified_bytes'])}){failed}")
    if doc.get("s3"):
        lines += render_health(doc["s3"])
    if doc["recent_errors"]:
        lines.append("recent errors:")
        lines += [f"  {e}" for e in doc["recent_errors"]]
    return "\n".join(lines)


def render_health(h: dict[str, Any]) -> list[str]:
    """S3's health in a few lines: what waits, what was retried or failed, the last success."""
    def by_kind(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"

    ago = h["last_success_s_ago"]
    waiting = (f"{h['waiting']} request(s) waiting, longest {h['oldest_wait_s']:.1f} s"
               if h["waiting"] else "no request waiting")
    lines = [f"S3: {waiting}; last success "
             f"{'never' if ago is None else f'{ago:.1f} s ago'}; {h['stalls']} stall(s); "
             f"retries: {by_kind(h['retries'])}; errors: {by_kind(h['errors'])}"]
    lines += [f"  STALLED {p['waiting_s']:.1f} s: {p['request']} ({p['retries']} retries)"
              for p in h["stalled"]]
    return lines


def status_main(argv: Sequence[str]) -> int:
    p = Parser(prog="s3mount status", description="Show what a running mount is doing: "
               "uploads in flight with progress, totals, memory, recent errors.")
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true", help="print the raw JSON document")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="refresh every SECONDS until interrupted")
    ns = p.parse_args(argv)
    mountpoint = os.path.abspath(ns.mountpoint)
    while True:
        doc = fetch(mountpoint)
        text = json.dumps(doc, indent=2) if ns.json else render(doc)
        if ns.watch:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(text, flush=True)
        if not ns.watch:
            return 0
        time.sleep(ns.watch)
