"""One contract for every `Store`: S3Store against SeaweedFS, S3Store against moto's server, and
the in-memory MemStore (level 1). AWS S3 is the reference; MemStore follows it.

Where a server is known to answer otherwise, the test says so through `KNOWN` and asserts the
server's own answer instead, so that a difference is never skipped silently and a server that
changes its answer fails the test until this table is corrected.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from s3mount import checksum
from s3mount.config import MiB
from s3mount.errors import (
    NoSuchKey,
    PreconditionFailed,
    SizeMismatch,
    StoreError,
    TransientError,
)
from s3mount.etag import multipart_etag
from s3mount.objects import ObjectInfo, Store
from s3mount.store import S3Store
from tests.memstore import MemStore

P = 5 * MiB  # S3's minimum size of a part that is not the last

# What each server is known to answer differently from AWS S3 (DESIGN.md sections 3 and 4),
# found by these tests (SeaweedFS 4.x, moto 5.2).
KNOWN: dict[str, set[str]] = {
    "mem": set(),
    "seaweed": {
        "folds_double_slash",  # a//b is stored as a/b
        "drops_marker_bytes",  # a key ending in / keeps 0 bytes, whatever the PUT sent
        "lists_emptied_prefix",  # a directory stays listed after its last key goes
        "lists_in_name_order",  # a/ comes right after a (before a!), as in a directory tree,
        # and a page may hold one entry more than MaxKeys (a file and a directory of one name)
        "paged_flat_listing_ends_early",  # without a delimiter, a page that ends at a file
        # whose name is also a directory (é and é/x) is the last: the keys below are lost
        "lists_replaced_parts",  # ListParts shows a part sent twice twice
        "lists_uploads_by_id",  # ListMultipartUploads is in upload-id order, not key order
        "parts_count_on_single_part",  # HEAD ?partNumber=1 of a single PUT has PartsCount
        "copy_part_etag_not_md5",  # UploadPartCopy answers the ETag of the source's stored
        # chunks that the range touches: a multipart-style one for a 5 MiB range
        "copy_keeps_multipart_etag",  # CopyObject of a multipart object keeps its ETag
    },
    "moto": {
        "ignores_content_md5",  # a body that does not match Content-MD5 is stored
        "checksum_needs_algorithm",  # a checksum sent without ChecksumAlgorithm (as S3Store
        # sends it) is neither checked, nor echoed, nor stored
        "fake_upload_initiated",  # every upload was initiated on 2010-11-10 20:48:33 UTC
        "ignores_copy_if_match",  # CopySourceIfMatch is not checked
        "part_of_aborted_upload_is_500",  # not 404 NoSuchUpload: retried, then given up
        "composite_without_part_count",  # the composite checksum lacks its "-N"
        "head_part_has_part_etag",  # HEAD ?partNumber=N answers the part's ETag, so If-Match
        # with the object's ETag fails (412): store.part_size asks again unpinned
    },
}
MOTO_INITIATED = datetime.datetime(2010, 11, 10, 20, 48, 33, tzinfo=datetime.UTC).timestamp()

# Retries are warned about as stalls (store.Health): expected where a test makes them.
pytestmark = pytest.mark.expect_log(r"^s3mount\.store: S3 stall")


def _memstore_is_a_store(store: MemStore) -> Store:
    return store  # mypy checks that MemStore implements the protocol


@dataclass
class Target:
    name: str
    store: S3Store | MemStore

    def differs(self, what: str) -> bool:
        return what in KNOWN[self.name]


@pytest.fixture(params=["mem", "seaweed", "moto"])
def target(request: pytest.FixtureRequest) -> Target:
    name = request.param
    if name == "mem":
        return Target(name, MemStore())
    config = request.getfixturevalue("config" if name == "seaweed" else "moto_config")
    # A request the server refuses for good (BadDigest) is retried until the write deadline.
    return Target(name, S3Store(replace(config, write_deadline=1.5, retries=1)))


def md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


async def put(t: Target, key: str, data: bytes = b"") -> ObjectInfo:
    sent = await t.store.put(key, data, md5(data))
    info = await t.store.head(key)
    assert info is not None and info.etag == sent.etag
    return info


def order(t: Target) -> Callable[[str], bytes]:
    return name_order if t.differs("lists_in_name_order") else s3_order


def s3_order(item: str) -> bytes:
    """S3's order: keys and common prefixes by their UTF-8 bytes (prefixes marked `+`)."""
    return item.lstrip("+").encode()


