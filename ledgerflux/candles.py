"""One-minute OHLCV candles built from trades, sans-IO.

A candle is the summary of the trades of one product whose ``ts_event`` (exchange time)
falls in one UTC minute ``[start, start + 60 s)``: open, high, low, close, volume (the sum
of sizes), trade count. Prices and volumes are exact :class:`~decimal.Decimal` values:
sums are computed in a context that raises :class:`decimal.Inexact` rather than round.

*Open* and *close* are the prices of the first and last trade of the minute in the order
``(ts_event, epoch, seq)``: exchange time first, then the public sequence (epochs sort by
time, so the key is total and the same in Python and in PostgreSQL with ``COLLATE "C"``).
Because of that key, :func:`merge` is commutative and associative: a candle built
incrementally, batch after batch and in any order, is exactly the candle built from all its
trades at once (which is how :mod:`ledgerflux.store` rebuilds them from history, and what
the tests compare).

Three users: the store folds each committed batch's trades into partial candles and merges
them into its rows; the gateway keeps the live ones (:class:`LiveCandles`) for its
``candles`` channel; the CLI and the HTTP API print stored ones (:func:`candle_json`).
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Final

import attrs

from ledgerflux.events import Trade

__all__ = [
    "INTERVAL_NS",
    "Candle",
    "LiveCandles",
    "candle_json",
    "candle_of",
    "fold",
    "merge",
    "minute_of",
    "parse_time",
]

INTERVAL_NS: Final = 60 * 1_000_000_000
"""A candle's length: one minute, in ns."""
LIVE_MINUTES_KEPT: Final = 5
"""Closed minutes the gateway keeps per product, so that a late trade (an exchange
timestamp of a minute already closed) revises that candle instead of being lost."""

_EXACT: Final = decimal.Context(prec=200, traps=[decimal.Inexact, decimal.InvalidOperation])
"""Volume sums never round: a sum that would need more than 200 digits raises."""

OrderKey = tuple[int, str, int]
"""``(ts_event, epoch, seq)``: the order in which a minute's trades open and close it."""


@attrs.frozen(slots=True)
class Candle:
    product: str
    start: int
    """First ns of the minute (UTC), a multiple of :data:`INTERVAL_NS`."""
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int
    first: OrderKey
    """Order key of the opening trade."""
    last: OrderKey
    """Order key of the closing trade."""
    stream_seq: int = 0
    """Highest LF_MD stream position of a trade folded in (0 when unknown): a consumer
    that starts from a stored candle skips the trades at or below it."""

    @property
    def end(self) -> int:
        return self.start + INTERVAL_NS


def minute_of(ts_ns: int) -> int:
    """The first ns of the UTC minute holding ``ts_ns`` (floor, also before 1970)."""
    return ts_ns - ts_ns % INTERVAL_NS


def candle_of(trade: Trade, stream_seq: int | None = None) -> Candle:
    """The candle of one trade."""
    key = (trade.ts_event, trade.epoch, trade.seq)
    return Candle(
        product=trade.product,
        start=minute_of(trade.ts_event),
        open=trade.price,
        high=trade.price,
        low=trade.price,
        close=trade.price,
        volume=trade.size,
        trades=1,
        first=key,
        last=key,
        stream_seq=stream_seq or 0,
    )


def merge(a: Candle, b: Candle) -> Candle:
    """The candle of the trades of ``a`` and ``b`` together (same product and minute)."""
    if (a.product, a.start) != (b.product, b.start):
        raise ValueError(f"cannot merge candles of {a.product}@{a.start} and {b.product}@{b.start}")
    first = a if a.first <= b.first else b
    last = a if a.last >= b.last else b
    return Candle(
        product=a.product,
        start=a.start,
        open=first.open,
        high=max(a.high, b.high),
        low=min(a.low, b.low),
        close=last.close,
        volume=_EXACT.add(a.volume, b.volume),
        trades=a.trades + b.trades,
        first=first.first,
        last=last.last,
        stream_seq=max(a.stream_seq, b.stream_seq),
    )


def fold(trades: Iterable[tuple[Trade, int | None]]) -> dict[tuple[str, int], Candle]:
    """``(trade, stream_seq)`` pairs → their candles, keyed by ``(product, start)``."""
    out: dict[tuple[str, int], Candle] = {}
    for trade, stream_seq in trades:
        one = candle_of(trade, stream_seq)
        key = (one.product, one.start)
        known = out.get(key)
        out[key] = one if known is None else merge(known, one)
    return out


