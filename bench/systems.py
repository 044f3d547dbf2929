"""The systems compared, how each one is mounted, and how a mount is always taken down.

Every subprocess runs in its own session under a timeout (the whole group is killed when it
expires); a mount is unmounted with `fusermount3 -u`, then `-uz`, and its process is stopped by
pid (SIGTERM, then SIGKILL) whatever happened in between.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.seaweed import SeaweedServer

ROOT = Path(__file__).resolve().parent.parent
MOUNT_TIMEOUT = 30.0  # seconds from start until the mount shows in /proc/self/mounts
UNMOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 60.0  # after unmounting, before SIGTERM
TERM_TIMEOUT = 15.0  # after SIGTERM, before SIGKILL
KILL_TIMEOUT = 10.0


class BenchError(Exception):
    """A mount or a workload failed; the message ends up in the table as "failed: ..."."""


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without AWS_* and RCLONE_* (an inherited AWS_CA_BUNDLE stops rclone), + extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(extra or {})
    return env


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=KILL_TIMEOUT)


def run_cmd(args: list[str], timeout: float, *, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run args in a new session; BenchError on a timeout (the group is killed) or exit != 0."""
    name = Path(args[0]).name if args[0] != sys.executable else "python " + " ".join(args[1:4])
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise BenchError(f"{name} timed out after {timeout:.0f} s") from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        raise BenchError(f"{name} exited with {proc.returncode}: {last_line(err or out)}")
    return subprocess.CompletedProcess(args, 0, out, err)


def is_mounted(mnt: Path) -> bool:
    """From /proc/self/mounts: never touches the mount itself (a stat could hang)."""
    target = str(mnt).replace(" ", "\\040")
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def unmount(mnt: Path) -> None:
    """fusermount3 -u, then -uz (lazy: detaches a busy mount); never raises."""
    for flags in ("-u", "-uz"):
        if not is_mounted(mnt):
            return
        with contextlib.suppress(BenchError, OSError):
            run_cmd(["fusermount3", flags, str(mnt)], UNMOUNT_TIMEOUT)


