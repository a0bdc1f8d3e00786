"""OKX and Kraken through the real ingestor runtime (WebSocket source, session, publish)
against the fake exchange, with faults: dropped, duplicated and reordered frames, an abrupt
close, and a corrupted level that breaks the checksum. After each, the published books are
the exchange's true books; a broken book is resubscribed alone, on the same connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import trio
from ledgerflux_kraken import KrakenFeed
from ledgerflux_okx import OkxFeed

from ledgerflux import codec
from ledgerflux.book import OrderBook
from ledgerflux.bus import BusError, OutMsg, PubAck
from ledgerflux.config import IngestConfig
from ledgerflux.events import Book, Event, Status, Trade
from ledgerflux.feeds.backoff import Backoff
from ledgerflux.feeds.runtime import HttpBookFetcher, WebSocketSource, run_session
from ledgerflux.feeds.session import FeedSession, PublishQueue
from ledgerflux.plugin import FeedPlugin, Subscription
from ledgerflux.recording import RecordedFrame, RecordingWriter, iter_frames, read_header
from ledgerflux.testing.fake_exchange import FakeExchange, Faults, open_fake_exchange

ROOT = Path(__file__).resolve().parents[2]
OKX = ROOT / "recordings" / "okx" / "okx-channels.jsonl.gz"
KRAKEN = ROOT / "recordings" / "kraken" / "kraken-channels.jsonl.gz"
CASES = [(OkxFeed(), OKX), (KrakenFeed(), KRAKEN)]
IDS = ["okx", "kraken"]
PAST_SNAPSHOTS = 40
"""Faults start after this many recorded frames (the replies and snapshots)."""


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


async def eventually(check: Callable[[], bool], what: str, *, timeout_s: float = 120) -> None:
    with trio.fail_after(timeout_s):
        for _ in range(10**9):
            if check():
                return
            await trio.sleep(0.02)


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
        shards=1,
        max_buffer_frames=settings.max_buffer_frames,
    )
    source = WebSocketSource(
        plugin,
        session.subscription,
        endpoint=fake.ws_url,
        credentials=None,
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


def published_books(events: list[Event]) -> dict[str, tuple[list[object], list[object]]]:
    books: dict[str, OrderBook] = {}
    for event in events:
        if isinstance(event, Book):
            if event.snapshot:
                books[event.product] = OrderBook(event.product)
            if event.product in books:
                books[event.product].apply(event)
    return {p: (b.bids(), b.asks()) for p, b in books.items()}


async def run_to_the_end(
    plugin: FeedPlugin, recording: Path, faults: Faults, *, answer: bool = True
) -> tuple[FakeExchange, FeedSession, FakePublisher, dict[str, tuple[list[object], list[object]]]]:
    """Replay ``recording`` with ``faults`` through the runtime until every frame is handled
    and no resync is pending; returns the fake, the session, what was published and the
    exchange's true books at the end. With ``answer`` the fake answers a resubscribe with
    a snapshot at once (the faults break books the recording does not repair); without,
    the recording's own answers to its recorded resubscribes do."""
    publisher = FakePublisher()
    with trio.fail_after(240):  # generous: the shared test machine is heavily loaded
        async with (
            open_fake_exchange(recording, faults=faults, answer_resubscribe=answer) as fake,
            running_feed(fake, plugin, publisher) as session,
        ):
            await fake.finished.wait()
            await eventually(
                lambda: (
                    fake.pending() == 0
                    and session.stats.frames >= fake.frames_sent
                    and not session.resyncing()
                    and not len(session.queue)
                ),
                "every frame handled, no resync pending",
            )
            truth = {
                p: (b.bids(), b.asks()) for p, b in fake.true.books.items() if p in session.products
            }
    return fake, session, publisher, truth


def gaps(publisher: FakePublisher) -> list[tuple[str, str]]:
    return [
        (e.product, e.reason)
        for e in publisher.events()
        if isinstance(e, Status) and e.status == "gap"
    ]


def resubscribed(fake: FakeExchange) -> list[str]:
    """The products the client unsubscribed and subscribed again on its connection."""
    out: list[str] = []
    for text in fake.received[1:]:
        obj = orjson.loads(text)
        if obj.get("op") == "unsubscribe":
            out.extend(f"okx:{a['instId']}" for a in obj["args"])
        elif obj.get("method") == "unsubscribe":
            out.extend(f"kraken:{p.replace('/', '-')}" for p in obj["params"]["symbol"])
    return out


@pytest.mark.parametrize(("plugin", "recording"), CASES, ids=IDS)
async def test_no_fault_only_the_recorded_failure_is_resynced(
    plugin: FeedPlugin, recording: Path
) -> None:
    fake, session, publisher, truth = await run_to_the_end(
        plugin, recording, Faults(), answer=False
    )
    assert published_books(publisher.events()) == truth
    assert fake.connections == 1
    # The recording's own checksum failure (BTC); OKX also has a recorded chain break (ETH).
    want = {"okx": ["okx:BTC-USDT", "okx:ETH-USDT"], "kraken": ["kraken:BTC-USD"]}[plugin.name]
    assert sorted(p for p, _ in gaps(publisher)) == want
    assert sorted(resubscribed(fake)) == want
    assert session.stats.decode_errors == 0


