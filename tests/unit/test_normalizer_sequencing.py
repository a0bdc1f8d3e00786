"""The normalizer against an in-memory bus: sequencing, epochs, dedup, DLQ reasons,
fencing, restart from checkpoints plus the LF_MD tail, resync requests, book parts and
drain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import attrs
import orjson
import pytest
import trio

from ledgerflux import codec
from ledgerflux.bus import (
    BusError,
    InMsg,
    OutMsg,
    PubAck,
    PublishFailed,
    PublishFenced,
    PublishRefused,
    StreamState,
)
from ledgerflux.config import Config, NormalizeConfig
from ledgerflux.events import Book, Event, Quote, Status, Trade
from ledgerflux.normalizer import (
    HDR_TICKS_POS,
    RESYNC_REQUEST_INTERVAL_S,
    NormalizeStats,
    checkpoint_name,
    new_epoch,
    serve_normalize,
)
from ledgerflux.parts import PartAssembler, split_book
from ledgerflux.resync import resync_subject
from ledgerflux.state import ProductState
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


DLQ_STREAM = "LF_DLQ"


@attrs.define
class Stored:
    seq: int
    subject: str
    data: bytes
    msg_id: str | None
    headers: dict[str, str]

    def in_msg(self) -> InMsg:
        return InMsg(self.subject, self.data, self.seq, dict(self.headers))


class FakeBus:
    """Streams as lists, each with its own sequence; msg-id dedup and
    expected-last-subject-seq fencing like JetStream; ordered consumers that deliver the
    stored messages in stream order and keep delivering new ones; the checkpoint bucket
    as a dict; request/reply recorded."""

    def __init__(self, *, max_payload: int = 1024 * 1024) -> None:
        self.streams: dict[str, list[Stored]] = {TICKS_STREAM: [], MD_STREAM: [], DLQ_STREAM: []}
        self.last_seq = dict.fromkeys(self.streams, 0)
        self.changed = trio.Event()
        self.publish_calls = 0
        self.calls: list[list[OutMsg]] = []
        self.fail_next: dict[str, BusError] = {}
        self.block_publish: trio.Event | None = None
        self.fail_lookups = 0
        self.checkpoints: dict[str, bytes] = {}
        self.keep_checkpoints = True
        """False: put_checkpoint succeeds but stores nothing (a crash before it landed)."""
        self.checkpoint_puts: list[tuple[str, bytes]] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.opened: list[tuple[str, str, int | None]] = []
        self._max_payload = max_payload

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def stream_of(self, subject: str) -> str:
        if subject.startswith("lf.ticks."):
            return TICKS_STREAM
        if subject.startswith("lf.md."):
            return MD_STREAM
        return DLQ_STREAM

    def store(self, out: OutMsg) -> PubAck | BusError:
        stream = self.stream_of(out.subject)
        msgs = self.streams[stream]
        headers = dict(out.headers or {})
        size = len(out.data) + sum(len(k) + len(v) for k, v in headers.items())
        if size > self._max_payload:
            return PublishRefused(out.subject, size, "too_large", "larger than max_payload")
        if out.msg_id is not None:
            for m in msgs:
                if m.msg_id == out.msg_id:
                    return PubAck(stream, m.seq, duplicate=True)
        if out.expected_last_subject_seq is not None:
            last = max((m.seq for m in msgs if m.subject == out.subject), default=0)
            if last != out.expected_last_subject_seq:
                return PublishFenced(out.subject, f"last is {last}")
        self.last_seq[stream] += 1
        msgs.append(Stored(self.last_seq[stream], out.subject, out.data, out.msg_id, headers))
        self.poke()
        return PubAck(stream, self.last_seq[stream], duplicate=False)

    def publish_ticks(self, events: list[Event]) -> None:
        product = events[0].product
        self.publish_raw(ticks_subject(product, SHARDS), codec.encode_many(events))

    def publish_raw(self, subject: str, data: bytes) -> None:
        result = self.store(OutMsg(subject, data))
        assert isinstance(result, PubAck), result  # test input must fit the bus too

    def last_ticks_seq(self, shard: int) -> int:
        prefix = f"lf.ticks.{shard}."
        return max((m.seq for m in self.streams[TICKS_STREAM] if m.subject.startswith(prefix)),
                   default=0)  # fmt: skip

    # -- the NormalizeBus protocol -------------------------------------------------------

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @asynccontextmanager
    async def ordered(
        self, stream: str, filter_subject: str, *, start_seq: int | None = None, max_batch: int
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[InMsg]]]:
        self.opened.append((stream, filter_subject, start_seq))
        prefix = filter_subject.removesuffix(">")
        msgs = self.streams[stream]
        next_seq = self.last_seq[stream] + 1 if start_seq is None else start_seq

        async def pump(send: trio.MemorySendChannel[list[InMsg]]) -> None:
            nonlocal next_seq
            async with send:
                while True:
                    changed = self.changed
                    batch = [
                        m.in_msg()
                        for m in msgs
                        if m.seq >= next_seq and m.subject.startswith(prefix)
                    ][:max_batch]
                    if not batch:
                        await changed.wait()
                        continue
                    next_seq = batch[-1].stream_seq + 1
                    try:
                        await send.send(batch)
                    except trio.BrokenResourceError:
                        return

        send, receive = trio.open_memory_channel[list[InMsg]](4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, send)
            try:
                async with receive:
                    yield receive
            finally:
                nursery.cancel_scope.cancel()

    async def stream_state(self, stream: str) -> StreamState:
        await trio.lowlevel.checkpoint()
        msgs = self.streams[stream]
        last = self.last_seq[stream]
        return StreamState(msgs[0].seq if msgs else last + 1, last, len(msgs))

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
                return m.in_msg()
        return None

    async def last_for_subject(self, stream: str, subject: str) -> InMsg | None:
        await trio.lowlevel.checkpoint()
        if self.fail_lookups:
            self.fail_lookups -= 1
            raise BusError("direct get timed out")
        for m in reversed(self.streams[stream]):
            if m.subject == subject:
                return m.in_msg()
        return None

    async def ensure_checkpoints(self) -> None:
        await trio.lowlevel.checkpoint()

    async def put_checkpoint(self, name: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.checkpoint_puts.append((name, data))
        if self.keep_checkpoints:
            self.checkpoints[name] = data

    async def get_checkpoint(self, name: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self.checkpoints.get(name)

    async def request(self, subject: str, data: bytes, *, timeout_s: float) -> bytes:
        await trio.lowlevel.checkpoint()
        body = orjson.loads(data)
        self.requests.append((subject, body))
        return orjson.dumps(
            {"ok": True, "feed": "test", "product": body["product"], "mode": "rest"}
        )

    # -- reading back ------------------------------------------------------------------

    def md(self, product: str | None = None) -> list[Event]:
        out = [codec.decode(m.data) for m in self.streams[MD_STREAM]]
        return [e for e in out if product is None or e.product == product]

    def dlq(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.data) for m in self.streams[DLQ_STREAM]]

    def resync_products(self) -> list[str]:
        assert all(subject == resync_subject(body["product"]) for subject, body in self.requests)
        return [body["product"] for _, body in self.requests]


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
EVERY_BATCH = Config(normalize=NormalizeConfig(shards=SHARDS, batch=64, checkpoint_interval_s=0))
"""A checkpoint after every batch."""


def normalizer(
    bus: FakeBus, *, shard: int = 0, stats: NormalizeStats | None = None, config: Config = CONFIG
) -> Callable[..., Awaitable[None]]:
    """``serve_normalize`` for ``nursery.start`` (which returns its Progress)."""
    return lambda task_status: serve_normalize(
        config, bus=bus, shard=shard, stats=stats, task_status=task_status
    )


async def run_until_drained(
    bus: FakeBus, *, shard: int = 0, stats: NormalizeStats | None = None, config: Config = CONFIG
) -> NormalizeStats:
    """Run a normalizer until its Progress covers every LF_TICKS message of its shard, then
    cancel it (a clean drain: it writes its final checkpoint)."""
    stats = stats if stats is not None else NormalizeStats()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(normalizer(bus, shard=shard, stats=stats, config=config))
            await progress.wait_for(bus.last_ticks_seq(shard))
            nursery.cancel_scope.cancel()
    return stats


async def wait_while(predicate: Callable[[], bool]) -> None:
    """Poll the fake's state; the autojump clock makes the sleeps free."""
    while predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def checkpointed(bus: FakeBus, shard: int = 0) -> None:
    """Wait for a checkpoint (kept or not) that covers every LF_TICKS message of the shard:
    with EVERY_BATCH it comes after each batch's resync requests."""
    last = bus.last_ticks_seq(shard)
    await wait_while(
        lambda: (
            not bus.checkpoint_puts or orjson.loads(bus.checkpoint_puts[-1][1])["ticks_seq"] < last
        )
    )


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


