"""The ingest session: everything after "frame + ts_ingest", shared by live feeds and replay.

A :class:`FeedSession` is synchronous (it never awaits). A frame source (the WebSocket
client in :mod:`ledgerflux.feeds.runtime`, or a recording in :mod:`ledgerflux.feeds.replay`)
hands it frames with their receipt time; it decodes them with the plugin's sans-IO decoder,
tracks exchange sequences, starts and completes resyncs, and puts what must reach the bus in
a :class:`PublishQueue`. The async parts (publishing, REST fetches, reconnecting) read the
session's requests and report back through its methods.

Per product and per frame, the output is one ``OutMsg`` on ``lf.ticks.<shard>.<ex>.<sym>``
whose data is a JSON array of the frame's canonical events for that product.

No message may exceed the bus's ``max_payload`` (:attr:`FeedSession.max_message_bytes`
leaves room for the headers). A larger one is split before it is queued: a book snapshot
into parts (:func:`ledgerflux.parts.split_book`), each alone in its message, the other
events into as many messages as needed, all consecutive, in order, with msg ids
``<id>:<i>/<n>`` (``<id>`` is ``<product>:t<ts_ingest>`` for events without an exchange
sequence). A message the bus refuses for good
(:class:`~ledgerflux.bus.PublishRefused`) goes to the DLQ with its reason
(:meth:`FeedSession.on_publish_refused`); its product gets a ``gap`` status, and a resync
when the lost message held book data.

Resync, per product (REST mode, the exchange's documented procedure):

1. a gap (or a dropped publish buffer) emits ``status: gap`` (or ``stale``) and starts
   buffering the product's live frames (bounded by ``max_buffer_frames``);
2. the runtime fetches the REST book (rate limited) and calls :meth:`FeedSession.on_rest_book`;
3. the session publishes ``status: resync``, the REST book as a snapshot, then the buffered
   frames: events whose ``src_seq`` is at or below the book's are dropped, and so are the
   events of frames whose sequence mark is. Events without a ``src_seq`` (Coinbase
   ``l2update``) are applied: each sets the *absolute* size of a price level, and the
   buffer began before the REST request was sent, so replaying them in order leaves every
   level they touch at its newest size (re-applying a change the book already holds is a
   no-op), and levels they do not touch keep the book's value.

In ``RESUBSCRIBE`` mode (or when the plugin has no REST book) the session asks the source to
reconnect; the product's frames are dropped until a frame carrying its snapshot
(``Decoded.snapshot_products``) arrives, which completes the resync. A snapshot frame
completes a REST resync too.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

import attrs
import orjson
import structlog
import trio

from ledgerflux import codec
from ledgerflux.book import BookError, OrderBook
from ledgerflux.bus import DEFAULT_MAX_PAYLOAD, OutMsg, PublishRefused
from ledgerflux.events import Book, Event, Status, make_product
from ledgerflux.feeds.metrics import FeedMetrics
from ledgerflux.feeds.sequence import SequenceTracker, SeqVerdict
from ledgerflux.parts import PartTooLarge, split_book
from ledgerflux.plugin import (
    BookChecksum,
    BookSnapshot,
    Decoded,
    DecodeError,
    FeedDecoder,
    FeedPlugin,
    PluginOptions,
    ResyncMode,
    SeqMark,
    SequenceModel,
    Subscription,
)
from ledgerflux.subjects import dlq_subject, ticks_msg_id, ticks_subject

__all__ = [
    "HEADER_HEADROOM_BYTES",
    "FeedSession",
    "PublishQueue",
    "QueuedFrame",
    "SessionStats",
    "Shift",
    "gaps_detectable",
]

log = structlog.get_logger(__name__)

StatusKind = Literal["gap", "resync", "stale", "online", "offline", "reset"]

HEADER_HEADROOM_BYTES = 1024
"""Room left under the bus's ``max_payload`` for a message's headers (``Nats-Msg-Id`` and
its block take about 100 bytes)."""
CHECKSUM_FREE_RESYNCS = 3
"""Checksum mismatches of one product resynced at once; after that each further resync
waits (doubling from :data:`CHECKSUM_BACKOFF_S`), so a checksum that never matches costs
one REST call or resubscribe per back-off period, never a storm."""
CHECKSUM_BACKOFF_S = 5.0
CHECKSUM_BACKOFF_MAX_S = 300.0
RECENT_KEYS = 4096
"""Unnumbered events remembered outside a handover, for the successor's first frames."""
HANDOVER_KEYS = 100_000
"""Events remembered during a planned reconnect to drop the overlap's duplicates."""
DLQ_RAW_MAX_BYTES = 64 * 1024
"""A refused message's payload is kept in its DLQ entry up to this size, or a quarter of
the message limit if smaller (then cut, and ``raw_truncated`` says so): the entry itself
must fit the bus."""


