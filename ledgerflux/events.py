"""Canonical market-data events (docs/protocol.md).

Every event is a frozen, slotted attrs class. Prices and sizes are :class:`~decimal.Decimal`
(exact decimal strings on the wire), timestamps are integer nanoseconds since the Unix epoch.

``seq`` and ``epoch`` are assigned by the normalizer. On ``LF_TICKS`` (ingestor → normalizer)
they are still unassigned: ``seq == 0`` and ``epoch == ""``. On ``LF_MD`` and to clients
``seq >= 1`` and ``epoch`` is non-empty.

Conversion to and from the wire form lives in :mod:`ledgerflux.codec`, nowhere else.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Literal, TypeAlias

import attrs

Side: TypeAlias = Literal["buy", "sell"]
"""Taker side of a trade (the side that removed liquidity)."""

StatusKind: TypeAlias = Literal["gap", "resync", "stale", "online", "offline", "reset"]

PriceLevel: TypeAlias = tuple[Decimal, Decimal]
"""One L2 level: ``(price, size)``. A size of 0 in a change removes the level."""


@attrs.frozen(kw_only=True, slots=True)
class _EventBase:
    product: str
    """``<exchange>:<SYMBOL>``, e.g. ``coinbase:BTC-USD``."""
    seq: int = 0
    """Per-product public sequence, contiguous from 1; 0 until the normalizer assigns it."""
    epoch: str = ""
    """Changes whenever the product's ``seq`` space restarts; "" until assigned."""
    src_seq: int | None = None
    """The exchange's own sequence number, where it has one."""
    ts_event: int
    """Exchange time, ns since the Unix epoch."""
    ts_ingest: int
    """Receipt time at the ingestor, ns since the Unix epoch (stamped before decoding)."""

    @property
    def exchange(self) -> str:
        return self.product.partition(":")[0]

    @property
    def symbol(self) -> str:
        return self.product.partition(":")[2]


@attrs.frozen(kw_only=True, slots=True)
class Trade(_EventBase):
    TYPE: ClassVar[str] = "trade"
    price: Decimal
    size: Decimal
    side: Side
    trade_id: str | None = None


@attrs.frozen(kw_only=True, slots=True)
class Quote(_EventBase):
    """Best bid and offer with sizes. A side that is empty is ``None``."""

    TYPE: ClassVar[str] = "quote"
    bid_price: Decimal | None
    bid_size: Decimal | None
    ask_price: Decimal | None
    ask_size: Decimal | None


@attrs.frozen(kw_only=True, slots=True)
class Ticker(_EventBase):
    """Last price and 24-hour statistics. Fields an exchange does not send are ``None``."""

    TYPE: ClassVar[str] = "ticker"
    price: Decimal
    open_24h: Decimal | None = None
    high_24h: Decimal | None = None
    low_24h: Decimal | None = None
    volume_24h: Decimal | None = None
    best_bid: Decimal | None = None
    best_ask: Decimal | None = None


@attrs.frozen(kw_only=True, slots=True)
class Book(_EventBase):
    """L2 book. ``snapshot=True`` replaces the whole book; otherwise ``bids``/``asks`` are
    changes, and a size of 0 removes the level.

    A snapshot too large for one bus message travels as ``parts`` books with ``part`` = 0,
    1, ... ``parts - 1``: the same envelope (product, seq, epoch, src_seq, timestamps) and
    each a slice of the levels, in order (see :mod:`ledgerflux.parts`). A whole book has
    ``part == 0`` and ``parts == 1``; only snapshots have ``parts > 1``."""

    TYPE: ClassVar[str] = "book"
    snapshot: bool
    bids: tuple[PriceLevel, ...] = ()
    asks: tuple[PriceLevel, ...] = ()
    part: int = 0
    """Index of this part, ``0 <= part < parts`` (0 for a whole book)."""
    parts: int = 1
    """How many parts the snapshot travels as (1: a whole book, the usual case)."""


@attrs.frozen(kw_only=True, slots=True)
class Status(_EventBase):
    """Why the stream is not (or is again) a complete picture: ``gap``, ``resync``,
    ``stale``, ``online``, ``offline``, ``reset``."""

    TYPE: ClassVar[str] = "status"
    status: StatusKind
    reason: str = ""


Event: TypeAlias = Trade | Quote | Ticker | Book | Status

EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls for cls in (Trade, Quote, Ticker, Book, Status)
}
"""Wire ``type`` → class."""


def with_sequence(event: Event, *, seq: int, epoch: str) -> Event:
    """The same event stamped with its public ``seq`` and ``epoch`` (normalizer only)."""
    return attrs.evolve(event, seq=seq, epoch=epoch)


def make_product(exchange: str, symbol: str) -> str:
    """``make_product("coinbase", "BTC-USD") == "coinbase:BTC-USD"``."""
    return f"{exchange}:{symbol}"


def parts_problem(book: Book) -> str | None:
    """What is wrong with ``book``'s ``part``/``parts`` fields, or None if they are valid:
    ``parts >= 1``, ``0 <= part < parts``, and only snapshots are ever parted."""
    part, parts = book.part, book.parts
    if parts == 1 and part == 0:
        return None
    if parts < 1:
        return f"parts must be at least 1, got {parts}"
    if not 0 <= part < parts:
        return f"part must be in 0..{parts - 1}, got {part}"
    if not book.snapshot:
        return f"only a snapshot may travel in parts, got a change with parts={parts}"
    return None
