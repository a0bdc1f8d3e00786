"""Field readers shared by both Coinbase decoders (internal).

Every reader either returns a checked value or raises :class:`FieldError`, which the
decoders turn into a :class:`~ledgerflux.plugin.DecodeError`; nothing here lets a
``KeyError`` or ``InvalidOperation`` escape on its own.

These run on the hot path, so they are plain functions over the dicts ``orjson`` returns:
no attrs validators, no regular expressions.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from ledgerflux.events import PriceLevel

__all__ = [
    "DECIMALS",
    "FieldError",
    "clear_caches",
    "get_decimal",
    "get_dict",
    "get_int",
    "get_list",
    "get_opt_decimal",
    "get_str",
    "get_time_ns",
    "level",
    "lookup",
    "new_decimal",
    "parse_iso_ns",
    "raw_bytes",
    "to_decimal",
]


_T = TypeVar("_T")


def lookup(table: Mapping[str, _T], key: Any) -> _T | None:
    """``table[key]`` for a string key, else None (a JSON list or object is unhashable)."""
    return table.get(key) if type(key) is str else None


class FieldError(Exception):
    """A field that is missing or does not hold what the exchange documents.

    ``reason`` is the :class:`~ledgerflux.plugin.DecodeError` reason: ``missing_field`` or
    ``invalid_field``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _missing(name: str) -> FieldError:
    return FieldError("missing_field", f"missing field {name!r}")


def _invalid(name: str, value: Any, expected: str) -> FieldError:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return FieldError("invalid_field", f"field {name!r}: expected {expected}, got {text}")


DECIMALS: dict[str, Decimal] = {}
"""Exact decimal string → its finite :class:`Decimal`, shared by every decoder.

Why: book prices repeat (the same levels change again and again), and a dict hit costs a
fraction of ``Decimal()`` plus ``is_finite()``. The optimistic frame readers look prices up
here but parse sizes directly: sizes repeat far less, and a miss costs more than no cache
(measured with ``ledgerflux bench decode``). Decimals
are immutable, and a key keeps its exponent (``"1.50"`` and ``"1.5"`` are different keys),
so sharing one is exact. Only finite values built from ``str`` keys are ever stored, so a
hit needs no further check. Bounded: cleared when full (memory policy: at most
``DECIMALS_MAX`` entries, a few MB)."""
DECIMALS_MAX = 32_768


def new_decimal(value: Any) -> Decimal:
    """A cache miss of :data:`DECIMALS`: parse, check, remember.

    Raises TypeError (not a string), InvalidOperation or ValueError (not finite): the
    optimistic readers catch those and fall back to the field-by-field ones.
    """
    if type(value) is not str:
        raise TypeError("not a string")
    result = Decimal(value)
    if not result.is_finite():
        raise ValueError("not finite")
    if len(DECIMALS) >= DECIMALS_MAX:
        DECIMALS.clear()
    DECIMALS[value] = result
    return result


def clear_caches() -> None:
    """Forget every cached decimal and second (the benchmark starts each pass cold)."""
    DECIMALS.clear()
    _SECONDS_CACHE.clear()


def to_decimal(value: Any, name: str) -> Decimal:
    """A decimal from an exact string. Floats are refused: they have lost the exact value."""
    if type(value) is not str:
        raise _invalid(name, value, "a decimal string")
    result = DECIMALS.get(value)
    if result is not None:
        return result
    try:
        return new_decimal(value)
    except InvalidOperation:
        raise _invalid(name, value, "a decimal string") from None
    except ValueError:
        raise _invalid(name, value, "a finite decimal") from None


def get_decimal(msg: dict[str, Any], name: str) -> Decimal:
    value = msg.get(name)
    if value is None:
        raise _missing(name)
    return to_decimal(value, name)


def get_opt_decimal(msg: dict[str, Any], name: str) -> Decimal | None:
    """``None`` when absent, null or ``""`` (Coinbase sends all three for "no value")."""
    value = msg.get(name)
    if value is None or value == "":
        return None
    return to_decimal(value, name)


def get_str(msg: dict[str, Any], name: str) -> str:
    value = msg.get(name)
    if value is None:
        raise _missing(name)
    if type(value) is not str or not value:
        raise _invalid(name, value, "a non-empty string")
    return value


def get_int(msg: dict[str, Any], name: str) -> int:
    value = msg.get(name)
    if value is None:
        raise _missing(name)
    # bool is an int subclass; `type(...) is int` keeps true/false out.
    if type(value) is not int:
        raise _invalid(name, value, "an integer")
    return value


def get_list(msg: dict[str, Any], name: str) -> list[Any]:
    value = msg.get(name)
    if value is None:
        raise _missing(name)
    if type(value) is not list:
        raise _invalid(name, value, "a list")
    return value


