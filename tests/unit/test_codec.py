"""The canonical wire format (docs/protocol.md): golden files pin it, properties prove it
lossless."""

from __future__ import annotations

import json
from decimal import Decimal, localcontext
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerflux import codec
from ledgerflux.events import EVENT_TYPES, Book, Event, Quote, Status, Ticker, Trade

GOLDEN = Path(__file__).parents[1] / "golden" / "events"

BASE = {
    "product": "coinbase:BTC-USD",
    "ts_event": 1_618_677_817_077_736_000,
    "ts_ingest": 1_618_677_817_078_000_123,
}

GOLDEN_EVENTS: dict[str, Event] = {
    "trade": Trade(
        **BASE,
        seq=7,
        epoch="01JD0000000000000000000000",
        src_seq=27_166_532_412,
        price=Decimal("61234.56"),
        size=Decimal("0.00100000"),
        side="sell",
        trade_id="178412356",
    ),
    "quote": Quote(
        **BASE,
        seq=8,
        epoch="01JD0000000000000000000000",
        src_seq=27_166_532_413,
        bid_price=Decimal("61234.55"),
        bid_size=Decimal("0.5"),
        ask_price=Decimal("61234.57"),
        ask_size=Decimal("1.25"),
    ),
    "quote_one_sided": Quote(
        **BASE,
        seq=9,
        epoch="01JD0000000000000000000000",
        bid_price=None,
        bid_size=None,
        ask_price=Decimal("10"),
        ask_size=Decimal("3"),
    ),
    "ticker": Ticker(
        **BASE,
        seq=10,
        epoch="01JD0000000000000000000000",
        src_seq=27_166_532_414,
        price=Decimal("61234.56"),
        open_24h=Decimal("60000.00"),
        high_24h=Decimal("62000.00"),
        low_24h=Decimal("59000.01"),
        volume_24h=Decimal("12345.67890123"),
        best_bid=Decimal("61234.55"),
        best_ask=Decimal("61234.57"),
    ),
    "book_snapshot": Book(
        **BASE,
        seq=1,
        epoch="01JD0000000000000000000000",
        snapshot=True,
        bids=((Decimal("61234.55"), Decimal("0.5")), (Decimal("61234.00"), Decimal("2"))),
        asks=((Decimal("61234.57"), Decimal("1.25")),),
    ),
    "book_snapshot_part": Book(
        **BASE,
        seq=3,
        epoch="01JD0000000000000000000000",
        src_seq=27_166_532_416,
        snapshot=True,
        bids=(),
        asks=((Decimal("61234.57"), Decimal("1.25")), (Decimal("61240"), Decimal("0.1"))),
        part=1,
        parts=2,
    ),
    "book_delta": Book(
        **BASE,
        seq=2,
        epoch="01JD0000000000000000000000",
        snapshot=False,
        bids=((Decimal("61234.55"), Decimal("0")),),
        asks=(),
    ),
    "status": Status(
        **BASE,
        seq=11,
        epoch="01JD0000000000000000000000",
        status="gap",
        reason="exchange sequence 27166532415 -> 27166532420",
    ),
    "tick_unsequenced": Trade(
        **BASE,
        src_seq=5,
        price=Decimal("1E+3"),
        size=Decimal("2.0"),
        side="buy",
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_EVENTS))
def test_golden_wire_form(name: str) -> None:
    """The encoded event equals the golden file byte for byte (after JSON parsing, so key
    order and every value are pinned), and decoding the golden file gives the whole event."""
    golden_path = GOLDEN / f"{name}.json"
    expected_text = golden_path.read_text()
    event = GOLDEN_EVENTS[name]
    encoded = codec.encode(event)
    assert list(orjson.loads(encoded).items()) == list(json.loads(expected_text).items())
    assert codec.decode(expected_text) == event


