"""The OKX feed plugins: ``okx`` (public endpoint) and ``okx-candles`` (business endpoint).

OKX serves its public market data on two WebSocket endpoints: ``/ws/v5/public`` carries
``books``, ``bbo-tbt``, ``tickers`` and ``trades``; the candle channels moved to
``/ws/v5/business``. A LedgerFlux plugin has one endpoint, so there are two plugins over one
decoder (:class:`~ledgerflux_okx.decoder.OkxDecoder`), both with the product prefix
``okx``.

Subscribing: one ``{"op": "subscribe", "args": [{"channel", "instId"}, ...]}`` message for
everything (OKX answers each argument with its own ``subscribe`` event). OKX closes a
connection that receives nothing for 30 seconds; the client keeps it open with the text
``ping`` (answered by ``pong``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

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
from ledgerflux_okx.checksum import okx_checksum
from ledgerflux_okx.decoder import EXCHANGE, OkxDecoder
from ledgerflux_okx.instruments import native_id

__all__ = ["OkxCandlesFeed", "OkxFeed"]

PUBLIC_WS = "wss://ws.okx.com:8443/ws/v5/public"
BUSINESS_WS = "wss://ws.okx.com:8443/ws/v5/business"
REST = "https://www.okx.com"


class OkxFeed:
    """OKX public market data: ``books`` (400 levels, checksummed), ``bbo-tbt``,
    ``tickers``, ``trades``."""

    name: ClassVar[str] = "okx"
    exchange: ClassVar[str] = EXCHANGE
    endpoint: ClassVar[str] = PUBLIC_WS
    rest_endpoint: ClassVar[str | None] = None
    channels: ClassVar[tuple[str, ...]] = ("books", "trades", "tickers", "bbo-tbt")
    default_channels: ClassVar[tuple[str, ...]] = ("books", "trades", "tickers")
    sequence_model: ClassVar[SequenceModel] = SequenceModel.PER_PRODUCT
    """The books' seqId chain, judged by the decoder and reported as chain positions."""
    resync_mode: ClassVar[ResyncMode] = ResyncMode.RESUBSCRIBE
    subscribe_deadline_s: ClassVar[float] = 25.0
    stale_after_s: ClassVar[float] = 35.0
    """With a ``ping`` every :attr:`ping_interval_s` answered by ``pong``, a connection
    without any frame for this long is dead."""
    ping_interval_s: ClassVar[float] = 20.0
    """OKX closes a connection that receives nothing for 30 seconds."""
    rest_rate_limit_per_s: ClassVar[float] = 0.0
    needs_credentials: ClassVar[frozenset[str]] = frozenset()

    def subscribe_messages(
        self, subscription: Subscription, credentials: Credentials | None, now_s: float
    ) -> Sequence[str]:
        channels = subscription.channels or self.default_channels
        args = [
            {"channel": channel, "instId": native_id(symbol)}
            for channel in channels
            for symbol in subscription.symbols
        ]
        return [orjson.dumps({"op": "subscribe", "args": args}).decode()]

    def resubscribe_messages(self, symbol: str) -> Sequence[str]:
        """Unsubscribe and subscribe ``symbol``'s ``books`` again on the same connection:
        OKX then sends a fresh snapshot of that book only."""
        arg = {"channel": "books", "instId": native_id(symbol)}
        return [
            orjson.dumps({"op": "unsubscribe", "args": [arg]}).decode(),
            orjson.dumps({"op": "subscribe", "args": [arg]}).decode(),
        ]

    def book_checksum(self, bids: Sequence[PriceLevel], asks: Sequence[PriceLevel]) -> int:
        """OKX's ``books`` checksum of the runtime's copy of a book."""
        return okx_checksum(bids, asks)

    def ping_message(self, now_s: float) -> str:
        return "ping"

    def native_symbol(self, symbol: str) -> str:
        return native_id(symbol)

    def new_decoder(self) -> FeedDecoder:
        return OkxDecoder()

    def book_request(self, symbol: str) -> RestRequest | None:
        return None

    def parse_book(self, symbol: str, body: bytes, ts_ingest: int) -> BookSnapshot:
        raise ValueError("the okx plugin resyncs by resubscribing (the books snapshot)")


class OkxCandlesFeed(OkxFeed):
    """OKX one-minute candles (``candle1m``) from the business endpoint."""

    name: ClassVar[str] = "okx-candles"
    endpoint: ClassVar[str] = BUSINESS_WS
    channels: ClassVar[tuple[str, ...]] = ("candle1m",)
    default_channels: ClassVar[tuple[str, ...]] = ("candle1m",)
