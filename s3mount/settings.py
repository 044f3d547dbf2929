"""Where a mount's settings come from, strongest first: the command line (with mount(8)'s
`-o` options, the command line of an fstab mount), the environment, the bucket's section of
the config file, its `[defaults]` section, the built-in defaults.

Config files (TOML), read in this order, a later one overriding an earlier one key by key:
`/etc/s3mount/config.toml`, `~/.config/s3mount/config.toml`; or only `--config FILE` (or
`$S3MOUNT_CONFIG`). Keys are the long option names with `_` or `-`:

    [defaults]
    max_memory = "32M"

    [bucket.backups]
    endpoint_url = "https://s3.example.net"
    keyfile = "/etc/s3mount/backups.key"

Also here: the keyfile (`ACCESS_KEY:SECRET_KEY`, or s3fs's `BUCKET:ACCESS_KEY:SECRET_KEY`
lines), refused when group or others can read it.
"""

from __future__ import annotations

import argparse
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from .config import Credentials
from .errors import QuietError

SYSTEM_CONFIG = Path("/etc/s3mount/config.toml")
USER_CONFIG = Path("~/.config/s3mount/config.toml")
# Settings the environment provides (boto3's own variables), first found wins.
ENVIRONMENT = {
    "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "profile": ("AWS_PROFILE",),
}
# mount(8) and fstab options that mean nothing to s3mount itself.
IGNORED_MOUNT_OPTIONS = {
    "_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "owner", "group",
    "defaults", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async", "sync", "atime",
    "noatime", "relatime", "strictatime", "lazytime", "default_permissions", "fsname",
    "subtype", "dirsync", "comment",
}
# -o words that set a flag.
FLAG_WORDS = {"ro": ("read_only", True), "rw": ("read_only", False)}
NOT_SETTINGS = {"help", "version", "bucket", "mountpoint", "options", "config",
                "print_config", "foreground"}


def settable(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Options a config file or -o may set, by dest."""
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest not in NOT_SETTINGS}


def parse_mount_options(texts: list[str]) -> dict[str, Any]:
    """`-o a=1,b,ro` (possibly several -o) -> {"a": "1", "b": True, "read_only": True}."""
    out: dict[str, Any] = {}
    for text in texts:
        for item in filter(None, (s.strip() for s in text.split(","))):
            name, eq, value = item.partition("=")
            if name.startswith("x-"):  # x-systemd.*, x-gvfs-* and other user-space hints
                continue
            name = name.replace("-", "_")
            if name in IGNORED_MOUNT_OPTIONS:
                continue
            if name in FLAG_WORDS and not eq:
                dest, flag = FLAG_WORDS[name]
                out[dest] = flag
                continue
            out[name] = value if eq else True
    return out


def config_files(explicit: str | None) -> list[Path]:
    if explicit or (explicit := os.environ.get("S3MOUNT_CONFIG")):
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise QuietError(f"config file {path} does not exist", 2)
        return [path]
    return [p for p in (SYSTEM_CONFIG, USER_CONFIG.expanduser()) if p.is_file()]


def load_sections(paths: list[Path], bucket: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The merged [defaults] then [bucket.NAME] settings, and where each came from."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    docs = []
    for path in paths:
        try:
            docs.append((path, tomllib.loads(path.read_text())))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise QuietError(f"config file {path}: {exc}", 2) from None
    for section in ("defaults", "bucket"):
        for path, doc in docs:
            table = doc.get(section, {})
            if section == "bucket":
                table = table.get(bucket, {}) if isinstance(table, dict) else {}
            if not isinstance(table, dict):
                raise QuietError(f"config file {path}: [{section}] must be a table", 2)
            where = f"{path} [{section}{'.' + bucket if section == 'bucket' else ''}]"
            for key, value in table.items():
                values[key.replace("-", "_")] = value
                sources[key.replace("-", "_")] = where
    return values, sources


def apply_layers(parser: argparse.ArgumentParser, ns: argparse.Namespace, given: set[str],
                 bucket: str) -> dict[str, str]:
    """Fill in `ns` every setting the command line did not give; returns each one's source."""
    actions = settable(parser)
    sources = {dest: "command line" for dest in given if dest in actions}
    o_values = parse_mount_options(ns.options or [])
    file_values, file_sources = load_sections(config_files(ns.config), bucket)
    for key, where in (*((k, "-o") for k in o_values), *file_sources.items()):
        if key not in actions:
            raise QuietError(f"{where}: unknown setting {key!r}", 2)
    for dest, action in actions.items():
        if dest in given:
            continue
        if dest in o_values:
            value, source = o_values[dest], "-o"
        elif env := next((os.environ[v] for v in ENVIRONMENT.get(dest, ())
                          if os.environ.get(v)), None):
            value, source = env, "environment"
        elif dest in file_values:
            value, source = file_values[dest], file_sources[dest]
        else:
            sources[dest] = "built-in"
            continue
        setattr(ns, dest, _convert(action, value, f"{source}: {dest}"))
        sources[dest] = source
    return sources


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    if action.nargs == 0:  # a flag
        if isinstance(value, str):
            value = {"true": True, "yes": True, "1": True, "false": False, "no": False,
                     "0": False}.get(value.lower(), value)
        if not isinstance(value, bool):
            raise QuietError(f"{where}: expected true or false, not {value!r}", 2)
        return value
    if isinstance(value, bool):
        raise QuietError(f"{where}: needs a value ({where.rpartition(' ')[2]}=...)", 2)
    if action.type is not None and isinstance(value, str):
        try:
            value = action.type(value)  # type: ignore[operator]
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise QuietError(f"{where}: {exc}", 2) from None
    if action.choices is not None and value not in action.choices:
        raise QuietError(f"{where}: {value!r} is not one of {', '.join(action.choices)}", 2)
    return value


def read_keyfile(path: str, bucket: str) -> Credentials:
    """`ACCESS:SECRET`, or lines of `BUCKET:ACCESS:SECRET` (s3fs's passwd file format)."""
    try:
        st = os.stat(path)
        text = Path(path).read_text()
    except OSError as exc:
        raise QuietError(f"keyfile {path}: {exc.strerror}", 3) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise QuietError(f"keyfile {path} can be read by group or others (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}", 3)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) == 2:
            return Credentials(fields[0], fields[1], f"keyfile {path}")
        if len(fields) == 3 and fields[0] == bucket:
            return Credentials(fields[1], fields[2], f"keyfile {path}")
    raise QuietError(f"keyfile {path}: no ACCESS_KEY:SECRET_KEY line (or "
                     f"{bucket}:ACCESS_KEY:SECRET_KEY)", 3)
