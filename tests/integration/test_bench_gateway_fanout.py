"""Smoke test of ``ledgerflux bench gateway --fanout``: a gateway process and two load
generator processes; the JSON line carries the figures the bench reports."""

from __future__ import annotations

import orjson
import pytest

from ledgerflux.bench.gateway import main


@pytest.mark.slow
def test_bench_gateway_fanout_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    # A tiny run of the separate-process fan-out bench: the figures come from real children.
    argv = ["--fanout", "--json", "--connections", "20", "--hot", "6", "--rate", "20"]
    assert main([*argv, "--seconds", "1", "--procs", "2"]) == 0
    result = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "gateway-fanout"
    metrics = result["metrics"]
    assert metrics["connections"] == 20
    assert metrics["hot"] == 6
    assert metrics["published"] > 0
    assert metrics["deliveries_per_s"] > 0
    assert metrics["emfile_log_lines"] == 0
    assert metrics["kib_per_idle_connection"] > 0
