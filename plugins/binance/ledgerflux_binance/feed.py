"""The Binance Spot feed plugin (entry point ``binance``).

Combined streams on one connection (``wss://stream.binance.com:9443/stream``), subscribed
with one ``SUBSCRIBE`` message. Channels (configuration name → stream):

=============  ==========================  ============================================
channel        stream                      canonical events
=============  ==========================  ============================================
``depth``      ``<symbol>@depth@100ms``    ``Book`` changes (update-id chain)
``trade``      ``<symbol>@trade``          ``Trade`` (aggressor side from ``m``)
``aggTrade``   ``<symbol>@aggTrade``       ``Trade`` (use instead of ``trade``)
``bookTicker`` ``<symbol>@bookTicker``     ``Quote``
``ticker``     ``<symbol>@ticker``         ``Ticker`` (24 h rolling window)
``kline_1m``   ``<symbol>@kline_1m``       validated only (candles come from trades)
=============  ==========================  ============================================

The local book follows Binance's documented procedure, run by the shared runtime
(``SequenceModel.UPDATE_ID_CHAIN`` + ``rest_book_channels``): buffer the diffs, fetch
``/api/v3/depth?limit=5000``, drop diffs with ``u <= lastUpdateId``, the first applied
must straddle ``lastUpdateId + 1``, then ``U == previous u + 1``; a break resyncs that
product while the others flow. Connections live at most 24 hours: the runtime replaces
one after ``max_connection_s`` (23 h 30 min) with an overlapping successor. Binance's
WebSocket ping frames are answered by trio-websocket; ``LIST_SUBSCRIPTIONS`` every 30 s
is the application-level ping, so quiet subscriptions are not mistaken for stale ones.
REST weights: depth with limit 5000 weighs 250, ``exchangeInfo`` 20; the plugin spends at
most 5000 of the 6000 per minute Binance allows an IP.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar

import orjson

from ledgerflux.events import Book, make_product
from ledgerflux.plugin import (
    BookSnapshot,
    Credentials,
    Instrument,
    RestRequest,
    ResyncMode,
    SequenceModel,
    Subscription,
)
from ledgerflux_binance.decoder import EXCHANGE, BinanceDecoder, SymbolMap, parse_levels

__all__ = ["DEPTH_LIMIT", "STREAMS", "BinanceFeed", "depth_weight"]

STREAMS: dict[str, str] = {
    "depth": "depth@100ms",
    "trade": "trade",
    "aggTrade": "aggTrade",
    "bookTicker": "bookTicker",
    "ticker": "ticker",
    "kline_1m": "kline_1m",
}
"""Channel name → stream suffix (``<lowercase symbol>@<suffix>``)."""
DEPTH_LIMIT = 5000
MAX_STREAMS = 1024
"""Streams one connection may carry."""


def depth_weight(limit: int) -> int:
    """Request weight of ``/api/v3/depth`` by ``limit`` (Binance's table)."""
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


class BinanceFeed:
    name: ClassVar[str] = "binance"
    exchange: ClassVar[str] = EXCHANGE
    endpoint: ClassVar[str] = "wss://stream.binance.com:9443/stream"
    rest_endpoint: ClassVar[str | None] = "https://api.binance.com"
    channels: ClassVar[tuple[str, ...]] = tuple(STREAMS)
    default_channels: ClassVar[tuple[str, ...]] = ("depth", "trade", "bookTicker", "ticker")
    sequence_model: ClassVar[SequenceModel] = SequenceModel.UPDATE_ID_CHAIN
    resync_mode: ClassVar[ResyncMode] = ResyncMode.REST
    subscribe_deadline_s: ClassVar[float] = 10.0
    stale_after_s: ClassVar[float] = 75.0
    rest_rate_limit_per_s: ClassVar[float] = 5.0
    needs_credentials: ClassVar[frozenset[str]] = frozenset()
    rest_book_channels: ClassVar[frozenset[str]] = frozenset({"depth"})
    max_connection_s: ClassVar[float] = 23.5 * 3600
    ping_interval_s: ClassVar[float] = 30.0
    rest_weight_per_minute: ClassVar[float] = 5000.0

    def __init__(self) -> None:
        self.symbols = SymbolMap()
        self._request_id = 0

    # -- symbols and instruments ---------------------------------------------------------

    def native_symbol(self, symbol: str) -> str:
        return self.symbols.native(symbol)

    def instruments_request(self) -> RestRequest | None:
        return RestRequest(url=f"{self.rest_endpoint}/api/v3/exchangeInfo")

    def parse_instruments(self, body: bytes) -> Sequence[Instrument]:
        obj = orjson.loads(body)
        if not isinstance(obj, dict) or not isinstance(obj.get("symbols"), list):
            raise ValueError("exchangeInfo: expected an object with a 'symbols' list")
        out = []
        for item in obj["symbols"]:
            filters = {f.get("filterType"): f for f in item.get("filters", [])}
            tick = filters.get("PRICE_FILTER", {}).get("tickSize")
            lot = filters.get("LOT_SIZE", {}).get("stepSize")
            out.append(
                Instrument(
                    native=item["symbol"],
                    base=item["baseAsset"],
                    quote=item["quoteAsset"],
                    tick_size=Decimal(tick) if tick else None,
                    lot_size=Decimal(lot) if lot else None,
                    status=item.get("status", ""),
                    trading=item.get("status") == "TRADING",
                )
            )
        return out

    def use_instruments(self, instruments: Sequence[Instrument]) -> None:
        for instrument in instruments:
            self.symbols.add(instrument.native, instrument.base, instrument.quote)

    # -- connection ----------------------------------------------------------------------

    def subscribe_messages(
        self, subscription: Subscription, credentials: Credentials | None, now_s: float
    ) -> Sequence[str]:
        channels = subscription.channels or self.default_channels
        params = [
            f"{self.native_symbol(symbol).lower()}@{STREAMS[channel]}"
            for symbol in subscription.symbols
            for channel in channels
            if channel in STREAMS
        ]
        if len(params) > MAX_STREAMS:
            raise ValueError(f"{len(params)} streams: one connection carries at most 1024")
        self._request_id += 1
        message = {"method": "SUBSCRIBE", "params": params, "id": self._request_id}
        return [orjson.dumps(message).decode()]

    def ping_message(self, now_s: float) -> str:
        self._request_id += 1
        return orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": self._request_id}).decode()

    def new_decoder(self) -> BinanceDecoder:
        return BinanceDecoder(self.symbols)

    # -- REST book -----------------------------------------------------------------------

    def book_request(self, symbol: str) -> RestRequest | None:
        return RestRequest(
            url=f"{self.rest_endpoint}/api/v3/depth",
            params={"symbol": self.native_symbol(symbol), "limit": str(DEPTH_LIMIT)},
        )

    def rest_weight(self, request: RestRequest) -> int:
        if request.url.endswith("/api/v3/depth"):
            return depth_weight(int(request.params.get("limit", "100")))
        return 20  # exchangeInfo

    def parse_book(self, symbol: str, body: bytes, ts_ingest: int) -> BookSnapshot:
        try:
            obj: Any = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"depth {symbol}: not JSON: {exc}") from None
        if not isinstance(obj, dict) or type(obj.get("lastUpdateId")) is not int:
            raise ValueError(f"depth {symbol}: expected an object with lastUpdateId")
        try:
            bids, asks = parse_levels(obj["bids"], "bids"), parse_levels(obj["asks"], "asks")
        except (KeyError, ValueError) as exc:
            raise ValueError(f"depth {symbol}: {exc}") from None
        last = obj["lastUpdateId"]
        book = Book(
            product=make_product(EXCHANGE, symbol),
            src_seq=last,
            ts_event=ts_ingest,  # the REST answer carries no exchange time
            ts_ingest=ts_ingest,
            snapshot=True,
            bids=bids,
            asks=asks,
        )
        return BookSnapshot(book=book, src_seq=last)
