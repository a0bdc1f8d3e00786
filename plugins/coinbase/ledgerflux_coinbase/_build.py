"""Fast constructors for the objects a decoder returns on every frame (internal).

Why. The canonical events and :class:`~ledgerflux.plugin.Decoded` are frozen, slotted attrs
classes. Their generated ``__init__`` stores every field through ``object.__setattr__``
(the frozen class overrides ``__setattr__``) and parses keyword arguments: building the
``Book`` and the ``Decoded`` of one ``l2update`` cost about three times as much as
``orjson.loads`` of the frame. The builders here make the *same* objects (same class, every
slot set, equal and hashing alike) by creating the instance with ``object.__new__`` and
storing each field through its slot descriptor, which is about half the cost.

Exactness. This skips ``__init__``, so it is only right while ``__init__`` does nothing but
store its arguments. :func:`_plain` checks that at import (field names and order, no
validator, converter, factory default or ``__attrs_post_init__``); if a class ever changes,
the builders fall back to the real constructor, slower but still exact.
``tests/unit/coinbase/test_coinbase_fastpaths.py`` pins builder == constructor.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs

from ledgerflux._slots import new_instance, plain_init, slot_setter
from ledgerflux.events import Book, PriceLevel, Quote, Side, Ticker, Trade
from ledgerflux.plugin import Decoded, SeqMark

__all__ = [
    "EMPTY",
    "FAST",
    "new_book",
    "new_decoded",
    "new_mark",
    "new_quote",
    "new_ticker",
    "new_trade",
]

EMPTY: tuple[Any, ...] = ()
"""The one empty tuple (``()`` is a singleton in CPython; named so intent is visible)."""

_BASE = ("product", "seq", "epoch", "src_seq", "ts_event", "ts_ingest")
_LAYOUT: dict[type, tuple[str, ...]] = {
    Book: (*_BASE, "snapshot", "bids", "asks", "part", "parts"),
    Trade: (*_BASE, "price", "size", "side", "trade_id"),
    Quote: (*_BASE, "bid_price", "bid_size", "ask_price", "ask_size"),
    Ticker: (
        *_BASE,
        *("price", "open_24h", "high_24h", "low_24h", "volume_24h", "best_bid", "best_ask"),
    ),
    Decoded: (
        *("events", "errors", "marks", "heartbeat", "subscribed", "snapshot_products"),
        "checksums",
    ),
    SeqMark: ("key", "value", "carries_state", "first"),
}


# Defaults the builders write themselves instead of taking an argument.
_FIXED_DEFAULTS: dict[str, object] = {
    "seq": 0,
    "epoch": "",
    "part": 0,
    "parts": 1,
    "errors": (),
    "subscribed": None,
    "checksums": (),
    "first": None,
}


def _plain(cls: type, names: tuple[str, ...]) -> bool:
    """True when ``cls.__init__`` only stores ``names`` (in this order) in slots, with the
    defaults the builders write themselves."""
    if not plain_init(cls):
        return False
    fields = attrs.fields(cls)
    return tuple(f.name for f in fields) == names and all(
        f.name not in _FIXED_DEFAULTS or f.default == _FIXED_DEFAULTS[f.name] for f in fields
    )


FAST = all(_plain(cls, names) for cls, names in _LAYOUT.items())
"""Whether the slot-descriptor builders are in use (else the real constructors are)."""


_setter = slot_setter
_new = new_instance

# Shared by every event class: the slots live on the common base.
_product = _setter(Book, "product")
_seq = _setter(Book, "seq")
_epoch = _setter(Book, "epoch")
_src_seq = _setter(Book, "src_seq")
_ts_event = _setter(Book, "ts_event")
_ts_ingest = _setter(Book, "ts_ingest")
_snapshot, _bids, _asks, _part, _parts = (
    _setter(Book, n) for n in ("snapshot", "bids", "asks", "part", "parts")
)
_t_price, _t_size, _t_side, _t_trade_id = (
    _setter(Trade, n) for n in ("price", "size", "side", "trade_id")
)
_q_bid_price, _q_bid_size, _q_ask_price, _q_ask_size = (
    _setter(Quote, n) for n in ("bid_price", "bid_size", "ask_price", "ask_size")
)
_k_price, _k_open, _k_high, _k_low, _k_volume, _k_bid, _k_ask = (
    _setter(Ticker, n) for n in _LAYOUT[Ticker][6:]
)
_d_events, _d_errors, _d_marks, _d_heartbeat, _d_subscribed, _d_snapshots, _d_checksums = (
    _setter(Decoded, n) for n in _LAYOUT[Decoded]
)
_m_key, _m_value, _m_carries, _m_first = (_setter(SeqMark, n) for n in _LAYOUT[SeqMark])


def _fast_book(
    product: str,
    src_seq: int | None,
    ts_event: int,
    ts_ingest: int,
    snapshot: bool,
    bids: tuple[PriceLevel, ...],
    asks: tuple[PriceLevel, ...],
) -> Book:
    book: Book = _new(Book)
    _product(book, product)
    _seq(book, 0)
    _epoch(book, "")
    _src_seq(book, src_seq)
    _ts_event(book, ts_event)
    _ts_ingest(book, ts_ingest)
    _snapshot(book, snapshot)
    _bids(book, bids)
    _asks(book, asks)
    _part(book, 0)  # decoders make whole books: parts are made on the way to the bus
    _parts(book, 1)
    return book


def _fast_trade(
    product: str,
    src_seq: int | None,
    ts_event: int,
    ts_ingest: int,
    price: Decimal,
    size: Decimal,
    side: Side,
    trade_id: str | None,
) -> Trade:
    trade: Trade = _new(Trade)
    _product(trade, product)
    _seq(trade, 0)
    _epoch(trade, "")
    _src_seq(trade, src_seq)
    _ts_event(trade, ts_event)
    _ts_ingest(trade, ts_ingest)
    _t_price(trade, price)
    _t_size(trade, size)
    _t_side(trade, side)
    _t_trade_id(trade, trade_id)
    return trade


def _fast_quote(
    product: str,
    src_seq: int | None,
    ts_event: int,
    ts_ingest: int,
    bid_price: Decimal | None,
    bid_size: Decimal | None,
    ask_price: Decimal | None,
    ask_size: Decimal | None,
) -> Quote:
    quote: Quote = _new(Quote)
    _product(quote, product)
    _seq(quote, 0)
    _epoch(quote, "")
    _src_seq(quote, src_seq)
    _ts_event(quote, ts_event)
    _ts_ingest(quote, ts_ingest)
    _q_bid_price(quote, bid_price)
    _q_bid_size(quote, bid_size)
    _q_ask_price(quote, ask_price)
    _q_ask_size(quote, ask_size)
    return quote


def _fast_ticker(
    product: str,
    src_seq: int | None,
    ts_event: int,
    ts_ingest: int,
    price: Decimal,
    open_24h: Decimal | None,
    high_24h: Decimal | None,
    low_24h: Decimal | None,
    volume_24h: Decimal | None,
    best_bid: Decimal | None,
    best_ask: Decimal | None,
) -> Ticker:
    ticker: Ticker = _new(Ticker)
    _product(ticker, product)
    _seq(ticker, 0)
    _epoch(ticker, "")
    _src_seq(ticker, src_seq)
    _ts_event(ticker, ts_event)
    _ts_ingest(ticker, ts_ingest)
    _k_price(ticker, price)
    _k_open(ticker, open_24h)
    _k_high(ticker, high_24h)
    _k_low(ticker, low_24h)
    _k_volume(ticker, volume_24h)
    _k_bid(ticker, best_bid)
    _k_ask(ticker, best_ask)
    return ticker


def _fast_decoded(
    events: tuple[Any, ...],
    marks: tuple[SeqMark, ...] = EMPTY,
    heartbeat: bool = False,
    snapshot_products: tuple[str, ...] = EMPTY,
) -> Decoded:
    """A successful :class:`Decoded` (no errors, not a subscriptions reply)."""
    decoded: Decoded = _new(Decoded)
    _d_events(decoded, events)
    _d_errors(decoded, EMPTY)
    _d_marks(decoded, marks)
    _d_heartbeat(decoded, heartbeat)
    _d_subscribed(decoded, None)
    _d_snapshots(decoded, snapshot_products)
    _d_checksums(decoded, ())
    return decoded


def _fast_mark(key: str | None, value: int, carries_state: bool = True) -> SeqMark:
    mark: SeqMark = _new(SeqMark)
    _m_key(mark, key)
    _m_value(mark, value)
    _m_carries(mark, carries_state)
    _m_first(mark, None)
    return mark


# The real constructors, used when FAST is False.


def _slow_book(
    product: str,
    src_seq: int | None,
    ts_event: int,
    ts_ingest: int,
    snapshot: bool,
    bids: tuple[PriceLevel, ...],
    asks: tuple[PriceLevel, ...],
) -> Book:
    return Book(
        product=product,
        src_seq=src_seq,
        ts_event=ts_event,
        ts_ingest=ts_ingest,
        snapshot=snapshot,
        bids=bids,
        asks=asks,
    )


def _slow_trade(
    product: str,
    src_seq: int | None,
    ts_event: int,
    ts_ingest: int,
    price: Decimal,
    size: Decimal,
    side: Side,
    trade_id: str | None,
) -> Trade:
    return Trade(
        product=product,
        src_seq=src_seq,
        ts_event=ts_event,
        ts_ingest=ts_ingest,
        price=price,
        size=size,
        side=side,
        trade_id=trade_id,
    )


def _slow_quote(
    product: str,
    src_seq: int | None,
    ts_event: int,
    ts_ingest: int,
    bid_price: Decimal | None,
    bid_size: Decimal | None,
    ask_price: Decimal | None,
    ask_size: Decimal | None,
) -> Quote:
    return Quote(
        product=product,
        src_seq=src_seq,
        ts_event=ts_event,
        ts_ingest=ts_ingest,
        bid_price=bid_price,
        bid_size=bid_size,
        ask_price=ask_price,
        ask_size=ask_size,
    )


def _slow_ticker(
    product: str,
    src_seq: int | None,
    ts_event: int,
    ts_ingest: int,
    price: Decimal,
    open_24h: Decimal | None,
    high_24h: Decimal | None,
    low_24h: Decimal | None,
    volume_24h: Decimal | None,
    best_bid: Decimal | None,
    best_ask: Decimal | None,
) -> Ticker:
    return Ticker(
        product=product,
        src_seq=src_seq,
        ts_event=ts_event,
        ts_ingest=ts_ingest,
        price=price,
        open_24h=open_24h,
        high_24h=high_24h,
        low_24h=low_24h,
        volume_24h=volume_24h,
        best_bid=best_bid,
        best_ask=best_ask,
    )


def _slow_decoded(
    events: tuple[Any, ...],
    marks: tuple[SeqMark, ...] = EMPTY,
    heartbeat: bool = False,
    snapshot_products: tuple[str, ...] = EMPTY,
) -> Decoded:
    return Decoded(
        events=events, marks=marks, heartbeat=heartbeat, snapshot_products=snapshot_products
    )


def _slow_mark(key: str | None, value: int, carries_state: bool = True) -> SeqMark:
    return SeqMark(key, value, carries_state)


new_book = _fast_book if FAST else _slow_book
new_trade = _fast_trade if FAST else _slow_trade
new_quote = _fast_quote if FAST else _slow_quote
new_ticker = _fast_ticker if FAST else _slow_ticker
new_decoded = _fast_decoded if FAST else _slow_decoded
new_mark = _fast_mark if FAST else _slow_mark
