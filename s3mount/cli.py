"""Command line: `s3mount BUCKET|s3://BUCKET/PREFIX/ MOUNTPOINT [options]`, and subcommands.

Subcommand words come first (`s3mount etag FILE`); a bucket whose name is a subcommand word is
mounted as `s3://NAME`. User mistakes end in one line on stderr and a non-zero exit code, never
a traceback. Without --foreground the process detaches once the mount is live; a failure before
that still reaches the terminal, through a pipe from the detached child.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import re
import select
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import __version__
from .config import Config, MiB
from .errors import QuietError

log = logging.getLogger(__name__)

SUBCOMMANDS = ("etag", "uploads", "status")
READY_TIMEOUT = 60.0  # seconds the parent waits for the detached child to report
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{2,254}$")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise QuietError(f"{message} (see {self.prog} --help)", 2)


def parse_size(text: str) -> int:
    """'8M', '8MiB', '1.5G', '4096' -> bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 8M, 64MiB, 1G)")
    factor = 1024 ** " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * factor)


def _age(text: str) -> float:
    from .admin import parse_age

    return parse_age(text)


def parse_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid mode {text!r} (octal, e.g. 0644)") from None
    if not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(f"invalid mode {text!r}")
    return mode


def split_bucket(spec: str, prefix_opt: str | None) -> tuple[str, str]:
    """'bucket' or 's3://bucket/some/prefix/' -> (bucket, 'some/prefix/')."""
    prefix = ""
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[5:].partition("/")
    else:
        bucket = spec
    if prefix_opt is not None:
        if prefix:
            raise QuietError("give the prefix either in s3://BUCKET/PREFIX or with --prefix")
        prefix = prefix_opt
    prefix = prefix.strip("/")
    if not _BUCKET.match(bucket):
        raise QuietError(f"invalid bucket name {bucket!r} (3-255 characters: a-z 0-9 . - _)")
    return bucket, (prefix + "/" if prefix else "")


