"""Property tests: the decoders never raise, whatever the bytes.

``decoder_bug`` is the reason the decoders' last-resort ``except`` gives; it must never
appear, so these tests fail on a bug even though the catch-all keeps production alive.
"""

from __future__ import annotations

import json
from typing import Any

from coinbase_support import GOLDEN, json_paths, mutate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledgerflux_coinbase import AdvancedDecoder, ExchangeDecoder

from ledgerflux.events import Event
from ledgerflux.plugin import Decoded, SeqMark

TS = 1_700_000_000_000_000_000
EXCHANGE_TYPES = [
    "ticker",
    "match",
    "last_match",
    "snapshot",
    "l2update",
    "heartbeat",
    "subscriptions",
    "status",
    "error",
    "received",
    "open",
    "done",
    "change",
    "activate",
]
ADVANCED_CHANNELS = [
    "l2_data",
    "ticker",
    "ticker_batch",
    "market_trades",
    "heartbeats",
    "candles",
    "status",
    "subscriptions",
]


def _frames(api: str) -> list[dict[str, Any]]:
    return [json.loads(json.loads(p.read_text())["frame"]) for p in GOLDEN.glob(f"{api}/*.json")]


EXCHANGE_FRAMES = _frames("exchange")
ADVANCED_FRAMES = _frames("advanced")

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["0", "1.5", "-2", "1e9999", "NaN", "buy", "sell", "bid", "offer", "BUY"])
    | st.sampled_from(["2021-04-17T16:43:37.075687Z", "BTC-USD", "snapshot", "update", ""])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _check(decoded: Decoded) -> None:
    assert isinstance(decoded, Decoded)
    for error in decoded.errors:
        assert error.reason != "decoder_bug", error.detail
    for event in decoded.events:
        assert isinstance(event, Event)


def _decode_both(frame: bytes | str) -> None:
    _check(ExchangeDecoder().decode(frame, TS))
    _check(AdvancedDecoder().decode(frame, TS))


@given(st.binary(max_size=300))
def test_arbitrary_bytes(frame: bytes) -> None:
    _decode_both(frame)


@given(st.text(max_size=300))
def test_arbitrary_text(frame: str) -> None:
    _decode_both(frame)


@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    _decode_both(json.dumps(value))


@given(
    st.sampled_from(EXCHANGE_TYPES),
    st.dictionaries(
        st.sampled_from(
            [
                "product_id",
                "sequence",
                "price",
                "size",
                "side",
                "time",
                "trade_id",
                "bids",
                "asks",
                "changes",
                "channels",
                "products",
                "best_bid",
                "best_ask",
                "message",
                "open_24h",
                "best_bid_size",
                "product_ids",
            ]
        ),
        json_values,
    ),
)
def test_exchange_typed_garbage(kind: str, fields: dict[str, Any]) -> None:
    _check(ExchangeDecoder().decode(json.dumps({"type": kind, **fields}), TS))


@given(st.sampled_from(ADVANCED_CHANNELS), json_values, json_values)
def test_advanced_typed_garbage(channel: str, events: Any, seq: Any) -> None:
    frame = {
        "channel": channel,
        "timestamp": "2023-02-09T20:32:50.714964855Z",
        "sequence_num": seq,
        "events": events,
    }
    _check(AdvancedDecoder().decode(json.dumps(frame), TS))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_frames(data: st.DataObject) -> None:
    api = data.draw(st.sampled_from(["exchange", "advanced"]))
    frame = data.draw(st.sampled_from(EXCHANGE_FRAMES if api == "exchange" else ADVANCED_FRAMES))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(json_paths(frame)))
        frame = mutate(frame, path, data.draw(json_values), data.draw(st.booleans()))
    decoder = ExchangeDecoder() if api == "exchange" else AdvancedDecoder()
    _check(decoder.decode(json.dumps(frame), TS))


@given(st.sampled_from(EXCHANGE_FRAMES + ADVANCED_FRAMES), st.integers(0, 400))
def test_truncated_real_frames(frame: dict[str, Any], cut: int) -> None:
    _decode_both(json.dumps(frame)[:cut])


class _CheckedExchange(ExchangeDecoder):
    """The Exchange decoder with its optimistic l2update fast path turned off."""

    def _l2update(self, msg: dict[str, Any], ts_ingest: int) -> Decoded:
        return self._l2update_checked(msg, ts_ingest)


class _CheckedAdvanced(AdvancedDecoder):
    """The Advanced decoder with its optimistic level2 fast path turned off."""

    def _level2(
        self, events: list[Any], ts_frame: int, ts_ingest: int, marks: tuple[SeqMark, ...]
    ) -> Decoded:
        return self._level2_checked(events, ts_frame, ts_ingest, marks)


L2_FRAMES = [
    (ExchangeDecoder, _CheckedExchange, f) for f in EXCHANGE_FRAMES if f["type"] == "l2update"
] + [
    (AdvancedDecoder, _CheckedAdvanced, f) for f in ADVANCED_FRAMES if f.get("channel") == "l2_data"
]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_paths_agree_with_checked_readers(data: st.DataObject) -> None:
    fast, checked, frame = data.draw(st.sampled_from(L2_FRAMES))
    for _ in range(data.draw(st.integers(0, 2))):
        path = data.draw(st.sampled_from(json_paths(frame)))
        frame = mutate(frame, path, data.draw(json_values), data.draw(st.booleans()))
    raw = json.dumps(frame)
    # Twice: the first call fills the product cache, the second takes the fast path.
    for _ in range(2):
        assert fast().decode(raw, TS) == checked().decode(raw, TS)
    warm = fast()
    warm.decode(raw, TS)
    assert warm.decode(raw, TS) == checked().decode(raw, TS)