def test_decimal_text_is_kept_exactly() -> None:
    event = GOLDEN_EVENTS["trade"]
    wire = codec.to_wire(event)
    assert wire["size"] == "0.00100000"
    assert codec.from_wire(wire).size.as_tuple() == Decimal("0.00100000").as_tuple()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"type": "candle"}', "unknown event type: 'candle'"),
        ({"price": 1.5}, "decimal must be a string, got float"),
        ({"price": "NaN"}, "decimal must be finite"),
        ({"price": "abc"}, "not a decimal"),
        ({"ts_event": 1.0}, "expected an integer"),
        ({"ts_event": True}, "expected an integer"),
        ({"side": "up"}, "side"),
        ({"extra": 1}, "Extra fields"),
        ({"product": None}, "expected a string"),
    ],
)
def test_invalid_payloads_raise_codec_error(
    payload: bytes | dict[str, object], message: str
) -> None:
    if isinstance(payload, dict):
        wire = codec.to_wire(GOLDEN_EVENTS["trade"])
        wire.update(payload)
        data = orjson.dumps(wire)
    else:
        data = payload
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(data)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"snapshot": False}, "only a snapshot may travel in parts"),
        ({"part": 2}, r"part must be in 0\.\.1, got 2"),
        ({"part": -1}, r"part must be in 0\.\.1, got -1"),
        ({"parts": 0, "part": 0}, "parts must be at least 1, got 0"),
        ({"parts": True}, "expected an integer"),
        ({"part": "1"}, "expected an integer"),
    ],
)
def test_invalid_parts_raise_codec_error(fields: dict[str, object], message: str) -> None:
    wire = codec.to_wire(GOLDEN_EVENTS["book_snapshot_part"])
    wire.update(fields)
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(orjson.dumps(wire))


def test_whole_book_carries_no_part_keys() -> None:
    """part/parts are on the wire only for a parted snapshot, so every book written before
    parts existed keeps its bytes; explicit defaults decode to the same whole book."""
    for name in ("book_snapshot", "book_delta"):
        wire = codec.to_wire(GOLDEN_EVENTS[name])
        assert "part" not in wire
        assert "parts" not in wire
        assert "part" not in codec._slow_to_wire(GOLDEN_EVENTS[name])
        assert codec.from_wire({**wire, "part": 0, "parts": 1}) == GOLDEN_EVENTS[name]
    parted = codec.to_wire(GOLDEN_EVENTS["book_snapshot_part"])
    assert list(parted)[-2:] == ["part", "parts"]


def test_missing_field_is_named() -> None:
    wire = codec.to_wire(GOLDEN_EVENTS["trade"])
    del wire["price"]
    with pytest.raises(codec.CodecError, match="field 'price': missing"):
        codec.from_wire(wire)


def test_encode_many_round_trips_as_array() -> None:
    events = list(GOLDEN_EVENTS.values())
    assert codec.decode_many(codec.encode_many(events)) == events
    with pytest.raises(codec.CodecError, match="array"):
        codec.decode_many(b"{}")


# --- properties -----------------------------------------------------------------------

decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda d: d.is_finite()
)
positive = st.decimals(min_value=Decimal("0"), max_value=Decimal("1e12"), allow_nan=False)
ns = st.integers(min_value=0, max_value=2**63 - 1)
products = st.from_regex(r"[a-z]{2,10}:[A-Z0-9]{2,6}-[A-Z0-9]{2,6}", fullmatch=True)
common = {
    "product": products,
    "seq": st.integers(min_value=0, max_value=2**62),
    "epoch": st.text(max_size=30),
    "src_seq": st.none() | st.integers(min_value=0, max_value=2**63 - 1),
    "ts_event": ns,
    "ts_ingest": ns,
}
levels = st.lists(st.tuples(positive, positive), max_size=20).map(tuple)


@st.composite
def parted_books(draw: st.DrawFn) -> Book:
    """One part of a snapshot sent in parts (part/parts on the wire)."""
    parts = draw(st.integers(min_value=2, max_value=2**31))
    part = draw(st.integers(min_value=0, max_value=parts - 1))
    return Book(
        **{name: draw(strategy) for name, strategy in common.items()},
        snapshot=True,
        bids=draw(levels),
        asks=draw(levels),
        part=part,
        parts=parts,
    )


any_event: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        Trade,
        **common,
        price=decimals,
        size=decimals,
        side=st.sampled_from(["buy", "sell"]),
        trade_id=st.none() | st.text(max_size=20),
    ),
    st.builds(
        Quote,
        **common,
        bid_price=st.none() | decimals,
        bid_size=st.none() | decimals,
        ask_price=st.none() | decimals,
        ask_size=st.none() | decimals,
    ),
    st.builds(
        Ticker,
        **common,
        price=decimals,
        open_24h=st.none() | decimals,
        high_24h=st.none() | decimals,
        low_24h=st.none() | decimals,
        volume_24h=st.none() | decimals,
        best_bid=st.none() | decimals,
        best_ask=st.none() | decimals,
    ),
    st.builds(Book, **common, snapshot=st.booleans(), bids=levels, asks=levels),
    parted_books(),
    st.builds(
        Status,
        **common,
        status=st.sampled_from(["gap", "resync", "stale", "online", "offline", "reset"]),
        reason=st.text(max_size=50),
    ),
)


