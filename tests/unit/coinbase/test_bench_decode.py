"""Smoke test of ``ledgerflux bench decode``: it runs and its JSON line has the contract shape.

Speed is not asserted here (it belongs to the benchmark run, not to a unit test).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from coinbase_support import CAPTURE
from ledgerflux_coinbase import AdvancedDecoder, ExchangeDecoder

from ledgerflux.bench import decode as bench


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert bench.main(["--json", "--seconds", "0.05", *argv]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = orjson.loads(last)
    assert isinstance(result, dict)
    return result


def _check_shape(result: dict[str, object]) -> None:
    assert result["bench"] == "decode"
    assert set(result) == {"bench", "metrics", "baseline", "ratio", "machine"}
    assert isinstance(result["machine"], str)
    assert result["machine"]
    metrics, baseline, ratio = result["metrics"], result["baseline"], result["ratio"]
    assert isinstance(metrics, dict)
    assert isinstance(baseline, dict)
    assert isinstance(ratio, dict)
    apis = {"exchange", "advanced", *bench.RECORDED}
    assert set(metrics) == {f"{api}_frames_per_s" for api in apis}
    assert set(baseline) == {f"{api}_orjson_per_s" for api in apis}
    assert set(ratio) == apis
    for value in (*metrics.values(), *baseline.values(), *ratio.values()):
        assert isinstance(value, float)
        assert value > 0


def test_bench_with_the_capture(capsys: pytest.CaptureFixture[str]) -> None:
    if not CAPTURE.exists():
        pytest.skip("reference capture not present")
    _check_shape(_run(capsys, "--capture", str(CAPTURE)))


def test_bench_synthetic_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no capture next to the working directory
    _check_shape(_run(capsys))


def test_synthetic_frames_decode_without_errors() -> None:
    exchange, advanced = ExchangeDecoder(), AdvancedDecoder()
    frames = bench.synth_exchange(500)
    assert all(not exchange.decode(f, 0).errors for f in frames)
    assert all(exchange.decode(f, 0).events for f in frames)
    frames = bench.synth_advanced(500)
    assert all(not advanced.decode(f, 0).errors for f in frames)


def test_bench_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--seconds", "0"])
    assert "--seconds" in capsys.readouterr().err
