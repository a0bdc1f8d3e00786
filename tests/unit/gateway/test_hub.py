"""Hub semantics at the seam (docs/protocol.md): snapshot + live, ring and store backfill,
reset, channel filtering, slow consumers, conflation and drain — in memory."""

from __future__ import annotations

from typing import Any

import orjson
import trio

from ledgerflux.codec import encode
from ledgerflux.events import Event
from ledgerflux.gateway.hub import Hub, Session
from ledgerflux.gateway.protocol import Subscribe, parse_request
from tests.unit.gateway.fakes import PRODUCT, FakeProductState, FakeStore, mixed, trade


def wire(event: Event) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(encode(event))
    return result


def make_hub(*, ring_size: int = 100, send_queue: int = 1000) -> tuple[Hub, FakeStore]:
    store = FakeStore()
    hub = Hub(
        state_factory=FakeProductState, ring_size=ring_size, send_queue=send_queue, store=store
    )
    return hub, store


def texts_of(session: Session) -> list[str]:
    """Everything queued for ``session``, frame after frame."""
    texts: list[str] = []
    while frame := session.take(1_000_000):
        texts.extend(frame)
    return texts


def received(session: Session) -> list[dict[str, Any]]:
    return [orjson.loads(text) for text in texts_of(session)]


def sub(**fields: Any) -> Subscribe:
    request = parse_request(orjson.dumps({"op": "subscribe", "products": [PRODUCT], **fields}))
    assert isinstance(request, Subscribe)
    return request


def feed(hub: Hub, seqs: range, **kw: Any) -> list[Event]:
    events = [mixed(seq, **kw) for seq in seqs]
    for event in events:
        hub.ingest(event)
    return events


async def test_snapshot_then_live_without_hole_or_duplicate() -> None:
    hub, _ = make_hub()
    feed(hub, range(1, 11))
    expected = {"type": "snapshot", **hub.states[PRODUCT].to_json()}
    session = hub.open_session()
    await hub.subscribe(session, sub(snapshot=True))
    later = feed(hub, range(11, 14))
    snapshot, *live = received(session)
    assert snapshot == orjson.loads(orjson.dumps(expected))
    assert snapshot["seq"] == 10
    assert live == [wire(e) for e in later]


async def test_duplicates_from_the_stream_are_ignored() -> None:
    hub, _ = make_hub()
    events = feed(hub, range(1, 4))
    session = hub.open_session()
    await hub.subscribe(session, sub())
    hub.ingest(events[1])
    hub.ingest(mixed(4))
    assert received(session) == [wire(mixed(4))]
    assert hub.stats.duplicates == 1


async def test_from_seq_inside_the_ring_replays_exactly() -> None:
    hub, store = make_hub(ring_size=10)
    feed(hub, range(1, 21))
    session = hub.open_session()
    await hub.subscribe(
        session,
        sub(from_seq={PRODUCT: 12}, epoch="e1"),
    )
    feed(hub, range(21, 23))
    assert [m["seq"] for m in received(session)] == list(range(12, 23))
    assert store.history_calls == 0


async def test_from_seq_older_than_the_ring_comes_from_the_store_while_live_continues(
    autojump_clock: trio.abc.Clock,
) -> None:
    hub, store = make_hub(ring_size=5)
    events = feed(hub, range(1, 31))
    store.add_history(events)
    store.history_delay = 1.0
    session = hub.open_session()
    request = sub(from_seq={PRODUCT: 3})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.subscribe, session, request)
        await trio.sleep(0.5)  # the store query is in flight; events keep arriving
        live = feed(hub, range(31, 41))  # more than the ring holds: evicts the ring copy
    feed(hub, range(41, 43))
    messages = received(session)
    assert [m["seq"] for m in messages] == list(range(3, 43))
    assert messages == [wire(e) for e in [*events[2:], *live, mixed(41), mixed(42)]]


async def test_from_seq_no_longer_retained_is_a_reset_and_snapshot() -> None:
    hub, store = make_hub(ring_size=5)
    events = feed(hub, range(1, 21))
    store.add_history(events[10:])  # 1..10 expired from the store
    expected = orjson.loads(orjson.dumps({"type": "snapshot", **hub.states[PRODUCT].to_json()}))
    session = hub.open_session()
    await hub.subscribe(session, sub(from_seq={PRODUCT: 2}))
    feed(hub, range(21, 22))
    status, snapshot, live = received(session)
    assert status["type"] == "status"
    assert status["status"] == "reset"
    assert status["seq"] == 20
    assert snapshot == expected
    assert snapshot["seq"] == 20
    assert live == wire(mixed(21))


