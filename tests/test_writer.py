"""The streaming uploader against the real server, with faults injected by a wrapped store."""

from __future__ import annotations

import errno
import io
import logging
import os
from dataclasses import replace
from typing import Any

import pytest
import trio

from s3mount.config import Config, MiB
from s3mount.errors import FsError, IntegrityError
from s3mount.etag import stream_etag
from s3mount.schedule import PartSchedule
from s3mount.store import S3Store
from s3mount.writer import Upload, Uploads, UploadState
from tests.conftest import get, keys, open_uploads
from tests.faults import FaultyStore

P = 5 * MiB


def uploads(config: Config, nursery: trio.Nursery, store: Any = None) -> Uploads:
    return Uploads(config, store or S3Store(config), nursery)


async def write_all(up: Upload, data: bytes, chunk: int = 1 * MiB) -> None:
    for off in range(0, len(data), chunk):
        assert await up.write(off, data[off:off + chunk]) == len(data[off:off + chunk])


def expected_etag(data: bytes, config: Config) -> str:
    return stream_etag(io.BytesIO(data), PartSchedule(config.part_size,
                                                      config.part_growth_every))


def head_etag(s3: Any, bucket: str, key: str) -> str:
    return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')  # type: ignore[no-any-return]


@pytest.mark.parametrize("size", [0, 1, P - 1, P, P + 1, 2 * P, 2 * P + 1])
@pytest.mark.parametrize("chunk", [1 * MiB, 1_000_003])
async def test_sizes_round_trip_and_verify(config: Config, s3: Any, bucket: str,
                                           nursery: trio.Nursery, size: int,
                                           chunk: int) -> None:
    data = os.urandom(size)
    mgr = uploads(config, nursery)
    up = mgr.start("f.bin")
    await write_all(up, data, chunk)
    info = await up.complete()
    assert get(s3, bucket, "f.bin") == data
    etag = head_etag(s3, bucket, "f.bin")
    assert etag == info.etag == expected_etag(data, config)
    assert ("-" in etag) == (size > P)  # a stream that ends in its first part is one PUT
    assert open_uploads(s3, bucket) == []
    assert mgr.budget.used == 0


async def test_schedule_stage_crossing(config: Config, s3: Any, bucket: str,
                                       nursery: trio.Nursery) -> None:
    config = replace(config, part_growth_every=2, max_memory=40 * MiB)
    data = os.urandom(31 * MiB)  # parts 5, 5, 10, 10, 1 MiB
    up = uploads(config, nursery).start("grow.bin")
    await write_all(up, data)
    await up.complete()
    assert up.parts_started == 5
    assert get(s3, bucket, "grow.bin") == data
    assert up.result is not None
    # Parts 3-5 are bigger than a 5 MiB buffer: assembled by the server (test_bigparts.py),
    # whose copy answers on SeaweedFS are no MD5s, so they were proven by reading them back
    # and the object's ETag is the server's own (part 5, 1 MiB, one chunk: its copy answer
    # is its MD5, which proves it).
    assert sorted(n for n, *_ in up.read_back) == [3, 4]
    assert head_etag(s3, bucket, "grow.bin") == up.result.etag
    assert expected_etag(data, config).endswith("-5") and up.result.etag.endswith("-5")


@pytest.mark.expect_log(r"^s3mount\.writer: c\.bin: part \d+ came back with ETag 0{32}, expected")
async def test_corrupt_part_etag_is_resent(config: Config, s3: Any, bucket: str,
                                           nursery: trio.Nursery,
                                           caplog: pytest.LogCaptureFixture) -> None:
    store = FaultyStore(S3Store(config))
    store.corrupt_part_etags = 1
    data = os.urandom(2 * P + 7)
    up = uploads(config, nursery, store).start("c.bin")
    await write_all(up, data)
    with caplog.at_level(logging.WARNING):
        await up.complete()
    assert get(s3, bucket, "c.bin") == data
    assert any("sending it again" in r.message for r in caplog.records)
    sends = sorted(store.calls.count(f"part {n}") for n in (1, 2, 3))
    assert sends == [1, 1, 2]  # three parts, one of them sent twice


