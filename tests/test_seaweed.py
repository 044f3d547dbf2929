"""Tests of the SeaweedFS server manager itself: ports, start, S3 round trip, stop, CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

import tests.seaweed
from tests.seaweed import (
    GRPC_OFFSET,
    PORT_RANGE,
    Ports,
    SeaweedServer,
    _pid_running,
    _socket_files,
    free_ports,
    port_is_free,
    s3_client,
)

REPO = Path(__file__).resolve().parent.parent


def test_free_ports_are_distinct_free_and_below_ephemeral_range() -> None:
    ports = free_ports()
    every = ports.all()
    assert len(set(every)) == 8
    assert all(port_is_free(p) for p in every)
    assert all(PORT_RANGE[0] <= p < PORT_RANGE[1] for p in ports.http())
    assert max(every) < PORT_RANGE[1] + GRPC_OFFSET <= 32_768


@pytest.mark.slow
def test_round_trip_many_buckets_then_graceful_stop_frees_everything() -> None:
    server = SeaweedServer().start()
    try:
        client = server.client()
        # Past the 29th bucket, where weed's default volume growth (7 per bucket) ran out.
        for n in range(32):
            bucket = f"manager-test-{n}"
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="dir/hello.txt", Body=b"hello")
            body = client.get_object(Bucket=bucket, Key="dir/hello.txt")["Body"].read()
            assert body == b"hello"
        stranger = s3_client(server.endpoint_url, "someone-else", "wrong-secret")
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):
            stranger.list_buckets()
        client.close()
        stranger.close()
    finally:
        server.stop()
    assert not server.running
    assert not _pid_running(server.pid)
    assert all(port_is_free(p) for p in server.ports.all())
    assert not any(_socket_files(p) for p in server.ports.all())
    assert not server.data_dir.exists()


def test_given_existing_data_dir_is_kept(tmp_path: Path) -> None:
    with SeaweedServer(tmp_path, access_key="k-given", secret_key="s-given") as server:
        assert server.client().list_buckets()["Buckets"] == []
        assert server.log_path.parent == tmp_path
        server.stop(timeout=0)  # SIGKILL at once: fast, and must still free everything
    assert not _pid_running(server.pid)
    assert all(port_is_free(p) for p in server.ports.all())
    assert tmp_path.is_dir()


@pytest.mark.expect_log(r"^tests\.seaweed: weed exited with")
def test_start_retries_with_fresh_ports_when_one_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first ports handed out include one that is in use: weed dies, start retries once."""
    taken_port = free_ports().s3
    chosen: list[Ports] = []

    def first_with_a_taken_port() -> Ports:
        ports = free_ports()
        chosen.append(ports)
        return (
            Ports(taken_port, ports.master, ports.volume, ports.filer)
            if len(chosen) == 1
            else ports
        )

    monkeypatch.setattr(tests.seaweed, "free_ports", first_with_a_taken_port)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken_port))
        blocker.listen()
        server = SeaweedServer().start()
        try:
            assert len(chosen) == 2
            assert server.ports == chosen[1]
            assert server.client().list_buckets()["Buckets"] == []
        finally:
            server.stop(timeout=0)


def _cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tests.seaweed", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def test_cli_start_env_stop(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    endpoint = _cli("start", "--state-dir", str(state_dir)).strip()
    state = json.loads((state_dir / "server.json").read_text())
    try:
        assert state["endpoint_url"] == endpoint
        assert _pid_running(state["pid"])
        exports = _cli("env", "--state-dir", str(state_dir))
        assert f"export AWS_ENDPOINT_URL={endpoint}" in exports.splitlines()
        client = s3_client(endpoint, state["access_key"], state["secret_key"])
        assert client.list_buckets()["Buckets"] == []
        client.close()
    finally:
        _cli("stop", "--state-dir", str(state_dir), "--timeout", "0")
    assert not _pid_running(state["pid"])
    assert not os.path.exists(state["data_dir"])
    assert not (state_dir / "server.json").exists()
