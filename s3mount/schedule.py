"""The part-size schedule: how a write stream of unknown length is cut into multipart parts.

Parts are numbered from 1, as in S3. The first ``growth_every`` parts have ``part_size`` bytes;
each later stage has ``min(growth_every, LATER_STAGE_PARTS)`` parts (100 by default) of twice
the size of the stage before, until the size reaches S3's largest part (5 GiB); from that stage
on it stays there. So the default (6 MiB x 1000, then 100 parts per doubling) keeps a stream
under 5.8 GiB in 6 MiB parts and reaches 40.1 TiB in one stream of unknown length; a small
``growth_every`` (tests, benchmarks) compresses every stage alike. No part number exceeds S3's limit
of 10,000 parts, so the schedule has a finite capacity: the longest stream it can hold.

Stages are numbered from 0, so before the cap a part of stage ``k`` has ``part_size * 2**k``
bytes. The stage where the size reaches the cap is the last one and runs to part 10,000, so a
schedule has at most a dozen stages and every computation here loops over stages, not parts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from s3mount.config import (
    LATER_STAGE_PARTS,
    S3_MAX_PART,
    S3_MAX_PARTS,
    S3_MIN_PART,
    Config,
    GiB,
    KiB,
    MiB,
    TiB,
)


@dataclass(frozen=True)
class Stage:
    """A run of consecutive parts of one size; ``part_size`` is also the buffer memory it needs."""

    index: int
    first_part: int
    last_part: int
    part_size: int
    cumulative_bytes: int  # bytes parts 1..last_part hold together

    @property
    def parts(self) -> int:
        return self.last_part - self.first_part + 1


@dataclass(frozen=True)
class PartSchedule:
    """Part sizes that double after ``growth_every`` parts, then after every
    ``later_every`` parts, within S3's limits. The defaults are the mount's (`Config`)."""

    part_size: int = Config.part_size
    growth_every: int = Config.part_growth_every

    def __post_init__(self) -> None:
        if not S3_MIN_PART <= self.part_size <= S3_MAX_PART:
            raise ValueError(
                f"part_size must be between {human_size(S3_MIN_PART)} and "
                f"{human_size(S3_MAX_PART)} (S3's limits), not {self.part_size} bytes"
            )
        if self.growth_every < 1:
            raise ValueError(f"growth_every must be at least 1 part, not {self.growth_every}")

    @property
    def last_stage(self) -> int:
        """Index of the final stage: the one that reaches the cap or holds part 10,000."""
        cap_stage = 0
        while (self.part_size << cap_stage) < S3_MAX_PART:
            cap_stage += 1
        if self.growth_every >= S3_MAX_PARTS:
            return 0
        return min(cap_stage, 1 + (S3_MAX_PARTS - 1 - self.growth_every) // self.later_every)

    @property
    def later_every(self) -> int:
        """Parts in each stage after the first."""
        return min(self.growth_every, LATER_STAGE_PARTS)

    def _first_part_of(self, index: int) -> int:
        return 1 if index == 0 else self.growth_every + (index - 1) * self.later_every + 1

    def stage_of(self, n: int) -> int:
        """Index (from 0) of the stage that part ``n`` belongs to."""
        _check_part_number(n)
        if n <= self.growth_every:
            return 0
        return min(1 + (n - 1 - self.growth_every) // self.later_every, self.last_stage)

    def size_of(self, n: int) -> int:
        """Size in bytes of part ``n`` (1-based)."""
        return self._stage_size(self.stage_of(n))

    def stages(self) -> list[Stage]:
        """The stages in order; together they cover parts 1..10,000."""
        return list(self._iter_stages())

    def capacity(self, parts: int = S3_MAX_PARTS) -> int:
        """Bytes that parts 1..``parts`` hold together (0 for ``parts == 0``)."""
        if not 0 <= parts <= S3_MAX_PARTS:
            raise ValueError(f"parts must be between 0 and {S3_MAX_PARTS}, not {parts}")
        total = 0
        for stage in self._iter_stages():
            if stage.first_part > parts:
                break
            total += (min(parts, stage.last_part) - stage.first_part + 1) * stage.part_size
        return total

    def part_count(self, total_bytes: int) -> int:
        """How many parts a stream of ``total_bytes`` is cut into (0 for an empty stream)."""
        self._check_total(total_bytes)
        previous = 0
        for stage in self._iter_stages():
            if total_bytes <= stage.cumulative_bytes:
                before = stage.first_part - 1
                return before + _ceil_div(total_bytes - previous, stage.part_size)
            previous = stage.cumulative_bytes
        raise AssertionError("unreachable: total_bytes was checked against capacity")

    def parts_for(self, total_bytes: int) -> list[int]:
        """Sizes of the parts a stream of ``total_bytes`` is cut into; the last may be short."""
        count = self.part_count(total_bytes)
        sizes: list[int] = []
        for stage in self._iter_stages():
            if stage.first_part > count:
                break
            sizes.extend([stage.part_size] * (min(count, stage.last_part) - stage.first_part + 1))
        if sizes:
            sizes[-1] -= sum(sizes) - total_bytes
        return sizes

    def _stage_size(self, index: int) -> int:
        return min(self.part_size << index, S3_MAX_PART)

    def _iter_stages(self) -> Iterator[Stage]:
        cumulative = 0
        last = self.last_stage
        for index in range(last + 1):
            first = self._first_part_of(index)
            end = S3_MAX_PARTS if index == last else self._first_part_of(index + 1) - 1
            size = self._stage_size(index)
            cumulative += (end - first + 1) * size
            yield Stage(index, first, end, size, cumulative)

    def _check_total(self, total_bytes: int) -> None:
        if total_bytes < 0:
            raise ValueError(f"a stream cannot have {total_bytes} bytes")
        if total_bytes > self.capacity():
            raise ValueError(
                f"{total_bytes} bytes exceed the schedule's capacity of {self.capacity()} bytes "
                f"({human_size(self.capacity())}) in {S3_MAX_PARTS} parts"
            )


def describe(schedule: PartSchedule, memory: int | None = None) -> str:
    """The stages of ``schedule`` as a markdown table, for the docs; with ``memory`` (the
    write budget), a column of the write memory each stage needs: the same at every stage,
    since big parts are assembled by the server (assembler.py)."""
    lines = [
        "| stage | parts | part size | reaches |" + (" write memory |" if memory else ""),
        "|------:|------:|----------:|--------:|" + ("-------------:|" if memory else ""),
    ]
    for stage in schedule.stages():
        lines.append(
            f"| {stage.index} | {stage.first_part}–{stage.last_part} "
            f"| {human_size(stage.part_size)} | {human_size(stage.cumulative_bytes)} |"
            + (f" {human_size(memory)} |" if memory else "")
        )
    return "\n".join(lines) + "\n"


def human_size(n: int) -> str:
    """``n`` bytes in the largest binary unit it reaches, e.g. "8 MiB" or "7.80 TiB"."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit:
            if n % unit == 0:
                return f"{n // unit} {name}"
            hundredths = n * 100 // unit  # rounded down, so a capacity is never overstated
            return f"{hundredths // 100}.{hundredths % 100:02d} {name}"
    return f"{n} B"


def _check_part_number(n: int) -> None:
    if not 1 <= n <= S3_MAX_PARTS:
        raise ValueError(f"part numbers run from 1 to {S3_MAX_PARTS}, not {n}")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
