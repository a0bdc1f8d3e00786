"""The Kraken recordings through the plugin and the ingest session (sans-IO): conformance,
every channel present, every reported checksum equal to the independent one, the recorded
checksum failure resynced once, the recording exercising levels pushed out of the depth
(without the decoder's truncation the checksums fail), and trades on the right side of the
book (a taker buy prints at the ask)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from kraken_reference import checksum as reference_checksum
from ledgerflux_kraken import KrakenDecoder, KrakenFeed

from ledgerflux.book import OrderBook
from ledgerflux.events import Book, Event, Trade
from ledgerflux.feeds.session import FeedSession, PublishQueue
from ledgerflux.plugin import Subscription
from ledgerflux.recording import iter_frames, read_header
from ledgerflux.testing import check_plugin

REPO = Path(__file__).parents[3]
CHANNELS = REPO / "recordings" / "kraken" / "kraken-channels.jsonl.gz"
DEEP = REPO / "recordings" / "kraken" / "kraken-deep.jsonl.gz"
RECORDINGS = [CHANNELS, DEEP]


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_conforms(path: Path) -> None:
    report = check_plugin(KrakenFeed(), path)
    report.raise_for_failures()
    assert report.decode_errors == 0
    assert report.frames > 300


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_every_channel_is_recorded(path: Path) -> None:
    seen: set[str] = set()
    for frame in iter_frames(path):
        obj = orjson.loads(frame.raw)
        if frame.dir == "in":
            seen.add(obj.get("channel") or obj["method"])
    assert seen == {
        "status",
        "subscribe",
        "unsubscribe",
        "instrument",
        "book",
        "trade",
        "ticker",
        "ohlc",
        "heartbeat",
        "pong",
    }


def test_the_deep_recording_has_a_1000_level_book() -> None:
    first = next(
        orjson.loads(f.raw)["data"][0]
        for f in iter_frames(DEEP)
        if f.dir == "in" and b'"type":"snapshot"' in f.raw.encode() and '"book"' in f.raw
    )
    assert (len(first["bids"]), len(first["asks"])) == (1000, 1000)


def _pushes(path: Path) -> list[tuple[str, list[Event], int | None]]:
    out: list[tuple[str, list[Event], int | None]] = []
    decoder, conn = KrakenDecoder(), 0
    for frame in iter_frames(path):
        if frame.dir != "in":
            continue
        if frame.conn != conn:
            decoder, conn = KrakenDecoder(), frame.conn
        decoded = decoder.decode(frame.raw, frame.ts)
        checks = {c.product: c.value for c in decoded.checksums}
        for product in {e.product for e in decoded.events}:
            out.append(
                (product, [e for e in decoded.events if e.product == product], checks.get(product))
            )
    return out


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_every_checksum_but_the_recorded_failure_is_the_independent_one(path: Path) -> None:
    places = {"kraken:BTC-USD": (1, 8), "kraken:ETH-USD": (2, 8)}
    books: dict[str, OrderBook] = {}
    mismatches = []
    for product, events, checksum in _pushes(path):
        book = books.setdefault(product, OrderBook(product))
        for event in events:
            if isinstance(event, Book):
                if event.snapshot:
                    book.reset()
                book.apply(event)
        if checksum is None:
            continue
        price_places, qty_places = places[product]
        asks = [(f"{p:.{price_places}f}", f"{q:.{qty_places}f}") for p, q in book.asks()]
        bids = [(f"{p:.{price_places}f}", f"{q:.{qty_places}f}") for p, q in book.bids()]
        if reference_checksum(asks, bids) != checksum:
            mismatches.append(product)
    assert mismatches == ["kraken:BTC-USD"]


def _session(path: Path) -> FeedSession:
    header = read_header(path)
    session = FeedSession(
        KrakenFeed(),
        Subscription(header.symbols, header.channels),
        PublishQueue(100_000),
        feed="kraken",
        shards=1,
        max_buffer_frames=10_000,
    )
    conn = None
    for frame in iter_frames(path):
        if frame.dir != "in":
            continue
        if frame.conn != conn:
            if conn is not None:
                session.on_disconnect("recorded reconnect")
            session.on_connect()
            conn = frame.conn
        session.on_frame(frame.raw, frame.ts)
    return session


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_the_session_resyncs_the_recorded_checksum_failure_once(path: Path) -> None:
    stats = _session(path).stats
    assert (stats.checksum_mismatches, stats.gaps, stats.resyncs) == (1, 1, 1)
    assert stats.decode_errors == 0


def test_without_truncation_the_checksums_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic bug, reproduced: keeping levels pushed out of the depth."""
    monkeypatch.setattr(KrakenDecoder, "_truncate", lambda self, local, change: change)
    assert _session(CHANNELS).stats.checksum_mismatches > 1


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_a_taker_buy_prints_at_the_ask_and_a_sell_at_the_bid(path: Path) -> None:
    books: dict[str, OrderBook] = {}
    checked = 0
    for product, events, _ in _pushes(path):
        book = books.setdefault(product, OrderBook(product))
        for event in events:
            if isinstance(event, Book):
                if event.snapshot:
                    book.reset()
                book.apply(event)
            elif isinstance(event, Trade):
                bid, ask = book.best_bid(), book.best_ask()
                assert bid is not None
                assert ask is not None
                if event.side == "buy":
                    assert event.price >= ask[0], event
                else:
                    assert event.price <= bid[0], event
                checked += 1
    assert checked >= 20
