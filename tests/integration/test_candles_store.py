"""Candles in PostgreSQL: merged with each batch's trades in its transaction, exact under
batches written again, equal to a rebuild from md_history and to a plain SQL aggregate
over md_history (a ``price_stats_1min``-style view)."""

from __future__ import annotations

import random
from decimal import Decimal

import psycopg
import pytest
import trio

from ledgerflux.candles import INTERVAL_NS, Candle, fold
from ledgerflux.events import Event, Quote, Trade
from ledgerflux.store import HistoryRow, open_store
from tests.integration.test_store import CONFIG, T0

pytestmark = pytest.mark.postgres

MINUTE0 = T0 - T0 % INTERVAL_NS

PRICE_STATS_1MIN = """
SELECT product,
       (ts_event / 60000000000) * 60000000000 AS start_ns,
       (array_agg((payload->>'price')::numeric
                  ORDER BY ts_event, epoch COLLATE "C", seq))[1] AS open,
       max((payload->>'price')::numeric) AS high,
       min((payload->>'price')::numeric) AS low,
       (array_agg((payload->>'price')::numeric
                  ORDER BY ts_event DESC, epoch COLLATE "C" DESC, seq DESC))[1] AS close,
       sum((payload->>'size')::numeric) AS volume,
       count(*) AS trades
FROM md_history WHERE type = 'trade'
GROUP BY 1, 2 ORDER BY 1, 2
"""
"""The anchor: one GROUP BY over the stored trades (open/close by the documented order)."""


def market(seed: int) -> list[HistoryRow]:
    """Trades (and quotes between them) of two products over six minutes and two epochs,
    with exchange timestamps that tie and go backwards within a product, and prices and
    sizes a float would not keep exactly. Stream positions interleave the products."""
    rng = random.Random(seed)
    history: list[HistoryRow] = []
    seqs: dict[tuple[str, str], int] = {}
    for position in range(1, 801):
        product = rng.choice(["coinbase:BTC-USD", "coinbase:ETH-USD"])
        epoch = "0000000000001" if position < 500 else "0000000000002"
        seq = seqs[(product, epoch)] = seqs.get((product, epoch), 0) + 1
        # Mostly forward in time, sometimes a tie or a step back (exchange clocks).
        ts = MINUTE0 + position * 450_000_000 - rng.choice([0, 0, 0, 300_000_000, 10**9])
        event: Event
        if rng.random() < 0.8:
            event = Trade(
                product=product,
                seq=seq,
                epoch=epoch,
                ts_event=ts,
                ts_ingest=ts + 5,
                price=Decimal(f"{rng.randint(90_000, 91_000)}.{rng.randint(0, 10**12):012d}"),
                size=Decimal(f"0.{rng.randint(1, 10**9):09d}"),
                side=rng.choice(["buy", "sell"]),
            )
        else:
            event = Quote(
                product=product,
                seq=seq,
                epoch=epoch,
                ts_event=ts,
                ts_ingest=ts + 5,
                bid_price=Decimal("1.5"),
                bid_size=Decimal("1"),
                ask_price=Decimal("2.5"),
                ask_size=Decimal("1"),
            )
        history.append(HistoryRow(event, position))
    return history


def expected_candles(history: list[HistoryRow]) -> list[Candle]:
    pairs = [(row.event, row.stream_seq) for row in history if isinstance(row.event, Trade)]
    return sorted(fold(pairs).values(), key=lambda c: (c.product, c.start))


async def all_candles(store: object) -> list[Candle]:
    from ledgerflux.store import Store

    assert isinstance(store, Store)
    out: list[Candle] = []
    for product in ("coinbase:BTC-USD", "coinbase:ETH-USD"):
        out += await store.candles(product, MINUTE0 - INTERVAL_NS, MINUTE0 + 100 * INTERVAL_NS)
    return out


