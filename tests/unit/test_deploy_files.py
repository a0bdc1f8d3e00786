"""The shipped systemd units and Kubernetes manifests speak the CLI and config that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ledgerflux.cli import build_parser
from ledgerflux.config import load_config

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


def test_k8s_config_is_a_valid_ledgerflux_config(tmp_path: Path) -> None:
    text = (ROOT / "k8s" / "base" / "configmap.yaml").read_text()
    block = text.split("ledgerflux.toml: |\n", 1)[1]
    toml = "\n".join(line.removeprefix("    ") for line in block.splitlines())
    path = tmp_path / "ledgerflux.toml"
    path.write_text(toml)
    config = load_config(path=path, env={})
    assert config.health_port == 9000
    assert config.gateway.port == 8000


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
