"""The systemd units as a reviewer checks them: ``systemd-analyze verify`` in a fake root that
holds a stub ``/opt/ledgerflux/bin/ledgerflux`` (any output fails), the sandbox's exposure
score per unit, and each ``ExecStart``/``ExecReload`` run against the real CLI."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ops_support import ROOT

from ledgerflux.app import worst_case_stop_s
from ledgerflux.cli import build_parser
from ledgerflux.config import Config, load_config

UNITS = ROOT / "systemd"
SERVICES = sorted(p.name for p in UNITS.glob("*.service"))
INSTANCES = {
    "ledgerflux-ingest@.service": "ledgerflux-ingest@coinbase.service",
    "ledgerflux-normalize@.service": "ledgerflux-normalize@0.service",
}
MAX_EXPOSURE = 2.0
STOP_MARGIN_S = 10.0
EXECUTABLE = "/opt/ledgerflux/bin/ledgerflux"


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return found


def directives(unit: str) -> list[tuple[str, str]]:
    found = []
    for line in (UNITS / unit).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.append((key, value))
    return found


def value(unit: str, key: str) -> str:
    values = [v for k, v in directives(unit) if k == key]
    assert len(values) == 1, (unit, key, values)
    return values[0]


def instance_argv(unit: str, key: str) -> list[str]:
    """The command of *key* with ``%i`` as the instance this test uses."""
    instance = INSTANCES.get(unit, unit).partition("@")[2].removesuffix(".service")
    return shlex.split(value(unit, key).replace("%i", instance))


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A root with the host's own system units (sysinit.target, network-online.target, ...),
    LedgerFlux's units in /etc/systemd/system and a stub executable where they expect it."""
    root = tmp_path / "root"
    host_units = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if host_units is None:
        pytest.skip("no system units on this host to verify against")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    target = root / "etc/systemd/system"
    target.mkdir(parents=True)
    for unit in (*UNITS.glob("*.service"), *UNITS.glob("*.target")):
        shutil.copy(unit, target)
    stub = root / EXECUTABLE.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", f"--root={root}", *units],
        cwd=root / "etc/systemd/system",
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_units_verify_without_a_word(fake_root: Path) -> None:
    units = [INSTANCES.get(u, u) for u in SERVICES] + ["ledgerflux.target"]
    done = verify(fake_root, *units)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_verify_does_report_a_broken_unit(fake_root: Path) -> None:
    # The check above can fail: a misspelt directive and a missing executable are reported.
    broken = fake_root / "etc/systemd/system/ledgerflux-broken.service"
    text = (UNITS / "ledgerflux-gateway.service").read_text()
    broken.write_text(
        text.replace("ProtectHome=yes", "ProtectHomes=yes").replace(EXECUTABLE, "/opt/nope")
    )
    done = verify(fake_root, "ledgerflux-broken.service")
    output = done.stdout + done.stderr
    assert "ProtectHomes" in output
    assert "/opt/nope" in output


@pytest.mark.parametrize("unit", SERVICES)
def test_security_exposure_is_at_most_2(unit: str) -> None:
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(UNITS / unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout


@pytest.mark.parametrize("unit", SERVICES)
def test_units_run_as_the_sysusers_user_with_sockets_in_the_runtime_directory(unit: str) -> None:
    sysusers = (UNITS / "ledgerflux.sysusers.conf").read_text()
    users = [line.split()[1] for line in sysusers.splitlines() if line.startswith("u ")]
    assert users == [value(unit, "User")]
    environment = dict(v.split("=", 1) for k, v in directives(unit) if k == "Environment")
    # Control sockets live at <data_dir>/run/<daemon>.sock: data_dir is the runtime dir.
    assert environment["LEDGERFLUX_DATA_DIR"] == f"/run/{value(unit, 'RuntimeDirectory')}"
    # Several units share it: it must outlive the first one to stop.
    assert value(unit, "RuntimeDirectoryPreserve") == "yes"
    assert value(unit, "Type") == "notify"
    reload = instance_argv(unit, "ExecReload")
    assert reload[:2] == [EXECUTABLE, "ctl"]
    assert reload[3:] == ["reload"]


def test_the_gateway_may_open_a_descriptor_per_client() -> None:
    nofile = int(value("ledgerflux-gateway.service", "LimitNOFILE"))
    assert nofile >= Config().gateway.max_clients * 2


def test_the_worst_case_stop_is_the_documented_sum() -> None:
    # drain_timeout_s + the normalizer's batch bound (30 s) + closing consumer and bus.
    assert worst_case_stop_s(Config()) == 10.0 + 30.0 + 2 * 5.0
    # A long drain deadline: its snapshotter flush and archive write dominate.
    assert worst_case_stop_s(Config(drain_timeout_s=40.0)) == 40.0 + 80.0 + 2 * 5.0


@pytest.mark.parametrize("unit", SERVICES)
def test_stop_timeouts_exceed_the_worst_case_stop(unit: str) -> None:
    config = load_config(path=UNITS / "ledgerflux.toml", env={})
    assert int(value(unit, "TimeoutStopSec")) >= worst_case_stop_s(config) + STOP_MARGIN_S


@pytest.mark.slow  # a CLI process per unit
@pytest.mark.parametrize("unit", SERVICES)
def test_exec_start_passes_the_cli_check_with_the_example_config(unit: str) -> None:
    argv = instance_argv(unit, "ExecStart")
    assert argv[0] == EXECUTABLE
    assert build_parser().parse_args(argv[1:]).command in (
        "ingest",
        "normalize",
        "snapshot",
        "gateway",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
    env.update(v.split("=", 1) for k, v in directives(unit) if k == "Environment")
    env["LEDGERFLUX_CONFIG"] = str(UNITS / "ledgerflux.toml")
    # EnvironmentFile=/etc/ledgerflux/env holds the database URL on a real host.
    env["LEDGERFLUX_DATABASE_URL"] = "postgresql://ledgerflux@db.invalid/ledgerflux"
    done = subprocess.run(
        [sys.executable, "-m", "ledgerflux", *argv[1:], "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, f"ok: {argv[1]}\n"), done.stderr
