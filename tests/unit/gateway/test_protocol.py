"""The sans-IO protocol: request parsing, the token bucket and the send-queue policies."""

from __future__ import annotations

import orjson
import pytest

from ledgerflux.gateway.protocol import (
    Outbox,
    Ping,
    ProtocolError,
    Subscribe,
    TokenBucket,
    Unsubscribe,
    control,
    error_message,
    pack,
    parse_request,
)


def test_subscribe_full_form() -> None:
    request = parse_request(
        b'{"op":"subscribe","id":7,"products":["coinbase:BTC-USD"],"channels":["trades","book"],'
        b'"snapshot":true,"from_seq":{"coinbase:BTC-USD":5},"epoch":"e1","conflate":false,'
        b'"batch":true}'
    )
    assert request == Subscribe(
        id=7,
        products=("coinbase:BTC-USD",),
        channels=frozenset({"trade", "book"}),
        snapshot=True,
        from_seq={"coinbase:BTC-USD": 5},
        epoch={"coinbase:BTC-USD": "e1"},
        batch=True,
    )


def test_subscribe_defaults_to_all_channels_and_max_rate_implies_conflate() -> None:
    request = parse_request('{"op":"subscribe","products":["a:B-C","a:B-C"],"max_rate":5}')
    assert request == Subscribe(
        id=None,
        products=("a:B-C",),
        channels=frozenset({"trade", "quote", "ticker", "book"}),
        max_rate=5.0,
        conflate=True,
    )


def test_unsubscribe_and_ping() -> None:
    assert parse_request('{"op":"unsubscribe","id":"x","products":["a:B-C"]}') == Unsubscribe(
        id="x", products=("a:B-C",)
    )
    assert parse_request('{"op":"ping","id":3}') == Ping(id=3)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{nope", "bad_json"),
        ("[1]", "bad_request"),
        ('{"op":"fly","id":1}', "unknown_op"),
        ('{"id":1}', "unknown_op"),
        ('{"op":"subscribe","id":1}', "bad_request"),
        ('{"op":"subscribe","id":1,"products":["BTC-USD"]}', "bad_product"),
        ('{"op":"subscribe","id":1,"products":[5]}', "bad_product"),
        ('{"op":"subscribe","id":1,"products":["a:B-C"],"channels":["level3"]}', "unknown_channel"),
        ('{"op":"subscribe","id":1,"products":["a:B-C"],"from_seq":{"a:B-C":0}}', "bad_request"),
        ('{"op":"subscribe","id":1,"products":["a:B-C"],"from_seq":{"a:C-D":3}}', "bad_request"),
        ('{"op":"subscribe","id":1,"products":["a:B-C","a:C-D"],"epoch":"e"}', "bad_request"),
        ('{"op":"subscribe","id":1,"products":["a:B-C"],"max_rate":-1}', "bad_request"),
        ('{"op":"subscribe","id":1,"products":["a:B-C"],"snapshot":"yes"}', "bad_request"),
        ('{"op":"subscribe","id":1,"products":["a:B-C"],"extra":1}', "bad_request"),
        ('{"op":"ping","id":[1]}', "bad_request"),
    ],
)
def test_bad_requests_name_their_error(text: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request(text)
    assert info.value.code == code


def test_error_keeps_the_request_id() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_request('{"op":"fly","id":42}')
    assert orjson.loads(error_message(info.value.code, "m", info.value.request_id)) == {
        "type": "error",
        "id": 42,
        "code": "unknown_op",
        "message": "m",
    }


def test_control_and_pack() -> None:
    assert orjson.loads(pack([control("pong", id=1), control("drain")])) == [
        {"type": "pong", "id": 1},
        {"type": "drain"},
    ]


def test_token_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) is True  # one token back after 1/rate
    assert bucket.take(0.5) is False
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped


def _texts(box: Outbox, n: int = 100) -> list[str | None]:
    return [text for text, *_ in box.pop(n)]


def test_outbox_strict_overflows() -> None:
    box = Outbox(limit=2)
    assert box.offer("a:B-C", "trade", 1, "t1")
    assert box.offer("a:B-C", "quote", 2, "q2")
    assert not box.offer("a:B-C", "quote", 3, "q3")
    assert _texts(box) == ["t1", "q2"]


def test_outbox_conflates_quotes_to_the_newest_and_keeps_trades() -> None:
    box = Outbox(limit=10, conflate=True)
    box.offer("a:B-C", "quote", 1, "q1")
    box.offer("a:B-C", "trade", 2, "t2")
    box.offer("a:B-C", "quote", 3, "q3")
    box.offer("a:C-D", "quote", 4, "c4")
    box.offer("a:B-C", "ticker", 5, "k5")
    box.offer("a:B-C", "quote", 6, "q6")
    assert len(box) == 4
    assert _texts(box) == ["t2", "c4", "k5", "q6"]


