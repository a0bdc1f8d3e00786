"""Bad input never raises: it becomes a DecodeError with a reason and the whole frame."""

from __future__ import annotations

import orjson
import pytest
from ledgerflux_coinbase import AdvancedDecoder, ExchangeDecoder

from ledgerflux.plugin import Decoded

TS = 1_700_000_000_000_000_000

MATCH = {
    "type": "match",
    "trade_id": 10,
    "sequence": 50,
    "time": "2014-11-07T08:19:27.028459Z",
    "product_id": "BTC-USD",
    "size": "5.23512",
    "price": "400.23",
    "side": "sell",
}
L2 = {
    "channel": "l2_data",
    "client_id": "",
    "timestamp": "2023-02-09T20:32:50.714964855Z",
    "sequence_num": 3,
    "events": [
        {
            "type": "update",
            "product_id": "BTC-USD",
            "updates": [
                {
                    "side": "bid",
                    "event_time": "2023-02-09T20:32:50.714964855Z",
                    "price_level": "21921.73",
                    "new_quantity": "0.5",
                }
            ],
        }
    ],
}


def _only_error(decoded: Decoded, frame: bytes) -> str:
    assert decoded.events == ()
    assert decoded.marks == ()
    assert len(decoded.errors) == 1
    (error,) = decoded.errors
    assert error.raw == frame
    assert error.detail
    return error.reason


def _with(base: dict[str, object], **changes: object) -> bytes:
    msg = dict(base)
    for key, value in changes.items():
        if value is ...:
            msg.pop(key)
        else:
            msg[key] = value
    return orjson.dumps(msg)


EXCHANGE_CASES = [
    pytest.param(b'{"type":"match",', "malformed_json", id="truncated-json"),
    pytest.param(b"\xff\xfe", "malformed_json", id="not-utf8"),
    pytest.param(b"[1,2]", "invalid_message", id="not-an-object"),
    pytest.param(b'{"type":"bogus"}', "unknown_type", id="unknown-type"),
    pytest.param(b'{"no":"type"}', "unknown_type", id="no-type"),
    pytest.param(_with(MATCH, price=...), "missing_field", id="missing-price"),
    pytest.param(_with(MATCH, sequence=...), "missing_field", id="missing-sequence"),
    pytest.param(_with(MATCH, price="12.3.4"), "invalid_field", id="bad-decimal"),
    pytest.param(_with(MATCH, price="NaN"), "invalid_field", id="nan-price"),
    pytest.param(_with(MATCH, price="Infinity"), "invalid_field", id="infinite-price"),
    pytest.param(_with(MATCH, price=400.23), "invalid_field", id="float-price"),
    pytest.param(_with(MATCH, sequence="50"), "invalid_field", id="string-sequence"),
    pytest.param(_with(MATCH, sequence=True), "invalid_field", id="bool-sequence"),
    pytest.param(_with(MATCH, side="up"), "invalid_field", id="bad-side"),
    pytest.param(_with(MATCH, time="2014-13-07T08:19:27Z"), "invalid_field", id="bad-month"),
    pytest.param(_with(MATCH, time="yesterday"), "invalid_field", id="bad-time"),
    pytest.param(_with(MATCH, product_id=""), "invalid_field", id="empty-product"),
    pytest.param(
        b'{"type":"l2update","product_id":"X-Y","changes":[["buy","1"]],"time":"2021-04-17T16:43:37Z"}',
        "invalid_field",
        id="short-change",
    ),
    pytest.param(
        b'{"type":"l2update","product_id":"X-Y","changes":[["hold","1","2"]],"time":"2021-04-17T16:43:37Z"}',
        "invalid_field",
        id="bad-change-side",
    ),
    pytest.param(
        b'{"type":"snapshot","product_id":"X-Y","bids":[["1"]],"asks":[]}',
        "invalid_field",
        id="short-level",
    ),
    pytest.param(
        b'{"type":"error","message":"Failed to subscribe","reason":"bad product"}',
        "exchange_error",
        id="exchange-error",
    ),
]


@pytest.mark.parametrize(("frame", "reason"), EXCHANGE_CASES)
def test_exchange_bad_frames(frame: bytes, reason: str) -> None:
    assert _only_error(ExchangeDecoder().decode(frame, TS), frame) == reason


def test_exchange_error_names_the_product() -> None:
    frame = _with(MATCH, price="oops")
    (error,) = ExchangeDecoder().decode(frame, TS).errors
    assert error.product == "coinbase:BTC-USD"
    assert "price" in error.detail


def test_exchange_str_frames_decode_like_bytes() -> None:
    frame = orjson.dumps(MATCH)
    assert ExchangeDecoder().decode(frame.decode(), TS) == ExchangeDecoder().decode(frame, TS)


def _l2(**update: object) -> bytes:
    msg = orjson.loads(orjson.dumps(L2))
    entry = msg["events"][0]["updates"][0]
    for key, value in update.items():
        if value is ...:
            entry.pop(key)
        else:
            entry[key] = value
    return orjson.dumps(msg)


ADVANCED_CASES = [
    pytest.param(b"{", "malformed_json", id="truncated-json"),
    pytest.param(b'"text"', "invalid_message", id="not-an-object"),
    pytest.param(_with(L2, channel="level3"), "unknown_type", id="unknown-channel"),
    pytest.param(_with(L2, sequence_num=...), "missing_field", id="missing-sequence"),
    pytest.param(_with(L2, sequence_num=1.5), "invalid_field", id="float-sequence"),
    pytest.param(_with(L2, timestamp=...), "missing_field", id="missing-timestamp"),
    pytest.param(_with(L2, events={}), "invalid_field", id="events-not-list"),
    pytest.param(_l2(price_level=...), "missing_field", id="missing-price"),
    pytest.param(_l2(new_quantity="1e"), "invalid_field", id="bad-decimal"),
    pytest.param(_l2(side="ask"), "invalid_field", id="bad-side"),
    pytest.param(_l2(event_time="2023-02-30T00:00:00Z"), "invalid_field", id="bad-date"),
    pytest.param(
        b'{"channel":"heartbeats","client_id":"","timestamp":"2023-06-23T20:31:26.122969572Z",'
        b'"sequence_num":9,"events":[{"current_time":"x","heartbeat_counter":"3049"}]}',
        "invalid_field",
        id="string-heartbeat-counter",
    ),
    pytest.param(b'{"type":"error","message":"failure"}', "exchange_error", id="exchange-error"),
]


@pytest.mark.parametrize(("frame", "reason"), ADVANCED_CASES)
def test_advanced_bad_frames(frame: bytes, reason: str) -> None:
    assert _only_error(AdvancedDecoder().decode(frame, TS), frame) == reason
