"""One symbol identity: products are ``<exchange>:<BASE-QUOTE>``.

``BASE`` and ``QUOTE`` are the exchange's asset codes in upper case, mapped to the common
code only where the exchange uses a private alias for the *same* asset (Kraken's ``XBT``
is ``BTC``). Different assets are never merged: ``BTC-USDT`` is not ``BTC-USD``. The
exchange's own id (``BTCUSDT``, ``XBT/USD``) lives in the plugin's instrument map
(:class:`ledgerflux.plugin.Instrument`) and in a recording's header (``native_symbols``).
"""

from __future__ import annotations

import re

from ledgerflux.errors import LedgerfluxError

__all__ = ["BadSymbol", "canonical_symbol", "is_canonical", "split_native", "split_symbol"]

_ASSET = re.compile(r"[A-Z0-9]{1,20}")


class BadSymbol(LedgerfluxError, ValueError):
    """Not a canonical ``BASE-QUOTE`` symbol (or not splittable into one)."""


def canonical_symbol(base: str, quote: str) -> str:
    """``canonical_symbol("btc", "usdt") == "BTC-USDT"``. Raises :class:`BadSymbol`."""
    b, q = base.strip().upper(), quote.strip().upper()
    if not _ASSET.fullmatch(b) or not _ASSET.fullmatch(q):
        raise BadSymbol(f"not an asset pair: {base!r}/{quote!r}")
    return f"{b}-{q}"


def is_canonical(symbol: str) -> bool:
    base, dash, quote = symbol.partition("-")
    return bool(dash) and bool(_ASSET.fullmatch(base)) and bool(_ASSET.fullmatch(quote))


def split_symbol(symbol: str) -> tuple[str, str]:
    """``("BTC", "USDT")`` for ``BTC-USDT``. Raises :class:`BadSymbol`."""
    if not is_canonical(symbol):
        raise BadSymbol(f"{symbol!r} is not a canonical BASE-QUOTE symbol")
    base, _, quote = symbol.partition("-")
    return base, quote


def split_native(native: str, quotes: tuple[str, ...]) -> tuple[str, str] | None:
    """Split a concatenated id (``BTCUSDT``) by the longest known quote asset at its end;
    None when none fits. Only a fallback: an instruments endpoint says it exactly."""
    upper = native.upper()
    for quote in sorted(quotes, key=len, reverse=True):
        if upper.endswith(quote) and len(upper) > len(quote):
            return upper[: -len(quote)], quote
    return None