def candle_json(candle: Candle, *, closed: bool) -> dict[str, Any]:
    """The wire form (the gateway's ``candle`` message, ``/api/candles``, the CLI): prices
    and volume as exact decimal strings, ``start``/``end`` in ns since the Unix epoch."""
    return {
        "type": "candle",
        "product": candle.product,
        "start": candle.start,
        "end": candle.end,
        "open": str(candle.open),
        "high": str(candle.high),
        "low": str(candle.low),
        "close": str(candle.close),
        "volume": str(candle.volume),
        "trades": candle.trades,
        "closed": closed,
    }


def parse_time(text: str) -> int:
    """A time given by a user → ns since the Unix epoch: RFC 3339 / ISO 8601
    (``2026-12-01T23:00:00Z``; no zone means UTC) or a number of seconds since the epoch.
    Raises :class:`ValueError` with what was wrong."""
    text = text.strip()
    try:
        seconds = Decimal(text)
    except decimal.InvalidOperation:
        pass
    else:
        if not seconds.is_finite():
            raise ValueError(f"not a time: {text!r}")
        return int(seconds * 1_000_000_000)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (expected e.g. 2026-12-01T23:00:00Z or unix seconds)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


@attrs.define
class _Series:
    open: Candle | None = None
    closed: dict[int, Candle] = attrs.field(factory=dict)
    """The last :data:`LIVE_MINUTES_KEPT` closed minutes, by start."""


class LiveCandles:
    """The gateway's live candles: per product the open minute and a few closed ones.

    :meth:`add` folds one trade in and says what subscribers are sent, in order: when the
    trade opens a later minute, the previous candle closed, then the new open one; a trade
    of the open minute, the updated open candle; a late trade of a kept closed minute, that
    candle revised (still closed). A trade older than every kept minute changes nothing
    here (the store still counts it). :meth:`close_due` closes a minute that ended while no
    trade came (the caller's clock).
    """

    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}
        self.late_dropped = 0
        """Trades older than every kept minute (not shown live)."""

    def seed(self, candle: Candle, *, closed: bool = False) -> None:
        """Start from a stored candle (its trades up to ``candle.stream_seq`` are in it)."""
        series = self._series.setdefault(candle.product, _Series())
        if closed:
            series.closed[candle.start] = candle
            self._trim(series)
        elif series.open is None or candle.start >= series.open.start:
            series.open = candle

    def open_candle(self, product: str) -> Candle | None:
        series = self._series.get(product)
        return series.open if series is not None else None

    def add(self, trade: Trade, stream_seq: int | None = None) -> list[tuple[Candle, bool]]:
        """Fold ``trade`` in; return ``(candle, closed)`` messages for subscribers."""
        one = candle_of(trade, stream_seq)
        series = self._series.setdefault(trade.product, _Series())
        current = series.open
        if current is not None and one.start == current.start:
            if _already_in(current, stream_seq):
                return []
            series.open = merge(current, one)
            return [(series.open, False)]
        known = series.closed.get(one.start)
        if known is not None:
            if _already_in(known, stream_seq):
                return []
            series.closed[one.start] = revised = merge(known, one)
            return [(revised, True)]
        newest = max(series.closed, default=None)
        if (current is None or one.start > current.start) and (
            newest is None or one.start > newest
        ):
            out: list[tuple[Candle, bool]] = []
            if current is not None:
                series.closed[current.start] = current
                self._trim(series)
                out.append((current, True))
            series.open = one
            out.append((one, False))
            return out
        self.late_dropped += 1
        return []

    def close_due(self, now_ns: int, grace_ns: int) -> list[Candle]:
        """Close every open candle whose minute ended more than ``grace_ns`` before
        ``now_ns``; return them."""
        out = []
        for series in self._series.values():
            current = series.open
            if current is not None and current.end + grace_ns <= now_ns:
                series.closed[current.start] = current
                series.open = None
                self._trim(series)
                out.append(current)
        return out

    @staticmethod
    def _trim(series: _Series) -> None:
        while len(series.closed) > LIVE_MINUTES_KEPT:
            del series.closed[min(series.closed)]


def _already_in(candle: Candle, stream_seq: int | None) -> bool:
    # Positions are only known for trades read from LF_MD; a seeded candle reflects every
    # trade of its product up to its stream_seq.
    return stream_seq is not None and stream_seq <= candle.stream_seq
