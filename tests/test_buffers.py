"""Part buffers: the write budget, reuse of freed buffers within it, and never reusing a
buffer that something still reads."""

from __future__ import annotations

import pytest
import trio

from s3mount.buffers import Part, PartBody, WriteBudget
from s3mount.config import MiB


async def test_freed_buffers_are_reused_within_the_budget() -> None:
    budget = WriteBudget(24 * MiB)
    parts = [Part(n, 8 * MiB, await budget.acquire(8 * MiB), budget) for n in (1, 2, 3)]
    mems = {id(p.mem) for p in parts}
    for p in parts:
        p.free(budget)
    assert budget.used == 0 and budget.kept_bytes == 24 * MiB
    again = Part(4, 8 * MiB, await budget.acquire(8 * MiB), budget)
    assert id(again.mem) in mems and budget.kept_bytes == 16 * MiB
    # A part of another size drops kept buffers until in-use plus kept fit the budget.
    big = Part(5, 16 * MiB, await budget.acquire(16 * MiB), budget)
    assert budget.used == 24 * MiB and budget.kept_bytes == 0
    again.free(budget)
    big.free(budget)
    assert budget.used + budget.kept_bytes <= budget.capacity
    budget.trim()
    assert budget.kept_bytes == 0


async def test_buffer_with_a_live_view_is_not_reused() -> None:
    budget = WriteBudget(16 * MiB)
    part = Part(1, 8 * MiB, await budget.acquire(8 * MiB), budget)
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
