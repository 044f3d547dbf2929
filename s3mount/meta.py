"""File attributes in S3 user metadata, in the convention s3fs-fuse and rclone already use.

An object's times, mode (file type bits included), owner and group are kept in its user metadata
(`x-amz-meta-*`), under the keys and in the formats s3fs-fuse writes and reads, so that objects
either tool wrote show their attributes through s3mount and the other way round; rclone reads
the same `mtime`. A symbolic link is an object whose body is the target and whose mode has
`S_IFLNK`. docs/METADATA.md has the sources (file and line) behind each rule.

Written (`FileMeta.to_headers`), keys without the `x-amz-meta-` prefix, as boto3's `Metadata=`:

    mtime, atime, ctime   seconds since the epoch: "SEC", or "SEC.NNNNNNNNN" (nine digits)
    mode                  st_mode in decimal, type bits included ("33188" = S_IFREG | 0o644)
    uid, gid              decimal

Read (`FileMeta.from_headers`): those, and also rclone's fraction without trailing zeros
("1.5"), RFC 3339 times (rclone --metadata), rclone's octal modes ("100644"), the s3sync
(`permissions`, `owner`, `group`) and GCS (`goog-reserved-*`) keys s3fs falls back to. A value
that cannot be read is ignored with one debug line; the caller falls back to its defaults.
No boto3 here.
"""

from __future__ import annotations

import datetime
import logging
import mimetypes
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

PREFIX = "x-amz-meta-"
MTIME, ATIME, CTIME, MODE, UID, GID = "mtime", "atime", "ctime", "mode", "uid", "gid"
# What s3fs reads when its own key is missing (metaheader.cpp get_mtime/get_mode/get_uid/...).
MTIME_KEYS = (MTIME, "goog-reserved-file-mtime")
MODE_KEYS = (MODE, "permissions", "goog-reserved-posix-mode")
UID_KEYS = (UID, "owner", "goog-reserved-posix-uid")
GID_KEYS = (GID, "group", "goog-reserved-posix-gid")

# The mode s3fs gives a symbolic link it makes (s3fs.cpp s3fs_symlink).
SYMLINK_MODE = stat.S_IFLNK | 0o777
# Longest link target Linux accepts (PATH_MAX with its NUL): a longer body is no link.
MAX_LINK_TARGET = 4095
DEFAULT_CONTENT_TYPE = "application/octet-stream"
DIRECTORY_CONTENT_TYPE = "application/x-directory"  # s3fs's for "dir/" objects

_FILE_TYPES = frozenset({0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO,
                         stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK})
_MAX_MODE = 0o177777
_MAX_ID = 2**32 - 1
_NS = 1_000_000_000
_DECIMAL_SECONDS = re.compile(r"(-?)(\d+)(?:\.(\d*))?")
# Extensions Python's mimetypes maps to an *encoding* rather than a type: s3fs and rclone name
# the type of the last extension, so "a.tar.gz" is application/gzip.
_ENCODING_TYPES = {
    ".gz": "application/gzip", ".tgz": "application/gzip", ".bz2": "application/x-bzip2",
    ".xz": "application/x-xz", ".z": "application/x-compress", ".br": "application/x-brotli",
    ".zst": "application/zstd",
}


