"""Paths <-> S3 keys: the mounted prefix, the directory suffix, and which keys are valid names.

A *path* here is relative to the mount root, without leading or trailing slash ("" is the root,
"a/b.txt" a file). Keys are full S3 keys, prefix included.
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from .config import S3_MAX_KEY_BYTES
from .errors import FsError

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes per path component, as in every Linux filesystem
# Names s3mount keeps for itself (the temporary objects of big parts, `.s3mount-tmp/`, and
# any later `.s3mount-*` name): never shown in a listing of the mount.
HIDDEN_PREFIX = ".s3mount-"
# The object a read-write mount PUTs and deletes at start to learn what the server's answers
# prove (probe.py), hidden like the others should a crash leave one behind.
PROBE_PREFIX = HIDDEN_PREFIX + "probe-"


def valid_name(name: str) -> bool:
    """True if `name` can be one component of a path: what a key component must be to show."""
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
        and len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX
    )


def decode_name(raw: bytes) -> str:
    """A FUSE name (bytes) as a str; names that are not UTF-8 cannot be S3 keys here."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FsError(f"name {raw!r} is not valid UTF-8; S3 keys are UTF-8", errno.EINVAL) from None


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


HIDDEN_LOGGED_MAX = 4096


@dataclass(frozen=True)
class KeyMap:
    """Maps paths under the mount to keys under `prefix` ("" or ending in "/")."""

    prefix: str = ""
    dir_suffix: str = "/"
    # Hidden keys already logged (the last HIDDEN_LOGGED_MAX): one line per key, although a
    # directory is listed both for its lookup and for readdir.
    _logged: OrderedDict[str, None] = field(default_factory=OrderedDict, compare=False,
                                            repr=False)

    def file_key(self, path: str) -> str:
        return self.prefix + path

    def dir_prefix(self, path: str) -> str:
        """The prefix every key below directory `path` starts with."""
        return f"{self.prefix}{path}/" if path else self.prefix

    def marker_key(self, path: str) -> str:
        """The zero-byte object that makes directory `path` exist on its own."""
        return self.prefix + path + self.dir_suffix

    def check_key(self, path: str) -> str:
        """The key for a new object at `path`, or ENAMETOOLONG if S3 cannot hold it."""
        key = self.file_key(path)
        if len(key.encode()) + len(self.dir_suffix.encode()) > S3_MAX_KEY_BYTES:
            raise FsError(f"key {key!r} would exceed S3's {S3_MAX_KEY_BYTES}-byte limit",
                          errno.ENAMETOOLONG)
        return key

    def child_name(self, dir_path: str, key: str) -> str | None:
        """The entry name `key` gives inside directory `dir_path` (a file key, or a common
        prefix ending in "/"), or None when it is no valid name (hidden, logged at debug)."""
        raw = key[len(self.dir_prefix(dir_path)):]
        rest = raw[:-1] if raw.endswith("/") else raw
        if rest.startswith(HIDDEN_PREFIX):
            return None  # s3mount's own (big parts being assembled): not logged
        if not valid_name(rest):
            if raw and key not in self._logged:  # not for the directory's own marker
                log.debug("hiding key %r: not a valid file name", key)  # `d//` (raw "/") too
                self._logged[key] = None
                if len(self._logged) > HIDDEN_LOGGED_MAX:
                    self._logged.popitem(last=False)
            return None
        return rest
