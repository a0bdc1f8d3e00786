"""The normalizer daemon: LF_TICKS (one shard) → validated, sequenced events on LF_MD.

Two layers, as everywhere in LedgerFlux:

* :class:`Sequencer` is sans-IO. It turns a fetched batch of LF_TICKS messages into a
  :class:`Plan` — the LF_MD and DLQ messages to publish, in order — and afterwards settles
  the publish results into "ack these inputs, nak those". It owns each product's
  :class:`~ledgerflux.state.ProductState` (book, BBO, seq, epoch) and exchange-sequence
  tracking.
* :func:`serve_normalize` is the I/O loop: fetch, recover unknown products from LF_MD,
  plan, publish the whole batch with one ``publish_batch`` call, ack/nak.

Rules (docs/architecture.md has the longer version):

* Per product the public ``seq`` is contiguous from 1 within an ``epoch``. A new epoch
  starts when a product has no message on LF_MD yet, or when the ingestor sends a
  ``reset`` status (that status is ``seq`` 1 of the new epoch).
* LF_TICKS is read **in stream order** (an ordered consumer on ``lf.ticks.<shard>.>``), never
  through redelivery: correctness does not depend on acks or on the order a broker
  redelivers in.
* Restart: every ``normalize.checkpoint_interval_s`` the shard writes its whole state —
  every product's book, BBO, last trade, seq, epoch, exchange-sequence marks, and the
  LF_TICKS and LF_MD positions it reflects — to the checkpoint bucket
  (:data:`~ledgerflux.bus.CHECKPOINT_BUCKET`). On start it loads the checkpoint, applies
  its own LF_MD output published after it (the tail), and resumes LF_TICKS right after the
  checkpoint's position. Every LF_MD message carries its input position (header
  ``Lf-Ticks-Pos: <LF_TICKS stream seq>.<event index>``), so input whose output is already on
  LF_MD is recognised and skipped, not sequenced twice. Books are therefore live again
  as soon as the shard is ready, with no help from the exchange.
* Without a usable checkpoint a product continues from its last LF_MD message (seq and
  epoch) with an unknown book; its first refused delta (``no_base_snapshot``) asks the
  ingestor for a resync of that product over the bus (``lf.ctl.resync.<exchange>.<symbol>``).
* A change that would cross the book goes to the DLQ as ``crossed_book`` and a public
  ``gap`` status (reason ``crossed book``) is emitted: the book has lost a change, so
  deltas are refused until the next snapshot, and a resync is requested.
* Rejected input goes to ``lf.dlq.<exchange>.<symbol>`` with a reason from
  :data:`REJECT_REASONS` (msg id from its input position, so a replay does not repeat
  it); nothing is dropped silently.
* Fencing: the first LF_MD message of each product in a publish call carries
  ``expected_last_subject_seq``, so a second writer is refused at its first message; the
  first message of a new epoch is published in a call of its own (see :func:`_publish`).
  On :class:`~ledgerflux.bus.PublishFenced` or a failed publish the shard restarts from
  its checkpoint plus the LF_MD tail (which then holds the other writer's output, or
  what did get stored), and reads LF_TICKS again from the checkpoint's position.
"""

from __future__ import annotations

import math
import time
from collections import Counter as CountMap
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import orjson
import structlog
import trio
from prometheus_client import Counter, Gauge

from ledgerflux import codec
from ledgerflux.book import CrossedBook, NoBaseSnapshot
from ledgerflux.bus import BusError, InMsg, OutMsg, PubAck, PublishFenced, StreamState
from ledgerflux.config import Config
from ledgerflux.events import Book, Event, Quote, Status, Ticker, Trade, with_sequence
from ledgerflux.metrics import observe_pending
from ledgerflux.parts import IncompleteParts, PartsError, PartTooLarge, StreamParts, split_book
from ledgerflux.progress import Progress
from ledgerflux.resync import ResyncUnavailable, request_resync
from ledgerflux.state import ProductState, SequenceError, StateError
from ledgerflux.subjects import (
    MD_STREAM,
    TICKS_STREAM,
    dlq_subject,
    md_msg_id,
    md_subject,
    shard_of,
    split_product,
    subject_token,
)

if TYPE_CHECKING:
    from ledgerflux.control import ControlContext

__all__ = [
    "HDR_TICKS_POS",
    "REJECT_REASONS",
    "CheckpointError",
    "NormalizeStats",
    "Plan",
    "Sequencer",
    "checkpoint_name",
    "new_epoch",
    "serve_normalize",
]

log = structlog.get_logger(__name__)

REJECT_REASONS = (
    "decode_error",
    "wrong_shard",
    "invalid",
    "bad_timestamp",
    "duplicate",
    "out_of_order",
    "no_base_snapshot",
    "crossed_book",
    "incomplete_parts",
    "too_large",
)
"""Every ``reason`` a DLQ entry from the normalizer can carry."""

MAX_CLOCK_SKEW_NS = 300 * 1_000_000_000
"""``ts_event`` may be at most this far after ``ts_ingest`` (exchange clocks drift a
little; minutes ahead means a unit or parsing error)."""

FETCH_TIMEOUT_S = 1.0
BATCH_DEADLINE_S = 30.0
"""Upper bound on finishing one fetched batch (recover, publish, settle), also while
draining: above the bus's publish retry budget so that a server restart does not cut a
batch short. A batch cut short is not acked; its products are recovered from LF_MD."""
RESTART_DELAY_S = 0.5
"""Pause before a shard restarts from its checkpoint after fencing or a failed publish:
long enough for the other writer's burst or a server restart to pass, short enough not to
add lag."""
RESTART_DELAY_MAX_S = 5.0
"""Cap of the doubling pause between restarts that keep failing (the bus is down)."""
RESYNC_REQUEST_INTERVAL_S = 5.0
"""At most one resync request per product in this time (its deltas keep being refused
until the snapshot arrives; one request is enough)."""
CHECKPOINT_VERSION = 1
HDR_TICKS_POS = "Lf-Ticks-Pos"
"""LF_MD header: ``<LF_TICKS stream seq>.<event index>`` of the input an event came from."""
REPLAY_BATCH = 512
HEADER_ROOM = 1024
"""Bytes of ``max_payload`` kept for the headers of an LF_MD message (msg id, fence,
input position): a book snapshot whose encoding is larger than the rest is parted."""
DEFAULT_MAX_PAYLOAD = 1024 * 1024

