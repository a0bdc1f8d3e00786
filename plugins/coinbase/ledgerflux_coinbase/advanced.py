"""Coinbase Advanced Trade WebSocket feed (``wss://advanced-trade-ws.coinbase.com``).

Every frame is an envelope ``{channel, client_id, timestamp, sequence_num, events: [...]}``
(shapes from Coinbase's Advanced Trade WebSocket channel documentation; the golden tests
in ``tests/unit/coinbase`` hold one realistic frame per channel).

Sequence numbers. ``sequence_num`` is one counter per *connection*, across all channels:
every decoded frame reports ``SeqMark(None, sequence_num)``. A hole means any product on
the connection may have missed something, so the runtime resubscribes (``level2`` sends a
fresh snapshot on subscribe). A frame that fails to decode reports no mark on purpose: the
next frame then shows a hole and the resubscription repairs whatever the bad frame held.
Events carry ``src_seq=None``: the counter is not per product and restarts at 0 on every
connection, so it cannot identify a product's message (docs/architecture.md message ids).

Channel by channel:

* ``level2`` (frames arrive on channel ``l2_data``): ``snapshot`` → ``Book(snapshot=True)``
  and ``snapshot_products``; ``update`` → ``Book`` changes (``new_quantity`` "0" removes the
  level). ``ts_event`` of an update is its latest ``event_time``; of a snapshot the envelope
  ``timestamp`` (a snapshot's per-level ``event_time`` is when that level last changed).
* ``ticker`` / ``ticker_batch``: ``Ticker`` (``open_24h`` is not sent: only a rounded
  percent change is, so it stays ``None``) plus a ``Quote`` from ``best_bid``/``best_ask``
  and their quantities; ``ts_event`` is the envelope ``timestamp``.
* ``market_trades``: ``update`` → ``Trade``. Coinbase documents ``side`` only as
  ``BUY``/``SELL``. Checked against the rebuilt book on real traffic, a ``BUY`` prints at or
  below the best bid and a ``SELL`` at or above the best ask: it is the *maker's* side, as
  on the Exchange ``matches`` channel, so it is inverted to the canonical taker (aggressor)
  side (``_TAKER_SIDE``; ``ledgerflux.testing.check_trade_sides`` is the check). The
  ``snapshot`` sent on subscribe repeats up to 50 past trades: they are
  validated but not emitted, because a decoder lives for one connection and would re-emit
  them as new trades after every reconnect (so trades missed during a gap are not
  recovered; the book is, from the level2 snapshot).
* ``heartbeats``: ``heartbeat=True`` (``heartbeat_counter`` is an integer on the wire).
* ``candles``: validated, no event (there is no canonical candle type).
* ``status``: ``Status`` ``online``/``offline`` per product when its status changes
  (``reason`` is Coinbase's product status).
* ``subscriptions``: ``Decoded.subscribed``. ``{"type": "error"}`` frames become
  ``DecodeError(reason="exchange_error")``.
"""

from __future__ import annotations

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
    lookup,
    new_decimal,
    parse_iso_ns,
    raw_bytes,
    to_decimal,
)

__all__ = ["AdvancedDecoder", "CoinbaseAdvancedFeed"]

EXCHANGE = "coinbase"

# ``side`` is the maker's: a resting BUY order was hit by a taker who sold.
_TAKER_SIDE: dict[str, Side] = {"BUY": "sell", "SELL": "buy"}
_BOOK_SIDE: dict[str, int] = {"bid": 0, "offer": 1}
_EVENT_KINDS = ("snapshot", "update")

# The subscribe channel name → the `channel` its frames arrive on. The first four are the
# plugin's default channels (FeedPlugin.channels lists the defaults first).
_WIRE_CHANNEL = {
    "level2": "l2_data",
    "ticker": "ticker",
    "market_trades": "market_trades",
    "heartbeats": "heartbeats",
    "ticker_batch": "ticker_batch",
    "candles": "candles",
    "status": "status",
}

_MAX_CACHED_PRODUCTS = 10_000

_Handler = Callable[[list[Any], int, int, tuple[SeqMark, ...]], Decoded]