def vm_hwm_mib(pid: int) -> float | None:
    """Peak RSS of a live process (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process so far, all its threads (None once it is gone):
    fields 14 and 15 of /proc/PID/stat, in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name, in parentheses, may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(x.strip()[:200] for x in text.strip().splitlines()[-lines:]) or "(empty log)"


@dataclass(frozen=True)
class System:
    """One column of the table. kind "fs" is mounted; kind "raw" is the boto3 client itself."""

    name: str
    title: str
    kind: str
    how: str  # for docs/benchmarks.md

    def argv(self, server: SeaweedServer, bucket: str, mnt: Path,
             scratch: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError(self.name)


class S3mount(System):
    def argv(self, server: SeaweedServer, bucket: str, mnt: Path,
             scratch: Path) -> tuple[list[str], dict[str, str]]:
        return ([sys.executable, "-m", "s3mount.cli", bucket, str(mnt), "--endpoint-url",
                 server.endpoint_url, "--foreground"], clean_env(server.env()))


class S3fs(System):
    def argv(self, server: SeaweedServer, bucket: str, mnt: Path,
             scratch: Path) -> tuple[list[str], dict[str, str]]:
        passwd = scratch / "s3fs-passwd"
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{server.access_key}:{server.secret_key}\n")
        return (["s3fs", bucket, str(mnt), "-f", "-o",
                 f"url={server.endpoint_url},use_path_request_style,passwd_file={passwd}"],
                clean_env())


@dataclass(frozen=True)
class Rclone(System):
    cache_mode: str = "off"

    def argv(self, server: SeaweedServer, bucket: str, mnt: Path,
             scratch: Path) -> tuple[list[str], dict[str, str]]:
        env = clean_env({
            "RCLONE_CONFIG": str(scratch / "rclone.conf"),  # none: the remote is all in env
            "RCLONE_CONFIG_S3_TYPE": "s3",
            "RCLONE_CONFIG_S3_PROVIDER": "Other",
            "RCLONE_CONFIG_S3_ENDPOINT": server.endpoint_url,
            "RCLONE_CONFIG_S3_ACCESS_KEY_ID": server.access_key,
            "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": server.secret_key,
            "RCLONE_CONFIG_S3_FORCE_PATH_STYLE": "true",
        })
        return (["rclone", "mount", f"s3:{bucket}", str(mnt), "--vfs-cache-mode",
                 self.cache_mode, "--cache-dir", str(scratch / "rclone-cache")], env)


SYSTEMS: dict[str, System] = {s.name: s for s in (
    S3mount("s3mount", "s3mount", "fs",
            "`python -m s3mount.cli BUCKET MNT --endpoint-url URL --foreground` (defaults: 6 MiB "
            "parts, --max-memory 24M, --upload-concurrency 4, --read-ahead 32M)"),
    S3fs("s3fs", "s3fs-fuse", "fs",
         "`s3fs BUCKET MNT -f -o url=URL,use_path_request_style,passwd_file=FILE` (defaults "
         "otherwise)"),
    Rclone("rclone", "rclone", "fs",
           "`rclone mount s3:BUCKET MNT --vfs-cache-mode off` (remote: type s3, provider Other, "
           "force_path_style, from RCLONE_CONFIG_S3_* variables)", "off"),
    Rclone("rclone-writes", "rclone (cache writes)", "fs",
           "as rclone, with `--vfs-cache-mode writes` (files are written to a local cache, then "
           "uploaded 5 s after close; timed until the object is in the bucket)", "writes"),
    System("raw", "raw boto3", "raw",
           "boto3 `upload_fileobj`/`download_fileobj` with 8 MiB parts and concurrency 4 (the "
           "big write from the same `cat` pipe as the mounts' `dd`); `put_object` 4 at a time, "
           "ranged `get_object`, `list_objects_v2` (no mount)"),
)}


def version(argv: list[str]) -> str:
    try:
        out = run_cmd(argv, 20)
    except (BenchError, OSError) as exc:
        return f"unknown ({exc})"
    return (out.stdout.strip() or out.stderr.strip()).splitlines()[0]


class Mount:
    """A system mounted at mnt: started in the foreground, so its pid is the mount's process."""

    def __init__(self, system: System, server: SeaweedServer, bucket: str, mnt: Path,
                 scratch: Path, log: Path) -> None:
        self.system, self.mnt, self.log = system, mnt, log
        self.hwm: float | None = None  # MiB, once sampled
        argv, env = system.argv(server, bucket, mnt, scratch)
        mnt.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            f.write(f"\n=== {' '.join(argv)}\n".encode())
            f.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                                         stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                         start_new_session=True)
        try:
            self._wait_mounted()
        except BaseException:
            self.stop()
            raise

    def _wait_mounted(self) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None:
                raise BenchError(f"mount failed: exited with {self.proc.returncode}: "
                                 f"{log_tail(self.log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"mount failed: not mounted after {MOUNT_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def check(self) -> None:
        """BenchError if the mount process has died."""
        if self.proc.poll() is not None:
            raise BenchError(f"mount process exited with {self.proc.returncode}: "
                             f"{log_tail(self.log)}")

    def cpu_seconds(self) -> float | None:
        """CPU time the mount process has used so far (None once it has exited)."""
        if self.proc.poll() is not None:
            return None
        return cpu_seconds(self.proc.pid)

    def _sample(self) -> None:
        if self.proc.poll() is None:  # not reaped yet: the pid is still this process
            hwm = vm_hwm_mib(self.proc.pid)
            if hwm is not None:
                self.hwm = max(self.hwm or 0.0, hwm)

    def stop(self) -> float | None:
        """Unmount, wait for the process to exit (SIGTERM, SIGKILL if not); its peak RSS in MiB
        (None if it died before it could be read)."""
        self._sample()
        unmount(self.mnt)
        deadline = time.monotonic() + EXIT_TIMEOUT
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._sample()
            time.sleep(0.05)
        for sig, wait in ((signal.SIGTERM, TERM_TIMEOUT), (signal.SIGKILL, KILL_TIMEOUT)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        unmount(self.mnt)  # a process killed while mounted leaves a dead mount behind
        with contextlib.suppress(OSError):
            self.mnt.rmdir()
        return self.hwm
