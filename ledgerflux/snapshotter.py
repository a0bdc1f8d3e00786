"""The snapshotter daemon: LF_MD → PostgreSQL (history + latest state) → S3 archive.

Data order, and what each step waits for:

1. Read LF_MD **in stream order** (an ordered consumer on ``lf.md.>``) from the position
   committed in PostgreSQL (``consumer_positions``, consumer ``snapshot``), collecting
   until ``config.snapshot.batch`` messages are pending or
   ``config.snapshot.flush_interval_s`` has passed since the first of them.
2. Apply the events to the per-product :class:`~ledgerflux.state.ProductState` (loaded
   from ``store.latest_states()`` at start) and write history rows, the latest state of
   every touched product AND the new position with ONE ``store.write_batch`` (one
   transaction). A crash anywhere resumes from the last committed position: what was
   committed after it is read again and recognised (history ``ON CONFLICT DO NOTHING``,
   state only moves forward), nothing before it is ever skipped. Correctness does not
   depend on acks or on the order in which a broker redelivers.
3. Hand the committed events to the archiver through a bounded channel
   (:data:`ARCHIVE_QUEUE_BATCHES`). Policy: **block**. The archiver retries a failing S3
   put with capped backoff (counted); while it does the channel fills, and only when it is
   full does step 1 wait (and the ordered consumer's flow control stops the server).
   PostgreSQL already holds every event, so a slow archive delays nothing beyond that
   bound and loses nothing.

Because LF_MD is read in stream order, a product ``seq`` that jumps forward means the
stream no longer holds the missing events (retention, or a purge): that is the only skip,
logged as ``snapshot.seq_gap`` and counted; the book is marked gapped. A committed
position older than the stream's first message is reported the same way
(``snapshot.retention_hole``) at start.

A PostgreSQL failure keeps the batch and retries it every :data:`STORE_RETRY_S` (the
in-memory states are rolled back first), so nothing moves on while the store is down.

The archiver groups events per (product, epoch) and writes a batch when it reaches
``config.archive.batch_max_events`` or its oldest event has waited
``config.archive.batch_max_age_s``; every ``config.archive.state_snapshot_interval_s`` it
writes a snapshot of the latest state of every product.

Drain: on cancellation the pending batch is committed, shielded within
``config.drain_timeout_s``; then the archive channel is closed and the archiver writes
everything it holds (same bound) before the daemon returns.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import orjson
import structlog
import trio
from prometheus_client import Counter, Gauge, Histogram

from ledgerflux import codec
from ledgerflux.bus import BusError, InMsg, OutMsg, PubAck, StreamState
from ledgerflux.config import ArchiveConfig, Config
from ledgerflux.events import Event
from ledgerflux.logging import RateLimitedLog
from ledgerflux.metrics import observe_pending
from ledgerflux.parts import IncompleteParts, PartsError, StreamParts
from ledgerflux.progress import Progress
from ledgerflux.state import ProductState, SequenceError, StateError
from ledgerflux.store import ConsumerPosition, HistoryRow, StateRow
from ledgerflux.subjects import MD_STREAM, dlq_subject

if TYPE_CHECKING:
    from ledgerflux.control import ControlContext

__all__ = ["ARCHIVE_QUEUE_BATCHES", "CONSUMER", "SnapshotStats", "serve_snapshot"]

log = structlog.get_logger(__name__)
_SEQ_GAP_LOG = RateLimitedLog(log, interval_s=10.0)

ARCHIVE_QUEUE_BATCHES = 64
"""Committed batches waiting for the archiver before the consumer blocks (policy: block)."""
ARCHIVE_RETRY_MAX_S = 5.0
"""Cap of the archiver's retry backoff. Short: while S3 is away the archive channel fills
and then holds PostgreSQL back too, so S3's return must be noticed within seconds."""
STORE_RETRY_S = 1.0
CONSUMER = "snapshot"
"""The snapshotter's row in ``consumer_positions``."""
FILTER = "lf.md.>"

EVENTS = Counter("ledgerflux_snapshot_events", "LF_MD events committed to PostgreSQL")
COMMITS = Counter("ledgerflux_snapshot_commits", "PostgreSQL batches committed")
STORE_FAILURES = Counter("ledgerflux_snapshot_store_failures", "Failed write_batch calls")
ARCHIVE_PUTS = Counter("ledgerflux_snapshot_archive_puts", "Archive objects written", ["kind"])
ARCHIVE_FAILURES = Counter(
    "ledgerflux_snapshot_archive_failures", "Archive writes that failed (and were retried)"
)
REJECTS = Counter("ledgerflux_snapshot_rejects", "LF_MD messages not applied", ["reason"])
COMMIT_SECONDS = Histogram(
    "ledgerflux_snapshot_commit_seconds",
    "Duration of one committed store.write_batch (history COPY, latest states, position)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LAG = Gauge(
    "ledgerflux_snapshot_lag_seconds", "now - ts_ingest of the last event committed to PostgreSQL"
)
HOLES = Counter(
    "ledgerflux_snapshot_holes",
    "Events LF_MD no longer held when the snapshotter reached them (retention)",
)


