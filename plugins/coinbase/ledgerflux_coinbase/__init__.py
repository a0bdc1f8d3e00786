"""Coinbase feed plugins for LedgerFlux: the Exchange feed (entry point ``coinbase``) and
Advanced Trade (``coinbase-advanced``). Both use the product prefix ``coinbase``."""

from ledgerflux_coinbase._fields import parse_iso_ns
from ledgerflux_coinbase.advanced import AdvancedDecoder, CoinbaseAdvancedFeed
from ledgerflux_coinbase.capture import (
    CaptureFormatError,
    CaptureFrame,
    parse_capture_line,
    read_capture,
)
from ledgerflux_coinbase.exchange import CoinbaseExchangeFeed, ExchangeDecoder, sign_subscribe

__all__ = [
    "AdvancedDecoder",
    "CaptureFormatError",
    "CaptureFrame",
    "CoinbaseAdvancedFeed",
    "CoinbaseExchangeFeed",
    "ExchangeDecoder",
    "parse_capture_line",
    "parse_iso_ns",
    "read_capture",
    "sign_subscribe",
]
