"""Sans-IO L2 order book: everything that changes a book's state lives in this file.

The book is a small state machine. Its transitions, one row per (state, input)::

    state       snapshot   delta           gap        resync
    ---------   --------   -------------   --------   ---------
    EMPTY       LIVE       NoBaseSnapshot  EMPTY      RESYNCING
    LIVE        LIVE       LIVE            GAPPED     RESYNCING
    GAPPED      LIVE       NoBaseSnapshot  GAPPED     RESYNCING
    RESYNCING   LIVE       NoBaseSnapshot  RESYNCING  RESYNCING

* A snapshot replaces both sides, from any state.
* A delta applies only to a LIVE book: after a gap or during a resync the levels are
  known to be incomplete, so a change cannot be applied to them.
* A change that would leave the book crossed (best bid >= best ask) raises
  :class:`CrossedBook` and leaves the book exactly as it was (checked before mutating).
* Levels are kept after a gap so that a reader can still see the last known picture; the
  state says that it is not current.

Storage: one ``dict`` price → size per side for O(1) updates, plus a sorted list of
prices per side kept in order incrementally with :mod:`bisect` (O(log n) search, a
memmove on insert/remove: cheap for the hundreds of levels of an L2 book).
"""

from __future__ import annotations

import enum
from bisect import bisect_left, insort
from collections.abc import Iterable
from decimal import Decimal
from typing import Literal

from ledgerflux.events import Book, PriceLevel

__all__ = ["BookError", "BookState", "CrossedBook", "NoBaseSnapshot", "OrderBook"]

_ZERO = Decimal(0)


class BookState(enum.Enum):
    EMPTY = "empty"
    """No snapshot seen yet (or the book was reset)."""
    LIVE = "live"
    """Built from a snapshot plus every change since: the current picture."""
    GAPPED = "gapped"
    """Changes were lost; deltas are refused until the next snapshot."""
    RESYNCING = "resyncing"
    """A resync is in progress; deltas are refused until its snapshot."""


class _Input(enum.Enum):
    SNAPSHOT = "snapshot"
    DELTA = "delta"
    GAP = "gap"
    RESYNC = "resync"


_S = BookState
_I = _Input
_TRANSITIONS: dict[tuple[BookState, _Input], BookState] = {
    (_S.EMPTY, _I.SNAPSHOT): _S.LIVE,
    (_S.EMPTY, _I.GAP): _S.EMPTY,
    (_S.EMPTY, _I.RESYNC): _S.RESYNCING,
    (_S.LIVE, _I.SNAPSHOT): _S.LIVE,
    (_S.LIVE, _I.DELTA): _S.LIVE,
    (_S.LIVE, _I.GAP): _S.GAPPED,
    (_S.LIVE, _I.RESYNC): _S.RESYNCING,
    (_S.GAPPED, _I.SNAPSHOT): _S.LIVE,
    (_S.GAPPED, _I.GAP): _S.GAPPED,
    (_S.GAPPED, _I.RESYNC): _S.RESYNCING,
    (_S.RESYNCING, _I.SNAPSHOT): _S.LIVE,
    (_S.RESYNCING, _I.GAP): _S.RESYNCING,
    (_S.RESYNCING, _I.RESYNC): _S.RESYNCING,
}
"""The table above. A missing (state, DELTA) row means :class:`NoBaseSnapshot`."""


class BookError(Exception):
    """A book change that cannot be applied; the book is left unchanged."""


class NoBaseSnapshot(BookError):
    """A delta arrived while the book is not LIVE (no snapshot, after a gap, resyncing)."""


class CrossedBook(BookError):
    """Applying the change would leave best bid >= best ask."""


class _Side:
    """One side of the book: price → size, plus the prices in ascending order."""

    __slots__ = ("levels", "prices")

    def __init__(self) -> None:
        self.levels: dict[Decimal, Decimal] = {}
        self.prices: list[Decimal] = []

    def replace(self, levels: Iterable[PriceLevel]) -> None:
        # Later entries for the same price win, as they would applied one by one.
        latest = dict(levels)
        self.levels = {price: size for price, size in latest.items() if size != _ZERO}
        self.prices = sorted(self.levels)

    def set(self, price: Decimal, size: Decimal) -> None:
        if size == _ZERO:
            if self.levels.pop(price, None) is not None:
                del self.prices[bisect_left(self.prices, price)]
        else:
            if price not in self.levels:
                insort(self.prices, price)
            self.levels[price] = size