def name_order(item: str) -> bytes:
    """A directory tree's order, depth first by name: `/` sorts before every character."""
    return item.lstrip("+").replace("/", "\0").encode()


async def listing(t: Target, prefix: str = "", delimiter: str | None = "/",
                  max_keys: int = 1000) -> list[str]:
    """Keys and common prefixes (marked with a `+`), page after page."""
    slack = 1 if t.differs("lists_in_name_order") else 0
    out: list[str] = []
    token = None
    while True:
        page = await t.store.list_page(prefix, delimiter, token, max_keys)
        assert len(page.objects) + len(page.prefixes) <= max_keys + slack
        assert page.objects or page.prefixes or page.next_token is None
        out += sorted([o.key for o in page.objects] + ["+" + p for p in page.prefixes],
                      key=order(t))
        if page.next_token is None:
            return out
        token = page.next_token


async def multipart(t: Target, key: str, parts: list[bytes],
                    algo: checksum.Algorithm | None = None) -> str:
    started = await t.store.create_upload(key, algo)
    done = []
    for n, body in enumerate(parts, 1):
        extra = (algo, algo.part(body)) if algo else None
        sent = await t.store.upload_part(key, started.upload_id, n, body, md5(body), extra)
        assert sent.etag == md5(body).hex()
        echoed = extra and not t.differs("checksum_needs_algorithm")
        assert sent.checksum == (extra[1] if extra and echoed else None)
        done.append((n, sent.etag, extra))
    return await t.store.complete_upload(key, started.upload_id, done)


# -- objects -----------------------------------------------------------------------------------


async def test_put_head_delete(target: Target) -> None:
    t = target
    assert await t.store.head("k") is None
    before = time.time()
    sent = await t.store.put("k", b"hello", md5(b"hello"))
    assert sent.etag == md5(b"hello").hex() and sent.checksum is None
    info = await t.store.head("k")
    assert info is not None
    assert (info.key, info.size, info.etag, info.checksum) == ("k", 5, sent.etag, None)
    assert before - 2 <= info.mtime <= time.time() + 1
    await t.store.put("k", b"", md5(b""))  # replaced
    assert (await put(t, "k", b"")).size == 0
    await t.store.delete("k")
    assert await t.store.head("k") is None
    await t.store.delete("k")  # deleting what is not there is no error


@pytest.mark.expect_log(r"^s3mount\.store: PUT k: BadDigest .*; retry \d+ in")
async def test_put_with_wrong_md5_is_bad_digest(target: Target) -> None:
    if target.differs("ignores_content_md5"):
        sent = await target.store.put("k", b"hello", md5(b"other"))
        assert sent.etag == md5(b"hello").hex()
        return
    with pytest.raises(TransientError, match="BadDigest"):
        await target.store.put("k", b"hello", md5(b"other"))
    assert await target.store.head("k") is None


@pytest.mark.parametrize("name", sorted(checksum.ALGORITHMS))
async def test_put_with_checksum_is_echoed_and_stored(target: Target, name: str) -> None:
    algo = checksum.get(name)
    data = b"checked bytes"
    sent = await target.store.put("k", data, md5(data), (algo, algo.part(data)))
    info = await target.store.head("k", checksum=True)
    assert info is not None
    if target.differs("checksum_needs_algorithm"):
        assert sent.checksum is None and info.checksum is None
    else:
        assert sent.checksum == info.checksum == algo.part(data)
    plain = await target.store.head("k")
    assert plain is not None and plain.checksum is None


@pytest.mark.expect_log(r"^s3mount\.store: PUT k: BadDigest .*; retry \d+ in")
async def test_put_with_wrong_checksum_is_refused(target: Target) -> None:
    algo = checksum.get("crc32c")
    wrong = (algo, algo.part(b"other"))
    if target.differs("checksum_needs_algorithm"):
        assert (await target.store.put("k", b"data", md5(b"data"), wrong)).checksum is None
        return
    with pytest.raises(TransientError, match="BadDigest"):
        await target.store.put("k", b"data", md5(b"data"), wrong)
    assert await target.store.head("k") is None


# -- listings ----------------------------------------------------------------------------------

KEYS = ["a", "a!", "a.txt", "a/x", "a/y/z", "b/", "b/c", "c", "d/e/f", "z", "Z", "\u00e9",
        "\u00e9/x"]


