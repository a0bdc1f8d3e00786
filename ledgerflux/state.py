"""The latest state of one product: sequence position, L2 book, BBO, last trade, ticker,
last status. Sans-IO.

The normalizer, the snapshotter and the gateway each keep one :class:`ProductState` per
product and feed it the same sequenced events, so they agree on what the state at a given
``(epoch, seq)`` is. :meth:`ProductState.to_json` is the form stored in PostgreSQL (JSONB)
and sent to clients as a snapshot; :meth:`ProductState.from_json` reads it back exactly.

Sequencing: an event is applied only if it is the next one (``seq == self.seq + 1`` in the
same epoch) or it opens a new epoch (any ``seq``: a consumer that starts after retention
dropped the beginning of an epoch picks it up where it is). A new epoch starts with an
EMPTY book: the previous seq space's book says nothing about the new one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

import attrs

from ledgerflux import codec
from ledgerflux.book import BookError, BookState, OrderBook
from ledgerflux.events import Book, Event, Quote, Status, Ticker, Trade

__all__ = ["ProductState", "SequenceError", "StateError", "TopOfBook"]

_T = TypeVar("_T")
_E = TypeVar("_E", Trade, Ticker, Status)


class StateError(ValueError):
    """A state document or an event that does not fit this product's state."""


class SequenceError(StateError):
    """The event is not the next one in this product's sequence."""


@attrs.frozen(slots=True)
class TopOfBook:
    """Best bid and offer with sizes; an empty side is ``None``."""

    bid_price: Decimal | None
    bid_size: Decimal | None
    ask_price: Decimal | None
    ask_size: Decimal | None


