"""Settings from every layer (command line and -o, environment, config file sections,
defaults), the keyfile, and mounting the ways a service does: from a config-file bucket
section alone, and through mount(8) with `-t fuse.s3mount`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3mount.config import Config, MiB
from s3mount.errors import QuietError
from s3mount.options import build_config, default, mount_parser, parse_mount_args
from s3mount.settings import parse_mount_options, read_keyfile, settable
from tests.conftest import get, put, s3mount_cmd
from tests.seaweed import SeaweedServer

SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
              "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = tmp_path / "config.toml"
    monkeypatch.setenv("S3MOUNT_CONFIG", str(cfg))
    return cfg


def config_for(argv: list[str]) -> Any:
    ns, sources = parse_mount_args(argv)
    return build_config(ns), sources


def test_built_in_defaults_are_configs(clean_env: Path) -> None:
    """With nothing set anywhere, a mount's Config is Config's own defaults, field by field."""
    clean_env.write_text("")
    c, src = config_for(["bk1", "/mnt"])
    assert c == Config(bucket="bk1", mountpoint="/mnt")
    assert set(src.values()) == {"built-in"}
    parser = mount_parser()
    for dest in settable(parser):
        if dest != "prefix":  # None on the command line: "not given", as against s3://B/P/
            assert parser.get_default(dest) == default(dest), dest
    assert "(default 6M)" in parser.format_help() and Config.part_size == 6 * MiB


def test_precedence_cli_env_section_defaults(clean_env: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env.write_text("""
[defaults]
max_memory = "40M"
part_size = "16M"
endpoint_url = "http://defaults:1"
read_only = true