async def test_list_with_delimiter_in_key_order(target: Target) -> None:
    for k in KEYS:
        await put(target, k, b"1")
    want = ["+a/", "+b/", "+d/", "+\u00e9/", "Z", "a", "a!", "a.txt", "c", "z", "\u00e9"]
    assert await listing(target) == sorted(want, key=order(target))
    assert await listing(target, "a/") == ["a/x", "+a/y/"]
    assert await listing(target, "b/") == ["b/", "b/c"]  # the marker lists under its prefix
    assert await listing(target, "nothing/") == []
    page = (await target.store.list_page("", "/"))
    assert [o.size for o in page.objects] == [1] * len(page.objects)
    assert all(o.etag == md5(b"1").hex() for o in page.objects)


@pytest.mark.parametrize("max_keys", [1, 2, 3])
async def test_list_pages(target: Target, max_keys: int) -> None:
    for k in KEYS:
        await put(target, k, b"1")
    whole = await listing(target)
    assert await listing(target, max_keys=max_keys) == whole  # a prefix is never repeated
    flat = await listing(target, delimiter=None, max_keys=max_keys)
    want = sorted(KEYS, key=order(target))
    if target.differs("paged_flat_listing_ends_early"):
        lost = set(want) - set(flat)
        assert lost <= {"\u00e9/x"} and (lost or max_keys > 1)
        want = [k for k in want if k not in lost]
    assert flat == want
    assert await listing(target, "a", max_keys=max_keys) == sorted(["a", "a!", "a.txt", "+a/"],
                                                                   key=order(target))


async def test_list_page_is_full_until_the_last(target: Target) -> None:
    for k in ["k1", "k2", "k3", "k4"]:
        await put(target, k)
    first = await target.store.list_page("", "/", None, 2)
    assert [o.key for o in first.objects] == ["k1", "k2"] and first.next_token
    second = await target.store.list_page("", "/", first.next_token, 2)
    assert [o.key for o in second.objects] == ["k3", "k4"]
    assert second.next_token is None  # exactly full and nothing after: not truncated


async def test_double_slash_key(target: Target) -> None:
    await target.store.put("a//b", b"x", md5(b"x"))
    if target.differs("folds_double_slash"):
        assert await listing(target, delimiter=None) == ["a/b"]
    else:
        assert await listing(target, delimiter=None) == ["a//b"]
        assert await listing(target, "a/") == ["+a//"]


async def test_marker_holding_bytes(target: Target) -> None:
    await target.store.put("m/", b"data", md5(b"data"))
    info = await target.store.head("m/")
    assert info is not None
    assert info.size == (0 if target.differs("drops_marker_bytes") else 4)


async def test_emptied_prefix(target: Target) -> None:
    await put(target, "p/x", b"1")
    await put(target, "q", b"1")
    await target.store.delete("p/x")
    if target.differs("lists_emptied_prefix"):  # as a directory entry, "p/" itself
        assert await listing(target) == ["+p/", "q"]
        assert await listing(target, "p/") == ["p/"]
    else:
        assert await listing(target) == ["q"]
        assert await listing(target, "p/") == []


# -- reads -------------------------------------------------------------------------------------


async def test_get_range_pinned_to_the_etag(target: Target) -> None:
    data = bytes(range(256)) * 4
    info = await put(target, "k", data)
    into = bytearray(100)
    await target.store.get_range("k", 500, memoryview(into), info.etag)
    assert into == data[500:600]
    tail = bytearray(24)
    await target.store.get_range("k", 1000, memoryview(tail), info.etag)
    assert tail == data[1000:]
    with pytest.raises(PreconditionFailed, match="changed"):
        await target.store.get_range("k", 0, memoryview(into), "0" * 32)
    await put(target, "k", b"another version")
    with pytest.raises(PreconditionFailed, match="changed"):
        await target.store.get_range("k", 0, memoryview(bytearray(4)), info.etag)
    await target.store.delete("k")
    with pytest.raises(PreconditionFailed, match="deleted"):
        await target.store.get_range("k", 0, memoryview(bytearray(4)), info.etag)


async def test_get_range_past_the_end_fails(target: Target) -> None:
    info = await put(target, "k", b"0123456789")
    # S3 has no such bytes under the same ETag: permanent, EIO at once (no retries)
    with pytest.raises(SizeMismatch, match="size and its bytes disagree"):
        await target.store.get_range("k", 10, memoryview(bytearray(5)), info.etag)
    with pytest.raises(SizeMismatch, match="size and its bytes disagree"):
        await target.store.get_range("k", 5, memoryview(bytearray(10)), info.etag)


# -- multipart uploads -------------------------------------------------------------------------