@pytest.mark.parametrize(("plugin", "recording"), CASES, ids=IDS)
async def test_dropped_frames_resync_the_broken_book_on_the_same_connection(
    plugin: FeedPlugin, recording: Path
) -> None:
    faults = Faults(start_after=PAST_SNAPSHOTS, drop=12)
    fake, session, publisher, truth = await run_to_the_end(plugin, recording, faults)
    assert published_books(publisher.events()) == truth
    assert fake.connections == 1
    recorded = {"okx": 2, "kraken": 1}[plugin.name]
    assert len(gaps(publisher)) > recorded  # the recording's own, and the drop's
    # Every product whose book broke was resubscribed, alone.
    assert sorted(set(resubscribed(fake))) == sorted({p for p, _ in gaps(publisher)})
    assert session.stats.resyncs >= len(gaps(publisher))


@pytest.mark.parametrize(("plugin", "recording"), CASES, ids=IDS)
async def test_duplicated_frames_change_nothing(plugin: FeedPlugin, recording: Path) -> None:
    faults = Faults(start_after=PAST_SNAPSHOTS, duplicate=30)
    fake, session, publisher, truth = await run_to_the_end(plugin, recording, faults, answer=False)
    assert published_books(publisher.events()) == truth
    assert fake.connections == 1
    recorded = {"okx": 2, "kraken": 1}[plugin.name]
    assert len(gaps(publisher)) == recorded  # only the recording's own
    if plugin.name == "okx":
        assert session.stats.duplicates > 0  # the chain caught the repeats
    # A repeated trade carries the same message id, so the bus keeps one of the two.
    ids = [m.msg_id for m in publisher.acked if b'"type":"trade"' in m.data]
    trades = [e for e in publisher.events() if isinstance(e, Trade)]
    assert len(set(ids)) == len({(t.product, t.trade_id) for t in trades})


@pytest.mark.parametrize(("plugin", "recording"), CASES, ids=IDS)
async def test_reordered_frames_end_with_the_true_books(
    plugin: FeedPlugin, recording: Path
) -> None:
    faults = Faults(start_after=PAST_SNAPSHOTS, reorder=10)
    fake, _, publisher, truth = await run_to_the_end(plugin, recording, faults)
    assert published_books(publisher.events()) == truth
    assert fake.connections == 1
    assert sorted(set(resubscribed(fake))) == sorted({p for p, _ in gaps(publisher)})


@pytest.mark.parametrize(("plugin", "recording"), CASES, ids=IDS)
async def test_abrupt_close_reconnects_with_fresh_snapshots(
    plugin: FeedPlugin, recording: Path
) -> None:
    faults = Faults(close_after=PAST_SNAPSHOTS + 60)
    fake, session, publisher, truth = await run_to_the_end(plugin, recording, faults)
    assert fake.connections == 2
    assert published_books(publisher.events()) == truth
    offline = [e for e in publisher.events() if isinstance(e, Status) and e.status == "offline"]
    assert {e.product for e in offline} == set(session.products)


def _corrupt(recording: Path, out: Path, product_key: str) -> None:
    """``recording`` with one level of one book update of ``product_key`` changed (its
    checksum left as the exchange computed it): what a corrupted frame looks like."""
    header = read_header(recording)
    done = False
    seen = 0
    with RecordingWriter(out, header) as writer:
        for frame in iter_frames(recording):
            raw = frame.raw
            if not done and frame.dir == "in" and product_key in raw and '"update"' in raw:
                seen += 1
                obj = orjson.loads(raw)
                push = obj["data"][0]
                side = "bids" if push["bids"] else "asks"
                if seen >= 5 and push[side]:
                    level = push[side][0]
                    if isinstance(level, list):  # OKX: [price, size, "0", orders]
                        level[1] = "777"
                        raw = orjson.dumps(obj).decode()
                    else:  # Kraken: {"price": ..., "qty": ...}, numbers on the wire
                        raw = raw.replace('"qty":', '"qty":7', 1)
                    done = True
            writer.write(
                RecordedFrame(ts=frame.ts, dir=frame.dir, conn=frame.conn, raw=raw, url=frame.url)
            )
    assert done


@pytest.mark.parametrize(
    ("plugin", "recording", "key", "product"),
    [
        (OkxFeed(), OKX, '"instId":"ETH-USDT"', "okx:ETH-USDT"),
        (KrakenFeed(), KRAKEN, '"symbol":"ETH/USD"', "kraken:ETH-USD"),
    ],
    ids=IDS,
)
async def test_a_corrupted_level_breaks_the_checksum_and_only_that_book_is_resubscribed(
    plugin: FeedPlugin, recording: Path, key: str, product: str, tmp_path: Path
) -> None:
    corrupted = tmp_path / "corrupted.jsonl.gz"
    _corrupt(recording, corrupted, key)
    fake, session, publisher, truth = await run_to_the_end(plugin, corrupted, Faults())
    mismatches = [(p, r) for p, r in gaps(publisher) if r.startswith("checksum mismatch")]
    assert product in {p for p, _ in mismatches}
    assert fake.connections == 1
    assert product in resubscribed(fake)
    assert published_books(publisher.events()) == truth
    # The other product kept flowing: it has events between the gap and the repair.
    events = publisher.events()
    gap_at = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, Status) and e.product == product and e.status == "gap"
    )
    fixed_at = next(
        i
        for i, e in enumerate(events)
        if i > gap_at and isinstance(e, Status) and e.product == product and e.status == "resync"
    )
    assert gap_at < fixed_at
    assert session.stats.checksum_mismatches >= 1
