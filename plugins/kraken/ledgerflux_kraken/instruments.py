"""Kraken pair names and LedgerFlux's canonical symbols.

LedgerFlux names a product ``<exchange>:<BASE-QUOTE>``; Kraken's WebSocket v2 names pairs
``BASE/QUOTE`` (``BTC/USD``). Older Kraken names (``XBT``, ``XDG``, still used by its REST
API and v1 feed) are mapped to the common codes, so ``XBT/USD`` is ``kraken:BTC-USD`` too.
``USDT`` stays ``USDT``: it is not ``USD``.

:data:`PRECISIONS` holds the price and quantity precisions of the pairs the project's
recordings use (Kraken's ``instrument`` channel gives them for every pair, and a decoder
that sees it uses those instead).
"""

from __future__ import annotations

__all__ = ["ALIASES", "PRECISIONS", "canonical_symbol", "native_pair"]

ALIASES: dict[str, str] = {"XBT": "BTC", "XDG": "DOGE"}
"""Kraken's legacy asset codes → the common ones."""

PRECISIONS: dict[str, tuple[int, int]] = {
    "BTC/USD": (1, 8),
    "ETH/USD": (2, 8),
    "BTC/EUR": (1, 8),
    "ETH/BTC": (5, 8),
    "SOL/USD": (2, 8),
    "BTC/USDT": (1, 8),
}
"""Pair → (price_precision, qty_precision), as Kraken's instrument channel reports them."""


def _code(text: str) -> bool:
    return bool(text) and text.isalnum() and text.upper() == text


def canonical_symbol(pair: str) -> str | None:
    """``BTC/USD`` (or ``XBT/USD``) → ``BTC-USD``; None for anything that is not a pair."""
    base, sep, quote = pair.partition("/")
    if not sep or not _code(base) or not _code(quote):
        return None
    return f"{ALIASES.get(base, base)}-{ALIASES.get(quote, quote)}"


def native_pair(symbol: str) -> str:
    """Canonical ``BTC-USD`` → Kraken v2 ``BTC/USD``. Raises ``ValueError``."""
    base, sep, quote = symbol.partition("-")
    if not sep or not _code(base) or not _code(quote):
        raise ValueError(f"not a canonical BASE-QUOTE symbol: {symbol!r}")
    return f"{base}/{quote}"
