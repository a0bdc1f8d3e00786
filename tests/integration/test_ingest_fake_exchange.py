"""The live runtime (WebSocket source, REST resync, publish) against the fake exchange."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import ClassVar

import httpx
import orjson
import trio
from ledgerflux_coinbase.exchange import CoinbaseExchangeFeed

from ledgerflux import codec
from ledgerflux.book import OrderBook
from ledgerflux.bus import BusError, OutMsg, PubAck
from ledgerflux.config import Config, IngestConfig
from ledgerflux.events import Book, Event, Status
from ledgerflux.feeds.backoff import Backoff
from ledgerflux.feeds.record import run_record
from ledgerflux.feeds.registry import load_feed
from ledgerflux.feeds.runtime import HttpBookFetcher, WebSocketSource, run_session
from ledgerflux.feeds.session import FeedSession, PublishQueue
from ledgerflux.plugin import Credentials, FeedPlugin, Subscription
from ledgerflux.recording import iter_frames, read_header
from ledgerflux.testing.fake_exchange import FakeExchange, Faults, open_fake_exchange

ROOT = Path(__file__).resolve().parents[2]
CB = ROOT / "recordings" / "coinbase" / "exchange-channels.jsonl.gz"
EXAMPLE = ROOT / "recordings" / "example" / "example.jsonl"


class FakePublisher:
    """Acks and keeps everything (the NATS bus has its own tests)."""

    def __init__(self) -> None:
        self.acked: list[OutMsg] = []

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        await trio.lowlevel.checkpoint()
        self.acked.extend(msgs)
        return [PubAck(stream="LF_TICKS", seq=n, duplicate=False) for n, _ in enumerate(msgs)]

    def events(self) -> list[Event]:
        return [
            e
            for m in self.acked
            if m.subject.startswith("lf.ticks.")
            for e in codec.decode_many(m.data)
        ]


CREDENTIALS = Credentials(key="key", secret=base64.b64encode(b"secret").decode(), passphrase="p")
"""The recording's level2 and full channels need authentication; the fake accepts any."""


class QuickStaleCoinbase(CoinbaseExchangeFeed):
    stale_after_s: ClassVar[float] = 0.5


async def eventually(check: Callable[[], bool], what: str, *, timeout_s: float = 20) -> None:
    with trio.fail_after(timeout_s):
        for _ in range(1_000_000):
            if check():
                return
            await trio.sleep(0.02)
    raise AssertionError(what)


@asynccontextmanager
async def running_feed(
    fake: FakeExchange, plugin: FeedPlugin, publisher: FakePublisher
) -> AsyncIterator[FeedSession]:
    header = read_header(fake.recording)
    settings = IngestConfig(backoff_initial_s=0.05, backoff_max_s=0.2)
    session = FeedSession(
        plugin,
        Subscription(header.symbols, header.channels),
        PublishQueue(settings.max_buffer_frames),
        feed=f"it-{plugin.name}",
        shards=2,
        max_buffer_frames=settings.max_buffer_frames,
    )
    source = WebSocketSource(
        plugin,
        session.subscription,
        endpoint=fake.ws_url,
        credentials=CREDENTIALS,
        backoff=Backoff(0.05, 0.2),
    )
    async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
        fetcher = HttpBookFetcher(client, default_base=plugin.rest_endpoint, base=fake.rest_url)
        await nursery.start(
            lambda task_status: run_session(
                session,
                source,
                publisher,
                fetcher=fetcher,
                settings=settings,
                task_status=task_status,
            )
        )
        yield session
        nursery.cancel_scope.cancel()


def rebuilt_books(events: list[Event]) -> dict[str, OrderBook]:
    books: dict[str, OrderBook] = {}
    for event in events:
        if isinstance(event, Book):
            if event.snapshot:
                books[event.product] = OrderBook(event.product)
            if event.product in books:
                books[event.product].apply(event)
    return books


def statuses(publisher: FakePublisher) -> list[tuple[str, str]]:
    return [(e.product, e.status) for e in publisher.events() if isinstance(e, Status)]


async def test_forced_gap_is_resynced_from_rest_and_the_book_matches() -> None:
    publisher = FakePublisher()
    with trio.fail_after(60):
        async with (
            open_fake_exchange(CB, speed=1.0) as fake,
            running_feed(fake, load_feed("coinbase"), publisher) as session,
        ):
            await eventually(lambda: session.stats.frames > 300, "frames flow")
            fake.inject(drop=40)
            await fake.finished.wait()
            await eventually(
                lambda: (
                    session.stats.frames >= fake.frames_sent
                    and not session.resyncing()
                    and not len(session.queue)
                ),
                "all frames handled",
            )
            truth = {p: (b.bids(), b.asks()) for p, b in fake.true.books.items()}
    kinds = statuses(publisher)
    assert any(kind == "gap" for _, kind in kinds)
    assert any(kind == "resync" for _, kind in kinds)
    assert any(r.startswith("/products/") for r in fake.rest_requests)
    books = rebuilt_books(publisher.events())
    assert {p: (b.bids(), b.asks()) for p, b in books.items()} == truth


