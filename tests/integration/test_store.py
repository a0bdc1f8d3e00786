"""The PostgreSQL store against a real server (embedded, or LEDGERFLUX_TEST_DATABASE_URL)."""

from __future__ import annotations

import socket
from decimal import Decimal

import attrs
import psycopg
import pytest
import trio

from ledgerflux.config import DatabaseConfig
from ledgerflux.events import Book, Event, Quote, Status, Trade
from ledgerflux.store import (
    ConsumerPosition,
    HistoryRow,
    StateRow,
    StoreError,
    StoreUnavailable,
    day_of,
    open_store,
)

pytestmark = pytest.mark.postgres

CONFIG = DatabaseConfig(history_retention_days=7, connect_timeout_s=2.0, connect_attempts=2)
DAY_NS = 86_400 * 1_000_000_000
T0 = 1_763_600_000_000_000_000  # 2025-11-20, mid-day UTC
PRODUCT = "coinbase:BTC-USD"


def make_event(
    seq: int, *, product: str = PRODUCT, epoch: str = "e1", ts: int | None = None
) -> Event:
    """A mix of event types with prices that a float would not keep exactly."""
    ts_event = T0 + seq * 1_000_000 if ts is None else ts
    common = {"product": product, "seq": seq, "epoch": epoch, "ts_event": ts_event}
    kind = seq % 4
    if kind == 0:
        return Trade(
            **common,
            ts_ingest=ts_event + 7,
            src_seq=1000 + seq,
            price=Decimal("91234.123456789012345678901"),
            size=Decimal("0.00000001"),
            side="buy",
            trade_id=str(seq),
        )
    if kind == 1:
        return Quote(
            **common,
            ts_ingest=ts_event + 7,
            bid_price=Decimal("0.1000000000000000055511151231257827"),
            bid_size=Decimal("3.50"),
            ask_price=None,
            ask_size=None,
        )
    if kind == 2:
        return Book(
            **common,
            ts_ingest=ts_event + 7,
            snapshot=False,
            bids=((Decimal("100.10"), Decimal("0")),),
            asks=((Decimal("100.20"), Decimal("1E-8")),),
        )
    return Status(**common, ts_ingest=ts_event + 7, status="gap", reason="exchange gap 5..7")


def rows(events: list[Event], first_stream_seq: int = 1) -> list[HistoryRow]:
    return [HistoryRow(event=e, stream_seq=first_stream_seq + i) for i, e in enumerate(events)]


def state(
    seq: int, *, epoch: str = "e1", ts: int | None = None, product: str = PRODUCT
) -> StateRow:
    return StateRow(
        product=product,
        epoch=epoch,
        seq=seq,
        ts_event=T0 + seq if ts is None else ts,
        stream_seq=seq,
        state={"bid": "100.10", "ask": "100.20", "seq": seq, "epoch": epoch},
    )


async def test_migrations_are_idempotent_and_safe_concurrently(database_url: str) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(3):

                async def open_once() -> None:
                    async with open_store(CONFIG, url=database_url) as store:
                        assert await store.history_count() == 0

                nursery.start_soon(open_once)
        async with open_store(CONFIG, url=database_url):
            pass
    with psycopg.connect(database_url) as conn:
        query = "SELECT version FROM schema_migrations ORDER BY version"
        versions = [r[0] for r in conn.execute(query)]
    assert versions == [1, 2, 3]


async def test_write_batch_is_idempotent(database_url: str) -> None:
    events = [make_event(seq) for seq in range(1, 41)]
    with trio.fail_after(30):
        async with open_store(CONFIG, url=database_url) as store:
            await store.write_batch(rows(events), [state(40)])
            await store.write_batch(rows(events), [state(40)])
            # A batch that overlaps what is stored, and repeats rows within itself.
            await store.write_batch(rows(events[30:] + events[35:]), [])
            assert await store.history_count() == 40
            assert await store.history_count(PRODUCT) == 40
            assert await store.history_count("coinbase:ETH-USD") == 0
            assert await store.history(PRODUCT, "e1", 1) == events
            assert await store.latest_states() == [state(40)]