async def test_multipart_etag_and_listing_of_uploads(target: Target) -> None:
    t = target
    parts = [os.urandom(P), os.urandom(P + 1), b"tail"]
    started = await t.store.create_upload("big")
    other = await t.store.create_upload("other/x")
    # parts in any order; a part sent again replaces the first
    sent = {}
    for n in (3, 1, 2, 1):
        body = parts[n - 1]
        sent[n] = await t.store.upload_part("big", started.upload_id, n, body, md5(body))
    count, size = await t.store.upload_parts("big", started.upload_id)
    if t.differs("lists_replaced_parts"):
        assert (count, size) == (4, sum(map(len, parts)) + len(parts[0]))
    else:
        assert (count, size) == (3, sum(map(len, parts)))
    listed = await t.store.list_uploads()
    want = [("big", started.upload_id), ("other/x", other.upload_id)]
    if t.differs("lists_uploads_by_id"):
        want.sort(key=lambda u: u[1])
    assert [(u.key, u.upload_id) for u in listed] == want
    listed.sort(key=lambda u: u.key)
    assert [u.key for u in await t.store.list_uploads("other/")] == ["other/x"]
    if t.differs("fake_upload_initiated"):
        assert listed[0].initiated == MOTO_INITIATED
    else:
        assert abs(listed[0].initiated - time.time()) < 60
    assert await t.store.head("big") is None  # nothing until completed
    etag = await t.store.complete_upload(
        "big", started.upload_id, [(n, sent[n].etag, None) for n in (1, 2, 3)])
    assert etag == multipart_etag([md5(p) for p in parts])
    info = await t.store.head("big")
    assert info is not None and (info.size, info.etag) == (sum(map(len, parts)), etag)
    into = bytearray(10)
    await t.store.get_range("big", P - 5, memoryview(into), etag)
    assert into == (parts[0] + parts[1])[P - 5:P + 5]
    assert [u.key for u in await t.store.list_uploads()] == ["other/x"]
    await t.store.abort_upload("other/x", other.upload_id)
    assert await t.store.list_uploads() == []


async def test_one_part_upload_is_multipart(target: Target) -> None:
    assert await multipart(target, "one", [b"x"]) == multipart_etag([md5(b"x")])


async def test_small_parts_are_refused_at_completion(target: Target) -> None:
    t = target
    started = await t.store.create_upload("k")
    etags = [(n, (await t.store.upload_part("k", started.upload_id, n, b"ab", md5(b"ab"))).etag,
              None) for n in (1, 2)]
    with pytest.raises(StoreError, match="EntityTooSmall"):
        await t.store.complete_upload("k", started.upload_id, etags)
    assert await t.store.head("k") is None
    await t.store.abort_upload("k", started.upload_id)


@pytest.mark.expect_log(
    r"^s3mount\.store: PART 1 of k: BadDigest .*; retry \d+ in",
    r"^s3mount\.store: (PART 1 of|COMPLETE) k: 500 Internal Server Error; retry \d+ in",
)
async def test_part_with_wrong_md5_and_aborted_upload(target: Target) -> None:
    t = target
    started = await t.store.create_upload("k")
    if t.differs("ignores_content_md5"):
        sent = await t.store.upload_part("k", started.upload_id, 1, b"ab", md5(b"cd"))
        assert sent.etag == md5(b"ab").hex()
    else:
        with pytest.raises(TransientError, match="BadDigest"):
            await t.store.upload_part("k", started.upload_id, 1, b"ab", md5(b"cd"))
    await t.store.abort_upload("k", started.upload_id)
    assert await t.store.list_uploads() == []
    gone = ((TransientError, "500") if t.differs("part_of_aborted_upload_is_500")
            else (NoSuchKey, "NoSuchUpload"))
    with pytest.raises(gone[0], match=gone[1]):
        await t.store.upload_part("k", started.upload_id, 1, b"ab", md5(b"ab"))
    with pytest.raises(gone[0], match=gone[1]):
        await t.store.complete_upload("k", started.upload_id, [(1, md5(b"ab").hex(), None)])


async def test_completion_checks_part_etags(target: Target) -> None:
    t = target
    started = await t.store.create_upload("k")
    await t.store.upload_part("k", started.upload_id, 1, b"ab", md5(b"ab"))
    with pytest.raises(StoreError, match="InvalidPart"):
        await t.store.complete_upload("k", started.upload_id, [(1, "0" * 32, None)])
    await t.store.abort_upload("k", started.upload_id)


