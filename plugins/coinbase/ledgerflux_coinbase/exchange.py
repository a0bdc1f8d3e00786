"""Coinbase Exchange WebSocket feed (``wss://ws-feed.exchange.coinbase.com``).

The decoder is sans-IO: one frame (plus its receipt time) in, a :class:`Decoded` out. It
never raises; a frame it cannot read becomes a :class:`DecodeError` with a reason.

Payload shapes are those of the reference capture
``coinbase-exchange-feed-2021.capture`` (``ticker``, ``snapshot``, ``l2update``, ``match``,
``last_match``, ``subscriptions``) and of Coinbase's channel documentation for the rest
(``heartbeat``, ``status``, ``error`` and the ``full`` channel).

Sequence numbers. ``ticker``, ``heartbeat``, ``match``/``last_match`` and the ``full``
channel carry a per-product ``sequence``; ``level2``/``level2_batch`` carry none. Only the
``full`` channel sees every number of a product: on ``matches`` and ``ticker`` alone the
numbers jump (the reference capture goes 201390075 → 201390097 for SKL-USD), so there a
jump is not a lost message and no gap can be detected. The decoder therefore reports
:class:`SeqMark` s only for products the exchange confirmed on the ``full`` channel (its
``subscriptions`` reply): ``full`` messages and ``match``/``last_match`` carry state, a
``heartbeat`` (which repeats the latest number) is ``carries_state=False``. Other
products get no marks; their events still carry ``src_seq``.

A ``ticker`` never reports a mark: it repeats the number of the match that caused it, and
it can arrive *before* that match (another channel): in the reference capture 17 of 97
live matches follow their own ticker. A mark on the ticker would make the runtime drop
those trades as duplicates.

Trade side. Coinbase's ``side`` on a match is the *maker* order's side; the canonical
``Trade.side`` is the taker's, so it is inverted here.

The ``full`` channel (``received``/``open``/``done``/``match``/``change``/``activate``):
``match`` becomes a :class:`Trade`, the others produce no canonical event (building an L3
book is out of scope) but their sequence numbers are still reported so gaps are found.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from ledgerflux.events import Book, Event, PriceLevel, Side, Status
from ledgerflux.events import make_product as _make_product
from ledgerflux.plugin import (
    BookSnapshot,
    Credentials,
    Decoded,
    DecodeError,
    FeedDecoder,
    FeedPlugin,
    RestRequest,
    ResyncMode,
    SeqMark,
    SequenceModel,
    Subscription,
)
from ledgerflux_coinbase._build import (
    EMPTY,
    new_book,
    new_decoded,
    new_mark,
    new_quote,
    new_ticker,
    new_trade,
)
from ledgerflux_coinbase._fields import (
    DECIMALS,
    FieldError,
    get_decimal,
    get_dict,
    get_int,
    get_list,
    get_opt_decimal,
    get_str,
    get_time_ns,
    level,
    lookup,
    new_decimal,
    parse_iso_ns,
    raw_bytes,
    to_decimal,
)

__all__ = ["CoinbaseExchangeFeed", "ExchangeDecoder"]

EXCHANGE = "coinbase"

# Coinbase reports the maker's side; the taker was on the other side.
_TAKER_SIDE: dict[str, Side] = {"buy": "sell", "sell": "buy"}
# l2update changes: "buy" levels are bids, "sell" levels are asks.
_BOOK_SIDE = {"buy": 0, "sell": 1}
# Frames of the full channel that move the order book but make no canonical L2 event.
_FULL_ONLY = ("received", "open", "done", "change", "activate")

_MAX_CACHED_PRODUCTS = 10_000

_Handler = Callable[[dict[str, Any], int], Decoded]


def _product(msg: dict[str, Any]) -> str:
    return _make_product(EXCHANGE, get_str(msg, "product_id"))


def _time_or(msg: dict[str, Any], default: int) -> int:
    # Snapshots (and the first ticker of some products) carry no `time`: receipt time is
    # the best exchange-time estimate there is.
    return default if msg.get("time") is None else get_time_ns(msg, "time")


class ExchangeDecoder:
    """Decoder for one Exchange connection.

    Per-connection state: the symbols the exchange confirmed (to keep ``status`` events to
    the subscribed products), those confirmed on the ``full`` channel (the only ones whose
    sequence numbers are reported), the last status seen per product (``status`` repeats
    the whole product list every few seconds; only changes become events) and a cache of
    validated product ids.
    """

    __slots__ = ("_handlers", "_products", "_sequenced", "_status_seen", "_symbols")

    def __init__(self) -> None:
        self._products: dict[str, str] = {}
        self._symbols: set[str] = set()
        self._sequenced: frozenset[str] = frozenset()
        self._status_seen: dict[str, str] = {}
        self._handlers: dict[str, _Handler] = {
            "ticker": self._ticker,
            "match": self._match,
            "last_match": self._match,
            "snapshot": self._snapshot,
            "l2update": self._l2update,
            "heartbeat": self._heartbeat,
            "subscriptions": self._subscriptions,
            "status": self._status,
            "error": self._error,
        }
        for kind in _FULL_ONLY:
            self._handlers[kind] = self._full_only

    def _product(self, msg: dict[str, Any]) -> str:
        """The canonical product of ``msg``, validated once per symbol and then cached."""
        product = _product(msg)
        if len(self._products) >= _MAX_CACHED_PRODUCTS:
            self._products.clear()  # bounded even if a feed invents symbols
        self._products[product.partition(":")[2]] = product
        return product

    def _marks(
        self, product: str, sequence: int, *, carries_state: bool = True
    ) -> tuple[SeqMark, ...]:
        if product.partition(":")[2] not in self._sequenced:
            return EMPTY  # not on `full`: its numbers are sparse, they cannot show a gap
        return (new_mark(product, sequence, carries_state),)

    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        """Decode one frame received at ``ts_ingest`` (ns). Never raises."""
        try:
            msg = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            return _failed("malformed_json", str(exc), frame, None)
        if type(msg) is not dict:
            return _failed("invalid_message", "frame is not a JSON object", frame, None)
        kind = msg.get("type")
        handler = self._handlers.get(kind) if type(kind) is str else None
        if handler is None:
            return _failed("unknown_type", f"unknown message type {kind!r}", frame, msg)
        try:
            result = handler(msg, ts_ingest)
        except FieldError as exc:
            return _failed(exc.reason, f"{kind}: {exc.detail}", frame, msg)
        except _ExchangeSaidError as exc:
            return _failed("exchange_error", str(exc), frame, msg)
        except Exception as exc:  # the never-raise contract: a bug must not kill the feed
            return _failed("decoder_bug", f"{kind}: {exc!r}", frame, msg)
        return result

    def _ticker(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        product = _product(msg)
        sequence = get_int(msg, "sequence")
        ts_event = _time_or(msg, ts_ingest)
        best_bid = get_opt_decimal(msg, "best_bid")
        best_ask = get_opt_decimal(msg, "best_ask")
        ticker = new_ticker(
            product,
            sequence,
            ts_event,
            ts_ingest,
            get_decimal(msg, "price"),
            get_opt_decimal(msg, "open_24h"),
            get_opt_decimal(msg, "high_24h"),
            get_opt_decimal(msg, "low_24h"),
            get_opt_decimal(msg, "volume_24h"),
            best_bid,
            best_ask,
        )
        if best_bid is None and best_ask is None:
            return new_decoded((ticker,))
        bid_size = None if best_bid is None else get_opt_decimal(msg, "best_bid_size")
        ask_size = None if best_ask is None else get_opt_decimal(msg, "best_ask_size")
        if (bid_size is None) != (best_bid is None) or (ask_size is None) != (best_ask is None):
            # Older tickers (the 2021 reference capture) send best_bid/best_ask without
            # sizes. A quote is prices *with* sizes; the ticker already carries the prices.
            return new_decoded((ticker,))
        quote = new_quote(
            product, sequence, ts_event, ts_ingest, best_bid, bid_size, best_ask, ask_size
        )
        return new_decoded((ticker, quote))

    def _match(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        product = _product(msg)
        sequence = get_int(msg, "sequence")
        side = lookup(_TAKER_SIDE, msg.get("side"))
        if side is None:
            raise FieldError("invalid_field", f"field 'side': expected buy/sell in {product}")
        trade_id = msg.get("trade_id")
        if type(trade_id) is not int and type(trade_id) is not str:
            raise FieldError("invalid_field", "field 'trade_id': expected an integer")
        trade = new_trade(
            product,
            sequence,
            get_time_ns(msg, "time"),
            ts_ingest,
            get_decimal(msg, "price"),
            get_decimal(msg, "size"),
            side,
            str(trade_id),
        )
        return new_decoded((trade,), self._marks(product, sequence))

    def _snapshot(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        product = _product(msg)
        try:
            bids = _levels_fast(msg["bids"])
            asks = _levels_fast(msg["asks"])
        except (KeyError, IndexError, TypeError, ValueError, ArithmeticError):
            # Exactly the same frames, read field by field to name what is wrong.
            bids = tuple([level(item, "bids") for item in get_list(msg, "bids")])
            asks = tuple([level(item, "asks") for item in get_list(msg, "asks")])
        book = new_book(product, None, _time_or(msg, ts_ingest), ts_ingest, True, bids, asks)
        return new_decoded((book,), EMPTY, False, (product,))

    def _l2update(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        # The hot path (~97% of frames, nearly all with one change): read optimistically
        # with as few operations as possible; anything unexpected falls back to the
        # field-by-field reader below, which accepts exactly the same frames and names
        # what is wrong. Decimals come from the shared cache (see _fields.DECIMALS).
        try:
            product = self._products[msg["product_id"]]
            changes = msg["changes"]
            if type(changes) is not list:
                raise TypeError
            if len(changes) == 1:
                buy, level = _change_fast(changes[0])
                if buy:
                    bids: tuple[PriceLevel, ...] = (level,)
                    asks: tuple[PriceLevel, ...] = EMPTY
                else:
                    bids, asks = EMPTY, (level,)
            else:
                bids, asks = _changes_fast(changes)
            ts_event = parse_iso_ns(msg["time"])
        except (KeyError, IndexError, TypeError, ValueError, ArithmeticError):
            return self._l2update_checked(msg, ts_ingest)
        return new_decoded((new_book(product, None, ts_event, ts_ingest, False, bids, asks),))

    def _l2update_checked(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        product = self._product(msg)
        sides: tuple[list[PriceLevel], list[PriceLevel]] = ([], [])
        for change in get_list(msg, "changes"):
            if type(change) is not list or len(change) != 3:
                raise FieldError("invalid_field", "field 'changes': expected [side, price, size]")
            index = lookup(_BOOK_SIDE, change[0])
            if index is None:
                raise FieldError("invalid_field", f"field 'changes': bad side {change[0]!r}")
            price = to_decimal(change[1], "changes")
            sides[index].append((price, to_decimal(change[2], "changes")))
        ts_event = get_time_ns(msg, "time")
        book = new_book(product, None, ts_event, ts_ingest, False, tuple(sides[0]), tuple(sides[1]))
        return new_decoded((book,))

    def _heartbeat(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        product = _product(msg)
        sequence = get_int(msg, "sequence")
        return new_decoded(EMPTY, self._marks(product, sequence, carries_state=False), True)

    def _full_only(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        product = _product(msg)
        if msg.get("sequence") is None:
            return new_decoded(EMPTY)  # `activate` (stop orders) carries no sequence
        return new_decoded(EMPTY, self._marks(product, get_int(msg, "sequence")))

    def _subscriptions(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        # The reply lists everything the connection is subscribed to now, so it replaces
        # what an earlier reply said.
        symbols: dict[str, None] = {}  # ordered set
        sequenced: set[str] = set()
        for channel in get_list(msg, "channels"):
            if type(channel) is str:  # older form: channel names + top-level product_ids
                name: Any = channel
                ids = msg.get("product_ids") or []
            else:
                entry = get_dict(channel, "channels")
                name = entry.get("name")
                ids = entry.get("product_ids") or []
            if type(ids) is not list:
                raise FieldError("invalid_field", "field 'product_ids': expected a list")
            for symbol in ids:
                if type(symbol) is not str or not symbol:
                    raise FieldError("invalid_field", "field 'product_ids': expected strings")
                symbols[symbol] = None
                if name == "full":
                    sequenced.add(symbol)
        self._symbols = set(symbols)
        self._sequenced = frozenset(sequenced)
        return Decoded(subscribed=tuple(symbols))

    def _status(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        seen: dict[str, str] = {}
        for item in get_list(msg, "products"):
            entry = get_dict(item, "products")
            seen[get_str(entry, "id")] = get_str(entry, "status")
        # State moves only once the whole frame is valid: a frame that goes to the DLQ
        # must not hide a status change from the next one.
        events: list[Event] = []
        for symbol, state in seen.items():
            if self._symbols and symbol not in self._symbols:
                continue
            if self._status_seen.get(symbol) == state:
                continue
            self._status_seen[symbol] = state
            events.append(
                Status(
                    product=_make_product(EXCHANGE, symbol),
                    ts_event=ts_ingest,  # the status channel sends no time
                    ts_ingest=ts_ingest,
                    status="online" if state == "online" else "offline",
                    reason=state,
                )
            )
        return Decoded(events=tuple(events))

    def _error(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        message = msg.get("message")
        reason = msg.get("reason")
        raise _ExchangeSaidError(f"{message}: {reason}" if reason else str(message))


def _change_fast(change: Any) -> tuple[bool, PriceLevel]:
    """``[side, price, size]`` → (is buy, level), optimistically (see ``_l2update``)."""
    if type(change) is not list:
        raise TypeError
    side, price_text, size_text = change
    price = DECIMALS.get(price_text)
    if price is None:
        price = new_decimal(price_text)
    if type(size_text) is not str:
        raise TypeError
    size = Decimal(size_text)  # sizes repeat far less than prices: not cached
    if not size.is_finite():
        raise ValueError
    if side == "buy":
        return True, (price, size)
    if side == "sell":
        return False, (price, size)
    raise ValueError


def _changes_fast(changes: list[Any]) -> tuple[tuple[PriceLevel, ...], tuple[PriceLevel, ...]]:
    """``[[side, price, size], ...]`` → (bids, asks), optimistically (see ``_l2update``)."""
    bids: list[PriceLevel] = []
    asks: list[PriceLevel] = []
    for change in changes:
        buy, level = _change_fast(change)
        (bids if buy else asks).append(level)
    return tuple(bids), tuple(asks)


def _levels_fast(items: Any) -> tuple[PriceLevel, ...]:
    """``[[price, size, ...], ...]`` → levels, optimistically (see ``_snapshot``)."""
    if type(items) is not list:
        raise TypeError
    decimals = DECIMALS
    levels: list[PriceLevel] = []
    for item in items:
        if type(item) is not list:
            raise TypeError
        price = decimals.get(item[0])
        if price is None:
            price = new_decimal(item[0])
        size_text = item[1]
        if type(size_text) is not str:
            raise TypeError
        size = Decimal(size_text)  # sizes repeat far less than prices: not cached
        if not size.is_finite():
            raise ValueError
        levels.append((price, size))
    return tuple(levels)


class _ExchangeSaidError(Exception):
    """An ``error`` message from the exchange (raised by the handler, reported by decode)."""


def _failed(reason: str, detail: str, frame: bytes | str, msg: dict[str, Any] | None) -> Decoded:
    product = None
    if msg is not None:
        symbol = msg.get("product_id")
        if type(symbol) is str and symbol:
            product = _make_product(EXCHANGE, symbol)
    return Decoded(errors=(DecodeError(reason, detail, raw_bytes(frame), product),))


class CoinbaseExchangeFeed:
    """The Coinbase Exchange feed plugin (entry point ``coinbase``)."""

    name: ClassVar[str] = "coinbase"
    exchange: ClassVar[str] = EXCHANGE
    endpoint: ClassVar[str] = "wss://ws-feed.exchange.coinbase.com"
    rest_endpoint: ClassVar[str | None] = "https://api.exchange.coinbase.com"
    channels: ClassVar[tuple[str, ...]] = (
        "level2_batch",
        "matches",
        "ticker",
        "heartbeat",
        "level2",
        "full",
        "status",
    )
    # heartbeat is a default so that a quiet product still proves the connection alive.
    default_channels: ClassVar[tuple[str, ...]] = ("level2_batch", "matches", "ticker", "heartbeat")
    sequence_model: ClassVar[SequenceModel] = SequenceModel.PER_PRODUCT
    resync_mode: ClassVar[ResyncMode] = ResyncMode.REST
    subscribe_deadline_s: ClassVar[float] = 5.0
    # The heartbeat channel sends one frame per product per second; 10 missed is stale.
    stale_after_s: ClassVar[float] = 10.0
    rest_rate_limit_per_s: ClassVar[float] = 10.0
    needs_credentials: ClassVar[frozenset[str]] = frozenset({"level2", "full"})

    def subscribe_messages(
        self, subscription: Subscription, credentials: Credentials | None, now_s: float
    ) -> Sequence[str]:
        """One ``subscribe`` frame for every channel, signed when a channel needs it.

        Raises ValueError for an unknown channel, or a channel that needs credentials when
        none are given.
        """
        unknown = [c for c in subscription.channels if c not in self.channels]
        if unknown:
            raise ValueError(f"coinbase: unknown channel(s) {unknown}; known: {self.channels}")
        message: dict[str, Any] = {
            "type": "subscribe",
            "product_ids": list(subscription.symbols),
            "channels": list(subscription.channels),
        }
        private = sorted(self.needs_credentials.intersection(subscription.channels))
        if private:
            if credentials is None:
                raise ValueError(f"coinbase: channel(s) {private} need API credentials")
            message.update(sign_subscribe(credentials, now_s))
        return [orjson.dumps(message).decode()]

    def new_decoder(self) -> ExchangeDecoder:
        return ExchangeDecoder()

    def book_request(self, symbol: str) -> RestRequest:
        url = f"{self.rest_endpoint}/products/{symbol}/book"
        return RestRequest(url=url, params={"level": "2"})

    def parse_book(self, symbol: str, body: bytes, ts_ingest: int) -> BookSnapshot:
        """``GET /products/<symbol>/book?level=2`` → the snapshot and its ``sequence``.

        Raises ValueError naming what is wrong.
        """
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"coinbase REST book for {symbol}: not JSON: {exc}") from None
        if type(msg) is not dict:
            raise ValueError(f"coinbase REST book for {symbol}: not a JSON object")
        try:
            book = Book(
                product=_make_product(EXCHANGE, symbol),
                ts_event=_time_or(msg, ts_ingest),
                ts_ingest=ts_ingest,
                snapshot=True,
                bids=tuple([level(item, "bids") for item in get_list(msg, "bids")]),
                asks=tuple([level(item, "asks") for item in get_list(msg, "asks")]),
            )
            return BookSnapshot(book=book, src_seq=get_int(msg, "sequence"))
        except FieldError as exc:
            raise ValueError(f"coinbase REST book for {symbol}: {exc.detail}") from None


def sign_subscribe(credentials: Credentials, now_s: float) -> dict[str, str]:
    """The authentication fields of a signed Exchange ``subscribe`` message.

    ``signature = base64(hmac_sha256(base64decode(secret), timestamp + "GET" +
    "/users/self/verify"))``. Raises ValueError if the secret is not base64.
    """
    timestamp = str(int(now_s))
    try:
        key = base64.b64decode(credentials.secret, validate=True)
    except ValueError:
        raise ValueError("coinbase: API secret is not valid base64") from None
    digest = hmac.new(key, f"{timestamp}GET/users/self/verify".encode(), hashlib.sha256).digest()
    return {
        "signature": base64.b64encode(digest).decode(),
        "key": credentials.key,
        "passphrase": credentials.passphrase,
        "timestamp": timestamp,
    }


if TYPE_CHECKING:
    # mypy proves the plugin implements the protocol exactly.
    _PLUGIN: FeedPlugin = CoinbaseExchangeFeed()
    _DECODER: FeedDecoder = CoinbaseExchangeFeed().new_decoder()