def test_outbox_conflation_replaces_book_deltas_by_a_resync_marker_on_overflow() -> None:
    box = Outbox(limit=3, conflate=True)
    box.offer("a:B-C", "book", 1, "b1")
    box.offer("a:B-C", "trade", 2, "t2")
    box.offer("a:B-C", "book", 3, "b3")
    assert box.offer("a:B-C", "book", 4, "b4")  # full: b1, b3 become one marker; b4 covered
    assert list(box.pop(10)) == [("t2", "a:B-C", "trade", 2), (None, "a:B-C", "book", 0)]
    # After the snapshot (floor 9) old deltas are skipped, newer ones pass.
    box.book_floor["a:B-C"] = 9
    box.offer("a:B-C", "book", 9, "b9")
    box.offer("a:B-C", "book", 10, "b10")
    assert _texts(box) == ["b10"]


def test_outbox_new_epoch_lifts_the_book_floor_but_still_drops_the_old_stale_deltas() -> None:
    box = Outbox(limit=10)
    box.book_floor["a:B-C"] = 9
    box.offer("a:B-C", "book", 8, "old-b8")  # e1, below the e1 snapshot: stale
    box.offer("a:B-C", "book", 10, "old-b10")
    box.new_epoch("a:B-C")
    box.offer("a:B-C", "book", 2, "new-b2")  # e2 restarts seq at 1
    box.offer("a:B-C", "trade", 3, "new-t3")
    assert _texts(box) == ["old-b10", "new-b2", "new-t3"]
    assert len(box) == 0
    assert box.nbytes == 0


def test_outbox_conflation_never_drops_trades() -> None:
    box = Outbox(limit=2, conflate=True)
    assert box.offer("a:B-C", "trade", 1, "t1")
    assert box.offer("a:B-C", "trade", 2, "t2")
    assert not box.offer("a:B-C", "trade", 3, "t3")


def test_outbox_control_messages_bypass_the_limit() -> None:
    box = Outbox(limit=1)
    box.offer("a:B-C", "trade", 1, "t1")
    box.put_control("pong")
    assert _texts(box) == ["t1", "pong"]


def test_outbox_is_bounded_in_bytes_of_live_events() -> None:
    box = Outbox(limit=1000, max_bytes=10)
    assert box.offer("a:B-C", "trade", 1, "t" * 6)
    assert box.offer("a:B-C", "trade", 2, "t" * 4)
    assert not box.offer("a:B-C", "trade", 3, "t")
    assert box.overflow == "more than 10 bytes queued"
    assert box.nbytes == 10
    box.put_control("c" * 100)  # replies and backfill are not live events
    assert len(_texts(box, 1)) == 1
    assert box.offer("a:B-C", "trade", 3, "t" * 6)
    assert box.nbytes == 4 + 100 + 6


def test_outbox_one_event_larger_than_the_byte_bound_still_goes() -> None:
    box = Outbox(limit=1000, max_bytes=10)
    assert box.offer("a:B-C", "book", 1, "b" * 50)
    assert not box.offer("a:B-C", "book", 2, "b")


def test_outbox_applies_the_policy_by_time_behind_not_by_a_momentary_burst() -> None:
    box = Outbox(limit=1000, max_age_s=30.0)
    # A burst queues many events at once; the client reads them over time.
    for seq in range(1, 501):
        assert box.offer("a:B-C", "trade", seq, f"t{seq}", now=0.0)
    # 25 events read per second: the burst is worked off in about 20 s, under the bound.
    for second in range(1, 25):
        assert len(_texts(box, 25)) == 25 or len(box) == 0
        assert box.offer("a:B-C", "trade", 500 + second, f"t{500 + second}", now=float(second))
    assert len(box) == 0 or box.oldest_age(24.0) < 30.0
    # A client that stopped reading: the oldest event ages past the bound.
    box = Outbox(limit=1000, max_age_s=30.0)
    assert box.offer("a:B-C", "trade", 1, "t1", now=0.0)
    assert box.offer("a:B-C", "trade", 2, "t2", now=30.0)
    assert not box.offer("a:B-C", "trade", 3, "t3", now=30.5)
    assert box.overflow == "oldest queued event waited more than 30 s"


def test_outbox_conflation_makes_room_by_bytes_too() -> None:
    box = Outbox(limit=1000, max_bytes=12, conflate=True)
    assert box.offer("a:B-C", "book", 1, "bbbbb1")
    assert box.offer("a:B-C", "trade", 2, "tttt2")
    assert box.offer("a:B-C", "book", 3, "bbbbb3")  # over: b1 becomes a resync marker
    assert list(box.pop(10)) == [("tttt2", "a:B-C", "trade", 2), (None, "a:B-C", "book", 0)]
