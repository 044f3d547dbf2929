"""Run a mount: trio, one nursery for all background work, pyfuse3 init/main/close, signals.

`serve` returns when the filesystem is unmounted (umount, fusermount3 -u) or on SIGTERM/SIGINT;
before it returns, uploads of closed files finish and files still open are aborted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pyfuse3
import trio

from . import metrics, probe, status
from .admin import abort_stale
from .config import Config
from .errors import QuietError, StoreError
from .fs import S3Fs
from .keys import KeyMap
from .namespace import LOOKUP_LIST_KEYS
from .objects import ListPage
from .store import S3Store

log = logging.getLogger(__name__)


def fuse_options(config: Config) -> set[str]:
    opts = {f"fsname=s3mount:{config.bucket}", "subtype=s3mount", "default_permissions",
            "noatime"}
    if config.read_only:
        opts.add("ro")
    if config.allow_other:
        opts.add("allow_other")
    return opts


def notify_systemd(state: str) -> None:
    """Tell systemd (Type=notify) about our state, if it is listening."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(addr)
        sock.sendall(state.encode())


async def _signals(cancel: trio.CancelScope, fs: S3Fs) -> None:
    """First SIGTERM/SIGINT: unmount, letting closed files finish uploading. Second: abort
    every upload still in flight too, so the process exits now."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        first = True
        async for signum in received:
            name = signal.Signals(signum).name
            if first:
                first = False
                log.info("received %s: unmounting; closed files finish uploading (send it "
                         "again to abort them)", name)
                pyfuse3.terminate()
                cancel.cancel()
            else:
                n = await fs.uploads.abort_all(f"aborted: {name} received twice")
                log.warning("received %s again: aborted %d upload(s) in flight", name, n)


async def serve(config: Config, ready: Callable[[], None]) -> None:
    store = S3Store(config)
    with trio.fail_after(config.connect_timeout + config.request_timeout):
        await store.check_bucket()
    top = await _warm_up(store, KeyMap(config.prefix, config.dir_suffix))
    traits = None if config.read_only else await probe.learn_server(store, config)
    listeners = await metrics.listen(config.metrics) if config.metrics else None
    if config.abort_stale_uploads is not None:
        n = await abort_stale(store, config.prefix, config.abort_stale_uploads)
        log.info("aborted %d stale multipart upload(s) older than %.0f s", n,
                 config.abort_stale_uploads)
    # Before mounting: once mounted, looking at the mountpoint is a request to ourselves.
    status_path = status.socket_path(config.mountpoint)
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        fs = S3Fs(config, store, nursery)
        if top is not None:
            fs.ns.warmed_up(*top)
        fs.uploads.adopt(traits)
        fs.read_budget.verify = config.verify_reads
        # A server whose ETags are no MD5s: reads are proven by the checksums it keeps.
        fs.read_budget.md5_etags = traits is None or traits.etags_are_md5
        try:
            pyfuse3.init(fs, config.mountpoint, fuse_options(config))
        except RuntimeError as exc:
            raise QuietError(f"cannot mount on {config.mountpoint}: {exc}", 6) from None
        stack.callback(nursery.cancel_scope.cancel)
        stack.callback(_close_fuse)
        stack.push_async_callback(fs.shutdown)
        log.info("mounted s3://%s/%s on %s", config.bucket, config.prefix, config.mountpoint)
        await nursery.start(_status_socket, config, fs, store, status_path)
        nursery.start_soon(store.watch_stalls)
        if listeners is not None:
            sources = metrics.Sources(fs.uploads, fs.read_budget, store.health, time.monotonic())
            nursery.start_soon(metrics.serve, listeners, lambda: metrics.render(sources))
            log.info("Prometheus metrics at http://%s/metrics", config.metrics)
        nursery.start_soon(_raise_kernel_readahead, config.mountpoint)
        ready()
        notify_systemd("READY=1")
        main_done = trio.CancelScope()
        nursery.start_soon(_signals, main_done, fs)
        with main_done:
            await pyfuse3.main()
        notify_systemd("STOPPING=1")


async def _warm_up(store: S3Store, keys: KeyMap) -> tuple[ListPage, float] | None:
    """One HEAD, LIST and GET (of a key that is not there) before the mount is live, two at a
    time: boto3 prepares each kind of request on its first use, and the connection pool
    opens its connections. Otherwise the first lookup and read pay for it (time to first
    byte on a fresh mount 34 -> 22 ms). The LIST is of the top directory, up to as many
    names as a lookup lists (one level): returned with when it began (monotonic), for the
    namespace to keep (`Namespace.warmed_up`), so that the first lookup of a fresh mount
    needs no request."""
    probe = keys.file_key(".s3mount-warm-up")
    top: list[tuple[ListPage, float]] = []

    async def list_top() -> None:
        started = time.monotonic()
        page = await store.list_page(keys.dir_prefix(""), "/", None, LOOKUP_LIST_KEYS)
        top.append((page, started))

    async def get() -> None:
        with contextlib.suppress(StoreError):
            await store.get_range(probe, 0, memoryview(bytearray(1)), "0")

    async def head_then_get() -> None:
        await store.head(probe)
        await get()
    try:
        with trio.move_on_after(WARM_UP_TIMEOUT):
            async with trio.open_nursery() as n:
                n.start_soon(head_then_get)
                n.start_soon(list_top)
    except BaseExceptionGroup as group:  # the mount works without it; the first lookup says
        log.debug("warming up the S3 client failed: %s", group.exceptions[0])
    return top[0] if top else None


WARM_UP_TIMEOUT = 5.0
KERNEL_READAHEAD_KB = 1024  # FUSE's largest read request (256 pages); the default is 128


async def _raise_kernel_readahead(mountpoint: str) -> None:
    """Let the kernel read ahead 1 MiB instead of 128 KiB: 8 times fewer read requests, which
    cost s3mount 28% less CPU per GiB read (measured). Needs root (a sysfs write); without it
    the kernel's default stays."""
    try:  # the stat is a request to ourselves: from a thread, while the main loop serves it
        st = await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
        bdi = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        await trio.to_thread.run_sync(_write_text, bdi, str(KERNEL_READAHEAD_KB))
    except OSError as exc:
        log.debug("kernel read-ahead left at its default: %s", exc)


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


async def _status_socket(config: Config, fs: S3Fs, store: S3Store, path: Path,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `s3mount status`, listening before the mount says it is ready (started); a
    mount without it still works."""
    errors = status.RecentErrors()
    logging.getLogger().addHandler(errors)
    started = time.monotonic()  # status.snapshot compares it with time.monotonic()
    try:
        await status.serve(path, lambda: status.snapshot(
            config, fs.uploads, started, errors, fs.read_budget.counts, store.health),
            lambda: task_status.started())
    except OSError as exc:
        log.warning("no status socket at %s (%s): `s3mount status` will not answer", path,
                    exc)
        task_status.started()
    finally:
        logging.getLogger().removeHandler(errors)


def _close_fuse() -> None:
    try:
        pyfuse3.close(unmount=True)
    except Exception:  # noqa: BLE001 - already unmounted from outside
        log.debug("pyfuse3.close failed", exc_info=True)
    log.info("unmounted")


def run(config: Config, ready: Callable[[], None]) -> None:
    trio.run(serve, config, ready)
