"""The log checker of tests/conftest.py: unexpected WARNING and ERROR lines fail a test."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable

import pytest

from tests.conftest import LogCheck

log = logging.getLogger("s3mount.test")


def record(level: int, msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    return logging.LogRecord("s3mount.x", level, __file__, 1, msg, args,
                             sys.exc_info() if exc else None)


def test_unexpected_lines_are_kept_expected_ones_and_info_are_not() -> None:
    check = LogCheck()
    check.expected.append(re.compile(r"^s3mount\.x: part \d+ resent$"))
    for r in [record(logging.INFO, "fine"), record(logging.WARNING, "part %d resent", 3),
              record(logging.WARNING, "surprise %s", "here")]:
        check.handle(r)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        check.handle(record(logging.ERROR, "failed unexpectedly", exc=True))
    assert check.unexpected == [
        "WARNING s3mount.x: surprise here",
        "ERROR s3mount.x: failed unexpectedly (with a traceback)",
    ]


@pytest.mark.expect_log(r"^s3mount\.test: declared by a marker$")
def test_marker_and_fixture_declare_expected_lines(expect_log: Callable[..., None]) -> None:
    expect_log(r"declared by the fixture")
    log.warning("declared by a marker")
    log.error("declared by the fixture")
