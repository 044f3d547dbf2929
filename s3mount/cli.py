"""Command line: `s3mount BUCKET|s3://BUCKET/PREFIX/ MOUNTPOINT [options]`, and subcommands.

Subcommand words come first (`s3mount etag FILE`); a bucket whose name is a subcommand word is
mounted as `s3://NAME`. User mistakes end in one line on stderr and a non-zero exit code, never
a traceback. Without --foreground the process detaches once the mount is live; a failure before
that still reaches the terminal, through a pipe from the detached child.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import select
import sys
import time
from collections.abc import Callable, Sequence

from .config import Config
from .errors import QuietError
from .etag import stream_etag
from .options import (
    FIELD_OF,
    Parser,
    build_config,
    default,
    parse_mount_args,
    parse_size,
    show_size,
)
from .schedule import PartSchedule
from .status import status_main

log = logging.getLogger(__name__)

SUBCOMMANDS = ("etag", "uploads", "status")
READY_TIMEOUT = 60.0  # seconds the parent waits for the detached child to report


def check_mountpoint(path: str) -> None:
    if not os.path.exists(path):
        raise QuietError(f"mountpoint {path} does not exist", 6)
    if not os.path.isdir(path):
        raise QuietError(f"mountpoint {path} is not a directory", 6)
    if os.path.ismount(path):
        raise QuietError(f"{path} is already a mount point (unmount it first: "
                         f"fusermount3 -u {path})", 6)
    if not os.path.exists("/dev/fuse"):
        raise QuietError("/dev/fuse is missing: install fuse3 and load the fuse module", 6)


def setup_logging(config: Config, detached: bool) -> None:
    level = logging.DEBUG if config.debug else logging.INFO
    handler: logging.Handler
    if not detached:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    elif config.log_file:
        handler = logging.FileHandler(config.log_file)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.handlers.SysLogHandler("/dev/log") if os.path.exists(
            "/dev/log") else logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("s3mount[%(process)d]: %(levelname)s "
                                               "%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if config.debug else logging.WARNING)
    if not config.debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


def mount_main(argv: Sequence[str]) -> int:
    ns, sources = parse_mount_args(argv)
    config = build_config(ns)
    if ns.print_config:
        print(describe_config(config, sources))
        return 0
    check_mountpoint(config.mountpoint)
    # lazy: pyfuse3, trio and boto3 take about a second to import; only a mount needs them.
    from .mount import run

    if config.foreground:
        setup_logging(config, detached=False)
        run(config, ready=lambda: None)
        return 0
    return _detach(config, run)


def describe_config(config: Config, sources: dict[str, str]) -> str:
    """The settings as `name = value  # source` lines; secrets masked."""
    from .store import credential_summary  # lazy: boto3 only for --print-config, not --help

    lines = [f"bucket = {config.bucket!r}", f"prefix = {config.prefix!r}",
             f"mountpoint = {config.mountpoint!r}"]
    for dest in sorted(sources):
        if dest == "prefix":
            continue
        value = getattr(config, FIELD_OF.get(dest, dest), None)
        if dest in ("file_mode", "dir_mode") and isinstance(value, int):
            shown = f"0o{value:o}"
        else:
            shown = repr(value)
        lines.append(f"{dest} = {shown}  # {sources[dest]}")
    lines.append(f"# credentials: {credential_summary(config)}")
    return "\n".join(lines)


def _detach(config: Config, run: Callable[[Config, Callable[[], None]], None]) -> int:
    """Fork; the child mounts and reports 'OK' or 'ERR code message' through a pipe."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        return _wait_child(rfd, pid)
    os.close(rfd)
    os.setsid()
    status = 1
    try:
        setup_logging(config, detached=True)
        run(config, lambda: _report_ready(wfd))
        status = 0
    except QuietError as exc:
        _report(wfd, f"ERR {exc.exitcode} {exc.message}")
        status = exc.exitcode
    except BaseException as exc:  # noqa: BLE001 - the parent must hear of it
        log.exception("s3mount failed")
        _report(wfd, f"ERR 1 {type(exc).__name__}: {exc}")
    finally:
        os._exit(status)


def _report(fd: int, line: str) -> None:
    try:
        os.write(fd, (line + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def _report_ready(fd: int) -> None:
    _report(fd, "OK")
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    os.close(null)
    os.chdir("/")


def _wait_child(rfd: int, pid: int) -> int:
    deadline = time.monotonic() + READY_TIMEOUT
    buf = b""
    while b"\n" not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([rfd], [], [], 0.5)
        if ready:
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            buf += chunk
    line = buf.decode(errors="replace").strip()
    if line == "OK":
        return 0
    if line.startswith("ERR "):
        code, _, message = line[4:].partition(" ")
        raise QuietError(message, int(code) if code.isdigit() else 1)
    raise QuietError("the mount process ended without mounting (see syslog or --log-file)", 1)


def etag_main(argv: Sequence[str]) -> int:
    p = Parser(prog="s3mount etag", description="Print the ETag S3 gives a stream that "
               "s3mount uploads, to compare with the object (e.g. dd if=/dev/sda | "
               "s3mount etag -).")
    p.add_argument("file", help="a file, or - for standard input")
    p.add_argument("--part-size", type=parse_size, default=default("part_size"),
                   help=f"as the mount's (default {show_size(default('part_size'))})")
    p.add_argument("--part-growth-every", type=int, default=default("part_growth_every"),
                   metavar="PARTS", help="as the mount's "
                   f"(default {default('part_growth_every')})")
    ns = p.parse_args(argv)
    try:
        schedule = PartSchedule(ns.part_size, ns.part_growth_every)
    except ValueError as exc:
        raise QuietError(str(exc)) from None
    try:
        if ns.file == "-":
            print(stream_etag(sys.stdin.buffer, schedule))
        else:
            with open(ns.file, "rb") as f:
                print(stream_etag(f, schedule))
    except OSError as exc:
        raise QuietError(f"{ns.file}: {exc.strerror}", 1) from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "etag":
            return etag_main(args[1:])
        if args and args[0] == "status":
            return status_main(args[1:])
        if args and args[0] == "uploads":
            from .admin import uploads_main  # lazy: admin needs boto3 and trio (a second)

            return uploads_main(args[1:])
        return mount_main(args)
    except QuietError as exc:
        print(f"s3mount: {exc.message}", file=sys.stderr)
        return exc.exitcode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
