"""The decoders' speed-ups change no result.

* The slot-descriptor builders make objects equal to the real constructors' (and are used
  only while the classes still allow it).
* The decimal cache returns exact values (exponent kept) and never admits a bad one.
* The fast timestamp reader agrees with the full one, accepting and refusing alike.
* The optimistic frame readers (Exchange snapshot, Advanced envelope) agree with the
  field-by-field readers, on real frames and on mutated ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import attrs
import pytest
from coinbase_support import GOLDEN, json_paths, mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledgerflux_coinbase import (
    AdvancedDecoder,
    ExchangeDecoder,
    _build,
    _fields,
    advanced,
    exchange,
)

from ledgerflux.events import Book, Quote, Ticker, Trade
from ledgerflux.plugin import Decoded, SeqMark

TS = 1_700_000_000_000_000_000
D = Decimal


def test_fast_builders_are_in_use() -> None:
    # Fails when ledgerflux.events / ledgerflux.plugin change shape: update _build._LAYOUT.
    assert _build.FAST


BUILT = [
    (
        _build.new_book("coinbase:BTC-USD", None, 1, 2, True, ((D("1.50"), D("2")),), ()),
        Book(
            product="coinbase:BTC-USD",
            ts_event=1,
            ts_ingest=2,
            snapshot=True,
            bids=((D("1.50"), D("2")),),
        ),
    ),
    (
        _build.new_trade("coinbase:BTC-USD", 7, 1, 2, D("3.0"), D("0.1"), "sell", "42"),
        Trade(
            product="coinbase:BTC-USD",
            src_seq=7,
            ts_event=1,
            ts_ingest=2,
            price=D("3.0"),
            size=D("0.1"),
            side="sell",
            trade_id="42",
        ),
    ),
    (
        _build.new_quote("coinbase:BTC-USD", None, 1, 2, D("1"), None, None, D("5")),
        Quote(
            product="coinbase:BTC-USD",
            ts_event=1,
            ts_ingest=2,
            bid_price=D("1"),
            bid_size=None,
            ask_price=None,
            ask_size=D("5"),
        ),
    ),
    (
        _build.new_ticker(
            "coinbase:X-Y", 3, 1, 2, D("9"), None, D("10"), D("8"), None, D("1"), None
        ),
        Ticker(
            product="coinbase:X-Y",
            src_seq=3,
            ts_event=1,
            ts_ingest=2,
            price=D("9"),
            high_24h=D("10"),
            low_24h=D("8"),
            best_bid=D("1"),
        ),
    ),
    (_build.new_mark(None, 5), SeqMark(None, 5)),
    (_build.new_mark("coinbase:A-B", 5, False), SeqMark("coinbase:A-B", 5, carries_state=False)),
    (_build.new_decoded(()), Decoded()),
    (
        _build.new_decoded((), (SeqMark(None, 1),), True, ("coinbase:A-B",)),
        Decoded(marks=(SeqMark(None, 1),), heartbeat=True, snapshot_products=("coinbase:A-B",)),
    ),
]


@pytest.mark.parametrize(("built", "expected"), BUILT, ids=lambda o: type(o).__name__)
def test_builders_make_what_the_constructors_make(built: object, expected: object) -> None:
    assert type(built) is type(expected)
    assert built == expected
    assert hash(built) == hash(expected)
    assert repr(built) == repr(expected)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.product = "x"  # type: ignore[attr-defined]


def test_slow_builders_are_the_constructors() -> None:
    assert _build._slow_book("p:X", None, 1, 2, False, (), ()) == Book(
        product="p:X", ts_event=1, ts_ingest=2, snapshot=False
    )
    assert _build._slow_decoded((), (), True) == Decoded(heartbeat=True)
    assert _build._slow_mark(None, 3) == SeqMark(None, 3)


def test_layout_check_refuses_an_init_that_does_more_than_store() -> None:
    @attrs.frozen
    class Plain:
        a: int
        b: int = 0

    @attrs.frozen
    class Validated:
        a: int = attrs.field(validator=attrs.validators.instance_of(int))

    @attrs.frozen
    class Converted:
        a: int = attrs.field(converter=int)

    @attrs.frozen
    class Factory:
        a: list[int] = attrs.field(factory=list)

    @attrs.frozen
    class PostInit:
        a: int

        def __attrs_post_init__(self) -> None:
            pass

    @attrs.frozen
    class OtherSeq:
        seq: int = 1

    assert _build._plain(Plain, ("a", "b"))
    assert not _build._plain(Plain, ("b", "a"))
    assert not _build._plain(Validated, ("a",))
    assert not _build._plain(Converted, ("a",))
    assert not _build._plain(Factory, ("a",))
    assert not _build._plain(PostInit, ("a",))
    assert not _build._plain(OtherSeq, ("seq",))


def test_decimal_cache_is_exact() -> None:
    _fields.clear_caches()
    first = _fields.to_decimal("1.50", "price")
    again = _fields.to_decimal("1.50", "price")
    assert again is first
    assert str(again) == "1.50"
    assert str(_fields.to_decimal("1.5", "price")) == "1.5"
    assert str(_fields.to_decimal("0E-8", "size")) == "0E-8"
    assert {"1.50": D("1.50"), "1.5": D("1.5"), "0E-8": D("0E-8")} == _fields.DECIMALS


@pytest.mark.parametrize("value", ["NaN", "sNaN", "-Infinity", "inf", "abc", "", 1.5, 2, None])
def test_decimal_cache_refuses_and_does_not_remember(value: Any) -> None:
    _fields.clear_caches()
    with pytest.raises(_fields.FieldError):
        _fields.to_decimal(value, "price")
    with pytest.raises((TypeError, ValueError, ArithmeticError)):
        _fields.new_decimal(value)
    assert _fields.DECIMALS == {}


def test_decimal_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    _fields.clear_caches()
    monkeypatch.setattr(_fields, "DECIMALS_MAX", 10)
    for number in range(25):
        assert _fields.to_decimal(str(number), "size") == number
        assert len(_fields.DECIMALS) <= 10


TIMESTAMPS = [
    "2023-02-09T20:32:50.714964855Z",
    "2023-02-09T20:32:50.714964Z",
    "2023-02-09T20:32:50.7Z",
    "2023-02-09T20:32:50Z",
    "2023-02-09T20:32:50.000001+02:00",
    "2023-02-09 20:32:50.5z",
    "2023-02-09T20:32:50.Z",
    "2023-02-09T20:32:50.1234567890Z",
    "2023-02-09T20:32:50.+12345Z",
    "2023-02-09T20:32:50.12_45Z",
    "2023-02-09T20:32:50.12\u0663Z",
    "2023-02-09T20:32:50. 1234Z",
    "2023-02-09T20:32:50",
    "2023-02-09T20:32:50.5",
    "2023-02-09T20:32:50Zjunk",
    "2023-02-30T20:32:50.5Z",
    "",
]


def _outcome(parse: Any, text: str) -> int | str:
    try:
        return int(parse(text))
    except ValueError:
        return "ValueError"


@pytest.mark.parametrize("text", TIMESTAMPS)
def test_fast_timestamp_reader_agrees_with_the_full_one(text: str) -> None:
    _fields.clear_caches()
    cold = _outcome(_fields.parse_iso_ns, text)
    _fields.parse_iso_ns("2023-02-09T20:32:50.1Z")  # warm: the second is now cached
    warm = _outcome(_fields.parse_iso_ns, text)
    assert cold == warm == _outcome(_fields._parse_iso_ns, text)


@given(st.integers(0, 9), st.integers(0, 10**9 - 1), st.sampled_from(["Z", "z", "+00:00"]))
def test_fast_timestamp_reader_property(width: int, fraction: int, zone: str) -> None:
    digits = f".{fraction:09d}"[: width + 1] if width else ""
    text = f"2024-02-29T23:59:59{digits}{zone}"
    _fields.parse_iso_ns(text)  # fill the cache
    assert _fields.parse_iso_ns(text) == _fields._parse_iso_ns(text)


class _Refusing(dict[str, Decimal]):
    def get(self, key: Any, default: Any = None) -> Any:
        raise TypeError("fast path off")


@contextmanager
def _checked_only() -> Iterator[None]:
    """Every optimistic reader fails at its first step, so only the checked ones run."""

    def refuse(text: Any) -> int:
        raise ValueError("fast path off")

    with pytest.MonkeyPatch.context() as patch:
        for module in (exchange, advanced):
            patch.setattr(module, "DECIMALS", _Refusing())
            patch.setattr(module, "parse_iso_ns", refuse)
        yield


def _frames(api: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted((GOLDEN / api).glob("*.json")):
        out.append(json.loads(json.loads(path.read_text())["frame"]))
    return out


EXCHANGE_FRAMES = _frames("exchange")
ADVANCED_FRAMES = _frames("advanced")
ALL_FRAMES = [(ExchangeDecoder, f) for f in EXCHANGE_FRAMES] + [
    (AdvancedDecoder, f) for f in ADVANCED_FRAMES
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
) | st.sampled_from(["NaN", "1.50", "-0", "0E-8", "2023-02-09T20:32:50.1Z", "buy", "bid"])


def _decode_twice(new: Any, raw: str) -> tuple[Decoded, Decoded]:
    """Cold then warm (the second call finds the product and the values cached)."""
    decoder = new()
    return decoder.decode(raw, TS), decoder.decode(raw, TS)


@pytest.mark.parametrize(("new", "frame"), ALL_FRAMES, ids=lambda v: getattr(v, "__name__", ""))
def test_real_frames_decode_the_same_either_way(new: Any, frame: dict[str, Any]) -> None:
    raw = json.dumps(frame)
    fast = _decode_twice(new, raw)
    with _checked_only():
        checked = _decode_twice(new, raw)
    assert fast == checked


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.data())
def test_mutated_frames_decode_the_same_either_way(data: st.DataObject) -> None:
    new, frame = data.draw(st.sampled_from(ALL_FRAMES))
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(json_paths(frame, items=3)))
        frame = mutate(frame, path, data.draw(json_values), data.draw(st.booleans()))
    raw = json.dumps(frame)
    _fields.clear_caches()
    fast = _decode_twice(new, raw)
    with _checked_only():
        checked = _decode_twice(new, raw)
    assert fast == checked
