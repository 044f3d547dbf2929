"""The files in systemd/ are valid units that do what systemd/README.md says, and `make install`
puts them in place. Checked with systemd's own tools (systemd-analyze verify, the fstab
generator), which work without systemd running as PID 1."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
TEMPLATE = UNITS / "s3mount@.service"
INSTALLED_EXE = "/usr/local/bin/s3mount"
FSTAB_GENERATOR = "/lib/systemd/system-generators/systemd-fstab-generator"


def real_s3mount() -> Path:
    """An executable to stand in for /usr/local/bin/s3mount: this venv's console script."""
    exe = Path(sys.executable).parent / "s3mount"
    assert os.access(exe, os.X_OK), f"{exe} missing: is the package installed in this venv?"
    return exe


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SYSTEMD_LOG_LEVEL", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)


def verify(*units: Path) -> None:
    """systemd-analyze verify: exit code 0 and not one complaint about these units.

    It reports a bad setting (unknown key, unparsable value) only as a warning on stderr,
    with exit code 0, so stderr is checked too. Lines about unit files the OS ships are not
    ours to judge."""
    proc = run(["systemd-analyze", "verify", "--man=no", *map(str, units)])
    complaints = [line for line in proc.stderr.splitlines() if line.strip()
                  and not line.startswith(("/lib/systemd/", "/usr/lib/systemd/"))]
    assert proc.returncode == 0 and not complaints, \
        f"systemd-analyze verify {[u.name for u in units]}: rc={proc.returncode}\n{proc.stderr}"


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """[Section] -> key -> values (a key may repeat), comments and blank lines dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(settings: dict[str, list[str]], key: str) -> str:
    assert len(settings.get(key, [])) == 1, f"{key}= should appear once: {settings.get(key)}"
    return settings[key][0]


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def with_exe(unit_text: str, exe: Path) -> str:
    assert unit_text.count(INSTALLED_EXE) == 1
    return unit_text.replace(INSTALLED_EXE, str(exe))


# --- s3mount@.service ---------------------------------------------------------------------


def test_template_unit_verifies(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists, and /usr/local/bin/s3mount is not there
    # on a test machine: check a copy that runs this venv's s3mount instead, as an instance
    # (the template alone is verified as instance "i").
    (tmp_path / TEMPLATE.name).write_text(with_exe(TEMPLATE.read_text(), real_s3mount()))
    verify(tmp_path / "s3mount@mnt-s3.service")
    verify(tmp_path / TEMPLATE.name)


def test_verify_catches_what_it_is_used_for(tmp_path: Path) -> None:
    """The check above can fail: a missing binary and a bad value are both reported."""
    text = TEMPLATE.read_text()
    missing = tmp_path / "missing" / "s3mount"
    (tmp_path / "a@.service").write_text(with_exe(text, missing))
    proc = run(["systemd-analyze", "verify", str(tmp_path / "a@mnt-s3.service")])
    assert proc.returncode != 0 and f"{missing} is not executable" in proc.stderr
    (tmp_path / "b@.service").write_text(
        with_exe(text, real_s3mount()).replace("Type=notify", "Type=notifyy"))
    proc = run(["systemd-analyze", "verify", str(tmp_path / "b@mnt-s3.service")])
    assert "Failed to parse service type" in proc.stderr


def test_template_unit_settings() -> None:
    unit = unit_settings(TEMPLATE)
    u, s = unit["Unit"], unit["Service"]
    assert "network-online.target" in " ".join(u["After"]).split()
    assert "network-online.target" in " ".join(u["Wants"]).split()
    assert one(s, "Type") == "notify"
    assert one(s, "NotifyAccess") == "main"
    assert one(s, "Restart") == "on-failure"
    assert one(s, "EnvironmentFile") == "/etc/s3mount/%i.env"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]

    start = shlex.split(one(s, "ExecStart"))
    assert start[:3] == [INSTALLED_EXE, "${S3MOUNT_BUCKET}", "%f"]
    assert "--foreground" in start and start[-1] == "$S3MOUNT_OPTIONS"
    assert one(s, "ExecStartPre") == "mkdir -p %f"
    stop_post = one(s, "ExecStopPost")
    assert stop_post.startswith("-") and "fusermount3 -uz" in stop_post


def test_stop_timeout_leaves_minutes_for_uploads() -> None:
    s = unit_settings(TEMPLATE)["Service"]
    proc = run(["systemd-analyze", "timespan", one(s, "TimeoutStopSec")])
    assert proc.returncode == 0, proc.stderr
    micros = int(re.search(r"μs: (\d+)", proc.stdout).group(1))  # type: ignore[union-attr]
    assert micros >= 10 * 60 * 1_000_000
    readme = (UNITS / "README.md").read_text()
    assert f"TimeoutStopSec={one(s, 'TimeoutStopSec')}" in readme


def test_instance_name_is_the_escaped_mount_point() -> None:
    proc = run(["systemd-escape", "--path", "/mnt/s3"])
    assert proc.stdout.strip() == "mnt-s3"
    # %i names the env file, %f (the unescaped instance, with its leading /) is the path.
    text = TEMPLATE.read_text()
    assert "%i.env" in text
    assert "ExecStart=" in text and not re.search(r"^Exec.*%i", text, re.MULTILINE)


def test_example_env_makes_a_command_line_s3mount_accepts() -> None:
    from s3mount.options import mount_parser

    env = env_file(UNITS / "example.env")
    assert set(env) == {"S3MOUNT_BUCKET", "S3MOUNT_OPTIONS"}  # credentials stay commented out
    start = shlex.split(one(unit_settings(TEMPLATE)["Service"], "ExecStart"))
    # As systemd expands it: ${VAR} is one word, $VAR is split at whitespace, %f the path.
    argv: list[str] = []
    for word in start[1:]:
        if word == "$S3MOUNT_OPTIONS":
            argv += env["S3MOUNT_OPTIONS"].split()
        else:
            argv.append(word.replace("${S3MOUNT_BUCKET}", env["S3MOUNT_BUCKET"])
                        .replace("%f", "/mnt/s3"))
    ns = mount_parser().parse_args(argv)
    assert (ns.bucket, ns.mountpoint, ns.foreground) == ("my-bucket", "/mnt/s3", True)
    assert ns.endpoint_url == "https://s3.example.com" and ns.allow_other


def _stop_post(tmp_path: Path, service_result: str) -> list[str]:
    """Run ExecStopPost's command as systemd would, with a fusermount3 that logs its args."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "fusermount3.log"
    fake = bin_dir / "fusermount3"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    line = one(unit_settings(TEMPLATE)["Service"], "ExecStopPost")
    argv = [w.replace("$$", "$").replace("%f", "/mnt/s3") for w in shlex.split(line[1:])]
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SERVICE_RESULT": service_result}
    subprocess.run(argv, env=env, check=True, timeout=10)
    return log.read_text().splitlines() if log.exists() else []


