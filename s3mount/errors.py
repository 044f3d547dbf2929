"""Exception types shared by every layer, and the errno each one becomes at the FUSE boundary."""

from __future__ import annotations

import errno


class QuietError(Exception):
    """A user mistake (bad option, no such bucket...): print one line, exit with `exitcode`."""

    def __init__(self, message: str, exitcode: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exitcode = exitcode


class FsError(Exception):
    """An error that reaches a FUSE caller as `errno_`; the message is logged once, at the edge."""

    errno_: int = errno.EIO
    log_level: str = "error"

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        if errno_ is not None:
            self.errno_ = errno_


class StoreError(FsError):
    """S3 refused or failed a request (after retries, where retrying made sense)."""


class NoSuchKey(StoreError):
    errno_ = errno.ENOENT
    log_level = "debug"


class NoSuchBucket(StoreError):
    errno_ = errno.ENOENT


class AccessDenied(StoreError):
    errno_ = errno.EACCES


class PreconditionFailed(StoreError):
    """If-Match failed: the object changed (or vanished) under an open reader."""

    errno_ = errno.EIO


class SizeMismatch(StoreError):
    """S3 holds fewer bytes than the object's size said, under the same ETag: permanent."""

    errno_ = errno.EIO


class TransientError(StoreError):
    """A failure worth retrying: 5xx, throttling, connection reset, timeout."""


class IntegrityError(FsError):
    """S3 answered, but what it holds is not what we sent (ETag mismatch)."""

    errno_ = errno.EIO


def first_error(exc: BaseException) -> BaseException:
    """The first of our errors inside (nested) exception groups from a nursery, so that a
    failure in concurrent work reaches the caller as the one error it is."""
    while isinstance(exc, BaseExceptionGroup):
        exc = next((e for e in exc.exceptions if isinstance(e, FsError)), exc.exceptions[0])
    return exc
