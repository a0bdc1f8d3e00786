"""Sans-IO decoder for Kraken's WebSocket API v2 (``wss://ws.kraken.com/v2``).

Frame shapes are Kraken's documented examples; ``recordings/kraken/kraken-channels.jsonl.gz``
holds one or more of each, and ``tests/unit/kraken`` decodes them into whole events.

Numbers. Kraken v2 sends prices and quantities as JSON *numbers* with their full precision
(``"qty": 0.10000000``). Parsing them as floats would lose digits (and the checksum with
them), so frames are parsed with the standard library's JSON reader and
``parse_float=Decimal``, as Kraken's own guide advises: every price and quantity is the
exact decimal of the frame's text.

* Replies: ``{"method": "subscribe", "success": true, "result": {"channel", "symbol",
  "depth"}}`` → ``Decoded.subscribed`` (and the book depth for that pair); a failed
  subscribe naming a pair (``"error": "Currency pair not supported"``) →
  ``DecodeError("unknown_symbol")`` with an ``offline`` status; other errors →
  ``exchange_error``. ``pong`` replies, ``heartbeat`` and ``status`` frames are heartbeats.
* ``book``: ``snapshot`` → ``Book(snapshot=True)`` and ``snapshot_products``; ``update`` →
  ``Book`` changes (``qty`` 0 removes a level). Kraken does **not** send removals for levels
  pushed out of the subscribed depth by an insert: the decoder truncates its book to the
  depth after every update and adds those removals to the emitted change, so every
  consumer's book matches Kraken's. Then it checks Kraken's CRC32
  (:mod:`ledgerflux_kraken.checksum`) against ``checksum``.
* ``trade``: ``Trade``; Kraken's ``side`` is the taker's side (the aggressor), used as is.
  ``src_seq`` is ``trade_id``.
* ``ticker``: ``Ticker`` (``last``; ``open_24h`` = ``last - change``, Kraken's 24-hour
  change; ``high``, ``low``, ``volume``; best bid/ask) and a ``Quote``.
* ``ohlc`` (1 minute): validated; no event (LedgerFlux builds its own candles from trades).
* ``instrument``: the pairs' ``price_precision``/``qty_precision`` replace the built-in
  table (:data:`ledgerflux_kraken.instruments.PRECISIONS`) for the checksum.

Book integrity. Each push's ``checksum`` goes into ``Decoded.checksums``; the runtime applies
the published book events (truncation removals included) to its copy of the book and
compares it with :func:`ledgerflux_kraken.checksum.kraken_checksum` (the plugin's
``book_checksum``). Prices and quantities are written with the pair's precision (the
instrument channel's, or :data:`~ledgerflux_kraken.instruments.PRECISIONS`) when they
arrive with fewer digits, so the checksum can be computed from the book's own decimals. A
mismatch resubscribes that pair's book on the same connection
(:meth:`ledgerflux_kraken.feed.KrakenFeed.resubscribe_messages`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from ledgerflux.book import BookError, OrderBook
from ledgerflux.events import (
    Book,
    Event,
    PriceLevel,
    Quote,
    Side,
    Status,
    Ticker,
    Trade,
    make_product,
)
from ledgerflux.plugin import BookChecksum, Decoded, DecodeError
from ledgerflux_kraken.instruments import PRECISIONS, canonical_symbol

__all__ = ["DEFAULT_DEPTH", "EXCHANGE", "KrakenDecoder", "loads"]

EXCHANGE = "kraken"
DEFAULT_DEPTH = 10
"""Kraken's book depth when a subscribe names none."""

_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
_ZERO = Decimal(0)


class FieldError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number Kraken sends")


_JSON = json.JSONDecoder(parse_float=Decimal, parse_constant=_no_constants)


def loads(raw: bytes) -> Any:
    """Kraken's JSON with every non-integer number as an exact :class:`Decimal`."""
    return _JSON.decode(raw.decode("utf-8"))


def _invalid(name: str, value: Any, expected: str) -> FieldError:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return FieldError("invalid_field", f"field {name!r}: expected {expected}, got {text}")


def _get(msg: dict[str, Any], name: str) -> Any:
    try:
        return msg[name]
    except KeyError:
        raise FieldError("missing_field", f"missing field {name!r}") from None


