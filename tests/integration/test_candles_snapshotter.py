"""Candles through the real snapshotter (real NATS LF_MD, real PostgreSQL): a restart that
reads committed messages again — recognised by stream position, or, with the latest
states gone, only by the history's primary key — leaves every candle exact."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio

from ledgerflux.archive import LocalArchive
from ledgerflux.bus import Bus, open_bus
from ledgerflux.candles import Candle
from ledgerflux.config import Config, NatsConfig, SnapshotConfig
from ledgerflux.events import Trade
from ledgerflux.snapshotter import serve_snapshot
from ledgerflux.store import Store, open_store
from tests.integration.test_candles_store import (
    CONFIG,
    PRICE_STATS_1MIN,
    all_candles,
    expected_candles,
    market,
)
from tests.integration.test_gateway_nats import publish

pytestmark = [pytest.mark.nats, pytest.mark.postgres]

SNAP = Config(snapshot=SnapshotConfig(batch=37, flush_interval_s=0.05), drain_timeout_s=5)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with open_bus(NatsConfig(), url=nats_url) as bus:
        await bus.ensure_streams()
        yield bus


async def snapshot_until(bus: Bus, store: Store, archive: LocalArchive, count: int) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_snapshot, SNAP, bus=bus, store=store, archive=archive))
        while (await store.consumer_position("snapshot") or _none).stream_seq < count:  # noqa: ASYNC110
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


class _NoPosition:
    stream_seq = 0


_none = _NoPosition()


@pytest.mark.parametrize("forget_states", [False, True])
async def test_candles_stay_exact_when_the_snapshotter_reads_again(
    bus: Bus, database_url: str, tmp_path: Path, forget_states: bool
) -> None:
    history = market(seed=21)
    events = [row.event for row in history]
    archive = LocalArchive(tmp_path / "archive", prefix="archive")
    with trio.fail_after(120):
        async with open_store(CONFIG, url=database_url) as store:
            await publish(bus, events[:500])
            await snapshot_until(bus, store, archive, 500)
            # A restart that reads everything again: the committed position rewound, and
            # (forget_states) no latest state to recognise positions by either.
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("UPDATE consumer_positions SET stream_seq = 0")
                if forget_states:
                    conn.execute("DELETE FROM md_latest")
            await publish(bus, events[500:])
            await snapshot_until(bus, store, archive, len(events))
            assert await store.history_count() == len(events)
            got: list[Candle] = await all_candles(store)
    # Stream positions on LF_MD are 1.. in publish order, as market() numbers them.
    assert got == expected_candles(history)
    assert sum(c.trades for c in got) == sum(isinstance(e, Trade) for e in events)
    with psycopg.connect(database_url) as conn:
        plain = conn.execute(PRICE_STATS_1MIN).fetchall()
    assert plain == [
        (c.product, c.start, c.open, c.high, c.low, c.close, c.volume, c.trades) for c in got
    ]
