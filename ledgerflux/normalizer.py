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
* After a restart ``(epoch, seq, last stream seq)`` come from the last LF_MD message of
  the product, so ``seq`` continues. The book is unknown until the next snapshot: deltas
  before it go to the DLQ as ``no_base_snapshot``, and one ``gap`` status says so publicly.
* A change that would cross the book goes to the DLQ as ``crossed_book`` and a public
  ``gap`` status (reason ``crossed book``) is emitted: the book has lost a change, so
  deltas are refused until the next snapshot (which the ingestor's resync provides).
* Rejected input goes to ``lf.dlq.<exchange>.<symbol>`` with a reason from
  :data:`REJECT_REASONS`; nothing is dropped silently.
* Fencing: the first LF_MD message of each product in a publish call carries
  ``expected_last_subject_seq``, so a second writer is refused at its first message; the
  first message of a new epoch is published in a call of its own (see :func:`_publish`).
  On :class:`~ledgerflux.bus.PublishFenced`
  (or a :class:`~ledgerflux.bus.PublishFailed` that outlived the bus's retry budget) the
  product is forgotten and recovered from LF_MD on its next message, and its inputs are
  nak'd: redelivered events whose ``src_seq`` already reached LF_MD are then rejected as
  duplicates.
* An input message is acked only when every message planned from it was acked by
  JetStream.
"""

from __future__ import annotations

import time
from collections import Counter as CountMap
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from typing import Protocol

import attrs
import orjson
import structlog
import trio
from prometheus_client import Counter, Gauge

from ledgerflux import codec
from ledgerflux.book import CrossedBook, NoBaseSnapshot
from ledgerflux.bus import BusError, InMsg, OutMsg, PubAck, PublishFenced
from ledgerflux.config import Config
from ledgerflux.events import Book, Event, Quote, Status, Ticker, Trade, with_sequence
from ledgerflux.state import ProductState
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

__all__ = [
    "REJECT_REASONS",
    "NormalizeStats",
    "Plan",
    "Sequencer",
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
NAK_DELAY_S = 0.5
"""Redelivery delay of nak'd input after fencing or a failed publish: long enough for
the other writer's burst or a server restart to pass, short enough not to add lag."""

EVENTS_IN = Counter("ledgerflux_normalize_events_in", "Events read from LF_TICKS", ["shard"])
EVENTS_OUT = Counter("ledgerflux_normalize_events_out", "Events published to LF_MD", ["shard"])
REJECTS = Counter(
    "ledgerflux_normalize_rejects", "Inputs sent to the DLQ, by reason", ["shard", "reason"]
)
FENCED = Counter("ledgerflux_normalize_fenced", "Products fenced off by another writer", ["shard"])
PUBLISH_FAILED = Counter(
    "ledgerflux_normalize_publish_failed", "Products whose publish failed", ["shard"]
)
LAG = Gauge(
    "ledgerflux_normalize_lag_seconds", "now - ts_ingest of the last published event", ["shard"]
)


class Consumer(Protocol):
    """What the normalizer needs from a pull consumer (:class:`ledgerflux.bus.PullConsumer`)."""

    async def fetch(self, timeout_s: float = 1.0) -> list[InMsg]: ...
    async def ack(self, msgs: Sequence[InMsg]) -> None: ...
    async def nak(self, msgs: Sequence[InMsg], delay_s: float = 0.0) -> None: ...


class NormalizeBus(Protocol):
    """What the normalizer needs from :class:`ledgerflux.bus.Bus` (tests use a fake)."""

    def pull(
        self, stream: str, durable: str, filter_subject: str, *, batch: int
    ) -> AbstractAsyncContextManager[Consumer]: ...

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]: ...
    async def last_for_subject(self, stream: str, subject: str) -> InMsg | None: ...
    async def get_msg(self, stream: str, seq: int) -> InMsg | None: ...


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
    ack: list[int]
    nak: list[int]
    fenced: list[str]
    failed: list[str]


class Sequencer:
    """Sans-IO core of one normalizer shard. Not thread-safe; one per daemon."""

    def __init__(
        self,
        *,
        shard: int,
        shards: int,
        now_ns: Callable[[], int] = time.time_ns,
        stats: NormalizeStats | None = None,
    ) -> None:
        self.shard = shard
        self.shards = shards
        self._now_ns = now_ns
        self.stats = stats if stats is not None else NormalizeStats()
        self._products: dict[str, _Product] = {}
        self._last_epoch_ns = 0
        self._events_in = EVENTS_IN.labels(self.shard)  # per-event path: no label lookup

    # -- products ------------------------------------------------------------------------

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
            for event in item:
                self.stats.events_in += 1
                self._events_in.inc()
                self._plan_event(plan, index, event, touched, first_of_product)
        return plan

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
            except NoBaseSnapshot as exc:
                self._reject(plan, index, product, event, "no_base_snapshot", str(exc))
                self._announce_gap(plan, index, entry, event, first, "no base snapshot")
                return
            except CrossedBook as exc:
                self._reject(plan, index, product, event, "crossed_book", str(exc))
                self._announce_gap(plan, index, entry, event, first, "crossed book")
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
        state.apply(stamped)
        product = event.product
        expected = None
        if product not in first:
            first.add(product)
            expected = entry.last_stream_seq
        out = OutMsg(
            subject=md_subject(product),
            data=codec.encode(stamped),
            msg_id=md_msg_id(product, stamped.epoch, stamped.seq),
            expected_last_subject_seq=expected,
        )
        plan.planned.append(Planned(out, product, index, stamped))

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
        body = {
            "reason": reason,
            "detail": detail,
            "event": codec.to_wire(event),
            "shard": self.shard,
            "ts": self._now_ns(),
        }
        plan.planned.append(Planned(OutMsg(subject, orjson.dumps(body)), product, index))

    def _reject_raw(self, plan: Plan, index: int, msg: InMsg, reason: str, detail: str) -> None:
        self._count_reject(reason)
        body = {
            "reason": reason,
            "detail": detail,
            "raw": msg.data.decode("utf-8", errors="replace"),
            "shard": self.shard,
            "ts": self._now_ns(),
        }
        subject = _dlq_subject_for_ticks(msg.subject)
        plan.planned.append(Planned(OutMsg(subject, orjson.dumps(body)), None, index))

    def _count_reject(self, reason: str) -> None:
        self.stats.rejects[reason] += 1
        REJECTS.labels(self.shard, reason).inc()

    # -- settling ------------------------------------------------------------------------

    def settle(self, plan: Plan, results: Sequence[PubAck | BusError | None]) -> Settlement:
        """Turn publish results (None: not attempted) into acks and naks.

        A product with any failed message is forgotten (recovered from LF_MD next time)
        and every input that touched it is nak'd. An input is acked only if all of its
        planned messages were acked.
        """
        failed_inputs: set[int] = set()
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
                    published += 1
                    last_ts_ingest = max(last_ts_ingest, planned.event.ts_ingest)
                continue
            failed_inputs.add(planned.input_index)
            if planned.product is not None:
                if isinstance(result, PublishFenced):
                    fenced.add(planned.product)
                else:
                    failed.add(planned.product)
        failed -= fenced
        for product in fenced | failed:
            self.forget(product)
        for index, touched in enumerate(plan.input_products):
            if touched & (fenced | failed):
                failed_inputs.add(index)
        self.stats.events_out += published
        self.stats.fenced += len(fenced)
        self.stats.publish_failed += len(failed)
        self.stats.batches += 1
        EVENTS_OUT.labels(self.shard).inc(published)
        FENCED.labels(self.shard).inc(len(fenced))
        PUBLISH_FAILED.labels(self.shard).inc(len(failed))
        if last_ts_ingest:
            LAG.labels(self.shard).set(max(0.0, (self._now_ns() - last_ts_ingest) / 1e9))
        acks = [i for i in range(plan.inputs) if i not in failed_inputs]
        return Settlement(acks, sorted(failed_inputs), sorted(fenced), sorted(failed))


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
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Normalize shard ``shard`` of LF_TICKS into LF_MD until cancelled.

    Opens the durable pull consumer ``normalize-<shard>`` and reports readiness once it is
    open. Each fetched batch is planned, published with one ``publish_batch`` call, then
    acked (or nak'd for products that were fenced or failed).

    On cancellation the fetch in progress is abandoned (its messages are redelivered after
    the consumer's ack wait); a batch already fetched is finished — published and settled —
    shielded for at most ``max(config.drain_timeout_s, BATCH_DEADLINE_S)``. Whatever was
    not published is never acked: it is redelivered to the next normalizer.
    """
    shards = config.normalize.shards
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is outside 0..{shards - 1} (normalize.shards)")
    sequencer = Sequencer(shard=shard, shards=shards, stats=stats)
    durable = f"normalize-{shard}"
    bound = max(config.drain_timeout_s, BATCH_DEADLINE_S)
    async with bus.pull(
        TICKS_STREAM, durable, f"lf.ticks.{shard}.>", batch=config.normalize.batch
    ) as consumer:
        log.info("normalize.ready", shard=shard, durable=durable)
        task_status.started()
        while True:
            msgs: list[InMsg] = await consumer.fetch(FETCH_TIMEOUT_S)
            if not msgs:
                continue
            # The batch is ours now: finish it even if cancelled, but within a bound.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + bound
                await _process_batch(sequencer, bus, consumer, msgs)
            if scope.cancelled_caught:
                log.warning("normalize.batch_abandoned", shard=shard, messages=len(msgs))
            await trio.lowlevel.checkpoint()


async def _process_batch(
    sequencer: Sequencer, bus: NormalizeBus, consumer: Consumer, msgs: list[InMsg]
) -> None:
    decoded = [sequencer.decode(m.data) for m in msgs]
    try:
        for product in sequencer.unknown_products(decoded):
            last = await bus.last_for_subject(MD_STREAM, md_subject(product))
            sequencer.recover(product, last)
    except BusError as exc:
        # Without the product's position on LF_MD no seq can be assigned: retry later.
        log.warning("normalize.recover_failed", error=str(exc), messages=len(msgs))
        await consumer.nak(msgs, NAK_DELAY_S)
        await trio.sleep(NAK_DELAY_S)
        return
    plan = sequencer.plan(msgs, decoded)
    results: list[PubAck | BusError | None] = [None] * len(plan.planned)
    try:
        await _publish(bus, plan, results)
    except BusError as exc:
        # Unknown outcome for what was not answered: settle treats it as failed.
        log.warning("normalize.publish_error", error=str(exc))
    except BaseException:
        # Cut short (deadline): the outcome is unknown, nothing of the batch is acked, so
        # every product in it is recovered from what LF_MD really holds.
        for touched in plan.input_products:
            for product in touched:
                sequencer.forget(product)
        raise
    await _check_duplicates(bus, plan, results)
    settlement = sequencer.settle(plan, results)
    if settlement.fenced:
        log.warning("normalize.fenced", products=settlement.fenced)
    if settlement.failed:
        log.warning("normalize.publish_failed", products=settlement.failed)
    if settlement.ack:
        await consumer.ack([msgs[i] for i in settlement.ack])
    if settlement.nak:
        await consumer.nak([msgs[i] for i in settlement.nak], NAK_DELAY_S)


async def _publish(bus: NormalizeBus, plan: Plan, results: list[PubAck | BusError | None]) -> None:
    """Publish the plan: one ``publish_batch`` call, more only when an epoch starts in it.

    Only a product's first message in a call carries the fence, and the messages of one
    call are sent without waiting for each other's acks, so a fenced-off first message
    does not stop the ones behind it. Within an epoch that is harmless: they carry the next
    seqs of the same epoch, so they either collide by msg id with the other writer's
    (seen as fenced) or continue its seq without a hole. A new epoch is different: the
    loser's tail would land in an epoch whose seq 1 never made it. So the first message of
    a new epoch goes in a call of its own (per product; all products share the calls),
    fenced on the ack of the product's previous message, and a product's later messages
    are only sent if everything before them was accepted (otherwise they are not
    attempted: the product is recovered and its input redelivered).
    """
    rounds = _rounds(plan)
    last_seq: dict[str, int] = {}
    refused: set[str] = set()
    for round_ in rounds:
        send: list[int] = []
        out: list[OutMsg] = []
        fenced_this_round: set[str] = set()
        for i in round_:
            planned = plan.planned[i]
            product = planned.product
            msg = planned.out
            if planned.event is not None and product is not None:
                if product in refused:
                    continue
                if product not in fenced_this_round:
                    fenced_this_round.add(product)
                    if product in last_seq:
                        msg = attrs.evolve(msg, expected_last_subject_seq=last_seq[product])
                    if msg is not planned.out:
                        plan.planned[i] = attrs.evolve(planned, out=msg)
            send.append(i)
            out.append(msg)
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


def _rounds(plan: Plan) -> list[list[int]]:
    """Indices of ``plan.planned`` per publish call. A product's LF_MD messages are cut
    before and after each first message of a new epoch (seq 1); DLQ entries go first."""
    rounds: list[list[int]] = [[]]
    position: dict[str, int] = {}
    for i, planned in enumerate(plan.planned):
        event = planned.event
        if event is None or planned.product is None:
            rounds[0].append(i)
            continue
        r = position.get(planned.product, 0)
        if event.seq == 1 and planned.product in position:
            r += 1  # a new epoch after earlier messages of the product: a later call
        position[planned.product] = r + 1 if event.seq == 1 else r
        while len(rounds) <= r:
            rounds.append([])
        rounds[r].append(i)
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
