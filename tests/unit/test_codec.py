"""The canonical wire format (DESIGN §2): golden files pin it, properties prove it lossless."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerflux import codec
from ledgerflux.events import Book, Event, Quote, Status, Ticker, Trade

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
