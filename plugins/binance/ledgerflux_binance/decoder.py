"""Sans-IO decoder of Binance Spot's combined streams (``/stream``).

Every data frame is wrapped: ``{"stream":"btcusdt@depth@100ms","data":{...}}``. What each
payload becomes (the recordings under ``recordings/binance/`` show every one):

* ``depthUpdate`` (``<symbol>@depth@100ms``) → ``Book`` changes (absolute quantities, "0"
  removes the level), ``src_seq`` = ``u``, and ``SeqMark(product, u, first=U)`` for the
  update-id chain. The stream has no snapshot: the runtime fetches ``/api/v3/depth``.
* ``trade`` → ``Trade`` with ``src_seq`` = trade id ``t``, ``ts_event`` = trade time ``T``.
  ``m`` ("is the buyer the market maker?") gives the aggressor: ``m`` true means the
  seller took liquidity, so the side is ``sell``.
* ``aggTrade`` → ``Trade`` likewise (``trade_id`` = ``"a<aggregate id>"``; no
  ``src_seq``, because aggregate ids are not trade ids and the normalizer orders
  ``src_seq`` per event type: subscribe ``trade`` *or* ``aggTrade``).
* ``bookTicker`` (no ``e`` field) → ``Quote``, ``src_seq`` = ``u``; it carries no exchange
  time, so ``ts_event`` is the receipt time.
* ``24hrTicker`` (``<symbol>@ticker``) → ``Ticker`` (last ``c``, open/high/low, base volume
  ``v``, best bid/ask).
* ``kline`` (``<symbol>@kline_1m``) → validated, no event: LedgerFlux builds its own
  one-minute candles from trades; a malformed kline is still a ``DecodeError``.
* ``{"result":...,"id":N}`` → a subscribe reply (``subscribed``) or the answer to the
  runtime's ``LIST_SUBSCRIPTIONS`` ping (``heartbeat``); ``{"code":..,"msg":..}`` and
  ``{"error":{...}}`` → ``DecodeError("exchange_error")``.

Symbols: Binance names a market by its concatenated id (``BTCUSDT``). The canonical product
is ``binance:BASE-QUOTE`` from the instrument map (``exchangeInfo``), or, before it is
known, by splitting the id at the longest known quote asset (:data:`QUOTE_ASSETS`).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from ledgerflux.events import Book, Event, PriceLevel, Quote, Side, Ticker, Trade
from ledgerflux.plugin import Decoded, DecodeError, SeqMark
from ledgerflux.symbols import canonical_symbol, split_native

__all__ = ["EXCHANGE", "QUOTE_ASSETS", "BinanceDecoder", "SymbolMap", "parse_levels"]

EXCHANGE = "binance"
QUOTE_ASSETS = (
    *("USDT", "USDC", "FDUSD", "TUSD", "BUSD", "DAI", "USDP", "USD", "EUR", "GBP", "TRY"),
    *("BRL", "JPY", "AUD", "ZAR", "UAH", "PLN", "RON", "ARS", "MXN", "COP", "CZK", "IDR"),
    *("BTC", "ETH", "BNB", "XRP", "TRX", "DOGE", "SOL", "DOT"),
)
"""Quote assets for splitting an id without the instrument map (longest match first)."""

_MS = 1_000_000


class SymbolMap:
    """Native id ↔ canonical symbol, shared by the plugin and its decoders."""

    def __init__(self) -> None:
        self._canonical: dict[str, str] = {}
        self._native: dict[str, str] = {}

    def add(self, native: str, base: str, quote: str) -> str:
        symbol = canonical_symbol(base, quote)
        self._canonical[native.upper()] = symbol
        self._native[symbol] = native.upper()
        return symbol

    def native(self, symbol: str) -> str:
        """``BTCUSDT`` for ``BTC-USDT`` (known, or the two assets joined)."""
        return self._native.get(symbol) or symbol.replace("-", "").upper()

    def canonical(self, native: str) -> str | None:
        found = self._canonical.get(native)
        if found is not None:
            return found
        split = split_native(native, QUOTE_ASSETS)
        if split is None:
            return None
        return self.add(native, *split)


class _FieldError(ValueError):
    def __init__(self, detail: str, product: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.product = product


def _dec(value: Any, name: str) -> Decimal:
    if type(value) is not str:
        raise _FieldError(f"field {name!r}: expected a decimal string, got {value!r:.40}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise _FieldError(f"field {name!r}: not a decimal: {value!r:.40}") from None
    if not number.is_finite() or number < 0:
        raise _FieldError(f"field {name!r}: not a finite non-negative decimal: {value!r:.40}")
    return number


def _int(value: Any, name: str) -> int:
    if type(value) is not int:
        raise _FieldError(f"field {name!r}: expected an integer, got {value!r:.40}")
    return value


def parse_levels(value: Any, name: str) -> tuple[PriceLevel, ...]:
    """``[["price","qty"], ...]`` as levels; raises ``ValueError`` naming the field."""
    return _levels(value, name)


def _levels(value: Any, name: str) -> tuple[PriceLevel, ...]:
    if type(value) is not list:
        raise _FieldError(f"field {name!r}: expected a list of [price, quantity]")
    out = []
    for level in value:
        if type(level) is not list or len(level) != 2:
            raise _FieldError(f"field {name!r}: expected [price, quantity], got {level!r:.40}")
        out.append((_dec(level[0], name), _dec(level[1], name)))
    return tuple(out)


CACHE_SIZE = 65_536
"""Decimal strings remembered per decoder (prices repeat level after level); the cache is
emptied when full, so memory stays bounded on any stream."""


class BinanceDecoder:
    """One per connection. State: the shared symbol map and a bounded cache of the decimal
    strings already validated (a price level repeats in diff after diff)."""

    def __init__(self, symbols: SymbolMap) -> None:
        self.symbols = symbols
        self._decimals: dict[str, Decimal] = {}

    def _dec(self, value: Any, name: str) -> Decimal:
        cache = self._decimals
        try:
            found = cache.get(value)
        except TypeError:  # unhashable: certainly not a decimal string
            found = None
        if found is not None:
            return found
        number = _dec(value, name)
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        cache[value] = number
        return number

    def _levels(self, value: Any, name: str) -> tuple[PriceLevel, ...]:
        if type(value) is not list:
            raise _FieldError(f"field {name!r}: expected a list of [price, quantity]")
        cache = self._decimals
        out = []
        for level in value:
            if type(level) is not list or len(level) != 2:
                raise _FieldError(f"field {name!r}: expected [price, quantity], got {level!r:.40}")
            price, size = level
            p = cache.get(price) if type(price) is str else None
            q = cache.get(size) if type(size) is str else None
            if p is None:
                p = self._dec(price, name)
            if q is None:
                q = self._dec(size, name)
            out.append((p, q))
        return tuple(out)

    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        try:
            obj = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            return _error("malformed_json", str(exc), frame)
        if type(obj) is not dict:
            return _error("invalid_field", "expected a JSON object", frame)
        data = obj.get("data")
        if data is None:
            return self._control(obj, frame)
        if type(data) is not dict:
            return _error("invalid_field", "field 'data': expected an object", frame)
        product: str | None = None
        try:
            native = data.get("s")
            if type(native) is not str:
                raise _FieldError("field 's': expected the symbol")
            symbol = self.symbols.canonical(native)
            if symbol is None:
                return _error("unknown_symbol", f"symbol {native!r}", frame)
            product = f"{EXCHANGE}:{symbol}"
            kind = data.get("e")
            if kind == "depthUpdate":
                return self._depth(product, data, ts_ingest)
            if kind == "trade":
                return self._trade(product, data, ts_ingest)
            if kind == "aggTrade":
                return self._agg_trade(product, data, ts_ingest)
            if kind is None and "u" in data and "b" in data and "a" in data:
                return self._book_ticker(product, data, ts_ingest)
            if kind == "24hrTicker":
                return self._ticker(product, data, ts_ingest)
            if kind == "kline":
                return self._kline(data)
            return _error("unknown_type", f"event {kind!r}", frame, product)
        except _FieldError as exc:
            return _error("invalid_field", exc.detail, frame, product)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            return _error("invalid_field", f"{type(exc).__name__}: {exc}", frame, product)

    def _control(self, obj: dict[str, Any], frame: bytes | str) -> Decoded:
        if "result" in obj and "id" in obj:
            if obj["result"] is None:
                return Decoded(subscribed=())  # a SUBSCRIBE succeeded
            return Decoded(heartbeat=True)  # the LIST_SUBSCRIPTIONS ping's answer
        error = obj.get("error")
        if "code" in obj or isinstance(error, dict):
            detail = error if isinstance(error, dict) else obj
            code, msg = detail.get("code"), detail.get("msg")
            return _error("exchange_error", f"code {code}: {msg}", frame)
        return _error("unknown_type", "neither a stream payload nor a reply", frame)

    def _depth(self, product: str, data: dict[str, Any], ts: int) -> Decoded:
        first, last = _int(data["U"], "U"), _int(data["u"], "u")
        if first > last:
            raise _FieldError(f"update ids U {first} > u {last}", product)
        book = Book(
            product=product,
            src_seq=last,
            ts_event=_int(data["E"], "E") * _MS,
            ts_ingest=ts,
            snapshot=False,
            bids=self._levels(data["b"], "b"),
            asks=self._levels(data["a"], "a"),
        )
        return Decoded(events=(book,), marks=(SeqMark(product, last, first=first),))

    def _trade(self, product: str, data: dict[str, Any], ts: int) -> Decoded:
        trade_id = _int(data["t"], "t")
        trade = Trade(
            product=product,
            src_seq=trade_id,
            ts_event=_int(data["T"], "T") * _MS,
            ts_ingest=ts,
            price=self._dec(data["p"], "p"),
            size=self._dec(data["q"], "q"),
            side=_aggressor(data["m"]),
            trade_id=str(trade_id),
        )
        return Decoded(events=(trade,))

    def _agg_trade(self, product: str, data: dict[str, Any], ts: int) -> Decoded:
        trade = Trade(
            product=product,
            ts_event=_int(data["T"], "T") * _MS,
            ts_ingest=ts,
            price=self._dec(data["p"], "p"),
            size=self._dec(data["q"], "q"),
            side=_aggressor(data["m"]),
            trade_id=f"a{_int(data['a'], 'a')}",
        )
        return Decoded(events=(trade,))

    def _book_ticker(self, product: str, data: dict[str, Any], ts: int) -> Decoded:
        quote = Quote(
            product=product,
            src_seq=_int(data["u"], "u"),
            ts_event=ts,
            ts_ingest=ts,
            bid_price=self._dec(data["b"], "b"),
            bid_size=self._dec(data["B"], "B"),
            ask_price=self._dec(data["a"], "a"),
            ask_size=self._dec(data["A"], "A"),
        )
        return Decoded(events=(quote,))

    def _ticker(self, product: str, data: dict[str, Any], ts: int) -> Decoded:
        ticker: Event = Ticker(
            product=product,
            ts_event=_int(data["E"], "E") * _MS,
            ts_ingest=ts,
            price=self._dec(data["c"], "c"),
            open_24h=self._dec(data["o"], "o"),
            high_24h=self._dec(data["h"], "h"),
            low_24h=self._dec(data["l"], "l"),
            volume_24h=self._dec(data["v"], "v"),
            best_bid=self._dec(data["b"], "b"),
            best_ask=self._dec(data["a"], "a"),
        )
        return Decoded(events=(ticker,))

    def _kline(self, data: dict[str, Any]) -> Decoded:
        k = data["k"]
        if type(k) is not dict:
            raise _FieldError("field 'k': expected an object")
        _int(k["t"], "k.t")
        _int(k["T"], "k.T")
        for name in ("o", "h", "l", "c", "v"):
            self._dec(k[name], f"k.{name}")
        return Decoded(heartbeat=True)


def _aggressor(buyer_is_maker: Any) -> Side:
    if buyer_is_maker is True:
        return "sell"
    if buyer_is_maker is False:
        return "buy"
    raise _FieldError(f"field 'm': expected true/false, got {buyer_is_maker!r:.20}")


def _error(reason: str, detail: str, frame: bytes | str, product: str | None = None) -> Decoded:
    raw = frame.encode("utf-8", "replace") if isinstance(frame, str) else frame
    return Decoded(errors=(DecodeError(reason, detail, raw, product),))