async def test_abrupt_close_reconnects_and_resubscribes_the_same_set() -> None:
    publisher = FakePublisher()
    with trio.fail_after(60):
        async with (
            open_fake_exchange(CB, faults=Faults(close_after=200), speed=2.0) as fake,
            running_feed(fake, load_feed("coinbase"), publisher) as session,
        ):
            await eventually(lambda: fake.connections >= 2, "a second connection")
            await eventually(lambda: session.subscribed, "subscribed again")
    subscribes = [orjson.loads(m) for m in fake.received if '"subscribe"' in m]
    assert len(subscribes) >= 2
    # Signed messages differ in timestamp and signature only.
    wanted = {(str(m["product_ids"]), str(m["channels"])) for m in subscribes}
    assert len(wanted) == 1
    # The runtime's own statuses (the plugin turns the exchange's status channel into more).
    kinds = [
        e.status
        for e in publisher.events()
        if isinstance(e, Status)
        and e.product == "coinbase:BTC-USD"
        and e.status in ("online", "offline")
        and (e.reason == "subscribed" or e.reason.startswith("connection lost"))
    ]
    assert kinds[:3] == ["online", "offline", "online"]


async def test_malformed_frames_go_to_the_dlq_and_the_connection_stays_up() -> None:
    publisher = FakePublisher()
    with trio.fail_after(60):
        async with (
            open_fake_exchange(CB, speed=2.0) as fake,
            running_feed(fake, load_feed("coinbase"), publisher) as session,
        ):
            await eventually(lambda: session.stats.frames > 50, "frames flow")
            fake.inject(malformed=3, unknown_type=2)
            await eventually(lambda: session.stats.decode_errors >= 5, "errors counted")
            await eventually(lambda: session.stats.frames > 400, "frames still flow")
    assert fake.connections == 1
    dlq = [orjson.loads(m.data) for m in publisher.acked if m.subject.startswith("lf.dlq.")]
    reasons = sorted(d["reason"] for d in dlq)
    assert reasons.count("malformed_json") == 3
    assert all(d["feed"] == "it-coinbase" and d["raw"] for d in dlq)


async def test_stall_reconnects_after_the_stale_bound() -> None:
    publisher = FakePublisher()
    with trio.fail_after(60):
        async with (
            open_fake_exchange(CB, faults=Faults(stall_after=100, stall_s=5.0), speed=2.0) as fake,
            running_feed(fake, QuickStaleCoinbase(), publisher) as session,
        ):
            await eventually(lambda: fake.connections >= 2, "reconnected")
            await eventually(lambda: session.subscribed, "subscribed again")
    # The stall lasts 5 s; the 0.5 s watchdog is what ended the connection.
    stale = [e for e in publisher.events() if isinstance(e, Status) and e.status == "stale"]
    assert stale
    assert stale[0].reason == "stale: no frame for 0.5s"
    offline = [e for e in publisher.events() if isinstance(e, Status) and e.status == "offline"]
    assert offline[0].reason == "stale: no frame for 0.5s"


async def test_record_from_the_fake_exchange(tmp_path: Path) -> None:
    out = tmp_path / "rec.jsonl.gz"
    with trio.fail_after(60):
        async with open_fake_exchange(EXAMPLE) as fake:
            config = Config(
                ingest=IngestConfig(
                    feed="example", symbols=("BTC-USD", "ETH-USD"), endpoint=fake.ws_url
                )
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: run_record(config, out=out, duration_s=None))
                await fake.finished.wait()
                await eventually(lambda: out.exists(), "file exists")
                await trio.sleep(0.2)  # let the last frames arrive before stopping
                nursery.cancel_scope.cancel()
    header = read_header(out)
    assert header.plugin == "example"
    assert header.symbols == ("BTC-USD", "ETH-USD")
    recorded = [f for f in iter_frames(out)]
    original = [f for f in iter_frames(EXAMPLE)]
    assert [f.raw for f in recorded if f.dir == "out"] == [
        f.raw for f in original if f.dir == "out"
    ]
    assert [f.raw for f in recorded if f.dir == "in"] == [f.raw for f in original if f.dir == "in"]
    assert {f.conn for f in recorded} == {0}