class SnapshotBus(Protocol):
    def ordered(
        self, stream: str, filter_subject: str, *, start_seq: int | None = None, max_batch: int
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[list[InMsg]]]: ...

    async def stream_state(self, stream: str) -> StreamState: ...
    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]: ...


class SnapshotStore(Protocol):
    async def write_batch(
        self,
        history: Sequence[HistoryRow],
        states: Sequence[StateRow],
        position: ConsumerPosition | None = None,
    ) -> None: ...
    async def latest_states(self, products: Sequence[str] | None = None) -> list[StateRow]: ...
    async def consumer_position(self, consumer: str) -> ConsumerPosition | None: ...


class SnapshotArchive(Protocol):
    async def put_events(self, product: str, events: Sequence[Event]) -> str: ...
    async def put_state_snapshot(self, ts_ns: int, states: Sequence[StateRow]) -> str: ...


@attrs.define
class SnapshotStats:
    events: int = 0
    commits: int = 0
    store_failures: int = 0
    rejects: dict[str, int] = attrs.field(factory=dict)
    holes: int = 0
    """Events skipped because LF_MD no longer held them (counted per missing seq)."""
    archive_event_puts: int = 0
    archive_state_puts: int = 0
    archive_failures: int = 0


@attrs.frozen
class _Committed:
    events: list[Event]
    states: list[StateRow]


