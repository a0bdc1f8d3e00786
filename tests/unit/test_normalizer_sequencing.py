"""The normalizer against an in-memory bus: sequencing, epochs, dedup, DLQ reasons,
fencing and drain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import attrs
import orjson
import pytest
import trio

from ledgerflux import codec
from ledgerflux.bus import BusError, InMsg, OutMsg, PubAck, PublishFailed, PublishFenced
from ledgerflux.config import Config, NormalizeConfig
from ledgerflux.events import Book, Event, Quote, Status, Trade
from ledgerflux.normalizer import NormalizeStats, new_epoch, serve_normalize
from ledgerflux.subjects import MD_STREAM, TICKS_STREAM, md_subject, shard_of, ticks_subject

SHARDS = 2
D = Decimal


def product_in(shard: int, symbol_prefix: str = "P") -> str:
    for i in range(1000):
        product = f"test:{symbol_prefix}{i}-USD"
        if shard_of(product, SHARDS) == shard:
            return product
    raise AssertionError("no product")


A = product_in(0, "A")
B = product_in(0, "B")
OTHER = product_in(1, "C")
T0 = 1_700_000_000_000_000_000


@attrs.define
class Stored:
    seq: int
    subject: str
    data: bytes
    msg_id: str | None


class FakeConsumer:
    def __init__(self, bus: FakeBus, filter_subject: str, batch: int) -> None:
        self.bus = bus
        self.prefix = filter_subject.removesuffix(">")
        self.batch = batch
        self.acked = bus.acked.setdefault(filter_subject, [])
        self.naked: list[int] = []

    def _pending(self) -> list[Stored]:
        done = set(self.acked) | self.bus.in_flight
        return [
            m
            for m in self.bus.streams[TICKS_STREAM]
            if m.subject.startswith(self.prefix) and m.seq not in done
        ]

    async def fetch(self, timeout_s: float = 1.0) -> list[InMsg]:
        with trio.move_on_after(timeout_s):
            while True:
                pending = self._pending()[: self.batch]
                if pending:
                    self.bus.in_flight |= {m.seq for m in pending}
                    return [InMsg(m.subject, m.data, m.seq, {}) for m in pending]
                await self.bus.changed.wait()
        return []

    async def ack(self, msgs: Sequence[InMsg]) -> None:
        await trio.lowlevel.checkpoint()
        for m in msgs:
            self.acked.append(m.stream_seq)
            self.bus.in_flight.discard(m.stream_seq)

    async def nak(self, msgs: Sequence[InMsg], delay_s: float = 0.0) -> None:
        await trio.lowlevel.checkpoint()
        for m in msgs:
            self.naked.append(m.stream_seq)
            self.bus.in_flight.discard(m.stream_seq)
        self.bus.poke()


class FakeBus:
    """Streams as lists; msg-id dedup and expected-last-subject-seq fencing like JetStream."""

    def __init__(self) -> None:
        self.streams: dict[str, list[Stored]] = {TICKS_STREAM: [], MD_STREAM: [], "LF_DLQ": []}
        self.seq = 0
        self.in_flight: set[int] = set()
        self.changed = trio.Event()
        self.consumers: list[FakeConsumer] = []
        self.publish_calls = 0
        self.fail_next: dict[str, BusError] = {}
        self.block_publish: trio.Event | None = None
        self.acked: dict[str, list[int]] = {}
        self.fail_lookups = 0
        self.calls: list[list[OutMsg]] = []

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def stream_of(self, subject: str) -> str:
        if subject.startswith("lf.ticks."):
            return TICKS_STREAM
        if subject.startswith("lf.md."):
            return MD_STREAM
        return "LF_DLQ"

    def store(self, out: OutMsg) -> PubAck | BusError:
        stream = self.stream_of(out.subject)
        msgs = self.streams[stream]
        if out.msg_id is not None:
            for m in msgs:
                if m.msg_id == out.msg_id:
                    return PubAck(stream, m.seq, duplicate=True)
        if out.expected_last_subject_seq is not None:
            last = max((m.seq for m in msgs if m.subject == out.subject), default=0)
            if last != out.expected_last_subject_seq:
                return PublishFenced(out.subject, f"last is {last}")
        self.seq += 1
        msgs.append(Stored(self.seq, out.subject, out.data, out.msg_id))
        self.poke()
        return PubAck(stream, self.seq, duplicate=False)

    def publish_ticks(self, events: list[Event]) -> None:
        product = events[0].product
        self.store(OutMsg(ticks_subject(product, SHARDS), codec.encode_many(events)))

    def publish_raw(self, subject: str, data: bytes) -> None:
        self.store(OutMsg(subject, data))

    @asynccontextmanager
    async def pull(
        self, stream: str, durable: str, filter_subject: str, *, batch: int
    ) -> AsyncIterator[FakeConsumer]:
        assert stream == TICKS_STREAM
        consumer = FakeConsumer(self, filter_subject, batch)
        self.consumers.append(consumer)
        yield consumer

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        self.publish_calls += 1
        self.calls.append(list(msgs))
        if self.block_publish is not None:
            await self.block_publish.wait()
        await trio.lowlevel.checkpoint()
        results: list[PubAck | BusError] = []
        for m in msgs:
            injected = self.fail_next.pop(m.subject, None)
            results.append(injected if injected is not None else self.store(m))
        return results

    async def get_msg(self, stream: str, seq: int) -> InMsg | None:
        await trio.lowlevel.checkpoint()
        for m in self.streams[stream]:
            if m.seq == seq:
                return InMsg(m.subject, m.data, m.seq, {})
        return None

    async def last_for_subject(self, stream: str, subject: str) -> InMsg | None:
        await trio.lowlevel.checkpoint()
        if self.fail_lookups:
            self.fail_lookups -= 1
            raise BusError("direct get timed out")
        for m in reversed(self.streams[stream]):
            if m.subject == subject:
                return InMsg(m.subject, m.data, m.seq, {})
        return None

    # -- reading back ------------------------------------------------------------------

    def md(self, product: str | None = None) -> list[Event]:
        out = [codec.decode(m.data) for m in self.streams[MD_STREAM]]
        return [e for e in out if product is None or e.product == product]

    def dlq(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.data) for m in self.streams["LF_DLQ"]]


def trade(product: str, src_seq: int | None, price: str = "100", ts: int = 0) -> Trade:
    return Trade(
        product=product, src_seq=src_seq, ts_event=T0 + ts, ts_ingest=T0 + ts + 5,
        price=D(price), size=D("0.5"), side="sell", trade_id=None,
    )  # fmt: skip


def book(product: str, snapshot: bool, src_seq: int | None = None, bids=(), asks=()) -> Book:  # type: ignore[no-untyped-def]
    return Book(
        product=product, src_seq=src_seq, ts_event=T0, ts_ingest=T0 + 1, snapshot=snapshot,
        bids=tuple((D(p), D(s)) for p, s in bids), asks=tuple((D(p), D(s)) for p, s in asks),
    )  # fmt: skip


def status(product: str, kind: str, reason: str = "", ts_ingest: int = T0) -> Status:
    return Status(
        product=product, ts_event=T0, ts_ingest=ts_ingest, status=kind, reason=reason,  # type: ignore[arg-type]
    )  # fmt: skip


CONFIG = Config(normalize=NormalizeConfig(shards=SHARDS, batch=64))


async def run_until_drained(
    bus: FakeBus, *, shard: int = 0, stats: NormalizeStats | None = None
) -> NormalizeStats:
    """Run a normalizer until every LF_TICKS message of its shard is acked, then cancel it."""
    stats = stats if stats is not None else NormalizeStats()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_normalize(
                    CONFIG, bus=bus, shard=shard, stats=stats, task_status=task_status
                )
            )
            consumer = bus.consumers[-1]
            await wait_while(lambda: any(
                m.subject.startswith(consumer.prefix) and m.seq not in consumer.acked
                for m in bus.streams[TICKS_STREAM]
            ))  # fmt: skip
            nursery.cancel_scope.cancel()
    return stats


async def wait_while(predicate: Callable[[], bool]) -> None:
    """Poll the fake's state; the autojump clock makes the sleeps free."""
    while predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