def _dec(value: Any, name: str) -> Decimal:
    if type(value) is Decimal:
        if not value.is_finite():
            raise _invalid(name, value, "a finite number")
        return value
    if type(value) is int:
        return Decimal(value)
    raise _invalid(name, value, "a number")


def _num(msg: dict[str, Any], name: str) -> Decimal:
    return _dec(_get(msg, name), name)


def _opt_num(msg: dict[str, Any], name: str) -> Decimal | None:
    value = msg.get(name)
    return None if value is None else _dec(value, name)


def _str(msg: dict[str, Any], name: str) -> str:
    value = _get(msg, name)
    if type(value) is not str or not value:
        raise _invalid(name, value, "a non-empty string")
    return value


def _dict(value: Any, name: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _invalid(name, value, "an object")
    return value


def _list(msg: dict[str, Any], name: str) -> list[Any]:
    value = _get(msg, name)
    if type(value) is not list:
        raise _invalid(name, value, "a list")
    return value


def _int(msg: dict[str, Any], name: str) -> int:
    value = _get(msg, name)
    if type(value) is not int:
        raise _invalid(name, value, "an integer")
    return value


def _time_ns(msg: dict[str, Any], name: str) -> int:
    """RFC 3339 ``2023-09-25T07:49:37.708706Z`` → integer ns, exactly."""
    text = _str(msg, name)
    try:
        return _parse_rfc3339(text)
    except ValueError:
        raise _invalid(name, text, "an RFC 3339 UTC time") from None


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _parse_rfc3339(text: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` → ns since the Unix epoch, exactly."""
    if (
        len(text) < 20
        or text[-1] != "Z"
        or text[4] != "-"
        or text[7] != "-"
        or text[10] != "T"
        or text[13] != ":"
        or text[16] != ":"
    ):
        raise ValueError(text)
    digits = text[0:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19]
    frac = text[20:-1] if text[19] == "." else ""
    if text[19] not in ".Z" or not digits.isdigit() or not digits.isascii():
        raise ValueError(text)
    if len(frac) > 9 or (frac and not (frac.isdigit() and frac.isascii())):
        raise ValueError(text)
    year, month, day = int(digits[0:4]), int(digits[4:6]), int(digits[6:8])
    hour, minute, second = int(digits[8:10]), int(digits[10:12]), int(digits[12:14])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(text)
    seconds = _days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or "0")


def _fixed(value: Decimal, exponent: int) -> Decimal:
    """``value`` written with the pair's precision (same value, Kraken's digits)."""
    if value.as_tuple().exponent == exponent:
        return value
    fixed = value.quantize(Decimal(1).scaleb(exponent))
    # More digits than the pair's precision would be rounded: keep what Kraken sent.
    return fixed if fixed == value else value


def _levels(items: list[Any], name: str, places: tuple[int, int] | None) -> tuple[PriceLevel, ...]:
    out: list[PriceLevel] = []
    for item in items:
        level = _dict(item, name)
        price, qty = _num(level, "price"), _num(level, "qty")
        if places is not None:
            try:
                price, qty = _fixed(price, -places[0]), _fixed(qty, -places[1])
            except ArithmeticError:
                raise _invalid(name, item, "a level within the pair's precision") from None
        out.append((price, qty))
    return tuple(out)


def _product(msg: dict[str, Any]) -> str:
    pair = _str(msg, "symbol")
    symbol = canonical_symbol(pair)
    if symbol is None:
        raise _invalid("symbol", pair, "a BASE/QUOTE pair")
    return make_product(EXCHANGE, symbol)


_Handler = Callable[[dict[str, Any], int, bytes], Decoded]


class KrakenDecoder:
    """Decoder for one Kraken v2 connection (per-connection state: books, depths,
    precisions)."""

    def __init__(self, depth: int = DEFAULT_DEPTH) -> None:
        self.default_depth = depth
        self.books: dict[str, OrderBook] = {}
        """The connection's book per canonical product, truncated to its depth."""
        self.depths: dict[str, int] = {}
        """Subscribed book depth per product (from the subscribe reply)."""
        self.precisions: dict[str, tuple[int, int]] = {
            make_product(EXCHANGE, canonical_symbol(pair) or pair): value
            for pair, value in PRECISIONS.items()
        }
        """(price_precision, qty_precision) per product, for the checksum."""
        self._handlers: dict[str, _Handler] = {
            "book": self._book,
            "trade": self._trade,
            "ticker": self._ticker,
            "ohlc": self._ohlc,
            "instrument": self._instrument,
        }

    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        """One frame received at ``ts_ingest`` (ns). Never raises."""
        raw = frame if isinstance(frame, bytes) else frame.encode("utf-8", "surrogatepass")
        try:
            obj = loads(raw)
        except (ValueError, RecursionError) as exc:
            return Decoded(errors=(DecodeError("malformed_json", str(exc)[:200], raw),))
        if type(obj) is not dict:
            detail = f"expected a JSON object, got {type(obj).__name__}"
            return Decoded(errors=(DecodeError("invalid_field", detail, raw),))
        product: str | None = None
        try:
            if "method" in obj:
                return self._reply(obj, raw, ts_ingest)
            channel = obj.get("channel")
            if channel in ("heartbeat", "status"):
                return Decoded(heartbeat=True)
            handler = self._handlers.get(channel) if type(channel) is str else None
            if handler is None:
                return Decoded(errors=(DecodeError("unknown_type", f"channel {channel!r}", raw),))
            return handler(obj, ts_ingest, raw)
        except FieldError as exc:
            return Decoded(errors=(DecodeError(exc.reason, exc.detail, raw, product),))

    # -- replies ---------------------------------------------------------------------------

    def _reply(self, obj: dict[str, Any], raw: bytes, ts: int) -> Decoded:
        method = obj.get("method")
        if method == "pong":
            return Decoded(heartbeat=True)
        if method not in ("subscribe", "unsubscribe"):
            return Decoded(errors=(DecodeError("unknown_type", f"method {method!r}", raw),))
        if obj.get("success") is True:
            if method == "unsubscribe":
                return Decoded()
            result = _dict(obj.get("result"), "result")
            if "symbol" not in result:
                return Decoded()  # a channel without pairs (instrument)
            product = _product(result)
            if result.get("channel") == "book":
                depth = result.get("depth", self.default_depth)
                self.depths[product] = depth if type(depth) is int else self.default_depth
            return Decoded(subscribed=(product.partition(":")[2],))
        message = obj.get("error")
        detail = f"Kraken {method} failed: {message}"
        pair = obj.get("symbol")
        symbol = canonical_symbol(pair) if type(pair) is str else None
        if symbol is not None:
            product = make_product(EXCHANGE, symbol)
            status = Status(
                product=product,
                ts_event=ts,
                ts_ingest=ts,
                status="offline",
                reason=f"unknown_symbol: {message}",
            )
            error = DecodeError("unknown_symbol", detail, raw, product)
            return Decoded(events=(status,), errors=(error,))
        return Decoded(errors=(DecodeError("exchange_error", detail, raw),))

    # -- book ------------------------------------------------------------------------------

    def _book(self, obj: dict[str, Any], ts: int, raw: bytes) -> Decoded:
        kind = obj.get("type")
        if kind not in ("snapshot", "update"):
            raise _invalid("type", kind, "snapshot/update")
        snapshot = kind == "snapshot"
        events: list[Event] = []
        errors: list[DecodeError] = []
        checksums: list[BookChecksum] = []
        snapshots: list[str] = []
        for item in _list(obj, "data"):
            push = _dict(item, "data")
            product = _product(push)
            places = self.precisions.get(product)
            bids = _levels(_list(push, "bids"), "bids", places)
            asks = _levels(_list(push, "asks"), "asks", places)
            checksum = push.get("checksum")
            if checksum is not None and type(checksum) is not int:
                raise _invalid("checksum", checksum, "an integer")
            ts_event = _time_ns(push, "timestamp") if "timestamp" in push else ts
            local = self.books.get(product)
            if snapshot:
                local = self.books[product] = OrderBook(product)
            elif local is None:
                detail = f"{product}: update before any snapshot"
                errors.append(DecodeError("no_snapshot", detail, raw, product))
                continue
            book = Book(
                product=product,
                ts_event=ts_event,
                ts_ingest=ts,
                snapshot=snapshot,
                bids=bids,
                asks=asks,
            )
            try:
                local.apply(book)
            except BookError as exc:
                # The runtime's checksum on the next push shows the damage and resyncs.
                detail = f"{product}: the book refused the push: {exc}"
                errors.append(DecodeError("book_inconsistent", detail, raw, product))
                continue
            events.append(self._truncate(local, book))
            if checksum is not None:
                checksums.append(BookChecksum(product, checksum))
            if snapshot:
                snapshots.append(product)
        return Decoded(
            events=tuple(events),
            errors=tuple(errors),
            checksums=tuple(checksums),
            snapshot_products=tuple(snapshots),
        )

    def _truncate(self, local: OrderBook, change: Book) -> Book:
        """Remove the levels a push left beyond the subscribed depth (Kraken sends no
        removal for a level an insert pushes out) and add those removals to the change."""
        depth = self.depths.get(change.product, self.default_depth)
        bid_count, ask_count = local.depth()
        if bid_count <= depth and ask_count <= depth:
            return change
        gone_bids = tuple((price, _ZERO) for price, _ in local.bids()[depth:])
        gone_asks = tuple((price, _ZERO) for price, _ in local.asks()[depth:])
        local.truncate(depth)
        if change.snapshot:
            return Book(
                product=change.product,
                ts_event=change.ts_event,
                ts_ingest=change.ts_ingest,
                snapshot=True,
                bids=tuple(local.bids()),
                asks=tuple(local.asks()),
            )
        return Book(
            product=change.product,
            ts_event=change.ts_event,
            ts_ingest=change.ts_ingest,
            snapshot=False,
            bids=change.bids + gone_bids,
            asks=change.asks + gone_asks,
        )

    # -- trades, ticker, ohlc, instrument --------------------------------------------------

    def _trade(self, obj: dict[str, Any], ts: int, raw: bytes) -> Decoded:
        events: list[Event] = []
        for item in _list(obj, "data"):
            trade = _dict(item, "data")
            side_text = _str(trade, "side")
            side = _SIDES.get(side_text)
            if side is None:
                raise _invalid("side", side_text, "buy/sell")
            trade_id = _int(trade, "trade_id")
            events.append(
                Trade(
                    product=_product(trade),
                    src_seq=trade_id,
                    ts_event=_time_ns(trade, "timestamp"),
                    ts_ingest=ts,
                    price=_num(trade, "price"),
                    size=_num(trade, "qty"),
                    side=side,
                    trade_id=str(trade_id),
                )
            )
        return Decoded(events=tuple(events))

    def _ticker(self, obj: dict[str, Any], ts: int, raw: bytes) -> Decoded:
        events: list[Event] = []
        for item in _list(obj, "data"):
            tick = _dict(item, "data")
            product = _product(tick)
            ts_event = _time_ns(tick, "timestamp") if "timestamp" in tick else ts
            last = _num(tick, "last")
            change = _opt_num(tick, "change")
            bid, ask = _opt_num(tick, "bid"), _opt_num(tick, "ask")
            events.append(
                Ticker(
                    product=product,
                    ts_event=ts_event,
                    ts_ingest=ts,
                    price=last,
                    open_24h=last - change if change is not None else None,
                    high_24h=_opt_num(tick, "high"),
                    low_24h=_opt_num(tick, "low"),
                    volume_24h=_opt_num(tick, "volume"),
                    best_bid=bid,
                    best_ask=ask,
                )
            )
            events.append(
                Quote(
                    product=product,
                    ts_event=ts_event,
                    ts_ingest=ts,
                    bid_price=bid,
                    bid_size=_opt_num(tick, "bid_qty") if bid is not None else None,
                    ask_price=ask,
                    ask_size=_opt_num(tick, "ask_qty") if ask is not None else None,
                )
            )
        return Decoded(events=tuple(events))

    def _ohlc(self, obj: dict[str, Any], ts: int, raw: bytes) -> Decoded:
        for item in _list(obj, "data"):
            candle = _dict(item, "data")
            _product(candle)
            for name in ("open", "high", "low", "close", "volume"):
                _num(candle, name)
            _time_ns(candle, "interval_begin")
        return Decoded(heartbeat=True)

    def _instrument(self, obj: dict[str, Any], ts: int, raw: bytes) -> Decoded:
        data = _dict(obj.get("data"), "data")
        for item in _list(data, "pairs"):
            pair = _dict(item, "pairs")
            symbol = canonical_symbol(_str(pair, "symbol"))
            if symbol is None:
                continue
            self.precisions[make_product(EXCHANGE, symbol)] = (
                _int(pair, "price_precision"),
                _int(pair, "qty_precision"),
            )
        return Decoded(heartbeat=True)