@dataclass(frozen=True)
class FileMeta:
    """What an object's user metadata says about the file; None where it says nothing.

    Times are integer nanoseconds since the epoch (as `st_mtime_ns`). `mode` is a full
    `st_mode`; its type bits are 0 when the writer gave none (s3sync's `permissions`): then the
    key decides between a file and a directory, as in s3fs."""

    mtime_ns: int | None = None
    atime_ns: int | None = None
    ctime_ns: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def is_symlink(self) -> bool:
        return self.mode is not None and stat.S_ISLNK(self.mode)

    @property
    def is_empty(self) -> bool:
        return self == FileMeta()

    def to_headers(self) -> dict[str, str]:
        """User metadata for boto3's `Metadata=` (keys without `x-amz-meta-`), set fields only."""
        out: dict[str, str] = {}
        for key, ns in ((MTIME, self.mtime_ns), (ATIME, self.atime_ns),
                        (CTIME, self.ctime_ns)):
            if ns is not None:
                out[key] = format_time(ns)
        if self.mode is not None:
            out[MODE] = str(self.mode)
        if self.uid is not None:
            out[UID] = str(self.uid)
        if self.gid is not None:
            out[GID] = str(self.gid)
        return out

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None, what: str = "") -> FileMeta:
        """Read what s3fs, rclone or s3mount wrote. `headers` is boto3's `Metadata` (keys with
        or without `x-amz-meta-`, any case); `what` (the key) is for the debug lines."""
        if not headers:
            return cls()
        meta = {k.lower().removeprefix(PREFIX): v.strip() for k, v in headers.items()}
        return cls(
            mtime_ns=_first(meta, MTIME_KEYS, parse_time, what),
            atime_ns=_first(meta, (ATIME,), parse_time, what),
            ctime_ns=_first(meta, (CTIME,), parse_time, what),
            mode=_first(meta, MODE_KEYS, parse_mode, what),
            uid=_first(meta, UID_KEYS, parse_id, what),
            gid=_first(meta, GID_KEYS, parse_id, what),
        )


def _first(meta: dict[str, str], keys: tuple[str, ...], parse: Callable[[str], int | None],
           what: str) -> int | None:
    """The value of the first of `keys` that reads; GCS's mode is octal (s3fs: base 8)."""
    for key in keys:
        if key not in meta:
            continue
        got = (_parse_octal if key == "goog-reserved-posix-mode" else parse)(meta[key])
        if got is not None:
            return got
        log.debug("%s: ignoring unreadable metadata %s=%r", what or "object", key, meta[key])
    return None


def format_time(ns: int) -> str:
    """Seconds since the epoch as s3fs writes them (string_util.cpp str(timespec)): "SEC"
    when whole, else "SEC.NNNNNNNNN" with all nine digits, which s3fs (it reads the digits as a
    count of nanoseconds) and rclone (a decimal fraction) both read exactly. Before 1970: "-"
    and the magnitude, rclone's form (s3fs ignores times before 1970)."""
    if ns < 0:
        return "-" + format_time(-ns)
    sec, frac = divmod(ns, _NS)
    return str(sec) if frac == 0 else f"{sec}.{frac:09d}"


def parse_time(value: str) -> int | None:
    """Nanoseconds since the epoch from "SEC[.FRACTION]" (s3fs, rclone; a fraction of any
    length is a decimal fraction, beyond nine digits cut) or RFC 3339 (rclone --metadata's
    atime/btime); None if neither, or if it would not fit a 64-bit st_mtime_ns."""
    value = value.strip()
    m = _DECIMAL_SECONDS.fullmatch(value)
    if m:
        sign, sec, frac = m.groups()
        frac = (frac or "")[:9].ljust(9, "0")
        ns = int(sec[:30]) * _NS + int(frac)
        return (-ns if sign else ns) if ns < 2**63 else None  # st_mtime_ns is 64 bits
    return _parse_rfc3339(value)


