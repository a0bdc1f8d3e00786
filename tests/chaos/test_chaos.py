"""The chaos suite's short form (CI): every fault, ``LEDGERFLUX_CHAOS_ROUNDS`` rounds each
(3 by default), short outages. It fails when a promise breaks: anything lost, duplicated
or missing, a state that disagrees with its history, a daemon that crashed.

Run it with ``python3 -m uv run pytest -m chaos tests/chaos``; the table is printed (``-s``
shows it live). ``LEDGERFLUX_CHAOS_SEED`` replays a run, ``LEDGERFLUX_CHAOS_FAULTS``
picks faults (see docs/chaos.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest
import trio

from ledgerflux.testing.chaos import ChaosSettings, run_chaos

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.nats,
    pytest.mark.postgres,
    pytest.mark.s3,
    pytest.mark.e2e,
    pytest.mark.slow,
]

BUDGET_S = 1800
"""Bound on the whole short run (it takes a few minutes on two cores)."""


async def test_chaos_short_form_keeps_every_promise(tmp_path: Path) -> None:
    settings = ChaosSettings.short().with_env(os.environ)
    if settings.work_dir is None:
        settings = attrs.evolve(settings, work_dir=tmp_path / "chaos")
    with trio.fail_after(BUDGET_S):
        report = await run_chaos(settings)
    print(f"\nseed {settings.seed}\n{report.table()}\n{report.findings_text()}")
    assert [row.fault for row in report.rows if row.fault != "(start)"] == list(settings.faults)
    assert all(row.rounds == settings.rounds for row in report.rows if row.fault != "(start)")
    assert report.clean, (
        f"chaos (seed {settings.seed}, replay with LEDGERFLUX_CHAOS_SEED={settings.seed}) "
        f"broke a promise:\n{report.table()}\n{report.findings_text()}"
    )
