"""Binance Spot feed plugin for LedgerFlux: entry point ``binance``, product prefix
``binance`` (``binance:BTC-USDT``). See ``ledgerflux_binance.feed`` for the channels and
``ledgerflux_binance.decoder`` for how each message is read."""

from ledgerflux_binance.decoder import BinanceDecoder, SymbolMap
from ledgerflux_binance.feed import BinanceFeed

__all__ = ["BinanceDecoder", "BinanceFeed", "SymbolMap"]
