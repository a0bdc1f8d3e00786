"""Properties of the OKX plugin: its checksum agrees with the independent one written from
OKX's documentation, and books built from the decoded events stay the exchange's book
through any sequence of changes (hypothesis)."""

from __future__ import annotations

from decimal import Decimal

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledgerflux_okx import OkxDecoder, OkxFeed, okx_checksum, okx_checksum_text
from okx_reference import check_string
from okx_reference import checksum as reference_checksum

from ledgerflux.book import OrderBook
from ledgerflux.events import Book
from ledgerflux.feeds.sequence import SequenceTracker, SeqVerdict
from ledgerflux.plugin import SequenceModel

# Decimal strings as OKX writes them: trailing zeros and small values kept verbatim.
decimal_text = st.builds(
    lambda whole, frac: f"{whole}.{frac}" if frac else str(whole),
    st.integers(0, 99_999),
    st.text("0123456789", max_size=8),
)


def _side(draw: st.DrawFn, descending: bool) -> list[list[str]]:
    prices = draw(st.lists(decimal_text, max_size=30, unique_by=Decimal))
    prices.sort(key=Decimal, reverse=descending)
    return [[p, draw(decimal_text.filter(lambda s: Decimal(s) != 0))] for p in prices]


@st.composite
def books(draw: st.DrawFn) -> tuple[list[list[str]], list[list[str]]]:
    return _side(draw, True), _side(draw, False)


def test_documented_example_string() -> None:
    bids = [["3366.1", "7"], ["3366", "6"]]
    asks = [["3366.8", "9"], ["3368", "8"]]
    assert check_string(bids, asks) == "3366.1:7:3366.8:9:3366:6:3368:8"
    as_decimals = ([(Decimal(p), Decimal(s)) for p, s in side] for side in (bids, asks))
    assert okx_checksum_text(*as_decimals) == "3366.1:7:3366.8:9:3366:6:3368:8"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(books())
def test_checksum_agrees_with_the_documentation(
    book: tuple[list[list[str]], list[list[str]]],
) -> None:
    bids, asks = book
    decimals = [[(Decimal(p), Decimal(s)) for p, s in side] for side in (bids, asks)]
    assert okx_checksum_text(*decimals) == check_string(bids, asks)
    assert okx_checksum(*decimals) == reference_checksum(bids, asks)
    assert OkxFeed().book_checksum(*decimals) == reference_checksum(bids, asks)
    assert -(2**31) <= okx_checksum(*decimals) < 2**31


prices = st.integers(1, 400).map(lambda i: f"{100 + i / 10:.1f}")
sizes = st.sampled_from(["0", "0", "1", "0.5", "2.00", "0.0001", "12.3456"])
changes = st.lists(st.tuples(st.booleans(), prices, sizes), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(changes, max_size=40), st.integers(1, 10**12))
def test_books_stay_the_exchange_book(steps: list[list[tuple[bool, str, str]]], seq0: int) -> None:
    """An exchange book (bids below 140.1, asks above 140 and so never crossed) changed
    step by step; each push is what OKX would send. The decoded events, applied in order,
    give the exchange's book, every checksum reported is the independent one of that book,
    and the runtime's sequence tracker accepts every push."""
    exchange: dict[str, dict[str, str]] = {"bids": {}, "asks": {}}
    decoder = OkxDecoder()
    tracker = SequenceTracker(SequenceModel.PER_PRODUCT)
    mine = OrderBook("okx:BTC-USDT")

    def side_list(name: str) -> list[list[str]]:
        ordered = sorted(
            exchange[name].items(), key=lambda kv: Decimal(kv[0]), reverse=name == "bids"
        )
        return [[p, s] for p, s in ordered]

    def push(
        action: str, bids: list[list[str]], asks: list[list[str]], prev: int, seq: int
    ) -> None:
        frame = {
            "arg": {"channel": "books", "instId": "BTC-USDT"},
            "action": action,
            "data": [
                {
                    "asks": [[p, s, "0", "1"] for p, s in asks],
                    "bids": [[p, s, "0", "1"] for p, s in bids],
                    "ts": "1597026383085",
                    "checksum": reference_checksum(side_list("bids"), side_list("asks")),
                    "prevSeqId": prev,
                    "seqId": seq,
                }
            ],
        }
        decoded = decoder.decode(orjson.dumps(frame), 1)
        assert decoded.errors == ()
        for mark in decoded.marks:
            assert tracker.check(mark) is SeqVerdict.OK
        for event in decoded.events:
            assert isinstance(event, Book)
            mine.apply(event)
        for check in decoded.checksums:
            assert okx_checksum(mine.bids(), mine.asks()) == check.value

    push("snapshot", [], [], -1, seq0)
    seq = seq0
    for step in steps:
        bids: list[list[str]] = []
        asks: list[list[str]] = []
        for is_bid, price, size in step:
            name = "bids" if is_bid else "asks"
            # Keep the book uncrossed: bids at or below 140.0, asks above it.
            if (Decimal(price) <= 140) != is_bid:
                continue
            if size == "0":
                if price not in exchange[name]:
                    continue
                del exchange[name][price]
            else:
                exchange[name][price] = size
            (bids if is_bid else asks).append([price, size])
        push("update", bids, asks, seq, seq + 3)
        seq += 3
    assert [[f"{p:f}", f"{s:f}"] for p, s in mine.bids()] == side_list("bids")
    assert [[f"{p:f}", f"{s:f}"] for p, s in mine.asks()] == side_list("asks")