@pytest.mark.parametrize("fault", ["corrupt", "fail"])
@pytest.mark.expect_log(r"^s3mount\.writer: bad\.bin: part \d+ came back with ETag 0{32}, expected")
async def test_persistent_part_fault_fails_close_and_leaves_nothing(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery, fault: str) -> None:
    store = FaultyStore(S3Store(config))
    if fault == "corrupt":
        store.corrupt_part_etags = 1000
    else:
        store.fail_parts = 1000
    up = uploads(config, nursery, store).start("bad.bin")
    with pytest.raises(FsError) as exc:
        await write_all(up, os.urandom(3 * P))
        await up.complete()
    assert exc.value.errno_ == errno.EIO
    if fault == "corrupt":
        with pytest.raises(IntegrityError):
            await up.complete()
    assert keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []


async def test_final_etag_mismatch_removes_object(config: Config, s3: Any, bucket: str,
                                                  nursery: trio.Nursery) -> None:
    store = FaultyStore(S3Store(config))
    store.wrong_head_etag = True
    up = uploads(config, nursery, store).start("v.bin")
    await write_all(up, os.urandom(P + 1))
    with pytest.raises(IntegrityError, match="verification failed"):
        await up.complete()
    assert keys(s3, bucket) == []


async def test_failed_single_put_leaves_nothing(config: Config, s3: Any, bucket: str,
                                                nursery: trio.Nursery) -> None:
    store = FaultyStore(S3Store(config))
    store.fail_puts = 1
    up = uploads(config, nursery, store).start("s.bin")
    await write_all(up, b"small")
    with pytest.raises(FsError):
        await up.complete()
    assert keys(s3, bucket) == []


async def test_rewrite_outside_the_window_aborts(config: Config, s3: Any, bucket: str,
                                                nursery: trio.Nursery) -> None:
    up = uploads(config, nursery).start("o.bin")
    await write_all(up, os.urandom(3 * P + 10))  # part 1 held, 2 and 3 sent, 4 being filled
    assert open_uploads(s3, bucket) == ["o.bin"]
    with pytest.raises(FsError) as exc:
        await up.write(P + 3, b"x")
    assert exc.value.errno_ == errno.EINVAL
    msg = str(exc.value)
    assert "o.bin: write of 1 bytes at offset 5242883 is outside the rewrite window" in msg
    assert f"bytes 0-{P} (part 1), bytes {3 * P}-{3 * P + 10} (part 4)" in msg
    with pytest.raises(FsError):
        await up.write(3 * P + 10, b"y")
    with pytest.raises(FsError):
        await up.complete()
    assert open_uploads(s3, bucket) == []
    assert keys(s3, bucket) == []


async def finish(up: Upload, s3: Any, bucket: str, want: bytes, config: Config) -> None:
    """Complete `up` and check that the object holds `want`, with the predicted ETag."""
    info = await up.complete()
    assert info.size == len(want)
    assert get(s3, bucket, up.key) == want
    assert head_etag(s3, bucket, up.key) == info.etag == expected_etag(want, config)
    assert open_uploads(s3, bucket) == []
    assert up.mgr.budget.used == 0


async def test_rewrites_in_part_one_and_the_tail_are_applied(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery) -> None:
    data = bytearray(os.urandom(2 * P + 100))  # part 1 held, part 2 sent, part 3 filling
    up = uploads(config, nursery).start("r.bin")
    await write_all(up, bytes(data))
    patches = [(0, 32), (P - 16, 16), (2 * P, 8), (2 * P + 90, 20)]  # the last one extends
    for off, n in patches:
        patch = os.urandom(n)
        assert await up.write(off, patch) == n
        data[off:off + n] = patch
    assert up.bytes_written == len(data) == 2 * P + 110
    await finish(up, s3, bucket, bytes(data), config)
    assert head_etag(s3, bucket, "r.bin").endswith("-3")


