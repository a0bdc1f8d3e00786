"""``ledgerflux bench codec``: the event mix it measures and the summary it prints."""

from __future__ import annotations

import orjson
import pytest

from ledgerflux import codec
from ledgerflux.bench import codec as bench_codec
from ledgerflux.events import Book, Quote, Status, Ticker, Trade


def test_synthetic_mix_is_realistic_and_round_trips() -> None:
    events = bench_codec.synth_events(2000)
    assert len(events) == 2000
    kinds = {type(e) for e in events}
    assert kinds == {Book, Trade, Quote, Ticker, Status}
    books = [e for e in events if isinstance(e, Book)]
    assert len(books) > len(events) // 2  # book deltas dominate, as on a live feed
    assert all(not b.snapshot and 1 <= len(b.bids) + len(b.asks) <= 3 for b in books)
    assert codec.decode_many(codec.encode_many(events)) == events
    assert bench_codec.synth_events(50) == bench_codec.synth_events(50)  # seeded


def test_main_prints_the_summary_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_codec.main(["--json", "--seconds", "0.04", "--events", "200"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = orjson.loads(lines[-1])
    assert summary["bench"] == "codec"
    paths = set(bench_codec.PATHS)
    assert set(summary["metrics"]) == {f"{p}_per_s" for p in paths}
    assert set(summary["baseline"]) == {f"{p}_orjson_per_s" for p in paths}
    assert set(summary["ratio"]) == paths
    for path in paths:
        rate = summary["metrics"][f"{path}_per_s"]
        floor = summary["baseline"][f"{path}_orjson_per_s"]
        assert rate > 0
        assert floor > 0
        assert summary["ratio"][path] == pytest.approx(rate / floor)
    assert len(lines) == len(paths) + 1  # one human line per path, then the JSON


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--events", "0"]])
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        bench_codec.main(argv)
    assert info.value.code == 2
