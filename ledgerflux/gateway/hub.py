"""The gateway hub: product state, per-product rings, and fan-out to client sessions.

One task (:func:`ledgerflux.gateway.app.serve_gateway`'s consumer) calls :meth:`Hub.ingest`
for every LF_MD event, in stream order. Ingest is synchronous: it applies the event to the
product's state, appends it to the product's ring and offers it to every subscribed
session's :class:`~ledgerflux.gateway.protocol.Outbox` before the next event is looked at.
That is what makes the snapshot/backfill seam exact: a snapshot, a ring replay and the
registration for live events happen between two ingests, with no ``await`` in between.

The one seam that needs an ``await`` is backfill from the store; while it runs the product
is *paused* for that session: live events are kept aside (bounded by the send queue size)
and released afterwards, deduplicated by ``seq``.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import attrs
import orjson
import structlog
import trio
from prometheus_client import Histogram

from ledgerflux.candles import Candle, LiveCandles, candle_json
from ledgerflux.codec import to_wire
from ledgerflux.events import Book, Event, Trade
from ledgerflux.gateway.auth import ANONYMOUS, Principal
from ledgerflux.gateway.ports import ProductStateLike, StateFactory, StoreLike
from ledgerflux.gateway.protocol import (
    CLOSE_DRAIN,
    CLOSE_SLOW_CONSUMER,
    Outbox,
    Subscribe,
    control,
    pack,
)
from ledgerflux.parts import IncompleteParts, PartAssembler, PartsError, split_book

__all__ = ["STORE_PAGE", "Gap", "Hub", "HubStats", "RingItem", "Session"]

log = structlog.get_logger(__name__)

DELIVERY_SECONDS: Final = Histogram(
    "ledgerflux_gateway_delivery_seconds",
    "ts_ingest of a frame's first live event to the end of its WebSocket send",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
"""One observation per frame that carries live events (not per event: a batch frame is
one send). Process-wide registry: ``/metrics`` of the gateway exports it."""

STORE_PAGE: Final = 5000
"""Events fetched from the store per history query during a backfill."""
MAX_STORE_BACKFILL: Final = 100_000
"""Events a from_seq may be behind the ring; further back is answered with reset +
snapshot (the backfill is held in memory for the client while it is sent)."""
GAP_FILL_TIMEOUT_S: Final = 10.0
"""How long the LF_MD consumer waits for the store to fill a seq jump."""
FRAME_MAX_EVENTS: Final = 256
"""Events packed in one frame for clients that negotiated ``batch``."""
FRAME_MAX_BYTES: Final = 256 * 1024
"""A batch frame takes no further message that would make it larger than this (a single
message may be larger: up to the bus's max_payload)."""
PART_MAX_BYTES: Final = 512 * 1024
"""A message the gateway renders itself (a ``snapshot`` reply, a book resync, a book
from the store) larger than this is sent as parts: common WebSocket clients refuse
messages over 1 MiB by default."""


@attrs.frozen(slots=True)
class Gap:
    """Events ``from_seq..to_seq`` of ``product`` in ``epoch`` that the hub has not seen,
    found before ``event`` (not applied; offer it again with :meth:`Hub.ingest`)."""

    product: str
    epoch: str
    from_seq: int
    to_seq: int
    event: Event | None = attrs.field(default=None, eq=False)
    texts: tuple[str, ...] | None = attrs.field(default=None, eq=False)
    stream_seq: int | None = attrs.field(default=None, eq=False)


@attrs.frozen(slots=True)
class RingItem:
    event: Event
    """A whole event (a parted snapshot reassembled)."""
    texts: tuple[str, ...]
    """What a client is sent for it, encoded once and shared by every session: the event's
    canonical JSON, or the parts of a book snapshot too large for one message, in order."""

    @property
    def size(self) -> int:
        return sum(map(len, self.texts))


def _stat(help_text: str) -> Any:
    """A HubStats counter with the HELP text /metrics exports for it."""
    return attrs.field(default=0, metadata={"help": help_text})


@attrs.define
class HubStats:
    """Counters exported on /metrics as ``ledgerflux_gateway_<name>_total`` (plain ints:
    the hub stays free of I/O). Each field's ``help`` metadata is its HELP text."""

    events_in: int = _stat("LF_MD events the gateway applied to its product states")
    duplicates: int = _stat("LF_MD events dropped as already applied (seq at or below the state)")
    bad_events: int = _stat("LF_MD messages or parts that could not be decoded or applied")
    frames_out: int = _stat("WebSocket frames sent to subscribers")
    events_out: int = _stat("Events sent to subscribers (a batch frame carries several)")
    slow_consumers: int = _stat("Subscribers closed with 4001 slow consumer")
    rate_limited: int = _stat("Client requests refused by the per-connection rate limit")
    protocol_errors: int = _stat("Client messages answered with a protocol error")
    backfill_ring: int = _stat("Backfills (from_seq) served from the in-memory ring")
    backfill_store: int = _stat("Backfills (from_seq) served from the PostgreSQL history")
    resets: int = _stat("status: reset sent to a subscriber whose from_seq cannot be replayed")
    bad_states: int = _stat("Stored product states that could not be decoded")
    store_errors: int = _stat("PostgreSQL queries that failed (backfill, state, gap fill)")
    incomplete_parts: int = _stat(
        "Partial book snapshots dropped (a part that did not continue the collection)"
    )
    holes: int = _stat("LF_MD events no longer retained anywhere (subscribers got a reset)")
    gaps_filled: int = _stat("Seq jumps in LF_MD filled from the PostgreSQL history")
    stream_jumps: int = _stat("Stream positions the LF_MD consumer skipped and read again")
    candles_out: int = _stat("candle messages queued for subscribers of the candles channel")
    candles_late: int = _stat(
        "Trades older than every minute the live candles keep (stored, not live)"
    )
    auth_refused: int = _stat("/ws handshakes refused with HTTP 401 (no, bad, expired credentials)")
    origin_refused: int = _stat("/ws handshakes refused with HTTP 403 (browser origin not allowed)")
    ip_limited: int = _stat("/ws handshakes refused with HTTP 429 (max_clients_per_ip reached)")
    clients_refused: int = _stat("Connections closed with 1013 (max_clients reached, or draining)")
    tokens_expired: int = _stat("Connections closed with 4003 when their token expired")
    forbidden_products: int = _stat("Subscriptions refused: a product the token does not allow")


@attrs.define(eq=False)
class Session:
    """One WebSocket client: its subscriptions, dedupe marks and send queue.

    The session never touches the socket; :meth:`run_sender` is given a ``send`` callable.
    """

    hub: Hub
    outbox: Outbox
    client: str = "-"
    """The peer's address, for log lines."""
    principal: Principal = ANONYMOUS
    """Who connected (anonymous, an API key or a token): the products it may follow."""
    id: int = 0
    batch: bool = False
    max_rate: float | None = None
    subs: dict[str, frozenset[str]] = attrs.field(factory=dict)
    high: dict[str, int] = attrs.field(factory=dict)
    """Per product: the highest ``seq`` queued; anything at or below is a duplicate."""
    epochs: dict[str, str] = attrs.field(factory=dict)
    paused: dict[str, list[RingItem]] = attrs.field(factory=dict)
    paused_bytes: int = 0
    close: tuple[int, str] | None = None
    """Set when the session must end: ``(close code, reason)``."""
    _wake: trio.Event = attrs.field(factory=trio.Event)

    def wake(self) -> None:
        self._wake.set()

    def kill(self, code: int, reason: str) -> None:
        """End the session without flushing (slow consumer, abuse): the queue is dropped
        at once; the sender returns after the send in progress, if any."""
        if self.close is None:
            self.close = (code, reason)
            self.outbox.clear()
            self.paused.clear()
            self.paused_bytes = 0
            self.hub.detach(self)
            self.wake()

    def slow_consumer(self, why: str, product: str) -> None:
        """Close with 4001: counted, and logged with what the operator needs to judge it."""
        now = trio.current_time()
        self.hub.stats.slow_consumers += 1
        log.warning(
            "slow consumer closed",
            code=CLOSE_SLOW_CONSUMER,
            client=self.client,
            session=self.id,
            product=product,
            products=sorted(self.subs),
            queued_events=len(self.outbox) + sum(len(p) for p in self.paused.values()),
            queued_bytes=self.outbox.nbytes + self.paused_bytes,
            oldest_age_s=round(self.outbox.oldest_age(now), 3),
            why=why,
        )
        self.kill(CLOSE_SLOW_CONSUMER, "slow consumer")

    def send_control(self, text: str) -> None:
        if self.close is None:
            self.outbox.put_control(text)
            self.wake()

    def deliver(self, product: str, item: RingItem, now: float) -> None:
        """Offer one live event at time ``now`` (called by the hub, in ``seq`` order per
        product)."""
        pending = self.paused.get(product)
        if pending is not None:
            # Set aside while a store backfill runs: held to the same bounds as the queue.
            pending.append(item)
            self.paused_bytes += item.size
            if (
                sum(len(p) for p in self.paused.values()) > self.outbox.limit
                or self.paused_bytes > self.outbox.max_bytes
            ):
                self.slow_consumer("too many events set aside during a backfill", product)
            return
        self.queue_event(product, item, now=now)

    def release(self, product: str) -> list[RingItem]:
        """Stop setting ``product``'s live events aside; return those set aside."""
        pending = self.paused.pop(product, [])
        self.paused_bytes -= sum(item.size for item in pending)
        return pending

    def queue_event(
        self, product: str, item: RingItem, *, backfill: bool = False, now: float | None = None
    ) -> None:
        event = item.event
        types = self.subs.get(product)
        if types is None or (event.TYPE != "status" and event.TYPE not in types):
            return
        if self.epochs.get(product) != event.epoch:
            self.epochs[product] = event.epoch
            self.high[product] = 0
            self.outbox.new_epoch(product)
        if event.seq <= self.high.get(product, 0):
            return
        self.high[product] = event.seq
        if backfill:
            for text in item.texts:
                self.outbox.put_backfill(product, event.TYPE, event.seq, text)
            self.wake()
        elif self.outbox.offer(
            product,
            event.TYPE,
            event.seq,
            item.texts[0] if len(item.texts) == 1 else item.texts,
            trio.current_time() if now is None else now,
            event.ts_ingest,
        ):
            self.wake()
        else:
            self.slow_consumer(self.outbox.overflow, product)

    def deliver_candle(self, product: str, text: str, now: float) -> None:
        """Offer one ``candle`` message. Not sequenced: it bypasses the seq marks, but
        counts against the send queue's bounds like a live event (never conflated)."""
        types = self.subs.get(product)
        if self.close is not None or types is None or "candle" not in types:
            return
        if self.outbox.offer(product, "candle", 0, text, now):
            self.hub.stats.candles_out += 1
            self.wake()
        else:
            self.slow_consumer(self.outbox.overflow, product)

    async def run_sender(self, send: Callable[[str], Awaitable[None]]) -> tuple[int, str]:
        """Send queued messages until the session ends; return the close code and reason.

        Batching clients get up to FRAME_MAX_EVENTS messages (about FRAME_MAX_BYTES) per
        frame: a client working through a backlog needs fewer, larger frames.

        Cancellation: stops at once (between or inside a send); the caller closes the socket.
        """
        while True:
            if self.close is not None and (self.close[0] != CLOSE_DRAIN or len(self.outbox) == 0):
                return self.close
            texts = self.take(FRAME_MAX_EVENTS if self.batch else 1)
            ts_ingest = self.outbox.popped_ts_ingest
            if not texts:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            if self.batch and len(texts) > 1:
                await send(pack(texts))
            else:
                await send(texts[0])
            if self.close is not None and self.close[0] != CLOSE_DRAIN:
                return self.close
            self.hub.stats.frames_out += 1
            self.hub.stats.events_out += len(texts)
            if ts_ingest:
                DELIVERY_SECONDS.observe(max(0.0, (time.time_ns() - ts_ingest) / 1e9))
            if self.max_rate is not None:
                # Pacing lets the queue conflate while we wait (max_rate implies conflate).
                await trio.sleep(len(texts) / self.max_rate)

    def take(self, max_items: int) -> list[str]:
        """The texts of the next frame: up to ``max_items`` messages, no more than
        FRAME_MAX_BYTES unless one message alone is larger."""
        texts: list[str] = []
        for text, product, _type, _seq in self.outbox.pop(max_items, FRAME_MAX_BYTES):
            if text is None:
                assert product is not None
                rendered, seq = self.hub.book_snapshot_texts(product)
                self.outbox.book_floor[product] = seq
                texts.extend(rendered)
            else:
                texts.append(text)
        return texts


class Hub:
    """Latest state and recent events per product, and the sessions subscribed to them."""

    def __init__(
        self,
        *,
        state_factory: StateFactory,
        ring_size: int,
        send_queue: int,
        store: StoreLike,
        send_queue_bytes: int = 8 * 1024 * 1024,
        slow_consumer_after_s: float = 30.0,
    ) -> None:
        self.state_factory = state_factory
        self.ring_size = ring_size
        self.send_queue = send_queue
        self.send_queue_bytes = send_queue_bytes
        self.slow_consumer_after_s = slow_consumer_after_s
        self.store = store
        self._session_ids = itertools.count(1)
        self.states: dict[str, ProductStateLike] = {}
        self.assembler = PartAssembler()
        self.part_texts: dict[str, list[str]] = {}
        """Per product: the texts of the parts collected so far (forwarded as they came)."""
        self.positions: dict[str, int] = {}
        """Per product: the LF_MD stream position its state reflects."""
        self.hole_marks: dict[str, int] = {}
        """Per product: how many holes it had (a backfill in flight across one gives up)."""
        self.rings: dict[str, collections.deque[RingItem]] = {}
        self.subscribers: dict[str, set[Session]] = {}
        self.sessions: set[Session] = set()
        self.stats = HubStats()
        self.draining = False
        self.candles = LiveCandles()
        """One-minute candles of the trades seen, for the ``candles`` channel."""
        self._market_clock = (0, 0.0)
        """``(newest ts_event seen, trio time when seen)``: see :meth:`market_now`."""

    # -- state --------------------------------------------------------------------------

    def load_state(self, obj: dict[str, Any], stream_seq: int | None = None) -> ProductStateLike:
        """Install a stored state; ``stream_seq`` is the LF_MD position it reflects (the
        replay at start skips this product's messages at or below it)."""
        state = self.state_factory.from_json(obj)
        product = str(obj["product"])
        self.states[product] = state
        if stream_seq is not None:
            self.positions[product] = stream_seq
        return state

    def offer(
        self, event: Event, text: str | None = None, stream_seq: int | None = None
    ) -> Gap | None:
        """One LF_MD message: :meth:`assemble` it, then :meth:`ingest` what is whole."""
        assembled = self.assemble(event, text, stream_seq)
        if assembled is None:
            return None
        whole, texts = assembled
        return self.ingest(whole, texts, stream_seq)

    def assemble(
        self, event: Event, text: str | None = None, stream_seq: int | None = None
    ) -> tuple[Event, str | tuple[str, ...] | None] | None:
        """Collect the parts of a parted book snapshot (ledgerflux.parts): None while
        parts are missing, then the whole book with the parts' texts (what clients get).
        Anything else comes straight back. A part that does not continue the collection,
        or another event of the product in the middle of one, drops the partial snapshot:
        counted as ``incomplete_parts`` and logged; the product's seq then jumps and
        :meth:`ingest` treats that as a gap."""
        product = event.product
        if stream_seq is not None and stream_seq <= self.positions.get(product, 0):
            self.stats.duplicates += 1
            return None
        parted = isinstance(event, Book) and event.parts > 1
        if not parted and product not in self.assembler.pending:
            return event, text
        if not isinstance(event, Book):
            dropped = self.assembler.discard(product)
            self.part_texts.pop(product, None)
            self._incomplete(
                product, f"a {event.TYPE} at seq {event.seq} came after {dropped} parts"
            )
            return event, text
        whole: Event | None
        try:
            whole = self.assembler.add(event)
        except IncompleteParts as exc:
            self._incomplete(product, exc.detail)
            self.part_texts.pop(product, None)
            whole = exc.result
        except PartsError as exc:
            log.warning("bad book part", product=product, seq=event.seq, error=str(exc))
            self.stats.bad_events += 1
            return None
        part_text = text if text is not None else orjson.dumps(to_wire(event)).decode()
        if whole is None:
            if product in self.assembler.pending:
                if event.part == 0:
                    self.part_texts[product] = []
                self.part_texts[product].append(part_text)
            return None
        if not parted:
            return whole, text
        return whole, (*self.part_texts.pop(product), part_text)

    def _incomplete(self, product: str, detail: str) -> None:
        self.stats.incomplete_parts += 1
        log.warning("incomplete_parts: book snapshot dropped", product=product, detail=detail)

    def ingest(
        self,
        event: Event,
        text: str | tuple[str, ...] | None = None,
        stream_seq: int | None = None,
        *,
        hole: bool = False,
    ) -> Gap | None:
        """Apply one whole LF_MD event (see :meth:`assemble` for parts) and fan it out.

        Duplicates are skipped: the product's messages at or below the stream position
        of its loaded state, and events at or below its ``seq`` in the same epoch.

        An event that does not follow (a ``seq`` jump in the epoch, or a new epoch that
        does not start at 1) is not applied: the :class:`Gap` is returned so that the
        caller fetches the missing events (:meth:`fill_gap`) and offers the event again.
        With ``hole=True`` the gap is accepted as a real hole (the events are no longer
        retained anywhere): the state restarts from this event and every subscriber gets
        ``status: reset`` and a fresh snapshot, never a silent jump.
        """
        product = event.product
        if stream_seq is not None and stream_seq <= self.positions.get(product, 0):
            self.stats.duplicates += 1
            return None
        state = self.states.get(product)
        ring = self.rings.get(product)
        if ring is None:
            ring = self.rings[product] = collections.deque(maxlen=self.ring_size)
        if state is None or not state.epoch:
            state = self.states[product] = self.state_factory(product)
            ring.clear()
        else:
            same_epoch = event.epoch == state.epoch
            if same_epoch and event.seq <= state.seq:
                self.stats.duplicates += 1
                return None
            first = state.seq + 1 if same_epoch else 1
            if event.seq != first:
                if not hole:
                    texts = (text,) if isinstance(text, str) else text
                    return Gap(product, event.epoch, first, event.seq - 1, event, texts, stream_seq)
                self._hole(event, text, stream_seq, first)
                return None
            if not same_epoch:
                # A new seq space: nothing retained from the old epoch can be replayed by seq.
                state = self.states[product] = self.state_factory(product)
                ring.clear()
        try:
            # LF_MD events are already public: a book change that cannot be applied marks
            # the book gapped rather than being refused.
            state.apply(event, strict_book=False)
        except ValueError as exc:
            log.warning("event refused", product=product, seq=event.seq, error=str(exc))
            self.stats.bad_events += 1
            return None
        item = self._advance(event, text, stream_seq, ring)
        subscribers = self.subscribers.get(product)
        if subscribers:
            now = trio.current_time()
            for session in tuple(subscribers):
                session.deliver(product, item, now)
        if isinstance(event, Trade):
            if event.ts_event > self._market_clock[0]:
                self._market_clock = (event.ts_event, trio.current_time())
            self._fan_out_candles(product, self.candles.add(event, stream_seq))
        return None

    def _fan_out_candles(self, product: str, candles: list[tuple[Candle, bool]]) -> None:
        self.stats.candles_late = self.candles.late_dropped
        subscribers = self.subscribers.get(product)
        if not candles or not subscribers:
            return
        now = trio.current_time()
        for candle, closed in candles:
            text = orjson.dumps(candle_json(candle, closed=closed)).decode()
            for session in tuple(subscribers):
                session.deliver_candle(product, text, now)

    def market_now(self, now: float) -> int:
        """The market's clock at trio time ``now``, in ns: the newest trade ``ts_event``
        seen (of any product), advanced by the time since it was seen. On a live feed that
        is about the wall clock; on a replay it is the recording's own time, so its minutes
        close as they did. Trades only: other events may carry the ingestor's clock (a
        ``status``), which is not the recording's."""
        ts, seen = self._market_clock
        return ts + int((now - seen) * 1e9) if ts else 0

    def close_candles(self, now: float, grace_ns: int) -> None:
        """Close the candles whose minute ended ``grace_ns`` before :meth:`market_now`
        with no later trade, and send them to their subscribers."""
        market_now = self.market_now(now)
        if not market_now:
            return
        for candle in self.candles.close_due(market_now, grace_ns):
            self._fan_out_candles(candle.product, [(candle, True)])

    def _advance(
        self,
        event: Event,
        text: str | tuple[str, ...] | None,
        stream_seq: int | None,
        ring: collections.deque[RingItem],
    ) -> RingItem:
        if stream_seq is not None:
            self.positions[event.product] = stream_seq
        item = RingItem(event, _client_texts(event, text))
        ring.append(item)
        self.stats.events_in += 1
        return item

    def _hole(
        self, event: Event, text: str | tuple[str, ...] | None, stream_seq: int | None, first: int
    ) -> None:
        product = event.product
        reason = f"seq {first}..{event.seq - 1} of epoch {event.epoch!r} no longer retained"
        log.warning("LF_MD hole: subscribers reset", product=product, seq=event.seq, reason=reason)
        self.stats.holes += 1
        state = self.states[product] = self.state_factory(product)
        ring = self.rings[product]
        ring.clear()
        try:
            state.apply(event, strict_book=False)
        except ValueError as exc:
            log.warning("event refused", product=product, seq=event.seq, error=str(exc))
            self.stats.bad_events += 1
            return
        self._advance(event, text, stream_seq, ring)
        self.hole_marks[product] = self.hole_marks.get(product, 0) + 1
        for session in tuple(self.subscribers.get(product, ())):
            self._reset(session, product, reason)
        if isinstance(event, Trade):
            self._fan_out_candles(product, self.candles.add(event, stream_seq))

    async def fill_gap(self, gap: Gap) -> bool:
        """Fetch ``gap``'s events from the store and ingest them; True when all were there.

        The LF_MD consumer awaits this (it blocks the stream for at most
        GAP_FILL_TIMEOUT_S); subscribe requests are served meanwhile, at the old ``seq``.
        """
        if gap.to_seq - gap.from_seq + 1 > MAX_STORE_BACKFILL:
            return False
        history: list[Event] | None = None
        with trio.move_on_after(GAP_FILL_TIMEOUT_S):
            try:
                history = await self._history(gap.product, gap.epoch, gap.from_seq, gap.to_seq)
            except Exception as exc:
                log.warning("history query failed", product=gap.product, error=str(exc))
                self.stats.store_errors += 1
        if history is None:
            return False
        for event in history:
            if self.ingest(event) is not None:
                return False
        self.stats.gaps_filled += 1
        return True

    def snapshot_texts(self, product: str) -> tuple[list[str], int, str]:
        """``snapshot`` message for ``product``: ``(texts, seq, epoch)``; several texts
        (``part``/``parts``) when the book makes it larger than PART_MAX_BYTES."""
        state = self.states.get(product)
        body = state.to_json() if state is not None else _empty_state(product)
        body.pop("type", None)
        book = body.get("book") or {"bids": [], "asks": []}
        texts = [
            control("snapshot", **{**body, "book": {**book, "bids": bids, "asks": asks}}, **extra)
            for bids, asks, extra in _split_levels(
                book["bids"],
                book["asks"],
                len(control("snapshot", **{**body, "book": {**book, "bids": [], "asks": []}})),
            )
        ]
        return texts, int(body["seq"]), str(body["epoch"])

    def book_snapshot_texts(self, product: str) -> tuple[list[str], int]:
        """The product's full book as a canonical ``book`` event with ``snapshot: true``
        (as parts when larger than PART_MAX_BYTES)."""
        state = self.states.get(product)
        body = state.to_json() if state is not None else _empty_state(product)
        book = body.get("book") or {"bids": [], "asks": []}
        ts = int(body.get("ts_event") or 0)
        event = {
            "type": "book",
            "product": product,
            "seq": body["seq"],
            "epoch": body["epoch"],
            "src_seq": None,
            "ts_event": ts,
            "ts_ingest": ts,
            "snapshot": True,
            "bids": book["bids"],
            "asks": book["asks"],
        }
        texts = [
            orjson.dumps({**event, "bids": bids, "asks": asks, **extra}).decode()
            for bids, asks, extra in _split_levels(
                book["bids"], book["asks"], len(orjson.dumps({**event, "bids": [], "asks": []}))
            )
        ]
        return texts, int(body["seq"])

    # -- sessions -----------------------------------------------------------------------

    def open_session(self, client: str = "-", principal: Principal = ANONYMOUS) -> Session:
        outbox = Outbox(
            self.send_queue,
            max_bytes=self.send_queue_bytes,
            max_age_s=self.slow_consumer_after_s,
        )
        session = Session(
            self, outbox, client=client, principal=principal, id=next(self._session_ids)
        )
        self.sessions.add(session)
        return session

    def detach(self, session: Session) -> None:
        self.sessions.discard(session)
        for product in session.subs:
            self._forget(product, session)

    def _forget(self, product: str, session: Session) -> None:
        # An empty subscriber set is removed: clients may name any valid product, and
        # what they named must not stay in memory after they left.
        subscribers = self.subscribers.get(product)
        if subscribers is not None:
            subscribers.discard(session)
            if not subscribers:
                del self.subscribers[product]

    def unsubscribe(self, session: Session, products: Iterable[str]) -> list[str]:
        """Remove ``products`` from ``session``; returns those that were subscribed."""
        removed = []
        for product in products:
            if session.subs.pop(product, None) is not None:
                removed.append(product)
                self._forget(product, session)
                session.release(product)
        return removed

    async def subscribe(self, session: Session, request: Subscribe) -> None:
        """Register ``session`` for ``request`` and queue its snapshots / backfill.

        Cancellation: may leave a product paused; the caller then ends the session.
        """
        session.batch = session.batch or request.batch
        if request.max_rate is not None:
            session.max_rate = request.max_rate
        if request.conflate:
            session.outbox.conflate = True
        for product in request.products:
            self.subscribers.setdefault(product, set()).add(session)
            session.subs[product] = request.channels
            if product in request.from_seq:
                await self._backfill(
                    session, product, request.from_seq[product], request.epoch.get(product)
                )
            elif request.snapshot:
                self._send_snapshot(session, product)
            else:
                state = self.states.get(product)
                session.epochs[product] = state.epoch if state is not None else ""
                session.high[product] = state.seq if state is not None else 0
            candle = self.candles.open_candle(product)
            if "candle" in request.channels and candle is not None:
                # The open minute so far; its updates follow as trades come.
                session.send_control(orjson.dumps(candle_json(candle, closed=False)).decode())

    def positions_of(self, products: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``{product: {"seq": S, "epoch": E}}``: where each product's stream stands."""
        positions = {}
        for product in products:
            state = self.states.get(product)
            positions[product] = {
                "seq": state.seq if state is not None else 0,
                "epoch": state.epoch if state is not None else "",
            }
        return positions

    def _send_snapshot(self, session: Session, product: str) -> None:
        texts, seq, epoch = self.snapshot_texts(product)
        for text in texts:
            session.send_control(text)
        session.high[product] = seq
        session.epochs[product] = epoch
        session.outbox.book_floor[product] = seq

    def _reset(self, session: Session, product: str, reason: str) -> None:
        """``status: reset`` then a fresh snapshot: the honest answer when the asked seq
        cannot be replayed (docs/protocol.md)."""
        self.stats.resets += 1
        state = self.states.get(product)
        body = state.to_json() if state is not None else _empty_state(product)
        ts = int(body.get("ts_event") or 0)
        status = {
            "type": "status",
            "product": product,
            "seq": body["seq"],
            "epoch": body["epoch"],
            "src_seq": None,
            "ts_event": ts,
            "ts_ingest": ts,
            "status": "reset",
            "reason": reason,
        }
        session.send_control(orjson.dumps(status).decode())
        self._send_snapshot(session, product)

    async def _backfill(
        self, session: Session, product: str, from_seq: int, epoch: str | None
    ) -> None:
        state = self.states.get(product)
        if state is None:
            self._reset(session, product, "product unknown to the gateway")
            return
        if epoch is not None and epoch != state.epoch:
            self._reset(session, product, f"epoch is now {state.epoch!r}")
            return
        session.epochs[product] = state.epoch
        if from_seq > state.seq:
            # Nothing to replay yet: live from from_seq (events before it are not wanted).
            session.high[product] = from_seq - 1
            return
        ring = self.rings.get(product)
        if ring and ring[0].event.seq <= from_seq:
            self.stats.backfill_ring += 1
            session.high[product] = from_seq - 1
            for item in tuple(ring):
                if item.event.seq >= from_seq:
                    session.queue_event(product, item, backfill=True)
            return
        # Older than the ring: fetch from the store with live events set aside meanwhile.
        ring_copy = list(ring) if ring else []
        to_seq = ring_copy[0].event.seq - 1 if ring_copy else state.seq
        current_epoch = state.epoch
        if to_seq - from_seq + 1 > MAX_STORE_BACKFILL:
            self._reset(session, product, "from_seq is too far back")
            return
        session.paused[product] = []
        holes = self.hole_marks.get(product, 0)
        try:
            history = await self._history(product, current_epoch, from_seq, to_seq)
        except Exception as exc:
            # The store is down or returned a bad row: the honest answer is a reset.
            log.warning("history query failed", product=product, from_seq=from_seq, error=str(exc))
            self.stats.store_errors += 1
            history = None
        finally:
            pending = session.release(product)
        if session.close is not None:
            return
        if self.hole_marks.get(product, 0) != holes:
            pass  # A hole meanwhile: the session got reset + snapshot; only newer events go.
        elif history is None:
            self._reset(session, product, f"seq {from_seq} is no longer retained")
        else:
            self.stats.backfill_store += 1
            session.high[product] = from_seq - 1
            for event in history:
                session.queue_event(product, RingItem(event, _client_texts(event)), backfill=True)
            for item in ring_copy:
                session.queue_event(product, item, backfill=True)
        for item in pending:
            session.queue_event(product, item)

    async def _history(
        self, product: str, epoch: str, from_seq: int, to_seq: int
    ) -> list[Event] | None:
        """Events ``from_seq..to_seq`` from the store, or None unless all are there."""
        events: list[Event] = []
        assembler = PartAssembler()  # in case the store keeps a parted snapshot as parts
        next_seq = from_seq
        while next_seq <= to_seq:
            limit = min(STORE_PAGE, to_seq - next_seq + 1)
            page = await self.store.history(product, epoch, next_seq, to_seq, limit)
            if not page:
                return None
            for event in page:
                if event.seq != next_seq or event.epoch != epoch:
                    return None
                if isinstance(event, Book):
                    try:
                        whole = assembler.add(event)
                    except PartsError:
                        return None
                    if whole is None:
                        continue
                    event = whole
                events.append(event)
                next_seq += 1
        return events

    def drain(self) -> None:
        """Tell every session to flush, send ``drain`` and close with 1001."""
        self.draining = True
        for session in tuple(self.sessions):
            session.send_control(control("drain"))
            if session.close is None:
                session.close = (CLOSE_DRAIN, "gateway draining")
            self.detach(session)
            session.wake()


def _empty_state(product: str) -> dict[str, Any]:
    return {
        "product": product,
        "epoch": "",
        "seq": 0,
        "ts_event": 0,
        "book": {"bids": [], "asks": []},
        "quote": None,
        "trade": None,
        "ticker": None,
        "status": None,
    }


def _client_texts(event: Event, text: str | tuple[str, ...] | None = None) -> tuple[str, ...]:
    """What clients are sent for ``event``: the given text(s) as they came from LF_MD, or
    its encoding; a book snapshot the gateway encodes itself (from the store) that is
    larger than PART_MAX_BYTES goes as parts."""
    if isinstance(text, tuple):
        return text
    if text is not None:
        return (text,)
    encoded = orjson.dumps(to_wire(event)).decode()
    if isinstance(event, Book) and event.snapshot and len(encoded) > PART_MAX_BYTES:
        return tuple(
            orjson.dumps(to_wire(part)).decode() for part in split_book(event, PART_MAX_BYTES)
        )
    return (encoded,)


def _split_levels(
    bids: list[Any], asks: list[Any], envelope: int
) -> list[tuple[list[Any], list[Any], dict[str, int]]]:
    """Bids and asks cut into slices, in order, so that each message (``envelope`` bytes
    besides its levels) stays within PART_MAX_BYTES; the extra ``part``/``parts`` keys
    for each message (none when one message holds it all)."""
    sizes = [len(orjson.dumps(level)) + 1 for level in (*bids, *asks)]
    if envelope + sum(sizes) <= PART_MAX_BYTES:
        return [(bids, asks, {})]
    budget = max(PART_MAX_BYTES - envelope - len(',"part":0000000,"parts":0000000'), 1)
    cuts = [0]
    used = 0
    for index, size in enumerate(sizes):
        if used and used + size > budget:
            cuts.append(index)
            used = 0
        used += size
    cuts.append(len(sizes))
    count = len(cuts) - 1
    n = len(bids)
    return [
        (
            bids[min(start, n) : min(stop, n)],
            asks[max(start - n, 0) : max(stop - n, 0)],
            {"part": part, "parts": count},
        )
        for part, (start, stop) in enumerate(itertools.pairwise(cuts))
    ]
