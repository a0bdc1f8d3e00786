"""OKX instrument ids and LedgerFlux's canonical symbols.

LedgerFlux names a product ``<exchange>:<BASE-QUOTE>``. OKX spot instrument ids already
have that form (``BTC-USDT``, ``ETH-USDC``), so the canonical symbol *is* the native id for
spot; this module is the one place that says so, and refuses anything else (``BTC-USDT-SWAP``
and other derivatives are not spot pairs). ``USDT`` stays ``USDT``: it is not ``USD``.
"""

from __future__ import annotations

__all__ = ["canonical_symbol", "native_id"]


def _spot(text: str) -> bool:
    base, sep, quote = text.partition("-")
    return bool(sep) and base.isalnum() and quote.isalnum() and text.isupper()


def native_id(symbol: str) -> str:
    """The OKX ``instId`` of canonical ``BASE-QUOTE``. Raises ``ValueError``."""
    if not _spot(symbol):
        raise ValueError(f"not a canonical BASE-QUOTE spot symbol: {symbol!r}")
    return symbol


def canonical_symbol(inst_id: str) -> str | None:
    """The canonical symbol of an OKX spot ``instId``, or None for anything else."""
    return inst_id if _spot(inst_id) else None