class Shift(Protocol):
    """Rewrites what the decoder produced before the session sees it (replay loops move
    sequence numbers and exchange timestamps forward with this)."""

    def decoded(self, decoded: Decoded) -> Decoded: ...

    def book(self, snapshot: BookSnapshot) -> BookSnapshot: ...


@attrs.frozen
class QueuedFrame:
    """What one input frame (or one runtime status) sends to the bus."""

    products: frozenset[str]
    msgs: tuple[OutMsg, ...]


class PublishQueue:
    """Frames waiting for the bus, at most ``capacity`` of them.

    Policy when full (the bus is slower than the exchange): :meth:`put` refuses, and the
    session drops everything queued, publishes ``stale`` for the products involved and
    resyncs them. Memory stays bounded and the loss is announced, never silent. (A memory
    channel cannot do this: its sender cannot take back what is queued.) Replay, which can
    wait, applies backpressure instead with :meth:`wait_below`.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._frames: deque[QueuedFrame] = deque()
        self._changed = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: QueuedFrame) -> bool:
        if len(self._frames) >= self.capacity:
            return False
        self._frames.append(frame)
        self._changed.unpark_all()
        return True

    def clear(self) -> list[QueuedFrame]:
        dropped = list(self._frames)
        self._frames.clear()
        self._changed.unpark_all()
        return dropped

    def take(self, max_frames: int) -> list[QueuedFrame]:
        """Up to ``max_frames`` frames, oldest first, without waiting."""
        count = min(max_frames, len(self._frames))
        batch = [self._frames.popleft() for _ in range(count)]
        if batch:
            self._changed.unpark_all()
        return batch

    async def get_batch(self, max_frames: int) -> list[QueuedFrame]:
        """Wait for at least one frame, then take up to ``max_frames``. Cancellation while
        waiting takes nothing."""
        while not self._frames:
            await self._changed.park()
        return self.take(max_frames)

    async def wait_below(self, count: int) -> None:
        """Wait until fewer than ``count`` frames are queued."""
        while len(self._frames) >= count:
            await self._changed.park()


@attrs.define
class SessionStats:
    """Plain counters (also exported as Prometheus metrics); used by dry runs and tests."""

    frames: int = 0
    events: int = 0
    decode_errors: int = 0
    split_messages: int = 0
    publish_refused: int = 0
    duplicates: int = 0
    gaps: int = 0
    resyncs: int = 0
    overflow_dropped: int = 0
    reconnects: int = 0
    checksum_mismatches: int = 0
    checksum_backoffs: int = 0
    handovers: int = 0


@attrs.define
class _Buffered:
    events: tuple[Event, ...]
    marks: tuple[SeqMark, ...]
    checksums: tuple[BookChecksum, ...] = ()


@attrs.define
class _Checked:
    """A product whose book the session keeps to verify the exchange's checksums."""

    book: OrderBook
    failures: int = 0
    """Mismatches since the last verified match (reset by a match)."""
    hold_until: float = 0.0
    """Monotonic time before which a mismatch is not resynced (backed off)."""


@attrs.define
class _Resync:
    rest: bool
    """True: waiting for a REST book; False: waiting for a snapshot frame."""
    since: float
    buffered: list[_Buffered] = attrs.Factory(list)


