"""A Store wrapper that injects faults in front of the real store (unit level only)."""

from __future__ import annotations

import dataclasses
from typing import Any

import trio

from s3mount.errors import StoreError, TransientError
from s3mount.objects import Extra, Meta, ObjectInfo, Sent, Store


class FaultyStore:
    """Delegates to `inner`; each counter makes that many calls misbehave."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.corrupt_part_etags = 0  # upload_part returns a wrong ETag
        self.fail_parts = 0  # upload_part raises
        self.fail_puts = 0
        self.wrong_head_etag = False  # head reports another ETag
        self.part_delay = 0.0
        self.head_error: BaseException | None = None
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def upload_part(self, key: str, upload_id: str, number: int, body: Any,
                          md5: bytes, checksum: Extra | None = None) -> Sent:
        self.calls.append(f"part {number}")
        if self.part_delay:
            await trio.sleep(self.part_delay)
        if self.fail_parts > 0:
            self.fail_parts -= 1
            raise TransientError(f"PART {number} of {key}: injected 503 (gave up)")
        sent = await self.inner.upload_part(key, upload_id, number, body, md5, checksum)
        if self.corrupt_part_etags > 0:
            self.corrupt_part_etags -= 1
            return dataclasses.replace(sent, etag="0" * 32)
        return sent

    async def put(self, key: str, body: Any, md5: bytes, checksum: Extra | None = None,
                  meta: Meta | None = None, content_type: str | None = None) -> Sent:
        if self.fail_puts > 0:
            self.fail_puts -= 1
            raise StoreError(f"PUT {key}: injected failure")
        return await self.inner.put(key, body, md5, checksum, meta, content_type)

    async def get_first(self, key: str, into: memoryview) -> tuple[ObjectInfo, int] | None:
        """A GET of an object's first bytes stands in for its HEAD: `head_error` fails it."""
        if self.head_error is not None:
            raise self.head_error
        return await self.inner.get_first(key, into)  # type: ignore[attr-defined, no-any-return]

    async def head_many(self, keys: list[str], each: Any = None
                        ) -> list[ObjectInfo | None | StoreError]:
        """The HEADs of several keys through this wrapper's own `head` (its faults, and the
        counts of a subclass), one after another."""
        out: list[ObjectInfo | None | StoreError] = []
        for i, key in enumerate(keys):
            try:
                out.append(await self.head(key))
            except StoreError as exc:
                out.append(exc)
            if each is not None:
                each(i, out[-1])
        return out

    async def head(self, key: str, checksum: bool = False) -> ObjectInfo | None:
        if self.head_error is not None:
            raise self.head_error
        info = await self.inner.head(key, checksum)
        if info is not None and self.wrong_head_etag:
            return dataclasses.replace(info, etag="f" * 32 + "-2")
        return info
