"""OKX feed plugins for LedgerFlux: API v5 public data (entry point ``okx``) and one-minute
candles from the business endpoint (``okx-candles``). Product prefix ``okx``."""

from ledgerflux_okx.checksum import okx_checksum, okx_checksum_text
from ledgerflux_okx.decoder import OkxDecoder
from ledgerflux_okx.feed import OkxCandlesFeed, OkxFeed
from ledgerflux_okx.instruments import canonical_symbol, native_id

__all__ = [
    "OkxCandlesFeed",
    "OkxDecoder",
    "OkxFeed",
    "canonical_symbol",
    "native_id",
    "okx_checksum",
    "okx_checksum_text",
]
