"""History retention on a schedule, against a real PostgreSQL holding old day partitions."""

from __future__ import annotations

import time
from decimal import Decimal
from functools import partial
from pathlib import Path

import attrs
import psycopg
import pytest
import trio
from prometheus_client import REGISTRY

from ledgerflux.app import serve_daemon
from ledgerflux.config import Config, DatabaseConfig, NatsConfig
from ledgerflux.events import Trade
from ledgerflux.health import Readiness
from ledgerflux.retention import serve_retention
from ledgerflux.store import HistoryRow, Store, day_of, open_store

pytestmark = pytest.mark.postgres

DAY_NS = 86_400 * 1_000_000_000
NOW = 1_763_640_000_000_000_000  # 2025-11-20 12:00 UTC
PRODUCT = "coinbase:BTC-USD"
AGES_DAYS = [30, 10, 8, 2, 1, 0]
"""Days before NOW of the stored events: six day partitions."""


def trade(seq: int, ts: int) -> Trade:
    return Trade(
        product=PRODUCT,
        seq=seq,
        epoch="e1",
        ts_event=ts,
        ts_ingest=ts + 1,
        src_seq=seq,
        price=Decimal("91234.5"),
        size=Decimal("0.01"),
        side="buy",
        trade_id=str(seq),
    )


EVENTS = [trade(seq, NOW - age * DAY_NS) for seq, age in enumerate(AGES_DAYS, start=1)]


def config(*, keep_days: int = 7, **more: object) -> Config:
    database = DatabaseConfig(
        history_retention_days=keep_days,
        retention_interval_s=0.05,
        connect_timeout_s=2.0,
        connect_attempts=2,
    )
    return attrs.evolve(Config(database=database), **more)


@attrs.define
class Rounds:
    """The real store, and an event per retention round that it finished (or failed)."""

    store: Store
    done: list[trio.Event] = attrs.field(factory=lambda: [trio.Event() for _ in range(8)])
    calls: int = 0

    async def apply_retention(self, now_ns: int) -> int:
        try:
            return await self.store.apply_retention(now_ns)
        finally:
            self.done[self.calls].set()
            self.calls += 1


def partition_days(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE c.relkind = 'r' AND c.relname LIKE 'md\\_history\\_2%' ORDER BY 1"
        ).fetchall()
    return [r[0].removeprefix("md_history_") for r in rows]


def expected_days(now_ns: int, keep_days: int) -> list[str]:
    cutoff = day_of(now_ns - keep_days * DAY_NS)
    return sorted({f"{day_of(e.ts_event):%Y%m%d}" for e in EVENTS if day_of(e.ts_event) >= cutoff})


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_retention_drops_expired_partitions_at_start_and_on_schedule(
    database_url: str,
) -> None:
    clock_ns = NOW

    def clock() -> int:
        return clock_ns

    dropped_before = metric("ledgerflux_retention_partitions_dropped_total")
    with trio.fail_after(30):
        async with open_store(config().database, url=database_url) as store:
            await store.write_batch([HistoryRow(e, i) for i, e in enumerate(EVENTS, 1)], [])
            rounds = Rounds(store)
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve_retention, config(), store=rounds, clock=clock))
                await rounds.done[0].wait()
                # At start: 7 whole days before today are kept; 30, 10 and 8 days ago go.
                assert partition_days(database_url) == expected_days(NOW, 7)
                assert [e.seq for e in await store.history(PRODUCT, "e1", 1)] == [4, 5, 6]
                # Six days later, the next rounds drop what expired meanwhile.
                clock_ns = NOW + 6 * DAY_NS
                await rounds.done[2].wait()
                assert partition_days(database_url) == expected_days(NOW + 6 * DAY_NS, 7)
                assert [e.seq for e in await store.history(PRODUCT, "e1", 1)] == [5, 6]
                nursery.cancel_scope.cancel()
    assert metric("ledgerflux_retention_partitions_dropped_total") - dropped_before == 4


async def test_a_failed_round_is_counted_and_retried_without_stopping(
    database_url: str,
) -> None:
    errors_before = metric("ledgerflux_retention_errors_total")
    with trio.fail_after(30):
        async with open_store(config().database, url=database_url) as store:
            await store.write_batch([HistoryRow(e, i) for i, e in enumerate(EVENTS, 1)], [])
            # A real fault: the server ends the store's session, as a restart or an
            # administrator would; the next call finds the connection broken.
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            rounds = Rounds(store)
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(serve_retention, config(), store=rounds, clock=lambda: NOW)
                )
                await rounds.done[1].wait()
                nursery.cancel_scope.cancel()
    assert metric("ledgerflux_retention_errors_total") - errors_before >= 1
    assert partition_days(database_url) == expected_days(NOW, 7)


@pytest.mark.nats
@pytest.mark.slow
async def test_the_snapshot_daemon_applies_retention(
    tmp_path: Path, nats_url: str, database_url: str
) -> None:
    cfg = config(
        data_dir=str(tmp_path / "data"),
        nats=NatsConfig(url=nats_url),
    )
    cfg = attrs.evolve(cfg, database=attrs.evolve(cfg.database, url=database_url))
    with trio.fail_after(60):
        async with open_store(cfg.database, url=database_url) as store:
            # Written relative to the real clock: the daemon uses the wall clock.
            now = time.time_ns()
            old = [trade(1, now - 30 * DAY_NS), trade(2, now)]
            await store.write_batch([HistoryRow(e, i) for i, e in enumerate(old, 1)], [])
        drain = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(serve_daemon, "snapshot", cfg, readiness=Readiness(), drain=drain)
            )
            while len(partition_days(database_url)) != 1:  # noqa: ASYNC110
                await trio.sleep(0.05)
            drain.set()
    assert partition_days(database_url) == [f"{day_of(now):%Y%m%d}"]
