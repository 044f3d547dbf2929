"""Shared fixtures: one real SeaweedFS server per session, a fresh bucket per test, the
in-process filesystem (level 2) and a real FUSE mount in a subprocess (level 3)."""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from s3mount.config import Config
from s3mount.settings import Credentials
from tests.motoserver import ACCESS_KEY as MOTO_ACCESS_KEY
from tests.motoserver import SECRET_KEY as MOTO_SECRET_KEY
from tests.motoserver import MotoServer
from tests.seaweed import SeaweedServer

_bucket_numbers = itertools.count(1)


# -- every in-process test fails on a WARNING or ERROR log line it did not expect --------------


class LogCheck(logging.Handler):
    """Keeps the records of WARNING and above (log.exception included) that no expected
    pattern matches. A pattern is searched in "logger.name: message"."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.expected: list[re.Pattern[str]] = []
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self.level:  # (a logger filters by level before its handlers)
            return
        line = f"{record.name}: {record.getMessage()}"
        if not any(p.search(line) for p in self.expected):
            self.unexpected.append(f"{record.levelname} {line}"
                                   + (" (with a traceback)" if record.exc_info else ""))


@pytest.fixture(autouse=True)
def check_logs(request: pytest.FixtureRequest) -> Iterator[LogCheck]:
    """Fails the test on an unexpected WARNING or ERROR line logged in this process (s3ql's
    pytest_checklogs). Expected lines: `@pytest.mark.expect_log("regex", ...)` or the
    `expect_log` fixture. Tests of a real mount check the mount's own log instead
    (`mount_factory`)."""
    check = LogCheck()
    for marker in request.node.iter_markers("expect_log"):
        check.expected += [re.compile(p) for p in marker.args]
    in_process = "mount_factory" not in request.fixturenames
    root = logging.getLogger()
    if in_process:
        root.addHandler(check)
    try:
        yield check
    finally:
        root.removeHandler(check)
    if check.unexpected:
        pytest.fail("unexpected log lines (declare them with expect_log if they are "
                    "right):\n" + "\n".join(check.unexpected), pytrace=False)


@pytest.fixture
def expect_log(check_logs: LogCheck) -> Callable[..., None]:
    """expect_log("regex", ...): these log lines are part of what the test proves."""
    def expect(*patterns: str) -> None:
        check_logs.expected += [re.compile(p) for p in patterns]
    return expect


@pytest.fixture(scope="session")
def s3server() -> Iterator[SeaweedServer]:
    server = SeaweedServer().start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(scope="session")
def s3(s3server: SeaweedServer) -> Any:
    return s3server.client()


@pytest.fixture
def bucket(s3: Any, request: pytest.FixtureRequest) -> str:
    name = f"t{next(_bucket_numbers)}-{os.getpid()}-{request.node.name[:20]}".lower()
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name).strip("-")[:60]
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def config(s3server: SeaweedServer, bucket: str, tmp_path: Path) -> Config:
    return Config(bucket=bucket, mountpoint=str(tmp_path / "mnt"),
                  endpoint_url=s3server.endpoint_url, part_size=5 * 1024 * 1024,
                  max_memory=20 * 1024 * 1024, retries=2, write_deadline=30)


@pytest.fixture(scope="session")
def motoserver() -> Iterator[MotoServer]:
    """moto's S3 server: a second S3 implementation, in memory (keep objects small)."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto_config(motoserver: MotoServer, request: pytest.FixtureRequest,
                tmp_path: Path) -> Config:
    """Like `config`, for a fresh bucket on moto's server."""
    name = f"m{next(_bucket_numbers)}-{os.getpid()}"
    client = motoserver.client()
    client.create_bucket(Bucket=name)
    client.close()
    return Config(bucket=name, mountpoint=str(tmp_path / "mnt"),
                  endpoint_url=motoserver.endpoint_url, part_size=5 * 1024 * 1024,
                  max_memory=20 * 1024 * 1024, retries=2, write_deadline=30,
                  credentials=Credentials(MOTO_ACCESS_KEY, MOTO_SECRET_KEY, "moto"))

@pytest.fixture(params=["seaweed", "moto"])
def target(request: pytest.FixtureRequest) -> Iterator[tuple[SeaweedServer | MotoServer, Any, str]]:
    """Each test that asks for it runs on SeaweedFS and on moto's server: the server, a boto3
    client of it, and a fresh bucket on it."""
    server: SeaweedServer | MotoServer = request.getfixturevalue(
        "s3server" if request.param == "seaweed" else "motoserver")
    client = server.client()
    bucket = f"t{request.param}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    client.create_bucket(Bucket=bucket)
    yield server, client, bucket
    client.close()


def run_ok(*cmd: str, cwd: Path | None = None, timeout: float = 180,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a program (onto a mount); it must exit 0, else its output is the failure."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def put(s3: Any, bucket: str, key: str, body: bytes = b"x") -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def get(s3: Any, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def open_uploads(s3: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


# -- level 3: a real mount in a subprocess ----------------------------------------------------


@dataclass
class Mount:
    path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    allowed_errors: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def unmount(self, timeout: float = 60) -> int:
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            msg = f"mount process did not exit after unmount:\n{self.log()}"
            raise AssertionError(msg) from None


def s3mount_cmd() -> list[str]:
    return [sys.executable, "-m", "s3mount.cli"]


def start_mount(server: SeaweedServer, bucket: str, mnt: Path, log_path: Path,
                *args: str, wait: float = 30) -> Mount:
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = [*s3mount_cmd(), bucket, str(mnt), "--endpoint-url", server.endpoint_url,
           "--foreground", "--part-size", "5M", *args]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                env={**os.environ, **server.env()})
    m = Mount(mnt, proc, log_path)
    deadline = time.monotonic() + wait
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            m.unmount()
            raise AssertionError(f"mount did not come up:\n{m.log()}")
        time.sleep(0.05)
    return m


# pyfuse3's own line when the kernel has already dropped a RELEASE (teardown's lazy unmount):
# nothing is waiting for that answer.
BENIGN_ERRORS = ["fuse_release(): fuse_reply_* failed with No such file"]


@pytest.fixture
def mount_factory(s3server: SeaweedServer, tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    mounts: list[Mount] = []
    counter = itertools.count()

    def make(bucket: str, *args: str) -> Mount:
        n = next(counter)
        m = start_mount(s3server, bucket, tmp_path / f"mnt{n}", tmp_path / f"mount{n}.log",
                        *args)
        mounts.append(m)
        return m

    yield make
    problems = []
    for m in mounts:
        m.unmount()
        text = m.log()
        if "Traceback" in text or "unexpectedly" in text:
            problems.append(text)
        for line in text.splitlines():
            if " ERROR " in line and not any(a in line for a in [*m.allowed_errors,
                                                                    *BENIGN_ERRORS]):
                problems.append(line)
    assert not problems, "unexpected errors in the mount log:\n" + "\n".join(problems)


@pytest.fixture
def mounted(mount_factory: Callable[..., Mount], bucket: str) -> Mount:
    return mount_factory(bucket)


def kill_mount(m: Mount) -> None:
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], check=False)


def with_config(config: Config, **changes: Any) -> Config:
    return replace(config, **changes)
