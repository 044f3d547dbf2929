"""Metadata read ahead for `ls -l`: the HEADs of a listed directory's files, sent at once.

A LIST carries no metadata (times, mode, link-ness), so the files a readdir lists are shown
to the kernel with no attributes yet, and `ls -l` then asks for each one in turn: one HEAD
after another. As s3fs-fuse does, the first time attributes are asked for a file of a
directory just read by readdir, the HEADs of the other files it listed start, in listing order,
`AHEAD_HEADS` at a time, so that the next lookups find them ready; a lookup of a file whose HEAD
is under way waits for it instead of sending its own. They go in fetches of half that many,
each one worker thread's turn (store `head_many`: a lone HEAD's thread hand-over cost more of
the mount's CPU than the HEAD), each file's answer recorded as it comes. Nothing starts
until attributes are asked for (`find` and `ls` read names only), and the read ahead keeps
at most `AHEAD_WINDOW` files fetched and not yet asked for (what a glob such as `ls -l d/a*`
can waste; fetched
attributes are fresh for --metadata-ttl only, so running far ahead would waste them too).
A readdir's names are read ahead only while the program goes on: they are dropped once
--metadata-ttl passes with no entry listed and no attributes asked for there (a name listed as
a file is taken to be one, not a directory of the same name made meanwhile, for that long: the
HEAD alone cannot tell). Memory: the names of the files listed with no metadata, for the last
`AHEAD_DIRS` directories read, `AHEAD_NAMES_MAX` names each at most. No S3 here: `fetch`
(namespace.py) sends the HEADs and records what they say.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import trio

from .errors import FsError
from .keys import join

log = logging.getLogger(__name__)

AHEAD_HEADS = 16  # HEADs at once, at most (and at most the store's connections less 4)
AHEAD_WINDOW = 64  # files fetched ahead and not yet asked for, at most
AHEAD_DIRS = 4  # directories whose listed names are kept
AHEAD_NAMES_MAX = 100_000  # names kept for one directory (about 150 bytes each)
AHEAD_STALL = 1.0  # seconds with nothing asked after which a read ahead stops


class _Dir:
    """The files one readdir listed with no metadata, in listing order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.names: list[str] = []
        self.todo: dict[str, int] = {}  # not fetched yet, by name: its place in `names`
        self.unclaimed: set[str] = set()  # fetched ahead (or under way), not asked for yet
        self.in_flight = 0
        self.start = -1  # where the read ahead began (-1: not begun)
        self.cursor = 0  # the next place to look at, from `start` on
        self.back = 0  # the next place to look at before `start`
        self.held: str | None = None  # taken by a read ahead that stopped before its HEAD
        self.running = False
        self.dropped = False
        self.wake = trio.Event()
        self.touched = time.monotonic()  # when an entry was last listed or asked for

    def next_name(self) -> str | None:
        """The next name to fetch: in listing order from where the read ahead began to the
        end (which a readdir still under way extends: `ls -l` asks for attributes as it
        reads), then the ones before; None when none is left for now."""
        held, self.held = self.held, None
        if held is not None and held in self.todo:
            return held
        while self.cursor < len(self.names):
            name = self.names[self.cursor]
            self.cursor += 1
            if name in self.todo:
                return name
        while self.back < self.start:
            name = self.names[self.back]
            self.back += 1
            if name in self.todo:
                return name
        return None

    def poke(self) -> None:
        self.wake.set()