@pytest.mark.parametrize(("off", "n", "ok"), [
    (P - 1, 1, True),  # last byte of part 1
    (P - 1, 2, False),  # ... and the first of part 2, already sent
    (2 * P - 1, 1, False),  # last byte of part 2
    (2 * P, 1, True),  # first byte of the part being filled
    (2 * P + 99, 5, True),  # the last byte written, and on past the end
])
async def test_window_edges(config: Config, s3: Any, bucket: str, nursery: trio.Nursery,
                            off: int, n: int, ok: bool) -> None:
    data = bytearray(os.urandom(2 * P + 100))
    up = uploads(config, nursery).start("e.bin")
    await write_all(up, bytes(data))
    if not ok:
        with pytest.raises(FsError) as exc:
            await up.write(off, b"z" * n)
        assert exc.value.errno_ == errno.EINVAL and f"at offset {off} " in str(exc.value)
        assert open_uploads(s3, bucket) == [] and keys(s3, bucket) == []
        return
    await up.write(off, b"z" * n)
    data[off:off + n] = b"z" * n
    await finish(up, s3, bucket, bytes(data), config)


async def test_patch_across_part_one_and_two_while_two_fills(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery) -> None:
    data = bytearray(os.urandom(P + 100))
    up = uploads(config, nursery).start("x.bin")
    await write_all(up, bytes(data))
    await up.write(P - 10, b"q" * 20)
    data[P - 10:P + 10] = b"q" * 20
    await finish(up, s3, bucket, bytes(data), config)