def mount_parser() -> Parser:
    p = Parser(prog="s3mount", description="Mount an S3 bucket (or a prefix of it) with FUSE. "
               "Subcommands: s3mount etag FILE|- (print the ETag a stream gets); s3mount "
               "uploads list|abort BUCKET (incomplete multipart uploads); s3mount status "
               "MOUNTPOINT (uploads in flight).")
    p.add_argument("bucket", help="BUCKET or s3://BUCKET/PREFIX/")
    p.add_argument("mountpoint", nargs="?", help="an existing, empty directory")
    p.add_argument("--version", action="version", version=f"s3mount {__version__}")
    p.add_argument("-o", dest="options", action="append", metavar="OPT[=VAL],...",
                   help="settings as mount(8) passes them: the long option names with _ "
                   "(endpoint_url=URL,ro,allow_other,uid=N,...); _netdev, nofail and other "
                   "mount(8) words are ignored")
    p.add_argument("--config", metavar="FILE", help="read settings from FILE only (default: "
                   "/etc/s3mount/config.toml, then ~/.config/s3mount/config.toml)")
    p.add_argument("--print-config", action="store_true",
                   help="print the settings this mount would use, and where each comes from, "
                   "then exit (MOUNTPOINT may be left out)")
    s3 = p.add_argument_group("S3")
    s3.add_argument("--endpoint-url",
                    help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    s3.add_argument("--keyfile", metavar="FILE",
                    help="credentials file: ACCESS_KEY:SECRET_KEY (or s3fs's "
                    "BUCKET:ACCESS_KEY:SECRET_KEY lines); mode 600 (default: boto3's chain)")
    s3.add_argument("--region", help="region (default: from the AWS configuration)")
    s3.add_argument("--profile", help="profile in ~/.aws/config and ~/.aws/credentials")
    s3.add_argument("--prefix", help="mount only keys under this prefix")
    fs = p.add_argument_group("file system")
    fs.add_argument("--read-only", action="store_true", help="refuse every change (EROFS)")
    fs.add_argument("--uid", type=int, default=os.getuid(), help="owner of every file")
    fs.add_argument("--gid", type=int, default=os.getgid(), help="group of every file")
    fs.add_argument("--file-mode", type=parse_mode, default=0o644, help="default 0644")
    fs.add_argument("--dir-mode", type=parse_mode, default=0o755, help="default 0755")
    fs.add_argument("--allow-other", action="store_true",
                    help="let other users use the mount (needs user_allow_other for non-root)")
    fs.add_argument("--metadata-ttl", type=float, default=1.0, metavar="SECONDS",
                    help="how long attributes and negative lookups are cached (default 1)")
    fs.add_argument("--dir-suffix", default="/",
                    help="suffix of directory marker objects (default '/')")
    wr = p.add_argument_group("writes")
    wr.add_argument("--part-size", type=parse_size, default=8 * MiB,
                    help="first part size, 5M..5G (default 8M); doubles every "
                    "--part-growth-every parts")
    wr.add_argument("--part-growth-every", type=int, default=1000, metavar="PARTS",
                    help="parts per stage of the part-size schedule (default 1000)")
    wr.add_argument("--max-memory", type=parse_size, default=24 * MiB,
                    help="bytes of write buffers across all files (default 24M)")
    wr.add_argument("--upload-concurrency", type=int, default=4,
                    help="parts uploaded at once (default 4)")
    wr.add_argument("--abort-stale-uploads", type=_age, metavar="AGE",
                    help="at start, abort incomplete multipart uploads under the mounted "
                    "prefix started at least AGE ago (e.g. 1d), such as a killed mount leaves")
    wr.add_argument("--checksum", choices=("auto", "crc32c", "sha256"), default="auto",
                    help="additional checksum sent with every part and verified after the "
                    "upload, besides Content-MD5 and the ETag; auto (the default) uses CRC32C "
                    "only where ETags are not MD5s (SSE-KMS, SSE-C)")
    wr.add_argument("--verify", choices=("auto", "read-back"), default="auto",
                    help="how uploads are proven: auto (the default) by ETags or by additional "
                    "checksums, whichever the server's answers prove (probed at mount start); "
                    "read-back also reads each object back and hashes it before close() "
                    "returns (works on any server; costs one read of every byte written)")
    fs.add_argument("--rename-max-keys", type=int, default=10_000, metavar="N",
                    help="largest directory (in keys) that rename copies; above it rename "
                    "fails with EXDEV and mv copies file by file (default 10000)")
    rd = p.add_argument_group("reads")
    rd.add_argument("--read-ahead", type=parse_size, default=32 * MiB,
                    help="largest read-ahead window per file (default 32M)")
    rd.add_argument("--read-memory", type=parse_size, default=128 * MiB,
                    help="prefetched bytes across all files (default 128M)")
    rd.add_argument("--no-verify-reads", dest="verify_reads", action="store_false",
                    help="do not hash whole-file reads against the object's MD5 (see "
                    "docs/SEMANTICS.md for which reads are verified)")
    rd.add_argument("--retries", type=int, default=8,
                    help="retries of a failed read or metadata request (default 8)")
    rd.add_argument("--read-deadline", type=float, default=60.0, metavar="SECONDS",
                    help="a read that S3 fails for this long gives EIO (default 60)")
    wr.add_argument("--write-deadline", type=float, default=600.0, metavar="SECONDS",
                    help="an upload request S3 fails for this long makes close() fail with "
                    "EIO; shorter outages only stall the writer (default 600)")
    run = p.add_argument_group("running")
    run.add_argument("-f", "--foreground", action="store_true",
                     help="stay in the foreground, log to stderr")
    run.add_argument("--debug", action="store_true", help="log every request")
    run.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve Prometheus metrics over HTTP here, e.g. 127.0.0.1:9100 "
                     "(docs/METRICS.md)")
    run.add_argument("--log-file", help="log here when detached (default: syslog)")
    return p


def parse_mount_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The mount's settings from every layer (see settings.py), and where each came from."""
    from .settings import apply_layers, settable

    parser = mount_parser()
    builtin = {dest: parser.get_default(dest) for dest in settable(parser)}
    unset = object()
    parser.set_defaults(**{dest: unset for dest in builtin})
    ns = parser.parse_args(argv)
    given = {dest for dest in builtin if getattr(ns, dest) is not unset}
    for dest in builtin.keys() - given:
        setattr(ns, dest, builtin[dest])
    bucket = ns.bucket[5:].partition("/")[0] if ns.bucket.startswith("s3://") else ns.bucket
    sources = apply_layers(parser, ns, given, bucket)
    if ns.mountpoint is None and not ns.print_config:
        parser.error("the following arguments are required: mountpoint")
    return ns, sources


