"""Run moto's S3 server (a second, independent S3 implementation, in memory) for tests.

``MotoServer().start()`` ... ``.stop()`` (or a context manager): ``moto_server`` on 127.0.0.1
on a free port, as a subprocess, polled with ``list_buckets`` until it answers, stopped by its
pid (SIGTERM, then SIGKILL) and waited for. It accepts any credentials and keeps every object
in memory: keep objects small or few.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from tests.seaweed import HOST, PORT_RANGE, find_program, log_tail, port_is_free, s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY = "moto-test"
SECRET_KEY = "moto-test-secret"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1


def find_moto_server() -> str:
    """The moto_server script next to this Python (a venv with moto[server]), else on PATH."""
    return find_program("moto_server", "'moto[server]'")


def free_port(rng: random.Random | None = None, attempts: int = 1000) -> int:
    rng = rng or random.SystemRandom()
    for _ in range(attempts):
        port = rng.randrange(*PORT_RANGE)
        if port_is_free(port):
            return port
    raise RuntimeError(f"found no free port in {PORT_RANGE} after {attempts} tries")


class MotoServer:
    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_dir = Path(tempfile.mkdtemp(prefix="s3mount-moto-"))
        self.log_path = self.log_dir / "moto.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint_url}

    def client(self) -> S3Client:
        return s3_client(self.endpoint_url, ACCESS_KEY, SECRET_KEY)

    def start(self) -> MotoServer:
        self.port = free_port()
        cmd = [find_moto_server(), "-H", HOST, "-p", str(self.port)]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {self.proc.returncode}:\n"
                                       f"{log_tail(self.log_path)}")
                try:
                    client.list_buckets()
                    return self
                except (BotoCoreError, ClientError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"moto_server did not answer within "
                                           f"{START_TIMEOUT:.0f} s:\n"
                                           f"{log_tail(self.log_path)}") from None
                time.sleep(POLL_INTERVAL)
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it is still there after `timeout`; wait for it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
