"""The one place where canonical events become wire bytes and back (docs/protocol.md).

Wire form: one JSON object per event, ``type`` first, decimals as exact strings, timestamps
as integers (ns). The rules are those of the cattrs converter configured here
(:func:`make_converter`); orjson writes and reads the JSON.

Decoding is strict: an unknown ``type``, a missing or extra field, a float or non-finite
price, or a non-integer timestamp raises :class:`CodecError` naming what is wrong.

Speed. Every event crosses this module several times (ingestor → normalizer → snapshotter /
gateway), and the generic cattrs hooks were the largest per-event cost of the pipeline. So
each event class also gets a pair of *fast* functions, generated at import from
``attrs.fields`` (like ``cattrs.gen``, but specialised to the handful of field types events
use): the unstructure one builds the wire dict in one expression; the structure one reads
exactly the known keys, converts with exact type checks and fills the slots directly.
The fast structure path only ever *accepts* what the cattrs path accepts, with the same
result; on anything unusual (a missing, extra or defaulted key, a wrong type, a bad decimal,
a ``str`` subclass) it gives up and the cattrs path decides, so errors and their messages
are the converter's, unchanged. ``tests/unit/test_codec.py`` checks that both paths agree.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn
from cattrs.preconf.orjson import make_converter as _make_orjson_converter

from ledgerflux._slots import new_instance, plain_init, slot_setter
from ledgerflux.events import EVENT_TYPES, Book, Event, PriceLevel, parts_problem

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


_SPARSE: dict[type, tuple[str, ...]] = {Book: ("part", "parts")}
"""Trailing fields written only when one of them differs from its default, all together.
A whole book (``part=0, parts=1``) is written without ``part``/``parts``, so a book's wire
form is what it was before parted snapshots existed; a parted one carries both keys."""


def _sparse_defaults(cls: type) -> dict[str, Any]:
    names = _SPARSE.get(cls, ())
    defaults = {f.name: f.default for f in attrs.fields(cls) if f.name in names}
    trailing = [f.name for f in attrs.fields(cls)][-len(names) :] if names else []
    assert list(defaults) == list(names) == trailing, "sparse fields must be the last ones"
    return defaults


def _check_book(book: Book) -> Book:
    problem = parts_problem(book)
    if problem is not None:
        raise CodecError(f"invalid book event: {problem}")
    return book


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
        sparse = _sparse_defaults(cls)

        def unstructure_with_type(
            event: Any,
            _inner: Any = unstructure,
            _type: str = wire_type,
            _sparse: dict[str, Any] = sparse,
        ) -> dict[str, Any]:
            wire = {"type": _type, **_inner(event)}
            if all(wire[name] == default for name, default in _sparse.items()):
                for name in _sparse:
                    del wire[name]
            return wire

        conv.register_unstructure_hook(cls, unstructure_with_type)
        structure = make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)
        if cls is Book:

            def structure_book(obj: Any, cls: type, _inner: Any = structure) -> Book:
                return _check_book(_inner(obj, cls))

            conv.register_structure_hook(cls, structure_book)
        else:
            conv.register_structure_hook(cls, structure)


def make_converter() -> cattrs.Converter:
    """A fresh converter with the wire rules (orjson preconf underneath)."""
    conv = _make_orjson_converter()
    configure_converter(conv)
    return conv


converter = make_converter()


# --- fast paths -------------------------------------------------------------------------


class _Slow(Exception):
    """The fast structure path does not handle this payload: the cattrs path decides."""


def _fmt(value: Decimal) -> str:
    # Same text as format(value, "f") (what the converter writes), at a third of the cost:
    # str() is fixed-point unless the exponent is positive or the number is tiny, and then
    # its text has an exponent marker ("E", or "e" under a context with capitals=0).
    text = str(value)
    if "E" in text or "e" in text:
        return format(value, "f")
    return text


DECIMAL_CACHE_SIZE = 16_384
"""Wire decimal texts remembered by the fast decode path. Prices and sizes repeat a lot
(the same levels move up and down, sizes are round), and a dict hit costs a fraction of
``Decimal(text)``. Policy when full: forget everything and refill, so memory is bounded by
this many entries of at most :data:`DECIMAL_CACHE_TEXT` characters each."""
DECIMAL_CACHE_TEXT = 40
"""Longer texts are converted every time, not remembered."""

_decimals: dict[str, Decimal] = {}
_cached_decimal = _decimals.get


def _new_decimal(text: str) -> Decimal:
    """``Decimal(text)`` for a finite decimal text (remembered); :class:`_Slow` otherwise.

    Sharing one instance between events is safe: Decimal is immutable, and the same text
    always gives the same value *and* exponent, which is what the wire form preserves."""
    value = Decimal(text)
    if not value.is_finite():
        raise _Slow
    if len(text) <= DECIMAL_CACHE_TEXT:
        if len(_decimals) >= DECIMAL_CACHE_SIZE:
            _decimals.clear()
        _decimals[text] = value
    return value


def _levels(side: Any) -> tuple[PriceLevel, ...]:
    """Wire ``[[price, size], ...]`` → ``((Decimal, Decimal), ...)``; :class:`_Slow` on
    anything else. One call per side, not per level: this is the hottest loop of decoding."""
    if type(side) is not list and type(side) is not tuple:
        raise _Slow
    if not side:
        return ()
    out: list[PriceLevel] = []
    for level in side:
        if (type(level) is not list and type(level) is not tuple) or len(level) != 2:
            raise _Slow
        price, size = level
        if type(price) is not str or type(size) is not str:
            raise _Slow
        p = _cached_decimal(price)
        if p is None:
            p = _new_decimal(price)
        s = _cached_decimal(size)
        if s is None:
            s = _new_decimal(size)
        out.append((p, s))
    return tuple(out)


_LEVELS = tuple[PriceLevel, ...]

# Per field type: (unstructure expression, structure statements). ``{name}`` is the field,
# ``v`` the wire value, ``x`` the result stored into the slot. Anything not listed here
# makes its class use the cattrs path only.
_DECIMAL_IN = (
    "if type(v) is not str: raise _Slow",
    "x = _cached_decimal(v)",
    "if x is None: x = _new_decimal(v)",
)
_RULES: dict[Any, tuple[str, tuple[str, ...]]] = {
    str: ("e.{name}", ("if type(v) is not str: raise _Slow", "x = v")),
    int: ("e.{name}", ("if type(v) is not int: raise _Slow", "x = v")),
    bool: ("e.{name}", ("if v is not True and v is not False: raise _Slow", "x = v")),
    Decimal: ("_fmt(e.{name})", _DECIMAL_IN),
    str | None: (
        "e.{name}",
        ("if v is not None and type(v) is not str: raise _Slow", "x = v"),
    ),
    int | None: (
        "e.{name}",
        ("if v is not None and type(v) is not int: raise _Slow", "x = v"),
    ),
    Decimal | None: (
        "(None if (u := e.{name}) is None else _fmt(u))",
        ("if v is None:", "    x = None", "else:", *(f"    {line}" for line in _DECIMAL_IN)),
    ),
    _LEVELS: (
        "([(_fmt(lv[0]), _fmt(lv[1])) for lv in u] if (u := e.{name}) else [])",
        ("x = _levels(v)",),
    ),
}


def _rule(hint: Any, name: str) -> tuple[str, tuple[str, ...], dict[str, Any]] | None:
    if hint in _RULES:
        out, into = _RULES[hint]
        return out, into, {}
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal and all(type(a) is str for a in args):
        allowed = f"_allowed_{name}"
        into = (f"if type(v) is not str or v not in {allowed}: raise _Slow", "x = v")
        return "e.{name}", into, {allowed: frozenset(args)}
    return None


def _generate(
    wire_type: str, cls: type[Event]
) -> tuple[Callable[[Any], dict[str, Any]], Callable[[dict[str, Any]], Event]] | None:
    """(unstructure, structure) fast functions for ``cls``, or None if a field's type is
    not one the fast path knows (then the cattrs path serves that class alone)."""
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    namespace: dict[str, Any] = {
        "_Slow": _Slow,
        "_cached_decimal": _cached_decimal,
        "_new_decimal": _new_decimal,
        "_fmt": _fmt,
        "_levels": _levels,
        "_new": new_instance,
        "_cls": cls,
    }
    sparse = _sparse_defaults(cls)
    dense = [f for f in fields if f.name not in sparse]
    outs = [f"'type': {wire_type!r}"]
    # Exactly the known keys: with the per-key lookups below this also refuses extra keys.
    # A payload that leaves out a defaulted key is rare and goes to cattrs (sparse fields
    # are the exception: they are either all there or all left out).
    body = ["n = len(o)", f"if n != {len(dense) + 1}:"]
    if sparse:
        body.append(f"    if n != {len(fields) + 1}: raise _Slow")
        body.append("    sparse = True")
        body.append("else:")
        body.append("    sparse = False")
    else:
        body.append("    raise _Slow")
    plain = plain_init(cls)
    if plain:
        body.append("e = _new(_cls)")
    sparse_out: list[str] = []
    for field in fields:
        rule = _rule(hints[field.name], field.name)
        if rule is None:
            return None
        out, into, extra = rule
        namespace.update(extra)
        store = f"_set_{field.name}(e, x)" if plain else f"k_{field.name} = x"
        if plain:
            namespace[f"_set_{field.name}"] = slot_setter(cls, field.name)
        if field.name in sparse:
            namespace[f"_default_{field.name}"] = sparse[field.name]
            sparse_out.append(f"    o[{field.name!r}] = {out.format(name=field.name)}")
            body.append("if sparse:")
            body.extend(f"    {line}" for line in (f"v = o[{field.name!r}]", *into))
            body.append("else:")
            body.append(f"    x = _default_{field.name}")
        else:
            outs.append(f"{field.name!r}: {out.format(name=field.name)}")
            body.append(f"v = o[{field.name!r}]")
            body.extend(into)
        body.append(store)
    if not plain:
        args = ", ".join(f"{f.name}=k_{f.name}" for f in fields)
        body.append(f"e = _cls({args})")
    if cls is Book:
        # Parted books obey the part/parts rules; the cattrs path names what is wrong.
        namespace["_parts_problem"] = parts_problem
        body.append("if sparse and _parts_problem(e) is not None: raise _Slow")
    body.append("return e")
    if sparse:
        changed = " or ".join(f"e.{f} != _default_{f}" for f in sparse)
        unstructure = [
            f"    o = {{{', '.join(outs)}}}",
            f"    if {changed}:",
            *(f"    {line}" for line in sparse_out),
            "    return o",
        ]
    else:
        unstructure = [f"    return {{{', '.join(outs)}}}"]
    name = cls.__name__
    source = "\n".join(
        [
            f"def unstructure_{name}(e):",
            *unstructure,
            f"def structure_{name}(o):",
            *(f"    {line}" for line in body),
        ]
    )
    exec(compile(source, f"<ledgerflux.codec fast {name}>", "exec"), namespace)
    return namespace[f"unstructure_{name}"], namespace[f"structure_{name}"]


_FAST_TO_WIRE: dict[type, Callable[[Any], dict[str, Any]]] = {}
"""Event class → fast unstructure function (exact class; subclasses use cattrs)."""
_FAST_FROM_WIRE: dict[str, Callable[[dict[str, Any]], Event]] = {}
"""Wire ``type`` → fast structure function; raises on anything it does not handle."""
for _wire_type, _cls in EVENT_TYPES.items():
    _fast = _generate(_wire_type, _cls)
    if _fast is not None:
        _FAST_TO_WIRE[_cls], _FAST_FROM_WIRE[_wire_type] = _fast


# --- public API --------------------------------------------------------------------------


def to_wire(event: Event) -> dict[str, Any]:
    """Event → plain dict in wire form (``type`` included)."""
    fast = _FAST_TO_WIRE.get(type(event))
    if fast is not None:
        return fast(event)
    return _slow_to_wire(event)


def _slow_to_wire(event: Event) -> dict[str, Any]:
    result: dict[str, Any] = converter.unstructure(event, type(event))
    return result


def from_wire(obj: Any) -> Event:
    """Plain dict in wire form → event. Raises :class:`CodecError`."""
    if type(obj) is dict:
        try:
            return _FAST_FROM_WIRE[obj["type"]](obj)
        except Exception:  # anything unusual (even no or an unknown type): cattrs judges it
            pass
    return _slow_from_wire(obj)


def _slow_from_wire(obj: Any) -> Event:
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
    # to_wire inlined: this runs once per event per hop.
    fast = _FAST_TO_WIRE.get(type(event))
    return orjson.dumps(fast(event) if fast is not None else _slow_to_wire(event))


def decode(data: bytes | str) -> Event:
    """JSON bytes → event. Raises :class:`CodecError`."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"not JSON: {exc}") from None
    # from_wire inlined: this runs once per event per hop.
    if type(obj) is dict:
        try:
            return _FAST_FROM_WIRE[obj["type"]](obj)
        except Exception:  # anything unusual (even no or an unknown type): cattrs judges it
            pass
    return _slow_from_wire(obj)


def encode_many(events: Iterable[Event]) -> bytes:
    """Several events packed as one JSON array (the gateway's batched frames)."""
    fast = _FAST_TO_WIRE.get
    return orjson.dumps(
        [f(e) if (f := fast(type(e))) is not None else _slow_to_wire(e) for e in events]
    )


def decode_many(data: bytes | str) -> list[Event]:
    """A JSON array of events → events. Raises :class:`CodecError` (the first bad one)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"not JSON: {exc}") from None
    if not isinstance(obj, list):
        raise CodecError("expected a JSON array of events")
    events: list[Event] = []
    append = events.append
    for item in obj:
        # from_wire inlined, as in decode().
        if type(item) is dict:
            try:
                append(_FAST_FROM_WIRE[item["type"]](item))
                continue
            except Exception:  # anything unusual: cattrs judges it
                pass
        append(_slow_from_wire(item))
    return events


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
