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

Book integrity. A push after which the checksum differs from Kraken's breaks that
product's book: a ``DecodeError("checksum_mismatch")`` goes to the DLQ, the product is
listed in :attr:`KrakenDecoder.broken` and its later book pushes are held back until a new
snapshot. The other products go on untouched.
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
from ledgerflux.plugin import Decoded, DecodeError
from ledgerflux_kraken.checksum import CHECKSUM_DEPTH, kraken_checksum
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


def loads(raw: bytes) -> Any:
    """Kraken's JSON with every non-integer number as an exact :class:`Decimal`."""
    return json.loads(raw, parse_float=Decimal, parse_constant=_no_constants)


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


def _parse_rfc3339(text: str) -> int:
    import datetime

    if not text.endswith("Z") or len(text) < 20:
        raise ValueError(text)
    head, _, frac = text[:-1].partition(".")
    if frac and (not frac.isdigit() or len(frac) > 9):
        raise ValueError(text)
    base = datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    seconds = int(base.timestamp())
    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def _levels(items: list[Any], name: str) -> tuple[PriceLevel, ...]:
    out: list[PriceLevel] = []
    for item in items:
        level = _dict(item, name)
        out.append((_num(level, "price"), _num(level, "qty")))
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
        self.broken: dict[str, str] = {}
        """Products whose book cannot be trusted until the next snapshot, with the reason."""
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
        events: list[Event] = []
        errors: list[DecodeError] = []
        snapshots: list[str] = []
        for item in _list(obj, "data"):
            push = _dict(item, "data")
            product = _product(push)
            bids = _levels(_list(push, "bids"), "bids")
            asks = _levels(_list(push, "asks"), "asks")
            checksum = push.get("checksum")
            ts_event = _time_ns(push, "timestamp") if "timestamp" in push else ts
            if kind == "snapshot":
                local = OrderBook(product)
                self.books[product] = local
                self.broken.pop(product, None)
                book = Book(
                    product=product,
                    ts_event=ts_event,
                    ts_ingest=ts,
                    snapshot=True,
                    bids=bids,
                    asks=asks,
                )
            else:
                if product in self.broken:
                    continue
                known = self.books.get(product)
                if known is None:
                    errors.append(self._break(product, "update before any snapshot", raw))
                    continue
                local = known
                book = Book(
                    product=product,
                    ts_event=ts_event,
                    ts_ingest=ts,
                    snapshot=False,
                    bids=bids,
                    asks=asks,
                )
            try:
                local.apply(book)
            except BookError as exc:
                errors.append(self._break(product, f"book refused the push: {exc}", raw))
                continue
            if not book.snapshot:
                book = self._truncate(local, book)
            problem = self._verify(local, product, checksum)
            if problem is not None:
                errors.append(self._break(product, problem, raw))
                continue
            events.append(book)
            if book.snapshot:
                snapshots.append(product)
        return Decoded(
            events=tuple(events), errors=tuple(errors), snapshot_products=tuple(snapshots)
        )

    def _truncate(self, local: OrderBook, change: Book) -> Book:
        """Remove the levels an update pushed beyond the subscribed depth (Kraken sends no
        removal for them) and add those removals to the change."""
        depth = self.depths.get(change.product, self.default_depth)
        bids, asks = local.bids(), local.asks()
        if len(bids) <= depth and len(asks) <= depth:
            return change
        gone_bids = tuple((price, _ZERO) for price, _ in bids[depth:])
        gone_asks = tuple((price, _ZERO) for price, _ in asks[depth:])
        removal = Book(
            product=change.product,
            ts_event=change.ts_event,
            ts_ingest=change.ts_ingest,
            snapshot=False,
            bids=gone_bids,
            asks=gone_asks,
        )
        local.apply(removal)
        return Book(
            product=change.product,
            ts_event=change.ts_event,
            ts_ingest=change.ts_ingest,
            snapshot=False,
            bids=change.bids + gone_bids,
            asks=change.asks + gone_asks,
        )

    def _verify(self, local: OrderBook, product: str, checksum: Any) -> str | None:
        if checksum is None:
            return None
        if type(checksum) is not int:
            return f"checksum field is not an integer: {checksum!r:.40}"
        price_precision, qty_precision = self.precisions.get(product, (None, None))
        ours = kraken_checksum(
            local.bids(CHECKSUM_DEPTH), local.asks(CHECKSUM_DEPTH), price_precision, qty_precision
        )
        if ours != checksum:
            return f"checksum {checksum} from Kraken, {ours} from the book"
        return None

    def _break(self, product: str, problem: str, raw: bytes) -> DecodeError:
        if problem.startswith("checksum"):
            reason = "checksum_mismatch"
        elif problem.startswith("book refused"):
            reason = "book_inconsistent"
        else:
            reason = "sequence_break"
        self.broken[product] = problem
        return DecodeError(reason, f"{product}: {problem}", raw, product)

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
