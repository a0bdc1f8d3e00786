"""JetStream subject names, stream names and sharding (docs/architecture.md)."""

from __future__ import annotations

import re
import zlib

__all__ = [
    "DLQ_STREAM",
    "MD_STREAM",
    "TICKS_STREAM",
    "dlq_subject",
    "md_msg_id",
    "md_subject",
    "shard_of",
    "split_product",
    "subject_token",
    "ticks_msg_id",
    "ticks_subject",
]

TICKS_STREAM = "LF_TICKS"
MD_STREAM = "LF_MD"
DLQ_STREAM = "LF_DLQ"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def subject_token(text: str) -> str:
    """A subject token: every character outside ``[A-Za-z0-9_-]`` becomes ``_``."""
    return _UNSAFE.sub("_", text) or "_"


def split_product(product: str) -> tuple[str, str]:
    """``"coinbase:BTC-USD"`` → ``("coinbase", "BTC-USD")``. Raises ValueError if malformed."""
    exchange, sep, symbol = product.partition(":")
    if not sep or not exchange or not symbol:
        raise ValueError(f"product must be '<exchange>:<SYMBOL>', got {product!r}")
    return exchange, symbol


def shard_of(product: str, shards: int) -> int:
    """``zlib.crc32`` of the UTF-8 product id modulo ``shards`` (stable across processes,
    unlike Python's salted ``hash()``)."""
    return zlib.crc32(product.encode()) % shards


def ticks_subject(product: str, shards: int) -> str:
    exchange, symbol = split_product(product)
    return f"lf.ticks.{shard_of(product, shards)}.{subject_token(exchange)}.{subject_token(symbol)}"


def md_subject(product: str) -> str:
    exchange, symbol = split_product(product)
    return f"lf.md.{subject_token(exchange)}.{subject_token(symbol)}"


def dlq_subject(product: str | None) -> str:
    if product is None:
        return "lf.dlq._._"
    exchange, symbol = split_product(product)
    return f"lf.dlq.{subject_token(exchange)}.{subject_token(symbol)}"


def ticks_msg_id(product: str, src_seq: int) -> str:
    return f"{product}:{src_seq}"


def md_msg_id(product: str, epoch: str, seq: int) -> str:
    return f"{product}:{epoch}:{seq}"