def _events(events: list[Any]) -> list[dict[str, Any]]:
    return [get_dict(item, "events") for item in events]


def _kind(event: dict[str, Any]) -> str:
    kind = event.get("type")
    if kind not in _EVENT_KINDS:
        raise FieldError("invalid_field", f"field 'type': expected snapshot/update, got {kind!r}")
    return str(kind)


def _product(msg: dict[str, Any]) -> str:
    return _make_product(EXCHANGE, get_str(msg, "product_id"))


class AdvancedDecoder:
    """Decoder for one Advanced Trade connection.

    Per-connection state: the last status seen per product (``status`` only becomes an
    event when it changes).
    """

    __slots__ = ("_handlers", "_products", "_status_seen")

    def __init__(self) -> None:
        self._products: dict[str, str] = {}
        self._status_seen: dict[str, str] = {}
        self._handlers: dict[str, _Handler] = {
            "l2_data": self._level2,
            "ticker": self._ticker,
            "ticker_batch": self._ticker,
            "market_trades": self._market_trades,
            "heartbeats": self._heartbeats,
            "candles": self._candles,
            "status": self._status,
            "subscriptions": self._subscriptions,
        }

    def _product(self, msg: dict[str, Any]) -> str:
        """The canonical product of ``msg``, validated once per symbol and then cached."""
        product = _product(msg)
        if len(self._products) >= _MAX_CACHED_PRODUCTS:
            self._products.clear()  # bounded even if a feed invents symbols
        self._products[product.partition(":")[2]] = product
        return product

    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        """Decode one frame received at ``ts_ingest`` (ns). Never raises."""
        try:
            msg = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            return _failed("malformed_json", str(exc), frame)
        if type(msg) is not dict:
            return _failed("invalid_message", "frame is not a JSON object", frame)
        channel = msg.get("channel")
        if channel is None and msg.get("type") == "error":
            return _failed("exchange_error", str(msg.get("message")), frame)
        handler = self._handlers.get(channel) if type(channel) is str else None
        if handler is None:
            return _failed("unknown_type", f"unknown channel {channel!r}", frame)
        try:
            try:  # the common case first; the get_* readers name what is wrong
                sequence = msg["sequence_num"]
                events = msg["events"]
                ts_frame = parse_iso_ns(msg["timestamp"])
                if type(sequence) is not int or type(events) is not list:
                    raise TypeError
            except (KeyError, TypeError, ValueError):
                sequence = get_int(msg, "sequence_num")
                events = get_list(msg, "events")
                ts_frame = get_time_ns(msg, "timestamp")
            return handler(events, ts_frame, ts_ingest, (new_mark(None, sequence),))
        except FieldError as exc:
            return _failed(exc.reason, f"{channel}: {exc.detail}", frame)
        except Exception as exc:  # the never-raise contract: a bug must not kill the feed
            return _failed("decoder_bug", f"{channel}: {exc!r}", frame)

    def _level2(
        self, events: list[Any], ts_frame: int, ts_ingest: int, marks: tuple[SeqMark, ...]
    ) -> Decoded:
        # The hot path (most frames, nearly all with one event): read optimistically with
        # as few operations as possible; anything unexpected falls back to the
        # field-by-field reader below, which accepts exactly the same frames and names
        # what is wrong.
        try:
            if len(events) == 1:
                book = self._book_fast(events[0], ts_frame, ts_ingest)
                snapshots = (book.product,) if book.snapshot else EMPTY
                return new_decoded((book,), marks, False, snapshots)
            books = [self._book_fast(event, ts_frame, ts_ingest) for event in events]
        except (KeyError, IndexError, TypeError, ValueError, ArithmeticError):
            return self._level2_checked(events, ts_frame, ts_ingest, marks)
        snapshot_products = tuple([book.product for book in books if book.snapshot])
        return new_decoded(tuple(books), marks, False, snapshot_products)

    def _book_fast(self, event: Any, ts_frame: int, ts_ingest: int) -> Book:
        """One ``l2_data`` event, optimistically (see ``_level2``). Decimals come from the
        shared cache (see ``_fields.DECIMALS``)."""
        if type(event) is not dict:
            raise TypeError
        kind = event["type"]
        if kind == "update":
            snapshot = False
        elif kind == "snapshot":
            snapshot = True
        else:
            raise ValueError
        product = self._products[event["product_id"]]
        updates = event["updates"]
        if type(updates) is not list:
            raise TypeError
        decimals = DECIMALS
        bids: list[PriceLevel] = []
        asks: list[PriceLevel] = []
        latest = -1
        last_time: Any = None  # updates of one event usually share their event_time
        for update in updates:
            if type(update) is not dict:
                raise TypeError
            price = decimals.get(update["price_level"])
            if price is None:
                price = new_decimal(update["price_level"])
            size_text = update["new_quantity"]
            if type(size_text) is not str:
                raise TypeError
            size = Decimal(size_text)  # sizes repeat far less than prices: not cached
            if not size.is_finite():
                raise ValueError
            side = update["side"]
            if side == "bid":
                bids.append((price, size))
            elif side == "offer":
                asks.append((price, size))
            else:
                raise ValueError
            if not snapshot:
                time_text = update["event_time"]
                if time_text != last_time or type(time_text) is not str:
                    ts_update = parse_iso_ns(time_text)
                    last_time = time_text
                    if ts_update > latest:
                        latest = ts_update
        ts_event = ts_frame if latest < 0 else latest
        return new_book(product, None, ts_event, ts_ingest, snapshot, tuple(bids), tuple(asks))

    def _level2_checked(
        self, events: list[Any], ts_frame: int, ts_ingest: int, marks: tuple[SeqMark, ...]
    ) -> Decoded:
        books: list[Event] = []
        snapshots: list[str] = []
        for event in _events(events):
            kind = _kind(event)
            product = self._product(event)
            sides: tuple[list[PriceLevel], list[PriceLevel]] = ([], [])
            ts_event = ts_frame
            latest = -1
            for item in get_list(event, "updates"):
                update = get_dict(item, "updates")
                index = lookup(_BOOK_SIDE, update.get("side"))
                if index is None:
                    raise FieldError("invalid_field", f"field 'side': {update.get('side')!r}")
                sides[index].append(
                    (get_decimal(update, "price_level"), get_decimal(update, "new_quantity"))
                )
                if kind == "update":
                    latest = max(latest, get_time_ns(update, "event_time"))
            if latest >= 0:
                ts_event = latest
            snapshot = kind == "snapshot"
            books.append(
                new_book(
                    product, None, ts_event, ts_ingest, snapshot, tuple(sides[0]), tuple(sides[1])
                )
            )
            if snapshot:
                snapshots.append(product)
        return new_decoded(tuple(books), marks, False, tuple(snapshots))

    def _ticker(
        self, events: list[Any], ts_frame: int, ts_ingest: int, marks: tuple[SeqMark, ...]
    ) -> Decoded:
        out: list[Event] = []
        for event in _events(events):
            _kind(event)
            for item in get_list(event, "tickers"):
                ticker = get_dict(item, "tickers")
                product = _product(ticker)
                best_bid = get_opt_decimal(ticker, "best_bid")
                best_ask = get_opt_decimal(ticker, "best_ask")
                out.append(
                    new_ticker(
                        product,
                        None,
                        ts_frame,
                        ts_ingest,
                        get_decimal(ticker, "price"),
                        None,  # not sent (only a rounded percent change is)
                        get_opt_decimal(ticker, "high_24_h"),
                        get_opt_decimal(ticker, "low_24_h"),
                        get_opt_decimal(ticker, "volume_24_h"),
                        best_bid,
                        best_ask,
                    )
                )
                if best_bid is not None or best_ask is not None:
                    bid_size = (
                        None if best_bid is None else get_opt_decimal(ticker, "best_bid_quantity")
                    )
                    ask_size = (
                        None if best_ask is None else get_opt_decimal(ticker, "best_ask_quantity")
                    )
                    out.append(
                        new_quote(
                            product,
                            None,
                            ts_frame,
                            ts_ingest,
                            best_bid,
                            bid_size,
                            best_ask,
                            ask_size,
                        )
                    )
        return new_decoded(tuple(out), marks)

    def _market_trades(
        self, events: list[Any], ts_frame: int, ts_ingest: int, marks: tuple[SeqMark, ...]
    ) -> Decoded:
        out: list[Event] = []
        for event in _events(events):
            live = _kind(event) == "update"
            for item in get_list(event, "trades"):
                trade = get_dict(item, "trades")
                side = lookup(_TAKER_SIDE, trade.get("side"))
                if side is None:
                    raise FieldError("invalid_field", f"field 'side': {trade.get('side')!r}")
                parsed = new_trade(
                    _product(trade),
                    None,
                    get_time_ns(trade, "time"),
                    ts_ingest,
                    get_decimal(trade, "price"),
                    get_decimal(trade, "size"),
                    side,
                    get_str(trade, "trade_id"),
                )
                if live:
                    out.append(parsed)
        return new_decoded(tuple(out), marks)

    def _heartbeats(
        self, events: list[Any], ts_frame: int, ts_ingest: int, marks: tuple[SeqMark, ...]
    ) -> Decoded:
        for event in _events(events):
            get_int(event, "heartbeat_counter")
        return new_decoded(EMPTY, marks, True)

    def _candles(
        self, events: list[Any], ts_frame: int, ts_ingest: int, marks: tuple[SeqMark, ...]
    ) -> Decoded:
        for event in _events(events):
            _kind(event)
            for item in get_list(event, "candles"):
                candle = get_dict(item, "candles")
                _product(candle)
                start = get_str(candle, "start")
                if not (start.isascii() and start.isdigit()):
                    raise FieldError("invalid_field", f"field 'start': {start!r}")
                for name in ("open", "high", "low", "close", "volume"):
                    get_decimal(candle, name)
        return Decoded(marks=marks)

    def _status(
        self, events: list[Any], ts_frame: int, ts_ingest: int, marks: tuple[SeqMark, ...]
    ) -> Decoded:
        seen: dict[str, str] = {}
        for event in _events(events):
            _kind(event)
            for item in get_list(event, "products"):
                entry = get_dict(item, "products")
                seen[get_str(entry, "id")] = get_str(entry, "status")
        # State moves only once the whole frame is valid: a frame that goes to the DLQ
        # must not hide a status change from the next one.
        out: list[Event] = []
        for symbol, state in seen.items():
            if self._status_seen.get(symbol) == state:
                continue
            self._status_seen[symbol] = state
            out.append(
                Status(
                    product=_make_product(EXCHANGE, symbol),
                    ts_event=ts_frame,
                    ts_ingest=ts_ingest,
                    status="online" if state == "online" else "offline",
                    reason=state,
                )
            )
        return Decoded(events=tuple(out), marks=marks)

    def _subscriptions(
        self, events: list[Any], ts_frame: int, ts_ingest: int, marks: tuple[SeqMark, ...]
    ) -> Decoded:
        symbols: dict[str, None] = {}  # ordered set
        for event in _events(events):
            channels = get_dict(event.get("subscriptions"), "subscriptions")
            for channel, ids in channels.items():
                if type(ids) is not list:
                    raise FieldError("invalid_field", f"subscriptions.{channel}: not a list")
                if channel == "heartbeats":
                    continue  # lists the channel itself, not products
                for symbol in ids:
                    if type(symbol) is not str or not symbol:
                        raise FieldError("invalid_field", f"subscriptions.{channel}: bad id")
                    symbols[symbol] = None
        return Decoded(marks=marks, subscribed=tuple(symbols))


