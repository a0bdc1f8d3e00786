"""The shipped systemd units and Kubernetes manifests speak the CLI and config that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ledgerflux.app import worst_case_stop_s
from ledgerflux.cli import build_parser
from ledgerflux.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]


def _exec_starts() -> list[tuple[str, list[str]]]:
    found = []
    for unit in sorted((ROOT / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                argv = shlex.split(line.removeprefix("ExecStart="))
                # %i is the instance: a feed name or a shard number.
                argv = [a.replace("%i", "0" if "--shard" in argv else "coinbase") for a in argv]
                found.append((unit.name, argv[1:]))
    return found


@pytest.mark.parametrize(("unit", "argv"), _exec_starts())
def test_systemd_units_run_real_commands(unit: str, argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.command in ("ingest", "normalize", "snapshot", "gateway"), unit


def test_systemd_units_use_notify_and_a_stop_deadline() -> None:
    for unit in (ROOT / "systemd").glob("*.service"):
        text = unit.read_text()
        assert "Type=notify" in text, unit.name
        assert "TimeoutStopSec=" in text, unit.name


def k8s_config(tmp_path: Path) -> Config:
    text = (ROOT / "k8s" / "base" / "configmap.yaml").read_text()
    block = text.split("ledgerflux.toml: |\n", 1)[1]
    toml = "\n".join(line.removeprefix("    ") for line in block.splitlines())
    path = tmp_path / "ledgerflux.toml"
    path.write_text(toml)
    return load_config(path=path, env={})


def test_k8s_config_is_a_valid_ledgerflux_config(tmp_path: Path) -> None:
    config = k8s_config(tmp_path)
    assert config.health_port == 9000
    assert config.gateway.port == 8000


STOP_MARGIN_S = 10.0
"""Headroom above the worst-case stop: process exit, a slow machine."""


def test_the_worst_case_stop_is_the_documented_sum() -> None:
    # drain_timeout_s + the normalizer's batch bound (30 s) + closing consumer and bus.
    assert worst_case_stop_s(Config()) == 10.0 + 30.0 + 2 * 5.0
    # A long drain deadline: its snapshotter flush and archive write dominate.
    assert worst_case_stop_s(Config(drain_timeout_s=40.0)) == 40.0 + 80.0 + 2 * 5.0


def test_systemd_stop_timeouts_exceed_the_worst_case_stop() -> None:
    bound = worst_case_stop_s(Config()) + STOP_MARGIN_S
    for unit in sorted((ROOT / "systemd").glob("*.service")):
        found = re.search(r"^TimeoutStopSec=(\d+)$", unit.read_text(), re.MULTILINE)
        assert found is not None, unit.name
        assert int(found.group(1)) >= bound, unit.name


def test_k8s_grace_periods_exceed_the_worst_case_stop(tmp_path: Path) -> None:
    bound = worst_case_stop_s(k8s_config(tmp_path)) + STOP_MARGIN_S
    manifests = sorted((ROOT / "k8s" / "base").glob("*.yaml"))
    periods = []
    for manifest in manifests:
        text = manifest.read_text()
        if "containers:" not in text:
            continue
        found = re.search(r"terminationGracePeriodSeconds: (\d+)", text)
        assert found is not None, manifest.name
        periods.append(int(found.group(1)))
        assert int(found.group(1)) >= bound, manifest.name
    assert len(periods) == 4  # ingest, normalize, snapshot, gateway


def test_k8s_containers_run_real_commands() -> None:
    for manifest in sorted((ROOT / "k8s" / "base").glob("*.yaml")):
        for match in re.finditer(r"args: \[(.*)\]", manifest.read_text()):
            items = shlex.split(match.group(1).replace(",", " "))
            if items[0].startswith("exec ledgerflux "):
                argv = shlex.split(items[0].removeprefix("exec ledgerflux "))
                argv = [a.replace("${HOSTNAME##*-}", "1") for a in argv]
            else:
                argv = items
            args = build_parser().parse_args(argv)
            assert args.command in ("ingest", "normalize", "snapshot", "gateway"), manifest.name
