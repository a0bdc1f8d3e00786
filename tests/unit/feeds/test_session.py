"""FeedSession in memory: frames in, queued bus messages out (no I/O)."""

from __future__ import annotations

from decimal import Decimal

import orjson

from ledgerflux import codec
from ledgerflux.book import OrderBook
from ledgerflux.bus import OutMsg
from ledgerflux.events import Book, Event, Status, Trade
from ledgerflux.feeds.session import FeedSession, PublishQueue
from ledgerflux.plugin import Decoded, FeedDecoder, FeedPlugin, SeqMark, Subscription
from ledgerflux.subjects import ticks_subject

from .toy import (
    SUBSCRIBED,
    TS,
    ConnectionSeqToyFeed,
    RestToyFeed,
    ResubscribeToyFeed,
    book,
    trade,
)

BTC, ETH = "example:BTC-USD", "example:ETH-USD"


def make_session(plugin: FeedPlugin, *, capacity: int = 1000) -> FeedSession:
    session = FeedSession(
        plugin,
        Subscription(("BTC-USD", "ETH-USD"), ("trades", "book")),
        PublishQueue(capacity),
        feed=f"test-{plugin.name}",
        shards=2,
        max_buffer_frames=capacity,
    )
    session.on_connect()
    return session


def take(session: FeedSession) -> list[OutMsg]:
    return [m for f in session.queue.take(len(session.queue)) for m in f.msgs]


def events(msgs: list[OutMsg]) -> list[Event]:
    return [e for m in msgs if m.subject.startswith("lf.ticks.") for e in codec.decode_many(m.data)]


def statuses(evs: list[Event]) -> list[tuple[str, str]]:
    return [(e.product, e.status) for e in evs if isinstance(e, Status)]


def feed(session: FeedSession, *frames: str) -> None:
    for index, frame in enumerate(frames):
        session.on_frame(frame, TS + 1000 + index)


def test_online_then_one_message_per_frame_and_product_with_msg_id() -> None:
    session = make_session(RestToyFeed())
    feed(session, SUBSCRIBED, book("BTC-USD", 1, snapshot=True, bids=[("100", "1")]))
    msgs = take(session)
    assert statuses(events(msgs)) == [(BTC, "online"), (ETH, "online")]
    last = msgs[-1]
    assert last.subject == ticks_subject(BTC, 2)
    assert last.msg_id == "example:BTC-USD:1:book"
    assert codec.decode_many(last.data) == [
        Book(
            product=BTC,
            src_seq=1,
            ts_event=TS + 1,
            ts_ingest=TS + 1001,
            snapshot=True,
            bids=((Decimal("100"), Decimal("1")),),
        )
    ]


def test_duplicates_and_out_of_order_are_dropped_and_counted() -> None:
    session = make_session(RestToyFeed())
    feed(session, SUBSCRIBED, trade("BTC-USD", 1), trade("BTC-USD", 2), trade("BTC-USD", 2))
    feed(session, trade("BTC-USD", 1), trade("BTC-USD", 3))
    trades = [e for e in events(take(session)) if isinstance(e, Trade)]
    assert [t.src_seq for t in trades] == [1, 2, 3]
    assert session.stats.duplicates == 2


def test_gap_rest_resync_rebuilds_the_book() -> None:
    session = make_session(RestToyFeed())
    feed(
        session,
        SUBSCRIBED,
        book("BTC-USD", 10, snapshot=True, bids=[("100", "1"), ("99", "2")], asks=[("101", "1")]),
        book("BTC-USD", 11, bids=[("100", "3")]),
        # 12 and 13 are lost
        book("BTC-USD", 14, asks=[("102", "5")]),
        trade("ETH-USD", 1),  # other products are not affected
        book("BTC-USD", 15, bids=[("99", "0")]),
        book("BTC-USD", 16, asks=[("103", "1")]),
    )
    assert session.resyncing() == {BTC}
    before = events(take(session))
    assert statuses(before)[-1] == (BTC, "gap")
    assert [e.product for e in before if isinstance(e, Trade)] == [ETH]
    assert not [e for e in before if isinstance(e, Book) and (e.src_seq or 0) > 11]

    # The REST book reflects everything up to 15.
    rest = RestToyFeed().parse_book(
        "BTC-USD",
        orjson.dumps(
            {"seq": 15, "bids": [["100", "3"]], "asks": [["101", "1"], ["102", "5"]], "ts": TS}
        ),
        TS + 5000,
    )
    session.on_rest_book(BTC, rest)
    after = events(take(session))
    assert statuses(after) == [(BTC, "resync")]
    assert after[1] == rest.book
    assert [e.src_seq for e in after[2:]] == [16]  # 14 and 15 are at or below the book
    assert session.resyncing() == frozenset()

    rebuilt = OrderBook(BTC)
    for event in [*before, *after]:
        if isinstance(event, Book) and event.product == BTC:
            if event.snapshot and event.src_seq == 10:
                rebuilt = OrderBook(BTC)
            rebuilt.apply(event)
    assert rebuilt.bids() == [(Decimal("100"), Decimal("3"))]
    assert rebuilt.asks() == [
        (Decimal("101"), Decimal("1")),
        (Decimal("102"), Decimal("5")),
        (Decimal("103"), Decimal("1")),
    ]
    # The stream goes on after the resync.
    feed(session, book("BTC-USD", 17, bids=[("98", "1")]))
    assert [e.src_seq for e in events(take(session))] == [17]