def _parse_rfc3339(value: str) -> int | None:
    if "T" not in value and " " not in value:
        return None
    text = value.replace("z", "Z")
    frac_ns = 0
    m = re.fullmatch(r"(.*?[T ]\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?", text)
    if not m:
        return None
    base, frac, zone = m.groups()
    if frac:
        frac_ns = int(frac[:9].ljust(9, "0"))
    try:
        dt = datetime.datetime.fromisoformat(base + (zone or "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    delta = dt - epoch
    ns = (delta.days * 86400 + delta.seconds) * _NS + frac_ns
    return ns if -(2**63) < ns < 2**63 else None


def _parse_c_integer(value: str) -> int | None:
    """An integer as strtoll(value, NULL, 0) reads it (s3fs reads mode, uid and gid so):
    "0x.." hex, "0.." octal, else decimal; the whole string must be the number."""
    value = value.strip()
    body = value[1:] if value[:1] in "+-" else value
    if not body:
        return None
    try:
        if body[:2].lower() == "0x":
            n = int(body[2:], 16)
        elif len(body) > 1 and body[0] == "0":
            n = int(body[1:], 8)
        else:
            n = int(body, 10)
    except ValueError:
        return None
    return -n if value[0] == "-" else n


def _parse_octal(value: str) -> int | None:
    try:
        n = int(value.strip(), 8)
    except ValueError:
        return None
    return n if 0 <= n <= _MAX_MODE and stat.S_IFMT(n) in _FILE_TYPES else None


def parse_mode(value: str) -> int | None:
    """A mode as s3fs writes it (decimal, `str(mode)`; read like strtoll base 0), or as
    rclone's --metadata writes it (octal without a leading 0: "100644"). Decimal wins; octal
    is taken only when the decimal value is no valid mode (above 0o177777 or an unknown file
    type) and the octal one is: rclone's modes always carry type bits, so "100644" (a file)
    and "40755" (a directory) come out right, and no s3fs value is read as octal."""
    n = _parse_c_integer(value)
    if n is not None and 0 <= n <= _MAX_MODE and stat.S_IFMT(n) in _FILE_TYPES:
        return n
    if re.fullmatch(r"[0-7]+", value.strip()):
        return _parse_octal(value)
    return None


def parse_id(value: str) -> int | None:
    """A uid or gid: a non-negative integer (strtoll base 0, as s3fs), below 2**32."""
    n = _parse_c_integer(value)
    return n if n is not None and 0 <= n <= _MAX_ID else None


# -- symbolic links -------------------------------------------------------------------------


def symlink_body(target: bytes | str) -> bytes:
    """The object body of a symbolic link: the target's bytes, as s3fs writes them."""
    data = target.encode("utf-8", "surrogateescape") if isinstance(target, str) else target
    check_link_target(data)
    return data


def check_link_target(data: bytes) -> None:
    """ValueError unless `data` can be a link target (non-empty, no NUL, <= PATH_MAX - 1)."""
    if not data:
        raise ValueError("a symbolic link's target cannot be empty")
    if b"\0" in data:
        raise ValueError("a symbolic link's target cannot contain NUL")
    if len(data) > MAX_LINK_TARGET:
        raise ValueError(f"a symbolic link's target is at most {MAX_LINK_TARGET} bytes, "
                         f"not {len(data)}")


def link_target(body: bytes) -> bytes | None:
    """The target a link object's body names, or None if it can be none. s3fs trims white
    space off the target when it writes and reads one (s3fs_symlink, s3fs_readlink): a body
    s3fs wrote has none to trim; a body with a trailing newline (a link made by hand with
    `echo target | aws s3 cp - ...`) reads as s3fs reads it."""
    data = body.strip(b" \t\r\n")
    try:
        check_link_target(data)
    except ValueError:
        return None
    return data


# -- Content-Type ---------------------------------------------------------------------------


def guess_content_type(name: str) -> str:
    """The Content-Type s3fs and rclone give an object of this name: by its last extension
    (mimetypes, which reads /etc/mime.types as s3fs does), `application/octet-stream` when
    unknown; `application/x-directory` for a name ending in "/" (s3fs's directory objects)."""
    if name.endswith("/"):
        return DIRECTORY_CONTENT_TYPE
    base = name.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    if dot <= 0 or dot == len(base) - 1:  # no extension (a dotfile's name is no extension)
        return DEFAULT_CONTENT_TYPE
    ext = base[dot:]
    if not mimetypes.inited:
        mimetypes.init()
    for e in (ext, ext.lower()):
        found = mimetypes.types_map.get(e) or mimetypes.common_types.get(e)
        if found:
            return found
    return _ENCODING_TYPES.get(ext.lower(), DEFAULT_CONTENT_TYPE)