@given(any_event)
def test_encode_decode_is_lossless(event: Event) -> None:
    decoded = codec.decode(codec.encode(event))
    assert decoded == event
    assert type(decoded) is type(event)
    # Decimal equality ignores the exponent; the wire text must not.
    assert codec.encode(decoded) == codec.encode(event)


# --- the fast paths agree with the cattrs converter -------------------------------------
#
# to_wire/from_wire use generated per-class functions and fall back to the cattrs converter
# (codec._slow_to_wire / codec._slow_from_wire) for anything unusual. These tests pin that
# both give the same wire dicts, the same events and the same errors.


def test_every_event_class_has_fast_paths() -> None:
    assert set(codec._FAST_TO_WIRE) == set(EVENT_TYPES.values())
    assert set(codec._FAST_FROM_WIRE) == set(EVENT_TYPES)


@pytest.mark.parametrize("name", sorted(GOLDEN_EVENTS))
def test_fast_structure_accepts_golden_wire_itself(name: str) -> None:
    """The fast function decodes the golden payloads on its own (no fallback), else the
    speed-up would be silently lost."""
    wire = orjson.loads((GOLDEN / f"{name}.json").read_bytes())
    event = codec._FAST_FROM_WIRE[wire["type"]](wire)
    assert event == GOLDEN_EVENTS[name]
    assert type(event) is type(GOLDEN_EVENTS[name])


@given(any_event)
def test_fast_and_cattrs_paths_agree(event: Event) -> None:
    fast = codec.to_wire(event)
    slow = codec._slow_to_wire(event)
    assert list(fast.items()) == list(slow.items())
    # Same Python types too (levels are a list of tuples in both), not only equal JSON.
    assert [type(v) for v in fast.values()] == [type(v) for v in slow.values()]
    data = orjson.dumps(fast)
    assert data == orjson.dumps(slow)
    wire = orjson.loads(data)
    decoded = codec._FAST_FROM_WIRE[wire["type"]](wire)
    assert decoded == codec._slow_from_wire(wire) == event
    assert codec.encode(decoded) == data


@given(st.decimals(places=None) | decimals)
def test_fast_decimal_text_is_format_f(value: Decimal) -> None:
    assert codec._fmt(value) == format(value, "f")
    with localcontext() as ctx:
        ctx.capitals = 0  # str() then writes "e" for the exponent: still caught
        assert codec._fmt(value) == format(value, "f")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what JSON carries here
    | st.floats(allow_nan=False, allow_infinity=False)  # orjson writes those as null
    | st.text(max_size=8)
    | st.sampled_from(["1.5", "0", "-0.00", "1E+3", "NaN", "-Infinity", "sNaN", "1_0", " 2 "])
    | st.sampled_from(["buy", "sell", "gap", "reset", "trade", "book"]),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


