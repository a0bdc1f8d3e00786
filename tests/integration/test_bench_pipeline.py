"""``ledgerflux bench pipeline``: a short run through the real daemons in both modes that
prints the agreed JSON shape and moved events end to end (no speed assertion: speed belongs
in the benchmark's own output)."""

from __future__ import annotations

import orjson
import pytest
import trio

from ledgerflux.bench.pipeline import main

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]


async def test_pipeline_bench_moves_events_through_both_modes_and_the_baseline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--json", "--rates", "0,300", "--warmup-s", "0.5", "--window-s", "1.5"]
    with trio.fail_after(600):
        assert await trio.to_thread.run_sync(main, argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = orjson.loads(out[-1])
    assert summary["bench"] == "pipeline"
    per_rate = {"sat": {"events_per_s", "committed_per_s"}}
    per_rate["300"] = {"events_per_s", "cpu_us_per_event", "p50_us", "p99_us"}
    per_rate["300"].add("crossings_per_event")
    expected = {
        f"{mode}_{rate}_{name}"
        for mode in ("one", "split")
        for rate, names in per_rate.items()
        for name in names
    }
    assert set(summary["metrics"]) == expected
    assert set(summary["baseline"]) == {
        "sat_events_per_s",
        "300_events_per_s",
        "300_cpu_us_per_event",
        "300_p50_us",
        "300_p99_us",
    }
    # Events went all the way: to the subscriber and into PostgreSQL, in every mode.
    for mode in ("one", "split"):
        assert summary["metrics"][f"{mode}_sat_events_per_s"] > 0
        assert summary["metrics"][f"{mode}_sat_committed_per_s"] > 0
        assert summary["metrics"][f"{mode}_300_events_per_s"] > 0
        assert summary["metrics"][f"{mode}_300_cpu_us_per_event"] > 0
        assert summary["metrics"][f"{mode}_300_crossings_per_event"] > 0
    assert summary["baseline"]["sat_events_per_s"] > 0
    assert set(summary["ratio"]) <= set(summary["metrics"])
    assert any(line.startswith("one ") and "saturation" in line for line in out)