EVENTS_IN = Counter("ledgerflux_normalize_events_in", "Events read from LF_TICKS", ["shard"])
EVENTS_OUT = Counter("ledgerflux_normalize_events_out", "Events published to LF_MD", ["shard"])
REJECTS = Counter(
    "ledgerflux_normalize_rejects", "Inputs sent to the DLQ, by reason", ["shard", "reason"]
)
FENCED = Counter("ledgerflux_normalize_fenced", "Products fenced off by another writer", ["shard"])
PUBLISH_FAILED = Counter(
    "ledgerflux_normalize_publish_failed", "Products whose publish failed", ["shard"]
)
RESTARTS = Counter(
    "ledgerflux_normalize_restarts",
    "Shard restarts from its checkpoint (fencing, failed publish, bus errors)",
    ["shard"],
)
CHECKPOINTS = Counter(
    "ledgerflux_normalize_checkpoints", "State checkpoints written", ["shard", "outcome"]
)
RESYNC_REQUESTS = Counter(
    "ledgerflux_normalize_resync_requests", "Resyncs asked of the ingestor", ["shard", "outcome"]
)
LAG = Gauge(
    "ledgerflux_normalize_lag_seconds", "now - ts_ingest of the last published event", ["shard"]
)


class NormalizeBus(Protocol):
    """What the normalizer needs from :class:`ledgerflux.bus.Bus` (tests use a fake)."""

    def ordered(
        self, stream: str, filter_subject: str, *, start_seq: int | None = None, max_batch: int
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[list[InMsg]]]: ...

    async def stream_state(self, stream: str) -> StreamState: ...
    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]: ...
    async def last_for_subject(self, stream: str, subject: str) -> InMsg | None: ...
    async def get_msg(self, stream: str, seq: int) -> InMsg | None: ...
    async def ensure_checkpoints(self) -> None: ...
    async def put_checkpoint(self, name: str, data: bytes) -> None: ...
    async def get_checkpoint(self, name: str) -> bytes | None: ...
    async def request(self, subject: str, data: bytes, *, timeout_s: float) -> bytes: ...

    @property
    def max_payload(self) -> int: ...


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, another version or shard layout)."""


@attrs.define
class NormalizeStats:
    """Plain counters of one normalizer (the Prometheus metrics carry the same figures)."""

    events_in: int = 0
    events_out: int = 0
    rejects: CountMap[str] = attrs.field(factory=CountMap)
    fenced: int = 0
    publish_failed: int = 0
    recovered: int = 0
    batches: int = 0
    replayed: int = 0
    """Input events skipped because their output was already on LF_MD (after a restart)."""
    restored: int = 0
    """Products restored from a checkpoint (and the LF_MD tail after it)."""
    restarts: int = 0
    checkpoints: int = 0
    resync_requests: int = 0


_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_EPOCH_WIDTH = 13  # base36 of int64 ns fits in 13 digits, so fixed width sorts by time


def new_epoch(ts_ns: int) -> str:
    """A short string that sorts by time: fixed-width base36 of ``ts_ns``."""
    digits = []
    n = ts_ns
    while n:
        n, r = divmod(n, 36)
        digits.append(_BASE36[r])
    return "".join(reversed(digits)).rjust(_EPOCH_WIDTH, "0")


@attrs.define
class _Product:
    """Sequencing state of one product owned by this normalizer."""

    state: ProductState
    last_stream_seq: int = 0
    """Stream seq of the last LF_MD message on this product's subject (0: none)."""
    src_seqs: dict[str, int] = attrs.field(factory=dict)
    """Last accepted exchange sequence per event type (channels may number separately)."""
    gap_announced: bool = False
    """A public ``gap`` status was sent for the current run of refused deltas."""
    ticks_pos: tuple[int, int] = (0, -1)
    """(LF_TICKS stream seq, event index) of the last input reflected in this state."""


@attrs.frozen
class Planned:
    """One message to publish, and where it came from."""

    out: OutMsg
    product: str | None
    """The owned product whose sequence it belongs to (None: a DLQ entry of foreign input)."""
    input_index: int
    event: Event | None = None
    """The sequenced event for LF_MD messages."""


@attrs.define
class Plan:
    """What one fetched batch turns into."""

    planned: list[Planned] = attrs.field(factory=list)
    inputs: int = 0
    input_products: list[set[str]] = attrs.field(factory=list)
    """Per input message: the owned products it touched (their failure naks it)."""

    @property
    def messages(self) -> list[OutMsg]:
        return [p.out for p in self.planned]


@attrs.frozen
class Settlement:
    """Products whose publish was fenced off by another writer or failed (the shard then
    restarts from its checkpoint); both empty when the whole batch is on the bus."""

    fenced: list[str]
    failed: list[str]

    @property
    def ok(self) -> bool:
        return not self.fenced and not self.failed