[bucket.bk1]
part_size = "32M"
endpoint_url = "http://section:1"
upload-concurrency = 2
""")
    c, src = config_for(["bk1", "/mnt"])
    assert (c.max_memory, c.part_size, c.endpoint_url) == (40 * MiB, 32 * MiB, "http://section:1")
    assert c.read_only and c.upload_concurrency == 2
    assert "[bucket.bk1]" in src["part_size"] and "[defaults]" in src["max_memory"]
    assert src["retries"] == "built-in"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:1")
    c, src = config_for(["bk1", "/mnt"])
    assert c.endpoint_url == "http://env:1" and src["endpoint_url"] == "environment"
    c, src = config_for(["bk1", "/mnt", "-o", "endpoint_url=http://o:1,rw,_netdev,nofail",
                         "--part-size", "64M", "--max-memory", "64M"])
    assert c.endpoint_url == "http://o:1" and not c.read_only
    assert c.part_size == 64 * MiB and src["part_size"] == "command line"
    c, _ = config_for(["other", "/mnt"])  # no section: [defaults] only
    assert c.part_size == 16 * MiB and c.endpoint_url == "http://env:1"


def test_mount_options_as_mount8_passes_them() -> None:
    assert parse_mount_options(["ro,allow_other,uid=1000,gid=100,_netdev",
                                "nofail,x-systemd.automount,dir-suffix=_$folder$"]) == {
        "read_only": True, "allow_other": True, "uid": "1000", "gid": "100",
        "dir_suffix": "_$folder$"}


@pytest.mark.parametrize(("text", "argv", "says"), [
    ("[bucket.bk1]\nbogus = 1\n", [], "[bucket.bk1]: unknown setting 'bogus'"),
    ("[defaults]\npart_size = \"lots\"\n", [], "part_size: invalid size 'lots'"),
    ("[defaults]\nread_only = \"maybe\"\n", [], "expected true or false"),
    ("[defaults]\nchecksum = \"md5\"\n", [], "'md5' is not one of"),
    ("not toml [", [], "config.toml"),
    ("", ["-o", "max_memory"], "needs a value"),
    ("", ["-o", "frobnicate=1"], "-o: unknown setting 'frobnicate'"),
])
def test_bad_settings_are_one_line(clean_env: Path, text: str, argv: list[str],
                                   says: str) -> None:
    clean_env.write_text(text)
    with pytest.raises(QuietError) as exc:
        config_for(["bk1", "/mnt", *argv])
    assert says in exc.value.message and exc.value.exitcode == 2
    assert "\n" not in exc.value.message


def test_keyfile_formats_and_permissions(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("AKIAEXAMPLE:s3cr3t-value\n")
    key.chmod(0o644)
    with pytest.raises(QuietError) as exc:
        read_keyfile(str(key), "b")
    assert exc.value.exitcode == 3 and "chmod 600" in exc.value.message
    assert "s3cr3t" not in exc.value.message
    key.chmod(0o600)
    creds = read_keyfile(str(key), "b")
    assert (creds.access_key, creds.secret_key) == ("AKIAEXAMPLE", "s3cr3t-value")
    assert "s3cr3t" not in repr(creds)
    key.write_text("# s3fs passwd format\nother:A1:S1\nmine:A2:S2\n")
    assert read_keyfile(str(key), "mine").access_key == "A2"
    with pytest.raises(QuietError, match="no ACCESS_KEY:SECRET_KEY line"):
        read_keyfile(str(key), "third")


def test_print_config_masks_secrets(clean_env: Path, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("AKIAEXAMPLEKEY123:the-secret-key-value\n")
    key.chmod(0o600)
    clean_env.write_text(f'[bucket.bk1]\nkeyfile = "{key}"\nendpoint_url = "http://s:1"\n')
    r = subprocess.run([*s3mount_cmd(), "bk1", "--print-config"], capture_output=True,
                       text=True, timeout=30, env=os.environ.copy())
    assert r.returncode == 0, r.stderr
    assert "the-secret-key-value" not in r.stdout + r.stderr
    assert "AKIA" in r.stdout and "*" in r.stdout and str(key) in r.stdout
    assert "endpoint_url = 'http://s:1'  # " in r.stdout


# -- mounting like a service ---------------------------------------------------------------------


@pytest.fixture
def service_env(s3server: SeaweedServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment with no AWS credentials at all: they come from a keyfile."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env["HOME"] = str(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    yield env


def keyfile_for(server: SeaweedServer, tmp_path: Path) -> Path:
    e = server.env()
    key = tmp_path / "bucket.key"
    key.write_text(f"{e['AWS_ACCESS_KEY_ID']}:{e['AWS_SECRET_ACCESS_KEY']}\n")
    key.chmod(0o600)
    return key


def wait_unmounted(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while os.path.ismount(path):
        assert time.monotonic() < deadline, f"{path} still mounted"
        time.sleep(0.1)


def test_mount_from_config_section_alone(s3server: SeaweedServer, s3: Any, bucket: str,
                                         service_env: dict[str, str],
                                         tmp_path: Path) -> None:
    put(s3, bucket, "hello.txt", b"from the bucket")
    key = keyfile_for(s3server, tmp_path)
    cfg = tmp_path / "config.toml"
    log = tmp_path / "mount.log"
    cfg.write_text(f'[bucket.{bucket}]\nendpoint_url = "{s3server.endpoint_url}"\n'
                   f'keyfile = "{key}"\nlog_file = "{log}"\ndebug = true\n')
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**service_env, "S3MOUNT_CONFIG": str(cfg)}
    r = subprocess.run([*s3mount_cmd(), bucket, str(mnt)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        assert (mnt / "hello.txt").read_bytes() == b"from the bucket"
        (mnt / "new.txt").write_bytes(b"written")
        assert get(s3, bucket, "new.txt") == b"written"
        secret = s3server.env()["AWS_SECRET_ACCESS_KEY"]
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with_args = cmdline.read_bytes() if cmdline.exists() else b""
            assert secret.encode() not in with_args
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        wait_unmounted(mnt)
    text = log.read_text()
    assert "GET" in text or "HEAD" in text  # --debug logged requests ...
    assert secret not in text  # ... and never the secret


@pytest.fixture
def s3mount_on_default_path() -> Iterator[None]:
    """mount(8) runs helpers with no PATH (sh's default: /usr/local/bin, /usr/bin, ...), so
    `s3mount` must be there, as `make install` puts it. Here: a wrapper running this
    checkout, put in place for the test and removed after (a real one is set aside)."""
    target = Path("/usr/local/bin/s3mount")
    aside = target.with_name("s3mount.test-aside")
    if target.exists() or target.is_symlink():
        target.rename(aside)
    root = Path(__file__).resolve().parent.parent
    target.write_text(f"#!/bin/sh\nexport PYTHONPATH={root}\n"
                      f"exec {sys.executable} -m s3mount.cli \"$@\"\n")
    target.chmod(0o755)
    try:
        yield
    finally:
        target.unlink()
        if aside.exists() or aside.is_symlink():
            aside.rename(target)


@pytest.mark.usefixtures("s3mount_on_default_path")
def test_mount_t_fuse_s3mount(s3server: SeaweedServer, s3: Any, bucket: str,
                              service_env: dict[str, str], tmp_path: Path) -> None:
    put(s3, bucket, "hello.txt", b"via mount(8)")
    key = keyfile_for(s3server, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = f"endpoint_url={s3server.endpoint_url},keyfile={key},ro,_netdev,nofail,uid=1234"
    r = subprocess.run(["mount", "-t", "fuse.s3mount", bucket, str(mnt), "-o", opts],
                       env=service_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        assert os.path.ismount(mnt)
        assert (mnt / "hello.txt").read_bytes() == b"via mount(8)"
        assert (mnt / "hello.txt").stat().st_uid == 1234
        with pytest.raises(OSError) as exc:
            (mnt / "x").write_bytes(b"x")
        assert exc.value.errno == 30  # EROFS: ro was passed through
        line = next(ln for ln in Path("/proc/mounts").read_text().splitlines()
                    if f" {mnt} " in ln)
        assert "fuse.s3mount" in line
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        wait_unmounted(mnt)