def test_rest_book_older_than_the_buffer_resyncs_again() -> None:
    session = make_session(RestToyFeed())
    feed(session, SUBSCRIBED, trade("BTC-USD", 1), trade("BTC-USD", 5), trade("BTC-USD", 6))
    take(session)
    stale = RestToyFeed().parse_book("BTC-USD", b'{"seq":2,"bids":[],"asks":[],"ts":1}', TS)
    session.on_rest_book(BTC, stale)
    out = events(take(session))
    assert statuses(out) == [(BTC, "resync"), (BTC, "gap")]
    assert session.resyncing() == {BTC}
    fresh = RestToyFeed().parse_book("BTC-USD", b'{"seq":5,"bids":[],"asks":[],"ts":1}', TS)
    session.on_rest_book(BTC, fresh)
    out = events(take(session))
    assert statuses(out) == [(BTC, "resync")]
    assert [e.src_seq for e in out if isinstance(e, Trade)] == [6]


def test_gap_in_resubscribe_mode_reconnects_and_waits_for_a_snapshot() -> None:
    session = make_session(ResubscribeToyFeed())
    feed(session, SUBSCRIBED, book("BTC-USD", 1, snapshot=True), book("BTC-USD", 3))
    assert session.reconnect_reason is not None
    assert "BTC-USD" in session.reconnect_reason
    session.on_connect()
    feed(session, SUBSCRIBED, book("BTC-USD", 4), book("BTC-USD", 9, snapshot=True))
    out = events(take(session))
    kinds = [(type(e).__name__, getattr(e, "status", None), e.src_seq) for e in out]
    assert ("Book", None, 4) not in kinds  # a delta before the fresh snapshot is useless
    assert kinds[-2:] == [("Status", "resync", None), ("Book", None, 9)]
    assert session.resyncing() == frozenset()


def test_per_connection_gap_affects_every_product() -> None:
    session = make_session(ConnectionSeqToyFeed())
    feed(session, SUBSCRIBED, trade("BTC-USD", 1), trade("ETH-USD", 2), trade("BTC-USD", 4))
    out = events(take(session))
    assert statuses(out)[-2:] == [(BTC, "gap"), (ETH, "gap")]
    assert session.resyncing() == {BTC, ETH}


def test_malformed_frame_goes_to_the_dlq_and_the_session_goes_on() -> None:
    session = make_session(RestToyFeed())
    feed(session, SUBSCRIBED, '{"type":"trade","symbol":"BTC', trade("BTC-USD", 1))
    msgs = take(session)
    dlq = [m for m in msgs if m.subject.startswith("lf.dlq.")]
    assert len(dlq) == 1
    body = orjson.loads(dlq[0].data)
    assert dlq[0].subject == "lf.dlq._._"
    assert body == {
        "reason": "malformed_json",
        "detail": body["detail"],
        "raw": '{"type":"trade","symbol":"BTC',
        "feed": "test-toy",
        "ts_ingest": TS + 1001,
    }
    assert session.stats.decode_errors == 1
    assert [e.src_seq for e in events(msgs) if isinstance(e, Trade)] == [1]


def test_publish_buffer_overflow_drops_marks_stale_and_resyncs() -> None:
    session = make_session(RestToyFeed(), capacity=4)
    feed(session, SUBSCRIBED, *[trade("BTC-USD", n) for n in range(1, 8)])
    assert len(session.queue) <= 4
    out = events(take(session))
    assert (BTC, "stale") in statuses(out)
    # ETH only had its "online" status in the dropped frames: it is resynced too.
    assert session.resyncing() == {BTC, ETH}
    assert session.stats.overflow_dropped > 0


class _SeqOnlyDecoder:
    """The example decoder plus frames that carry only a sequence number and no event
    (like Coinbase's `full` channel `open`/`done` messages)."""

    def __init__(self) -> None:
        self.inner = RestToyFeed().new_decoder()

    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        obj = orjson.loads(frame)
        if obj.get("type") == "seqonly":
            return Decoded(marks=(SeqMark(f"example:{obj['symbol']}", obj["seq"]),))
        return self.inner.decode(frame, ts_ingest)


class SeqOnlyToyFeed(RestToyFeed):
    def new_decoder(self) -> FeedDecoder:
        return _SeqOnlyDecoder()


def seq_only(symbol: str, seq: int) -> str:
    return orjson.dumps({"type": "seqonly", "symbol": symbol, "seq": seq}).decode()


def test_frames_with_only_a_sequence_number_keep_the_rest_book_in_place() -> None:
    session = make_session(SeqOnlyToyFeed())
    feed(session, SUBSCRIBED, trade("BTC-USD", 1), trade("BTC-USD", 4))  # 2, 3 lost
    assert session.resyncing() == {BTC}
    # While the REST book is fetched, the stream goes on: 5-7 carry no event.
    feed(session, seq_only("BTC-USD", 5), seq_only("BTC-USD", 6), seq_only("BTC-USD", 7))
    feed(session, trade("BTC-USD", 8))
    take(session)
    rest = RestToyFeed().parse_book("BTC-USD", b'{"seq":6,"bids":[],"asks":[],"ts":1}', TS)
    session.on_rest_book(BTC, rest)
    out = events(take(session))
    # No false "book older than the stream": 7 follows 6, then the trade at 8.
    assert statuses(out) == [(BTC, "resync")]
    assert [e.src_seq for e in out if isinstance(e, Trade)] == [8]
    assert session.resyncing() == frozenset()
