"""``ledgerflux bench store``: events/s persisted through :meth:`Store.write_batch` vs raw COPY.

Measured, in one run against the same server (``--url``, else an embedded PostgreSQL in a
temp dir):

* ``write_per_s``: canonical events persisted through :meth:`Store.write_batch`, in
  sequential batches of ``--batch``. Each call does what the snapshotter does per batch:
  encode the events to their wire JSON, COPY them into the staging table, insert them into
  the day-partitioned ``md_history`` with ``ON CONFLICT DO NOTHING``, and upsert the latest
  state of every product the batch touched, all in one transaction.

The baseline, ``copy_per_s``, is the floor PostgreSQL sets for the same rows: plain psycopg
(sync) ``COPY ... FROM STDIN`` of the same history tuples (already encoded) into a plain
table with the same columns (no partitions, no primary key, no latest state), one
transaction per batch of the same size. ``ratio`` = store / baseline.

The events are a deterministic synthetic Coinbase-like mix for a few products: one L2
snapshot per product, then ~75 % book deltas (one or two levels) and ~25 % trades at the
touch; per-product ``seq`` from 1, one ``epoch``, ``ts_event`` 0.5 ms apart. The state rows
are :meth:`ProductState.to_json` of each touched product at the end of its batch. All of
it is built before any clock starts.

The work happens in a throw-away schema (``lf_bench_*``, put first on the connection's
``search_path``), dropped at the end, so a real server's LedgerFlux tables are not touched.
Baseline and store alternate ``--rounds`` times on emptied tables and the best round of each
counts, so drift (a noisy neighbour) hits both alike. With ``--json`` the last line printed
is one JSON object (docs/development.md).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import orjson
import psycopg
import psycopg.conninfo
import trio
from psycopg import sql

from ledgerflux.bench import machine, print_summary
from ledgerflux.codec import to_wire
from ledgerflux.config import DatabaseConfig
from ledgerflux.embedded.postgres import open_postgres
from ledgerflux.events import Book, Event, Trade
from ledgerflux.state import ProductState
from ledgerflux.store import HistoryRow, StateRow, Store, StoreError, day_of, open_store

__all__ = ["Workload", "main", "make_workload"]

T0_NS = 1_763_600_000_000_000_000
"""2025-11-20 00:53 UTC: every event of a default run falls on the same UTC day."""
EVENT_SPACING_NS = 500_000
INGEST_DELAY_NS = 350_000
EPOCH = "01JDBENCHSTORE"
BOOK_DEPTH = 50
"""Levels per side in the opening snapshot; deltas keep the book between 10 and 80."""
DELTA_SHARE = 0.75

_COLUMNS = "product, epoch, seq, day, type, ts_event, ts_ingest, stream_seq, payload"


@attrs.frozen
class _Spec:
    symbol: str
    mid: Decimal
    tick: Decimal
    weight: int


PRODUCTS = (
    _Spec("coinbase:BTC-USD", Decimal("91234.56"), Decimal("0.01"), 40),
    _Spec("coinbase:ETH-USD", Decimal("3012.45"), Decimal("0.01"), 30),
    _Spec("coinbase:SOL-USD", Decimal("142.371"), Decimal("0.001"), 20),
    _Spec("coinbase:DOGE-USD", Decimal("0.16234"), Decimal("0.00001"), 10),
)


@attrs.frozen
class Workload:
    """Everything one round writes, built before timing starts."""

    batches: list[tuple[list[HistoryRow], list[StateRow]]]
    """Arguments of each :meth:`Store.write_batch` call, in order."""
    copy_batches: list[list[tuple[Any, ...]]]
    """The same history rows as ``md_history`` column tuples, payload already encoded."""
    events: int
    products: int
    trades: int
    payload_bytes: int
    """Total wire JSON size of the history payloads."""
    state_rows: int
    state_bytes: int


class _Product:
    """One product's synthetic book and counters (mutable, generation only)."""

    def __init__(self, spec: _Spec, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        self.seq = 0
        self.src_seq = 1_000_000
        self.trade_id = 500_000_000
        self.last_stream_seq = 0
        self.state = ProductState(spec.symbol)
        # Level k (1-based) on each side sits k ticks away from the fixed mid, so a change
        # can never cross the book.
        self.bids: dict[int, Decimal] = {k: self._size() for k in range(1, BOOK_DEPTH + 1)}
        self.asks: dict[int, Decimal] = {k: self._size() for k in range(1, BOOK_DEPTH + 1)}

    def _size(self) -> Decimal:
        return Decimal(self.rng.randint(1, 50_000_000)).scaleb(-8)

    def _price(self, side: str, k: int) -> Decimal:
        offset = self.spec.tick * k
        return self.spec.mid - offset if side == "bid" else self.spec.mid + offset

    def _stamp(self, ts: int) -> dict[str, Any]:
        self.seq += 1
        self.src_seq += 1
        return {
            "product": self.spec.symbol,
            "seq": self.seq,
            "epoch": EPOCH,
            "src_seq": self.src_seq,
            "ts_event": ts,
            "ts_ingest": ts + INGEST_DELAY_NS,
        }

    def snapshot(self, ts: int) -> Event:
        return Book(
            **self._stamp(ts),
            snapshot=True,
            bids=tuple((self._price("bid", k), s) for k, s in sorted(self.bids.items())),
            asks=tuple((self._price("ask", k), s) for k, s in sorted(self.asks.items())),
        )

    def delta(self, ts: int) -> Event:
        side = self.rng.choice(("bid", "ask"))
        levels = self.bids if side == "bid" else self.asks
        changes: list[tuple[Decimal, Decimal]] = []
        for k in self.rng.sample(range(1, BOOK_DEPTH + 30), self.rng.choice((1, 1, 2))):
            if k in levels and len(levels) > 10 and self.rng.random() < 0.3:
                del levels[k]
                size = Decimal(0)
            else:
                size = levels[k] = self._size()
            changes.append((self._price(side, k), size))
        bids, asks = (tuple(changes), ()) if side == "bid" else ((), tuple(changes))
        return Book(**self._stamp(ts), snapshot=False, bids=bids, asks=asks)

    def trade(self, ts: int) -> Event:
        buy = self.rng.random() < 0.5
        # A buy takes the best ask, a sell hits the best bid.
        price = self._price("ask", min(self.asks)) if buy else self._price("bid", min(self.bids))
        self.trade_id += 1
        return Trade(
            **self._stamp(ts),
            price=price,
            size=Decimal(self.rng.randint(1, 5_000_000)).scaleb(-8),
            side="buy" if buy else "sell",
            trade_id=str(self.trade_id),
        )


def _copy_tuple(event: Event, stream_seq: int) -> tuple[Any, ...]:
    # The same column values Store.write_batch derives from a HistoryRow.
    return (
        event.product,
        event.epoch,
        event.seq,
        day_of(event.ts_event),
        event.TYPE,
        event.ts_event,
        event.ts_ingest,
        stream_seq,
        orjson.dumps(to_wire(event)).decode(),
    )


def make_workload(events: int, batch: int, *, seed: int = 7) -> Workload:
    """``events`` sequenced events in batches of ``batch``, with the latest-state rows of
    the products each batch touched. Deterministic for a given seed."""
    rng = random.Random(seed)
    products = [_Product(spec, rng) for spec in PRODUCTS]
    weights = [spec.weight for spec in PRODUCTS]
    batches: list[tuple[list[HistoryRow], list[StateRow]]] = []
    copy_batches: list[list[tuple[Any, ...]]] = []
    trades = payload_bytes = state_rows = state_bytes = 0
    for start in range(0, events, batch):
        history: list[HistoryRow] = []
        copy_rows: list[tuple[Any, ...]] = []
        touched: dict[str, _Product] = {}
        for i in range(start, min(start + batch, events)):
            ts = T0_NS + i * EVENT_SPACING_NS
            if i < len(products):  # every product opens with its snapshot
                product = products[i]
                event = product.snapshot(ts)
            else:
                product = rng.choices(products, weights)[0]
                if rng.random() < DELTA_SHARE:
                    event = product.delta(ts)
                else:
                    event = product.trade(ts)
                    trades += 1
            product.state.apply(event)
            product.last_stream_seq = i + 1
            touched[product.spec.symbol] = product
            history.append(HistoryRow(event=event, stream_seq=i + 1))
            row = _copy_tuple(event, i + 1)
            copy_rows.append(row)
            payload_bytes += len(row[-1])
        states = []
        for product in touched.values():
            doc = product.state.to_json()
            state_bytes += len(orjson.dumps(doc))
            states.append(
                StateRow(
                    product=product.spec.symbol,
                    epoch=product.state.epoch,
                    seq=product.state.seq,
                    ts_event=product.state.ts_event,
                    stream_seq=product.last_stream_seq,
                    state=doc,
                )
            )
        state_rows += len(states)
        batches.append((history, states))
        copy_batches.append(copy_rows)
    return Workload(
        batches=batches,
        copy_batches=copy_batches,
        events=events,
        products=len(products),
        trades=trades,
        payload_bytes=payload_bytes,
        state_rows=state_rows,
        state_bytes=state_bytes,
    )


# --------------------------------------------------------------------------- database


def _with_search_path(url: str, schema: str) -> str:
    """``url`` whose sessions put ``schema`` first on their ``search_path``."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    options = f"{params.get('options') or ''} -c search_path={schema}".strip()
    return psycopg.conninfo.make_conninfo(url, options=options)


def _admin(url: str, statement: sql.Composed | sql.SQL) -> str:
    """Run one statement on its own autocommit connection; returns the server version."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


def _copy_round(url: str, copy_batches: list[list[tuple[Any, ...]]]) -> float:
    """The baseline: seconds to COPY every batch into ``bench_copy``, one commit per batch."""
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        for rows in copy_batches:
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY bench_copy ({_COLUMNS}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
        elapsed = time.perf_counter() - started
        counted = conn.execute("SELECT count(*) FROM bench_copy").fetchone()
    count = int(counted[0]) if counted else 0
    expected = sum(len(rows) for rows in copy_batches)
    if count != expected:
        raise RuntimeError(f"baseline wrote {count} rows, expected {expected}")
    return elapsed


def _encode_seconds(workload: Workload) -> float:
    """CPU time to turn the events into history tuples (wire JSON), the part of
    ``write_per_s`` that the pre-encoded baseline does not pay."""
    started = time.perf_counter()
    for history, _ in workload.batches:
        for row in history:
            _copy_tuple(row.event, row.stream_seq)
    return time.perf_counter() - started


async def _store_round(store: Store, workload: Workload) -> float:
    started = time.perf_counter()
    for history, states in workload.batches:
        await store.write_batch(history, states)
    elapsed = time.perf_counter() - started
    # A benchmark of writes that did not happen would be worthless: check before reporting.
    count = await store.history_count()
    latest = await store.latest_states()
    products = min(workload.products, workload.events)
    if count != workload.events or len(latest) != products:
        raise RuntimeError(
            f"the store holds {count} history rows and {len(latest)} states, expected"
            f" {workload.events} and {products}"
        )
    return elapsed


@attrs.frozen
class BenchResult:
    metrics: dict[str, int]
    baseline: dict[str, int]
    ratio: dict[str, float]
    machine: str
    server_version: str


async def _run(url: str | None, workload: Workload, rounds: int) -> BenchResult:
    if url is not None:
        return await _measure(url, workload, rounds)
    with tempfile.TemporaryDirectory(prefix="lf-bench-store-") as tmp:
        async with open_postgres(Path(tmp)) as server:
            return await _measure(server.url, workload, rounds)


async def _measure(url: str, workload: Workload, rounds: int) -> BenchResult:
    schema = f"lf_bench_{os.getpid()}_{time.time_ns()}"
    ident = sql.Identifier(schema)
    version = await trio.to_thread.run_sync(_admin, url, sql.SQL("CREATE SCHEMA {}").format(ident))
    bench_url = _with_search_path(url, schema)
    best_write = best_copy = float("inf")
    try:
        async with open_store(DatabaseConfig(), url=bench_url) as store:
            # Same columns and types as md_history, but a plain heap: the floor for COPY.
            await trio.to_thread.run_sync(
                _admin,
                bench_url,
                sql.SQL("CREATE TABLE bench_copy AS SELECT {} FROM md_history WITH NO DATA").format(
                    sql.SQL(_COLUMNS)
                ),
            )
            empty = sql.SQL("TRUNCATE md_history, md_latest, bench_copy")
            for _ in range(rounds):
                await trio.to_thread.run_sync(_admin, bench_url, empty)
                copy_s = await trio.to_thread.run_sync(
                    _copy_round, bench_url, workload.copy_batches
                )
                write_s = await _store_round(store, workload)
                best_copy = min(best_copy, copy_s)
                best_write = min(best_write, write_s)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(
                _admin, url, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident)
            )
    write_per_s = workload.events / best_write
    copy_per_s = workload.events / best_copy
    return BenchResult(
        metrics={"write_per_s": round(write_per_s)},
        baseline={"copy_per_s": round(copy_per_s)},
        ratio={"write": round(write_per_s / copy_per_s, 3)},
        machine=machine(),
        server_version=version,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ledgerflux bench store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON line last")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--url", default=None, help="libpq URL; default: embedded PostgreSQL")
    args = parser.parse_args(argv)
    if args.events < 1 or args.batch < 1 or args.rounds < 1:
        parser.error("--events, --batch and --rounds must be >= 1")
    workload = make_workload(args.events, args.batch)
    try:
        result = trio.run(_run, args.url, workload, args.rounds)
    except (psycopg.Error, StoreError) as exc:
        # The message names what failed; a libpq URL with a password is never printed.
        print(f"bench store: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    metrics, baseline, ratio = result.metrics, result.baseline, result.ratio
    print(
        f"store bench: {workload.events:,} events ({workload.trades:,} trades, the rest L2"
        f" book) for {workload.products} products, batch {args.batch},"
        f" best of {args.rounds} rounds, PostgreSQL {result.server_version}"
    )
    print(
        f"history payload: mean {workload.payload_bytes // workload.events} bytes;"
        f" {workload.state_rows:,} latest-state rows,"
        f" mean {workload.state_bytes // max(1, workload.state_rows):,} bytes"
    )
    print(
        f"Store.write_batch: {metrics['write_per_s']:>9,} events/s"
        "  (encode, COPY to staging, partitioned insert, state upsert; 1 txn/batch)"
    )
    print(
        f"raw psycopg COPY:  {baseline['copy_per_s']:>9,} rows/s"
        "    (same rows pre-encoded, plain table; 1 txn/batch)"
    )
    encode_s = min(_encode_seconds(workload) for _ in range(args.rounds))
    print(
        f"(for scale: encoding alone runs at {round(workload.events / encode_s):,} events/s"
        " in this process)"
    )
    print(f"ratio write: {ratio['write']}")
    if args.json:
        print_summary("store", metrics=result.metrics, baseline=result.baseline, ratio=result.ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