async def test_candles_are_exact_incremental_rebuilt_and_match_a_plain_aggregate(
    database_url: str,
) -> None:
    history = market(seed=7)
    rng = random.Random(11)
    with trio.fail_after(60):
        async with open_store(CONFIG, url=database_url) as store:
            start = 0
            while start < len(history):
                size = rng.randint(1, 90)
                await store.write_batch(history[start : start + size], [])
                # A restart reads some of what was committed again (overlapping batches,
                # a batch twice): nothing may be counted twice.
                if rng.random() < 0.3:
                    back = max(0, start - rng.randint(0, 40))
                    await store.write_batch(history[back : start + size], [])
                start += size
            await store.write_batch(history, [])  # everything again

            incremental = await all_candles(store)
            assert incremental == expected_candles(history)
            assert len({c.start for c in incremental}) >= 5  # several minutes, several batches

            with psycopg.connect(database_url) as conn:
                plain = conn.execute(PRICE_STATS_1MIN).fetchall()
            assert plain == [
                (c.product, c.start, c.open, c.high, c.low, c.close, c.volume, c.trades)
                for c in incremental
            ]

            assert await store.rebuild_candles() == len(incremental)
            assert await all_candles(store) == incremental
            assert await store.rebuild_candles("coinbase:ETH-USD") == sum(
                c.product == "coinbase:ETH-USD" for c in incremental
            )
            assert await all_candles(store) == incremental

            latest = await store.latest_candles()
            assert latest == [
                max((c for c in incremental if c.product == p), key=lambda c: c.start)
                for p in ("coinbase:BTC-USD", "coinbase:ETH-USD")
            ]


async def test_candles_range_and_limit_keep_the_newest(database_url: str) -> None:
    history = market(seed=3)
    with trio.fail_after(60):
        async with open_store(CONFIG, url=database_url) as store:
            await store.write_batch(history, [])
            every = [c for c in expected_candles(history) if c.product == "coinbase:BTC-USD"]
            second, third = every[1].start, every[2].start
            assert await store.candles("coinbase:BTC-USD", second, third + 1) == every[1:3]
            assert await store.candles("coinbase:BTC-USD", second, third) == every[1:2]
            got = await store.candles("coinbase:BTC-USD", 0, 2**62, limit=2)
            assert got == every[-2:]
            assert await store.candles("coinbase:SOL-USD", 0, 2**62) == []


async def test_a_failed_batch_leaves_no_candle(database_url: str) -> None:
    """Candles commit with their trades or not at all: a batch whose transaction fails
    (here: a state row PostgreSQL refuses) leaves neither history nor candles."""
    from ledgerflux.store import StateRow, StoreError

    history = market(seed=5)[:50]
    bad_state = StateRow("coinbase:BTC-USD", "e", 1, 1, 1, {"bad": "\x00"})
    with trio.fail_after(30):
        async with open_store(CONFIG, url=database_url) as store:
            with pytest.raises(StoreError):
                await store.write_batch(history, [bad_state])
            assert await store.history_count() == 0
            assert await all_candles(store) == []
            await store.write_batch(history, [])
            assert await all_candles(store) == expected_candles(history)


async def test_candles_outlive_history_retention_and_rebuild_keeps_them(
    database_url: str,
) -> None:
    """Retention drops old history partitions; the candles of those days stay, and a
    rebuild recomputes only the days history still holds."""
    import attrs

    recent = market(seed=13)
    old = [
        HistoryRow(attrs.evolve(row.event, ts_event=row.event.ts_event - 10 * 86_400 * 10**9,
                                epoch="0000000000000"), 10_000 + row.stream_seq)
        for row in market(seed=17)[:200]
    ]  # fmt: skip
    with trio.fail_after(60):
        async with open_store(CONFIG, url=database_url) as store:
            await store.write_batch(old + recent, [])
            before = sorted(
                [c for p in ("coinbase:BTC-USD", "coinbase:ETH-USD")
                 for c in await store.candles(p, 0, 2**62)],
                key=lambda c: (c.product, c.start),
            )  # fmt: skip
            assert before == expected_candles(old + recent)
            assert await store.apply_retention(T0) >= 1
            assert await store.history_count() == len(recent)
            assert await store.rebuild_candles() == len(expected_candles(recent))
            after = sorted(
                [c for p in ("coinbase:BTC-USD", "coinbase:ETH-USD")
                 for c in await store.candles(p, 0, 2**62)],
                key=lambda c: (c.product, c.start),
            )  # fmt: skip
    assert after == before