class Lookahead:
    def __init__(self, nursery: trio.Nursery | None,
                 fetch: Callable[[list[str], Callable[[str], None]], Awaitable[None]],
                 heads: int = AHEAD_HEADS,
                 idle: float = 1.0) -> None:
        self.nursery = nursery  # None: no read ahead (unit tests, --metadata-ttl 0)
        # Sends the files' HEADs and records their metadata, calling its second argument
        # with each path as that one is done
        self.fetch = fetch
        self.heads = max(1, heads)
        # HEADs handed to one fetch (one worker thread's turn: wire.head_objects): two
        # fetches under way, the next one started once a whole batch's room is free
        self.batch = max(1, self.heads // 2)
        self.idle = idle  # seconds after which a directory's names are dropped
        self.dirs: OrderedDict[str, _Dir] = OrderedDict()
        self.in_flight: dict[str, trio.Event] = {}  # by path: set when its HEAD has ended

    def listing(self, dir_path: str) -> None:
        """A readdir of `dir_path` begins: what an earlier one listed is dropped."""
        old = self.dirs.pop(dir_path, None)
        if old is not None:
            old.dropped = True
            old.poke()
        if self.nursery is None:
            return
        self.dirs[dir_path] = _Dir(dir_path)
        while len(self.dirs) > AHEAD_DIRS:
            _, gone = self.dirs.popitem(last=False)
            gone.dropped = True
            gone.poke()

    def listed(self, dir_path: str, name: str) -> None:
        """The readdir of `dir_path` listed file `name`, whose metadata is not known."""
        d = self.dirs.get(dir_path)
        if d is None or name in d.todo or len(d.names) >= AHEAD_NAMES_MAX:
            return
        d.todo[name] = len(d.names)
        d.names.append(name)
        d.touched = time.monotonic()

    def _dir(self, path: str) -> tuple[_Dir | None, str]:
        """The kept names of `path`'s directory, unless idle too long; and its name."""
        dir_path, _, name = path.rpartition("/")
        d = self.dirs.get(dir_path)
        if d is not None:
            now = time.monotonic()
            if now - d.touched > self.idle:
                del self.dirs[dir_path]
                d.dropped = True
                d.poke()
                return None, name
            d.touched = now
        return d, name

    def claimed(self, path: str) -> None:
        """Attributes of `path` were asked for (and found ready): the read ahead may go on."""
        if not self.dirs:
            return
        d, name = self._dir(path)
        if d is not None and name in d.unclaimed:
            d.unclaimed.discard(name)
            d.poke()

    def wanted(self, path: str) -> trio.Event | None:
        """Attributes of file `path`, whose metadata is not known, are asked for: the event
        its HEAD sets when it ends, if one is under way or starts now (the name was listed by
        a readdir, which also starts the read ahead of the others), else None."""
        ev = self.in_flight.get(path)
        d, name = self._dir(path)
        if d is None or self.nursery is None:
            return ev
        d.unclaimed.discard(name)
        if ev is None and name in d.todo:
            if d.start < 0:
                d.start = d.cursor = d.todo[name]
            ev = self._start(d, [name], self.nursery)[0]
        if not d.running and d.todo:
            d.running = True
            if d.start < 0:
                d.start = 0
            self.nursery.start_soon(self._run, d)
        d.poke()
        return ev

    def _start(self, d: _Dir, names: list[str], nursery: trio.Nursery) -> list[trio.Event]:
        """Start one fetch of these names' HEADs: the event of each, set when it ends."""
        paths = [join(d.path, name) for name in names]
        events = [trio.Event() for _ in names]
        for name, path, ev in zip(names, paths, events, strict=True):
            del d.todo[name]
            self.in_flight[path] = ev
        d.in_flight += len(names)
        nursery.start_soon(self._fetch, d, paths, events)
        return events

    async def _fetch(self, d: _Dir, paths: list[str], events: list[trio.Event]) -> None:
        pending = dict(zip(paths, events, strict=True))

        def done(path: str) -> None:
            ev = pending.pop(path, None)
            if ev is None:
                return  # not this fetch's, or said already
            d.in_flight -= 1
            if self.in_flight.get(path) is ev:
                del self.in_flight[path]
            ev.set()
            d.poke()
        try:
            await self.fetch(paths, done)
        except FsError as exc:  # the lookups that want them send their own requests, and say
            log.debug("reading ahead the attributes of %r and %d more: %s", paths[0],
                      len(paths) - 1, exc)
        finally:
            for path in list(pending):
                done(path)

    def _room(self, d: _Dir, batch: list[str]) -> bool:
        """Whether `batch` may take one more name."""
        return (len(batch) < self.batch and d.in_flight + len(batch) < self.heads
                and len(d.unclaimed) + len(batch) < AHEAD_WINDOW)

    def _wait(self, d: _Dir) -> bool:
        """Whether the next fetch waits: for a whole batch's room (unless none is under
        way), or for names fetched ahead to be asked for."""
        return (d.in_flight > 0 and self.heads - d.in_flight < self.batch
                or len(d.unclaimed) >= AHEAD_WINDOW)

    async def _run(self, d: _Dir) -> None:
        """Start the HEADs of the listed files in order, at most `heads` under way in fetches
        of `heads // 2`, keeping at most AHEAD_WINDOW not asked for; stop when done, dropped,
        or nothing is asked for a while."""
        try:
            while (name := d.next_name()) is not None:
                while not d.dropped and self._wait(d):
                    d.wake = trio.Event()
                    with trio.move_on_after(AHEAD_STALL) as scope:
                        await d.wake.wait()
                    if scope.cancelled_caught and len(d.unclaimed) >= AHEAD_WINDOW:
                        d.held = name
                        return  # nothing asked for: a glob, or the program stopped
                if d.dropped:
                    return
                batch: list[str] = []
                while name is not None:
                    if name in d.todo:
                        batch.append(name)
                    if not self._room(d, batch):
                        break
                    name = d.next_name()
                if batch:
                    d.unclaimed.update(batch)
                    assert self.nursery is not None
                    self._start(d, batch, self.nursery)
        finally:
            d.running = False