async def serve_snapshot(
    config: Config,
    *,
    bus: SnapshotBus,
    store: SnapshotStore,
    archive: SnapshotArchive,
    stats: SnapshotStats | None = None,
    control: ControlContext | None = None,
    task_status: trio.TaskStatus[Progress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Persist LF_MD to PostgreSQL and the archive until cancelled.

    With *control*, ``ctl snapshot status`` reports each product's stored epoch and seq and
    the committed LF_MD position.

    Ready (reporting its :class:`~ledgerflux.progress.Progress`) once the latest states and
    the committed position are loaded and the ordered consumer is open. On cancellation the
    batch being collected is committed, then the archiver writes what it holds, each
    shielded for at most ``config.drain_timeout_s``; what could not be committed in that
    time is read again by the next snapshotter, from the committed position.
    """
    stats = stats if stats is not None else SnapshotStats()
    snap = _Snapshotter(config, bus=bus, store=store, stats=stats)
    if control is not None:
        control.on_status("snapshot", snap.status)
    for row in await store.latest_states():
        try:
            snap.states[row.product] = ProductState.from_json(dict(row.state))
            snap.stream_seqs[row.product] = row.stream_seq
        except StateError as exc:
            # Rebuilt from the next snapshot event instead; the stored row stays as it is.
            log.error("snapshot.bad_stored_state", product=row.product, error=str(exc))
            snap.reject("bad_stored_state")
    start = await snap.resume_from(await store.consumer_position(CONSUMER))
    progress = Progress(MD_STREAM, FILTER, position=start - 1)
    snap.progress = progress
    archiver = _Archiver(config.archive, archive, stats)
    for product, state in snap.states.items():
        archiver.latest[product] = _state_row(state, 0)
    send, recv = trio.open_memory_channel[_Committed](ARCHIVE_QUEUE_BATCHES)
    async with trio.open_nursery() as nursery:
        # The archiver is the sink: it outlives the consumer and stops when its channel
        # closes, so it is shielded and only gets a deadline once the drain starts.
        archive_scope = trio.CancelScope(shield=True)
        nursery.start_soon(archiver.run, recv, archive_scope)
        async with send:
            try:
                async with bus.ordered(
                    MD_STREAM, FILTER, start_seq=start, max_batch=config.snapshot.batch
                ) as batches:
                    log.info("snapshot.ready", products=len(snap.states), start_seq=start)
                    task_status.started(progress)
                    await snap.consume(batches, send, config.drain_timeout_s)
            finally:
                archive_scope.deadline = trio.current_time() + config.drain_timeout_s


class _Snapshotter:
    def __init__(
        self, config: Config, *, bus: SnapshotBus, store: SnapshotStore, stats: SnapshotStats
    ) -> None:
        self.config = config
        self.bus = bus
        self.store = store
        self.stats = stats
        self.states: dict[str, ProductState] = {}
        self.stream_seqs: dict[str, int] = {}
        """LF_MD stream seq of the last event reflected in each product's state: an event
        at or before it is read again (after a restart), whatever its epoch."""
        self.parts = StreamParts()
        self.progress = Progress(MD_STREAM, FILTER)

    def status(self) -> dict[str, Any]:
        """The ``status`` fields of the snapshotter's control socket."""
        return {
            "md_position": self.progress.position,
            "products": sorted(self.states),
            "product_states": {
                name: {"epoch": state.epoch, "seq": state.seq}
                for name, state in sorted(self.states.items())
            },
        }

    def reject(self, reason: str) -> None:
        self.stats.rejects[reason] = self.stats.rejects.get(reason, 0) + 1
        REJECTS.labels(reason).inc()

    async def resume_from(self, committed: ConsumerPosition | None) -> int:
        """The first LF_MD stream sequence to read: right after the committed position.

        A committed position the stream no longer reaches (its first message is later) is a
        retention hole, reported; a position beyond the stream's end means the stream was
        recreated, and reading starts again from its beginning (writes are idempotent)."""
        stream = await self.bus.stream_state(MD_STREAM)
        if committed is None:
            return max(1, stream.first_seq)
        after = committed.stream_seq + 1
        if committed.stream_seq > stream.last_seq:
            log.warning(
                "snapshot.stream_reset",
                committed=committed.stream_seq,
                stream_last=stream.last_seq,
            )
            self.stream_seqs.clear()  # positions of the old stream
            return max(1, stream.first_seq)
        if stream.messages and after < stream.first_seq:
            log.error(
                "snapshot.retention_hole",
                missing_from=after,
                missing_to=stream.first_seq - 1,
                detail="LF_MD dropped messages before the snapshotter read them",
            )
            self.reject("retention_hole")
            return stream.first_seq
        return after

    async def consume(
        self,
        batches: trio.MemoryReceiveChannel[list[InMsg]],
        send: trio.MemorySendChannel[_Committed],
        drain_timeout_s: float,
    ) -> None:
        batch_max = self.config.snapshot.batch
        interval = self.config.snapshot.flush_interval_s
        pending: list[InMsg] = []
        first_at = 0.0
        try:
            while True:
                if not pending:
                    pending = list(await batches.receive())
                    first_at = trio.current_time()
                with trio.move_on_at(first_at + interval):
                    while len(pending) < batch_max:
                        pending.extend(await batches.receive())
                batch, pending = pending, []
                committed = await self._commit_bounded(batch, drain_timeout_s)
                if committed is None:
                    # Not committed in time (the store is down): keep the batch and try it
                    # again, never the next one first (its position would pass this one).
                    # A drain stops here; the next snapshotter reads the batch again.
                    await trio.lowlevel.checkpoint()
                    pending = batch
                    continue
                await self._queue(send, committed, drain_timeout_s)
        except trio.EndOfChannel:
            pass
        finally:
            if pending:
                committed = await self._commit_bounded(pending, drain_timeout_s)
                if committed is not None:
                    await self._queue(send, committed, drain_timeout_s)

    async def _commit_bounded(self, msgs: list[InMsg], bound_s: float) -> _Committed | None:
        """:meth:`commit` even if cancelled (once taken, a batch is finished), for at most
        ``bound_s``; None if it was not committed in that time (then nothing was)."""
        with trio.CancelScope(shield=True), trio.move_on_after(bound_s):
            return await self.commit(msgs)
        return None

    async def _queue(
        self, send: trio.MemorySendChannel[_Committed], committed: _Committed, bound_s: float
    ) -> None:
        """Hand committed events to the archiver. Policy: block, for as long as it takes
        while running; once cancelled, for at most ``bound_s`` more."""
        if not committed.events:
            return
        try:
            await send.send(committed)
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(bound_s):
                await send.send(committed)
            raise

    async def commit(self, msgs: list[InMsg]) -> _Committed:
        """Apply and commit ``msgs`` (with the new position). A failure rolls the states
        back and retries the same batch every :data:`STORE_RETRY_S`."""
        while True:
            committed = await self._try_commit(msgs)
            if committed is not None:
                return committed
            await trio.sleep(STORE_RETRY_S)

    async def _try_commit(self, msgs: list[InMsg]) -> _Committed | None:
        history: list[HistoryRow] = []
        events: list[Event] = []
        bad: list[InMsg] = []
        touched: dict[str, int] = {}
        before: dict[str, ProductState | None] = {}
        parts_before = self.parts.copy()
        stream_seqs_before = dict(self.stream_seqs)
        for msg in msgs:
            try:
                decoded = codec.decode(msg.data)
            except codec.CodecError as exc:
                self.reject("decode_error")
                log.error("snapshot.undecodable", stream_seq=msg.stream_seq, error=str(exc))
                bad.append(msg)
                continue
            if decoded.seq < 1 or not decoded.epoch:
                self.reject("unsequenced")
                log.error("snapshot.unsequenced", stream_seq=msg.stream_seq)
                bad.append(msg)
                continue
            try:
                event = self.parts.add(decoded, msg.stream_seq)
            except IncompleteParts as exc:
                self.reject("incomplete_parts")
                log.error("snapshot.incomplete_parts", stream_seq=msg.stream_seq, error=str(exc))
                event = exc.result
            except PartsError as exc:
                self.reject("bad_part")
                log.error("snapshot.bad_part", stream_seq=msg.stream_seq, error=str(exc))
                bad.append(msg)
                continue
            if event is None:
                continue  # a part of a snapshot still being collected
            product = event.product
            if product not in before:
                known = self.states.get(product)
                before[product] = None if known is None else known.copy()
            state = self.states.setdefault(product, ProductState(product))
            if msg.stream_seq <= self.stream_seqs.get(product, 0):
                # Already reflected. Checked by position, not by seq: an event of an older
                # epoch would otherwise look like the start of a new one.
                self.reject("already_applied")
                continue
            if not self._advance(state, event):
                continue
            self.stream_seqs[product] = msg.stream_seq
            history.append(HistoryRow(event, msg.stream_seq))
            events.append(event)
            touched[product] = msg.stream_seq
        rows = [_state_row(self.states[p], seq) for p, seq in touched.items()]
        # Never past the first part of a snapshot still being collected: a restart must
        # read all of its parts again.
        held = self.parts.first_held_stream_seq()
        last = msgs[-1].stream_seq if held is None else min(msgs[-1].stream_seq, held - 1)
        position = ConsumerPosition(CONSUMER, MD_STREAM, max(last, self.progress.position))
        try:
            if bad:
                # Before the commit: once the position passes them they are not read again.
                await self._dead_letter(bad)
            started = time.perf_counter()
            await self.store.write_batch(history, rows, position)
            COMMIT_SECONDS.observe(time.perf_counter() - started)
        except BaseException as exc:
            # Nothing was committed (one transaction): the states go back to what
            # PostgreSQL holds and the batch is tried again.
            for product, old in before.items():
                if old is None:
                    self.states.pop(product, None)
                else:
                    self.states[product] = old
            self.parts = parts_before
            self.stream_seqs = stream_seqs_before
            if not isinstance(exc, Exception):
                raise  # cancelled: not committed, read again by the next snapshotter
            self.stats.store_failures += 1
            STORE_FAILURES.inc()
            log.error("snapshot.write_failed", error=str(exc), messages=len(msgs))
            return None
        self.progress.advance(position.stream_seq)
        self.stats.events += len(history)
        self.stats.commits += 1
        EVENTS.inc(len(history))
        COMMITS.inc()
        if events:
            LAG.set(max(0.0, (time.time_ns() - events[-1].ts_ingest) / 1e9))
        observe_pending("snapshot", msgs[-1].num_pending)
        return _Committed(events, rows)

    def _advance(self, state: ProductState, event: Event) -> bool:
        """Apply ``event``; False if it is already reflected (read again after a restart)."""
        try:
            state.apply(event, strict_book=False)
        except SequenceError:
            if event.epoch == state.epoch and event.seq <= state.seq:
                self.reject("already_applied")
                return False
            # Read in stream order, so the missing events are no longer in LF_MD
            # (retention): jump, and say the book is no longer complete.
            missing = event.seq - state.seq - 1
            self.reject("seq_gap")
            self.stats.holes += missing
            HOLES.inc(missing)
            # A retention purge jumps every product at once, and again at each event
            # behind it: one line per product per interval, the rest counted on it.
            _SEQ_GAP_LOG.log(
                "error",
                "snapshot.seq_gap",
                key=state.product,
                product=state.product,
                epoch=state.epoch,
                have=state.seq,
                got=event.seq,
                missing=missing,
                detail="LF_MD no longer holds the events in between",
            )
            state.seq = event.seq - 1
            state.book.mark_gap()
            state.apply(event, strict_book=False)
        return True

    async def _dead_letter(self, msgs: list[InMsg]) -> None:
        """Publish undecodable messages to the DLQ; a BusError if any could not be."""
        now = time.time_ns()
        out = [
            OutMsg(
                dlq_subject(None),
                orjson.dumps(
                    {
                        "reason": "decode_error",
                        "detail": f"undecodable LF_MD message {m.subject} #{m.stream_seq}",
                        "raw": m.data.decode("utf-8", errors="replace"),
                        "shard": None,
                        "ts": now,
                    }
                ),
                msg_id=f"snapshot:{MD_STREAM}:{m.stream_seq}",
            )
            for m in msgs
        ]
        results = await self.bus.publish_batch(out)
        failed = [r for r in results if isinstance(r, BusError)]
        if failed:
            raise BusError(f"{len(failed)} DLQ entries not stored: {failed[0]}")


def _state_row(state: ProductState, stream_seq: int) -> StateRow:
    return StateRow(
        product=state.product,
        epoch=state.epoch,
        seq=state.seq,
        ts_event=state.ts_event,
        stream_seq=stream_seq,
        state=state.to_json(),
    )


class _Archiver:
    """Groups committed events per (product, epoch) and writes them, plus periodic state
    snapshots. Runs until its channel is closed; see the module docstring for the policy."""

    def __init__(self, config: ArchiveConfig, archive: SnapshotArchive, stats: SnapshotStats):
        self.config = config
        self.archive = archive
        self.stats = stats
        self.pending: dict[tuple[str, str], list[Event]] = {}
        self.pending_since: dict[tuple[str, str], float] = {}
        self.latest: dict[str, StateRow] = {}
        self.states_dirty = False

    async def run(
        self, recv: trio.MemoryReceiveChannel[_Committed], scope: trio.CancelScope
    ) -> None:
        with scope:
            next_state_at = trio.current_time() + self.config.state_snapshot_interval_s
            async with recv:
                while True:
                    wake = min([next_state_at, *self._due_times()])
                    with trio.move_on_at(wake):
                        try:
                            item = await recv.receive()
                        except trio.EndOfChannel:
                            break
                        self._add(item)
                    await self._write_due(force=False)
                    if trio.current_time() >= next_state_at:
                        await self._write_states()
                        next_state_at = trio.current_time() + self.config.state_snapshot_interval_s
            # Drain: everything still held, then a final state snapshot.
            await self._write_due(force=True)
            await self._write_states()

    def _due_times(self) -> list[float]:
        return [t + self.config.batch_max_age_s for t in self.pending_since.values()]

    def _add(self, item: _Committed) -> None:
        now = trio.current_time()
        for event in item.events:
            key = (event.product, event.epoch)
            if key not in self.pending:
                self.pending[key] = []
                self.pending_since[key] = now
            self.pending[key].append(event)
        for row in item.states:
            self.latest[row.product] = row
        self.states_dirty = True

    async def _write_due(self, *, force: bool) -> None:
        now = trio.current_time()
        for key in list(self.pending):
            events = self.pending[key]
            while len(events) >= self.config.batch_max_events:
                chunk = events[: self.config.batch_max_events]
                await self._put_events(key[0], chunk)
                del events[: len(chunk)]
            if events and (force or now >= self.pending_since[key] + self.config.batch_max_age_s):
                await self._put_events(key[0], events)
                events = []
            if events:
                self.pending[key] = events
            else:
                del self.pending[key]
                del self.pending_since[key]

    async def _put_events(self, product: str, events: list[Event]) -> None:
        await self._retry(lambda: self.archive.put_events(product, events), "events")
        self.stats.archive_event_puts += 1

    async def _write_states(self) -> None:
        if not self.states_dirty or not self.latest:
            return
        rows = list(self.latest.values())
        ts = time.time_ns()
        await self._retry(lambda: self.archive.put_state_snapshot(ts, rows), "state")
        self.stats.archive_state_puts += 1
        self.states_dirty = False

    async def _retry(self, put: Callable[[], Awaitable[str]], kind: str) -> None:
        delay = 0.5
        while True:
            try:
                key = await put()
            except Exception as exc:
                # Archive errors (ArchiveError, boto errors) are retried: PostgreSQL holds
                # the data, so waiting here only fills the bounded channel.
                self.stats.archive_failures += 1
                ARCHIVE_FAILURES.inc()
                log.warning("snapshot.archive_failed", kind=kind, error=str(exc), retry_s=delay)
                await trio.sleep(delay)
                delay = min(delay * 2, ARCHIVE_RETRY_MAX_S)
                continue
            ARCHIVE_PUTS.labels(kind).inc()
            log.debug("snapshot.archived", kind=kind, key=key)
            return