async def test_epoch_mismatch_is_a_reset() -> None:
    hub, _ = make_hub()
    feed(hub, range(1, 6), epoch="e2")
    session = hub.open_session()
    await hub.subscribe(
        session,
        sub(from_seq={PRODUCT: 2}, epoch="e1"),
    )
    status, snapshot = received(session)
    assert (status["status"], status["epoch"]) == ("reset", "e2")
    assert (snapshot["type"], snapshot["seq"], snapshot["epoch"]) == ("snapshot", 5, "e2")


async def test_new_epoch_in_the_stream_restarts_seq() -> None:
    hub, _ = make_hub()
    feed(hub, range(1, 6))
    session = hub.open_session()
    await hub.subscribe(session, sub())
    after = feed(hub, range(1, 3), epoch="e2")
    assert received(session) == [wire(e) for e in after]
    assert hub.states[PRODUCT].epoch == "e2"


async def test_book_deltas_of_a_new_epoch_pass_after_a_reset_snapshot_of_the_old_one() -> None:
    # The chaos suite's holes: a resume the store could not serve got reset + a snapshot
    # at seq 20 of e1; the snapshot's book floor (20) then hid e2's book deltas 2 and 5
    # (seq <= 20, but of another seq space) while its trades and quotes went through.
    hub, _ = make_hub(ring_size=5)
    feed(hub, range(1, 21))
    session = hub.open_session()
    await hub.subscribe(session, sub(from_seq={PRODUCT: 2}))
    status, snapshot = received(session)
    assert (status["status"], snapshot["seq"], snapshot["epoch"]) == ("reset", 20, "e1")
    after = feed(hub, range(1, 7), epoch="e2")
    assert received(session) == [wire(e) for e in after]


async def test_channels_filter_event_types_but_status_always_passes() -> None:
    from ledgerflux.events import Status
    from tests.unit.gateway.fakes import quote

    hub, _ = make_hub()
    session = hub.open_session()
    await hub.subscribe(session, sub(channels=["trades"]))
    status = Status(product=PRODUCT, seq=3, epoch="e1", ts_event=1, ts_ingest=1, status="gap")
    for event in (trade(1), quote(2), status, trade(4, product="x:Y")):
        hub.ingest(event)
    assert received(session) == [wire(trade(1)), wire(status)]


async def test_slow_consumer_is_killed_with_4001_and_forgotten() -> None:
    hub, _ = make_hub(send_queue=3)
    session = hub.open_session()
    await hub.subscribe(session, sub())
    feed(hub, range(1, 5))
    assert session.close == (4001, "slow consumer")
    assert session not in hub.subscribers.get(PRODUCT, set())
    assert PRODUCT not in hub.subscribers  # no empty set left behind
    assert received(session) == []
    assert hub.stats.slow_consumers == 1


async def test_conflating_client_gets_a_book_snapshot_instead_of_stale_deltas() -> None:
    from tests.unit.gateway.fakes import book

    hub, _ = make_hub(send_queue=3)
    session = hub.open_session()
    await hub.subscribe(session, sub(conflate=True))
    hub.ingest(book(1, snapshot=True))
    for seq in range(2, 8):
        hub.ingest(book(seq, bids=((str(100 - seq), "1"),)))
    hub.ingest(trade(8))
    assert session.close is None
    first, second = received(session)
    assert first["type"] == "book"
    assert first["snapshot"] is True
    assert first["seq"] == 8
    assert first["bids"] == hub.states[PRODUCT].to_json()["book"]["bids"]
    assert second == wire(trade(8))
    hub.ingest(book(9, bids=(("50", "1"),)))
    assert received(session) == [wire(book(9, bids=(("50", "1"),)))]


async def test_run_sender_batches_and_drain_closes_1001() -> None:
    hub, _ = make_hub()
    session = hub.open_session()
    await hub.subscribe(session, sub(batch=True))
    events = feed(hub, range(1, 4))
    hub.drain()
    frames: list[str] = []

    async def send(text: str) -> None:
        frames.append(text)

    with trio.fail_after(5):
        assert await session.run_sender(send) == (1001, "gateway draining")
    assert [orjson.loads(f) for f in frames] == [[*(wire(e) for e in events), {"type": "drain"}]]


async def test_backfill_larger_than_the_send_queue_is_not_a_slow_consumer() -> None:
    hub, store = make_hub(ring_size=50, send_queue=5)
    events = feed(hub, range(1, 101))
    store.add_history(events)
    session = hub.open_session()
    await hub.subscribe(session, sub(from_seq={PRODUCT: 1}))
    assert session.close is None
    feed(hub, range(101, 104))
    assert [m["seq"] for m in received(session)] == list(range(1, 104))