async def test_consumer_position_commits_with_the_rows_or_not_at_all(database_url: str) -> None:
    events = [make_event(seq) for seq in range(1, 11)]
    with trio.fail_after(30):
        async with open_store(CONFIG, url=database_url) as store:
            assert await store.consumer_position("snapshot") is None
            await store.write_batch(
                rows(events[:5]), [state(5)], ConsumerPosition("snapshot", "LF_MD", 5)
            )
            assert await store.consumer_position("snapshot") == ConsumerPosition(
                "snapshot", "LF_MD", 5
            )
            # A batch that fails (an unsequenced event) moves neither rows nor position.
            bad = [*rows(events[5:]), HistoryRow(attrs.evolve(events[5], seq=0), 99)]
            with pytest.raises(StoreError):
                await store.write_batch(bad, [state(10)], ConsumerPosition("snapshot", "LF_MD", 10))
            assert await store.consumer_position("snapshot") == ConsumerPosition(
                "snapshot", "LF_MD", 5
            )
            assert await store.history_count() == 5
            # A position alone (a batch of messages that were all already applied).
            await store.write_batch([], [], ConsumerPosition("snapshot", "LF_MD", 7))
            assert (await store.consumer_position("snapshot")) == ConsumerPosition(
                "snapshot", "LF_MD", 7
            )


async def test_history_range_is_exact_and_whole_events_round_trip(database_url: str) -> None:
    events = [make_event(seq) for seq in range(1, 101)]
    other = [make_event(seq, product="coinbase:ETH-USD") for seq in range(1, 11)]
    new_epoch = [make_event(seq, epoch="e2", ts=T0 + DAY_NS + seq) for seq in range(1, 6)]
    with trio.fail_after(30):
        async with open_store(CONFIG, url=database_url) as store:
            await store.write_batch(rows(events[50:] + other), [])
            await store.write_batch(rows(events[:50] + new_epoch), [])

            assert await store.history(PRODUCT, "e1", 5, 9) == events[4:9]
            assert await store.history(PRODUCT, "e1", 95) == events[94:]
            assert await store.history(PRODUCT, "e1", 10, limit=3) == events[9:12]
            assert await store.history(PRODUCT, "e1", 101) == []
            assert await store.history(PRODUCT, "e2", 1) == new_epoch
            assert await store.history("coinbase:ETH-USD", "e1", 1) == other
            assert await store.history_bounds(PRODUCT, "e1") == (1, 100)
            assert await store.history_bounds(PRODUCT, "e2") == (1, 5)
            assert await store.history_bounds(PRODUCT, "nope") is None
            trade = (await store.history(PRODUCT, "e1", 4, 4))[0]
            assert isinstance(trade, Trade)
            assert trade.price == Decimal("91234.123456789012345678901")
            assert str(trade.price) == "91234.123456789012345678901"


async def test_latest_state_only_moves_forward(database_url: str) -> None:
    with trio.fail_after(30):
        async with open_store(CONFIG, url=database_url) as store:
            assert await store.latest_state(PRODUCT) is None
            await store.write_batch([], [state(5)])
            await store.write_batch([], [state(3)])  # older seq, same epoch: ignored
            assert await store.latest_state(PRODUCT) == state(5)
            await store.write_batch([], [state(5, ts=T0 + 999)])  # same seq: ignored
            assert await store.latest_state(PRODUCT) == state(5)
            # Several states of one product in one batch: the newest wins, in any order.
            await store.write_batch([], [state(8), state(6), state(7)])
            assert await store.latest_state(PRODUCT) == state(8)
            # A new epoch restarts seq; it is accepted because its ts_event is newer.
            restarted = state(1, epoch="e2", ts=T0 + DAY_NS)
            await store.write_batch([], [restarted])
            assert await store.latest_state(PRODUCT) == restarted
            # A late state from the old epoch (older ts_event) does not go back.
            await store.write_batch([], [state(9, epoch="e1")])
            assert await store.latest_state(PRODUCT) == restarted

            eth = state(2, product="coinbase:ETH-USD")
            await store.write_batch([], [eth])
            assert await store.latest_states() == [restarted, eth]
            assert await store.latest_states(["coinbase:ETH-USD", "x:Y"]) == [eth]


