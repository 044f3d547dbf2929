"""Options below the command line: values, the mount's parser, and its `Config`.

Parsing of sizes (`8M`), ages (`7d`), modes (`0644`) and bucket URLs (`s3://BUCKET/PREFIX/`);
`Parser`, an argparse parser whose mistakes end in one line (`QuietError`); `mount_parser`,
whose defaults (and the "(default 8M)" in its help) come from `Config`'s fields, so each
default is written once, in config.py; and `parse_mount_args` + `build_config`, from an argv
through every settings layer (settings.py) to a checked `Config`. `cli`, `admin` and `status`
build on this module; it imports none of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from .config import Config, GiB, KiB, MiB, TiB
from .errors import QuietError
from .schedule import PartSchedule
from .settings import apply_layers, read_keyfile, settable

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{2,254}$")
# Command-line dests whose `Config` field has another name.
FIELD_OF = {"read_ahead": "read_ahead_max"}
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise QuietError(f"{message} (see {self.prog} --help)", 2)


def default(dest: str) -> Any:
    """`Config`'s default for a command-line dest (`read_ahead` is `read_ahead_max`)."""
    field = _FIELDS[FIELD_OF.get(dest, dest)]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    if field.default is dataclasses.MISSING:
        raise KeyError(f"Config.{field.name} has no default")
    return field.default


