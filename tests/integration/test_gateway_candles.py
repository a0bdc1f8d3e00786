"""The gateway's ``candles`` channel and ``/api/candles`` against the real PostgreSQL store
(marker ``postgres``): the live candle starts from the stored one (trades read again are
not counted twice), updates of the open minute, then the closed one; history over HTTP is
the stored candles."""

from __future__ import annotations

import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

import orjson
import pytest
import trio

from ledgerflux.candles import INTERVAL_NS, candle_json, fold
from ledgerflux.config import DatabaseConfig
from ledgerflux.events import Trade
from ledgerflux.state import ProductState
from ledgerflux.store import HistoryRow, StateRow, open_store
from tests.integration.test_gateway import (
    open_websocket_url,
    receive,
    request,
    running_gateway,
    wire,
)
from tests.unit.gateway.fakes import PRODUCT, FakeBus

pytestmark = pytest.mark.postgres

# Far in the future: the gateway closes a minute by the wall clock too, never these.
MINUTE = 4_102_444_800 * 10**9  # 2100-01-01T00:00:00Z


def trade_at(seq: int, ts: int, price: str) -> Trade:
    return Trade(
        product=PRODUCT,
        seq=seq,
        epoch="e1",
        ts_event=ts,
        ts_ingest=ts,
        price=Decimal(price),
        size=Decimal("0.125"),
        side="sell" if seq % 2 else "buy",
    )


async def http_get(url: str) -> tuple[int, Any]:
    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    status, body = await trio.to_thread.run_sync(get)
    return status, orjson.loads(body)


async def test_candles_channel_starts_from_the_store_then_updates_and_closes(
    database_url: str,
) -> None:
    # 40 trades over minutes 0 and 1; the snapshotter has committed the first 30.
    trades = [trade_at(s, MINUTE + s * 2 * 10**9, f"{100 + s % 7}.5") for s in range(1, 41)]
    bus = FakeBus()
    for t in trades:
        bus.publish(t)
    state = ProductState(PRODUCT)
    for t in trades[:30]:
        state.apply(t, strict_book=False)
    with trio.fail_after(60):
        async with open_store(DatabaseConfig(), url=database_url) as store:
            await store.write_batch(
                [HistoryRow(t, t.seq) for t in trades[:30]],
                [StateRow(PRODUCT, "e1", 30, state.ts_event, 30, state.to_json())],
            )
            async with (
                running_gateway(bus, store) as gw,
                open_websocket_url(gw.info.ws_url) as ws,
                open_websocket_url(gw.info.ws_url) as plain,
            ):
                await request(ws, op="subscribe", id=1, products=[PRODUCT], channels=["candles"])
                await request(plain, op="subscribe", id=2, products=[PRODUCT])
                reply, opened = await receive(ws, 2)
                assert reply["channels"] == ["candle"]
                # Minute 1 (trades 30..40) as a whole: trade 30 from the stored candle,
                # 31..40 replayed from the stream.
                minute1 = fold((t, t.seq) for t in trades[29:])[(PRODUCT, MINUTE + INTERVAL_NS)]
                assert opened == candle_json(minute1, closed=False)

                late = trade_at(41, MINUTE + INTERVAL_NS + 59 * 10**9, "99.25")
                gw.bus.publish(late)
                [update] = await receive(ws, 1)
                minute1 = fold((t, t.seq) for t in [*trades[29:], late])[
                    (PRODUCT, MINUTE + INTERVAL_NS)
                ]
                assert update == candle_json(minute1, closed=False)

                nxt = trade_at(42, MINUTE + 2 * INTERVAL_NS, "101")
                gw.bus.publish(nxt)
                closed, opened2 = await receive(ws, 2)
                assert closed == candle_json(minute1, closed=True)
                assert opened2 == candle_json(
                    fold([(nxt, 42)])[(PRODUCT, nxt.ts_event)], closed=False
                )

                # Without "candles" in its channels a subscriber gets the trades only.
                _, first, second = await receive(plain, 3)
                assert (first, second) == (wire(late), wire(nxt))

                # History over HTTP: what the store holds (the first 30 trades).
                stored = fold((t, t.seq) for t in trades[:30])
                status, body = await http_get(
                    f"{gw.info.url}/api/candles?product={PRODUCT}"
                    f"&start={MINUTE // 10**9}&end=2100-01-01T00:10:00Z"
                )
                assert status == 200
                assert body == {
                    "product": PRODUCT,
                    "interval_s": 60,
                    "start": MINUTE,
                    "end": MINUTE + 10 * INTERVAL_NS,
                    "candles": [candle_json(c, closed=True) for c in stored.values()],
                }
                # Without bounds: the newest candles; the minute still open says so.
                status, body = await http_get(f"{gw.info.url}/api/candles?product={PRODUCT}")
                assert (status, body["start"], body["end"]) == (200, None, None)
                assert body["candles"] == [candle_json(c, closed=True) for c in stored.values()]
                status, body = await http_get(
                    f"{gw.info.url}/api/candles?product={PRODUCT}&limit=1"
                )
                assert body["candles"] == [candle_json(list(stored.values())[-1], closed=True)]
                status, body = await http_get(f"{gw.info.url}/api/products")
                assert (status, body["products"][0]["product"]) == (200, PRODUCT)
                assert body["products"][0]["seq"] == 42


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("product=nope", 400, "bad_product"),
        (f"product={PRODUCT}&start=yesterday", 400, "bad_request"),
        (f"product={PRODUCT}&start=20&end=10", 400, "bad_request"),
        (f"product={PRODUCT}&limit=0", 400, "bad_request"),
        (f"product={PRODUCT}", 503, "no_candles"),
    ],
)
async def test_api_candles_refusals_are_named(query: str, status: int, code: str) -> None:
    with trio.fail_after(30):
        async with running_gateway() as gw:  # its FakeStore keeps no candles
            got, body = await http_get(f"{gw.info.url}/api/candles?{query}")
    assert (got, body["error"]) == (status, code)