def seqs(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.epoch, e.seq) for e in events]


def strip(event: Event) -> Event:
    return attrs.evolve(event, seq=0, epoch="")


async def test_sequences_contiguously_per_product_in_one_batch(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(A, 1), trade(A, 2)])
    bus.publish_ticks([trade(B, 1)])
    bus.publish_ticks([trade(A, 3), trade(A, 4, price="101")])
    stats = await run_until_drained(bus)
    a = bus.md(A)
    assert [e.seq for e in a] == [1, 2, 3, 4]
    assert len({e.epoch for e in a}) == 1
    assert [strip(e) for e in a] == [trade(A, 1), trade(A, 2), trade(A, 3), trade(A, 4, "101")]
    assert [e.seq for e in bus.md(B)] == [1]
    assert bus.publish_calls == 2  # new epochs: their first messages go first, alone
    assert (stats.events_in, stats.events_out) == (5, 5)
    assert bus.dlq() == []


async def test_msg_ids_and_fences(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(A, 1), trade(A, 2)])
    await run_until_drained(bus)
    ids = [m.msg_id for m in bus.streams[MD_STREAM]]
    epoch = bus.md(A)[0].epoch
    assert ids == [f"{A}:{epoch}:1", f"{A}:{epoch}:2"]


async def test_restart_continues_seq_and_epoch_from_lf_md(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(A, 1), trade(A, 2)])
    await run_until_drained(bus)
    bus.publish_ticks([trade(A, 3)])
    bus.publish_ticks([trade(A, 2)])  # redelivered / re-sent input: duplicate by src_seq
    calls = bus.publish_calls
    stats = await run_until_drained(bus)
    assert bus.publish_calls == calls + 1  # same epoch: the whole batch in one call
    a = bus.md(A)
    assert [e.seq for e in a] == [1, 2, 3]
    assert len({e.epoch for e in a}) == 1
    assert stats.recovered == 1
    assert [d["reason"] for d in bus.dlq()] == ["out_of_order"]