def test_stop_post_detaches_a_mount_left_by_a_crash(tmp_path: Path) -> None:
    assert _stop_post(tmp_path, "signal") == ["-uz /mnt/s3"]


def test_stop_post_does_nothing_after_a_clean_exit(tmp_path: Path) -> None:
    assert _stop_post(tmp_path, "success") == []


def test_no_sandboxing_that_hides_the_mount() -> None:
    service = unit_settings(TEMPLATE)["Service"]
    for key in ("PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateDevices",
                "PrivateMounts", "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem"):
        assert key not in service


# --- fstab, .mount, .automount ------------------------------------------------------------


def test_mount_and_automount_units_verify() -> None:
    verify(UNITS / "mnt-s3.mount", UNITS / "mnt-s3.automount")
    mount = unit_settings(UNITS / "mnt-s3.mount")["Mount"]
    assert one(mount, "Where") == "/mnt/s3"
    assert one(mount, "Type") == "fuse.s3mount"
    options = one(mount, "Options").split(",")
    assert {"_netdev", "nofail", "allow_other"} <= set(options)
    assert any(o.startswith("endpoint_url=") for o in options)
    assert one(unit_settings(UNITS / "mnt-s3.automount")["Automount"], "Where") == "/mnt/s3"


def test_fstab_example_makes_network_mounts(tmp_path: Path) -> None:
    """systemd's fstab generator turns the example lines into units that verify, wanted by
    remote-fs.target (so _netdev was understood), the x-systemd.automount one on first use."""
    out = tmp_path / "gen"
    out.mkdir()
    env = {"PATH": "/usr/bin:/bin", "SYSTEMD_FSTAB": str(UNITS / "fstab.example")}
    proc = subprocess.run([FSTAB_GENERATOR, out, out, out], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    wants = sorted(p.name for p in (out / "remote-fs.target.wants").iterdir())
    assert wants == ["mnt-reports.automount", "mnt-s3.mount"]
    generated = unit_settings(out / "mnt-s3.mount")["Mount"]
    expected = unit_settings(UNITS / "mnt-s3.mount")["Mount"]
    for key in ("What", "Where", "Type", "Options"):
        assert generated[key] == expected[key], key  # the .mount unit is the fstab line
    verify(out / "mnt-s3.mount", out / "mnt-reports.mount", out / "mnt-reports.automount")


def test_readme_shows_the_fstab_line_of_the_example() -> None:
    lines = [line.split() for line in (UNITS / "fstab.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    readme = (UNITS / "README.md").read_text()
    assert "  ".join(lines[0]) in readme


# --- make install -------------------------------------------------------------------------


def make_install(tmp_path: Path, *, systemd_running: bool) -> subprocess.CompletedProcess[str]:
    runtime = tmp_path / "run-systemd-system"
    if systemd_running:
        runtime.mkdir(exist_ok=True)
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "systemctl.log"}\n')
    systemctl.chmod(0o755)
    proc = run(["make", "-C", str(ROOT), "--no-print-directory", "install", "INSTALL_VENV=no",
                f"INSTALL_DIR={tmp_path / 'opt'}", f"PREFIX={tmp_path / 'usr'}",
                f"SYSTEMD_DIR={tmp_path / 'etc'}", f"SYSTEMD_RUNTIME_DIR={runtime}",
                f"SYSTEMCTL={systemctl}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_make_install_links_the_command_and_installs_the_unit(tmp_path: Path) -> None:
    make_install(tmp_path, systemd_running=True)
    link = tmp_path / "usr" / "bin" / "s3mount"
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "opt/bin/s3mount")
    unit = tmp_path / "etc" / TEMPLATE.name
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert unit.read_text() == TEMPLATE.read_text().replace(INSTALLED_EXE, str(link))
    assert (tmp_path / "systemctl.log").read_text().split() == ["daemon-reload"]
    assert [p.name for p in (tmp_path / "etc").iterdir()] == [TEMPLATE.name]

    # What was installed works together: with the venv's place filled, the unit verifies.
    (tmp_path / "opt" / "bin").mkdir(parents=True)
    (tmp_path / "opt" / "bin" / "s3mount").symlink_to(real_s3mount())
    verify(tmp_path / "etc" / "s3mount@mnt-s3.service")

    make_install(tmp_path, systemd_running=True)  # again: replaces, does not fail
    assert os.readlink(link) == str(tmp_path / "opt/bin/s3mount")


def test_make_install_reloads_systemd_only_when_it_runs(tmp_path: Path) -> None:
    proc = make_install(tmp_path, systemd_running=False)
    assert not (tmp_path / "systemctl.log").exists()
    assert "no daemon-reload" in proc.stdout
    assert (tmp_path / "etc" / TEMPLATE.name).is_file()


def test_make_install_builds_a_venv_in_install_dir(tmp_path: Path) -> None:
    # Creating the venv (pip install . and its dependencies) is too slow for the suite: check
    # what make would run.
    target = tmp_path / "opt"
    proc = run(["make", "-C", str(ROOT), "--no-print-directory", "-n", "install",
                f"INSTALL_DIR={target}", f"PREFIX={tmp_path / 'usr'}",
                f"SYSTEMD_DIR={tmp_path / 'etc'}"])
    assert proc.returncode == 0, proc.stderr
    assert f"-m venv {target};" in proc.stdout
    assert re.search(rf"{re.escape(str(target))}/bin/python -m pip install .*--upgrade \.;",
                     proc.stdout.replace("\\\n", " "))
    assert not target.exists()


def test_make_help_lists_install() -> None:
    proc = run(["make", "-C", str(ROOT), "--no-print-directory", "help"])
    assert re.search(r"^make install +\S", proc.stdout, re.MULTILINE), proc.stdout


def test_systemd_analyze_comes_from_an_apt_package_make_installs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    packages = re.search(r"^APT_PACKAGES := (.*)$", makefile, re.MULTILINE)
    assert packages and "systemd" in packages.group(1).split()
    assert shutil.which("systemd-analyze") and shutil.which("systemd-escape")
