"""Which frames report sequence numbers, judged by the runtime's own SequenceTracker."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from coinbase_support import CAPTURE
from ledgerflux_coinbase import AdvancedDecoder, ExchangeDecoder, read_capture

from ledgerflux.events import Trade
from ledgerflux.feeds.sequence import SequenceTracker, SeqVerdict
from ledgerflux.plugin import SeqMark, SequenceModel

TS = 1_700_000_000_000_000_000


def _subscriptions(*channels: str) -> bytes:
    return orjson.dumps(
        {
            "type": "subscriptions",
            "channels": [{"name": c, "product_ids": ["BTC-USD"]} for c in channels],
        }
    )


def _match(sequence: int) -> bytes:
    return orjson.dumps(
        {
            "type": "match",
            "trade_id": sequence,
            "sequence": sequence,
            "maker_order_id": "a",
            "taker_order_id": "b",
            "time": "2024-01-02T03:04:05.123456Z",
            "product_id": "BTC-USD",
            "size": "1",
            "price": "42000.01",
            "side": "buy",
        }
    )


def _ticker(sequence: int) -> bytes:
    return orjson.dumps(
        {
            "type": "ticker",
            "sequence": sequence,
            "product_id": "BTC-USD",
            "price": "42000.01",
            "best_bid": "42000.00",
            "best_ask": "42000.02",
            "time": "2024-01-02T03:04:05.123456Z",
        }
    )


def _other(kind: str, sequence: int) -> bytes:
    return orjson.dumps(
        {
            "type": kind,
            "sequence": sequence,
            "product_id": "BTC-USD",
            "time": "2024-01-02T03:04:05.123456Z",
            "order_id": "o",
        }
    )


def test_full_channel_sequences_are_tracked_and_a_ticker_first_keeps_the_trade() -> None:
    decoder = ExchangeDecoder()
    tracker = SequenceTracker(SequenceModel.PER_PRODUCT)
    assert decoder.decode(_subscriptions("full", "ticker", "heartbeat"), TS).marks == ()
    verdicts = []
    # The ticker of match 12 arrives before the match itself (another channel).
    for frame in (_other("received", 10), _other("open", 11), _ticker(12), _match(12)):
        decoded = decoder.decode(frame, TS)
        assert not decoded.errors
        verdicts += [tracker.check(mark) for mark in decoded.marks]
    assert verdicts == [SeqVerdict.OK, SeqVerdict.OK, SeqVerdict.OK]
    # A replayed match is a duplicate; a hole is a gap; a heartbeat repeating it is fine.
    assert [tracker.check(m) for m in decoder.decode(_match(12), TS).marks] == [
        SeqVerdict.DUPLICATE
    ]
    assert [tracker.check(m) for m in decoder.decode(_other("done", 14), TS).marks] == [
        SeqVerdict.GAP
    ]
    heartbeat = decoder.decode(_other("heartbeat", 14), TS)
    assert heartbeat.heartbeat
    assert heartbeat.marks == (SeqMark("coinbase:BTC-USD", 14, carries_state=False),)
    assert tracker.check(heartbeat.marks[0]) is SeqVerdict.OK


def test_without_full_no_marks_but_events_keep_src_seq() -> None:
    decoder = ExchangeDecoder()
    decoder.decode(_subscriptions("full", "matches"), TS)
    assert decoder.decode(_match(5), TS).marks != ()
    # A later reply (after an unsubscribe from `full`) replaces the earlier one.
    decoder.decode(_subscriptions("matches", "heartbeat"), TS)
    decoded = decoder.decode(_match(40), TS)
    assert decoded.marks == ()
    (trade,) = decoded.events
    assert isinstance(trade, Trade)
    assert trade.src_seq == 40
    assert decoder.decode(_other("heartbeat", 41), TS).marks == ()


@pytest.mark.skipif(not CAPTURE.exists(), reason="reference capture not present")
def test_reference_capture_never_drops_a_trade_as_duplicate() -> None:
    # The capture has no `full` channel: its sparse numbers must not reach the tracker,
    # or 17 of its 97 live matches (which follow their own ticker) would be dropped.
    decoder = ExchangeDecoder()
    tracker = SequenceTracker(SequenceModel.PER_PRODUCT)
    verdicts: Counter[SeqVerdict] = Counter()
    trades = 0
    for frame in read_capture(CAPTURE):
        if frame.direction == "received":
            decoded = decoder.decode(frame.frame, frame.ts_ns)
            verdicts.update(tracker.check(mark) for mark in decoded.marks)
            trades += sum(isinstance(e, Trade) for e in decoded.events)
    assert verdicts == Counter()
    assert trades == 107


def test_advanced_marks_every_frame_with_the_connection_counter() -> None:
    decoder = AdvancedDecoder()
    frames = [
        {"channel": "heartbeats", "events": [{"current_time": "x", "heartbeat_counter": 1}]},
        {"channel": "subscriptions", "events": [{"subscriptions": {"level2": ["BTC-USD"]}}]},
        {"channel": "candles", "events": []},
    ]
    marks = []
    for number, frame in enumerate(frames, start=7):
        frame.update(client_id="", timestamp="2023-02-09T20:32:50.1Z", sequence_num=number)
        marks += decoder.decode(orjson.dumps(frame), TS).marks
    assert marks == [SeqMark(None, 7), SeqMark(None, 8), SeqMark(None, 9)]