@pytest.mark.parametrize("hole", [
    (100, 2 * P + 7),  # from inside part 1 across part 2 into part 3
    (P, 2 * P),  # exactly part 2
    (0, 3 * P + 1),  # a file that starts with a hole
])
async def test_holes_are_zeros_across_part_boundaries(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery,
        hole: tuple[int, int]) -> None:
    mgr = uploads(config, nursery)
    up = mgr.start("h.bin")  # keeps freed buffers from the trim
    # An upload of random bytes first: its freed buffers are reused for the holes below.
    first = mgr.start("noise.bin")
    await write_all(first, os.urandom(4 * P))
    await first.complete()
    assert mgr.budget.kept_bytes > 0
    start, end = hole
    head, tail = os.urandom(start), os.urandom(P // 2 + 3)
    await write_all(up, head)
    await up.write(end, tail)
    assert up.bytes_written == end + len(tail)
    await finish(up, s3, bucket, head + bytes(end - start) + tail, config)
    assert mgr.budget.peak <= config.max_memory


async def test_a_hole_that_ends_part_one_exactly_is_one_put(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery) -> None:
    up = uploads(config, nursery).start("p.bin")
    await up.write(P - 1, b"!")
    await finish(up, s3, bucket, bytes(P - 1) + b"!", config)
    assert "-" not in head_etag(s3, bucket, "p.bin")


async def test_truncate_up_promises_zeros_at_close(config: Config, s3: Any, bucket: str,
                                                   nursery: trio.Nursery) -> None:
    mgr = uploads(config, nursery)
    up = mgr.start("t.bin")
    await up.truncate(2 * P + 3)  # truncate -s, then sequential writes from 0
    assert up.bytes_written == 2 * P + 3 and up.end == 0
    head = os.urandom(P + 5)
    await write_all(up, head)
    assert up.bytes_written == 2 * P + 3
    await finish(up, s3, bucket, head + bytes(P - 2), config)
    # written past the promise: the writes decide the size
    up = mgr.start("u.bin")
    await up.truncate(10)
    await up.write(0, b"a" * 20)
    await finish(up, s3, bucket, b"a" * 20, config)


async def test_truncate_down_within_the_window(config: Config, s3: Any, bucket: str,
                                               nursery: trio.Nursery) -> None:
    mgr = uploads(config, nursery)
    data = os.urandom(P + 100)  # part 2 started, the multipart upload with it
    up = mgr.start("d.bin")
    await write_all(up, data)
    assert open_uploads(s3, bucket) == ["d.bin"]
    await up.truncate(1000)  # back into part 1: one PUT, the multipart upload aborted
    await up.write(1000, b"end")
    await finish(up, s3, bucket, data[:1000] + b"end", config)
    assert "-" not in head_etag(s3, bucket, "d.bin")
    up = mgr.start("e.bin")
    data = os.urandom(2 * P + 100)
    await write_all(up, data)
    await up.truncate(2 * P + 50)  # within the part being filled
    await finish(up, s3, bucket, data[:2 * P + 50], config)


async def test_truncate_down_outside_the_window_aborts(config: Config, s3: Any, bucket: str,
                                                       nursery: trio.Nursery) -> None:
    up = uploads(config, nursery).start("o.bin")
    await write_all(up, os.urandom(2 * P + 100))
    with pytest.raises(FsError) as exc:
        await up.truncate(P + 1)  # part 2 was sent
    assert exc.value.errno_ == errno.EOPNOTSUPP
    assert "truncate to 5242881 bytes is not supported" in str(exc.value)
    with pytest.raises(FsError):
        await up.complete()
    assert open_uploads(s3, bucket) == [] and keys(s3, bucket) == []


async def test_part_one_is_sent_early_when_the_budget_has_no_room(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery) -> None:
    """With --max-memory of one part, part 1 cannot be held: it goes when part 2 needs
    room, the stream goes on, and a later patch of part 1 is refused."""
    config = replace(config, max_memory=P)
    mgr = uploads(config, nursery)
    data = os.urandom(3 * P + 1)
    up = mgr.start("s.bin")
    with trio.fail_after(30):
        await write_all(up, data)
    await finish(up, s3, bucket, data, config)
    assert mgr.budget.peak <= P
    up = mgr.start("t.bin")
    await write_all(up, data)
    with pytest.raises(FsError, match="part 1 was already sent: --max-memory was full"):
        await up.write(0, b"header")


async def test_start_empty_then_truncate_to_zero(config: Config, s3: Any, bucket: str,
                                                 nursery: trio.Nursery) -> None:
    """ftruncate(0) before the first write changes nothing: the upload starts empty."""
    up = uploads(config, nursery).start("z.bin")
    await up.truncate(0)
    assert up.bytes_written == 0
    await up.write(0, b"new")
    await finish(up, s3, bucket, b"new", config)


async def test_write_after_complete_is_refused(config: Config, nursery: trio.Nursery,
                                               bucket: str) -> None:
    up = uploads(config, nursery).start("w.bin")
    await up.write(0, b"abc")
    await up.complete()
    with pytest.raises(FsError) as exc:
        await up.write(3, b"d")
    assert exc.value.errno_ == errno.EBADF
    assert (await up.complete()).size == 3  # idempotent


async def test_concurrent_uploads_keep_the_budget(config: Config, s3: Any, bucket: str,
                                                  nursery: trio.Nursery) -> None:
    store = FaultyStore(S3Store(config))
    store.part_delay = 0.05  # slow parts: writers must wait for budget (backpressure)
    mgr = uploads(config, nursery, store)
    payloads = {f"c{i}.bin": os.urandom(2 * P + i * 1000) for i in range(16)}

    async def one(key: str, data: bytes) -> None:
        up = mgr.start(key)
        await write_all(up, data)
        await up.complete()

    async with trio.open_nursery() as n:
        for key, data in payloads.items():
            n.start_soon(one, key, data)
    assert mgr.budget.peak <= config.max_memory
    assert mgr.budget.peak >= 3 * P  # it was actually used concurrently
    for key, data in payloads.items():
        assert head_etag(s3, bucket, key) == expected_etag(data, config)
    assert sorted(keys(s3, bucket)) == sorted(payloads)


class CountingStore(FaultyStore):
    """Slow parts, and the most sent at once (before `closing` is set)."""

    def __init__(self, inner: S3Store, delay: float) -> None:
        super().__init__(inner)
        self.part_delay, self.sending, self.most, self.closing = delay, 0, 0, False
        self.sent: list[int] = []

    async def upload_part(self, key: str, upload_id: str, number: int, body: Any,
                          md5: bytes, checksum: Any = None) -> Any:
        self.sending += 1
        if not self.closing:
            self.most = max(self.most, self.sending)
        try:
            return await super().upload_part(key, upload_id, number, body, md5, checksum)
        finally:
            self.sending -= 1
            self.sent.append(number)


async def test_the_default_budget_keeps_two_parts_at_the_server_while_part_one_is_held(
        config: Config, s3: Any, bucket: str, nursery: trio.Nursery) -> None:
    """With the default --part-size and --max-memory (6 MiB, 24 MiB: four buffers), a stream
    holds part 1, fills one part and has two more at the server; when the writer needs room,
    the part it just filled is sent too (three at once). With 8 MiB parts it was one, and two."""
    defaults = Config(bucket="b", mountpoint="/m")
    config = replace(config, part_size=defaults.part_size, max_memory=defaults.max_memory)
    assert config.max_memory // config.part_size == 4
    store = CountingStore(S3Store(config), delay=0.5)
    mgr = uploads(config, nursery, store)
    data = os.urandom(6 * config.part_size + 1)
    up = mgr.start("d.bin")
    with trio.fail_after(60):
        await write_all(up, data)
        assert 1 not in store.sent  # part 1 is held for patches until close
        store.closing = True
        await finish(up, s3, bucket, data, config)
    assert store.most == 3
    assert mgr.budget.peak <= config.max_memory
    assert sorted(store.sent) == list(range(1, 8))


@pytest.mark.expect_log(
    r"^s3mount\.writer: slow\.bin: upload aborted: aborted: SIGTERM received twice$",
)
async def test_abort_all_stops_completing_uploads_too(config: Config, s3: Any, bucket: str,
                                                     nursery: trio.Nursery) -> None:
    """A second SIGTERM: uploads still completing (closed, parts in flight) are aborted."""
    store = FaultyStore(S3Store(config))
    store.part_delay = 1.0
    mgr = uploads(config, nursery, store)
    up = mgr.start("slow.bin")
    await write_all(up, os.urandom(2 * P + 1))
    outcome: list[BaseException | None] = []

    async def close() -> None:
        try:
            await up.complete()
            outcome.append(None)
        except FsError as exc:
            outcome.append(exc)

    nursery.start_soon(close)
    await trio.sleep(0.2)
    assert up.state is UploadState.COMPLETING
    assert await mgr.abort_all("aborted: SIGTERM received twice") == 1
    await up.done.wait()
    await trio.sleep(0.1)
    assert up.state is UploadState.FAILED and isinstance(outcome[0], FsError)
    assert keys(s3, bucket) == [] and open_uploads(s3, bucket) == []
    assert mgr.failed == 1 and mgr.completed == 0


@pytest.mark.expect_log(
    r"^s3mount\.writer: open\.bin: upload aborted: the file was still open when the mount stopped$",
)
async def test_shutdown_aborts_open_uploads(config: Config, s3: Any, bucket: str,
                                            nursery: trio.Nursery) -> None:
    mgr = uploads(config, nursery)
    up = mgr.start("open.bin")
    await write_all(up, os.urandom(P + 1))
    done = mgr.start("done.bin")
    await done.write(0, b"ok")
    await done.complete()
    await mgr.shutdown()
    assert up.state is UploadState.FAILED
    assert keys(s3, bucket) == ["done.bin"]
    assert open_uploads(s3, bucket) == []
