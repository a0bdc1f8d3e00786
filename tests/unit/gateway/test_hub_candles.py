"""The ``candles`` channel in the hub, in memory: asked for explicitly, the open candle on
subscribe, updates then the closed candle, quiet minutes closed by the market clock."""

from __future__ import annotations

from decimal import Decimal

import pytest
import trio

from ledgerflux.candles import INTERVAL_NS, candle_json, fold
from ledgerflux.events import Trade
from ledgerflux.gateway.protocol import ProtocolError, parse_request
from tests.unit.gateway.fakes import PRODUCT, trade
from tests.unit.gateway.test_hub import make_hub, received, sub, wire


def test_candles_is_a_channel_but_not_a_default_one() -> None:
    asked = sub(channels=["candles", "trades"])
    assert asked.channels == frozenset({"candle", "trade"})
    assert "candle" not in sub().channels
    with pytest.raises(ProtocolError, match="unknown channel"):
        parse_request('{"op":"subscribe","products":["a:B-C"],"channels":["candle"]}')


async def test_open_candle_on_subscribe_then_updates_then_closed() -> None:
    hub, _ = make_hub()
    first, second = trade(1, price="10"), trade(2, price="12")  # ts 1000, 2000 ns: minute 0
    hub.ingest(first)
    candles_only = hub.open_session()
    both = hub.open_session()
    await hub.subscribe(candles_only, sub(channels=["candles"]))
    await hub.subscribe(both, sub(channels=["candles", "trades"]))
    hub.ingest(second)
    later = Trade(
        product=PRODUCT, seq=3, epoch="e1", ts_event=INTERVAL_NS + 5, ts_ingest=INTERVAL_NS + 6,
        price=second.price, size=second.size, side="sell",
    )  # fmt: skip
    hub.ingest(later)
    minute0 = fold([(first, None), (second, None)])[(PRODUCT, 0)]
    expected = [
        candle_json(fold([(first, None)])[(PRODUCT, 0)], closed=False),  # on subscribe
        candle_json(minute0, closed=False),
        candle_json(minute0, closed=True),
        candle_json(fold([(later, None)])[(PRODUCT, INTERVAL_NS)], closed=False),
    ]
    assert received(candles_only) == expected
    # Subscribed to trades too: each trade, then the candles it changed.
    assert received(both) == [expected[0], wire(second), expected[1], wire(later), *expected[2:]]
    assert hub.stats.candles_out == 6  # live ones; the one on subscribe is a reply


async def test_a_quiet_minute_closes_on_the_market_clock() -> None:
    hub, _ = make_hub()
    session = hub.open_session()
    await hub.subscribe(session, sub(channels=["candles"]))
    seen_at = trio.current_time()
    hub.ingest(trade(1, price="10"))  # ts_event 1000 ns
    (opened,) = received(session)
    assert not opened["closed"]
    # The market clock: 1000 ns at seen_at, then the time since.
    hub.close_candles(seen_at + 61.0, grace_ns=2 * 10**9)
    assert received(session) == []
    hub.close_candles(seen_at + 63.0, grace_ns=2 * 10**9)
    assert received(session) == [{**opened, "closed": True}]
    assert hub.candles.open_candle(PRODUCT) is None


async def test_a_trade_older_than_every_kept_minute_is_counted() -> None:
    hub, _ = make_hub()
    hub.ingest(
        Trade(product=PRODUCT, seq=1, epoch="e1", ts_event=10 * INTERVAL_NS, ts_ingest=1,
              price=Decimal("10"), size=Decimal("1"), side="buy")
    )  # fmt: skip
    hub.ingest(trade(2, price="9"))  # minute 0: older than every minute kept
    assert hub.stats.candles_late == 1
