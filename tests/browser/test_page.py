"""The live page in a real headless Chromium (marker ``browser``), driven over the DevTools
protocol: a gateway on port 0 fed through a real NATS LF_MD (and, for the candles, the
real PostgreSQL store). The tests wait for live updates, check the DOM and that the chart
changes, and save screenshots at 1400x900 and at phone width (390x844) under the test's
tmp dir, or ``$LEDGERFLUX_TEST_ARTIFACTS`` when set."""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import trio

from ledgerflux.bus import Bus, open_bus
from ledgerflux.candles import INTERVAL_NS, minute_of
from ledgerflux.config import Config, DatabaseConfig, GatewayConfig, NatsConfig
from ledgerflux.events import Book, Event, Quote, Trade
from ledgerflux.gateway import GatewayInfo, serve_gateway
from ledgerflux.gateway.ports import StoreLike
from ledgerflux.store import HistoryRow, open_store
from tests.browser.cdp import CHROMIUM, Page, open_page
from tests.integration.test_gateway_nats import publish
from tests.unit.gateway.fakes import PRODUCT, FakeStore, trade

pytestmark = [
    pytest.mark.browser,
    pytest.mark.nats,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt: chromium)"),
]

ROWS = """JSON.stringify([...document.querySelectorAll('#%s tr')]
    .map((tr) => [tr.id, ...[...tr.cells].map((td) => td.textContent)]))"""


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with open_bus(NatsConfig(), url=nats_url) as bus:
        await bus.ensure_streams()
        yield bus


def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("LEDGERFLUX_TEST_ARTIFACTS")
    return Path(root) if root else tmp_path / "screenshots"


async def text(page: Page, element_id: str) -> str:
    value: str = await page.evaluate(f"document.getElementById('{element_id}').textContent")
    return value


async def rows(page: Page, tbody: str) -> list[list[str]]:
    found: list[list[str]] = orjson.loads(await page.evaluate(ROWS % tbody))
    return found


async def run_gateway(nursery: trio.Nursery, bus: Bus, store: StoreLike) -> GatewayInfo:
    config = Config(gateway=GatewayConfig(port=0))
    info: GatewayInfo = await nursery.start(
        lambda task_status: serve_gateway(config, bus=bus, store=store, task_status=task_status)
    )
    return info


async def test_page_renders_book_trade_quote_and_seq(bus: Bus, tmp_path: Path) -> None:
    levels = ((Decimal("100.5"), Decimal("1.5")), (Decimal("100.25"), Decimal("3")))
    asks = ((Decimal("101"), Decimal("0.75")),)
    events: list[Event] = [
        Book(product=PRODUCT, seq=1, epoch="e1", ts_event=1, ts_ingest=1, snapshot=True,
             bids=levels, asks=asks),
        Quote(product=PRODUCT, seq=2, epoch="e1", ts_event=2, ts_ingest=2,
              bid_price=Decimal("100.5"), bid_size=Decimal("1.5"),
              ask_price=Decimal("101"), ask_size=Decimal("0.75")),
        trade(3, price="100.75"),
    ]  # fmt: skip
    await publish(bus, events)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            info = await run_gateway(nursery, bus, FakeStore())  # a store without candles
            async with open_page(tmp_path / "profile") as page:
                await page.goto(f"{info.url}/?product={PRODUCT}")
                await page.wait_for("document.getElementById('seq').textContent === '3'")
                assert await text(page, "product") == PRODUCT
                assert await text(page, "conn") == "open"
                assert await text(page, "epoch") == "e1"
                assert (
                    await text(page, "bid"),
                    await text(page, "ask"),
                    await text(page, "last"),
                ) == ("100.5", "101", "100.75")
                assert await rows(page, "bids") == [
                    ["bid-0", "100.5", "1.5", "1.5"],
                    ["bid-1", "100.25", "3", "4.5"],
                ]
                assert await rows(page, "asks") == [["ask-0", "101", "0.75", "0.75"]]
                assert await text(page, "spread") == "0.5 (49.63 bp)"
                # ts_event 3000 ns after the Unix epoch; the tape shows UTC time, side, price.
                assert await rows(page, "trades") == [
                    ["trade-0", "00:00:00.000", "▲ buy", "100.75", "0.25"]
                ]
            nursery.cancel_scope.cancel()


