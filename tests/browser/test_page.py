"""The live page in a real headless Chromium (marker ``browser``): a gateway on port 0 fed
through a real embedded NATS LF_MD; the page must render the published book, trade, quote
and seq into its stable DOM ids."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import trio

from ledgerflux.bus import Bus, open_bus
from ledgerflux.config import Config, GatewayConfig, NatsConfig
from ledgerflux.events import Book, Quote
from ledgerflux.gateway import GatewayInfo, serve_gateway
from tests.integration.test_gateway_nats import publish
from tests.unit.gateway.fakes import PRODUCT, FakeStore, trade

pytestmark = [pytest.mark.browser, pytest.mark.nats]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with open_bus(NatsConfig(), url=nats_url) as bus:
        await bus.ensure_streams()
        yield bus


def cell_texts(dom: str, row_id: str) -> list[str]:
    match = re.search(rf'<tr id="{row_id}">(.*?)</tr>', dom)
    assert match is not None, f"no row {row_id} in the page"
    return re.findall(r"<td>(.*?)</td>", match.group(1))


def text_of(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)<', dom)
    assert match is not None, f"no element {element_id} in the page"
    return match.group(1)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt: chromium)")
async def test_page_renders_book_trade_quote_and_seq(bus: Bus, tmp_path: object) -> None:
    assert CHROMIUM is not None
    levels = ((Decimal("100.5"), Decimal("1.5")), (Decimal("100.25"), Decimal("3")))
    asks = ((Decimal("101"), Decimal("0.75")),)
    events = [
        Book(
            product=PRODUCT,
            seq=1,
            epoch="e1",
            ts_event=1,
            ts_ingest=1,
            snapshot=True,
            bids=levels,
            asks=asks,
        ),
        Quote(
            product=PRODUCT,
            seq=2,
            epoch="e1",
            ts_event=2,
            ts_ingest=2,
            bid_price=Decimal("100.5"),
            bid_size=Decimal("1.5"),
            ask_price=Decimal("101"),
            ask_size=Decimal("0.75"),
        ),
        trade(3, price="100.75"),
    ]
    await publish(bus, events)
    with trio.fail_after(60):
        config = Config(gateway=GatewayConfig(port=0))
        async with trio.open_nursery() as nursery:
            info: GatewayInfo = await nursery.start(
                lambda task_status: serve_gateway(
                    config, bus=bus, store=FakeStore(), task_status=task_status
                )
            )
            # --dump-dom returns when the virtual-time budget is spent, which on a loaded
            # machine can come before the WebSocket's first frames: load again (a fresh page,
            # a larger budget) until the page has rendered the data, then check all of it.
            dom = ""
            for attempt in range(1, 6):
                result = await trio.run_process(
                    [
                        CHROMIUM,
                        "--headless",
                        "--disable-gpu",
                        "--no-sandbox",
                        "--no-first-run",
                        "--disable-extensions",
                        f"--user-data-dir={tmp_path}",
                        f"--virtual-time-budget={3000 * attempt}",
                        "--dump-dom",
                        f"{info.url}/?product={PRODUCT}",
                    ],
                    capture_stdout=True,
                    capture_stderr=True,
                )
                dom = result.stdout.decode()
                if 'id="seq">3<' in dom:
                    break
            nursery.cancel_scope.cancel()
    assert text_of(dom, "product") == PRODUCT
    assert text_of(dom, "conn") == "open"
    assert text_of(dom, "seq") == "3"
    assert text_of(dom, "epoch") == "e1"
    assert (text_of(dom, "bid"), text_of(dom, "ask"), text_of(dom, "last")) == (
        "100.5",
        "101",
        "100.75",
    )
    assert cell_texts(dom, "bid-0") == ["1.5", "100.5"]
    assert cell_texts(dom, "bid-1") == ["3", "100.25"]
    assert cell_texts(dom, "ask-0") == ["101", "0.75"]
    assert cell_texts(dom, "trade-0") == ["3", "buy", "100.75", "0.25"]