def get_dict(value: Any, name: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _invalid(name, value, "an object")
    return value


def get_time_ns(msg: dict[str, Any], name: str) -> int:
    value = msg.get(name)
    if value is None:
        raise _missing(name)
    if type(value) is not str:
        raise _invalid(name, value, "an RFC 3339 timestamp")
    try:
        return parse_iso_ns(value)
    except ValueError:
        raise _invalid(name, value, "an RFC 3339 timestamp") from None


def level(item: Any, name: str) -> PriceLevel:
    """``[price, size, ...]`` → ``(Decimal, Decimal)``; extra elements (order counts) ignored."""
    if type(item) is not list or len(item) < 2:
        raise _invalid(name, item, "[price, size]")
    return (to_decimal(item[0], name), to_decimal(item[1], name))


_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
_NS_PER_S = 1_000_000_000


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (no datetime, no float)."""
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= month <= 12:
        raise ValueError("month out of range")
    month_days = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]
    if not 1 <= day <= month_days:
        raise ValueError("day out of range")
    y = year - 1
    days_before_year = y * 365 + y // 4 - y // 100 + y // 400
    doy = _DAYS_BEFORE_MONTH[month - 1] + day - 1 + (1 if leap and month > 2 else 0)
    # 719162 = days from 0001-01-01 to 1970-01-01.
    return days_before_year + doy - 719_162


def _digits(text: str, start: int, end: int) -> int:
    part = text[start:end]
    # str.isdigit() accepts non-ASCII digits such as "²"; int() would then fail or differ.
    if len(part) != end - start or not part.isascii() or not part.isdigit():
        raise ValueError(f"expected digits at {start}")
    return int(part)


_FRACTION_SCALE = (0, 10**8, 10**7, 10**6, 10**5, 10**4, 10**3, 10**2, 10, 1)
_SECONDS_CACHE: dict[str, int] = {}
_SECONDS_CACHE_MAX = 4096


def _prefix_seconds(text: str) -> int:
    """Seconds since the epoch of ``YYYY-MM-DDTHH:MM:SS`` (the first 19 characters)."""
    if len(text) < 20 or text[4] != "-" or text[7] != "-" or text[13] != ":":
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    if text[10] not in "Tt " or text[16] != ":":
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    days = _days_from_civil(_digits(text, 0, 4), _digits(text, 5, 7), _digits(text, 8, 10))
    hour, minute, second = _digits(text, 11, 13), _digits(text, 14, 16), _digits(text, 17, 19)
    # 60 is a leap second; Coinbase never sends one, but RFC 3339 allows it.
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError(f"time out of range: {text!r}")
    return days * 86_400 + hour * 3600 + minute * 60 + second


def parse_iso_ns(text: str) -> int:
    """``"2023-02-09T20:32:50.714964855Z"`` → ns since the Unix epoch, exactly. Raises
    ValueError.

    Hot path: the second (first 19 characters) is almost always cached already and the
    form is almost always ``.<digits>Z``; that case is read here in a few operations.
    Anything else goes to :func:`_parse_iso_ns`, which accepts the same strings.
    """
    seconds = _SECONDS_CACHE.get(text[:19])
    if seconds is not None:
        # A hit means text is a str of >= 19 characters; 1 to 9 digits make 21..29.
        n = len(text)
        if 21 < n < 31 and text[19] == "." and text[n - 1] == "Z":
            digits = text[20 : n - 1]
            # isdigit() alone accepts non-ASCII digits; int() would accept "_" and "+".
            if digits.isdigit() and digits.isascii():
                return seconds * _NS_PER_S + int(digits) * _FRACTION_SCALE[n - 21]
    return _parse_iso_ns(text)


def _parse_iso_ns(text: str) -> int:
    """:func:`parse_iso_ns` in full: every accepted form, each part checked.

    Accepts 0 to 9 fractional digits (Exchange sends 6, Advanced Trade up to 9), a ``T`` or
    a space between date and time, and ``Z`` or a ``±HH:MM`` offset. Raises ValueError.
    Parsed by hand because ``datetime`` stops at microseconds and float seconds round.

    Hot path: consecutive frames share their first 19 characters (the same second), so
    those are parsed once and cached; only the fraction is parsed per call.
    """
    prefix = text[:19]
    seconds = _SECONDS_CACHE.get(prefix)
    if seconds is None:
        seconds = _prefix_seconds(text)
        if len(_SECONDS_CACHE) >= _SECONDS_CACHE_MAX:
            _SECONDS_CACHE.clear()  # bounded: a long run must not grow it forever
        _SECONDS_CACHE[prefix] = seconds
    tail = text[19:]
    if tail[-1:] in ("Z", "z"):
        offset_s = 0
        fraction = tail[:-1]
    elif len(tail) >= 6 and tail[-6] in "+-" and tail[-3] == ":":
        offset_s = (
            _digits(tail, len(tail) - 5, len(tail) - 3) * 60
            + _digits(tail, len(tail) - 2, len(tail))
        ) * 60
        if tail[-6] == "+":
            offset_s = -offset_s
        fraction = tail[:-6]
    else:
        raise ValueError(f"expected 'Z' or an offset: {text!r}")
    frac_ns = 0
    if fraction:
        digits = fraction[1:]
        # isdigit() alone accepts non-ASCII digits; int() would accept "_" and spaces.
        if (
            fraction[0] != "."
            or not 1 <= len(digits) <= 9
            or not digits.isascii()
            or not digits.isdigit()
        ):
            raise ValueError(f"1 to 9 fractional digits expected: {text!r}")
        frac_ns = int(digits) * _FRACTION_SCALE[len(digits)]
    return (seconds + offset_s) * _NS_PER_S + frac_ns


def raw_bytes(raw: bytes | str) -> bytes:
    """The whole frame as bytes for a DLQ entry (kept whole so it can be replayed)."""
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogatepass")
    return bytes(raw)
