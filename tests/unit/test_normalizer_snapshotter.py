"""The snapshotter against in-memory fakes: commit before ack, latest state, archive
batching and failure policy, drain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import orjson
import trio

from ledgerflux import codec
from ledgerflux.bus import BusError, InMsg, OutMsg, PubAck
from ledgerflux.config import ArchiveConfig, Config, SnapshotConfig
from ledgerflux.events import Book, Event, Trade
from ledgerflux.snapshotter import SnapshotStats, serve_snapshot
from ledgerflux.state import ProductState
from ledgerflux.store import HistoryRow, StateRow, StoreError
from ledgerflux.subjects import md_subject

P = "coinbase:BTC-USD"
Q = "coinbase:ETH-USD"
D = Decimal


def trade(product: str, seq: int, epoch: str = "e1") -> Trade:
    return Trade(
        product=product, seq=seq, epoch=epoch, ts_event=seq, ts_ingest=seq + 1,
        price=D("100.25"), size=D(1), side="buy",
    )  # fmt: skip


def snapshot(product: str, seq: int) -> Book:
    return Book(
        product=product, seq=seq, epoch="e1", ts_event=seq, ts_ingest=seq, snapshot=True,
        bids=((D(1), D(2)),), asks=((D(3), D(4)),),
    )  # fmt: skip


class FakeConsumer:
    def __init__(self, bus: FakeBus) -> None:
        self.bus = bus
        self.acked: list[int] = []
        self.naked: list[int] = []
        self.taken: set[int] = set()

    async def fetch(self, timeout_s: float = 1.0) -> list[InMsg]:
        with trio.move_on_after(timeout_s):
            while True:
                ready = [m for m in self.bus.md if m.stream_seq not in self.taken]
                if ready:
                    ready = ready[:3]  # small fetches: batching across fetches is tested
                    self.taken |= {m.stream_seq for m in ready}
                    return ready
                await self.bus.changed.wait()
        return []

    async def ack(self, msgs: Sequence[InMsg]) -> None:
        await trio.lowlevel.checkpoint()
        self.acked += [m.stream_seq for m in msgs]

    async def nak(self, msgs: Sequence[InMsg], delay_s: float = 0.0) -> None:
        await trio.lowlevel.checkpoint()
        self.naked += [m.stream_seq for m in msgs]
        self.taken -= {m.stream_seq for m in msgs}


class FakeBus:
    def __init__(self) -> None:
        self.md: list[InMsg] = []
        self.dlq: list[OutMsg] = []
        self.changed = trio.Event()
        self.consumer: FakeConsumer | None = None

    def add(self, *events: Event) -> None:
        for e in events:
            self.add_raw(md_subject(e.product), codec.encode(e))

    def add_raw(self, subject: str, data: bytes) -> None:
        self.md.append(InMsg(subject, data, len(self.md) + 1, {}))
        self.changed.set()
        self.changed = trio.Event()

    @asynccontextmanager
    async def pull(
        self, stream: str, durable: str, filter_subject: str, *, batch: int
    ) -> AsyncIterator[FakeConsumer]:
        assert (stream, durable, filter_subject) == ("LF_MD", "snapshot", "lf.md.>")
        self.consumer = FakeConsumer(self)
        yield self.consumer

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        await trio.lowlevel.checkpoint()
        self.dlq += msgs
        return [PubAck("LF_DLQ", i, False) for i, _ in enumerate(msgs)]


class FakeStore:
    def __init__(self, rows: list[StateRow] | None = None) -> None:
        self.history: dict[tuple[str, str, int], HistoryRow] = {}
        self.latest: dict[str, StateRow] = {r.product: r for r in rows or []}
        self.commits = 0
        self.fail = 0
        self.block: trio.Event | None = None
        self.on_commit: Callable[[], None] = lambda: None

    async def write_batch(self, history: Sequence[HistoryRow], states: Sequence[StateRow]) -> None:
        if self.block is not None:
            await self.block.wait()
        await trio.lowlevel.checkpoint()
        if self.fail:
            self.fail -= 1
            raise StoreError("database down")
        for h in history:
            self.history[(h.event.product, h.event.epoch, h.event.seq)] = h
        for s in states:
            self.latest[s.product] = s
        self.commits += 1
        self.on_commit()

    async def latest_states(self, products: Sequence[str] | None = None) -> list[StateRow]:
        await trio.lowlevel.checkpoint()
        return list(self.latest.values())


class FakeArchive:
    def __init__(self) -> None:
        self.events: list[tuple[str, list[Event]]] = []
        self.states: list[tuple[int, list[StateRow]]] = []
        self.fail = 0

    async def put_events(self, product: str, events: Sequence[Event]) -> str:
        await trio.lowlevel.checkpoint()
        if self.fail:
            self.fail -= 1
            raise OSError("S3 down")
        self.events.append((product, list(events)))
        return f"k{len(self.events)}"

    async def put_state_snapshot(self, ts_ns: int, states: Sequence[StateRow]) -> str:
        await trio.lowlevel.checkpoint()
        self.states.append((ts_ns, list(states)))
        return f"s{len(self.states)}"


CONFIG = Config(
    snapshot=SnapshotConfig(batch=5, flush_interval_s=0.2),
    archive=ArchiveConfig(batch_max_events=4, batch_max_age_s=10, state_snapshot_interval_s=60),
)


async def wait_while(predicate: Callable[[], bool]) -> None:
    while predicate():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def run(
    bus: FakeBus, store: FakeStore, archive: FakeArchive, until: Callable[[], bool]
) -> SnapshotStats:
    stats = SnapshotStats()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_snapshot(
                    CONFIG,
                    bus=bus,
                    store=store,
                    archive=archive,
                    stats=stats,
                    task_status=task_status,
                )
            )
            await wait_while(lambda: not until())
            nursery.cancel_scope.cancel()
    return stats


async def test_every_event_is_committed_then_acked(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    events = [snapshot(P, 1), *(trade(P, s) for s in range(2, 9)), trade(Q, 1)]
    bus.add(*events)
    acked_at_commit: list[list[int]] = []
    store.on_commit = lambda: acked_at_commit.append(list(bus.consumer.acked))  # type: ignore[union-attr]
    stats = await run(bus, store, archive, lambda: len(bus.consumer.acked) == 9)  # type: ignore[union-attr]
    assert sorted(store.history) == sorted((e.product, e.epoch, e.seq) for e in events)
    assert [store.history[(P, "e1", 3)]] == [HistoryRow(trade(P, 3), 3)]
    assert stats.events == 9
    # every ack came after the commit that holds it
    assert all(len(a) < 9 for a in acked_at_commit)
    state = ProductState.from_json(dict(store.latest[P].state))
    assert (state.epoch, state.seq) == ("e1", 8)
    assert state.trade == trade(P, 8)
    assert state.book.bids() == [(D(1), D(2))]
    assert store.latest[P] == StateRow(P, "e1", 8, 8, 8, store.latest[P].state)
    assert store.latest[Q].seq == 1


async def test_batches_by_size_and_interval(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    bus.add(*(trade(P, s) for s in range(1, 8)))
    await run(bus, store, archive, lambda: len(store.history) == 7)
    # 7 events with batch=5 and fetches of 3: one full batch, then the rest on the interval
    assert store.commits == 2


async def test_store_failure_naks_and_retries_without_double_apply(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    store.fail = 1
    bus.add(trade(P, 1), trade(P, 2))
    stats = await run(bus, store, archive, lambda: len(store.history) == 2)
    assert bus.consumer is not None
    assert bus.consumer.naked == [1, 2]
    assert sorted(bus.consumer.acked) == [1, 2]
    assert stats.store_failures == 1
    assert store.latest[P].seq == 2
    assert stats.rejects == {}  # the retried events were applied once, not "already applied"


async def test_starts_from_stored_state_and_skips_redelivered(autojump_clock: Any) -> None:
    start = ProductState(P)
    start.apply(snapshot(P, 1))
    start.apply(trade(P, 2))
    store = FakeStore([StateRow(P, "e1", 2, 2, 2, start.to_json())])
    bus, archive = FakeBus(), FakeArchive()
    bus.add(snapshot(P, 1), trade(P, 2), trade(P, 3))
    stats = await run(bus, store, archive, lambda: store.latest[P].seq == 3)
    assert stats.rejects == {"already_applied": 2}
    state = ProductState.from_json(dict(store.latest[P].state))
    assert state.book.bids() == [(D(1), D(2))]


async def test_hole_in_lf_md_jumps_and_gaps_the_book(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    bus.add(snapshot(P, 1), trade(P, 5))
    stats = await run(bus, store, archive, lambda: P in store.latest and store.latest[P].seq == 5)
    assert stats.rejects == {"seq_gap": 1}
    assert store.latest[P].state["book"]["state"] == "gapped"


async def test_bad_messages_go_to_dlq_and_are_acked(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    bus.add_raw("lf.md.x.y", b"nope")
    bus.add(trade(P, 0, epoch=""))
    bus.add(trade(P, 1))
    stats = await run(bus, store, archive, lambda: len(bus.consumer.acked) == 3)  # type: ignore[union-attr]
    assert [orjson.loads(m.data)["reason"] for m in bus.dlq] == ["decode_error", "decode_error"]
    assert stats.rejects == {"decode_error": 1, "unsequenced": 1}
    assert list(store.history) == [(P, "e1", 1)]


async def test_archive_batches_per_product_and_epoch(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    bus.add(*(trade(P, s) for s in range(1, 6)), trade(Q, 1), trade(P, 1, epoch="e2"))
    await run(bus, store, archive, lambda: len(archive.events) == 1)
    # batch_max_events=4 triggers the first P batch; the drain writes the rest
    assert archive.events[0] == ("coinbase:BTC-USD", [trade(P, s) for s in range(1, 5)])
    assert sorted((p, [e.seq for e in ev], ev[0].epoch) for p, ev in archive.events[1:]) == [
        (P, [1], "e2"), (P, [5], "e1"), (Q, [1], "e1"),
    ]  # fmt: skip
    [(_, rows)] = archive.states  # final state snapshot on drain
    assert sorted(r.product for r in rows) == [P, Q]


async def test_archive_age_and_state_interval(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    bus.add(trade(P, 1))
    stats = SnapshotStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_snapshot(
                CONFIG, bus=bus, store=store, archive=archive, stats=stats, task_status=task_status
            )
        )
        await wait_while(lambda: not archive.events)
        t_events = trio.current_time()
        await wait_while(lambda: not archive.states)
        t_states = trio.current_time()
        nursery.cancel_scope.cancel()
    assert 10 <= t_events < 11  # batch_max_age_s
    assert 60 <= t_states < 61  # state_snapshot_interval_s


async def test_archive_failure_is_retried_and_does_not_block_acks(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    archive.fail = 3
    bus.add(*(trade(P, s) for s in range(1, 5)))
    stats = await run(bus, store, archive, lambda: len(archive.events) == 1)
    assert bus.consumer is not None
    assert sorted(bus.consumer.acked) == [1, 2, 3, 4]
    assert stats.archive_failures == 3
    assert archive.events == [(P, [trade(P, s) for s in range(1, 5)])]


async def test_drain_commits_and_acks_the_pending_batch(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    store.block = trio.Event()
    bus.add(trade(P, 1))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_snapshot(
                    CONFIG, bus=bus, store=store, archive=archive, task_status=task_status
                )
            )
            await trio.sleep(1)  # the batch is in write_batch, blocked
            nursery.cancel_scope.cancel()
            store.block.set()
    assert bus.consumer is not None
    assert bus.consumer.acked == [1]
    assert list(store.history) == [(P, "e1", 1)]
    assert [p for p, _ in archive.events] == [P]


async def test_drain_bound_never_acks_uncommitted(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    store.block = trio.Event()  # never set
    bus.add(trade(P, 1))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_snapshot(
                    CONFIG, bus=bus, store=store, archive=archive, task_status=task_status
                )
            )
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert bus.consumer is not None
    assert bus.consumer.acked == []
    assert store.history == {}
