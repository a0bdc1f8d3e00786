"""The Kraken feed plugin (WebSocket API v2, entry point ``kraken``).

Kraken v2 takes one channel per subscribe message:
``{"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10,
"snapshot": true}, "req_id": 1}``. The plugin's channel names are Kraken's, with the book
depth in the name: ``book`` is depth 10 (Kraken's default), ``book-25``, ``book-100``,
``book-500`` and ``book-1000`` the deeper ones. ``ohlc`` is subscribed with
``interval: 1`` (one minute). ``instrument`` gives every pair's price and quantity
precision, which the book checksum needs; it is a default channel for that reason.

Kraken v2 has no sequence numbers: gaps show up only through the book checksum, and a
mismatch resubscribes that pair's book (:meth:`KrakenFeed.resubscribe_messages`). Kraken
sends a ``heartbeat`` every second on a subscribed connection; the client may also
``ping``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from ledgerflux.events import PriceLevel
from ledgerflux.plugin import (
    BookSnapshot,
    Credentials,
    FeedDecoder,
    RestRequest,
    ResyncMode,
    SequenceModel,
    Subscription,
)
from ledgerflux_kraken.checksum import kraken_checksum
from ledgerflux_kraken.decoder import DEFAULT_DEPTH, EXCHANGE, KrakenDecoder
from ledgerflux_kraken.instruments import native_pair

__all__ = ["BOOK_DEPTHS", "KrakenFeed"]

WS = "wss://ws.kraken.com/v2"
BOOK_DEPTHS: dict[str, int] = {
    "book": DEFAULT_DEPTH,
    "book-25": 25,
    "book-100": 100,
    "book-500": 500,
    "book-1000": 1000,
}
"""Book channel name → the depth subscribed."""


class KrakenFeed:
    """Kraken spot market data: ``book`` (checksummed, depth 10 to 1000), ``trade``,
    ``ticker``, ``ohlc`` (1 minute), ``instrument``."""

    name: ClassVar[str] = "kraken"
    exchange: ClassVar[str] = EXCHANGE
    endpoint: ClassVar[str] = WS
    rest_endpoint: ClassVar[str | None] = None
    channels: ClassVar[tuple[str, ...]] = (
        "instrument",
        *BOOK_DEPTHS,
        "trade",
        "ticker",
        "ohlc",
    )
    default_channels: ClassVar[tuple[str, ...]] = ("instrument", "book", "trade", "ticker")
    sequence_model: ClassVar[SequenceModel] = SequenceModel.NONE
    resync_mode: ClassVar[ResyncMode] = ResyncMode.RESUBSCRIBE
    subscribe_deadline_s: ClassVar[float] = 10.0
    stale_after_s: ClassVar[float] = 10.0
    """Kraken sends a heartbeat every second; ten seconds without a frame is a dead link."""
    ping_interval_s: ClassVar[float] = 30.0
    rest_rate_limit_per_s: ClassVar[float] = 0.0
    needs_credentials: ClassVar[frozenset[str]] = frozenset()

    def subscribe_messages(
        self, subscription: Subscription, credentials: Credentials | None, now_s: float
    ) -> Sequence[str]:
        pairs = [native_pair(symbol) for symbol in subscription.symbols]
        messages: list[str] = []
        for req_id, channel in enumerate(subscription.channels or self.default_channels, 1):
            params: dict[str, Any]
            if channel == "instrument":
                params = {"channel": "instrument", "snapshot": True}
            elif channel in BOOK_DEPTHS:
                params = {
                    "channel": "book",
                    "symbol": pairs,
                    "depth": BOOK_DEPTHS[channel],
                    "snapshot": True,
                }
            elif channel == "ohlc":
                params = {"channel": "ohlc", "symbol": pairs, "interval": 1, "snapshot": False}
            else:
                params = {"channel": channel, "symbol": pairs}
            message = {"method": "subscribe", "params": params, "req_id": req_id}
            messages.append(orjson.dumps(message).decode())
        return messages

    def resubscribe_messages(self, symbol: str, depth: int = DEFAULT_DEPTH) -> Sequence[str]:
        """Unsubscribe and subscribe ``symbol``'s book again on the same connection: Kraken
        then sends a fresh snapshot of that book only."""
        pair = native_pair(symbol)
        unsubscribe = {"channel": "book", "symbol": [pair], "depth": depth}
        subscribe = {**unsubscribe, "snapshot": True}
        return [
            orjson.dumps({"method": "unsubscribe", "params": unsubscribe}).decode(),
            orjson.dumps({"method": "subscribe", "params": subscribe}).decode(),
        ]

    def ping_message(self, now_s: float) -> str:
        """Kraken's application-level ping (answered by ``{"method": "pong"}``)."""
        return orjson.dumps({"method": "ping", "req_id": int(now_s)}).decode()

    def book_checksum(self, bids: Sequence[PriceLevel], asks: Sequence[PriceLevel]) -> int:
        """Kraken's book checksum of the runtime's copy of a book (the decoder writes every
        price and quantity with the pair's precision)."""
        return kraken_checksum(bids, asks)

    def native_symbol(self, symbol: str) -> str:
        return native_pair(symbol)

    def new_decoder(self) -> FeedDecoder:
        return KrakenDecoder()

    def book_request(self, symbol: str) -> RestRequest | None:
        return None

    def parse_book(self, symbol: str, body: bytes, ts_ingest: int) -> BookSnapshot:
        raise ValueError("the kraken plugin resyncs by resubscribing (the book snapshot)")
