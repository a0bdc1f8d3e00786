"""The chaos suite's settings and report, without running anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from ledgerflux.testing import chaos
from ledgerflux.testing.chaos import FAULTS, ChaosReport, ChaosRun, ChaosSettings, FaultRow
from ledgerflux.testing.chaos_checks import Finding


def test_short_form_and_environment_overrides() -> None:
    short = ChaosSettings.short(seed=5)
    assert (short.seed, short.rounds, short.pg_down_s, short.faults) == (5, 3, 5.0, FAULTS)
    env = {
        "LEDGERFLUX_CHAOS_ROUNDS": "4",
        "LEDGERFLUX_CHAOS_SEED": "99",
        "LEDGERFLUX_CHAOS_FAULTS": "pg-stop, kill-gateway",
        "LEDGERFLUX_CHAOS_PG_DOWN_S": "2.5",
        "LEDGERFLUX_CHAOS_WORK_DIR": "/somewhere",
        "LEDGERFLUX_NATS_URL": "nats://ignored:4222",
    }
    got = short.with_env(env)
    assert (got.rounds, got.seed, got.pg_down_s) == (4, 99, 2.5)
    assert got.faults == ("pg-stop", "kill-gateway")
    assert got.work_dir == Path("/somewhere")
    full = ChaosSettings.full(seed=1)
    assert (full.rounds, full.pg_down_s) == (10, 30.0)


def test_an_unknown_fault_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown fault.*'kill-everything'"):
        ChaosSettings.short(seed=1).with_env({"LEDGERFLUX_CHAOS_FAULTS": "kill-everything"})


def test_table_sums_findings_per_kind_and_only_explained_ones_are_clean() -> None:
    explained = Finding("explained", "a", 4, "gap announced")
    lost = Finding("lost", "b", 1, "md_history lacks x")
    hole = Finding("hole", "c", 3, "seq 1 -> 5")
    report = ChaosReport(
        settings=ChaosSettings.short(seed=7),
        work_dir=Path("w"),
        rows=[
            FaultRow("kill-ingest", rounds=3, events=100, findings=[explained],
                     recovery_s=[1.0, 2.5], ready_s=[0.9], book_live_s=[]),
            FaultRow("kill-snapshot", rounds=3, events=50, findings=[lost, hole, hole]),
        ],
    )  # fmt: skip
    assert report.rows[0].clean
    assert not report.rows[1].clean
    assert not report.clean
    lines = report.table().splitlines()
    assert lines[2].split() == [
        "kill-ingest",
        "3",
        "100",
        "0",
        "0",
        "0",
        "0",
        "0",
        "2.50",
        "0.90",
        "-",
    ]
    assert lines[3].split()[:6] == ["kill-snapshot", "3", "50", "1", "0", "6"]
    doc = report.to_json()
    assert doc["seed"] == 7
    assert doc["clean"] is False
    assert doc["rows"][1]["lost"] == 1
    assert doc["rows"][1]["holes"] == 6
    assert "md_history lacks x" in report.findings_text()
    assert "gap announced" not in report.findings_text()


class _StalledRun:
    """What ChaosRun.settle reads, with LF_MD's position never coming back (a cluster too
    loaded to answer before the bound)."""

    def __init__(self) -> None:
        self.settings = ChaosSettings.short(seed=1)
        self.active = {"snapshot"}
        self.daemons: dict[str, object] = {"snapshot": object()}
        self.seen: set[str] = set()

    async def restart_crashed(self, findings: list[Finding]) -> None:
        await trio.lowlevel.checkpoint()

    async def _md_position(self) -> tuple[int, dict[str, int]]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_settle_bound_passing_while_lf_md_is_read_is_a_stall_finding(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def ready(daemon: object, timeout_s: float) -> None:
        await trio.lowlevel.checkpoint()

    monkeypatch.setattr(chaos, "_wait_ready", ready)
    findings: list[Finding] = []
    run = _StalledRun()
    waited = await ChaosRun.settle(run, findings)  # type: ignore[arg-type]
    assert waited == run.settings.settle_timeout_s
    assert [(f.kind, f.count) for f in findings] == [("state", 1)]
    assert "LF_MD's position was still being read" in findings[0].detail
