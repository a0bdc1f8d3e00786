"""Smoke test of ``ledgerflux bench gateway``: the JSON line has the docs/development.md shape."""

from __future__ import annotations

import orjson
import pytest

from ledgerflux.bench.gateway import main


@pytest.mark.parametrize("batch", [[], ["--batch"]])
def test_bench_gateway_json_shape(capsys: pytest.CaptureFixture[str], batch: list[str]) -> None:
    assert main(["--json", "--clients", "3", "--events", "40", *batch]) == 0
    result = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"bench", "metrics", "baseline", "ratio", "machine"}
    assert result["bench"] == "gateway"
    keys = {"delivered_per_s", "p50_ms", "p99_ms"}
    assert set(result["metrics"]) == set(result["baseline"]) == set(result["ratio"]) == keys
    assert all(value > 0 for value in result["metrics"].values())
    assert isinstance(result["machine"], str)
