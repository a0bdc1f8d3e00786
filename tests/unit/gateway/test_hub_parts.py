"""Parted book snapshots (ledgerflux.parts) in the hub: applied atomically, delivered,
replayed and conflated as a whole — never half a book — and large books the gateway
renders itself (snapshot replies, book resyncs, books from the store) sent as parts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs
import orjson

from ledgerflux.codec import encode
from ledgerflux.events import Book
from ledgerflux.gateway.hub import PART_MAX_BYTES, Hub
from ledgerflux.parts import split_book
from tests.unit.gateway.fakes import PRODUCT, FakeProductState, book, mixed, trade
from tests.unit.gateway.test_hub import make_hub, received, sub, texts_of, wire


def deep_book(seq: int, levels: int, *, epoch: str = "e1") -> Book:
    return attrs.evolve(
        book(seq, snapshot=True, epoch=epoch),
        bids=tuple((Decimal(100_000 - i), Decimal(i + 1)) for i in range(levels)),
        asks=tuple((Decimal(200_000 + i), Decimal(i + 1)) for i in range(levels)),
    )


def parts_of(whole: Book, count: int) -> list[Book]:
    size = len(encode(whole))
    parts = split_book(whole, size // count + 200)
    assert len(parts) == count
    return parts


def offer_all(hub: Hub, events: list[Any]) -> None:
    for event in events:
        assert hub.offer(event, encode(event).decode()) is None


async def test_a_parted_snapshot_is_applied_only_when_its_last_part_arrives() -> None:
    hub, _ = make_hub()
    offer_all(hub, [mixed(seq) for seq in range(1, 5)])
    session = hub.open_session()
    await hub.subscribe(session, sub())
    whole = deep_book(5, 30)
    parts = parts_of(whole, 3)
    before = hub.states[PRODUCT].to_json()
    offer_all(hub, parts[:2])
    assert hub.states[PRODUCT].to_json() == before  # nothing of it shows yet
    assert received(session) == []
    late = hub.open_session()
    await hub.subscribe(late, sub(snapshot=True))
    (snapshot,) = received(late)
    assert (snapshot["seq"], snapshot["book"]) == (4, before["book"])  # complete books only
    offer_all(hub, [parts[2], mixed(6)])
    expected = FakeProductState(PRODUCT)
    for event in [*(mixed(seq) for seq in range(1, 5)), whole, mixed(6)]:
        expected.apply(event)
    assert hub.states[PRODUCT].to_json() == expected.to_json()
    # Clients get the parts as LF_MD carried them, in order, then what follows.
    assert received(session) == [*(wire(p) for p in parts), wire(mixed(6))]
    assert received(late) == [*(wire(p) for p in parts), wire(mixed(6))]
    (item,) = [i for i in hub.rings[PRODUCT] if i.event.seq == 5]
    assert item.event == whole
    assert [orjson.loads(t) for t in item.texts] == [wire(p) for p in parts]


async def test_backfill_from_the_ring_delivers_every_part_of_a_seq() -> None:
    hub, _ = make_hub()
    whole = deep_book(2, 30)
    parts = parts_of(whole, 3)
    offer_all(hub, [trade(1), *parts, trade(3)])
    session = hub.open_session()
    await hub.subscribe(session, sub(from_seq={PRODUCT: 2}, epoch="e1"))
    assert received(session) == [*(wire(p) for p in parts), wire(trade(3))]


async def test_parts_interrupted_are_dropped_counted_and_the_seq_becomes_a_gap() -> None:
    hub, store = make_hub()
    whole = deep_book(2, 30)
    parts = parts_of(whole, 3)
    store.add_history([trade(1), whole, trade(3)])  # the snapshotter kept the whole book
    offer_all(hub, [trade(1)])
    session = hub.open_session()
    await hub.subscribe(session, sub())
    offer_all(hub, parts[:2])
    gap = hub.offer(trade(3), encode(trade(3)).decode())
    assert hub.stats.incomplete_parts == 1
    assert gap is not None
    assert (gap.from_seq, gap.to_seq) == (2, 2)
    assert await hub.fill_gap(gap)
    assert gap.event is not None
    hub.ingest(gap.event, gap.texts, hole=True)
    assert received(session) == [wire(whole), wire(trade(3))]
    assert hub.stats.holes == 0


async def test_a_part_out_of_order_drops_the_collection() -> None:
    hub, _ = make_hub()
    parts = parts_of(deep_book(1, 30), 3)
    offer_all(hub, [parts[0], parts[2]])
    assert hub.stats.incomplete_parts == 1
    assert PRODUCT not in hub.states or hub.states[PRODUCT].seq == 0
    offer_all(hub, parts)  # a fresh, complete sequence is applied
    assert hub.states[PRODUCT].seq == 1


async def test_conflation_drops_all_parts_of_a_snapshot_or_none() -> None:
    hub, _ = make_hub(send_queue=4)
    session = hub.open_session()
    await hub.subscribe(session, sub(conflate=True))
    parts = parts_of(deep_book(1, 30), 3)
    offer_all(hub, parts)  # 3 of 4 queued
    offer_all(hub, [book(2, bids=(("9999", "5"),)), book(3, bids=(("9998", "5"),))])
    # Over the bound: every queued book entry (all three parts included) became one
    # resync, rendered from the current book.
    (resync,) = received(session)
    assert (resync["type"], resync["snapshot"], resync["seq"]) == ("book", True, 3)
    assert "part" not in resync
    assert resync["bids"] == hub.states[PRODUCT].to_json()["book"]["bids"]


async def test_a_huge_book_goes_to_clients_in_parts_that_make_the_whole() -> None:
    hub, store = make_hub(ring_size=2)
    whole = deep_book(1, 40_000)
    assert len(encode(whole)) > 2 * PART_MAX_BYTES
    store.add_history([whole, trade(2), trade(3)])
    for event in (whole, trade(2), trade(3)):
        hub.ingest(event)  # as if LF_MD carried it whole
    # The snapshot reply.
    session = hub.open_session()
    await hub.subscribe(session, sub(snapshot=True))
    texts = texts_of(session)
    assert len(texts) >= 3
    assert all(len(t) <= PART_MAX_BYTES for t in texts)
    messages = [orjson.loads(t) for t in texts]
    assert [(m["part"], m["parts"]) for m in messages] == [
        (i, len(texts)) for i in range(len(texts))
    ]
    state = hub.states[PRODUCT].to_json()
    assert [b for m in messages for b in m["book"]["bids"]] == state["book"]["bids"]
    assert [a for m in messages for a in m["book"]["asks"]] == state["book"]["asks"]
    for m in messages:
        del m["part"], m["parts"], m["book"]
    expected = orjson.loads(orjson.dumps({"type": "snapshot", **state}))
    del expected["book"]
    assert all(m == expected for m in messages)
    # The book from the store (older than the ring) for a from_seq.
    session = hub.open_session()
    await hub.subscribe(session, sub(from_seq={PRODUCT: 1}))
    texts = texts_of(session)
    books = [orjson.loads(t) for t in texts[:-2]]
    assert all(len(t) <= PART_MAX_BYTES for t in texts)
    assert [(b["type"], b["seq"], b["part"], b["parts"]) for b in books] == [
        ("book", 1, i, len(books)) for i in range(len(books))
    ]
    assert [orjson.loads(t) for t in texts[-2:]] == [wire(trade(2)), wire(trade(3))]
    assert [b for m in books for b in m["bids"]] == wire(whole)["bids"]
    assert [a for m in books for a in m["asks"]] == wire(whole)["asks"]


async def test_batch_frames_take_no_message_that_would_pass_the_frame_limit() -> None:
    from ledgerflux.gateway.hub import FRAME_MAX_BYTES

    hub, _ = make_hub()
    session = hub.open_session()
    await hub.subscribe(session, sub(batch=True))
    events = [trade(seq, trade_id="x" * 60_000) for seq in range(1, 30)]
    offer_all(hub, events)
    frames = []
    while frame := session.take(256):
        frames.append(frame)
    assert all(sum(map(len, f)) <= FRAME_MAX_BYTES for f in frames)
    assert len(frames) > 1
    assert [orjson.loads(t) for f in frames for t in f] == [wire(e) for e in events]