async def test_duplicate_and_out_of_order_go_to_dlq(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(A, 5), trade(A, 5), trade(A, 4), trade(A, 6), trade(A, None)])
    stats = await run_until_drained(bus)
    assert [strip(e) for e in bus.md(A)] == [trade(A, 5), trade(A, 6), trade(A, None)]
    assert [e.seq for e in bus.md(A)] == [1, 2, 3]
    dlq = bus.dlq()
    assert [(d["reason"], d["event"]["src_seq"]) for d in dlq] == [
        ("duplicate", 5), ("out_of_order", 4)]  # fmt: skip
    assert dlq[0]["event"] == orjson.loads(codec.encode(trade(A, 5)))
    assert dlq[0]["shard"] == 0
    assert stats.rejects == {"duplicate": 1, "out_of_order": 1}


async def test_src_seq_is_tracked_per_event_type(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(A, 7), book(A, True, 7, bids=[("1", "1")])])
    await run_until_drained(bus)
    assert [e.TYPE for e in bus.md(A)] == ["trade", "book"]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (trade(A, 1, price="0"), "invalid"),
        (trade(A, 1, price="-1"), "invalid"),
        (attrs.evolve(trade(A, 1), ts_event=0), "bad_timestamp"),
        (attrs.evolve(trade(A, 1), ts_event=T0 + 10**12), "bad_timestamp"),
        (attrs.evolve(trade(A, 1), seq=3, epoch="x"), "invalid"),
        (book(A, True, bids=[("1", "0")]), "invalid"),
        (book(A, False, bids=[("-1", "1")]), "invalid"),
        (Quote(product=A, ts_event=T0, ts_ingest=T0, bid_price=D(2), bid_size=D(1),
               ask_price=D(1), ask_size=D(1)), "invalid"),
        (Quote(product=A, ts_event=T0, ts_ingest=T0, bid_price=D(2), bid_size=None,
               ask_price=None, ask_size=None), "invalid"),
        (trade(OTHER, 1), "wrong_shard"),
        (trade("nocolon", 1), "invalid"),
    ],
)  # fmt: skip
async def test_bad_input_goes_to_dlq_with_reason(
    event: Event, reason: str, autojump_clock: Any
) -> None:
    bus = FakeBus()
    bus.publish_raw(ticks_subject(A, SHARDS), codec.encode_many([event]))
    stats = await run_until_drained(bus)
    assert bus.md() == []
    [entry] = bus.dlq()
    assert entry["reason"] == reason
    assert entry["event"] == orjson.loads(codec.encode(event))
    assert stats.rejects == {reason: 1}
    assert bus.consumers[-1].acked  # rejected input is acked once its DLQ entry is stored


