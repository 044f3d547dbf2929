"""Part buffers: the write budget, reuse of freed buffers within it, and never reusing a
buffer that something still reads."""

from __future__ import annotations

import errno

import pytest
import trio

from s3mount.buffers import Part, PartBody, WriteBudget
from s3mount.config import Config, Credentials, MiB
from s3mount.errors import FsError


async def paid_part(budget: WriteBudget, number: int, size: int) -> Part:
    return Part(number, size, await budget.acquire(size), budget)


async def test_freed_buffers_are_reused_within_the_budget() -> None:
    budget = WriteBudget(24 * MiB)
    parts = [await paid_part(budget, n, 8 * MiB) for n in (1, 2, 3)]
    mems = {id(p.mem) for p in parts}
    for p in parts:
        p.free(budget)
    assert budget.used == 0 and budget.kept_bytes == 24 * MiB
    again = await paid_part(budget, 4, 8 * MiB)
    assert id(again.mem) in mems and budget.kept_bytes == 16 * MiB
    # A part of another size drops kept buffers until in-use plus kept fit the budget.
    big = await paid_part(budget, 5, 16 * MiB)
    assert budget.used == 24 * MiB and budget.kept_bytes == 0
    again.free(budget)
    big.free(budget)
    assert budget.used + budget.kept_bytes <= budget.capacity
    budget.trim()
    assert budget.kept_bytes == 0


async def test_shipped_parts_count_as_in_flight() -> None:
    budget = WriteBudget(24 * MiB)
    part = await paid_part(budget, 1, 8 * MiB)
    assert budget.used == 8 * MiB and budget.in_flight == 0
    part.ship(budget)
    assert budget.in_flight == 8 * MiB
    part.free(budget)
    assert budget.used == 0 and budget.in_flight == 0


async def test_a_part_larger_than_the_budget_is_charged_the_budget() -> None:
    budget = WriteBudget(10 * MiB)
    part = await paid_part(budget, 1, 16 * MiB)
    assert len(part.mem) == 16 * MiB and part.taken == budget.used == 10 * MiB
    part.free(budget)
    assert budget.used == 0


async def test_budget_held_by_idle_files_fails_with_enobufs_not_a_hang() -> None:
    budget = WriteBudget(4 * MiB, stall_grace=0.2)
    idle = [await paid_part(budget, 1, 2 * MiB) for _ in range(2)]  # open, never shipped
    with trio.fail_after(5), pytest.raises(FsError) as info:
        await budget.acquire(2 * MiB, "big.img")
    assert info.value.errno_ == errno.ENOBUFS
    assert "big.img" in str(info.value) and "--max-memory" in str(info.value)
    for p in idle:
        p.free(budget)


async def test_a_held_part_is_spared_when_nothing_else_would_free_room() -> None:
    """A writer holding its part 1 waits for room while nothing uploads: `spare` sends that
    part, and room comes back when its upload ends, instead of ENOBUFS."""
    budget = WriteBudget(4 * MiB, stall_grace=0.2)
    held = await paid_part(budget, 1, 2 * MiB)
    other = await paid_part(budget, 2, 2 * MiB)
    other.ship(budget)
    calls: list[bool] = []

    def spare() -> bool:
        calls.append(budget.in_flight == 0)
        held.ship(budget)
        return True

    async def upload_ends(part: Part) -> None:
        await trio.sleep(0.05)
        part.free(budget)

    async with trio.open_nursery() as n:
        n.start_soon(upload_ends, other)  # room from another upload: no spare needed
        with trio.fail_after(5):
            assert await budget.acquire(2 * MiB, "f", spare=spare) == 2 * MiB
        assert calls == []
        with trio.fail_after(5):  # nothing in flight now: part 1 is sent
            n.start_soon(upload_ends, held)
            await budget.acquire(2 * MiB, "f", spare=spare)
        assert calls == [True]
    assert budget.used == 4 * MiB and budget.in_flight == 0


async def test_waiting_writer_goes_on_while_others_make_progress() -> None:
    budget = WriteBudget(4 * MiB, stall_grace=0.3)
    held = [await paid_part(budget, 1, 2 * MiB) for _ in range(2)]

    async def slow_writer_then_close() -> None:
        for _ in range(4):  # writes a little every 0.2 s: slower than the grace period
            await trio.sleep(0.2)
            budget.written += 1
        held[0].ship(budget)  # the file is closed: its part uploads
        await trio.sleep(0.5)  # the upload takes longer than the grace period
        held[0].free(budget)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_writer_then_close)
            assert await budget.acquire(2 * MiB, "k") == 2 * MiB
    held[1].free(budget)