async def test_msg_ids_and_input_positions(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_raw(ticks_subject(OTHER, SHARDS), codec.encode_many([trade(OTHER, 1)]))
    bus.publish_ticks([trade(A, 1), trade(A, 2)])
    await run_until_drained(bus)
    ids = [m.msg_id for m in bus.streams[MD_STREAM]]
    epoch = bus.md(A)[0].epoch
    assert ids == [f"{A}:{epoch}:1", f"{A}:{epoch}:2"]
    # <LF_TICKS stream seq>.<event index> of the input of every LF_MD message
    assert [m.headers for m in bus.streams[MD_STREAM]] == [
        {HDR_TICKS_POS: "2.0"}, {HDR_TICKS_POS: "2.1"}]  # fmt: skip


@pytest.mark.parametrize("checkpoint", [True, False], ids=["checkpoint", "no-checkpoint"])
async def test_restart_continues_seq_and_epoch(checkpoint: bool, autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.keep_checkpoints = checkpoint
    bus.publish_ticks([trade(A, 1), trade(A, 2)])
    await run_until_drained(bus)
    bus.publish_ticks([trade(A, 3)])
    bus.publish_ticks([trade(A, 2)])  # re-sent input: out of order by src_seq
    calls = bus.publish_calls
    stats = await run_until_drained(bus)
    assert bus.publish_calls == calls + 1  # same epoch: the whole batch in one call
    a = bus.md(A)
    assert [e.seq for e in a] == [1, 2, 3]
    assert len({e.epoch for e in a}) == 1
    assert [d["reason"] for d in bus.dlq()] == ["out_of_order"]
    if checkpoint:
        # From the drain's final checkpoint: LF_TICKS is read from right after it.
        assert (stats.restored, stats.recovered, stats.replayed) == (1, 0, 0)
        assert bus.opened[-1] == (TICKS_STREAM, "lf.ticks.0.>", 2)
    else:
        # From the product's last LF_MD message: the input it came from is skipped.
        assert (stats.restored, stats.recovered, stats.replayed) == (0, 1, 2)
        assert bus.opened[-1] == (TICKS_STREAM, "lf.ticks.0.>", 1)


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
    bus.keep_checkpoints = False  # the restart below reads the rejected input again
    bus.publish_raw(ticks_subject(A, SHARDS), codec.encode_many([event]))
    stats = await run_until_drained(bus)
    assert bus.md() == []
    [entry] = bus.dlq()
    assert entry["reason"] == reason
    assert entry["event"] == orjson.loads(codec.encode(event))
    assert stats.rejects == {reason: 1}
    # Read again after a restart, it is rejected again under the same msg id: one entry.
    await run_until_drained(bus)
    assert len(bus.dlq()) == 1


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


@pytest.mark.parametrize("config", [CONFIG, EVERY_BATCH], ids=["cold", "checkpoint"])
async def test_fenced_by_another_writer_restarts_from_checkpoint(
    config: Config, autojump_clock: Any
) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(A, 1)])
    stats = NormalizeStats()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(normalizer(bus, stats=stats, config=config))
            await progress.wait_for(1)
            epoch = bus.md(A)[0].epoch
            # Another writer appends seq 2 behind this normalizer's back.
            other = attrs.evolve(trade(A, 2, price="999"), seq=2, epoch=epoch)
            bus.store(OutMsg(md_subject(A), codec.encode(other), msg_id=f"{A}:{epoch}:2"))
            bus.publish_ticks([trade(A, 2), trade(A, 3)])
            await progress.wait_for(2)  # both LF_TICKS messages handled
            nursery.cancel_scope.cancel()
    md = bus.md(A)
    assert seqs(md) == [(epoch, 1), (epoch, 2), (epoch, 3)]
    assert strip(md[2]) == trade(A, 3)
    assert stats.fenced == 1
    # Our seq 2 was fenced; our seq 3 (no fence: only a product's first message in a batch
    # carries one) landed behind the other writer's seq 2. The shard restarted from its
    # checkpoint (or cold, from LF_MD) and read its input again: LF_MD already holds the
    # output of both inputs (seq 3 carries the input position), so they are skipped, not
    # published twice nor sent to the DLQ.
    assert md[1] == other
    assert bus.dlq() == []
    assert stats.restarts == 1
    assert stats.replayed == (2 if config is EVERY_BATCH else 3)
    assert [start for _, _, start in bus.opened if start is not None] == (
        [1, 2, 2] if config is EVERY_BATCH else [1, 1]
    )  # (the checkpointed run also replayed the LF_MD tail from 2)


