"""The order book state machine: the transition table and a property test against a naive
model."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflux.book import BookState, CrossedBook, NoBaseSnapshot, OrderBook
from ledgerflux.events import Book

P = "coinbase:BTC-USD"
D = Decimal


def snap(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> Book:
    return Book(
        product=P,
        ts_event=1,
        ts_ingest=2,
        snapshot=True,
        bids=tuple((D(p), D(s)) for p, s in bids),
        asks=tuple((D(p), D(s)) for p, s in asks),
    )


def delta(bids: list[tuple[str, str]] = [], asks: list[tuple[str, str]] = []) -> Book:  # noqa: B006
    return Book(
        product=P,
        ts_event=1,
        ts_ingest=2,
        snapshot=False,
        bids=tuple((D(p), D(s)) for p, s in bids),
        asks=tuple((D(p), D(s)) for p, s in asks),
    )


def live_book() -> OrderBook:
    book = OrderBook(P)
    book.apply(snap([("100", "1"), ("99", "2"), ("98", "3")], [("101", "1"), ("102", "2")]))
    return book


def test_snapshot_makes_live_and_sorts_sides() -> None:
    book = live_book()
    assert book.state is BookState.LIVE
    assert book.bids() == [(D(100), D(1)), (D(99), D(2)), (D(98), D(3))]
    assert book.asks() == [(D(101), D(1)), (D(102), D(2))]
    assert book.bids(2) == [(D(100), D(1)), (D(99), D(2))]
    assert book.asks(1) == [(D(101), D(1))]
    assert book.bids(0) == []
    assert book.best_bid() == (D(100), D(1))
    assert book.best_ask() == (D(101), D(1))


def test_delta_updates_adds_and_removes_levels() -> None:
    book = live_book()
    book.apply(delta(bids=[("100", "0"), ("99", "5"), ("97", "1")], asks=[("100.5", "2")]))
    assert book.bids() == [(D(99), D(5)), (D(98), D(3)), (D(97), D(1))]
    assert book.asks() == [(D("100.5"), D(2)), (D(101), D(1)), (D(102), D(2))]


def test_removing_an_absent_level_is_a_no_op() -> None:
    book = live_book()
    book.apply(delta(bids=[("50", "0")]))
    assert len(book.bids()) == 3


def test_delta_without_snapshot_is_refused() -> None:
    book = OrderBook(P)
    with pytest.raises(NoBaseSnapshot):
        book.apply(delta(bids=[("1", "1")]))
    assert book.state is BookState.EMPTY
    assert book.bids() == []


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("mark_gap", BookState.GAPPED),
        ("start_resync", BookState.RESYNCING),
    ],
)
def test_gap_and_resync_refuse_deltas_until_snapshot(action: str, expected: BookState) -> None:
    book = live_book()
    getattr(book, action)()
    assert book.state is expected
    with pytest.raises(NoBaseSnapshot):
        book.apply(delta(bids=[("99", "7")]))
    assert book.bids()[1] == (D(99), D(2))  # last known levels are kept, unchanged
    book.apply(snap([("10", "1")], [("11", "1")]))
    assert book.state is BookState.LIVE
    book.apply(delta(bids=[("9", "1")]))
    assert book.bids() == [(D(10), D(1)), (D(9), D(1))]


def test_gap_on_an_empty_book_stays_empty() -> None:
    book = OrderBook(P)
    book.mark_gap()
    assert book.state is BookState.EMPTY
    book.start_resync()
    book.mark_gap()
    assert book.state is BookState.RESYNCING


def test_crossing_delta_is_refused_and_book_unchanged() -> None:
    book = live_book()
    before = (book.bids(), book.asks())
    change = delta(bids=[("101", "1")])
    assert book.would_cross(change)
    with pytest.raises(CrossedBook):
        book.apply(change)
    assert (book.bids(), book.asks()) == before
    assert book.state is BookState.LIVE


def test_delta_that_removes_the_crossing_level_in_the_same_change_is_fine() -> None:
    book = live_book()
    change = delta(bids=[("101", "1")], asks=[("101", "0"), ("102", "0"), ("103", "1")])
    assert not book.would_cross(change)
    book.apply(change)
    assert book.best_bid() == (D(101), D(1))
    assert book.best_ask() == (D(103), D(1))


def test_crossed_snapshot_is_refused() -> None:
    book = live_book()
    with pytest.raises(CrossedBook):
        book.apply(snap([("5", "1")], [("4", "1")]))
    assert book.best_bid() == (D(100), D(1))


def test_snapshot_drops_zero_sizes_and_last_duplicate_wins() -> None:
    book = OrderBook(P)
    book.apply(snap([("5", "1"), ("4", "0"), ("5", "2")], [("6", "1"), ("3", "1"), ("3", "0")]))
    assert book.bids() == [(D(5), D(2))]
    assert book.asks() == [(D(6), D(1))]


def test_to_snapshot_round_trips() -> None:
    book = live_book()
    copy = OrderBook(P)
    copy.apply(book.to_snapshot(ts_event=5, ts_ingest=6))
    assert (copy.bids(), copy.asks()) == (book.bids(), book.asks())
    assert book.to_snapshot(ts_event=5, ts_ingest=6) == Book(
        product=P,
        ts_event=5,
        ts_ingest=6,
        snapshot=True,
        bids=((D(100), D(1)), (D(99), D(2)), (D(98), D(3))),
        asks=((D(101), D(1)), (D(102), D(2))),
    )


# -- property: any sequence of snapshots/deltas matches a naive model -----------------------

prices = st.integers(min_value=1, max_value=40).map(lambda i: Decimal(i) / 4)
sizes = st.sampled_from([D(0), D(0), D("0.5"), D(1), D(3)])
levels = st.lists(st.tuples(prices, sizes), max_size=8).map(tuple)
books = st.builds(
    lambda s, b, a: Book(product=P, ts_event=1, ts_ingest=1, snapshot=s, bids=b, asks=a),
    st.booleans(),
    levels,
    levels,
)
actions = st.one_of(books, st.sampled_from(["gap", "resync"]))


@given(st.lists(actions, max_size=60))
def test_book_matches_naive_model(steps: list[Book | str]) -> None:
    book = OrderBook(P)
    model_bids: dict[Decimal, Decimal] = {}
    model_asks: dict[Decimal, Decimal] = {}
    live = False
    for step in steps:
        if step == "gap":
            book.mark_gap()
            live = False
            continue
        if step == "resync":
            book.start_resync()
            live = False
            continue
        assert isinstance(step, Book)
        new_bids = {} if step.snapshot else dict(model_bids)
        new_asks = {} if step.snapshot else dict(model_asks)
        for p, s in step.bids:
            new_bids[p] = s
        for p, s in step.asks:
            new_asks[p] = s
        new_bids = {p: s for p, s in new_bids.items() if s}
        new_asks = {p: s for p, s in new_asks.items() if s}
        crossed = bool(new_bids and new_asks and max(new_bids) >= min(new_asks))
        if not step.snapshot and not live:
            with pytest.raises(NoBaseSnapshot):
                book.apply(step)
        elif crossed:
            assert book.would_cross(step)
            with pytest.raises(CrossedBook):
                book.apply(step)
        else:
            assert not book.would_cross(step)
            book.apply(step)
            model_bids, model_asks, live = new_bids, new_asks, True
        assert book.bids() == sorted(model_bids.items(), reverse=True)
        assert book.asks() == sorted(model_asks.items())
        assert not book.is_crossed()
        assert all(s > 0 for _, s in book.bids() + book.asks())
        assert (book.state is BookState.LIVE) == live