async def test_undecodable_message_goes_to_dlq_raw(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_raw("lf.ticks.0.test.X", b'[{"type": "trade", "price": 1.5}]')
    bus.publish_raw("lf.ticks.0.test.X", b"not json")
    await run_until_drained(bus)
    dlq = bus.dlq()
    assert [d["reason"] for d in dlq] == ["decode_error", "decode_error"]
    assert dlq[1]["raw"] == "not json"
    assert [m.subject for m in bus.streams["LF_DLQ"]] == ["lf.dlq.test.X"] * 2


async def test_delta_without_snapshot_is_rejected_and_gap_announced_once(
    autojump_clock: Any,
) -> None:
    bus = FakeBus()
    bus.publish_ticks([
        book(A, False, 1, bids=[("1", "1")]),
        book(A, False, 2, bids=[("1", "2")]),
        book(A, True, 3, bids=[("1", "1")], asks=[("2", "1")]),
        book(A, False, 4, bids=[("1.5", "1")]),
    ])  # fmt: skip
    await run_until_drained(bus)
    md = bus.md(A)
    assert [strip(e) for e in md] == [
        status(A, "gap", "no base snapshot", ts_ingest=T0 + 1),
        book(A, True, 3, bids=[("1", "1")], asks=[("2", "1")]),
        book(A, False, 4, bids=[("1.5", "1")]),
    ]
    assert md[0].ts_event == T0
    assert [e.seq for e in md] == [1, 2, 3]
    assert [d["reason"] for d in bus.dlq()] == ["no_base_snapshot", "no_base_snapshot"]


async def test_crossed_delta_is_rejected_and_book_gapped(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([
        book(A, True, 1, bids=[("1", "1")], asks=[("2", "1")]),
        book(A, False, 2, bids=[("3", "1")]),
        book(A, False, 3, bids=[("1.5", "1")]),
    ])  # fmt: skip
    await run_until_drained(bus)
    assert [strip(e) for e in bus.md(A)] == [
        book(A, True, 1, bids=[("1", "1")], asks=[("2", "1")]),
        status(A, "gap", "crossed book", ts_ingest=T0 + 1),
    ]
    assert [d["reason"] for d in bus.dlq()] == ["crossed_book", "no_base_snapshot"]


async def test_ingest_status_passes_through_and_reset_starts_new_epoch(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(A, 10), status(A, "gap", "exchange gap"), trade(A, 11)])
    await run_until_drained(bus)
    await trio.sleep(1)  # the next epoch is stamped at a later time
    bus.publish_ticks([status(A, "reset", "exchange restarted"), trade(A, 1)])
    await run_until_drained(bus)
    md = bus.md(A)
    assert [strip(e) for e in md] == [
        trade(A, 10), status(A, "gap", "exchange gap"), trade(A, 11),
        status(A, "reset", "exchange restarted"), trade(A, 1),
    ]  # fmt: skip
    first, second = md[0].epoch, md[3].epoch
    assert first != second
    assert second > first  # epochs sort by time
    assert seqs(md) == [(first, 1), (first, 2), (first, 3), (second, 1), (second, 2)]
    assert bus.dlq() == []  # src_seq restarted after the reset: not out of order


async def test_fenced_by_another_writer_reloads_and_naks(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(A, 1)])
    stats = NormalizeStats()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_normalize(
                    CONFIG, bus=bus, shard=0, stats=stats, task_status=task_status
                )
            )
            await wait_while(lambda: len(bus.md(A)) < 1)
            epoch = bus.md(A)[0].epoch
            # Another writer appends seq 2 behind this normalizer's back.
            other = attrs.evolve(trade(A, 2, price="999"), seq=2, epoch=epoch)
            bus.store(OutMsg(md_subject(A), codec.encode(other), msg_id=f"{A}:{epoch}:2"))
            bus.publish_ticks([trade(A, 2), trade(A, 3)])
            await wait_while(lambda: stats.fenced < 1 or len(bus.md(A)) < 3)
            nursery.cancel_scope.cancel()
    md = bus.md(A)
    assert seqs(md) == [(epoch, 1), (epoch, 2), (epoch, 3)]
    assert strip(md[2]) == trade(A, 3)
    assert stats.fenced == 1
    # Our seq 2 was fenced; our seq 3 (no fence: only a product's first message in a batch
    # carries one) landed behind the other writer's seq 2. The redelivered input is then
    # checked against LF_MD's last src_seq (3): nothing is published twice.
    assert md[1] == other
    assert [d["reason"] for d in bus.dlq()] == ["out_of_order", "duplicate"]
    assert bus.consumers[-1].naked == [4]


