"""Backfill from the real PostgreSQL history (marker ``postgres``): from_seq older than the
ring comes from md_history via ledgerflux.store, then live with no hole; and the gateway
starts from the stored latest state."""

from __future__ import annotations

import pytest
import trio

from ledgerflux.config import DatabaseConfig
from ledgerflux.state import ProductState
from ledgerflux.store import HistoryRow, StateRow, open_store
from tests.integration.test_gateway import (
    open_websocket_url,
    receive,
    request,
    running_gateway,
    wire,
)
from tests.unit.gateway.fakes import PRODUCT, FakeBus, mixed

pytestmark = pytest.mark.postgres


async def test_from_seq_backfills_from_postgres_then_live(database_url: str) -> None:
    with trio.fail_after(60):
        events = [mixed(seq) for seq in range(1, 41)]
        bus = FakeBus()
        for event in events:
            bus.publish(event)
        state = ProductState(PRODUCT)
        for event in events[:30]:
            state.apply(event, strict_book=False)
        async with open_store(DatabaseConfig(), url=database_url) as store:
            await store.write_batch(
                [HistoryRow(e, e.seq) for e in events[:30]],
                [StateRow(PRODUCT, "e1", 30, state.ts_event, 30, state.to_json())],
            )
            # Started from the stored state (seq 30 at stream position 30): only 31..40
            # are replayed from the bus, so the ring holds 31..40 and 5..30 must come
            # from PostgreSQL.
            async with (
                running_gateway(bus, store, ring_size=100) as gw,
                open_websocket_url(gw.info.ws_url) as ws,
            ):
                await request(ws, op="subscribe", id=1, products=[PRODUCT], from_seq={PRODUCT: 5})
                _, *backfill = await receive(ws, 37)
                assert backfill == [wire(e) for e in events[4:]]
                gw.bus.publish(mixed(41))
                assert await receive(ws, 1) == [wire(mixed(41))]
