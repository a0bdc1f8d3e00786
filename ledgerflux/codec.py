"""The one place where canonical events become wire bytes and back (DESIGN §2).

Wire form: one JSON object per event, ``type`` first, decimals as exact strings, timestamps
as integers (ns). ``encode``/``decode`` use a cattrs converter configured here and orjson.

Decoding is strict: an unknown ``type``, a missing or extra field, a float or non-finite
price, or a non-integer timestamp raises :class:`CodecError` naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import cattrs
import orjson
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn
from cattrs.preconf.orjson import make_converter as _make_orjson_converter

from ledgerflux.events import EVENT_TYPES, Event

__all__ = [
    "CodecError",
    "configure_converter",
    "converter",
    "decode",
    "decode_many",
    "encode",
    "encode_many",
    "from_wire",
    "make_converter",
    "to_wire",
]


class CodecError(ValueError):
    """A wire payload that is not a valid canonical event."""


def _format_decimal(value: Decimal) -> str:
    return format(value, "f")


def _structure_decimal(value: Any, _: type) -> Decimal:
    # Floats are refused on purpose: a float price has already lost its exact value.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CodecError(f"decimal must be a string, got {type(value).__name__}: {value!r}")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise CodecError(f"not a decimal: {value!r}") from None
    if not result.is_finite():
        raise CodecError(f"decimal must be finite: {value!r}")
    return result


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"expected an integer, got {type(value).__name__}: {value!r}")
    return value


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise CodecError(f"expected a string, got {type(value).__name__}: {value!r}")
    return value


def _structure_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise CodecError(f"expected a boolean, got {type(value).__name__}: {value!r}")
    return value


def configure_converter(conv: cattrs.Converter) -> None:
    """Install the LedgerFlux wire rules on ``conv``."""
    # Fixed-point, never exponent form: Decimal("0.00000000") is "0.00000000", not "0E-8",
    # so a client testing a level size against "0" by value or by text sees the same thing.
    conv.register_unstructure_hook(Decimal, _format_decimal)
    conv.register_structure_hook(Decimal, _structure_decimal)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    for wire_type, cls in EVENT_TYPES.items():
        unstructure = make_dict_unstructure_fn(cls, conv)

        def unstructure_with_type(
            event: Any, _inner: Any = unstructure, _type: str = wire_type
        ) -> dict[str, Any]:
            return {"type": _type, **_inner(event)}

        conv.register_unstructure_hook(cls, unstructure_with_type)
        conv.register_structure_hook(
            cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)
        )


def make_converter() -> cattrs.Converter:
    """A fresh converter with the wire rules (orjson preconf underneath)."""
    conv = _make_orjson_converter()
    configure_converter(conv)
    return conv


converter = make_converter()


def to_wire(event: Event) -> dict[str, Any]:
    """Event → plain dict in wire form (``type`` included)."""
    result: dict[str, Any] = converter.unstructure(event, type(event))
    return result


def from_wire(obj: Any) -> Event:
    """Plain dict in wire form → event. Raises :class:`CodecError`."""
    if not isinstance(obj, dict):
        raise CodecError(f"event must be a JSON object, got {type(obj).__name__}")
    body = dict(obj)
    wire_type = body.pop("type", None)
    cls = EVENT_TYPES.get(wire_type) if isinstance(wire_type, str) else None
    if cls is None:
        raise CodecError(f"unknown event type: {wire_type!r}")
    try:
        return converter.structure(body, cls)
    except CodecError:
        raise
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise CodecError(f"invalid {wire_type} event: {_describe(exc)}") from exc


def encode(event: Event) -> bytes:
    """Event → JSON bytes."""
    return orjson.dumps(to_wire(event))


def decode(data: bytes | str) -> Event:
    """JSON bytes → event. Raises :class:`CodecError`."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"not JSON: {exc}") from None
    return from_wire(obj)


def encode_many(events: Iterable[Event]) -> bytes:
    """Several events packed as one JSON array (the gateway's batched frames)."""
    return orjson.dumps([to_wire(e) for e in events])


def decode_many(data: bytes | str) -> list[Event]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"not JSON: {exc}") from None
    if not isinstance(obj, list):
        raise CodecError("expected a JSON array of events")
    return [from_wire(item) for item in obj]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        parts: list[str] = []
        for sub, note in _walk(exc):
            parts.append(f"{note}: {sub}" if note else str(sub))
        return "; ".join(parts) or str(exc)
    return str(exc)


def _walk(exc: cattrs.BaseValidationError) -> Sequence[tuple[BaseException, str]]:
    out: list[tuple[BaseException, str]] = []
    if not isinstance(exc, cattrs.ClassValidationError):
        return [(sub, "") for sub in exc.exceptions]
    with_notes, without = exc.group_exceptions()
    for sub, note in with_notes:
        if isinstance(sub, cattrs.BaseValidationError):
            out.extend(_walk(sub))
        else:
            what = "missing" if isinstance(sub, KeyError) else str(sub)
            out.append((ValueError(what), f"field {note.name!r}"))
    for sub in without:
        if isinstance(sub, cattrs.BaseValidationError):
            out.extend(_walk(sub))
        else:
            out.append((sub, ""))
    return out