def build_config(ns: argparse.Namespace) -> Config:
    from .settings import read_keyfile

    bucket, prefix = split_bucket(ns.bucket, ns.prefix)
    mountpoint = os.path.abspath(ns.mountpoint or ".")
    _check_numbers(ns)
    keyfile = os.path.abspath(os.path.expanduser(ns.keyfile)) if ns.keyfile else None
    return Config(
        keyfile=keyfile, credentials=read_keyfile(keyfile, bucket) if keyfile else None,
        bucket=bucket, prefix=prefix, mountpoint=mountpoint, endpoint_url=ns.endpoint_url,
        region=ns.region, profile=ns.profile, read_only=ns.read_only,
        foreground=ns.foreground, debug=ns.debug,
        log_file=os.path.abspath(ns.log_file) if ns.log_file else None,
        allow_other=ns.allow_other, uid=ns.uid, gid=ns.gid, file_mode=ns.file_mode,
        dir_mode=ns.dir_mode, dir_suffix=ns.dir_suffix, metadata_ttl=ns.metadata_ttl,
        part_size=ns.part_size, part_growth_every=ns.part_growth_every,
        max_memory=ns.max_memory, upload_concurrency=ns.upload_concurrency,
        checksum=ns.checksum, verify=ns.verify, verify_reads=ns.verify_reads,
        metrics=ns.metrics, rename_max_keys=ns.rename_max_keys,
        abort_stale_uploads=ns.abort_stale_uploads,
        read_ahead_max=ns.read_ahead, read_memory=ns.read_memory, retries=ns.retries,
        read_deadline=ns.read_deadline, write_deadline=ns.write_deadline)


def _check_numbers(ns: argparse.Namespace) -> None:
    from .schedule import PartSchedule

    try:
        PartSchedule(ns.part_size, ns.part_growth_every)
    except ValueError as exc:
        raise QuietError(f"--part-size/--part-growth-every: {exc}") from None
    if ns.max_memory < ns.part_size:
        raise QuietError("--max-memory must hold at least one part (--part-size)")
    for name in ("upload_concurrency", "retries"):
        if getattr(ns, name) < (1 if name == "upload_concurrency" else 0):
            raise QuietError(f"--{name.replace('_', '-')} is out of range")
    if ns.metadata_ttl < 0:
        raise QuietError("--metadata-ttl must be >= 0")
    if ns.read_deadline <= 0 or ns.write_deadline <= 0:
        raise QuietError("--read-deadline and --write-deadline must be > 0 seconds")
    if not ns.dir_suffix:
        raise QuietError("--dir-suffix must not be empty")


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
    from .mount import run  # pyfuse3 and trio only when mounting

    if config.foreground:
        setup_logging(config, detached=False)
        run(config, ready=lambda: None)
        return 0
    return _detach(config, run)


def describe_config(config: Config, sources: dict[str, str]) -> str:
    """The settings as `name = value  # source` lines; secrets masked."""
    from .store import credential_summary

    names = {"read_ahead": "read_ahead_max"}
    lines = [f"bucket = {config.bucket!r}", f"prefix = {config.prefix!r}",
             f"mountpoint = {config.mountpoint!r}"]
    for dest in sorted(sources):
        if dest == "prefix":
            continue
        value = getattr(config, names.get(dest, dest), None)
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
    from .etag import stream_etag
    from .schedule import PartSchedule

    p = Parser(prog="s3mount etag", description="Print the ETag S3 gives a stream that "
               "s3mount uploads, to compare with the object (e.g. dd if=/dev/sda | "
               "s3mount etag -).")
    p.add_argument("file", help="a file, or - for standard input")
    p.add_argument("--part-size", type=parse_size, default=8 * MiB)
    p.add_argument("--part-growth-every", type=int, default=1000, metavar="PARTS")
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
            from .status import status_main

            return status_main(args[1:])
        if args and args[0] == "uploads":
            from .admin import uploads_main

            return uploads_main(args[1:])
        return mount_main(args)
    except QuietError as exc:
        print(f"s3mount: {exc.message}", file=sys.stderr)
        return exc.exitcode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
