"""Kraken feed plugin for LedgerFlux: WebSocket API v2 (entry point ``kraken``), product
prefix ``kraken`` (``kraken:BTC-USD`` for Kraken's ``BTC/USD``, formerly ``XBT/USD``)."""

from ledgerflux_kraken.checksum import kraken_checksum, kraken_checksum_text
from ledgerflux_kraken.decoder import KrakenDecoder
from ledgerflux_kraken.feed import BOOK_DEPTHS, KrakenFeed
from ledgerflux_kraken.instruments import canonical_symbol, native_pair

__all__ = [
    "BOOK_DEPTHS",
    "KrakenDecoder",
    "KrakenFeed",
    "canonical_symbol",
    "kraken_checksum",
    "kraken_checksum_text",
    "native_pair",
]
