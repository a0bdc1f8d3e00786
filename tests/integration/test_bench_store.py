"""``ledgerflux bench store``: the workload it writes, and a smoke run that prints the agreed
JSON shape (no speed assertion: speed belongs in the benchmark's own output)."""

from __future__ import annotations

import attrs
import orjson
import psycopg
import pytest

from ledgerflux.bench.store import PRODUCTS, main, make_workload
from ledgerflux.codec import from_wire
from ledgerflux.events import Book, Trade
from ledgerflux.state import ProductState
from ledgerflux.store import day_of
from ledgerflux.testing.pg_fixtures import with_database


def test_workload_is_sequenced_per_product_with_states_matching_each_batch() -> None:
    workload = make_workload(2500, 1000)
    assert [len(h) for h, _ in workload.batches] == [1000, 1000, 500]
    events = [row.event for history, _ in workload.batches for row in history]
    assert [row.stream_seq for h, _ in workload.batches for row in h] == list(range(1, 2501))
    replayed = {spec.symbol: ProductState(spec.symbol) for spec in PRODUCTS}
    for history, states in workload.batches:
        for row in history:
            # Raises if a product's seq is not contiguous from 1 or a book change is invalid.
            replayed[row.event.product].apply(row.event)
        touched = sorted({row.event.product for row in history})
        assert sorted(s.product for s in states) == touched
        for state in states:
            assert state.state == replayed[state.product].to_json()
            assert (state.epoch, state.seq) == (
                replayed[state.product].epoch,
                replayed[state.product].seq,
            )
    assert all(isinstance(e, Trade | Book) for e in events)
    assert [e for e in events[: len(PRODUCTS)] if isinstance(e, Book) and e.snapshot] == events[
        : len(PRODUCTS)
    ]
    assert workload.trades == sum(isinstance(e, Trade) for e in events)
    assert 0 < workload.trades < len(events) // 2


def test_workload_copy_rows_are_the_same_events_as_the_history_rows() -> None:
    workload = make_workload(300, 128)
    for (history, _), copy_rows in zip(workload.batches, workload.copy_batches, strict=True):
        assert len(copy_rows) == len(history)
        for row, values in zip(history, copy_rows, strict=True):
            event = row.event
            assert values[:8] == (
                event.product,
                event.epoch,
                event.seq,
                day_of(event.ts_event),
                event.TYPE,
                event.ts_event,
                event.ts_ingest,
                row.stream_seq,
            )
            assert from_wire(orjson.loads(values[8])) == event


def test_workload_is_deterministic() -> None:
    first, second = make_workload(200, 50), make_workload(200, 50)
    assert attrs.asdict(first, recurse=False) == attrs.asdict(second, recurse=False)


@pytest.mark.parametrize("flag", ["--events", "--batch", "--rounds"])
def test_non_positive_sizes_are_refused(flag: str) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([flag, "0"])
    assert excinfo.value.code == 2


@pytest.mark.postgres
def test_bench_store_prints_the_json_summary_last_and_cleans_up(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--json", "--events", "2000", "--url", database_url]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = orjson.loads(last)
    assert set(summary) == {"bench", "metrics", "baseline", "ratio", "machine"}
    assert summary["bench"] == "store"
    assert set(summary["metrics"]) == {"write_per_s"}
    assert set(summary["baseline"]) == {"copy_per_s"}
    assert set(summary["ratio"]) == {"write"}
    assert summary["metrics"]["write_per_s"] > 0
    assert summary["baseline"]["copy_per_s"] > 0
    assert summary["ratio"]["write"] == pytest.approx(
        summary["metrics"]["write_per_s"] / summary["baseline"]["copy_per_s"], rel=0.01
    )
    assert isinstance(summary["machine"], str)
    assert summary["machine"]
    # The work happened in a throw-away schema, dropped at the end.
    with psycopg.connect(database_url) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'lf_bench_%'"
        ).fetchall()
    assert left == []


@pytest.mark.postgres
def test_bench_store_reports_an_unreachable_server_as_an_error(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = with_database(database_url, "lf_no_such_database")
    assert main(["--json", "--events", "10", "--url", bad]) == 1
    captured = capsys.readouterr()
    assert "bench store:" in captured.err
    assert "{" not in captured.out