class ProductState:
    """Everything a new subscriber needs about one product, as of ``(epoch, seq)``."""

    def __init__(self, product: str) -> None:
        self.product = product
        self.epoch = ""
        self.seq = 0
        self.ts_event = 0
        self.book = OrderBook(product)
        self.quote: TopOfBook | None = None
        self.trade: Trade | None = None
        self.ticker: Ticker | None = None
        self.status: Status | None = None

    def __repr__(self) -> str:
        return f"<ProductState {self.product} epoch={self.epoch!r} seq={self.seq} {self.book!r}>"

    def follows(self, event: Event) -> bool:
        """Whether ``event`` is the next one: ``seq + 1`` in this epoch, or a new epoch."""
        if event.epoch != self.epoch:
            return event.seq >= 1
        return event.seq == self.seq + 1

    def apply(self, event: Event, *, strict_book: bool = True) -> None:
        """Apply the next sequenced event.

        Raises :class:`SequenceError` if the event does not follow, and (with
        ``strict_book``) :class:`~ledgerflux.book.BookError` if a book change cannot be
        applied; in both cases nothing changes. With ``strict_book=False`` (consumers of
        LF_MD, where the event is already public) a book change that cannot be applied
        marks the book GAPPED instead, and the event still advances the sequence.
        """
        if event.product != self.product:
            raise StateError(f"event for {event.product} applied to {self.product}")
        if not self.follows(event):
            raise SequenceError(
                f"{self.product}: expected seq {self.seq + 1} in epoch {self.epoch!r}, "
                f"got {event.seq} in epoch {event.epoch!r}"
            )
        new_epoch = event.epoch != self.epoch
        if isinstance(event, Book):
            # Apply to a fresh book first on a new epoch so a refused change leaves the
            # old state untouched.
            book = OrderBook(self.product) if new_epoch else self.book
            try:
                book.apply(event)
            except BookError:
                if strict_book:
                    raise
                book.mark_gap()
            self.book = book
            self.quote = _top_of_book(book)
        else:
            if new_epoch:
                self.book = OrderBook(self.product)
                self.quote = None
            if isinstance(event, Quote):
                self.quote = TopOfBook(
                    event.bid_price, event.bid_size, event.ask_price, event.ask_size
                )
            elif isinstance(event, Trade):
                self.trade = event
            elif isinstance(event, Ticker):
                self.ticker = event
            else:
                self.status = event
                if event.status == "gap":
                    self.book.mark_gap()
                elif event.status == "resync":
                    self.book.start_resync()
                elif event.status == "reset":
                    self.book.reset()
                    self.quote = None
        self.epoch = event.epoch
        self.seq = event.seq
        self.ts_event = event.ts_event

    def copy(self) -> ProductState:
        """An independent copy (the normalizer keeps one to roll back a failed publish)."""
        other = ProductState(self.product)
        other.epoch, other.seq, other.ts_event = self.epoch, self.seq, self.ts_event
        other.book = OrderBook(self.product)
        other.book.apply(self.book.to_snapshot(ts_event=0, ts_ingest=0))
        other.book.state = self.book.state
        other.quote, other.trade = self.quote, self.trade
        other.ticker, other.status = self.ticker, self.status
        return other

    # -- JSON form ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The state as plain JSON types; decimals are exact strings, never floats.

        ``book.state`` is the book's :class:`~ledgerflux.book.BookState` value, so that a
        consumer restarted from this document refuses (or accepts) deltas as before.
        """
        quote = self.quote
        return {
            "product": self.product,
            "epoch": self.epoch,
            "seq": self.seq,
            "ts_event": self.ts_event,
            "book": {
                "state": self.book.state.value,
                "bids": [[str(p), str(s)] for p, s in self.book.bids()],
                "asks": [[str(p), str(s)] for p, s in self.book.asks()],
            },
            "quote": None
            if quote is None
            else {
                "bid_price": _dec_str(quote.bid_price),
                "bid_size": _dec_str(quote.bid_size),
                "ask_price": _dec_str(quote.ask_price),
                "ask_size": _dec_str(quote.ask_size),
            },
            "trade": None if self.trade is None else codec.to_wire(self.trade),
            "ticker": None if self.ticker is None else codec.to_wire(self.ticker),
            "status": None if self.status is None else codec.to_wire(self.status),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ProductState:
        """Read back :meth:`to_json`'s output. Raises :class:`StateError` on a bad document."""
        try:
            state = cls(_typed(doc["product"], str))
            state.epoch = _typed(doc["epoch"], str)
            state.seq = _typed(doc["seq"], int)
            state.ts_event = _typed(doc["ts_event"], int)
            book = doc["book"]
            bids = tuple((Decimal(p), Decimal(s)) for p, s in book["bids"])
            asks = tuple((Decimal(p), Decimal(s)) for p, s in book["asks"])
            state.book.apply(
                Book(
                    product=state.product,
                    ts_event=0,
                    ts_ingest=0,
                    snapshot=True,
                    bids=bids,
                    asks=asks,
                )
            )
            default = BookState.LIVE if bids or asks else BookState.EMPTY
            state.book.state = BookState(book.get("state", default.value))
            quote = doc["quote"]
            if quote is not None:
                state.quote = TopOfBook(
                    _dec(quote["bid_price"]),
                    _dec(quote["bid_size"]),
                    _dec(quote["ask_price"]),
                    _dec(quote["ask_size"]),
                )
            state.trade = _event(doc["trade"], Trade)
            state.ticker = _event(doc["ticker"], Ticker)
            state.status = _event(doc["status"], Status)
        except StateError:
            raise
        except (KeyError, TypeError, ValueError, ArithmeticError, BookError) as exc:
            raise StateError(f"bad product state document: {exc!r}") from exc
        return state


def _top_of_book(book: OrderBook) -> TopOfBook:
    bid, ask = book.best_bid(), book.best_ask()
    return TopOfBook(
        None if bid is None else bid[0],
        None if bid is None else bid[1],
        None if ask is None else ask[0],
        None if ask is None else ask[1],
    )


def _dec_str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise StateError(f"decimal must be a string, got {value!r}")
    return Decimal(value)


def _typed(value: Any, kind: type[_T]) -> _T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise StateError(f"expected {kind.__name__}, got {value!r}")
    return value


def _event(value: Any, kind: type[_E]) -> _E | None:
    if value is None:
        return None
    event = codec.from_wire(value)
    if not isinstance(event, kind):
        raise StateError(f"expected a {kind.__name__} event, got {type(event).__name__}")
    return event