class FeedSession:
    """Decoding, sequence tracking, resync and output of one feed (see the module doc)."""

    def __init__(
        self,
        plugin: FeedPlugin,
        subscription: Subscription,
        queue: PublishQueue,
        *,
        feed: str,
        shards: int,
        max_buffer_frames: int,
        msg_id_prefix: str = "",
        shift: Shift | None = None,
        metrics: FeedMetrics | None = None,
    ) -> None:
        self.plugin = plugin
        self.subscription = subscription
        self.queue = queue
        self.feed = feed
        self.shards = shards
        self.max_buffer_frames = max_buffer_frames
        self.msg_id_prefix = msg_id_prefix
        self.shift = shift
        self.metrics = metrics or FeedMetrics(feed)
        self.stats = SessionStats()
        self.products = tuple(make_product(plugin.exchange, s) for s in subscription.symbols)
        self.symbols = dict(zip(self.products, subscription.symbols, strict=True))
        self.tracker = SequenceTracker(
            plugin.sequence_model, detect_gaps=gaps_detectable(plugin, subscription)
        )
        self.options = PluginOptions.of(plugin)
        self.keyed = plugin.sequence_model in (
            SequenceModel.PER_PRODUCT,
            SequenceModel.UPDATE_ID_CHAIN,
        )
        """Sequence marks are per product (a gap resyncs that product only)."""
        self.decoder: FeedDecoder = plugin.new_decoder()
        self._checked: dict[str, _Checked] = {}
        self._handover: dict[Event, None] | None = None
        self._recent: dict[Event, None] = {}
        """The last :data:`RECENT_KEYS` unnumbered events (planned-reconnect plugins)."""
        self._last_src: dict[tuple[str, str], int] = {}
        """Last exchange number accepted per (product, event type), kept for plugins with
        planned reconnects (the handover drops what is not newer)."""
        self.subscribed = False
        """The current connection is subscribed (confirmed, or data is flowing)."""
        self.online = False
        self.outgoing: list[str] = []
        """Frames to send on the current connection (per-product resubscribes)."""
        self._outgoing_lot = trio.lowlevel.ParkingLot()
        self.reconnect_reason: str | None = None
        """Set when a resync needs a fresh subscription; the source reconnects."""
        self.connection_scope: trio.CancelScope | None = None
        """The source's scope for the current connection, cancelled on a reconnect request."""
        self._resyncs: dict[str, _Resync] = {}
        self._rest_wanted: dict[str, None] = {}
        self._rest_lot = trio.lowlevel.ParkingLot()
        self._resync_done = trio.lowlevel.ParkingLot()
        self._out: list[OutMsg] = []
        self._out_products: set[str] = set()
        self.max_message_bytes = DEFAULT_MAX_PAYLOAD - HEADER_HEADROOM_BYTES
        """Largest payload queued as one message; the runtime sets it from the bus's
        ``max_payload`` (read at connect) before each batch."""

    # -- connection lifecycle -------------------------------------------------------------

    def on_connect(self) -> None:
        """A new connection is open (not yet subscribed)."""
        self.decoder = self.plugin.new_decoder()
        self.tracker.new_connection()
        self.subscribed = False
        self.reconnect_reason = None
        self.outgoing.clear()  # a new connection subscribes everything anyway
        if self.options.wants_rest_book(self.subscription):
            # No snapshot on the stream: buffer from now, fetch the REST book. Products
            # with a baseline keep their chain across the reconnect (a hole resyncs).
            now = time.time_ns()
            for product in self.products:
                if self.tracker.last(product) is None and product not in self._resyncs:
                    self._start_resync(product, "stale", "initial book: REST snapshot", now)
            self._flush()

    # -- planned reconnect (handover) ----------------------------------------------------

    def begin_handover(self) -> FeedDecoder:
        """A successor connection is opening before the current one reaches the plugin's
        ``max_connection_s``: from now on the events published are remembered (whole, but
        for receipt times), so that the successor's first frames, which repeat what the
        current one delivered, are dropped as duplicates. Returns the successor's
        decoder."""
        # The successor may repeat what the old socket delivered just before this.
        self._handover = dict(self._recent)
        self.stats.handovers += 1
        return self.plugin.new_decoder()

    def end_handover(self, decoder: FeedDecoder) -> None:
        """The successor is now the connection: ``decoder`` is the session's decoder."""
        self.decoder = decoder
        self._handover = None

    def _overlap(self, product: str, events: tuple[Event, ...]) -> tuple[Event, ...]:
        """``events`` minus those already published during a handover; remembers them."""
        seen = self._handover
        if seen is None:
            if self.options.max_connection_s is not None:
                recent = self._recent
                for event in events:
                    if event.src_seq is not None:
                        self._last_src[(product, event.TYPE)] = event.src_seq
                    else:
                        if len(recent) >= RECENT_KEYS:
                            recent.pop(next(iter(recent)))
                        recent[_overlap_key(event)] = None
            return events
        fresh = []
        for event in events:
            if event.src_seq is not None:
                # Numbered per product and type: nothing at or below the last one accepted
                # is new (this also covers what the old socket delivered before the
                # handover began).
                last = self._last_src.get((product, event.TYPE))
                if last is not None and event.src_seq <= last:
                    continue
                self._last_src[(product, event.TYPE)] = event.src_seq
            key = _overlap_key(event)
            if key in seen:
                continue
            if len(seen) >= HANDOVER_KEYS:
                seen.pop(next(iter(seen)))
            seen[key] = None
            fresh.append(event)
        if len(fresh) < len(events):
            self.stats.duplicates += len(events) - len(fresh)
            self.metrics.duplicates(product, len(events) - len(fresh))
        return tuple(fresh)

    def on_disconnect(self, reason: str) -> None:
        """The connection is gone (or the session ends): ``offline`` for every product."""
        self.subscribed = False
        self.stats.reconnects += 1
        self.metrics.reconnect()
        if self.online:
            self.online = False
            now = time.time_ns()
            for product in self.products:
                self._status(product, "offline", reason, now)
            self._flush()

    def report_unavailable(self, symbol: str, reason: str) -> None:
        """A configured symbol the exchange does not offer (unknown, delisted, halted):
        ``status: offline`` with the reason and a DLQ entry, counted; it is not
        subscribed and the other products flow."""
        product = make_product(self.plugin.exchange, symbol)
        now = time.time_ns()
        self._status(product, "offline", reason, now)
        code = reason.partition(":")[0]
        self._dlq(DecodeError(code, reason, symbol.encode(), product=product), now)
        self._flush()

    def mark_stale(self, reason: str) -> None:
        """No frame for too long: ``stale`` for every product (the source reconnects)."""
        now = time.time_ns()
        for product in self.products:
            self._status(product, "stale", reason, now)
        self._flush()

    def reset(self, reason: str) -> None:
        """``reset`` for every product: the normalizer starts a new epoch (replay start)."""
        now = time.time_ns()
        for product in self.products:
            self._status(product, "reset", reason, now)
        self._flush()

    # -- frames ---------------------------------------------------------------------------

    def on_frame(
        self,
        raw: bytes | str,
        ts_ingest: int,
        *,
        decoder: FeedDecoder | None = None,
        clock_ns: int | None = None,
    ) -> None:
        """One frame received at ``ts_ingest`` (ns, stamped before decoding), decoded by
        the session's decoder (or ``decoder``: a handover's successor connection).

        ``clock_ns`` is the time the ingest lag is measured against when it is not the
        receipt time: a replay passes the frame's recorded receipt time (moved forward
        like ``ts_event`` on later loop passes), so the lag of a months-old recording is
        the lag it was recorded with, not its age."""
        self.stats.frames += 1
        self.metrics.frame()
        decoded = (decoder or self.decoder).decode(raw, ts_ingest)
        if self.shift is not None:
            decoded = self.shift.decoded(decoded)
        for error in decoded.errors:
            self._dlq(error, ts_ingest)
        if not self.subscribed and (decoded.subscribed is not None or decoded.events):
            self._go_online(ts_ingest)

        for product in decoded.snapshot_products:
            # A snapshot is a new baseline: the next sequence number is accepted as is.
            self.tracker.forget(product)
        dropped: set[str | None] = set()
        gapped: dict[str, str] = {}
        for mark in decoded.marks:
            per_product = self.keyed
            if per_product and mark.key in self._resyncs:
                continue  # judged against the REST book when the resync completes
            verdict = self.tracker.check(mark)
            if verdict is SeqVerdict.DUPLICATE:
                dropped.add(mark.key if per_product else None)
            elif verdict is SeqVerdict.GAP:
                affected = [mark.key] if per_product and mark.key else list(self.products)
                for product in affected:
                    gapped.setdefault(product, f"sequence gap before {mark.value}")
        for product, reason in gapped.items():
            self.stats.gaps += 1
            self.metrics.gap(product)
            self._start_resync(product, "gap", reason, ts_ingest)

        by_product = _group(decoded.events)
        marks_by_product = _group_marks(decoded.marks)
        checks = _group_checksums(decoded.checksums)
        for product, events in by_product.items():
            self.stats.events += len(events)
            self.metrics.events(product, len(events))
            if None in dropped or product in dropped:
                self.stats.duplicates += len(events)
                self.metrics.duplicates(product, len(events))
                continue
            resync = self._resyncs.get(product)
            events = self._overlap(product, events)  # buffered ones too: no repeat later
            if not events:
                continue
            if product in decoded.snapshot_products:
                if resync is not None:
                    self._finish_resync(product, "snapshot received", ts_ingest)
                self._emit(product, events)
                self._verify_checksums(product, events, checks.get(product, ()), ts_ingest)
            elif resync is None:
                self._emit(product, events)
                self._verify_checksums(product, events, checks.get(product, ()), ts_ingest)
            elif resync.rest:
                self._buffer(
                    product,
                    resync,
                    events,
                    marks_by_product.get(product, ()),
                    checks.get(product, ()),
                )
            # else: waiting for a fresh subscription's snapshot; these deltas would apply
            # to a book the consumer must discard anyway, and the gap status said so.
            for event in events:
                received = event.ts_ingest if clock_ns is None else clock_ns
                self.metrics.lag(product, (received - event.ts_event) / 1e9)
        for product, marks in marks_by_product.items():
            # A frame that carries only a sequence number (Coinbase `full`: received, open,
            # done, change) still says where the stream is. Without it in the buffer, the
            # REST book would look older than the next buffered frame: a false gap.
            resync = self._resyncs.get(product) if product is not None else None
            if product not in by_product and resync is not None and resync.rest:
                self._buffer(product, resync, (), marks)
        self._flush()

    def _buffer(
        self,
        product: str,
        resync: _Resync,
        events: Sequence[Event],
        marks: Sequence[SeqMark],
        checksums: Sequence[BookChecksum] = (),
    ) -> None:
        if len(resync.buffered) >= self.max_buffer_frames:
            # The REST book will be judged against later marks: a hole this leaves shows up
            # as a new gap, never as silent loss.
            self.stats.overflow_dropped += len(resync.buffered)
            self.metrics.dropped(product, len(resync.buffered))
            resync.buffered.clear()
        resync.buffered.append(_Buffered(tuple(events), tuple(marks), tuple(checksums)))

    # -- book checksums -------------------------------------------------------------------

    def _checked_book_reset(self, product: str, book: Book) -> None:
        """A REST book replaced ``product``'s book: the checksum book follows."""
        if self.options.book_checksum is None:
            return
        state = self._checked.setdefault(product, _Checked(OrderBook(product)))
        state.book.reset()
        state.book.apply(book)

    def _verify_checksums(
        self,
        product: str,
        events: Sequence[Event],
        checksums: Sequence[BookChecksum],
        ts: int,
    ) -> None:
        """Apply the published book events to the session's copy and compare it with the
        exchange's checksums (plugins with ``book_checksum`` only). A mismatch is
        ``status: gap`` and a resync of that product, counted; after
        :data:`CHECKSUM_FREE_RESYNCS` in a row the product is backed off (``stale``,
        reason ``checksum_backoff``) and its next resync waits, so the others keep
        flowing."""
        compute = self.options.book_checksum
        if compute is None:
            return
        state = self._checked.setdefault(product, _Checked(OrderBook(product)))
        depth = self.options.book_depth
        for event in events:
            if isinstance(event, Book):
                if event.snapshot and event.part == 0:
                    state.book.reset()
                try:
                    state.book.apply(event)
                except BookError:
                    state.book.mark_gap()
                if depth is not None:
                    state.book.truncate(depth)
        if not checksums or product in self._resyncs:
            return
        now = time.monotonic()
        if now < state.hold_until:
            return  # backed off: the product is marked stale until the hold ends
        want = checksums[-1].value
        got = compute(state.book.bids(depth), state.book.asks(depth))
        if got == want:
            state.failures = 0
            return
        state.failures += 1
        self.stats.checksum_mismatches += 1
        self.metrics.checksum_mismatch(product)
        reason = f"checksum mismatch: exchange {want}, book {got}"
        if state.failures > CHECKSUM_FREE_RESYNCS:
            extra = state.failures - CHECKSUM_FREE_RESYNCS - 1
            hold = min(CHECKSUM_BACKOFF_MAX_S, CHECKSUM_BACKOFF_S * 2**extra)
            state.hold_until = now + hold
            self.stats.checksum_backoffs += 1
            self._status(
                product,
                "stale",
                f"checksum_backoff: {state.failures} mismatches in a row, resync held "
                f"{hold:.0f}s ({reason})",
                ts,
            )
            return
        self.stats.gaps += 1
        self.metrics.gap(product)
        self._start_resync(product, "gap", reason, ts)

    def checksum_held(self) -> dict[str, float]:
        """Products whose checksum resync is backed off, with the monotonic time it ends."""
        now = time.monotonic()
        return {p: c.hold_until for p, c in self._checked.items() if c.hold_until > now}

    def release_checksum_holds(self) -> None:
        """Resync every product whose checksum back-off has ended (the runtime calls this
        from its timer; a held product whose book meanwhile matched again is left alone)."""
        now = time.monotonic()
        for product, state in self._checked.items():
            if 0 < state.hold_until <= now:
                state.hold_until = 0.0
                if product not in self._resyncs:
                    self._start_resync(
                        product, "gap", "checksum back-off ended: resync", time.time_ns()
                    )
        self._flush()

    def _go_online(self, ts: int) -> None:
        self.subscribed = True
        self.online = True
        for product in self.products:
            self._status(product, "online", "subscribed", ts)

    # -- resync ---------------------------------------------------------------------------

    def _start_resync(self, product: str, kind: StatusKind, reason: str, ts: int) -> None:
        self._status(product, kind, reason, ts)
        existing = self._resyncs.get(product)
        if existing is not None:
            # A new hole while resyncing: what was buffered no longer joins up.
            existing.buffered.clear()
            if existing.rest and product not in self._rest_wanted:
                self._rest_wanted[product] = None
                self._rest_lot.unpark_all()
            return
        rest = (
            self.plugin.resync_mode is ResyncMode.REST
            and self.plugin.book_request(self.symbols.get(product, product)) is not None
        )
        self._resyncs[product] = _Resync(rest=rest, since=time.monotonic())
        if rest:
            self._rest_wanted[product] = None
            self._rest_lot.unpark_all()
        elif self.options.resubscribe_messages is not None and self.subscribed:
            # One product again on the same connection; the others keep flowing. Its
            # frames are dropped until the exchange's fresh snapshot arrives.
            symbol = self.symbols.get(product, product.partition(":")[2])
            self.outgoing.extend(self.options.resubscribe_messages(symbol))
            self._outgoing_lot.unpark_all()
        else:
            self.request_reconnect(f"resync {product}: {reason}")

    def request_resync(
        self, product: str, reason: str
    ) -> Literal["rest", "resubscribe", "already"]:
        """A consumer asked for a fresh book of ``product`` (:mod:`ledgerflux.resync`):
        ``status: gap`` with the reason, then the usual resync (REST book, or a new
        subscription). Returns how, or ``already`` when one is under way (its snapshot
        serves the asker too)."""
        if product in self._resyncs:
            return "already"
        self._start_resync(product, "gap", f"resync requested: {reason}", time.time_ns())
        self._flush()
        return "rest" if self._resyncs[product].rest else "resubscribe"

    async def next_outgoing(self) -> list[str]:
        """Wait for frames to send on the current connection, and take them."""
        while not self.outgoing:
            await self._outgoing_lot.park()
        frames, self.outgoing = self.outgoing, []
        return frames

    def request_reconnect(self, reason: str) -> None:
        self.reconnect_reason = reason
        if self.connection_scope is not None:
            self.connection_scope.cancel()

    def resyncing(self) -> frozenset[str]:
        return frozenset(self._resyncs)

    async def next_rest_resync(self) -> str:
        """Wait for a product that needs a REST book; it stays in the resync set until
        :meth:`on_rest_book` (or a snapshot frame) completes it."""
        while not self._rest_wanted:
            await self._rest_lot.park()
        product = next(iter(self._rest_wanted))
        del self._rest_wanted[product]
        return product

    async def wait_rest_resyncs(self) -> None:
        """Wait until no resync waits for a REST book (a recording that ended)."""
        while any(r.rest for r in self._resyncs.values()):
            await self._resync_done.park()

    def abandon_resyncs(self, reason: str) -> None:
        """The input ended: ``stale`` for every product still resyncing, and what was
        buffered for it is published rather than lost."""
        for product in list(self._resyncs):
            self._rest_wanted[product] = None
            self.give_up_rest(product, reason)

    def retry_rest(self, product: str, reason: str) -> None:
        """A REST fetch failed; the runtime retries after its backoff. Says so on the stream."""
        if product not in self._resyncs:
            return
        self._status(product, "stale", f"resync failed, retrying: {reason}", time.time_ns())
        self._flush()
        self._rest_wanted[product] = None
        self._rest_lot.unpark_all()

    def give_up_rest(self, product: str, reason: str) -> None:
        """No REST book can be had (a replay without a recorded one): say so with ``stale``,
        then let the buffered and later frames through. Trades and tickers stay exact; the
        book is incomplete until the next snapshot, which the stale status announces."""
        resync = self._resyncs.pop(product, None)
        if resync is None:
            return
        self._resync_done.unpark_all()
        self._rest_wanted.pop(product, None)
        self.tracker.forget(product)
        self._status(product, "stale", f"no REST book: {reason}", time.time_ns())
        for item in resync.buffered:
            self._emit(product, item.events)
        self._flush()

    def on_rest_book(self, product: str, snapshot: BookSnapshot) -> None:
        """The REST book for ``product`` arrived: publish it and the buffered frames."""
        resync = self._resyncs.get(product)
        if resync is None or not resync.rest:
            return  # completed meanwhile by a snapshot frame
        if self.shift is not None:
            snapshot = self.shift.book(snapshot)
        ts = snapshot.book.ts_ingest
        self._finish_resync(product, f"rest book at {snapshot.src_seq}", ts)
        book = attrs.evolve(snapshot.book, src_seq=snapshot.src_seq)
        self._emit(product, (book,), msg_id=False)
        per_product = self.keyed
        chain = self.plugin.sequence_model is SequenceModel.UPDATE_ID_CHAIN
        if per_product:
            self.tracker.set(product, snapshot.src_seq)
        self._checked_book_reset(product, book)
        pending = resync.buffered
        for index, item in enumerate(pending):
            verdict = SeqVerdict.OK
            if per_product:
                for mark in item.marks:
                    found = self.tracker.check(mark)
                    if found is not SeqVerdict.OK:
                        verdict = found
                        if found is SeqVerdict.GAP:
                            break
            if verdict is SeqVerdict.GAP:
                # The book is older than the buffer's start: fetch again, keep the rest.
                self.stats.gaps += 1
                self.metrics.gap(product)
                self._start_resync(product, "gap", "rest book older than live stream", ts)
                self._resyncs[product].buffered.extend(pending[index:])
                break
            if verdict is SeqVerdict.DUPLICATE:
                self.stats.duplicates += len(item.events)
                self.metrics.duplicates(product, len(item.events))
                continue
            # A chain's marks alone decide (its trades number in another space).
            fresh = tuple(
                e for e in item.events if chain or e.src_seq is None or e.src_seq > snapshot.src_seq
            )
            if fresh:
                self._emit(product, fresh)
                self._verify_checksums(product, fresh, item.checksums, ts)
        self._flush()

    def _finish_resync(self, product: str, reason: str, ts: int) -> None:
        resync = self._resyncs.pop(product)
        self._resync_done.unpark_all()
        self._rest_wanted.pop(product, None)
        self.stats.resyncs += 1
        self.metrics.resync(product)
        self.metrics.stale_seconds(product, time.monotonic() - resync.since)
        self._status(product, "resync", reason, ts)

    # -- output ---------------------------------------------------------------------------

    def _status(self, product: str, kind: StatusKind, reason: str, ts: int) -> None:
        event = Status(product=product, ts_event=ts, ts_ingest=ts, status=kind, reason=reason)
        self._emit(product, (event,), msg_id=False)

    def _emit(self, product: str, events: Iterable[Event], *, msg_id: bool = True) -> None:
        batch = tuple(events)
        ident = None
        if msg_id:
            seqs = [e.src_seq for e in batch if e.src_seq is not None]
            if seqs:
                # The event types are part of the id: Coinbase sends a ``match`` and its
                # ``ticker`` with the same sequence number, and the bus would otherwise
                # swallow the second as a duplicate publish.
                kinds = "+".join(sorted({e.TYPE for e in batch}))
                ident = f"{self.msg_id_prefix}{ticks_msg_id(product, max(seqs))}:{kinds}"
        subject = ticks_subject(product, self.shards)
        data = codec.encode_many(batch)
        if len(data) <= self.max_message_bytes:
            self._out.append(OutMsg(subject=subject, data=data, msg_id=ident))
        else:
            payloads = self._split(product, batch)
            self.stats.split_messages += 1
            self.metrics.split(product)
            count = len(payloads)
            # Split messages always carry an id, so a retried part is deduplicated by the
            # server (a doubled part would break the consumer's collection): without an
            # exchange sequence, the frame's receipt time (ns) names them.
            base = ident or f"{self.msg_id_prefix}{product}:t{batch[0].ts_ingest}"
            for index, payload in enumerate(payloads):
                self._out.append(
                    OutMsg(subject=subject, data=payload, msg_id=f"{base}:{index}/{count}")
                )
        self._out_products.add(product)

    def _split(self, product: str, batch: Sequence[Event]) -> list[bytes]:
        """``batch`` as JSON arrays of at most :attr:`max_message_bytes` each, in order: a
        book snapshot too large alone is split into parts, one per array. What cannot be
        made to fit (a single level or event larger than the limit) stays one oversized
        array: the bus refuses it and :meth:`on_publish_refused` reports it."""
        limit = self.max_message_bytes
        out: list[bytes] = []
        chunk: list[bytes] = []
        used = 2  # the brackets
        for event in batch:
            data = codec.encode(event)
            if len(data) + 2 > limit and isinstance(event, Book) and event.snapshot:
                try:
                    parts = split_book(event, limit - 2)
                except PartTooLarge as exc:
                    log.error(
                        "ingest.split_failed", feed=self.feed, product=product, error=str(exc)
                    )
                    parts = [event]
                if chunk:
                    out.append(b"[" + b",".join(chunk) + b"]")
                    chunk, used = [], 2
                out.extend(b"[" + codec.encode(part) + b"]" for part in parts)
                continue
            if chunk and used + len(data) + 1 > limit:
                out.append(b"[" + b",".join(chunk) + b"]")
                chunk, used = [], 2
            chunk.append(data)
            used += len(data) + 1
        if chunk:
            out.append(b"[" + b",".join(chunk) + b"]")
        return out

    def _dlq(self, error: DecodeError, ts_ingest: int) -> None:
        self.stats.decode_errors += 1
        self.metrics.decode_error(error.product)
        body = {
            "reason": error.reason,
            "detail": error.detail,
            "raw": error.raw.decode("utf-8", errors="replace"),
            "feed": self.feed,
            "ts_ingest": ts_ingest,
        }
        self._out.append(OutMsg(subject=dlq_subject(error.product), data=orjson.dumps(body)))

    def _flush(self) -> None:
        if not self._out:
            return
        frame = QueuedFrame(frozenset(self._out_products), tuple(self._out))
        self._out = []
        self._out_products = set()
        if not self.queue.put(frame):
            self._overflow(frame)
        self.metrics.buffer_depth.set(len(self.queue))

    def _overflow(self, frame: QueuedFrame) -> None:
        dropped = [*self.queue.clear(), frame]
        counts: dict[str, int] = {}
        for item in dropped:
            for product in item.products:
                counts[product] = counts.get(product, 0) + 1
        self.stats.overflow_dropped += len(dropped)
        ts = time.time_ns()
        for product, count in counts.items():
            self.metrics.dropped(product, count)
            self._start_resync(product, "stale", f"publish buffer full: {count} frames dropped", ts)
        frame = QueuedFrame(frozenset(self._out_products), tuple(self._out))
        self._out = []
        self._out_products = set()
        # The queue was just emptied, so the stale statuses always fit.
        self.queue.put(frame)

    def on_publish_refused(self, msg: OutMsg, error: PublishRefused) -> None:
        """The bus refused ``msg`` for good: never retried. It goes to the DLQ
        (``publish_refused``, with the bus's reason, subject and size; its payload cut to
        :data:`DLQ_RAW_MAX_BYTES` or a quarter of the message limit), counted and logged.
        Its product gets a ``gap`` status, and a resync when the message held book data,
        so no book is left silently broken. A refused DLQ entry is only counted and
        logged (no DLQ of the DLQ)."""
        self.stats.publish_refused += 1
        try:
            events = codec.decode_many(msg.data)
        except codec.CodecError:
            events = []
        products = sorted({e.product for e in events})
        product = products[0] if len(products) == 1 else None
        self.metrics.publish_refused(product, error.reason)
        log.error(
            "ingest.publish_refused",
            feed=self.feed,
            subject=msg.subject,
            product=product,
            reason=error.reason,
            size=error.size,
            detail=error.detail,
        )
        if msg.subject.startswith("lf.dlq."):
            return
        ts = time.time_ns()
        # JSON escaping can double a JSON payload (every quote): a quarter of the limit
        # keeps the entry itself publishable.
        keep = min(DLQ_RAW_MAX_BYTES, self.max_message_bytes // 4)
        body = {
            "reason": "publish_refused",
            "detail": f"{error.reason}: {error.detail}",
            "refusal": error.reason,
            "subject": msg.subject,
            "size": error.size,
            "msg_id": msg.msg_id,
            "raw": msg.data[:keep].decode("utf-8", errors="replace"),
            "raw_truncated": len(msg.data) > keep,
            "feed": self.feed,
            "ts_ingest": ts,
        }
        self._out.append(OutMsg(subject=dlq_subject(product), data=orjson.dumps(body)))
        for name in products:
            lost = [e for e in events if e.product == name]
            reason = f"publish refused ({error.reason}): {len(lost)} events lost"
            if any(isinstance(e, Book) for e in lost):
                self._start_resync(name, "gap", reason, ts)
            else:
                self._status(name, "gap", reason, ts)
        self._flush()

    def on_publish_rejected(self, products: Iterable[str], reason: str) -> None:
        """The bus refused messages for good (not a retryable failure): resync them."""
        ts = time.time_ns()
        for product in products:
            self._start_resync(product, "stale", f"publish rejected: {reason}", ts)
        self._flush()


def _overlap_key(event: Event) -> Event:
    """The same event from either socket differs only in its receipt time (and, for events
    stamped at receipt, such as Binance's bookTicker, in ``ts_event``)."""
    if event.ts_event == event.ts_ingest:
        return attrs.evolve(event, ts_ingest=0, ts_event=0)
    return attrs.evolve(event, ts_ingest=0)


def gaps_detectable(plugin: FeedPlugin, subscription: Subscription) -> bool:
    """Whether a jump in the plugin's sequence numbers means lost messages for this
    subscription. A plugin may answer with an optional ``gaps_detectable(subscription)``
    method (Coinbase Exchange: only with the ``full`` channel); default yes."""
    answer = getattr(plugin, "gaps_detectable", None)
    return bool(answer(subscription)) if callable(answer) else True


def _group(events: Iterable[Event]) -> dict[str, tuple[Event, ...]]:
    grouped: dict[str, list[Event]] = {}
    for event in events:
        grouped.setdefault(event.product, []).append(event)
    return {product: tuple(items) for product, items in grouped.items()}


def _group_checksums(checks: Iterable[BookChecksum]) -> dict[str, tuple[BookChecksum, ...]]:
    grouped: dict[str, list[BookChecksum]] = {}
    for check in checks:
        grouped.setdefault(check.product, []).append(check)
    return {product: tuple(items) for product, items in grouped.items()}


def _group_marks(marks: Iterable[SeqMark]) -> dict[str, tuple[SeqMark, ...]]:
    grouped: dict[str, list[SeqMark]] = {}
    for mark in marks:
        if mark.key is not None:
            grouped.setdefault(mark.key, []).append(mark)
    return {product: tuple(items) for product, items in grouped.items()}
