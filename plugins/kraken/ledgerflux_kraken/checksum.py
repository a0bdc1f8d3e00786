"""Kraken's book checksum (WebSocket API v2 ``book`` channel), as a pure function.

Kraken documents it for the ten best levels of each side, whatever the subscribed depth:
for each of the top 10 asks (lowest price first) write the price with the pair's price
precision and the quantity with its quantity precision, remove the decimal point from
each, remove the leading zeros, and append price then quantity; then the same for the
top 10 bids (highest price first). The CRC32 of asks-string + bids-string, as an
*unsigned* 32-bit integer, is the push's ``checksum``.

The precisions are the pair's ``price_precision`` and ``qty_precision`` (Kraken's
``instrument`` channel). Without them, each value is written with the digits it arrived
with: Kraken pushes prices and quantities with their full precision, and a
:class:`~decimal.Decimal` parsed from the frame's text keeps every digit.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from decimal import Decimal

__all__ = ["CHECKSUM_DEPTH", "format_level_value", "kraken_checksum", "kraken_checksum_text"]

CHECKSUM_DEPTH = 10
"""Levels per side that the checksum covers."""

PriceSize = tuple[Decimal, Decimal]


def format_level_value(value: Decimal, precision: int | None) -> str:
    """One price or quantity as Kraken hashes it: fixed ``precision`` decimals (or the
    value's own), without the decimal point and without leading zeros."""
    if precision is not None:
        value = value.quantize(Decimal(1).scaleb(-precision))
    text = f"{value:f}".replace(".", "").lstrip("0")
    return text


def kraken_checksum_text(
    bids: Sequence[PriceSize],
    asks: Sequence[PriceSize],
    price_precision: int | None = None,
    qty_precision: int | None = None,
) -> str:
    """The string Kraken hashes. ``bids`` best (highest) first, ``asks`` best (lowest) first."""
    parts: list[str] = []
    for side in (asks, bids):
        for price, qty in side[:CHECKSUM_DEPTH]:
            parts.append(format_level_value(price, price_precision))
            parts.append(format_level_value(qty, qty_precision))
    return "".join(parts)


def kraken_checksum(
    bids: Sequence[PriceSize],
    asks: Sequence[PriceSize],
    price_precision: int | None = None,
    qty_precision: int | None = None,
) -> int:
    """CRC32 of :func:`kraken_checksum_text`, unsigned (what Kraken sends)."""
    text = kraken_checksum_text(bids, asks, price_precision, qty_precision)
    return zlib.crc32(text.encode("ascii"))
