"""Property: whatever the network does to Binance's diff stream (drops, duplicates, swaps),
the book a consumer rebuilds from what the session publishes ends equal to the exchange's
book, and every loss is announced with a ``gap`` before it is repaired from REST."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from ledgerflux_binance import BinanceFeed

from ledgerflux import codec
from ledgerflux.book import BookError, BookState, OrderBook
from ledgerflux.events import Book, Event, Status
from ledgerflux.feeds.session import FeedSession, PublishQueue
from ledgerflux.plugin import Subscription

PRODUCT = "binance:BTC-USDT"
TS = 1_795_176_000_000_000_000

change = st.tuples(
    st.sampled_from(["b", "a"]), st.integers(0, 9), st.sampled_from(["0", "1", "2.5", "3"])
)
step = st.tuples(
    st.lists(change, min_size=1, max_size=4), st.sampled_from(["ok"] * 6 + ["drop", "dup", "swap"])
)


def _price(side: str, index: int) -> str:
    return str(90 + index) if side == "b" else str(101 + index)


class Exchange:
    """The true book and its update ids."""

    def __init__(self) -> None:
        self.bids: dict[str, str] = {"95": "1"}
        self.asks: dict[str, str] = {"105": "1"}
        self.update_id = 1000

    def diff(self, changes: list[tuple[str, int, str]], n: int) -> str:
        first = self.update_id + 1
        bids: dict[str, str] = {}
        asks: dict[str, str] = {}
        for side, index, size in changes:
            self.update_id += 1
            price = _price(side, index)
            (bids if side == "b" else asks)[price] = size
            book = self.bids if side == "b" else self.asks
            if size == "0":
                book.pop(price, None)
            else:
                book[price] = size
        data = {
            "e": "depthUpdate", "E": 1_795_176_000_000 + n, "s": "BTCUSDT",
            "U": first, "u": self.update_id,
            "b": [[p, s] for p, s in bids.items()], "a": [[p, s] for p, s in asks.items()],
        }  # fmt: skip
        return orjson.dumps({"stream": "btcusdt@depth@100ms", "data": data}).decode()

    def rest(self) -> bytes:
        body = {
            "lastUpdateId": self.update_id,
            "bids": [[p, s] for p, s in self.bids.items()],
            "asks": [[p, s] for p, s in self.asks.items()],
        }
        return orjson.dumps(body)


def consumer_book(events: list[Event]) -> OrderBook:
    book = OrderBook(PRODUCT)
    for event in events:
        if isinstance(event, Status) and event.status == "gap":
            book.mark_gap()
        elif isinstance(event, Status) and event.status == "resync":
            book.start_resync()
        elif isinstance(event, Book):
            # A diff for a book known to be incomplete is what a consumer drops.
            with contextlib.suppress(BookError):
                book.apply(event)
    return book


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=1, max_size=40))
def test_the_published_book_ends_equal_to_the_exchange_book(
    steps: list[tuple[list[tuple[str, int, str]], str]],
) -> None:
    feed = BinanceFeed()
    session = FeedSession(
        feed,
        Subscription(("BTC-USDT",), ("depth",)),
        PublishQueue(100_000),
        feed="binance",
        shards=1,
        max_buffer_frames=10_000,
    )
    session.on_connect()
    exchange = Exchange()
    out: list[Event] = []

    def drain() -> None:
        for frame in session.queue.take(len(session.queue)):
            for msg in frame.msgs:
                if msg.subject.startswith("lf.ticks."):
                    out.extend(codec.decode_many(msg.data))

    def answer_rest() -> None:
        if PRODUCT in session.resyncing():
            session.on_rest_book(PRODUCT, feed.parse_book("BTC-USDT", exchange.rest(), TS))

    held: str | None = None
    lost = False
    for n, (changes, fault) in enumerate(steps):
        frame = exchange.diff(changes, n)
        if fault == "drop":
            # Lost on a live chain (no REST book pending that would cover it).
            lost = lost or PRODUCT not in session.resyncing()
            continue
        sends = [frame, frame] if fault == "dup" else [frame]
        if fault == "swap" and held is None:
            held = frame
            continue
        if held is not None:
            sends.append(held)
            held = None
        for raw in sends:
            session.on_frame(raw, TS + n)
        if n % 3 == 0:
            answer_rest()  # the REST answer comes back a little later than the gap
    if held is not None:
        session.on_frame(held, TS + len(steps))
    # The stream goes on: a loss at the very end shows with the next diff, as live.
    session.on_frame(exchange.diff([("a", 9, "1")], len(steps)), TS + len(steps) + 1)
    answer_rest()
    answer_rest()  # a book judged older than the buffer is fetched again
    drain()

    book = consumer_book(out)
    assert book.state is BookState.LIVE
    want_bids = sorted(((Decimal(p), Decimal(s)) for p, s in exchange.bids.items()), reverse=True)
    want_asks = sorted((Decimal(p), Decimal(s)) for p, s in exchange.asks.items())
    assert (book.bids(), book.asks()) == (want_bids, want_asks)
    gaps = [e for e in out if isinstance(e, Status) and e.status == "gap"]
    if lost:
        assert gaps, "a diff lost on a live chain was never announced"