async def test_retention_drops_old_day_partitions(database_url: str) -> None:
    now = T0
    ages = [10, 8, 7, 6, 1, 0]  # days before now; retention is 7 days
    batch = [make_event(seq, ts=now - age * DAY_NS) for seq, age in enumerate(ages, start=1)]
    with trio.fail_after(30):
        async with open_store(CONFIG, url=database_url) as store:
            await store.write_batch(rows(batch), [])
            assert await store.history_count() == len(ages)
            assert await store.apply_retention(now) == 2
            assert await store.apply_retention(now) == 0
            kept = await store.history(PRODUCT, "e1", 1)
            assert kept == [e for e in batch if day_of(e.ts_event) >= day_of(now - 7 * DAY_NS)]
            assert await store.history_bounds(PRODUCT, "e1") == (3, 6)
            # A dropped day's partition is recreated on demand if that day is written again.
            await store.write_batch(rows(batch[:1]), [])
            assert await store.history_count() == 5
    with psycopg.connect(database_url) as conn:
        partitions = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            )
        }
    assert f"md_history_{day_of(now):%Y%m%d}" in partitions
    assert f"md_history_{day_of(now - 8 * DAY_NS):%Y%m%d}" not in partitions


async def test_cancel_stops_a_running_statement_and_keeps_the_connection(
    database_url: str,
) -> None:
    with trio.fail_after(10):
        async with open_store(CONFIG, url=database_url) as store:
            with trio.move_on_after(0.2) as scope:
                await store._call("sleep", lambda c: c.execute("SELECT pg_sleep(30)"))
            assert scope.cancelled_caught
            await store.write_batch(rows([make_event(1)]), [state(1)])
            assert await store.history_count() == 1


async def test_cancelled_write_batch_writes_nothing(database_url: str) -> None:
    events = [make_event(seq) for seq in range(1, 11)]
    with trio.fail_after(20):
        async with open_store(CONFIG, url=database_url) as store:
            await store.write_batch([], [state(1)])
            # Another session holds the latest-state row, so the batch blocks after its
            # history rows are in: cancelling it must take those back out too.
            with psycopg.connect(database_url) as blocker:
                blocker.execute("SELECT * FROM md_latest FOR UPDATE")
                with trio.move_on_after(0.2) as scope:
                    await store.write_batch(rows(events), [state(10)])
                assert scope.cancelled_caught
                blocker.rollback()
            assert await store.history_count() == 0
            assert await store.latest_state(PRODUCT) == state(1)
            await store.write_batch(rows(events), [state(10)])
            assert await store.history(PRODUCT, "e1", 1) == events
            assert await store.latest_state(PRODUCT) == state(10)


async def test_unreachable_server_is_store_unavailable_without_the_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://lf:s3cr3t-pw@127.0.0.1:{port}/lfdb"
    config = DatabaseConfig(connect_timeout_s=1.0, connect_attempts=2)
    with trio.fail_after(10), pytest.raises(StoreUnavailable) as info:
        async with open_store(config, url=url):
            pass
    message = str(info.value)
    assert f"127.0.0.1:{port}/lfdb" in message
    assert "2 attempt" in message
    assert "s3cr3t-pw" not in message


async def test_a_lost_connection_is_reported_then_replaced(database_url: str) -> None:
    with trio.fail_after(30):
        async with open_store(CONFIG, url=database_url) as store:
            await store.write_batch(rows([make_event(1)]), [])
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            with pytest.raises(StoreUnavailable, match="lost the connection"):
                await store.history_count()
            # The next call connects again; the session's staging table is made again too.
            await store.write_batch(rows([make_event(2)]), [state(2)])
            assert await store.history(PRODUCT, "e1", 1) == [make_event(1), make_event(2)]


async def test_unsequenced_events_are_refused(database_url: str) -> None:
    unsequenced = make_event(4, epoch="")
    with trio.fail_after(30):
        async with open_store(CONFIG, url=database_url) as store:
            with pytest.raises(StoreError, match="sequenced"):
                await store.write_batch(rows([make_event(1), unsequenced]), [state(1)])
            assert await store.history_count() == 0
            assert await store.latest_state(PRODUCT) is None
