"""ProductState: sequencing, epochs, what each event changes, and the exact JSON round trip."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflux.book import BookState, CrossedBook, NoBaseSnapshot
from ledgerflux.events import Book, Event, Quote, Status, Ticker, Trade
from ledgerflux.state import ProductState, SequenceError, StateError, TopOfBook

P = "coinbase:BTC-USD"
D = Decimal


def book(seq: int, snapshot: bool, bids=(), asks=(), epoch: str = "e1") -> Book:  # type: ignore[no-untyped-def]
    return Book(
        product=P,
        seq=seq,
        epoch=epoch,
        ts_event=seq * 10,
        ts_ingest=seq * 10 + 1,
        snapshot=snapshot,
        bids=tuple((D(p), D(s)) for p, s in bids),
        asks=tuple((D(p), D(s)) for p, s in asks),
    )


def trade(seq: int, epoch: str = "e1") -> Trade:
    return Trade(
        product=P, seq=seq, epoch=epoch, src_seq=seq, ts_event=seq * 10, ts_ingest=seq * 10 + 1,
        price=D("100.5"), size=D("0.01"), side="buy", trade_id=str(seq),
    )  # fmt: skip


def status(seq: int, kind: str, epoch: str = "e1") -> Status:
    return Status(
        product=P, seq=seq, epoch=epoch, ts_event=seq * 10, ts_ingest=seq * 10,
        status=kind, reason="why",  # type: ignore[arg-type]
    )  # fmt: skip


def test_events_must_follow() -> None:
    state = ProductState(P)
    state.apply(trade(1))
    with pytest.raises(SequenceError):
        state.apply(trade(3))
    with pytest.raises(SequenceError):
        state.apply(trade(1))
    state.apply(trade(2))
    assert (state.epoch, state.seq, state.ts_event) == ("e1", 2, 20)


def test_a_new_epoch_may_start_anywhere_and_resets_the_book() -> None:
    state = ProductState(P)
    state.apply(book(1, True, bids=[("1", "1")]))
    state.apply(trade(7, epoch="e2"))
    assert (state.epoch, state.seq) == ("e2", 7)
    assert state.book.state is BookState.EMPTY
    assert state.book.bids() == []
    assert state.quote is None
    assert state.trade == trade(7, epoch="e2")


def test_other_product_is_refused() -> None:
    with pytest.raises(StateError):
        ProductState("coinbase:ETH-USD").apply(trade(1))


def test_book_events_update_book_and_derived_quote() -> None:
    state = ProductState(P)
    state.apply(book(1, True, bids=[("99", "1"), ("98", "2")], asks=[("101", "3")]))
    assert state.quote == TopOfBook(D(99), D(1), D(101), D(3))
    state.apply(book(2, False, bids=[("99", "0")]))
    assert state.quote == TopOfBook(D(98), D(2), D(101), D(3))


def test_quote_events_set_quote() -> None:
    state = ProductState(P)
    q = Quote(
        product=P, seq=1, epoch="e", ts_event=1, ts_ingest=2,
        bid_price=D(1), bid_size=D(2), ask_price=None, ask_size=None,
    )  # fmt: skip
    state.apply(q)
    assert state.quote == TopOfBook(D(1), D(2), None, None)


def test_refused_book_change_leaves_state_unchanged() -> None:
    state = ProductState(P)
    with pytest.raises(NoBaseSnapshot):
        state.apply(book(1, False, bids=[("1", "1")]))
    assert state.seq == 0
    state.apply(book(1, True, bids=[("1", "1")], asks=[("2", "1")]))
    with pytest.raises(CrossedBook):
        state.apply(book(2, False, bids=[("3", "1")]))
    assert state.seq == 1
    assert state.book.bids() == [(D(1), D(1))]


def test_lenient_book_marks_gap_and_advances() -> None:
    state = ProductState(P)
    state.apply(book(1, False, bids=[("1", "1")]), strict_book=False)
    assert state.seq == 1
    assert state.book.state is BookState.EMPTY
    state.apply(book(2, True, bids=[("1", "1")], asks=[("2", "1")]))
    state.apply(book(3, False, bids=[("3", "1")]), strict_book=False)
    assert (state.seq, state.book.state) == (3, BookState.GAPPED)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("gap", BookState.GAPPED), ("resync", BookState.RESYNCING), ("reset", BookState.EMPTY),
     ("stale", BookState.LIVE), ("online", BookState.LIVE), ("offline", BookState.LIVE)],
)  # fmt: skip
def test_status_events_drive_the_book(kind: str, expected: BookState) -> None:
    state = ProductState(P)
    state.apply(book(1, True, bids=[("1", "1")]))
    state.apply(status(2, kind))
    assert state.book.state is expected
    assert state.status == status(2, kind)


def full_state() -> ProductState:
    state = ProductState(P)
    events: list[Event] = [
        book(1, True, bids=[("99.50", "1.000"), ("98", "2")], asks=[("101", "3E-8")]),
        trade(2),
        Ticker(
            product=P,
            seq=3,
            epoch="e1",
            ts_event=30,
            ts_ingest=31,
            price=D("100.1"),
            volume_24h=D("12345.6789"),
        ),
        status(4, "online"),
        book(5, False, asks=[("100", "1")]),
    ]
    for e in events:
        state.apply(e)
    return state


def test_to_json_is_exact() -> None:
    doc = full_state().to_json()
    assert doc == {
        "product": P,
        "epoch": "e1",
        "seq": 5,
        "ts_event": 50,
        "book": {
            "state": "live",
            "bids": [["99.50", "1.000"], ["98", "2"]],
            "asks": [["100", "1"], ["101", "3E-8"]],
        },
        "quote": {"bid_price": "99.50", "bid_size": "1.000", "ask_price": "100", "ask_size": "1"},
        "trade": {
            "type": "trade", "product": P, "seq": 2, "epoch": "e1", "src_seq": 2,
            "ts_event": 20, "ts_ingest": 21, "price": "100.5", "size": "0.01", "side": "buy",
            "trade_id": "2",
        },
        "ticker": {
            "type": "ticker", "product": P, "seq": 3, "epoch": "e1", "src_seq": None,
            "ts_event": 30, "ts_ingest": 31, "price": "100.1", "open_24h": None,
            "high_24h": None, "low_24h": None, "volume_24h": "12345.6789", "best_bid": None,
            "best_ask": None,
        },
        "status": {
            "type": "status", "product": P, "seq": 4, "epoch": "e1", "src_seq": None,
            "ts_event": 40, "ts_ingest": 40, "status": "online", "reason": "why",
        },
    }  # fmt: skip


def test_json_round_trip_is_exact_through_bytes() -> None:
    state = full_state()
    state.book.mark_gap()
    doc = orjson.loads(orjson.dumps(state.to_json()))
    back = ProductState.from_json(doc)
    assert back.to_json() == state.to_json()
    assert back.book.state is BookState.GAPPED
    assert back.trade == state.trade
    assert back.quote == state.quote
    # the restored state continues the sequence
    back.apply(book(6, True, bids=[("1", "1")]))
    assert back.seq == 6


def test_empty_state_round_trips() -> None:
    state = ProductState(P)
    assert ProductState.from_json(state.to_json()).to_json() == state.to_json()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("seq"),
        lambda d: d.update(seq="5"),
        lambda d: d["book"].update(bids=[["x", "1"]]),
        lambda d: d["quote"].update(bid_price=1.5),
        lambda d: d.update(trade={"type": "status"}),
        lambda d: d.update(trade=d["status"]),
        lambda d: d["book"].update(bids=[["200", "1"]]),
    ],
)
def test_bad_documents_raise_state_error(mutate) -> None:  # type: ignore[no-untyped-def]
    doc = full_state().to_json()
    mutate(doc)
    with pytest.raises(StateError):
        ProductState.from_json(doc)


def test_copy_is_independent() -> None:
    state = full_state()
    copy = state.copy()
    state.apply(book(6, False, bids=[("99.50", "0")]))
    assert copy.seq == 5
    assert copy.to_json() == full_state().to_json()


decimals = st.decimals(min_value=D("0.00000001"), max_value=D(10**9), places=8)


@given(
    st.dictionaries(decimals, decimals, max_size=20),
    st.dictionaries(decimals, decimals, max_size=20),
)
def test_round_trip_property(bids: dict[Decimal, Decimal], asks: dict[Decimal, Decimal]) -> None:
    if bids and asks and max(bids) >= min(asks):
        return
    state = ProductState(P)
    state.apply(
        Book(
            product=P, seq=1, epoch="e", ts_event=1, ts_ingest=1, snapshot=True,
            bids=tuple(bids.items()), asks=tuple(asks.items()),
        )
    )  # fmt: skip
    doc = orjson.loads(orjson.dumps(state.to_json()))
    assert ProductState.from_json(doc).to_json() == state.to_json()
