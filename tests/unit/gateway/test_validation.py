"""Strict validation of client requests: the product grammar, numeric bounds, and a
hypothesis fuzz of every request field (each refusal has its documented code)."""

from __future__ import annotations

import json
from typing import Any, get_args

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerflux.gateway.protocol import (
    CHANNELS,
    DEFAULT_CHANNELS,
    MAX_RATE,
    MAX_SEQ,
    MIN_RATE,
    ErrorCode,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    parse_request,
    valid_product,
)


@pytest.mark.parametrize(
    "product",
    [
        "coinbase:BTC-USD",
        "coinbase:ETH-USDC",
        "consolidated:BTC-USD",
        "binance_us:BTC-USDT",
        "coinbase:BIT-29NOV24-CDE",
        "x1:A-B",
    ],
)
def test_canonical_products_are_valid(product: str) -> None:
    assert valid_product(product)
    request = parse_request(orjson.dumps({"op": "subscribe", "products": [product]}))
    assert isinstance(request, Subscribe)
    assert request.products == (product,)


@pytest.mark.parametrize(
    "product",
    [
        "a:b:c",
        "COINBASE:BTC-USD",
        "coinbase:btc-usd",
        "coinbase:BTC USD",
        "coinbase:BTC-USD\n",
        "coinbase:é",
        "coinbase:BTC-USDÉ",
        "coinbase:" + "A" * 5000,
        "coinbase:BTC-" + "A" * 5000,
        "coinbase:BTC",
        "coinbase:-USD",
        "coinbase:BTC--USD",
        "coinbase:BTC-USD-",
        ":BTC-USD",
        "coinbase:",
        "BTC-USD",
        "coin-base:BTC-USD",
        "coinbase:BTC-USD\x00",
        "",
    ],
)
def test_malformed_products_are_bad_product(product: str) -> None:
    assert not valid_product(product)
    for op in ("subscribe", "unsubscribe"):
        with pytest.raises(ProtocolError) as info:
            parse_request(orjson.dumps({"op": op, "id": 1, "products": [product]}))
        assert info.value.code == "bad_product"
        assert info.value.request_id == 1
        assert len(info.value.message) < 200  # a 5,000-char symbol is not echoed back whole