def recent_market(now_ns: int) -> list[Event]:
    """90 minutes of BTC-USD ending now (a random walk, about 4 trades a minute), a
    40-level book around the last price, a quote; and one ETH-USD trade (so the picker
    has two products)."""
    rng = random.Random(42)
    first_minute = minute_of(now_ns) - 90 * INTERVAL_NS
    price = Decimal("91250.00")
    trades: list[Trade] = []
    ts = first_minute
    while ts < now_ns - 2 * 10**9:
        price += Decimal(rng.randint(-2500, 2500)) / 100
        trades.append(
            Trade(product=PRODUCT, seq=0, epoch="", ts_event=ts, ts_ingest=ts + 1000,
                  price=price, size=Decimal(rng.randint(1, 5_000_000)) / 10**8,
                  side=rng.choice(["buy", "sell"]), trade_id=str(len(trades)))
        )  # fmt: skip
        ts += rng.randint(5, 25) * 10**9
    bid, ask = price - Decimal("0.01"), price + Decimal("0.01")
    book = Book(
        product=PRODUCT, seq=0, epoch="", ts_event=first_minute, ts_ingest=first_minute,
        snapshot=True,
        bids=tuple((bid - Decimal(i) * Decimal("0.5"), Decimal(rng.randint(1, 400)) / 100)
                   for i in range(40)),
        asks=tuple((ask + Decimal(i) * Decimal("0.5"), Decimal(rng.randint(1, 400)) / 100)
                   for i in range(40)),
    )  # fmt: skip
    quote = Quote(product=PRODUCT, seq=0, epoch="", ts_event=ts, ts_ingest=ts,
                  bid_price=bid, bid_size=book.bids[0][1], ask_price=ask,
                  ask_size=book.asks[0][1])  # fmt: skip
    out: list[Event] = []
    for seq, event in enumerate([book, *trades, quote], start=1):
        out.append(_stamp(event, seq, "0mr8z4c5s0g00"))
    out.append(
        Trade(product="coinbase:ETH-USD", seq=1, epoch="0mr8z4c5s0g01", ts_event=ts,
              ts_ingest=ts, price=Decimal("3012.5"), size=Decimal("1"), side="sell")
    )  # fmt: skip
    return out


def _stamp(event: Event, seq: int, epoch: str) -> Event:
    import attrs

    return attrs.evolve(event, seq=seq, epoch=epoch)


async def chart_image(page: Page) -> str:
    image: str = await page.evaluate("document.getElementById('chart').toDataURL()")
    return image