class OrderBook:
    """L2 book for one product. Sans-IO: plain method calls, no awaits."""

    def __init__(self, product: str) -> None:
        self.product = product
        self.state = BookState.EMPTY
        self._bids = _Side()
        self._asks = _Side()

    def __repr__(self) -> str:
        return (
            f"<OrderBook {self.product} {self.state.name} "
            f"bids={len(self._bids.prices)} asks={len(self._asks.prices)}>"
        )

    # -- transitions -------------------------------------------------------------------

    def _step(self, event: _Input) -> BookState:
        next_state = _TRANSITIONS.get((self.state, event))
        if next_state is None:
            raise NoBaseSnapshot(f"{self.product}: delta while the book is {self.state.name}")
        return next_state

    def apply(self, book: Book) -> None:
        """Apply a snapshot (replace, from any state) or a delta (LIVE only).

        Raises :class:`NoBaseSnapshot` or :class:`CrossedBook`; on either the book (levels
        and state) is unchanged.
        """
        next_state = self._step(_Input.SNAPSHOT if book.snapshot else _Input.DELTA)
        if self.would_cross(book):
            raise CrossedBook(f"{self.product}: change would cross the book")
        if book.snapshot:
            self._bids.replace(book.bids)
            self._asks.replace(book.asks)
        else:
            for price, size in book.bids:
                self._bids.set(price, size)
            for price, size in book.asks:
                self._asks.set(price, size)
        self.state = next_state

    def would_cross(self, book: Book) -> bool:
        """Whether applying ``book`` would leave best bid >= best ask (no mutation)."""
        if book.snapshot:
            bid = max((p for p, s in dict(book.bids).items() if s != _ZERO), default=None)
            ask = min((p for p, s in dict(book.asks).items() if s != _ZERO), default=None)
        else:
            bid = _best_after(self._bids, book.bids, highest=True)
            ask = _best_after(self._asks, book.asks, highest=False)
        return bid is not None and ask is not None and bid >= ask

    def mark_gap(self) -> None:
        """Changes were lost: refuse deltas until the next snapshot."""
        self.state = _TRANSITIONS[(self.state, _Input.GAP)]

    def start_resync(self) -> None:
        """A resync started: refuse deltas until its snapshot."""
        self.state = _TRANSITIONS[(self.state, _Input.RESYNC)]

    def reset(self) -> None:
        """Forget everything (a new epoch): back to EMPTY."""
        self.state = BookState.EMPTY
        self._bids = _Side()
        self._asks = _Side()

    def depth(self) -> tuple[int, int]:
        """How many levels each side holds: ``(bids, asks)``."""
        return len(self._bids.prices), len(self._asks.prices)

    def truncate(self, depth: int) -> None:
        """Keep only the best ``depth`` levels of each side: what an exchange's book of
        that subscribed depth holds (it sends no delete for a level pushed out of it)."""
        bids, asks = self._bids, self._asks
        for price in bids.prices[: max(0, len(bids.prices) - depth)]:
            del bids.levels[price]
        del bids.prices[: max(0, len(bids.prices) - depth)]
        for price in asks.prices[depth:]:
            del asks.levels[price]
        del asks.prices[depth:]

    # -- reading -----------------------------------------------------------------------

    def bids(self, depth: int | None = None) -> list[tuple[Decimal, Decimal]]:
        """Bid levels, best (highest price) first."""
        prices = self._bids.prices
        count = len(prices) if depth is None else min(depth, len(prices))
        return [(p, self._bids.levels[p]) for p in prices[len(prices) - count :][::-1]]

    def asks(self, depth: int | None = None) -> list[tuple[Decimal, Decimal]]:
        """Ask levels, best (lowest price) first."""
        prices = self._asks.prices if depth is None else self._asks.prices[:depth]
        return [(p, self._asks.levels[p]) for p in prices]

    def level_count(self, side: Literal["bid", "ask"]) -> int:
        """How many price levels one side holds."""
        return len((self._bids if side == "bid" else self._asks).prices)

    def best_bid(self) -> tuple[Decimal, Decimal] | None:
        if not self._bids.prices:
            return None
        price = self._bids.prices[-1]
        return price, self._bids.levels[price]

    def best_ask(self) -> tuple[Decimal, Decimal] | None:
        if not self._asks.prices:
            return None
        price = self._asks.prices[0]
        return price, self._asks.levels[price]

    def is_crossed(self) -> bool:
        bid, ask = self.best_bid(), self.best_ask()
        return bid is not None and ask is not None and bid[0] >= ask[0]

    def to_snapshot(self, *, ts_event: int, ts_ingest: int) -> Book:
        """The whole book as a snapshot event (seq/epoch unassigned)."""
        return Book(
            product=self.product,
            ts_event=ts_event,
            ts_ingest=ts_ingest,
            snapshot=True,
            bids=tuple(self.bids()),
            asks=tuple(self.asks()),
        )


def _best_after(side: _Side, changes: tuple[PriceLevel, ...], *, highest: bool) -> Decimal | None:
    """Best price of ``side`` if ``changes`` were applied, without applying them.

    Only the changed prices and the current best levels matter, so this walks the sorted
    prices from the best end, skipping the ones the changes remove.
    """
    if not changes:
        if not side.prices:
            return None
        return side.prices[-1] if highest else side.prices[0]
    updated = dict(changes)
    added = [p for p, s in updated.items() if s != _ZERO]
    best_added = (max(added) if highest else min(added)) if added else None
    best_kept: Decimal | None = None
    walk = reversed(side.prices) if highest else iter(side.prices)
    for price in walk:
        if updated.get(price, side.levels[price]) != _ZERO:
            best_kept = price
            break
    if best_added is None:
        return best_kept
    if best_kept is None:
        return best_added
    return max(best_added, best_kept) if highest else min(best_added, best_kept)
