"""The snapshotter against in-memory fakes: rows and position committed together, resume
from the committed position, latest state, holes, parted snapshots, archive batching and
failure policy, drain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import orjson
import trio

from ledgerflux import codec
from ledgerflux.bus import BusError, InMsg, OutMsg, PubAck, StreamState
from ledgerflux.config import ArchiveConfig, Config, SnapshotConfig
from ledgerflux.events import Book, Event, Trade
from ledgerflux.parts import split_book
from ledgerflux.snapshotter import (
    ARCHIVE_QUEUE_BATCHES,
    ARCHIVE_RETRY_MAX_S,
    CONSUMER,
    SnapshotStats,
    serve_snapshot,
)
from ledgerflux.state import ProductState
from ledgerflux.store import ConsumerPosition, HistoryRow, StateRow, StoreError
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


class FakeBus:
    """LF_MD as a list; ordered consumers deliver it in stream order from ``start_seq``, in
    batches of at most ``chunk`` messages (small: batching across deliveries is tested),
    and keep delivering what is added."""

    def __init__(self) -> None:
        self.md: list[InMsg] = []
        self.first_seq = 1
        self.dlq: list[OutMsg] = []
        self.changed = trio.Event()
        self.chunk = 3
        self.opened: list[tuple[str, str, int | None]] = []

    def add(self, *events: Event) -> None:
        for e in events:
            self.add_raw(md_subject(e.product), codec.encode(e))

    def add_raw(self, subject: str, data: bytes) -> None:
        self.md.append(InMsg(subject, data, self.first_seq + len(self.md), {}))
        self.changed.set()
        self.changed = trio.Event()

    def purge(self, up_to: int) -> None:
        """Retention: drop every message up to stream seq ``up_to``."""
        self.md = [m for m in self.md if m.stream_seq > up_to]
        self.first_seq = max(self.first_seq, up_to + 1)

    @asynccontextmanager
    async def ordered(
        self, stream: str, filter_subject: str, *, start_seq: int | None = None, max_batch: int
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[InMsg]]]:
        assert (stream, filter_subject) == ("LF_MD", "lf.md.>")
        self.opened.append((stream, filter_subject, start_seq))
        next_seq = self.first_seq + len(self.md) if start_seq is None else start_seq

        async def pump(send: trio.MemorySendChannel[list[InMsg]]) -> None:
            nonlocal next_seq
            async with send:
                while True:
                    changed = self.changed
                    batch = [m for m in self.md if m.stream_seq >= next_seq]
                    batch = batch[: min(max_batch, self.chunk)]
                    if not batch:
                        await changed.wait()
                        continue
                    next_seq = batch[-1].stream_seq + 1
                    try:
                        await send.send(batch)
                    except trio.BrokenResourceError:
                        return

        send, receive = trio.open_memory_channel[list[InMsg]](2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, send)
            try:
                async with receive:
                    yield receive
            finally:
                nursery.cancel_scope.cancel()

    async def stream_state(self, stream: str) -> StreamState:
        await trio.lowlevel.checkpoint()
        return StreamState(self.first_seq, self.first_seq + len(self.md) - 1, len(self.md))

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        await trio.lowlevel.checkpoint()
        self.dlq += msgs
        return [PubAck("LF_DLQ", i, False) for i, _ in enumerate(msgs)]


class FakeStore:
    """PostgreSQL as dicts: ``write_batch`` writes rows and the position all or nothing."""

    def __init__(
        self, rows: list[StateRow] | None = None, position: ConsumerPosition | None = None
    ) -> None:
        self.history: dict[tuple[str, str, int], HistoryRow] = {}
        self.latest: dict[str, StateRow] = {r.product: r for r in rows or []}
        self.position = position
        self.positions: list[int] = []
        """Every committed position, in order."""
        self.attempts: list[tuple[list[tuple[str, str, int]], ConsumerPosition | None]] = []
        """Every write_batch call: the history keys and the position it carried."""
        self.commits = 0
        self.fail = 0
        self.block: trio.Event | None = None
        self.on_commit: Callable[[], None] = lambda: None

    async def write_batch(
        self,
        history: Sequence[HistoryRow],
        states: Sequence[StateRow],
        position: ConsumerPosition | None = None,
    ) -> None:
        self.attempts.append(([key(h.event) for h in history], position))
        if self.block is not None:
            await self.block.wait()
        await trio.lowlevel.checkpoint()
        if self.fail:
            self.fail -= 1
            raise StoreError("database down")
        for h in history:
            self.history.setdefault(key(h.event), h)  # ON CONFLICT DO NOTHING
        for s in states:
            self.latest[s.product] = s
        if position is not None:
            assert position.consumer == CONSUMER
            self.position = position
            self.positions.append(position.stream_seq)
        self.commits += 1
        self.on_commit()

    async def latest_states(self, products: Sequence[str] | None = None) -> list[StateRow]:
        await trio.lowlevel.checkpoint()
        return list(self.latest.values())

    async def consumer_position(self, consumer: str) -> ConsumerPosition | None:
        await trio.lowlevel.checkpoint()
        return self.position if consumer == CONSUMER else None

    def book(self, product: str) -> Any:
        return ProductState.from_json(dict(self.latest[product].state)).book


def key(event: Event) -> tuple[str, str, int]:
    return (event.product, event.epoch, event.seq)


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


def snapshotter(
    bus: FakeBus, store: FakeStore, archive: FakeArchive, stats: SnapshotStats | None = None
) -> Callable[..., Awaitable[None]]:
    """``serve_snapshot`` for ``nursery.start`` (which returns its Progress)."""
    return lambda task_status: serve_snapshot(
        CONFIG, bus=bus, store=store, archive=archive, stats=stats, task_status=task_status
    )


async def run(
    bus: FakeBus, store: FakeStore, archive: FakeArchive, until: Callable[[], bool]
) -> SnapshotStats:
    stats = SnapshotStats()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(snapshotter(bus, store, archive, stats))
            await wait_while(lambda: not until())
            nursery.cancel_scope.cancel()
    return stats


def committed(store: FakeStore) -> int:
    """The committed position (0: none)."""
    return 0 if store.position is None else store.position.stream_seq


async def test_every_event_is_committed_with_its_position(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    events = [snapshot(P, 1), *(trade(P, s) for s in range(2, 9)), trade(Q, 1)]
    bus.add(*events)
    stats = SnapshotStats()
    reported: list[int] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(snapshotter(bus, store, archive, stats))
            # The Progress never runs ahead of what PostgreSQL holds.
            store.on_commit = lambda: reported.append(progress.position)
            await progress.wait_for(9)
            nursery.cancel_scope.cancel()
    assert sorted(store.history) == sorted(key(e) for e in events)
    assert [store.history[(P, "e1", 3)]] == [HistoryRow(trade(P, 3), 3)]
    assert stats.events == 9
    # Each commit carried the position of its last message, in the same write_batch.
    assert store.positions == [6, 9]
    assert [pos for _, pos in store.attempts] == [
        ConsumerPosition(CONSUMER, "LF_MD", 6), ConsumerPosition(CONSUMER, "LF_MD", 9),
    ]  # fmt: skip
    assert reported == [0, 6]  # at each commit: the previous one
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
    # 7 events with batch=5 and deliveries of 3: one full batch, then the rest on the
    # interval
    assert store.commits == 2
    assert store.positions == [6, 7]


async def test_store_failure_retries_the_same_batch_without_double_apply(
    autojump_clock: Any,
) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    store.fail = 1
    bus.add(trade(P, 1), trade(P, 2))
    stats = await run(bus, store, archive, lambda: len(store.history) == 2)
    batch = ([(P, "e1", 1), (P, "e1", 2)], ConsumerPosition(CONSUMER, "LF_MD", 2))
    assert store.attempts == [batch, batch]  # the same rows and position, once committed
    assert store.positions == [2]
    assert stats.store_failures == 1
    assert store.latest[P].seq == 2
    assert stats.rejects == {}  # the retried events were applied once, not "already applied"


async def test_without_a_position_rereads_the_stream_and_skips_what_is_stored(
    autojump_clock: Any,
) -> None:
    start = ProductState(P)
    start.apply(snapshot(P, 1))
    start.apply(trade(P, 2))
    store = FakeStore([StateRow(P, "e1", 2, 2, 2, start.to_json())])
    bus, archive = FakeBus(), FakeArchive()
    bus.add(snapshot(P, 1), trade(P, 2), trade(P, 3))
    stats = await run(bus, store, archive, lambda: store.latest[P].seq == 3)
    assert bus.opened == [("LF_MD", "lf.md.>", 1)]
    assert stats.rejects == {"already_applied": 2}
    state = ProductState.from_json(dict(store.latest[P].state))
    assert state.book.bids() == [(D(1), D(2))]


async def test_resumes_right_after_the_committed_position(autojump_clock: Any) -> None:
    start = ProductState(P)
    for event in (snapshot(P, 1), trade(P, 2), trade(P, 3)):
        start.apply(event)
    store = FakeStore(
        [StateRow(P, "e1", 3, 3, 3, start.to_json())], ConsumerPosition(CONSUMER, "LF_MD", 3)
    )
    bus, archive = FakeBus(), FakeArchive()
    bus.add(snapshot(P, 1), trade(P, 2), trade(P, 3), trade(P, 4), trade(Q, 1))
    stats = SnapshotStats()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(snapshotter(bus, store, archive, stats))
            assert progress.position == 3  # what was committed counts as handled
            await progress.wait_for(5)
            nursery.cancel_scope.cancel()
    assert bus.opened == [("LF_MD", "lf.md.>", 4)]
    assert sorted(store.history) == [(P, "e1", 4), (Q, "e1", 1)]  # nothing read twice
    assert stats.rejects == {}
    assert store.positions == [5]
    assert store.latest[P] == StateRow(P, "e1", 4, 4, 4, store.latest[P].state)
    assert store.book(P).bids() == [(D(1), D(2))]


async def test_committed_position_no_longer_in_the_stream_is_a_retention_hole(
    autojump_clock: Any,
) -> None:
    store = FakeStore(position=ConsumerPosition(CONSUMER, "LF_MD", 2))
    bus, archive = FakeBus(), FakeArchive()
    bus.add(*(trade(P, s) for s in range(1, 7)))
    bus.purge(4)  # retention dropped 3 and 4 before the snapshotter read them
    stats = await run(bus, store, archive, lambda: committed(store) == 6)
    assert bus.opened == [("LF_MD", "lf.md.>", 5)]
    assert sorted(store.history) == [(P, "e1", 5), (P, "e1", 6)]
    assert stats.rejects == {"retention_hole": 1}


async def test_hole_in_lf_md_jumps_and_gaps_the_book(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    bus.add(snapshot(P, 1), trade(P, 5))
    stats = await run(bus, store, archive, lambda: P in store.latest and store.latest[P].seq == 5)
    assert stats.rejects == {"seq_gap": 1}
    assert stats.holes == 3  # seqs 2, 3 and 4
    assert store.latest[P].state["book"]["state"] == "gapped"
    assert sorted(store.history) == [(P, "e1", 1), (P, "e1", 5)]


async def test_bad_messages_go_to_dlq_and_the_position_passes_them(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    bus.add_raw("lf.md.x.y", b"nope")
    bus.add(trade(P, 0, epoch=""))
    bus.add(trade(P, 1))
    stats = await run(bus, store, archive, lambda: committed(store) == 3)
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
        await nursery.start(snapshotter(bus, store, archive, stats))
        await wait_while(lambda: not archive.events)
        t_events = trio.current_time()
        await wait_while(lambda: not archive.states)
        t_states = trio.current_time()
        nursery.cancel_scope.cancel()
    assert 10 <= t_events < 11  # batch_max_age_s
    assert 60 <= t_states < 61  # state_snapshot_interval_s


async def test_archive_failure_is_retried_and_does_not_block_commits(
    autojump_clock: Any,
) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    archive.fail = 3
    bus.add(*(trade(P, s) for s in range(1, 5)))
    stats = await run(bus, store, archive, lambda: len(archive.events) == 1)
    assert store.positions == [4]
    assert stats.archive_failures == 3
    assert archive.events == [(P, [trade(P, s) for s in range(1, 5)])]


async def test_drain_commits_the_pending_batch_and_its_position(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    store.block = trio.Event()
    bus.add(trade(P, 1))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(snapshotter(bus, store, archive))
            await trio.sleep(1)  # the batch is in write_batch, blocked
            nursery.cancel_scope.cancel()
            store.block.set()
    assert store.positions == [1]
    assert progress.position == 1
    assert list(store.history) == [(P, "e1", 1)]
    assert [p for p, _ in archive.events] == [P]


async def test_drain_bound_never_reports_uncommitted(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    store.block = trio.Event()  # never set
    bus.add(trade(P, 1))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(snapshotter(bus, store, archive))
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert progress.position == 0
    assert store.position is None
    assert store.history == {}


def deep_snapshot(product: str, seq: int) -> Book:
    return Book(
        product=product, seq=seq, epoch="e1", ts_event=seq, ts_ingest=seq, snapshot=True,
        bids=tuple((D(1000 - i), D(1)) for i in range(60)),
        asks=tuple((D(1001 + i), D(2)) for i in range(60)),
    )  # fmt: skip


async def test_parted_snapshot_is_applied_atomically(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    whole = deep_snapshot(P, 2)
    parts = split_book(whole, 600)
    assert len(parts) >= 3
    bus.add(snapshot(P, 1), *parts[:-1], trade(Q, 1))
    stats = SnapshotStats()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(snapshotter(bus, store, archive, stats))
            await wait_while(lambda: (Q, "e1", 1) not in store.history)
            # Until its last part arrives the stored book is the old one, never half the new.
            assert store.book(P).bids() == [(D(1), D(2))]
            assert store.latest[P].seq == 1
            assert (P, "e1", 2) not in store.history
            bus.add(parts[-1])
            await progress.wait_for(bus.md[-1].stream_seq)
            nursery.cancel_scope.cancel()
    assert store.book(P).bids() == list(whole.bids)
    assert store.book(P).asks() == list(whole.asks)
    assert store.latest[P].seq == 2
    assert store.history[(P, "e1", 2)] == HistoryRow(whole, bus.md[-1].stream_seq)
    assert stats.rejects == {}


async def test_position_never_passes_the_first_part_of_an_incomplete_snapshot(
    autojump_clock: Any,
) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    whole = deep_snapshot(P, 1)
    parts = split_book(whole, 600)
    assert len(parts) >= 3
    bus.add(trade(Q, 1), *parts[:-1], trade(Q, 2), trade(Q, 3))  # parts from stream seq 2
    await run(bus, store, archive, lambda: (Q, "e1", 3) in store.history)
    assert store.positions
    assert max(store.positions) == 1  # later messages committed, the position held back
    assert P not in store.latest
    # A restart (the parts collected so far are gone with the process) reads every part
    # again; the last one completes the snapshot.
    bus.add(parts[-1])
    stats = await run(bus, store, archive, lambda: P in store.latest)
    assert bus.opened[-1] == ("LF_MD", "lf.md.>", 2)
    assert store.history[(P, "e1", 1)] == HistoryRow(whole, bus.md[-1].stream_seq)
    assert store.book(P).bids() == list(whole.bids)
    assert committed(store) == bus.md[-1].stream_seq
    assert stats.rejects == {"already_applied": 2}  # Q 2 and 3, read again


async def test_reading_again_across_an_epoch_change_applies_nothing_twice(
    autojump_clock: Any,
) -> None:
    # Stored: Q's epoch e2 up to seq 1 (after e1 seq 1..2), no committed position, so the
    # stream is read from its start again.
    start = ProductState(Q)
    for event in (trade(Q, 1), trade(Q, 2), trade(Q, 1, epoch="e2")):
        start.apply(event)
    store = FakeStore([StateRow(Q, "e2", 1, 1, 3, start.to_json())])
    bus, archive = FakeBus(), FakeArchive()
    bus.add(trade(Q, 1), trade(Q, 2), trade(Q, 1, epoch="e2"), trade(Q, 2, epoch="e2"))
    stats = await run(bus, store, archive, lambda: committed(store) == 4)
    # The older epoch is not "new": it is already reflected, like e2 seq 1.
    assert stats.rejects == {"already_applied": 3}
    assert store.attempts == [([(Q, "e2", 2)], ConsumerPosition(CONSUMER, "LF_MD", 4))]
    assert archive.events == [(Q, [trade(Q, 2, epoch="e2")])]
    assert (store.latest[Q].epoch, store.latest[Q].seq) == ("e2", 2)


async def test_store_outage_longer_than_the_drain_bound_skips_nothing(
    autojump_clock: Any,
) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    store.fail = 15  # 15 attempts a second apart: past drain_timeout_s
    assert CONFIG.drain_timeout_s < 15
    bus.add(trade(P, 1), trade(P, 2))
    stats = SnapshotStats()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(snapshotter(bus, store, archive, stats))
            await trio.sleep(40)
            bus.add(trade(P, 3))
            await progress.wait_for(3)
            nursery.cancel_scope.cancel()
    assert sorted(store.history) == [(P, "e1", 1), (P, "e1", 2), (P, "e1", 3)]
    assert store.positions[0] == 2  # the batch it kept trying, then the rest
    assert (stats.holes, stats.rejects) == (0, {})
    assert stats.store_failures == 15


async def test_archive_outage_blocks_the_consumer_and_loses_nothing(autojump_clock: Any) -> None:
    bus, store, archive = FakeBus(), FakeStore(), FakeArchive()
    archive.fail = 7  # about 60 s of capped backoff: the archive channel fills up
    n = (ARCHIVE_QUEUE_BATCHES + 10) * 2 * CONFIG.snapshot.batch  # committed 6 at a time
    bus.add(*(trade(P, s) for s in range(1, n + 1)))
    stats = SnapshotStats()
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            await nursery.start(snapshotter(bus, store, archive, stats))
            await wait_while(lambda: committed(store) < n or archive.fail > 0)
            await trio.sleep(ARCHIVE_RETRY_MAX_S + 1)  # the archiver's last backoff
            nursery.cancel_scope.cancel()
    assert stats.archive_failures == 7
    # Every committed event is archived once: waiting on the full channel was not cut
    # short by the drain bound.
    assert sorted(e.seq for _, events in archive.events for e in events) == list(range(1, n + 1))