@st.composite
def mangled_wire(draw: st.DrawFn) -> dict[str, object]:
    """A valid event's wire dict with one to three keys deleted, replaced or added."""
    wire: dict[str, object] = orjson.loads(codec.encode(draw(any_event)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        keys = sorted(wire)
        action = draw(st.sampled_from(["delete", "replace", "add", "level"]))
        if action == "delete":
            del wire[draw(st.sampled_from(keys))]
        elif action == "replace":
            wire[draw(st.sampled_from(keys))] = draw(json_values)
        elif action == "add":
            wire[draw(st.text(max_size=8))] = draw(json_values)
        elif isinstance(wire.get("bids"), list):
            wire["bids"] = [*wire["bids"], draw(json_values)]  # type: ignore[misc]
    return wire


@settings(max_examples=400)
@given(mangled_wire())
def test_fast_and_cattrs_paths_agree_on_malformed_payloads(wire: dict[str, object]) -> None:
    try:
        expected: Event | str = codec._slow_from_wire(dict(wire))
    except codec.CodecError as exc:
        expected = str(exc)
    try:
        got: Event | str = codec.from_wire(wire)
    except codec.CodecError as exc:
        got = str(exc)
    assert got == expected
    if not isinstance(got, str):
        assert not isinstance(expected, str)
        assert codec.encode(got) == codec.encode(expected)
    # The raw payload decodes the same way through decode() too.
    try:
        via_bytes: Event | str = codec.decode(orjson.dumps(wire))
    except codec.CodecError as exc:
        via_bytes = str(exc)
    assert via_bytes == expected


def test_payloads_the_fast_path_declines_still_decode() -> None:
    """Defaulted keys left out, int decimals, tuple levels and str subclasses are the
    converter's business; the answer is the same as before the fast path existed."""

    class Text(str):
        pass

    wire = codec.to_wire(GOLDEN_EVENTS["tick_unsequenced"])
    for key in ("seq", "epoch", "trade_id"):
        del wire[key]
    wire["price"] = 1000
    wire["side"] = Text("buy")
    assert codec.from_wire(wire) == GOLDEN_EVENTS["tick_unsequenced"]
    book = codec.to_wire(GOLDEN_EVENTS["book_snapshot"])
    assert isinstance(book["bids"][0], tuple)  # to_wire's own form round-trips in process
    assert codec._FAST_FROM_WIRE["book"](book) == GOLDEN_EVENTS["book_snapshot"]


def _trade(wire: dict[str, object]) -> Trade:
    event = codec.from_wire(wire)
    assert isinstance(event, Trade)
    return event


def test_decimal_cache_is_bounded_and_keeps_exponents() -> None:
    wire = codec.to_wire(GOLDEN_EVENTS["trade"])
    for i in range(codec.DECIMAL_CACHE_SIZE + 10):
        wire["price"] = f"{i}.5"
        assert _trade(wire).price == Decimal(f"{i}.5")
    assert 0 < len(codec._decimals) <= codec.DECIMAL_CACHE_SIZE
    long_text = "1." + "0" * codec.DECIMAL_CACHE_TEXT
    wire["price"] = long_text
    assert _trade(wire).price.as_tuple() == Decimal(long_text).as_tuple()
    assert long_text not in codec._decimals
    # Equal values with other exponents are other texts, so other cache entries.
    for text in ("0.001", "0.00100000", "1E+3", "1000", "1.0E+3"):
        wire["size"] = text
        first = _trade(wire)
        assert text in codec._decimals
        second = _trade(wire)  # served from the cache
        assert first.size.as_tuple() == second.size.as_tuple() == Decimal(text).as_tuple()
        assert codec.to_wire(second)["size"] == format(Decimal(text), "f")


def test_non_finite_decimals_are_never_cached() -> None:
    wire = codec.to_wire(GOLDEN_EVENTS["trade"])
    for text in ("NaN", "Infinity", "-inf", "sNaN"):
        wire["price"] = text
        with pytest.raises(codec.CodecError, match="finite"):
            codec.from_wire(wire)
        assert text not in codec._decimals


@settings(max_examples=50)
@given(st.lists(any_event.map(codec.to_wire) | mangled_wire(), max_size=5))
def test_decode_many_agrees_with_the_cattrs_path(wires: list[dict[str, object]]) -> None:
    """The batch path (its own inlined fast path) gives the events, or the first error,
    that the converter alone gives."""
    try:
        expected: list[Event] | str = [codec._slow_from_wire(dict(w)) for w in wires]
    except codec.CodecError as exc:
        expected = str(exc)
    try:
        got: list[Event] | str = codec.decode_many(orjson.dumps(wires))
    except codec.CodecError as exc:
        got = str(exc)
    assert got == expected
    if not isinstance(got, str) and not isinstance(expected, str):
        assert codec.encode_many(got) == codec.encode_many(expected)
        assert codec.encode_many(got) == orjson.dumps([codec._slow_to_wire(e) for e in got])


def test_generated_functions_without_slot_shortcut_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If an event class ever gains a validator or converter, the fast path calls the real
    constructor instead of filling slots; that variant must decode the same events."""
    monkeypatch.setattr(codec, "plain_init", lambda cls: False)
    for name, event in GOLDEN_EVENTS.items():
        generated = codec._generate(event.TYPE, type(event))
        assert generated is not None, name
        unstructure, structure = generated
        wire = orjson.loads(orjson.dumps(unstructure(event)))
        assert structure(wire) == event
        assert orjson.dumps(unstructure(event)) == codec.encode(event)
