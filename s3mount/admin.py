"""`s3mount uploads list|abort BUCKET[/PREFIX]`: find and remove incomplete multipart uploads.

A mount that was killed (or lost power) leaves its multipart uploads behind: never visible as
objects, but stored, and billed, until aborted. These commands take the same connection
settings as a mount (--endpoint-url, --keyfile, --profile, the config file's bucket section,
-o). `abort_stale` is also what a mount runs at start with `--abort-stale-uploads AGE`.

Big parts (assembler.py) leave two more kinds of debris under `PREFIX.s3mount-tmp/`: the
temporary multipart upload a big part streams into (an incomplete upload like any other, listed
and aborted with them, marked "big part"), and, for the seconds between its completion and its
copy, the temporary object itself: listed as "temporary object", deleted by abort.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import time
from collections.abc import Sequence

import trio

from .assembler import TMP_DIR
from .config import Config
from .errors import QuietError, StoreError
from .objects import ObjectInfo, UploadInfo
from .options import Parser, build_config, parse_age, parse_mount_args
from .schedule import human_size
from .store import S3Store

log = logging.getLogger(__name__)
CONNECTION_OPTIONS = ("--endpoint-url", "--keyfile", "--region", "--profile", "--config", "-o")


async def stale(store: S3Store, prefix: str, older_than: float) -> list[UploadInfo]:
    now = time.time()
    return [u for u in await store.list_uploads(prefix) if now - u.initiated >= older_than]


async def stale_tmp_objects(store: S3Store, prefix: str,
                            older_than: float) -> list[ObjectInfo]:
    """Temporary objects of big parts (under `PREFIX.s3mount-tmp/`) at least `older_than`
    seconds old: a mount killed while it copied one left it."""
    now, found, token = time.time(), [], None
    while True:
        page = await store.list_page(prefix + TMP_DIR, delimiter=None, token=token)
        found += [o for o in page.objects if now - o.mtime >= older_than]
        if (token := page.next_token) is None:
            return found


async def abort_stale(store: S3Store, prefix: str, older_than: float) -> int:
    """Abort uploads under `prefix` started at least `older_than` seconds ago, and delete the
    temporary objects of big parts as old; returns how many were removed."""
    found = await stale(store, prefix, older_than)
    for u in found:
        await store.abort_upload(u.key, u.upload_id)
        log.info("aborted stale multipart upload of %s (started %s)", u.key, _when(u.initiated))
    objects = await stale_tmp_objects(store, prefix, older_than)
    for o in objects:
        await store.delete(o.key)
        log.info("deleted the stale temporary object %s (a big part's, from %s)", o.key,
                 _when(o.mtime))
    return len(found) + len(objects)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="s3mount uploads", description="List or abort incomplete multipart "
               "uploads (a killed mount leaves them; they are billed until aborted).")
    p.add_argument("action", choices=("list", "abort"))
    p.add_argument("bucket", help="BUCKET or s3://BUCKET/PREFIX/")
    p.add_argument("--older-than", type=parse_age, metavar="AGE",
                   help="only uploads started at least AGE ago (0s, 30m, 12h, 7d); "
                   "required for abort")
    p.add_argument("--endpoint-url")
    p.add_argument("--keyfile", metavar="FILE")
    p.add_argument("--region")
    p.add_argument("--profile")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("-o", dest="options", action="append", metavar="OPT[=VAL],...")
    return p


def uploads_main(argv: Sequence[str]) -> int:
    ns = parser().parse_args(argv)
    if ns.action == "abort" and ns.older_than is None:
        raise QuietError("uploads abort needs --older-than AGE (0s aborts every one)", 2)
    mount_args = [ns.bucket, "--print-config"]
    for opt in ("endpoint_url", "keyfile", "region", "profile", "config"):
        if getattr(ns, opt) is not None:
            mount_args += [f"--{opt.replace('_', '-')}", getattr(ns, opt)]
    for o in ns.options or []:
        mount_args += ["-o", o]
    config = build_config(parse_mount_args(mount_args)[0])
    logging.basicConfig(level=logging.ERROR, format="s3mount: %(message)s")
    try:
        return trio.run(_run, config, ns.action, ns.older_than or 0.0)
    except StoreError as exc:
        raise QuietError(f"{exc}", 5) from None


async def _run(config: Config, action: str, older_than: float) -> int:
    store = S3Store(config)
    await store.check_bucket()
    found = await stale(store, config.prefix, older_than)
    objects = await stale_tmp_objects(store, config.prefix, older_than)
    where = f"s3://{config.bucket}/{config.prefix}"
    if action == "list":
        if not found and not objects:
            print(f"no incomplete uploads under {where}")
            return 0
        print(f"{'STARTED (UTC)':20}  {'AGE':>7}  {'PARTS':>5}  {'SIZE':>10}  KEY")
        for u in sorted(found, key=lambda u: u.initiated):
            parts, size = await store.upload_parts(u.key, u.upload_id)
            print(f"{_when(u.initiated):20}  {_age(time.time() - u.initiated):>7}  "
                  f"{parts:>5}  {human_size(size):>10}  {u.key}{_what(u.key, config)}")
        for o in objects:
            print(f"{_when(o.mtime):20}  {_age(time.time() - o.mtime):>7}  {'-':>5}  "
                  f"{human_size(o.size):>10}  {o.key} (temporary object of a big part)")
        print(f"{len(found)} incomplete upload(s)"
              + (f" and {len(objects)} temporary object(s)" if objects else "")
              + f" under {where}")
        return 0
    for u in found:
        await store.abort_upload(u.key, u.upload_id)
        print(f"aborted {u.key}{_what(u.key, config)} (started {_when(u.initiated)})")
    for o in objects:
        await store.delete(o.key)
        print(f"deleted {o.key} (temporary object of a big part)")
    print(f"{len(found)} upload(s) aborted"
          + (f" and {len(objects)} temporary object(s) deleted" if objects else "")
          + f" under {where}")
    return 0


def _what(key: str, config: Config) -> str:
    return " (big part being assembled)" if key.startswith(config.prefix + TMP_DIR) else ""
