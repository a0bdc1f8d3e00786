"""An independent OKX ``books`` checksum, written from OKX's documentation alone (not a
test module; it shares no code with the plugin).

The documentation's wording, step by step: "When the bid and ask depth data exceeds 25
levels, each of them will intercept 25 levels of data, and the string to be checked is
queued in a way that the bid and ask depth data are alternately arranged, such as
``bid[price:size]:ask[price:size]:bid[price:size]:ask[price:size]...``. When the bid or ask
depth data is less than 25 levels, the missing depth data will be ignored, such as
``bid[price:size]:ask[price:size]:asks[price:size]:asks[price:size]...``." The result of
CRC32 is a 32-bit *signed* integer. Its example: bids ``3366.1/7`` and ``3366/6``, asks
``3366.8/9`` and ``3368/8`` give the string ``3366.1:7:3366.8:9:3366:6:3368:8``.

Levels are the exchange's own strings here (``[["3366.1", "7"], ...]``, best first).
"""

from __future__ import annotations

import binascii
import struct


def check_string(bids: list[list[str]], asks: list[list[str]]) -> str:
    bids, asks = bids[:25], asks[:25]
    pieces: list[str] = []
    index = 0
    while index < len(bids) or index < len(asks):
        if index < len(bids):
            pieces.append(bids[index][0] + ":" + bids[index][1])
        if index < len(asks):
            pieces.append(asks[index][0] + ":" + asks[index][1])
        index += 1
    return ":".join(pieces)


def checksum(bids: list[list[str]], asks: list[list[str]]) -> int:
    unsigned = binascii.crc32(check_string(bids, asks).encode("utf-8")) & 0xFFFFFFFF
    (signed,) = struct.unpack("<i", struct.pack("<I", unsigned))
    return int(signed)
