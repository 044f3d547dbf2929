"""`S3Store` with `get_first` (s3mount/objects.py `FirstGet`), for tests until store.py offers
it: one ranged GET of an object's first bytes with no If-Match, its answer read as a HEAD's
(ETag, metadata, Last-Modified, Content-Type; the size from Content-Range). A 404 is no
object; a 416 (an empty object: no byte 0) is answered by a HEAD. Written here because
store.py, the only module of the package that talks to boto3, was being changed by another
engineer at the time (its lean request path); moving this method there is all it takes for
mounts to use it."""

from __future__ import annotations

from typing import Any

import botocore.exceptions

from s3mount.checksum import KEPT
from s3mount.errors import NoSuchKey
from s3mount.etag import normalize_etag
from s3mount.objects import ObjectInfo
from s3mount.store import S3Store, _encryption, _range_total, _read_body_into


class FirstGetStore(S3Store):
    async def get_first(self, key: str, into: memoryview) -> tuple[ObjectInfo, int] | None:
        def call() -> tuple[dict[str, Any], int] | None:
            try:
                r = self.client.get_object(Bucket=self.bucket, Key=key,
                                           Range=f"bytes=0-{len(into) - 1}")
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                    return None  # no byte 0: an empty object
                raise
            return r, _read_body_into(r["Body"], into)
        try:
            got = await self._read_call(f"GET {key} (its first bytes)", call)
        except NoSuchKey:
            return None
        if got is None:
            info = await self.head(key)
            return None if info is None else (info, 0)
        r, n = got
        size = _range_total(r.get("ContentRange"))
        if size is None:  # the whole object came (a server that ignores Range)
            size = n
        algo = next((a for a in KEPT.values() if r.get(a.field)), None)
        info = ObjectInfo(key, size, r["LastModified"].timestamp(),
                          normalize_etag(r.get("ETag", "")),
                          str(r[algo.field]) if algo else None, _encryption(r),
                          dict(r.get("Metadata") or {}), r.get("ContentType") or None,
                          algo.name if algo else None,
                          r.get("ChecksumType") if algo else None)
        return info, min(n, len(into), size)
