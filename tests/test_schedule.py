"""The part-size schedule stays within S3's limits and covers the lengths it promises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3mount.config import S3_MAX_PART, S3_MAX_PARTS, S3_MIN_PART, GiB, MiB, TiB
from s3mount.schedule import PartSchedule, Stage, describe, human_size

part_sizes = st.integers(S3_MIN_PART, S3_MAX_PART)
growths = st.integers(1, S3_MAX_PARTS + 5)
schedules = st.builds(PartSchedule, part_sizes, growths)
# Small growth values make every stage, including the capped one, appear within few parts.
small_schedules = st.builds(PartSchedule, part_sizes, st.integers(1, 20))
part_numbers = st.integers(1, S3_MAX_PARTS)


def brute_force_sizes(schedule: PartSchedule) -> list[int]:
    """Part sizes 1..10,000 straight from the definition."""
    sizes = []
    size = schedule.part_size
    for n in range(1, S3_MAX_PARTS + 1):
        sizes.append(min(size, S3_MAX_PART))
        later = n - schedule.growth_every
        if later == 0 or later > 0 and later % min(schedule.growth_every, 100) == 0:
            size *= 2
    return sizes


def test_defaults() -> None:
    schedule = PartSchedule()
    assert (schedule.part_size, schedule.growth_every) == (6 * MiB, 1000)
    assert schedule.capacity() >= 5 * TiB
    assert schedule.capacity() >= 40 * TiB  # the issue asks for 40 TiB in one stream
    assert schedule.capacity(1000) == 1000 * 6 * MiB  # 5.86 GiB in 6 MiB parts: no big part
    assert schedule.capacity() == 1000 * 6 * MiB + 100 * 6 * MiB * (2**10 - 2) + 8100 * 5 * (
        1024 * MiB)  # 40.14 TiB
    assert schedule.size_of(S3_MAX_PARTS) == 5 * GiB
    assert max(stage.part_size for stage in schedule.stages()) == 5 * GiB
    assert len(schedule.stages()) == 11


def test_defaults_first_and_stage_boundaries() -> None:
    schedule = PartSchedule()
    assert schedule.size_of(1) == 6 * MiB
    assert schedule.size_of(1000) == 6 * MiB
    assert schedule.size_of(1001) == 12 * MiB
    assert schedule.stage_of(1000) == 0
    assert schedule.stage_of(1001) == 1
    assert schedule.size_of(1100) == 12 * MiB
    assert schedule.size_of(1101) == 24 * MiB
    assert schedule.stage_of(S3_MAX_PARTS) == 10


def test_cap_at_max_part() -> None:
    schedule = PartSchedule(part_size=5 * MiB, growth_every=1)
    assert schedule.size_of(10) == 2560 * MiB
    assert schedule.size_of(11) == S3_MAX_PART
    assert schedule.size_of(S3_MAX_PARTS) == S3_MAX_PART
    last = schedule.stages()[-1]
    assert (last.first_part, last.last_part, last.part_size) == (11, S3_MAX_PARTS, S3_MAX_PART)


@given(schedules, part_numbers)
def test_every_size_within_s3_limits(schedule: PartSchedule, n: int) -> None:
    assert S3_MIN_PART <= schedule.size_of(n) <= S3_MAX_PART


@given(schedules, part_numbers, part_numbers)
def test_sizes_never_shrink(schedule: PartSchedule, a: int, b: int) -> None:
    a, b = sorted((a, b))
    assert schedule.size_of(a) <= schedule.size_of(b)
    assert schedule.stage_of(a) <= schedule.stage_of(b)


@given(schedules, part_numbers)
def test_size_of_agrees_with_stages(schedule: PartSchedule, n: int) -> None:
    stage = schedule.stages()[schedule.stage_of(n)]
    assert stage.first_part <= n <= stage.last_part
    assert schedule.size_of(n) == stage.part_size


@given(schedules)
def test_stages_tile_all_parts(schedule: PartSchedule) -> None:
    stages = schedule.stages()
    assert [s.index for s in stages] == list(range(len(stages)))
    assert stages[0].first_part == 1
    assert stages[-1].last_part == S3_MAX_PARTS
    for before, after in zip(stages, stages[1:], strict=False):
        assert after.first_part == before.last_part + 1
        assert after.part_size > before.part_size
        assert after.cumulative_bytes == before.cumulative_bytes + after.parts * after.part_size
    assert stages[0].cumulative_bytes == stages[0].parts * stages[0].part_size
    assert stages[-1].cumulative_bytes == schedule.capacity()
    assert len(stages) <= 12


@given(small_schedules, st.integers(0, S3_MAX_PARTS))
def test_capacity_is_sum_of_sizes(schedule: PartSchedule, parts: int) -> None:
    assert schedule.capacity(parts) == sum(brute_force_sizes(schedule)[:parts])


@pytest.mark.parametrize("growth", [1, 2, 3, 7, 999, 1000, 1001, 3333, 9999, 10_000, 20_000])
def test_sizes_match_definition(growth: int) -> None:
    schedule = PartSchedule(part_size=6 * MiB, growth_every=growth)
    sizes = brute_force_sizes(schedule)
    assert [schedule.size_of(n) for n in range(1, S3_MAX_PARTS + 1)] == sizes
    assert schedule.capacity() == sum(sizes)


@given(schedules, st.data())
def test_parts_for_cuts_stream(schedule: PartSchedule, data: st.DataObject) -> None:
    total = data.draw(st.integers(0, schedule.capacity()), label="total")
    sizes = schedule.parts_for(total)
    assert sum(sizes) == total
    assert len(sizes) == schedule.part_count(total) <= S3_MAX_PARTS
    assert all(size > 0 for size in sizes)
    for n, size in enumerate(sizes[:-1], start=1):
        assert size == schedule.size_of(n) >= S3_MIN_PART
    if sizes:
        assert 0 < sizes[-1] <= schedule.size_of(len(sizes))
        # The stream ends inside its last part: no fewer parts could hold it.
        assert schedule.capacity(len(sizes) - 1) < total <= schedule.capacity(len(sizes))


@given(schedules)
def test_parts_for_edges(schedule: PartSchedule) -> None:
    assert schedule.parts_for(0) == []
    assert schedule.parts_for(1) == [1]
    assert schedule.parts_for(schedule.part_size) == [schedule.part_size]
    assert schedule.parts_for(schedule.part_size + 1) == [schedule.part_size, 1]
    assert len(schedule.parts_for(schedule.capacity())) == S3_MAX_PARTS


def test_parts_for_five_tib_with_defaults() -> None:
    schedule = PartSchedule()
    sizes = schedule.parts_for(5 * TiB)
    assert sum(sizes) == 5 * TiB
    assert len(sizes) <= S3_MAX_PARTS
    assert schedule.part_count(5 * TiB) == len(sizes)


@given(schedules)
def test_beyond_capacity_raises(schedule: PartSchedule) -> None:
    with pytest.raises(ValueError, match="capacity"):
        schedule.parts_for(schedule.capacity() + 1)
    with pytest.raises(ValueError):
        schedule.part_count(-1)


@pytest.mark.parametrize("n", [0, -1, S3_MAX_PARTS + 1])
def test_part_number_out_of_range(n: int) -> None:
    schedule = PartSchedule()
    with pytest.raises(ValueError, match="part numbers"):
        schedule.size_of(n)
    with pytest.raises(ValueError, match="part numbers"):
        schedule.stage_of(n)


@pytest.mark.parametrize("parts", [-1, S3_MAX_PARTS + 1])
def test_capacity_out_of_range(parts: int) -> None:
    with pytest.raises(ValueError):
        PartSchedule().capacity(parts)


def test_capacity_of_no_parts() -> None:
    assert PartSchedule().capacity(0) == 0


@given(st.one_of(st.integers(max_value=S3_MIN_PART - 1), st.integers(min_value=S3_MAX_PART + 1)))
def test_invalid_part_size(part_size: int) -> None:
    with pytest.raises(ValueError, match="part_size"):
        PartSchedule(part_size=part_size)


@given(st.integers(max_value=0))
def test_invalid_growth(growth: int) -> None:
    with pytest.raises(ValueError, match="growth_every"):
        PartSchedule(growth_every=growth)


def test_stage_fields() -> None:
    first = PartSchedule().stages()[0]
    assert first == Stage(0, 1, 1000, 6 * MiB, 6000 * MiB)
    assert first.parts == 1000


def test_describe_defaults() -> None:
    table = describe(PartSchedule())
    lines = table.splitlines()
    assert lines[0] == "| stage | parts | part size | reaches |"
    assert len(lines) == 2 + 11
    assert lines[2] == "| 0 | 1–1000 | 6 MiB | 5.85 GiB |"
    assert lines[-1] == "| 10 | 1901–10000 | 5 GiB | 40.14 TiB |"


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.50 KiB"),
        (8 * MiB, "8 MiB"),
        (5 * GiB - 5 * MiB, "4.99 GiB"),  # rounded down, never up
        (3 * TiB, "3 TiB"),
    ],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text