class Sequencer:
    """Sans-IO core of one normalizer shard. Not thread-safe; one per daemon."""

    def __init__(
        self,
        *,
        shard: int,
        shards: int,
        now_ns: Callable[[], int] = time.time_ns,
        stats: NormalizeStats | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.shard = shard
        self.max_event_bytes = max_payload - HEADER_ROOM
        """Largest encoded LF_MD event sent as one message; larger snapshots go in parts."""
        self.shards = shards
        self._now_ns = now_ns
        self.stats = stats if stats is not None else NormalizeStats()
        self._products: dict[str, _Product] = {}
        self._last_epoch_ns = 0
        self._events_in = EVENTS_IN.labels(self.shard)  # per-event path: no label lookup
        self._pos: tuple[int, int] = (0, -1)
        self.md_position = 0
        """LF_MD stream seq up to which every message of this shard's products is
        reflected in the state (the checkpoint's replay starts after it)."""
        self.resync_wanted: dict[str, str] = {}
        """Products whose book needs a resync from the ingestor -> why."""
        self._replay_parts = StreamParts()
        self._input_parts = StreamParts()

    # -- products ------------------------------------------------------------------------

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per product owned: its epoch, seq and book depth (the control socket's status)."""
        return {
            name: {
                "epoch": p.state.epoch,
                "seq": p.state.seq,
                "bids": p.state.book.level_count("bid"),
                "asks": p.state.book.level_count("ask"),
            }
            for name, p in sorted(self._products.items())
        }

    def state(self, product: str) -> ProductState | None:
        known = self._products.get(product)
        return None if known is None else known.state

    def owns(self, product: str) -> bool:
        return shard_of(product, self.shards) == self.shard

    def unknown_products(self, batch: Sequence[list[Event] | codec.CodecError]) -> list[str]:
        """Owned products in ``batch`` that must be recovered from LF_MD first."""
        found: dict[str, None] = {}
        for item in batch:
            if isinstance(item, list):
                for event in item:
                    p = event.product
                    if p not in self._products and _well_formed(p) and self.owns(p):
                        found[p] = None
        return list(found)

    def recover(self, product: str, last: InMsg | None) -> None:
        """Continue ``product`` after the last LF_MD message on its subject (None: none).

        Only the sequence position survives a restart; the book is unknown (EMPTY) until
        the next snapshot. An unreadable last message starts a new epoch (logged).
        """
        entry = _Product(ProductState(product))
        if last is not None:
            entry.last_stream_seq = last.stream_seq
            entry.ticks_pos = _ticks_pos(last)
            try:
                event = codec.decode(last.data)
            except codec.CodecError as exc:
                log.error("normalize.unreadable_md", product=product, error=str(exc))
            else:
                entry.state.epoch, entry.state.seq = event.epoch, event.seq
                entry.state.ts_event = event.ts_event
                if event.src_seq is not None and not isinstance(event, Status):
                    entry.src_seqs[event.TYPE] = event.src_seq
        self._products[product] = entry
        self.stats.recovered += 1

    def forget(self, product: str) -> None:
        """Drop what is known about ``product``; it is recovered again on its next event."""
        self._products.pop(product, None)

    # -- planning ------------------------------------------------------------------------

    @staticmethod
    def decode(data: bytes) -> list[Event] | codec.CodecError:
        try:
            return codec.decode_many(data)
        except codec.CodecError as exc:
            return exc

    def plan(
        self, msgs: Sequence[InMsg], decoded: Sequence[list[Event] | codec.CodecError]
    ) -> Plan:
        """Validate, sequence and apply every event of the batch; the messages to publish.

        Every owned product in ``decoded`` must have been recovered (see
        :meth:`unknown_products`). Product states move forward here; if the publish fails,
        :meth:`settle` forgets the product so it is recovered from what LF_MD really holds.
        """
        plan = Plan(inputs=len(msgs))
        first_of_product: set[str] = set()
        for index, (msg, item) in enumerate(zip(msgs, decoded, strict=True)):
            touched: set[str] = set()
            plan.input_products.append(touched)
            if isinstance(item, codec.CodecError):
                self._reject_raw(plan, index, msg, "decode_error", str(item))
                continue
            for i, event in enumerate(item):
                pos = (msg.stream_seq, i)
                known = self._products.get(event.product)
                if known is not None and pos <= known.ticks_pos:
                    self.stats.replayed += 1  # its output is on LF_MD already
                    continue
                self._pos = pos
                self.stats.events_in += 1
                self._events_in.inc()
                try:
                    whole = self._input_parts.add(event, msg.stream_seq)
                except IncompleteParts as exc:
                    self._reject_part(plan, index, event, exc)
                    whole = exc.result
                except PartsError as exc:
                    self._reject_part(plan, index, event, exc)
                    continue
                if whole is not None:
                    self._plan_event(plan, index, whole, touched, first_of_product)
        return plan

    def input_first_held(self) -> int | None:
        """LF_TICKS stream seq of the earliest input part still waiting for the rest: a
        checkpoint must not pass it (a restart reads all the parts again)."""
        return self._input_parts.first_held_stream_seq()

    def _reject_part(self, plan: Plan, index: int, event: Event, exc: PartsError) -> None:
        product = event.product
        owned = _well_formed(product) and self.owns(product) and product in self._products
        self._reject(plan, index, product if owned else None, event, "incomplete_parts", str(exc))
        if owned:
            self.resync_wanted.setdefault(product, "incomplete snapshot parts")

    def _plan_event(
        self, plan: Plan, index: int, event: Event, touched: set[str], first: set[str]
    ) -> None:
        product = event.product
        if not _well_formed(product):
            self._reject(plan, index, None, event, "invalid", "malformed product id")
            return
        if not self.owns(product):
            self._reject(
                plan, index, None, event, "wrong_shard", f"product belongs to shard "
                f"{shard_of(product, self.shards)}, this is shard {self.shard}"
            )  # fmt: skip
            return
        entry = self._products[product]
        entry.ticks_pos = self._pos
        touched.add(product)
        problem = _validate(event)
        if problem is not None:
            self._reject(plan, index, product, event, *problem)
            return
        if isinstance(event, Status) and event.status == "reset":
            self._emit(plan, index, entry, event, first, new_epoch=True)
            entry.src_seqs.clear()
            entry.gap_announced = False
            return
        if event.src_seq is not None and not isinstance(event, Status):
            last = entry.src_seqs.get(event.TYPE)
            if last is not None and event.src_seq <= last:
                reason = "duplicate" if event.src_seq == last else "out_of_order"
                self._reject(
                    plan, index, product, event, reason, f"src_seq {event.src_seq}, last {last}"
                )
                return
        if isinstance(event, Book):
            try:
                self._emit(plan, index, entry, event, first)
            except PartTooLarge as exc:
                self._reject(plan, index, product, event, "too_large", str(exc))
                self._announce_gap(plan, index, entry, event, first, "book change too large")
                self.resync_wanted.setdefault(product, "book change too large")
                return
            except NoBaseSnapshot as exc:
                self._reject(plan, index, product, event, "no_base_snapshot", str(exc))
                self._announce_gap(plan, index, entry, event, first, "no base snapshot")
                self.resync_wanted.setdefault(product, "no base snapshot")
                return
            except CrossedBook as exc:
                self._reject(plan, index, product, event, "crossed_book", str(exc))
                self._announce_gap(plan, index, entry, event, first, "crossed book")
                self.resync_wanted.setdefault(product, "crossed book")
                return
            if event.snapshot:
                entry.gap_announced = False
        else:
            self._emit(plan, index, entry, event, first)
            if isinstance(event, Status) and event.status in ("gap", "resync"):
                # The ingestor already said the book is incomplete: no second gap status.
                entry.gap_announced = True
        if event.src_seq is not None and not isinstance(event, Status):
            entry.src_seqs[event.TYPE] = event.src_seq

    def _announce_gap(
        self, plan: Plan, index: int, entry: _Product, event: Event, first: set[str], why: str
    ) -> None:
        if entry.gap_announced:
            return
        entry.gap_announced = True
        status = Status(
            product=event.product,
            ts_event=event.ts_event,
            ts_ingest=event.ts_ingest,
            status="gap",
            reason=why,
        )
        self._emit(plan, index, entry, status, first)

    def _emit(
        self,
        plan: Plan,
        index: int,
        entry: _Product,
        event: Event,
        first: set[str],
        *,
        new_epoch: bool = False,
    ) -> None:
        """Sequence ``event``, apply it to the product state and plan its LF_MD message.

        Raises BookError (from the state) before anything changes if the book refuses it.
        """
        state = entry.state
        if new_epoch or not state.epoch:
            stamped = with_sequence(event, seq=1, epoch=self._next_epoch())
        else:
            stamped = with_sequence(event, seq=state.seq + 1, epoch=state.epoch)
        data = codec.encode(stamped)
        parts: list[Event] = [stamped]
        if len(data) > self.max_event_bytes:
            if not isinstance(stamped, Book):
                raise PartTooLarge(
                    f"{stamped.product}: a {stamped.TYPE} event of {len(data)} bytes does not"
                    f" fit {self.max_event_bytes} bytes"
                )
            # Too large for one message: the snapshot's parts, one seq, consecutive
            # messages (split_book raises PartTooLarge for a change: nothing is applied).
            parts = list(split_book(stamped, self.max_event_bytes))
        state.apply(stamped)
        product = event.product
        expected = None
        if product not in first:
            first.add(product)
            expected = entry.last_stream_seq
        headers = {HDR_TICKS_POS: f"{self._pos[0]}.{self._pos[1]}"}
        msg_id = md_msg_id(product, stamped.epoch, stamped.seq)
        for part in parts:
            if isinstance(part, Book) and part.parts > 1:
                data = codec.encode(part)
                part_id = f"{msg_id}:{part.part}/{part.parts}"
            else:
                part_id = msg_id
            out = OutMsg(
                subject=md_subject(product),
                data=data,
                msg_id=part_id,
                expected_last_subject_seq=expected,
                headers=headers,
            )
            expected = None  # the fence goes on the first message only
            plan.planned.append(Planned(out, product, index, part))

    def _next_epoch(self) -> str:
        # Strictly increasing even if two resets land in the same nanosecond.
        now = max(self._now_ns(), self._last_epoch_ns + 1)
        self._last_epoch_ns = now
        return new_epoch(now)

    def _reject(
        self,
        plan: Plan,
        index: int,
        product: str | None,
        event: Event,
        reason: str,
        detail: str,
    ) -> None:
        self._count_reject(reason)
        subject = dlq_subject(event.product if _well_formed(event.product) else None)
        body: dict[str, object] = {
            "reason": reason,
            "detail": detail,
            "event": codec.to_wire(event),
            "shard": self.shard,
            "ts": self._now_ns(),
        }
        data = orjson.dumps(body)
        if len(data) > self.max_event_bytes:
            # The entry must fit the bus too: the event's envelope only, and say so.
            body["event"] = _envelope(event)
            body["truncated"] = len(data)
            data = orjson.dumps(body)
        msg_id = f"dlq:normalize-{self.shard}:{self._pos[0]}:{self._pos[1]}"
        plan.planned.append(Planned(OutMsg(subject, data, msg_id=msg_id), product, index))

    def _reject_raw(self, plan: Plan, index: int, msg: InMsg, reason: str, detail: str) -> None:
        self._count_reject(reason)
        body = {
            "reason": reason,
            "detail": detail,
            "raw": msg.data[: self.max_event_bytes // 2].decode("utf-8", errors="replace"),
            "raw_bytes": len(msg.data),
            "shard": self.shard,
            "ts": self._now_ns(),
        }
        subject = _dlq_subject_for_ticks(msg.subject)
        msg_id = f"dlq:normalize-{self.shard}:{msg.stream_seq}:raw"
        plan.planned.append(
            Planned(OutMsg(subject, orjson.dumps(body), msg_id=msg_id), None, index)
        )

    def _count_reject(self, reason: str) -> None:
        self.stats.rejects[reason] += 1
        REJECTS.labels(self.shard, reason).inc()

    # -- settling ------------------------------------------------------------------------

    def settle(self, plan: Plan, results: Sequence[PubAck | BusError | None]) -> Settlement:
        """Account for the publish results (None: not attempted).

        Any product with a message not acked makes the settlement not ``ok``: the caller
        then restarts the shard from its checkpoint, so nothing here needs undoing.
        """
        fenced: set[str] = set()
        failed: set[str] = set()
        published = 0
        last_ts_ingest = 0
        for planned, result in zip(plan.planned, results, strict=True):
            if isinstance(result, PubAck):
                if planned.event is not None and planned.product is not None:
                    entry = self._products.get(planned.product)
                    if entry is not None:
                        entry.last_stream_seq = max(entry.last_stream_seq, result.seq)
                    self.md_position = max(self.md_position, result.seq)
                    published += 1
                    last_ts_ingest = max(last_ts_ingest, planned.event.ts_ingest)
                continue
            if planned.product is None:
                failed.add(planned.out.subject)  # a DLQ entry of foreign input
            elif isinstance(result, PublishFenced):
                fenced.add(planned.product)
            else:
                failed.add(planned.product)
        failed -= fenced
        self.stats.events_out += published
        self.stats.fenced += len(fenced)
        self.stats.publish_failed += len(failed)
        self.stats.batches += 1
        EVENTS_OUT.labels(self.shard).inc(published)
        FENCED.labels(self.shard).inc(len(fenced))
        PUBLISH_FAILED.labels(self.shard).inc(len(failed))
        if last_ts_ingest:
            LAG.labels(self.shard).set(max(0.0, (self._now_ns() - last_ts_ingest) / 1e9))
        return Settlement(sorted(fenced), sorted(failed))

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self, ticks_seq: int) -> bytes:
        """The whole shard state as of LF_TICKS position ``ticks_seq`` (every input up to it
        handled) and LF_MD position :attr:`md_position`."""
        products = {
            product: {
                "state": entry.state.to_json(),
                "last_stream_seq": entry.last_stream_seq,
                "src_seqs": entry.src_seqs,
                "gap_announced": entry.gap_announced,
                "ticks_pos": list(entry.ticks_pos),
            }
            for product, entry in self._products.items()
        }
        doc = {
            "version": CHECKPOINT_VERSION,
            "shard": self.shard,
            "shards": self.shards,
            "ticks_seq": ticks_seq,
            "md_seq": self.md_position,
            "last_epoch_ns": self._last_epoch_ns,
            "products": products,
        }
        return orjson.dumps(doc)

    def restore(self, data: bytes) -> tuple[int, int]:
        """Load :meth:`checkpoint`'s output; returns its (LF_TICKS, LF_MD) positions.

        Raises :class:`CheckpointError` (and changes nothing) if it cannot be used."""
        try:
            doc = orjson.loads(data)
            if doc["version"] != CHECKPOINT_VERSION:
                raise CheckpointError(f"checkpoint version {doc['version']!r} is not supported")
            if (doc["shard"], doc["shards"]) != (self.shard, self.shards):
                raise CheckpointError(
                    f"checkpoint is of shard {doc['shard']}/{doc['shards']},"
                    f" this is {self.shard}/{self.shards}"
                )
            products: dict[str, _Product] = {}
            for product, item in doc["products"].items():
                entry = _Product(ProductState.from_json(item["state"]))
                entry.last_stream_seq = int(item["last_stream_seq"])
                entry.src_seqs = {str(k): int(v) for k, v in item["src_seqs"].items()}
                entry.gap_announced = bool(item["gap_announced"])
                pos = item["ticks_pos"]
                entry.ticks_pos = (int(pos[0]), int(pos[1]))
                products[product] = entry
            ticks_seq, md_seq = int(doc["ticks_seq"]), int(doc["md_seq"])
            last_epoch_ns = int(doc["last_epoch_ns"])
        except CheckpointError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, StateError) as exc:
            raise CheckpointError(f"unreadable checkpoint: {exc!r}") from exc
        self._products = products
        self.md_position = md_seq
        self._last_epoch_ns = max(self._last_epoch_ns, last_epoch_ns)
        self.stats.restored += len(products)
        return ticks_seq, md_seq

    def replay(self, msg: InMsg) -> None:
        """Apply one LF_MD message published after the checkpoint (the tail), if it belongs
        to this shard: the state then reflects everything this shard has published."""
        self.md_position = max(self.md_position, msg.stream_seq)
        try:
            decoded = codec.decode(msg.data)
        except codec.CodecError as exc:
            log.error("normalize.unreadable_md", stream_seq=msg.stream_seq, error=str(exc))
            return
        product = decoded.product
        if not _well_formed(product) or not self.owns(product):
            return
        entry = self._products.get(product)
        if entry is None:
            entry = self._products[product] = _Product(ProductState(product))
            self.stats.recovered += 1
        entry.last_stream_seq = max(entry.last_stream_seq, msg.stream_seq)
        entry.ticks_pos = max(entry.ticks_pos, _ticks_pos(msg))
        try:
            event = self._replay_parts.add(decoded, msg.stream_seq)
        except IncompleteParts as exc:
            log.error("normalize.incomplete_parts", product=product, error=str(exc))
            event = exc.result
        except PartsError as exc:
            log.error("normalize.bad_part", product=product, error=str(exc))
            return
        if event is None:
            return
        state = entry.state
        try:
            state.apply(event, strict_book=False)
        except SequenceError:
            if event.epoch == state.epoch and event.seq <= state.seq:
                return  # already in the checkpoint
            log.error(
                "normalize.replay_gap", product=product, have=state.seq, got=event.seq,
                detail="LF_MD no longer holds the events in between",
            )  # fmt: skip
            state.seq = event.seq - 1
            state.book.mark_gap()
            state.apply(event, strict_book=False)
        if isinstance(event, Status):
            if event.status == "reset":
                entry.src_seqs.clear()
                entry.gap_announced = False
            elif event.status in ("gap", "resync"):
                entry.gap_announced = True
        else:
            if event.src_seq is not None:
                entry.src_seqs[event.TYPE] = event.src_seq
            if isinstance(event, Book) and event.snapshot:
                entry.gap_announced = False

    def take_resync_wanted(self) -> dict[str, str]:
        wanted, self.resync_wanted = self.resync_wanted, {}
        return wanted


def checkpoint_name(shard: int, shards: int) -> str:
    """Object name of a shard's checkpoint (the shard layout is part of it: a checkpoint of
    another ``normalize.shards`` never applies)."""
    return f"normalize.{shard}.of.{shards}"


def _ticks_pos(msg: InMsg) -> tuple[int, int]:
    raw = msg.headers.get(HDR_TICKS_POS)
    if raw is None:
        return (0, -1)
    seq, _, index = raw.partition(".")
    try:
        return (int(seq), int(index))
    except ValueError:
        return (0, -1)


def _envelope(event: Event) -> dict[str, object]:
    """What identifies ``event`` without its payload (for DLQ entries that must stay small)."""
    wire = codec.to_wire(event)
    small = {k: v for k, v in wire.items() if k not in ("bids", "asks")}
    if isinstance(event, Book):
        small["levels"] = len(event.bids) + len(event.asks)
    return small


def _well_formed(product: str) -> bool:
    try:
        split_product(product)
    except ValueError:
        return False
    return True


def _dlq_subject_for_ticks(subject: str) -> str:
    # lf.ticks.<shard>.<exchange>.<symbol> -> lf.dlq.<exchange>.<symbol>
    tokens = subject.split(".")
    if len(tokens) == 5 and tokens[:2] == ["lf", "ticks"]:
        return f"lf.dlq.{subject_token(tokens[3])}.{subject_token(tokens[4])}"
    return dlq_subject(None)


def _validate(event: Event) -> tuple[str, str] | None:
    """(reason, detail) if the event is not acceptable input, else None."""
    if event.seq != 0 or event.epoch != "":
        return "invalid", "seq/epoch already set on LF_TICKS input"
    if event.ts_event <= 0 or event.ts_ingest <= 0:
        return "bad_timestamp", f"ts_event={event.ts_event} ts_ingest={event.ts_ingest}"
    if event.ts_event > event.ts_ingest + MAX_CLOCK_SKEW_NS:
        return "bad_timestamp", f"ts_event {event.ts_event} is after ts_ingest {event.ts_ingest}"
    if isinstance(event, Trade):
        return _positive(price=event.price, size=event.size)
    if isinstance(event, Quote):
        problem = _positive(bid_price=event.bid_price, bid_size=event.bid_size,
                            ask_price=event.ask_price, ask_size=event.ask_size)  # fmt: skip
        if problem is None and (event.bid_price is None) != (event.bid_size is None):
            problem = "invalid", "bid price and size must both be set or both be empty"
        if problem is None and (event.ask_price is None) != (event.ask_size is None):
            problem = "invalid", "ask price and size must both be set or both be empty"
        if (
            problem is None
            and event.bid_price is not None
            and event.ask_price is not None
            and event.bid_price > event.ask_price
        ):
            problem = "invalid", f"crossed quote {event.bid_price} > {event.ask_price}"
        return problem
    if isinstance(event, Ticker):
        problem = _positive(price=event.price, open_24h=event.open_24h, high_24h=event.high_24h,
                            low_24h=event.low_24h, best_bid=event.best_bid,
                            best_ask=event.best_ask)  # fmt: skip
        if problem is None and event.volume_24h is not None and event.volume_24h < 0:
            problem = "invalid", f"volume_24h {event.volume_24h} is negative"
        return problem
    if isinstance(event, Book):
        for side, levels in (("bids", event.bids), ("asks", event.asks)):
            for price, size in levels:
                if price <= 0:
                    return "invalid", f"{side} price {price} is not positive"
                if size < 0 or (event.snapshot and size == 0):
                    return "invalid", f"{side} size {size} at {price} is not allowed"
        return None
    return None


def _positive(**values: Decimal | None) -> tuple[str, str] | None:
    for name, value in values.items():
        if value is not None and value <= 0:
            return "invalid", f"{name} {value} is not positive"
    return None


# --------------------------------------------------------------------------- the daemon


async def serve_normalize(
    config: Config,
    *,
    bus: NormalizeBus,
    shard: int,
    stats: NormalizeStats | None = None,
    control: ControlContext | None = None,
    task_status: trio.TaskStatus[Progress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Normalize shard ``shard`` of LF_TICKS into LF_MD until cancelled.

    With *control*, ``ctl normalize-<shard> status`` reports the shard's products (epoch,
    seq, book depth) and its LF_TICKS position.

    Restores the shard's state (checkpoint + LF_MD tail), opens an ordered consumer on
    ``lf.ticks.<shard>.>`` right after the checkpoint's position, and reports readiness with
    its :class:`~ledgerflux.progress.Progress` (the LF_TICKS position handled so far). Each
    batch is planned, published with one ``publish_batch`` call and settled; a fenced or
    failed publish restarts the shard from its checkpoint.

    On cancellation a batch already taken is finished — published and settled — shielded
    for at most ``max(config.drain_timeout_s, BATCH_DEADLINE_S)``, then a final checkpoint
    is written (bounded). What was not published is read again by the next normalizer.
    """
    shards = config.normalize.shards
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is outside 0..{shards - 1} (normalize.shards)")
    stats = stats if stats is not None else NormalizeStats()
    progress = Progress(TICKS_STREAM, f"lf.ticks.{shard}.>")
    shard_loop = _Shard(config, bus, shard, stats, progress)
    if control is not None:
        control.on_status(f"normalize-{shard}", shard_loop.status)
    await bus.ensure_checkpoints()
    ready = False
    delay = RESTART_DELAY_S
    while True:
        try:
            batches_from = await shard_loop.restore()
        except BusError as exc:
            reason: str | None = f"restore failed: {exc}"
        else:
            try:
                async with bus.ordered(
                    TICKS_STREAM,
                    progress.filter_subject,
                    start_seq=batches_from,
                    max_batch=config.normalize.batch,
                ) as batches:
                    if not ready:
                        ready = True
                        log.info("normalize.ready", shard=shard, start_seq=batches_from)
                        task_status.started(progress)
                    reason = await shard_loop.consume(batches)
            except BusError as exc:  # the consumer could not be created (server away)
                reason = f"opening the LF_TICKS consumer failed: {exc}"
            if reason is None:
                return  # the input ended (only in tests: a real ordered consumer never ends)
            delay = RESTART_DELAY_S  # it ran: the next failure is a new one
        stats.restarts += 1
        RESTARTS.labels(shard).inc()
        log.warning("normalize.restart", shard=shard, reason=reason, retry_s=delay)
        await trio.sleep(delay)
        delay = min(delay * 2, RESTART_DELAY_MAX_S)


class _Shard:
    """The I/O loop of one shard: restore, consume, checkpoint."""

    def __init__(
        self, config: Config, bus: NormalizeBus, shard: int, stats: NormalizeStats,
        progress: Progress,
    ) -> None:  # fmt: skip
        self.config = config
        self.bus = bus
        self.shard = shard
        self.stats = stats
        self.progress = progress
        self.name = checkpoint_name(shard, config.normalize.shards)
        self.sequencer = Sequencer(shard=shard, shards=config.normalize.shards, stats=stats)
        """Replaced by :meth:`restore` (a restart never reuses in-memory state)."""
        self.bound = max(config.drain_timeout_s, BATCH_DEADLINE_S)
        self.resync_asked: dict[str, float] = {}
        self.handled = 0
        """Last LF_TICKS stream seq handled since the last restore (what a checkpoint of
        the current state may claim; :attr:`progress` keeps the highest ever reached)."""

    def status(self) -> dict[str, Any]:
        """The ``status`` fields of this shard's control socket."""
        states = self.sequencer.summary()
        return {
            "ticks_position": self.progress.position,
            "products": sorted(states),
            "product_states": states,
        }

    async def restore(self) -> int:
        """A fresh sequencer from the checkpoint plus the LF_MD tail after it; returns the
        first LF_TICKS stream sequence to read."""
        self.sequencer = sequencer = Sequencer(
            shard=self.shard,
            shards=self.config.normalize.shards,
            stats=self.stats,
            max_payload=self.bus.max_payload,
        )
        data = await self.bus.get_checkpoint(self.name)
        ticks_from = 1
        md_from: int | None = None
        if data is not None:
            try:
                ticks_seq, md_seq = sequencer.restore(data)
            except CheckpointError as exc:
                log.error("normalize.bad_checkpoint", shard=self.shard, error=str(exc))
            else:
                ticks_from, md_from = ticks_seq + 1, md_seq + 1
        if md_from is not None:
            ticks, md = (
                await self.bus.stream_state(TICKS_STREAM),
                await self.bus.stream_state(MD_STREAM),
            )
            if ticks_from - 1 > ticks.last_seq or md_from - 1 > md.last_seq:
                # The streams were recreated (or purged) after the checkpoint: its positions
                # are of streams that no longer exist. Start cold instead of skipping input.
                log.error(
                    "normalize.stale_checkpoint", shard=self.shard, ticks_seq=ticks_from - 1,
                    ticks_last=ticks.last_seq, md_seq=md_from - 1, md_last=md.last_seq,
                )  # fmt: skip
                self.sequencer = sequencer = Sequencer(
                    shard=self.shard,
                    shards=self.config.normalize.shards,
                    stats=self.stats,
                    max_payload=self.bus.max_payload,
                )
                ticks_from, md_from = 1, None
        if md_from is not None:
            await self._replay_tail(md_from)
            ticks = await self.bus.stream_state(TICKS_STREAM)
            if ticks.messages and ticks_from < ticks.first_seq:
                log.error(
                    "normalize.retention_hole", shard=self.shard, missing_from=ticks_from,
                    missing_to=ticks.first_seq - 1,
                    detail="LF_TICKS dropped input before this shard read it",
                )  # fmt: skip
        log.info(
            "normalize.restored", shard=self.shard, products=len(sequencer._products),
            ticks_from=ticks_from, md_from=md_from, checkpoint=data is not None,
        )  # fmt: skip
        self.handled = ticks_from - 1
        self.progress.advance(self.handled)
        return ticks_from

    async def _replay_tail(self, md_from: int) -> None:
        md = await self.bus.stream_state(MD_STREAM)
        if md.last_seq < md_from:
            return
        async with self.bus.ordered(
            MD_STREAM, "lf.md.>", start_seq=md_from, max_batch=REPLAY_BATCH
        ) as batches:
            async for batch in batches:
                for msg in batch:
                    self.sequencer.replay(msg)
                if batch[-1].stream_seq >= md.last_seq:
                    return

    async def consume(self, batches: trio.MemoryReceiveChannel[list[InMsg]]) -> str | None:
        """Process batches until the input ends (None) or the in-memory state may no
        longer match LF_MD (the reason: the caller restarts from the checkpoint)."""
        interval = self.config.normalize.checkpoint_interval_s
        next_checkpoint = trio.current_time() + interval
        consistent = True
        dirty = False
        try:
            while True:
                # A quiet shard checkpoints too: its last state is what a restart needs.
                # Only a dirty one wakes up for it (with a short interval, or 0, a clean
                # one would spin).
                with trio.move_on_at(next_checkpoint if dirty else math.inf) as idle:
                    try:
                        msgs = await batches.receive()
                    except trio.EndOfChannel:
                        return None
                if idle.cancelled_caught:
                    if dirty:
                        await self._checkpoint()
                        dirty = False
                    next_checkpoint = trio.current_time() + interval
                    continue
                consistent = False
                # The batch is ours now: finish it even if cancelled, but within a bound.
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.bound
                    ok = await self._process_batch(msgs)
                if scope.cancelled_caught:
                    log.warning("normalize.batch_abandoned", shard=self.shard, messages=len(msgs))
                    return "a batch did not finish within its bound"
                if not ok:
                    return "a publish was fenced or failed"
                consistent = dirty = True
                self.handled = msgs[-1].stream_seq
                self.progress.advance(self.handled)
                observe_pending(f"normalize-{self.shard}", msgs[-1].num_pending)
                await self._ask_resyncs()
                if trio.current_time() >= next_checkpoint:
                    await self._checkpoint()
                    dirty = False
                    next_checkpoint = trio.current_time() + interval
        finally:
            if consistent and dirty:
                with trio.CancelScope(shield=True), trio.move_on_after(self.bound):
                    await self._checkpoint()

    async def _checkpoint(self) -> None:
        position = self.handled  # this incarnation's, never an earlier one's
        held = self.sequencer.input_first_held()
        if held is not None:
            position = min(position, held - 1)  # read the held parts again after a restart
        data = self.sequencer.checkpoint(position)
        try:
            await self.bus.put_checkpoint(self.name, data)
        except BusError as exc:
            # The previous checkpoint stays valid; a restart replays a longer tail.
            CHECKPOINTS.labels(self.shard, "failed").inc()
            log.warning("normalize.checkpoint_failed", shard=self.shard, error=str(exc))
            return
        self.stats.checkpoints += 1
        CHECKPOINTS.labels(self.shard, "written").inc()

    async def _ask_resyncs(self) -> None:
        now = trio.current_time()
        for product, why in self.sequencer.take_resync_wanted().items():
            if now < self.resync_asked.get(product, -RESYNC_REQUEST_INTERVAL_S) + (
                RESYNC_REQUEST_INTERVAL_S
            ):
                continue
            self.resync_asked[product] = now
            self.stats.resync_requests += 1
            try:
                reply = await request_resync(self.bus, product, why, timeout_s=1.0)
            except (BusError, ResyncUnavailable) as exc:
                RESYNC_REQUESTS.labels(self.shard, "failed").inc()
                log.warning("normalize.resync_request_failed", product=product, error=str(exc))
                continue
            RESYNC_REQUESTS.labels(self.shard, "sent").inc()
            log.info(
                "normalize.resync_requested", product=product, reason=why, reply=reply.to_json()
            )

    async def _process_batch(self, msgs: list[InMsg]) -> bool:
        """Plan, publish and settle one batch; False if the shard must restart."""
        sequencer, bus = self.sequencer, self.bus
        decoded = [sequencer.decode(m.data) for m in msgs]
        try:
            for product in sequencer.unknown_products(decoded):
                last = await bus.last_for_subject(MD_STREAM, md_subject(product))
                sequencer.recover(product, last)
        except BusError as exc:
            # Without the product's position on LF_MD no seq can be assigned: restart.
            log.warning("normalize.recover_failed", error=str(exc), messages=len(msgs))
            return False
        plan = sequencer.plan(msgs, decoded)
        results: list[PubAck | BusError | None] = [None] * len(plan.planned)
        try:
            await _publish(bus, plan, results)
        except BusError as exc:
            # Unknown outcome for what was not answered: settle treats it as failed.
            log.warning("normalize.publish_error", error=str(exc))
        await _check_duplicates(bus, plan, results)
        settlement = sequencer.settle(plan, results)
        if settlement.fenced:
            log.warning("normalize.fenced", shard=self.shard, products=settlement.fenced)
        if settlement.failed:
            log.warning("normalize.publish_failed", shard=self.shard, products=settlement.failed)
        return settlement.ok


async def _publish(bus: NormalizeBus, plan: Plan, results: list[PubAck | BusError | None]) -> None:
    """Publish the plan in calls (rounds) such that no product message can land after one
    of its predecessors was refused.

    A product's messages form segments: its first message in the plan, or a new epoch's
    first message (seq 1), heads a segment; the rest of the segment follows it. A head is
    fenced (``expected_last_subject_seq`` = the stream seq of the product's previous LF_MD
    message) and goes in a call before the rest of its segment, which is sent — pipelined,
    unfenced — only once the head was accepted. All products share the calls: a batch costs
    one call when every product has one message in it, two (heads, then the rest) otherwise,
    more only when an epoch starts mid-batch.

    Why the head goes alone: messages of one call are sent without waiting for each other's
    acks, so if the fenced head is refused, unfenced messages behind it in the same call
    could still land and leave a hole. A JetStream cluster refuses a fenced publish without
    comparing while another write to the subject is still in flight (error 10164, often
    the writer's own previous message: the bus retries that one), which made this real.
    A product whose head (or any message) is refused sends nothing more: the shard
    restarts from its checkpoint.
    """
    last_seq: dict[str, int] = {}
    refused: set[str] = set()
    for round_ in _rounds(plan):
        send: list[int] = []
        out: list[OutMsg] = []
        for i, head in round_:
            planned = plan.planned[i]
            product = planned.product
            msg = planned.out
            if planned.event is not None and product is not None:
                if product in refused:
                    continue
                fence = last_seq.get(product, msg.expected_last_subject_seq) if head else None
                if fence != msg.expected_last_subject_seq:
                    msg = attrs.evolve(msg, expected_last_subject_seq=fence)
                    plan.planned[i] = attrs.evolve(planned, out=msg)
            send.append(i)
            out.append(msg)
        if not out:
            continue
        answers = await bus.publish_batch(out)
        for i, result in zip(send, answers, strict=True):
            results[i] = result
            planned = plan.planned[i]
            if planned.event is None or planned.product is None:
                continue
            if isinstance(result, PubAck):
                last_seq[planned.product] = max(last_seq.get(planned.product, 0), result.seq)
            else:
                refused.add(planned.product)


def _rounds(plan: Plan) -> list[list[tuple[int, bool]]]:
    """``(index in plan.planned, is a segment head)`` per publish call; see :func:`_publish`.
    DLQ entries go in the first call. A head goes in a call after everything before it of
    its product; the rest of its segment in the call right after the head's."""
    rounds: list[list[tuple[int, bool]]] = [[]]
    head_round: dict[str, int] = {}
    last_round: dict[str, int] = {}
    for i, planned in enumerate(plan.planned):
        event = planned.event
        product = planned.product
        if event is None or product is None:
            rounds[0].append((i, False))
            continue
        epoch_head = event.seq == 1 and (not isinstance(event, Book) or event.part == 0)
        head = product not in head_round or epoch_head
        if head:
            r = last_round[product] + 1 if product in last_round else 0
            head_round[product] = r
        else:
            r = head_round[product] + 1
        last_round[product] = max(last_round.get(product, 0), r)
        while len(rounds) <= r:
            rounds.append([])
        rounds[r].append((i, head))
    return [r for r in rounds if r]


async def _check_duplicates(
    bus: NormalizeBus, plan: Plan, results: list[PubAck | BusError | None]
) -> None:
    """Turn a duplicate ack for a message that is not ours into :class:`PublishFenced`.

    JetStream checks the msg id before the expected last subject sequence, so a second
    writer that already stored ``<product>:<epoch>:<seq>`` makes our different event with
    the same id look "duplicate" instead of fenced. A duplicate is also what our own bus
    retry of a publish that did land gets back; the stored bytes tell the two apart.
    Duplicates are rare, so the extra read per duplicate is cheap.
    """
    for i, (planned, result) in enumerate(zip(plan.planned, results, strict=True)):
        if planned.event is None or not isinstance(result, PubAck) or not result.duplicate:
            continue
        try:
            stored = await bus.get_msg(MD_STREAM, result.seq)
        except BusError:
            stored = None  # cannot tell: treated as fenced, the product is recovered
        if stored is None or stored.data != planned.out.data:
            results[i] = PublishFenced(planned.out.subject, "msg id taken by another writer")