def _subscribe(**fields: Any) -> str:
    return orjson.dumps({"op": "subscribe", "id": 1, "products": ["coinbase:BTC-USD"], **fields})


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('{"op":"ping","id":true}', "bad_request"),
        ('{"op":"ping","id":false}', "bad_request"),
        ('{"op":"ping","id":1.5}', "bad_request"),
        ('{"op":"ping","id":9007199254740993}', "out_of_range"),
        (orjson.dumps({"op": "ping", "id": "x" * 129}).decode(), "out_of_range"),
        (_subscribe(max_rate=1e-300), "out_of_range"),
        (_subscribe(max_rate=0.01), "out_of_range"),
        (_subscribe(max_rate=1e9), "out_of_range"),
        (_subscribe(max_rate=True), "bad_request"),
        (_subscribe(max_rate="5"), "bad_request"),
        (_subscribe(max_rate=0), "bad_request"),
        (_subscribe(from_seq={"coinbase:BTC-USD": 2**63}), "out_of_range"),
        (_subscribe(from_seq={"coinbase:BTC-USD": True}), "bad_request"),
        (_subscribe(from_seq={"coinbase:BTC-USD": 1.0}), "bad_request"),
        (_subscribe(epoch={"coinbase:ETH-USD": "1"}), "bad_request"),
        (_subscribe(epoch="e" * 65), "bad_request"),
        (_subscribe(epoch="1 2"), "bad_request"),
        (_subscribe(epoch=5), "bad_request"),
        (_subscribe(channels=[]), "bad_request"),
        (_subscribe(channels="trades"), "bad_request"),
        (_subscribe(channels=["trades", 1]), "unknown_channel"),
        (_subscribe(products=["coinbase:BTC-USD"] * 1001), "out_of_range"),
    ],
)
def test_out_of_bounds_values_are_refused_with_their_code(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(text)
    assert info.value.code == code


def test_bounds_themselves_are_accepted() -> None:
    request = parse_request(
        _subscribe(from_seq={"coinbase:BTC-USD": MAX_SEQ}, max_rate=MIN_RATE, id=2**53)
    )
    assert request == Subscribe(
        id=2**53,
        products=("coinbase:BTC-USD",),
        channels=frozenset(CHANNELS[name] for name in DEFAULT_CHANNELS),
        from_seq={"coinbase:BTC-USD": MAX_SEQ},
        max_rate=MIN_RATE,
        conflate=True,
    )
    request = parse_request(_subscribe(max_rate=MAX_RATE, epoch="1732300000000000000", id="x"))
    assert isinstance(request, Subscribe)
    assert request.max_rate == MAX_RATE
    assert request.epoch == {"coinbase:BTC-USD": "1732300000000000000"}


# -- fuzzing ---------------------------------------------------------------------------
# One strategy per request field, each mixing valid values with the kinds of wrong ones a
# client sends; a new field gets its own entry here (and in SUBSCRIBE_FIELDS).

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_products = st.one_of(
    st.sampled_from(["coinbase:BTC-USD", "coinbase:ETH-USD", "consolidated:BTC-USD"]),
    st.from_regex(r"[a-z0-9_]{1,8}:[A-Z0-9]{1,5}-[A-Z0-9]{1,5}", fullmatch=True),
    st.text(max_size=30),
    st.text(alphabet="aA:-_ \n1é", max_size=12),
)
_product_lists = st.one_of(st.lists(_products, max_size=4), _json_scalars)
_seq_maps = st.one_of(
    st.dictionaries(
        _products,
        st.one_of(st.integers(min_value=-5, max_value=2**64), st.booleans(), st.floats()),
        max_size=3,
    ),
    _json_scalars,
)

SUBSCRIBE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(_json_scalars, st.lists(st.integers(), max_size=2)),
    "products": _product_lists,
    "channels": st.one_of(
        st.lists(st.one_of(st.sampled_from([*CHANNELS, "level3"]), _json_scalars), max_size=5),
        _json_scalars,
    ),
    "snapshot": _json_scalars,
    "from_seq": _seq_maps,
    "epoch": st.one_of(
        st.dictionaries(_products, st.one_of(st.text(max_size=70), _json_scalars), max_size=3),
        _json_scalars,
    ),
    "conflate": _json_scalars,
    "max_rate": st.one_of(
        st.floats(min_value=1e-320, max_value=1e12), st.integers(-10, 10**7), _json_scalars
    ),
    "batch": _json_scalars,
    "unknown": _json_scalars,
}

_requests = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(["subscribe", "unsubscribe", "ping"]), _json_scalars)},
    optional=SUBSCRIBE_FIELDS,
)

CODES = frozenset(get_args(ErrorCode))


# Generation speed is not under test: shared CI machines are slow at times.
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests)
def test_fuzzed_requests_parse_or_get_a_documented_code(obj: dict[str, Any]) -> None:
    text = json.dumps(obj)  # stdlib: integers beyond 64 bits too
    try:
        request = parse_request(text)
    except ProtocolError as exc:
        code = exc.code
    else:
        code = None
    if code is not None:
        assert code in CODES
        return
    # Whatever was accepted is within the documented grammar and bounds.
    assert isinstance(request, Subscribe | Unsubscribe | Ping)
    assert request.id is None or (
        (isinstance(request.id, str) and len(request.id) <= 128)
        or (type(request.id) is int and abs(request.id) <= 2**53)
    )
    if isinstance(request, Subscribe | Unsubscribe):
        assert all(valid_product(product) for product in request.products)
    if isinstance(request, Subscribe):
        assert all(1 <= seq <= MAX_SEQ for seq in request.from_seq.values())
        assert set(request.from_seq) <= set(request.products)
        assert set(request.epoch) <= set(request.products)
        assert request.max_rate is None or MIN_RATE <= request.max_rate <= MAX_RATE


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_fuzzed_bytes_parse_or_get_a_documented_code(data: bytes) -> None:
    code: str | None = None
    try:
        parse_request(data)
    except ProtocolError as exc:
        code = exc.code
    assert code is None or code in CODES