@pytest.mark.parametrize("name", sorted(checksum.ALGORITHMS))
async def test_multipart_composite_checksum(target: Target, name: str) -> None:
    algo = checksum.get(name)
    parts = [os.urandom(P), b"end"]
    await multipart(target, "k", parts, algo)
    info = await target.store.head("k", checksum=True)
    assert info is not None
    composite = algo.composite([algo.part(p) for p in parts])
    if target.differs("composite_without_part_count"):
        assert info.checksum == composite.removesuffix("-2")
    else:
        assert info.checksum == composite


# -- copies ------------------------------------------------------------------------------------


async def test_copy_if_match(target: Target) -> None:
    t = target
    info = await put(t, "src", b"payload")
    etag = await t.store.copy("src", "dst", info.etag)
    assert etag == md5(b"payload").hex()
    got = await t.store.head("dst")
    assert got is not None and (got.size, got.etag) == (7, etag)
    if t.differs("ignores_copy_if_match"):
        assert await t.store.copy("src", "dst2", "0" * 32) == etag
    else:
        with pytest.raises(PreconditionFailed):
            await t.store.copy("src", "dst2", "0" * 32)
        assert await t.store.head("dst2") is None
    with pytest.raises(NoSuchKey):
        await t.store.copy("missing", "dst3", info.etag)


async def test_copy_of_a_multipart_object(target: Target) -> None:
    t = target
    parts = [os.urandom(P), b"tail"]
    etag = await multipart(t, "src", parts)
    copied = await t.store.copy("src", "dst", etag)
    if t.differs("copy_keeps_multipart_etag"):
        assert copied == etag
    else:  # one PUT's worth: the MD5 of the bytes
        assert copied == md5(b"".join(parts)).hex()
    into = bytearray(P + 4)
    await t.store.get_range("dst", 0, memoryview(into), copied)
    assert into == b"".join(parts)


async def test_copy_parts_and_part_sizes(target: Target) -> None:
    t = target
    parts = [os.urandom(P), os.urandom(P), b"tail"]
    etag = await multipart(t, "src", parts)
    # (head_part_has_part_etag: the store asks again unpinned once a HEAD shows the object
    # unchanged, so the sizes are known on that server too)
    assert [await t.store.part_size("src", n, etag) for n in (1, 2, 3)] == [P, P, 4]
    with pytest.raises(PreconditionFailed):
        await t.store.part_size("src", 1, "0" * 32)
    single = await put(t, "single", b"abc")
    if t.differs("parts_count_on_single_part"):
        assert await t.store.part_size("single", 1, single.etag) == 3
    elif not t.differs("head_part_has_part_etag"):
        assert await t.store.part_size("single", 1, single.etag) is None
    started = await t.store.create_upload("dst")
    done = []
    start = 0
    for n, body in enumerate(parts, 1):
        got = await t.store.copy_part("dst", started.upload_id, n, "src", start,
                                      start + len(body), etag)
        if t.differs("copy_part_etag_not_md5"):  # the tail is a chunk of its own
            assert (got == md5(body).hex()) == (body == b"tail")
        else:
            assert got == md5(body).hex()
        done.append((n, got, None))
        start += len(body)
    if not t.differs("ignores_copy_if_match"):
        with pytest.raises(PreconditionFailed):
            await t.store.copy_part("dst", started.upload_id, 4, "src", 0, 10, "0" * 32)
    copied = await t.store.complete_upload("dst", started.upload_id, done)
    if t.differs("copy_part_etag_not_md5"):  # so the copy cannot be proven by its ETag
        assert copied != etag
    else:  # the same parts make the same ETag: this proves the copy (renamer.py)
        assert copied == etag
    info = await t.store.head("dst")
    assert info is not None and (info.size, info.etag) == (2 * P + 4, copied)


# -- MemStore only: what a server cannot be asked to do ------------------------------------------


async def test_memstore_under_sse_kms_has_etags_that_are_no_md5s() -> None:
    store = MemStore(encryption="aws:kms")
    sent = await store.put("k", b"x", md5(b"x"))
    assert sent.encryption == "aws:kms" and sent.etag != md5(b"x").hex()
    started = await store.create_upload("m")
    assert started.encryption == "aws:kms"
    part = await store.upload_part("m", started.upload_id, 1, b"x", md5(b"x"))
    etag = await store.complete_upload("m", started.upload_id, [(1, part.etag, None)])
    assert etag.endswith("-1") and etag != multipart_etag([md5(b"x")])


async def test_memstore_copies_the_body_when_called() -> None:
    """The caller reuses its part buffer once the call returns (as botocore has sent it)."""
    store = MemStore()
    buf = bytearray(b"first")
    await store.put("k", buf, md5(b"first"))
    buf[:] = b"later"
    assert store.data("k") == b"first"