async def test_publish_failure_is_not_acked_and_is_retried(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.fail_next[md_subject(A)] = PublishFailed("server down")
    bus.publish_ticks([trade(A, 1)])
    stats = await run_until_drained(bus)
    consumer = bus.consumers[-1]
    assert consumer.naked == [1]
    assert consumer.acked == [1]
    assert [strip(e) for e in bus.md(A)] == [trade(A, 1)]
    assert [e.seq for e in bus.md(A)] == [1]
    assert stats.publish_failed == 1


async def test_drain_finishes_the_in_flight_batch(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.block_publish = trio.Event()
    bus.publish_ticks([trade(A, 1)])
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_normalize(CONFIG, bus=bus, shard=0, task_status=task_status)
        )
        await wait_while(lambda: bus.publish_calls < 1)
        nursery.cancel_scope.cancel()  # cancelled while the publish is in flight
        bus.block_publish.set()  # (no checkpoint between: this task is cancelled too)
    assert [e.seq for e in bus.md(A)] == [1]
    assert bus.consumers[-1].acked == [1]  # published, then acked, despite cancellation


async def test_drain_deadline_never_acks_unpublished(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.block_publish = trio.Event()  # never set: the publish never completes
    bus.publish_ticks([trade(A, 1)])
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_normalize(
                    CONFIG, bus=bus, shard=0, task_status=task_status
                )
            )
            await wait_while(lambda: bus.publish_calls < 1)
            nursery.cancel_scope.cancel()
    assert bus.md() == []
    assert bus.consumers[-1].acked == []


async def test_only_own_shard_is_consumed(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(OTHER, 1)])
    bus.publish_ticks([trade(A, 1)])
    await run_until_drained(bus, shard=0)
    assert [e.product for e in bus.md()] == [A]
    await run_until_drained(bus, shard=1)
    assert [e.product for e in bus.md()] == [A, OTHER]


def test_epoch_is_fixed_width_and_sorts_by_time() -> None:
    assert len(new_epoch(T0)) == 13
    assert new_epoch(T0) < new_epoch(T0 + 1) < new_epoch(T0 * 2)
    assert new_epoch(0) == "0" * 13


async def test_shard_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="shard 5"):
        await serve_normalize(CONFIG, bus=FakeBus(), shard=5)


async def test_recovery_lookup_failure_naks_and_retries(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.fail_lookups = 1
    bus.publish_ticks([trade(A, 1)])
    await run_until_drained(bus)
    assert bus.consumers[-1].naked == [1]
    assert [strip(e) for e in bus.md(A)] == [trade(A, 1)]


async def test_every_new_epoch_head_is_published_alone_and_fenced(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(A, 1), trade(A, 2)])
    await run_until_drained(bus)
    bus.calls.clear()
    bus.publish_ticks([trade(A, 3), status(A, "reset", "restart"), trade(A, 1), trade(A, 2)])
    await run_until_drained(bus)
    md_fences = [
        [(codec.decode(m.data).seq, m.expected_last_subject_seq) for m in call]
        for call in bus.calls
    ]
    stored = {m.msg_id: m.seq for m in bus.streams[MD_STREAM]}
    epoch1 = bus.md(A)[0].epoch
    epoch2 = bus.md(A)[-1].epoch
    assert md_fences == [
        [(3, stored[f"{A}:{epoch1}:2"])],  # the old epoch continues, fenced
        [(1, stored[f"{A}:{epoch1}:3"])],  # the reset alone, fenced on the ack just before
        [(2, stored[f"{A}:{epoch2}:1"]), (3, None)],  # then the rest of the new epoch
    ]
    assert seqs(bus.md(A)) == [
        (epoch1, 1), (epoch1, 2), (epoch1, 3), (epoch2, 1), (epoch2, 2), (epoch2, 3),
    ]  # fmt: skip


async def test_refused_new_epoch_head_stops_the_product(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.fail_next[md_subject(A)] = PublishFenced(md_subject(A), "other writer")
    bus.publish_ticks([trade(A, 1), trade(A, 2)])
    stats = await run_until_drained(bus)
    assert stats.fenced == 1
    assert len(bus.calls[0]) == 1  # the head was refused: its tail was never sent
    assert [strip(e) for e in bus.md(A)] == [trade(A, 1), trade(A, 2)]  # after redelivery
    assert len({e.epoch for e in bus.md(A)}) == 1


async def test_ingest_gap_is_not_announced_twice(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([
        book(A, True, 1, bids=[("1", "1")], asks=[("2", "1")]),
        status(A, "gap", "exchange gap"),
        book(A, False, 3, bids=[("1.5", "1")]),
    ])  # fmt: skip
    await run_until_drained(bus)
    assert [strip(e) for e in bus.md(A)] == [
        book(A, True, 1, bids=[("1", "1")], asks=[("2", "1")]),
        status(A, "gap", "exchange gap"),
    ]
    assert [d["reason"] for d in bus.dlq()] == ["no_base_snapshot"]