async def test_publish_failure_restarts_and_publishes_once(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.fail_next[md_subject(A)] = PublishFailed("server down")
    bus.publish_ticks([trade(A, 1)])
    stats = await run_until_drained(bus)
    assert [strip(e) for e in bus.md(A)] == [trade(A, 1)]
    assert [e.seq for e in bus.md(A)] == [1]
    assert stats.publish_failed == 1
    assert stats.restarts == 1
    assert [start for _, _, start in bus.opened] == [1, 1]  # the input was read again


async def test_drain_finishes_the_in_flight_batch(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.block_publish = trio.Event()
    bus.publish_ticks([trade(A, 1)])
    async with trio.open_nursery() as nursery:
        progress = await nursery.start(normalizer(bus))
        await wait_while(lambda: bus.publish_calls < 1)
        nursery.cancel_scope.cancel()  # cancelled while the publish is in flight
        bus.block_publish.set()  # (no checkpoint between: this task is cancelled too)
    assert [e.seq for e in bus.md(A)] == [1]
    # Published and settled despite cancellation, then covered by the final checkpoint:
    # the next normalizer starts after it.
    assert progress.position == 1
    bus.block_publish = None
    await run_until_drained(bus)
    assert bus.opened[-1] == (TICKS_STREAM, "lf.ticks.0.>", 2)
    assert [e.seq for e in bus.md(A)] == [1]


async def test_drain_deadline_never_acks_unpublished(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.block_publish = trio.Event()  # never set: the publish never completes
    bus.publish_ticks([trade(A, 1)])
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(normalizer(bus))
            await wait_while(lambda: bus.publish_calls < 1)
            nursery.cancel_scope.cancel()
    assert bus.md() == []
    # Neither reported nor checkpointed: the next normalizer reads the input again.
    assert progress.position == 0
    assert bus.checkpoints == {}


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


async def test_recovery_lookup_failure_restarts_and_retries(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.fail_lookups = 1
    bus.publish_ticks([trade(A, 1)])
    stats = await run_until_drained(bus)
    assert stats.restarts == 1
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
        [(2, None), (3, None)],  # then the rest of the new epoch, once its head landed
    ]
    assert seqs(bus.md(A)) == [
        (epoch1, 1), (epoch1, 2), (epoch1, 3), (epoch2, 1), (epoch2, 2), (epoch2, 3),
    ]  # fmt: skip


async def test_a_segment_goes_after_its_head_and_unfenced(autojump_clock: Any) -> None:
    """The product's first message in a batch is fenced and sent alone; the rest follows in
    the next call, unfenced: nothing can land behind a refused head (a JetStream cluster
    refuses a fenced publish while another write to the subject is in flight)."""
    bus = FakeBus()
    bus.publish_ticks([trade(A, 1)])
    await run_until_drained(bus)
    bus.calls.clear()
    bus.publish_ticks([trade(A, 2), trade(A, 3), trade(A, 4)])
    await run_until_drained(bus)
    md_calls = [
        [(codec.decode(m.data).seq, m.expected_last_subject_seq) for m in call]
        for call in bus.calls
    ]
    first = bus.streams[MD_STREAM][0].seq
    assert md_calls == [[(2, first)], [(3, None), (4, None)]]


async def test_refused_new_epoch_head_stops_the_product(autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.fail_next[md_subject(A)] = PublishFenced(md_subject(A), "other writer")
    bus.publish_ticks([trade(A, 1), trade(A, 2)])
    stats = await run_until_drained(bus)
    assert stats.fenced == 1
    assert stats.restarts == 1
    assert len(bus.calls[0]) == 1  # the head was refused: its tail was never sent
    assert [strip(e) for e in bus.md(A)] == [trade(A, 1), trade(A, 2)]  # after the restart
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


# --------------------------------------------------------------------------- restarts


async def test_restore_from_checkpoint_and_lf_md_tail_gives_the_state_before_the_crash(
    autojump_clock: Any,
) -> None:
    bus = FakeBus()
    name = checkpoint_name(0, SHARDS)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(normalizer(bus, config=EVERY_BATCH))
            bus.publish_ticks([
                book(A, True, 1, bids=[("1", "1"), ("0.9", "2")], asks=[("2", "1")]),
                trade(A, 2),
            ])  # fmt: skip
            await wait_while(lambda: name not in bus.checkpoints)  # after the first batch
            bus.keep_checkpoints = False  # every later checkpoint is lost: the "crash"
            bus.publish_ticks([book(A, False, 3, bids=[("1", "0"), ("1.5", "3")])])
            bus.publish_ticks([trade(B, 1), book(B, True, 1, bids=[("7", "1")])])
            bus.publish_ticks([book(A, False, 4, asks=[("2.5", "1")]), trade(A, 5, "1.7")])
            await progress.wait_for(4)
            nursery.cancel_scope.cancel()
    # What the shard held when it stopped (its final checkpoint, which was lost).
    lost = orjson.loads(bus.checkpoint_puts[-1][1])
    assert orjson.loads(bus.checkpoints[name])["ticks_seq"] == 1
    md_before = list(bus.streams[MD_STREAM])
    bus.keep_checkpoints = True
    stats = await run_until_drained(bus)
    restored = orjson.loads(bus.checkpoints[name])
    assert restored["products"] == lost["products"]  # books, BBO, seq, src_seqs: everything
    assert (restored["ticks_seq"], restored["md_seq"]) == (lost["ticks_seq"], lost["md_seq"])
    # The inputs after the checkpoint were read again and skipped: LF_MD held their output.
    assert stats.replayed == 5
    assert stats.events_in == 0
    assert bus.streams[MD_STREAM] == md_before
    # ... and the restored books are the ones a consumer of LF_MD builds.
    for product in (A, B):
        consumer = ProductState(product)
        for event in bus.md(product):
            consumer.apply(event)
        state = ProductState.from_json(restored["products"][product]["state"])
        assert state.to_json() == consumer.to_json()
    assert state.book.bids() == [(D(7), D(1))]


@pytest.mark.parametrize("stored", ["other-layout", "other-version", "unreadable"])
async def test_unusable_checkpoint_is_ignored(stored: str, autojump_clock: Any) -> None:
    bus = FakeBus()
    bus.publish_ticks([trade(A, 1)])
    await run_until_drained(bus)
    name = checkpoint_name(0, SHARDS)
    doc = orjson.loads(bus.checkpoints[name])
    doc["ticks_seq"] = 99  # if it were used, the input below would never be read
    if stored == "other-layout":
        doc["shards"] = SHARDS + 1  # written when normalize.shards was different
    elif stored == "other-version":
        doc["version"] += 1
    bus.checkpoints[name] = b"{not json" if stored == "unreadable" else orjson.dumps(doc)
    bus.publish_ticks([trade(A, 2)])
    stats = await run_until_drained(bus)
    assert stats.restored == 0
    assert bus.opened[-1] == (TICKS_STREAM, "lf.ticks.0.>", 1)  # a cold start
    assert [strip(e) for e in bus.md(A)] == [trade(A, 1), trade(A, 2)]
    assert [e.seq for e in bus.md(A)] == [1, 2]
    assert stats.replayed == 1  # the first input: its output is on LF_MD


async def test_checkpoint_of_streams_that_were_recreated_is_not_used(autojump_clock: Any) -> None:
    """The streams were deleted and made again (the checkpoint bucket survived): the
    checkpoint's positions are beyond the new streams' ends. Using them would skip the new
    input; the shard starts cold instead."""
    old = FakeBus()
    old.publish_ticks([trade(A, 1)])
    old.publish_ticks([trade(A, 2)])
    old.publish_ticks([trade(A, 3)])
    await run_until_drained(old)
    bus = FakeBus()
    bus.checkpoints = dict(old.checkpoints)
    assert orjson.loads(bus.checkpoints[checkpoint_name(0, SHARDS)])["ticks_seq"] == 3
    bus.publish_ticks([trade(A, 7)])
    await run_until_drained(bus)
    assert bus.opened[-1] == (TICKS_STREAM, "lf.ticks.0.>", 1)  # a cold start
    assert [strip(e) for e in bus.md(A)] == [trade(A, 7)]
    assert [e.seq for e in bus.md(A)] == [1]


async def test_crash_between_checkpoints_gives_contiguous_seqs_without_duplicates(
    autojump_clock: Any,
) -> None:
    bus = FakeBus()
    inputs = {p: [trade(p, s, price=str(100 + s), ts=s) for s in range(1, 9)] for p in (A, B)}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(normalizer(bus, config=EVERY_BATCH))
            bus.publish_ticks(inputs[A][:2])
            await wait_while(lambda: not bus.checkpoints)  # after the first batch
            bus.keep_checkpoints = False  # the shard dies before its next checkpoint lands
            bus.publish_ticks(inputs[B][:3])
            bus.publish_ticks(inputs[A][2:4])
            await progress.wait_for(3)
            bus.publish_ticks(inputs[B][3:5])
            await progress.wait_for(4)
            nursery.cancel_scope.cancel()
    # While it is down, more input arrives.
    bus.publish_ticks(inputs[A][4:])
    bus.publish_ticks(inputs[B][5:])
    bus.keep_checkpoints = True
    stats = await run_until_drained(bus)
    for product in (A, B):
        md = bus.md(product)
        assert [strip(e) for e in md] == inputs[product]  # each input once, in order
        assert [e.seq for e in md] == list(range(1, 9))
        assert len({e.epoch for e in md}) == 1
    assert bus.dlq() == []
    assert stats.replayed == 7  # the inputs after the checkpoint that were already out
    assert stats.events_in == 7  # the new ones


async def test_no_base_snapshot_after_cold_start_asks_one_resync_per_product(
    autojump_clock: Any,
) -> None:
    bus = FakeBus()
    bus.keep_checkpoints = False  # no checkpoint: the restart knows seqs, not books
    bus.publish_ticks([book(A, True, 1, bids=[("1", "1")], asks=[("2", "1")])])
    bus.publish_ticks([book(B, True, 1, bids=[("1", "1")], asks=[("2", "1")])])
    await run_until_drained(bus)
    assert bus.requests == []
    stats = NormalizeStats()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(normalizer(bus, stats=stats, config=EVERY_BATCH))
            for s in (2, 3):
                bus.publish_ticks([book(A, False, s, bids=[("1", str(s))])])
                bus.publish_ticks([book(B, False, s, bids=[("1", str(s))])])
                await checkpointed(bus)
            assert sorted(bus.resync_products()) == [A, B]  # one each, not one per delta
            await trio.sleep(RESYNC_REQUEST_INTERVAL_S)
            bus.publish_ticks([book(A, False, 4, bids=[("1", "4")])])
            await checkpointed(bus)
            nursery.cancel_scope.cancel()
    assert sorted(bus.resync_products()[:2]) == [A, B]
    assert bus.resync_products()[2:] == [A]  # still refused later: asked again
    assert bus.requests[0][1]["reason"] == "no base snapshot"
    assert stats.rejects == {"no_base_snapshot": 5}
    assert stats.resync_requests == 3
    assert [strip(e) for e in bus.md(A)][1:] == [
        status(A, "gap", "no base snapshot", ts_ingest=T0 + 1)
    ]


async def test_book_snapshot_larger_than_max_payload_goes_in_parts(autojump_clock: Any) -> None:
    bus = FakeBus(max_payload=4096)
    big = book(
        A, True, 1,
        bids=[(f"{1000 - i}.25", "1.5") for i in range(150)],
        asks=[(f"{2000 + i}.75", "2") for i in range(150)],
    )  # fmt: skip
    assert len(codec.encode(big)) > 4096
    for part in split_book(big, 3000):  # the ingestor parts its input the same way
        bus.publish_ticks([part])
    bus.publish_ticks([trade(A, 2, price="1500")])
    await run_until_drained(bus)
    stored = bus.streams[MD_STREAM]
    parts = [codec.decode(m.data) for m in stored[:-1]]
    assert all(isinstance(p, Book) for p in parts)
    n = len(parts)
    assert n >= 2
    epoch = parts[0].epoch
    assert [(p.epoch, p.seq, p.part, p.parts) for p in parts] == [
        (epoch, 1, i, n) for i in range(n)
    ]
    assert [m.msg_id for m in stored] == [
        *(f"{A}:{epoch}:1:{i}/{n}" for i in range(n)), f"{A}:{epoch}:2",
    ]  # fmt: skip
    assembler = PartAssembler()
    assembled = [assembler.add(p) for p in parts]  # type: ignore[arg-type]
    assert assembled[:-1] == [None] * (n - 1)
    assert assembled[-1] is not None
    assert strip(assembled[-1]) == big
    assert strip(codec.decode(stored[-1].data)) == trade(A, 2, price="1500")
    assert codec.decode(stored[-1].data).seq == 2
    assert bus.dlq() == []
