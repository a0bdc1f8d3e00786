"""The Binance plugin through the real ingestor runtime against the fake exchange, with
faults: the published books must end equal to the exchange's true books, every break
announced (``gap``) and repaired from the REST depth book, nothing undecodable."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar

import orjson
import pytest
import trio
from ledgerflux_binance import BinanceFeed

from ledgerflux import codec
from ledgerflux.bus import BusError, OutMsg, PubAck
from ledgerflux.config import IngestConfig
from ledgerflux.events import Status, Trade
from ledgerflux.feeds import runtime
from ledgerflux.feeds.runtime import run_feed
from ledgerflux.plugin import Subscription
from ledgerflux.testing import Faults, check_plugin_live, open_fake_exchange

RECORDINGS = Path(__file__).resolve().parents[2] / "recordings" / "binance"
DEEP = RECORDINGS / "binance-deep.jsonl.gz"
CHANNELS = RECORDINGS / "binance-channels.jsonl.gz"


class QuickStaleBinance(BinanceFeed):
    """Stale after half a second instead of 75 s (the stall fault)."""

    stale_after_s: ClassVar[float] = 0.5


@pytest.mark.parametrize("recording", [DEEP, CHANNELS], ids=["deep", "channels"])
async def test_live_conformance(recording: Path) -> None:
    with trio.fail_after(90):
        report = await check_plugin_live(BinanceFeed(), recording, timeout_s=60)
    report.raise_for_failures()
    assert report.decode_errors == 0


FAULTS = {
    "drop": Faults(drop=3, start_after=120),
    "duplicate": Faults(duplicate=10, start_after=20),
    "reorder": Faults(reorder=5, start_after=30),
    "close": Faults(close_after=60),
    "stale_rest_book": Faults(stale_rest_book=True),
    "malformed": Faults(malformed=2, start_after=10),
}


@pytest.mark.parametrize("name", list(FAULTS))
async def test_faults_end_with_the_true_books(name: str) -> None:
    # In real time: at full speed the whole recording arrives while the first REST book is
    # being fetched, so a dropped diff is only ever a break inside the buffer (a resync
    # before the book is live, no subscriber-facing gap), whatever the fault.
    with trio.fail_after(90):
        report = await check_plugin_live(
            BinanceFeed(), CHANNELS, faults=FAULTS[name], timeout_s=60, speed=1.0
        )
    report.raise_for_failures()


async def test_a_stall_reconnects_and_the_books_still_match() -> None:
    with trio.fail_after(90):
        report = await check_plugin_live(
            QuickStaleBinance(), CHANNELS, faults=Faults(stall_after=80, stall_s=1.5), timeout_s=60
        )
    report.raise_for_failures()


class ShortLivedBinance(BinanceFeed):
    """Connections replaced after 0.8 s, pings every 0.1 s."""

    max_connection_s: ClassVar[float] = 0.8
    ping_interval_s: ClassVar[float] = 0.1


async def test_planned_reconnects_lose_and_double_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # The recording streams in real time (3 s) while connections live 0.8 s: two or three
    # handovers. Trades, quotes and tickers must be exactly the recording's (no loss, no
    # repeat from the overlap) and the book must equal the true book.
    monkeypatch.setattr(runtime, "HANDOVER_OVERLAP_S", 0.2)
    with trio.fail_after(90):
        report = await check_plugin_live(ShortLivedBinance(), DEEP, timeout_s=60, speed=1.0)
    report.raise_for_failures()


class _Acker:
    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        await trio.lowlevel.checkpoint()
        return [PubAck(stream="LF_TICKS", seq=n, duplicate=False) for n, _ in enumerate(msgs)]


async def test_the_application_ping_goes_out_on_the_live_connection() -> None:
    plugin = ShortLivedBinance()
    subscription = Subscription(("BTC-USDT",), ("depth", "trade"))
    with trio.fail_after(30):
        async with (
            open_fake_exchange(DEEP, speed=1.0) as fake,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(
                partial(
                    run_feed,
                    plugin,
                    subscription,
                    _Acker(),
                    settings=IngestConfig(),
                    shards=1,
                    endpoint=fake.ws_url,
                    rest_endpoint=fake.rest_url,
                )
            )
            while sum('"LIST_SUBSCRIPTIONS"' in m for m in fake.received) < 2:
                await fake.wait_received(len(fake.received) + 1)
            nursery.cancel_scope.cancel()
    pings = [orjson.loads(m) for m in fake.received if '"LIST_SUBSCRIPTIONS"' in m]
    assert all(p["method"] == "LIST_SUBSCRIPTIONS" for p in pings)
    assert len({p["id"] for p in pings}) == len(pings)  # each with its own id


class _Keeper(_Acker):
    def __init__(self) -> None:
        self.msgs: list[OutMsg] = []

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        self.msgs.extend(msgs)
        return await super().publish_batch(msgs)


def _has_trade(msg: OutMsg) -> bool:
    return msg.subject.startswith("lf.ticks.") and any(
        isinstance(e, Trade) for e in codec.decode_many(msg.data)
    )


async def test_unknown_and_halted_symbols_are_left_out_and_the_others_flow() -> None:
    publisher = _Keeper()
    subscription = Subscription(("BTC-USDT", "DOGE-USDT", "LUNA-USDT"), ("depth", "trade"))
    with trio.fail_after(60):
        async with (
            open_fake_exchange(DEEP) as fake,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(
                partial(
                    run_feed,
                    BinanceFeed(),
                    subscription,
                    publisher,
                    settings=IngestConfig(),
                    shards=1,
                    endpoint=fake.ws_url,
                    rest_endpoint=fake.rest_url,
                )
            )
            await fake.finished.wait()
            # The fake has sent everything; the ingestor may still be publishing it.
            for _ in range(400):
                if any(_has_trade(m) for m in publisher.msgs):
                    break
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    (subscribe,) = (orjson.loads(m) for m in fake.received if '"SUBSCRIBE"' in m)
    assert subscribe["params"] == ["btcusdt@depth@100ms", "btcusdt@trade"]
    dlq = {m.subject: orjson.loads(m.data)["reason"] for m in publisher.msgs if "dlq" in m.subject}
    assert dlq == {
        "lf.dlq.binance.DOGE-USDT": "unknown_symbol",
        "lf.dlq.binance.LUNA-USDT": "not_trading",
    }
    events = [
        e
        for m in publisher.msgs
        if m.subject.startswith("lf.ticks.")
        for e in codec.decode_many(m.data)
    ]
    offline = {
        e.product: e.reason for e in events if isinstance(e, Status) and e.status == "offline"
    }
    assert offline["binance:LUNA-USDT"] == "not_trading: BREAK"
    assert offline["binance:DOGE-USDT"].startswith("unknown_symbol")
    assert any(isinstance(e, Trade) and e.product == "binance:BTC-USDT" for e in events)