async def test_buffer_with_a_live_view_is_not_reused() -> None:
    budget = WriteBudget(16 * MiB)
    part = await paid_part(budget, 1, 8 * MiB)
    part.mem[:5] = b"hello"
    part.fill = 5
    lingering = part.view()  # e.g. a request thread that still holds the body
    body = PartBody(lingering)
    part.free(budget)
    assert budget.kept_bytes == 0 and budget.used == 0
    assert body.read() == b"hello"  # the bytes it reads were never overwritten


async def test_acquire_waits_for_room() -> None:
    budget = WriteBudget(10 * MiB)
    first = await budget.acquire(8 * MiB)
    got: list[int] = []

    async def second() -> None:
        got.append(await budget.acquire(8 * MiB))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.sleep(0.05)
        assert got == []  # waiting: 8 + 8 > 10
        budget.release(first)
    assert got == [8 * MiB] and budget.peak == 8 * MiB


@pytest.mark.parametrize("size", [0, 1, 8191, 8192, 100_000])
def test_part_body_reads_like_a_file(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    body = PartBody(memoryview(data)[:size])
    assert len(body) == size
    assert body.read(10) == data[:min(10, size)]
    body.seek(0)
    buf = bytearray(size + 5)
    assert body.readinto(buf) == size and bytes(buf[:size]) == data[:size]
    assert body.read() == b""
    assert body.seek(-1, 2) == max(0, size - 1)


def test_part_body_is_sent_from_its_buffer_in_large_blocks() -> None:
    """What S3Store hands botocore for a part: blocks that are views of the part buffer (no
    copy in Python), 1 MiB at a time (urllib3's blocksize), from the start on every try."""
    import mmap

    from s3mount.store import SEND_BLOCK, SMALL_BODY, _rewound

    mem = mmap.mmap(-1, 3 * MiB)
    mem[:] = bytes(range(256)) * (3 * MiB // 256)
    body = PartBody(memoryview(mem)[:2 * MiB + 5])
    body.read(100)  # a failed try read part of it
    sent = _rewound(body)
    assert len(sent) == 2 * MiB + 5
    blocks = []
    while block := sent.read(SEND_BLOCK):
        assert isinstance(block, memoryview) and block.obj is mem  # a view, not a copy
        blocks.append(bytes(block))
    assert [len(b) for b in blocks] == [MiB, MiB, 5]
    assert b"".join(blocks) == mem[:2 * MiB + 5]
    assert _rewound(body).read(3) == mem[:3]  # a retry sends it from its start again
    assert _rewound(b"abc") == b"abc"
    # A small body (a small file's PUT) goes as bytes: botocore then sends it at once, with
    # no `Expect: 100-continue` round trip first.
    small = _rewound(PartBody(memoryview(mem)[:SMALL_BODY]))
    assert isinstance(small, bytes) and small == mem[:SMALL_BODY]


def test_client_sends_bodies_in_large_blocks() -> None:
    from s3mount.store import SEND_BLOCK, make_client

    client = make_client(Config(bucket="bench", mountpoint="/nonexistent",
                                endpoint_url="http://127.0.0.1:9",
                                credentials=Credentials("key", "secret", "test")))
    pool_kw = client._endpoint.http_session._manager.connection_pool_kw
    assert pool_kw["blocksize"] == SEND_BLOCK == MiB


# -- read buffers -----------------------------------------------------------------------------

def test_read_budget_reuses_buffers_and_unmaps_them_when_no_reader_is_open() -> None:
    from s3mount.buffers import ReadBudget

    budget = ReadBudget(4 * MiB)
    budget.readers = 1
    a = budget.take(3 * MiB)  # rounded up to a power of two
    assert a is not None and len(a) == 4 * MiB and budget.used == 4 * MiB
    assert budget.take(128 * 1024) is None  # prefetch only where there is room
    forced = budget.take(100, force=True)  # bytes a read waits for: always
    assert forced is not None and budget.used == 4 * MiB + 128 * 1024
    budget.give(forced)
    budget.give(a)
    assert budget.used == 0 and budget.kept.bytes == 4 * MiB  # the forced one did not fit
    again = budget.take(4 * MiB)
    assert again is a  # the same mapping, no fresh page faults
    budget.give(again)
    budget.readers = 0
    budget.trim_if_idle()
    assert budget.kept.bytes == 0


class SlowStore:
    """Serves one object from memory; a GET of bytes in [4 MiB, 40 MiB) takes a second and,
    like a GET in a worker thread, is not cut short by cancellation."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def get_range(self, key: str, start: int, into: memoryview, etag: str) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(1.0 if 4 * MiB <= start < 40 * MiB else 0.01)
        into[:] = self.data[start:start + len(into)]


async def test_discarded_chunks_count_until_their_get_ends() -> None:
    """A seek discards prefetched chunks still being fetched: their buffers stay paid for
    until the GET returns, so the budget bounds real memory, not just wanted bytes."""
    import os as _os

    from s3mount.buffers import ReadBudget
    from s3mount.reader import Reader

    data = _os.urandom(64 * MiB)
    store = SlowStore(data)
    budget = ReadBudget(16 * MiB)
    budget.verify = False  # (this store has no HEAD for a verified read to ask)
    async with trio.open_nursery() as nursery:
        reader = Reader(store, "k", "e", len(data), budget, nursery, 32 * MiB)  # type: ignore[arg-type]
        for off in range(0, 4 * MiB, MiB):  # sequential: prefetching starts
            assert await reader.read(off, MiB) == data[off:off + MiB]
        assert budget.used > MiB  # prefetching
        assert await reader.read(40 * MiB, 4096) == data[40 * MiB:40 * MiB + 4096]  # a seek
        assert budget.used > 128 * 1024  # the discarded chunks' GETs have not ended yet
        assert budget.peak <= budget.capacity + 2 * MiB
        await trio.sleep(1.2)
        assert budget.used == 128 * 1024  # only the chunk the last read came from
        reader.close()
    assert budget.used == 0 and budget.readers == 0 and budget.kept.bytes == 0


async def test_a_first_read_started_before_an_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first read started at a lookup (reader.py, `Readers.start_first_read`) is what the
    open's reader serves from, with no second GET; one that no open takes within SPARE_TTL is
    closed and its buffer given back."""
    import os as _os

    from s3mount import reader as reader_mod
    from s3mount.buffers import ReadBudget

    monkeypatch.setattr(reader_mod, "SPARE_TTL", 0.2)
    data = _os.urandom(3 * MiB)
    store = SlowStore(data)
    gets: list[int] = []
    inner = store.get_range

    async def counted(key: str, start: int, into: memoryview, etag: str) -> None:
        gets.append(start)
        await inner(key, start, into, etag)

    store.get_range = counted  # type: ignore[method-assign]
    budget = ReadBudget(16 * MiB)
    budget.verify = False
    async with trio.open_nursery() as nursery:
        readers = reader_mod.Readers(store, budget, nursery, 32 * MiB)  # type: ignore[arg-type]
        assert readers.start_first_read("k", "e", len(data))
        assert not readers.start_first_read("k", "e", len(data))  # one at a time
        assert not readers.start_first_read("empty", "e", 0)
        await trio.sleep(0.001)
        assert gets == [0] and budget.used >= reader_mod.FIRST_READ
        r = readers.open("k", "e", len(data))
        assert await r.read(0, MiB) == data[:MiB]
        assert gets == [0]  # the read waited for the GET already under way
        r.close()
        assert readers.start_first_read("k", "e", len(data))
        other = readers.open("k", "another ETag", len(data))  # replaced since: not that one
        assert await other.read(0, 4096) == data[:4096]
        other.close()
        await trio.sleep(0.5)
        assert not readers.spares and budget.used == 0 and budget.readers == 0


class MemoryObject:
    """Serves one object from memory at once (no HEAD: a verified read's plan is patched)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def get_range(self, key: str, start: int, into: memoryview, etag: str) -> None:
        await trio.lowlevel.checkpoint()
        into[:] = self.data[start:start + len(into)]


@pytest.mark.expect_log(r"^s3mount\.reader: verifying a read failed unexpectedly")
async def test_a_failed_hasher_lets_go_of_the_chunks_it_was_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads hand the hasher views of their chunks, which stay pinned until it is done with
    them. When the hashing task fails, what it was sent but never hashed is let go too: every
    chunk goes back to the budget, none while still viewed."""
    import os as _os

    from s3mount.buffers import ReadBudget
    from s3mount.reader import Reader

    async def failing_plan(self: Reader) -> None:
        await trio.sleep(0.05)  # the first reads' views wait in the channel meanwhile
        raise RuntimeError("injected")

    monkeypatch.setattr(Reader, "_plan", failing_plan)
    data = _os.urandom(24 * MiB)
    budget = ReadBudget(64 * MiB)
    async with trio.open_nursery() as nursery:
        reader = Reader(MemoryObject(data), "k", "e", len(data), budget, nursery,  # type: ignore[arg-type]
                        8 * MiB)
        for off in range(0, len(data), MiB):
            got = await reader.read(off, MiB)
            assert got == data[off:off + MiB]
            del got
        reader.close()
        await trio.sleep(0.1)
    assert budget.counts["verified_objects"] == 0
    assert budget.used == 0 and budget.kept.viewed == 0 and budget.kept.bytes == 0
