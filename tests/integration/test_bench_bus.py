"""Smoke test of ``ledgerflux bench bus``: it runs and prints the agreed JSON shape."""

from __future__ import annotations

import orjson
import pytest

from ledgerflux.bench.bus import main

pytestmark = [pytest.mark.nats, pytest.mark.slow]


def test_bench_bus_prints_the_json_summary_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", "--messages", "2000"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = orjson.loads(last)
    assert set(summary) == {"bench", "metrics", "baseline", "ratio", "machine"}
    assert summary["bench"] == "bus"
    assert set(summary["metrics"]) == {"publish_per_s", "consume_per_s", "pull_per_s"}
    assert set(summary["baseline"]) == {"publish_per_s", "consume_per_s"}
    assert set(summary["ratio"]) == {"publish", "consume"}
    assert all(v > 0 for v in (*summary["metrics"].values(), *summary["baseline"].values()))
    assert summary["ratio"]["publish"] == pytest.approx(
        summary["metrics"]["publish_per_s"] / summary["baseline"]["publish_per_s"], rel=0.01
    )
    assert isinstance(summary["machine"], str)
    assert summary["machine"]