def parse_size(text: str) -> int:
    """'8M', '8MiB', '1.5G', '4096' -> bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 8M, 64MiB, 1G)")
    factor = 1024 ** " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * factor)


def show_size(n: int) -> str:
    """Bytes as `parse_size` reads them back: 8388608 -> '8M'."""
    for unit, letter in ((TiB, "T"), (GiB, "G"), (MiB, "M"), (KiB, "K")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{letter}"
    return str(n)


def parse_age(text: str) -> float:
    """'0s', '90m', '12h', '7d', '2w' -> seconds."""
    m = _AGE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid age {text!r} (e.g. 0s, 30m, 12h, 7d)")
    return float(m.group(1)) * _AGE_UNITS[m.group(2)]


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
    d = default
    size = {dest: show_size(d(dest)) for dest in
            ("part_size", "max_memory", "read_ahead", "read_memory")}
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
    s3.add_argument("--endpoint-url", default=d("endpoint_url"),
                    help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    s3.add_argument("--keyfile", metavar="FILE", default=d("keyfile"),
                    help="credentials file: ACCESS_KEY:SECRET_KEY (or s3fs's "
                    "BUCKET:ACCESS_KEY:SECRET_KEY lines); mode 600 (default: boto3's chain)")
    s3.add_argument("--region", default=d("region"),
                    help="region (default: from the AWS configuration)")
    s3.add_argument("--profile", default=d("profile"),
                    help="profile in ~/.aws/config and ~/.aws/credentials")
    s3.add_argument("--prefix", help="mount only keys under this prefix")
    s3.add_argument("--sdk-requests", action="store_true", default=d("sdk_requests"),
                    help="send every request through boto3 (by default HEAD, GET, LIST, PUT, "
                    "UploadPart and DELETE go out signed by s3mount itself, at a tenth of boto3's "
                    "CPU); for S3 services that answer those in ways s3mount does not expect")
    fs = p.add_argument_group("file system")
    fs.add_argument("--read-only", action="store_true", default=d("read_only"),
                    help="refuse every change (EROFS)")
    fs.add_argument("--uid", type=int, default=d("uid"), help="owner of every file")
    fs.add_argument("--gid", type=int, default=d("gid"), help="group of every file")
    fs.add_argument("--file-mode", type=parse_mode, default=d("file_mode"),
                    help=f"default {d('file_mode'):04o}")
    fs.add_argument("--dir-mode", type=parse_mode, default=d("dir_mode"),
                    help=f"default {d('dir_mode'):04o}")
    fs.add_argument("--allow-other", action="store_true", default=d("allow_other"),
                    help="let other users use the mount (needs user_allow_other for non-root)")
    fs.add_argument("--metadata-ttl", type=float, default=d("metadata_ttl"), metavar="SECONDS",
                    help="how long attributes and negative lookups are cached "
                    f"(default {d('metadata_ttl'):g})")
    fs.add_argument("--attrs-from", choices=("object", "listing"), default=d("attrs_from"),
                    help="object: modes, owners, times and symlinks as the objects' metadata "
                    "stores them (a HEAD per file `ls -l` shows); listing: size and "
                    "Last-Modified as a LIST says, with --file-mode/--uid/--gid (no HEAD: "
                    f"`ls -l` costs its LISTs alone) (default {d('attrs_from')})")
    fs.add_argument("--dir-suffix", default=d("dir_suffix"),
                    help=f"suffix of directory marker objects (default {d('dir_suffix')!r})")
    wr = p.add_argument_group("writes")
    wr.add_argument("--part-size", type=parse_size, default=d("part_size"),
                    help=f"first part size, 5M..5G (default {size['part_size']}); doubles "
                    "every --part-growth-every parts")
    wr.add_argument("--part-growth-every", type=int, default=d("part_growth_every"),
                    metavar="PARTS", help="parts per stage of the part-size schedule "
                    f"(default {d('part_growth_every')})")
    wr.add_argument("--max-memory", type=parse_size, default=d("max_memory"),
                    help=f"bytes of write buffers across all files (default {size['max_memory']})")
    wr.add_argument("--upload-concurrency", type=int, default=d("upload_concurrency"),
                    help=f"parts uploaded at once (default {d('upload_concurrency')})")
    wr.add_argument("--abort-stale-uploads", type=parse_age, metavar="AGE",
                    default=d("abort_stale_uploads"),
                    help="at start, abort incomplete multipart uploads under the mounted "
                    "prefix started at least AGE ago (e.g. 1d), such as a killed mount leaves")
    wr.add_argument("--checksum", choices=("auto", "crc32c", "sha256"), default=d("checksum"),
                    help="additional checksum sent with every part and verified after the "
                    "upload, besides Content-MD5 and the ETag; auto uses CRC32C only where "
                    f"ETags are not MD5s (SSE-KMS, SSE-C) (default {d('checksum')})")
    wr.add_argument("--verify", choices=("auto", "read-back"), default=d("verify"),
                    help="how uploads are proven: auto by ETags or by additional checksums, "
                    "whichever the server's answers prove (probed at mount start); read-back "
                    "also reads each object back and hashes it before close() returns (works "
                    "on any server; costs one read of every byte written) "
                    f"(default {d('verify')})")
    fs.add_argument("--rename-max-keys", type=int, default=d("rename_max_keys"), metavar="N",
                    help="largest directory (in keys) that rename copies; above it rename "
                    "fails with EXDEV and mv copies file by file "
                    f"(default {d('rename_max_keys')})")
    rd = p.add_argument_group("reads")
    rd.add_argument("--read-ahead", type=parse_size, default=d("read_ahead"),
                    help=f"largest read-ahead window per file (default {size['read_ahead']})")
    rd.add_argument("--read-memory", type=parse_size, default=d("read_memory"),
                    help=f"prefetched bytes across all files (default {size['read_memory']})")
    rd.add_argument("--no-verify-reads", dest="verify_reads", action="store_false",
                    default=d("verify_reads"),
                    help="do not hash whole-file reads against the object's MD5 or checksum "
                    "(docs/SEMANTICS.md says which reads are verified)")
    rd.add_argument("--retries", type=int, default=d("retries"),
                    help=f"retries of a failed read or metadata request (default {d('retries')})")
    rd.add_argument("--read-deadline", type=float, default=d("read_deadline"),
                    metavar="SECONDS", help="a read that S3 fails for this long gives EIO "
                    f"(default {d('read_deadline'):g})")
    wr.add_argument("--write-deadline", type=float, default=d("write_deadline"),
                    metavar="SECONDS", help="an upload request S3 fails for this long makes "
                    "close() fail with EIO; shorter outages only stall the writer "
                    f"(default {d('write_deadline'):g})")
    run = p.add_argument_group("running")
    run.add_argument("-f", "--foreground", action="store_true", default=d("foreground"),
                     help="stay in the foreground, log to stderr")
    run.add_argument("--debug", action="store_true", default=d("debug"),
                     help="log every request")
    run.add_argument("--metrics", metavar="HOST:PORT", default=d("metrics"),
                     help="serve Prometheus metrics over HTTP here, e.g. 127.0.0.1:9100 "
                     "(docs/METRICS.md)")
    run.add_argument("--log-file", default=d("log_file"),
                     help="log here when detached (default: syslog)")
    return p


def parse_mount_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The mount's settings from every layer (see settings.py), and where each came from."""
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
        attrs_from=ns.attrs_from,
        part_size=ns.part_size, part_growth_every=ns.part_growth_every,
        max_memory=ns.max_memory, upload_concurrency=ns.upload_concurrency,
        checksum=ns.checksum, verify=ns.verify, verify_reads=ns.verify_reads,
        metrics=ns.metrics, rename_max_keys=ns.rename_max_keys,
        abort_stale_uploads=ns.abort_stale_uploads,
        read_ahead_max=ns.read_ahead, read_memory=ns.read_memory, retries=ns.retries,
        read_deadline=ns.read_deadline, write_deadline=ns.write_deadline,
        sdk_requests=ns.sdk_requests)


def _check_numbers(ns: argparse.Namespace) -> None:
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