def _failed(reason: str, detail: str, frame: bytes | str) -> Decoded:
    return Decoded(errors=(DecodeError(reason, detail, raw_bytes(frame)),))


class CoinbaseAdvancedFeed:
    """The Coinbase Advanced Trade feed plugin (entry point ``coinbase-advanced``).

    Only public market-data channels are supported; they need no credentials.
    """

    name: ClassVar[str] = "coinbase-advanced"
    # Same prefix as the Exchange plugin: one product id whichever API it came from.
    exchange: ClassVar[str] = EXCHANGE
    endpoint: ClassVar[str] = "wss://advanced-trade-ws.coinbase.com"
    rest_endpoint: ClassVar[str | None] = "https://api.coinbase.com/api/v3/brokerage"
    channels: ClassVar[tuple[str, ...]] = tuple(_WIRE_CHANNEL)
    default_channels: ClassVar[tuple[str, ...]] = (
        "level2",
        "ticker",
        "market_trades",
        "heartbeats",
    )
    sequence_model: ClassVar[SequenceModel] = SequenceModel.PER_CONNECTION
    # level2 sends a full snapshot on subscribe, and the REST book has no sequence to
    # align with the stream, so resubscribing is the only exact resync.
    resync_mode: ClassVar[ResyncMode] = ResyncMode.RESUBSCRIBE
    subscribe_deadline_s: ClassVar[float] = 5.0
    # heartbeats sends one frame per second.
    stale_after_s: ClassVar[float] = 10.0
    rest_rate_limit_per_s: ClassVar[float] = 10.0
    needs_credentials: ClassVar[frozenset[str]] = frozenset()

    def subscribe_messages(
        self, subscription: Subscription, credentials: Credentials | None, now_s: float
    ) -> Sequence[str]:
        """One ``subscribe`` frame per channel (Advanced Trade takes one channel per
        message). Raises ValueError for an unknown channel."""
        unknown = [c for c in subscription.channels if c not in _WIRE_CHANNEL]
        if unknown:
            raise ValueError(
                f"coinbase-advanced: unknown channel(s) {unknown}; known: {self.channels}"
            )
        frames = []
        for channel in subscription.channels:
            message: dict[str, Any] = {"type": "subscribe", "channel": channel}
            if channel != "heartbeats":  # heartbeats is per connection, not per product
                message["product_ids"] = list(subscription.symbols)
            frames.append(orjson.dumps(message).decode())
        return frames

    def new_decoder(self) -> AdvancedDecoder:
        return AdvancedDecoder()

    def book_request(self, symbol: str) -> RestRequest:
        """The public product book. Not used by the runtime for resync (``RESUBSCRIBE``)
        but available, e.g. to seed a book."""
        return RestRequest(
            url=f"{self.rest_endpoint}/market/product_book",
            params={"product_id": symbol, "limit": "1000"},
        )

    def parse_book(self, symbol: str, body: bytes, ts_ingest: int) -> BookSnapshot:
        """``{"pricebook": {product_id, bids: [{price, size}], asks, time}}`` → snapshot.

        The reply has no sequence number: ``src_seq`` is 0, i.e. "cannot be aligned with
        the stream". Raises ValueError naming what is wrong.
        """
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"coinbase-advanced REST book for {symbol}: not JSON: {exc}") from None
        try:
            book = get_dict(get_dict(msg, "body").get("pricebook"), "pricebook")
            ts_event = ts_ingest if book.get("time") is None else get_time_ns(book, "time")
            snapshot = Book(
                product=_make_product(EXCHANGE, symbol),
                ts_event=ts_event,
                ts_ingest=ts_ingest,
                snapshot=True,
                bids=_rest_levels(get_list(book, "bids"), "bids"),
                asks=_rest_levels(get_list(book, "asks"), "asks"),
            )
        except FieldError as exc:
            raise ValueError(f"coinbase-advanced REST book for {symbol}: {exc.detail}") from None
        return BookSnapshot(book=snapshot, src_seq=0)


def _rest_levels(items: list[Any], name: str) -> tuple[PriceLevel, ...]:
    levels = []
    for item in items:
        entry = get_dict(item, name)
        levels.append((to_decimal(entry.get("price"), name), to_decimal(entry.get("size"), name)))
    return tuple(levels)


if TYPE_CHECKING:
    # mypy proves the plugin implements the protocol exactly.
    _PLUGIN: FeedPlugin = CoinbaseAdvancedFeed()
    _DECODER: FeedDecoder = CoinbaseAdvancedFeed().new_decoder()
