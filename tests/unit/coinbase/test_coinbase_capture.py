"""The reference capture (real Exchange traffic, 2021) decodes cleanly and builds sane books.

``coinbase-exchange-feed-2021.capture``: 10 products, channels level2, ticker, matches.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from coinbase_support import CAPTURE
from ledgerflux_coinbase import (
    CaptureFormatError,
    CaptureFrame,
    ExchangeDecoder,
    parse_capture_line,
    read_capture,
)

from ledgerflux.book import BookState, OrderBook
from ledgerflux.events import Book, Ticker, Trade

pytestmark = pytest.mark.skipif(not CAPTURE.exists(), reason="reference capture not present")

PRODUCTS = {
    f"coinbase:{s}"
    for s in [
        "SKL-USD",
        "SKL-BTC",
        "BAND-GBP",
        "NMR-EUR",
        "BAND-BTC",
        "YFI-BTC",
        "DASH-BTC",
        "NU-GBP",
        "CRV-EUR",
        "SKL-GBP",
    ]
}


def test_capture_reader() -> None:
    frames = list(read_capture(CAPTURE))
    sent = [f for f in frames if f.direction == "sent"]
    assert len(sent) == 3
    assert sent[0].ts_ns == 1_618_677_817_020_616_000
    assert sent[0].frame.startswith('{"type":"subscribe"')
    assert len(frames) == 3 + 9_946
    assert {f.conn for f in frames} == {0}  # one connection in this capture
    assert parse_capture_line("wss://x <-> 1618677816.8434298\n", 1) is None
    assert parse_capture_line("1618677817.0618958: {}\n", 5) == CaptureFrame(
        direction="received", ts_ns=1_618_677_817_061_895_800, frame="{}", line=5
    )


def test_capture_connections(tmp_path: Path) -> None:
    path = tmp_path / "two.capture"
    path.write_text(
        'wss://x <-> 1.5\nwss://x <- 2.25: {}\n3: {"a": 1}\nwss://x <-> 4\n5.000000001: []\n'
    )
    assert list(read_capture(path)) == [
        CaptureFrame(direction="sent", ts_ns=2_250_000_000, frame="{}", line=2, conn=0),
        CaptureFrame(direction="received", ts_ns=3_000_000_000, frame='{"a": 1}', line=3, conn=0),
        CaptureFrame(direction="received", ts_ns=5_000_000_001, frame="[]", line=5, conn=1),
    ]
    bad = tmp_path / "bad.capture"
    bad.write_text("wss://x <-> 1\nnot a frame\n")
    with pytest.raises(CaptureFormatError, match="line 2"):
        list(read_capture(bad))


def test_every_received_frame_decodes_and_books_stay_sane() -> None:
    decoder = ExchangeDecoder()
    books: dict[str, OrderBook] = {}
    counts: Counter[str] = Counter()
    subscribed: set[str] = set()
    compared = 0
    first_ticker_seen: set[str] = set()
    ticker_checked = 0
    for frame in read_capture(CAPTURE):
        if frame.direction != "received":
            continue
        decoded = decoder.decode(frame.frame.encode(), frame.ts_ns)
        assert decoded.errors == (), (frame.line, decoded.errors)
        if decoded.subscribed is not None:
            subscribed.update(decoded.subscribed)
        for event in decoded.events:
            counts[f"{type(event).__name__}/{getattr(event, 'snapshot', '')}"] += 1
            assert event.product in PRODUCTS
            assert event.ts_ingest == frame.ts_ns
            if isinstance(event, Ticker) and event.product in books:
                # The first ticker of a product is the last one from before the
                # subscription; every later one must show the book we rebuilt.
                if event.product in first_ticker_seen:
                    bid = books[event.product].best_bid()
                    ask = books[event.product].best_ask()
                    assert bid is not None
                    assert ask is not None
                    assert (bid[0], ask[0]) == (event.best_bid, event.best_ask), frame.line
                    ticker_checked += 1
                first_ticker_seen.add(event.product)
            if not isinstance(event, Book):
                continue
            book = books.setdefault(event.product, OrderBook(event.product))
            if event.snapshot and book.state is BookState.LIVE:
                # A later snapshot must equal the book we built from the changes.
                assert book.bids() == sorted(event.bids, reverse=True)
                assert book.asks() == sorted(event.asks)
                compared += 1
            book.apply(event)  # raises CrossedBook / NoBaseSnapshot
            assert not book.is_crossed()
    assert subscribed == {p.partition(":")[2] for p in PRODUCTS}
    assert set(books) == PRODUCTS
    assert all(book.state is BookState.LIVE for book in books.values())
    assert counts == {
        "Book/True": 10,
        "Book/False": 9_719,
        "Ticker/": 107,
        "Trade/": 107,
    }
    assert ticker_checked == 107 - 10
    # The capture holds one snapshot per product, so no later snapshot to compare with.
    assert compared == 0


def test_trades_in_capture_are_taker_side() -> None:
    # SKL-BTC match 280236: maker side "buy" at the bid, so the taker sold.
    decoder = ExchangeDecoder()
    for frame in read_capture(CAPTURE):
        if '"trade_id":280236,' in frame.frame:
            (trade,) = decoder.decode(frame.frame, frame.ts_ns).events
            assert isinstance(trade, Trade)
            assert trade.side == "sell"
            return
    pytest.fail("match 280236 not in the capture")


def test_capture_tickers_without_sizes_give_no_quote() -> None:
    # The 2021 ticker has best_bid/best_ask but no sizes: a Quote (prices with sizes) would
    # be invalid downstream, so only the Ticker, which carries the prices, is emitted.
    decoder = ExchangeDecoder()
    for frame in read_capture(CAPTURE):
        if frame.direction == "received" and '"type":"ticker"' in frame.frame:
            (ticker,) = decoder.decode(frame.frame, frame.ts_ns).events
            assert isinstance(ticker, Ticker)
            assert ticker.best_bid is not None
            assert ticker.best_ask is not None