@pytest.mark.postgres
async def test_live_page_with_candles_updates_live_and_fits_a_phone(
    bus: Bus, database_url: str, tmp_path: Path
) -> None:
    now = time.time_ns()
    events = recent_market(now)
    btc = [e for e in events if e.product == PRODUCT]
    last_seq = btc[-1].seq
    shots = artifacts(tmp_path)
    with trio.fail_after(150):
        async with open_store(DatabaseConfig(), url=database_url) as store:
            # The snapshotter's work: history (and so candles) of everything on LF_MD.
            await store.write_batch([HistoryRow(e, i) for i, e in enumerate(events, 1)], [])
            await publish(bus, events)
            async with trio.open_nursery() as nursery:
                info = await run_gateway(nursery, bus, store)
                async with open_page(tmp_path / "profile") as page:
                    await page.goto(f"{info.url}/?product={PRODUCT}")
                    await page.wait_for(
                        f"document.getElementById('seq').textContent === '{last_seq}'"
                    )
                    # History from /api/candles: 90 minutes and the current one.
                    await page.wait_for(
                        "Number(document.getElementById('chart').dataset.candles) >= 90"
                    )
                    before = await chart_image(page)
                    options = await page.evaluate(
                        "[...document.querySelectorAll('#picker option')].map((o) => o.value)"
                    )
                    assert options == ["coinbase:BTC-USD", "coinbase:ETH-USD"]
                    assert await page.evaluate("document.getElementById('picker').value") == (
                        PRODUCT
                    )
                    sent = orjson.loads(await text(page, "subscribe-msg"))
                    assert sent == {
                        "op": "subscribe", "id": 1, "products": [PRODUCT],
                        "channels": ["trades", "quotes", "ticker", "book", "candles"],
                        "snapshot": True,
                    }  # fmt: skip
                    assert await text(page, "ws-url") == info.ws_url
                    bids = await rows(page, "bids")
                    asks = await rows(page, "asks")
                    assert len(bids) == len(asks) == 12
                    book = next(e for e in btc if isinstance(e, Book))
                    assert bids[0][:3] == ["bid-0", str(book.bids[0][0]), str(book.bids[0][1])]
                    assert asks[-1][:3] == ["ask-0", str(book.asks[0][0]), str(book.asks[0][1])]
                    assert await text(page, "spread") == "0.02 (0.00 bp)"
                    tape = await rows(page, "trades")
                    assert tape[0][1:] == [
                        _clock(btc[-2].ts_event), _side(btc[-2]), str(btc[-2].price),
                        str(btc[-2].size),
                    ]  # fmt: skip
                    await page.screenshot(shots / "page-1400x900-history.png")

                    # Live: a trade well above the range, in the current minute.
                    high = Trade(
                        product=PRODUCT, seq=last_seq + 1, epoch=btc[-1].epoch,
                        ts_event=time.time_ns(), ts_ingest=time.time_ns(),
                        price=Decimal("93000.25"), size=Decimal("0.75"), side="buy",
                    )  # fmt: skip
                    await publish(bus, [high])
                    await page.wait_for(
                        "document.getElementById('chart').dataset.lastClose === '93000.25'"
                    )
                    assert await text(page, "last") == "93000.25"
                    assert (await rows(page, "trades"))[0][2:] == ["▲ buy", "93000.25", "0.75"]
                    assert "C 93000.25" in await text(page, "ohlc")
                    assert await chart_image(page) != before
                    await page.screenshot(shots / "page-1400x900.png")

                    # Hovering an older candle shows its figures, and a crosshair.
                    x, y, width, height = await page.evaluate(
                        "(() => { const r = document.getElementById('chart')"
                        ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()"
                    )
                    await page.call(
                        "Input.dispatchMouseEvent",
                        type="mouseMoved",
                        x=x + width * 0.3,
                        y=y + height * 0.3,
                    )
                    await page.wait_for(
                        "!document.getElementById('ohlc').textContent.includes('93000.25')"
                    )
                    await page.screenshot(shots / "page-1400x900-hover.png")
                    await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=1, y=1)
                    await page.wait_for(
                        "document.getElementById('ohlc').textContent.includes('C 93000.25')"
                    )

                    await page.viewport(390, 844, mobile=True)
                    await page.wait_for("document.getElementById('chart').clientWidth < 400")
                    draws = await page.evaluate("document.getElementById('chart').dataset.draws")
                    await page.evaluate("window.dispatchEvent(new Event('resize'))")
                    await page.wait_for(
                        f"document.getElementById('chart').dataset.draws !== '{draws}'"
                    )
                    # Nothing wider than the phone: no sideways scrolling.
                    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
                    await page.screenshot(shots / "page-390x844.png")
                    await page.screenshot(shots / "page-390-full.png", full_page=True)
                nursery.cancel_scope.cancel()
    print(f"screenshots in {shots}")


def _clock(ts_ns: int) -> str:
    import datetime as dt

    when = dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.UTC)
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def _side(event: Event) -> str:
    assert isinstance(event, Trade)
    return "▲ buy" if event.side == "buy" else "▼ sell"
