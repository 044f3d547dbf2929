"""The read ahead of a listed directory's HEADs (s3mount/lookahead.py), on its own: what it
fetches, in what order, how many at once, and where it stops."""

from __future__ import annotations

from collections.abc import Callable

import trio

from s3mount.lookahead import AHEAD_WINDOW, Lookahead


class Fetches:
    """A fetch that records the paths asked, the size of each fetch, and how many paths were
    fetched at once at most."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.batches: list[int] = []
        self.running = self.most = 0

    async def __call__(self, paths: list[str], done: Callable[[str], None]) -> None:
        self.paths += paths
        self.batches.append(len(paths))
        self.running += len(paths)
        self.most = max(self.most, self.running)
        for path in paths:  # each one's answer as it comes
            await trio.sleep(0.01)
            self.running -= 1
            done(path)


async def test_nothing_before_attributes_are_asked_then_in_order_and_bounded(
        nursery: trio.Nursery) -> None:
    fetch = Fetches()
    ahead = Lookahead(nursery, fetch, heads=4, idle=30)
    ahead.listing("d")
    for i in range(300):
        ahead.listed("d", f"f{i:03d}")
    await trio.sleep(0.1)
    assert fetch.paths == []  # a readdir alone (find) fetches nothing
    ev = ahead.wanted("d/f010")
    assert ev is not None
    await ev.wait()
    await trio.sleep(1.5)  # (the read ahead stops after 1 s with nothing asked: AHEAD_STALL)
    # nothing else asked for (a glob): at most the window ahead, from the name asked on
    assert fetch.paths[0] == "d/f010"
    assert len(fetch.paths) == 1 + AHEAD_WINDOW, len(fetch.paths)
    # (the next ones in listing order; trio runs tasks started together in any order)
    assert sorted(fetch.paths[1:]) == [f"d/f{i:03d}" for i in range(11, 11 + AHEAD_WINDOW)]
    assert 3 <= fetch.most <= 4  # at most `heads`; two fetches and a lookup's at once
    # the program asks for each one as `ls -l` does: each file is fetched once, all of them
    for i in [*range(11, 300), *range(10)]:
        path = f"d/f{i:03d}"
        if path in fetch.paths:
            ahead.claimed(path)
        ev = ahead.wanted(path)
        if ev is not None:
            await ev.wait()
    await trio.sleep(0.2)
    assert sorted(fetch.paths) == [f"d/f{i:03d}" for i in range(300)]
    # the name asked first alone, the read ahead's in fetches of heads // 2, mostly full
    assert fetch.batches[0] == 1 and max(fetch.batches) == 2
    assert fetch.batches.count(2) > len(fetch.batches) // 2, fetch.batches


async def test_a_new_readdir_drops_the_names_of_the_last_one(nursery: trio.Nursery) -> None:
    fetch = Fetches()
    ahead = Lookahead(nursery, fetch, heads=4, idle=30)
    ahead.listing("d")
    ahead.listed("d", "a")
    ahead.listing("d")
    assert ahead.wanted("d/a") is None and fetch.paths == []
    idle = Lookahead(nursery, fetch, heads=4, idle=0.05)
    idle.listing("d")
    idle.listed("d", "a")
    await trio.sleep(0.1)
    assert idle.wanted("d/a") is None  # idle longer than --metadata-ttl: not read ahead
    assert Lookahead(None, fetch).wanted("d/a") is None  # --metadata-ttl 0
