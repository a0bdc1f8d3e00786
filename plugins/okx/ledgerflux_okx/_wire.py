"""Field readers for OKX frames (internal).

Every reader returns a checked value or raises :class:`FieldError`, which the decoder turns
into a :class:`~ledgerflux.plugin.DecodeError`; no ``KeyError``, ``ValueError`` or
``InvalidOperation`` escapes on its own. OKX sends every number as a JSON *string*
(``"px": "42219.9"``, ``"ts": "1630048897897"``), which is what keeps prices exact.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from ledgerflux.events import PriceLevel

__all__ = [
    "FieldError",
    "get_decimal",
    "get_dict",
    "get_int",
    "get_list",
    "get_ms_ns",
    "get_str",
    "levels",
    "raw_bytes",
    "to_decimal",
]

_MS = 1_000_000


class FieldError(Exception):
    """A missing field (``missing_field``) or one that does not hold what OKX documents
    (``invalid_field``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _invalid(name: str, value: Any, expected: str) -> FieldError:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return FieldError("invalid_field", f"field {name!r}: expected {expected}, got {text}")


def _get(msg: dict[str, Any], name: str) -> Any:
    try:
        return msg[name]
    except KeyError:
        raise FieldError("missing_field", f"missing field {name!r}") from None


_DECIMALS: dict[str, Decimal] = {}
"""Decimal string → its finite Decimal: book prices and sizes repeat, and a dict hit costs
a fraction of ``Decimal()`` plus ``is_finite()``. Exact (a key keeps its exponent, and a
Decimal is immutable); cleared when it holds :data:`_DECIMALS_MAX` entries."""
_DECIMALS_MAX = 200_000


def to_decimal(value: Any, name: str) -> Decimal:
    """A finite decimal from a decimal *string* (never from a JSON number: no floats)."""
    if type(value) is not str:
        raise _invalid(name, value, "a decimal string")
    cached = _DECIMALS.get(value)
    if cached is not None:
        return cached
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise _invalid(name, value, "a decimal string") from None
    if not result.is_finite():
        raise _invalid(name, value, "a finite decimal")
    if len(_DECIMALS) >= _DECIMALS_MAX:
        _DECIMALS.clear()
    _DECIMALS[value] = result
    return result


def get_decimal(msg: dict[str, Any], name: str) -> Decimal:
    return to_decimal(_get(msg, name), name)


def get_opt_decimal(msg: dict[str, Any], name: str) -> Decimal | None:
    """A decimal string, or None when the field is absent or ``""`` (OKX's "no value")."""
    value = msg.get(name)
    if value is None or value == "":
        return None
    return to_decimal(value, name)


def get_str(msg: dict[str, Any], name: str) -> str:
    value = _get(msg, name)
    if type(value) is not str or not value:
        raise _invalid(name, value, "a non-empty string")
    return value


def get_int(msg: dict[str, Any], name: str) -> int:
    """An integer, sent as a JSON integer (``seqId``) or a digit string (``tradeId``)."""
    value = _get(msg, name)
    if type(value) is int:
        return value
    if type(value) is str and value.lstrip("-").isdigit() and value.isascii():
        return int(value)
    raise _invalid(name, value, "an integer")


def get_ms_ns(msg: dict[str, Any], name: str) -> int:
    """A Unix time in milliseconds (a digit string) as integer nanoseconds."""
    value = _get(msg, name)
    if type(value) is str and value.isdigit() and value.isascii():
        return int(value) * _MS
    raise _invalid(name, value, "Unix milliseconds as a digit string")


def get_list(msg: dict[str, Any], name: str) -> list[Any]:
    value = _get(msg, name)
    if type(value) is not list:
        raise _invalid(name, value, "a list")
    return value


def get_dict(value: Any, name: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _invalid(name, value, "an object")
    return value


def levels(items: list[Any], name: str) -> tuple[PriceLevel, ...]:
    """``[[price, size, "0", orders], ...]`` (OKX's four-element levels) as price levels."""
    out: list[PriceLevel] = []
    cache = _DECIMALS
    for item in items:
        if type(item) is not list or len(item) < 2:
            raise _invalid(name, item, "[price, size, ...]")
        price, size = item[0], item[1]
        # Hits first (the common case on a live book), the checked path otherwise.
        p = cache.get(price) if type(price) is str else None
        s = cache.get(size) if type(size) is str else None
        out.append(
            (
                p if p is not None else to_decimal(price, name),
                s if s is not None else to_decimal(size, name),
            )
        )
    return tuple(out)


def raw_bytes(frame: bytes | str) -> bytes:
    if isinstance(frame, bytes):
        return frame
    return frame.encode("utf-8", "surrogatepass")