async def test_store_failure_during_backfill_is_a_reset_not_a_crash() -> None:
    hub, store = make_hub(ring_size=5)
    feed(hub, range(1, 21))

    async def broken(*args: Any, **kwargs: Any) -> list[Event]:
        raise RuntimeError("database is down")

    store.history = broken  # type: ignore[method-assign]
    session = hub.open_session()
    await hub.subscribe(session, sub(from_seq={PRODUCT: 2}))
    status, snapshot = received(session)
    assert (status["status"], status["reason"]) == ("reset", "seq 2 is no longer retained")
    assert (snapshot["type"], snapshot["seq"]) == ("snapshot", 20)
    assert hub.stats.store_errors == 1


# -- the LF_MD consumer's audit: never skip a seq that can still be received -----------------


async def test_a_seq_jump_is_not_applied_but_returned_as_a_gap() -> None:
    from ledgerflux.gateway.hub import Gap

    hub, _ = make_hub()
    feed(hub, range(1, 6))
    session = hub.open_session()
    await hub.subscribe(session, sub())
    assert hub.ingest(mixed(9)) == Gap(PRODUCT, "e1", 6, 8)
    assert hub.states[PRODUCT].seq == 5
    assert received(session) == []
    assert hub.ingest(mixed(3, epoch="e2")) == Gap(PRODUCT, "e2", 1, 2)  # new epoch at 3


async def test_a_gap_the_store_holds_is_filled_in_order() -> None:
    hub, store = make_hub()
    events = [mixed(seq) for seq in range(1, 21)]
    store.add_history(events)
    for event in events[:5]:
        hub.ingest(event)
    session = hub.open_session()
    await hub.subscribe(session, sub())
    gap = hub.ingest(events[12])
    assert gap is not None
    assert await hub.fill_gap(gap)
    assert hub.ingest(events[12], hole=True) is None
    assert received(session) == [wire(e) for e in events[5:13]]
    assert (hub.stats.gaps_filled, hub.stats.holes, hub.stats.resets) == (1, 0, 0)


async def test_a_real_hole_is_a_reset_and_snapshot_never_a_silent_jump() -> None:
    hub, _ = make_hub()
    feed(hub, range(1, 6))
    session = hub.open_session()
    await hub.subscribe(session, sub())
    gap = hub.ingest(mixed(9))
    assert gap is not None
    assert not await hub.fill_gap(gap)  # the store does not hold 6..8 either
    hub.ingest(mixed(9), hole=True)
    hub.ingest(mixed(10))
    status, snapshot, live = received(session)
    assert status["type"] == "status"
    assert (status["status"], status["seq"], status["epoch"]) == ("reset", 9, "e1")
    assert status["reason"] == "seq 6..8 of epoch 'e1' no longer retained"
    expected = FakeProductState(PRODUCT)
    expected.apply(mixed(9))
    assert snapshot == orjson.loads(orjson.dumps({"type": "snapshot", **expected.to_json()}))
    assert live == wire(mixed(10))
    assert hub.stats.holes == 1
    # The ring restarted at the hole: a from_seq before it cannot be served from memory.
    assert [item.event.seq for item in hub.rings[PRODUCT]] == [9, 10]


async def test_a_hole_during_a_store_backfill_resets_the_waiting_session(
    autojump_clock: trio.abc.Clock,
) -> None:
    hub, store = make_hub(ring_size=5)
    events = feed(hub, range(1, 31))
    store.add_history(events)
    store.history_delay = 1.0
    session = hub.open_session()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.subscribe, session, sub(from_seq={PRODUCT: 3}))
        await trio.sleep(0.5)
        hub.ingest(mixed(31))
        hub.ingest(mixed(40), hole=True)
        hub.ingest(mixed(41))
    messages = received(session)
    assert [(m["type"], m.get("status"), m["seq"]) for m in messages] == [
        ("status", "reset", 40),
        ("snapshot", None, 40),
        ("book", None, 41),
    ]


async def test_messages_at_or_below_a_loaded_state_position_are_skipped() -> None:
    # The replay at start begins at the oldest stored position: a product stored later
    # (here in a newer epoch) must not be rebuilt from its older messages, nor see holes.
    hub, _ = make_hub()
    stored = FakeProductState(PRODUCT)
    for seq in (1, 2, 3):
        stored.apply(mixed(seq, epoch="e2"))
    hub.load_state(stored.to_json(), stream_seq=8)
    for position, event in enumerate([*(mixed(s) for s in range(1, 6)), mixed(1, epoch="e2")], 2):
        assert hub.ingest(event, stream_seq=position) is None
    assert hub.ingest(mixed(2, epoch="e2"), stream_seq=8) is None
    assert hub.ingest(mixed(4, epoch="e2"), stream_seq=9) is None
    assert (hub.stats.duplicates, hub.stats.holes) == (7, 0)
    assert (hub.states[PRODUCT].epoch, hub.states[PRODUCT].seq) == ("e2", 4)
