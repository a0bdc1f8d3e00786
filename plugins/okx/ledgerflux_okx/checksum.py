"""OKX's order-book checksum (API v5 ``books`` channel), as a pure function.

OKX documents it like this: take the best 25 bids and the best 25 asks, and build one
string that alternates them, ``bid price:bid size:ask price:ask size:...``, best level
first; where one side has fewer than 25 levels, its missing entries are simply left out
(the other side's levels follow on their own). The CRC32 of that string, read as a
*signed* 32-bit integer, is the ``checksum`` of the push.

Prices and sizes are written exactly as the exchange sent them. A :class:`~decimal.Decimal`
built from the exchange's string keeps its digits and exponent, and ``format(d, "f")``
writes them back unchanged (``"0.0100"`` stays ``"0.0100"``, where ``str()`` could switch
to ``"1.00E-2"`` for small values), so the book's decimals are enough.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from decimal import Decimal

__all__ = ["CHECKSUM_DEPTH", "okx_checksum", "okx_checksum_text"]

CHECKSUM_DEPTH = 25
"""Levels per side that the checksum covers."""

PriceSize = tuple[Decimal, Decimal]


def okx_checksum_text(bids: Sequence[PriceSize], asks: Sequence[PriceSize]) -> str:
    """The string OKX hashes. ``bids`` best (highest) first, ``asks`` best (lowest) first."""
    parts: list[str] = []
    top_bids = bids[:CHECKSUM_DEPTH]
    top_asks = asks[:CHECKSUM_DEPTH]
    for i in range(max(len(top_bids), len(top_asks))):
        if i < len(top_bids):
            price, size = top_bids[i]
            parts.append(f"{price:f}:{size:f}")
        if i < len(top_asks):
            price, size = top_asks[i]
            parts.append(f"{price:f}:{size:f}")
    return ":".join(parts)


def okx_checksum(bids: Sequence[PriceSize], asks: Sequence[PriceSize]) -> int:
    """CRC32 of :func:`okx_checksum_text` as a signed 32-bit integer (what OKX sends)."""
    value = zlib.crc32(okx_checksum_text(bids, asks).encode("ascii"))
    return value - (1 << 32) if value >= 1 << 31 else value
