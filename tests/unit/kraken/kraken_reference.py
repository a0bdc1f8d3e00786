"""An independent Kraken v2 ``book`` checksum, written from Kraken's documentation alone
(not a test module; it shares no code with the plugin).

The documentation's steps: for each of the top 10 ask price levels, sorted by price low to
high, remove ``.`` from the price (``"45285.2"`` → ``"452852"``), remove leading zeros,
remove ``.`` from the qty (``"0.00100000"`` → ``"000100000"``), remove leading zeros
(→ ``"100000"``), and append price then qty to the asks string; build the bids string the
same way from the top 10 bids sorted high to low; concatenate asks + bids and take the
CRC32, an unsigned 32-bit integer. Values are formatted with the pair's price and qty
precision (from the instrument channel) before the digits are taken.

Levels are ``(price, qty)`` strings already written with those precisions.
"""

from __future__ import annotations

import binascii


def _strip(text: str) -> str:
    text = text.replace(".", "")
    while text.startswith("0"):
        text = text[1:]
    return text


def fixed(value: str, places: int) -> str:
    """``value`` (a decimal string) with exactly ``places`` decimals, by string padding."""
    whole, _, frac = value.partition(".")
    frac = (frac + "0" * places)[:places]
    return whole + ("." + frac if places else "")


def checksum(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """``asks`` low to high, ``bids`` high to low, each level's strings at the pair's
    precision."""
    asks_string = "".join(_strip(price) + _strip(qty) for price, qty in asks[:10])
    bids_string = "".join(_strip(price) + _strip(qty) for price, qty in bids[:10])
    return binascii.crc32((asks_string + bids_string).encode()) & 0xFFFFFFFF
