"""The ingestor runtime shared by every feed plugin (docs/architecture.md, docs/plugins.md).

Shape of a running feed (one nursery, owned by :func:`run_session`)::

    frame source ──frame+ts_ingest──► FeedSession ──► PublishQueue ──► publish loop ──► bus
    (WebSocket or recording)            │    ▲
                                        ▼    │ REST book
                                     resync loop (token bucket, backoff)

The frame source runs in the caller's task; the publish and resync loops are children of
the session nursery. Nothing outlives :func:`run_session`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import structlog
import trio
from trio_websocket import (
    ConnectionClosed,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
)

from ledgerflux.bus import (
    DEFAULT_MAX_PAYLOAD,
    BusError,
    OutMsg,
    PubAck,
    Publisher,
    PublishFailed,
    PublishRefused,
)
from ledgerflux.config import IngestConfig
from ledgerflux.errors import LedgerfluxError
from ledgerflux.feeds.backoff import Backoff, TokenBucket
from ledgerflux.feeds.metrics import FeedMetrics
from ledgerflux.feeds.session import (
    HEADER_HEADROOM_BYTES,
    FeedSession,
    PublishQueue,
    QueuedFrame,
)
from ledgerflux.plugin import (
    Credentials,
    FeedPlugin,
    Instrument,
    PluginOptions,
    RestRequest,
    SequenceModel,
    Subscription,
)
from ledgerflux.resync import RequestBus, serve_resync_requests
from ledgerflux.websocket import open_websocket_url

if TYPE_CHECKING:
    # Imported by run_feed only: the replay feed needs no HTTP client (and httpx pulls in
    # its CLI's dependencies when they are installed), so a replay ingestor starts faster.
    import httpx

__all__ = [
    "DRAIN_TIMEOUT_S",
    "MAX_MESSAGE_BYTES",
    "BookFetcher",
    "BookUnavailable",
    "FrameSource",
    "HttpBookFetcher",
    "MissingCredentials",
    "WebSocketSource",
    "credentials_for",
    "credentials_from_env",
    "discover_instruments",
    "message_limit",
    "rebase_url",
    "run_feed",
    "run_session",
    "subscription_for",
]

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest WebSocket message accepted: a full-depth book snapshot of a busy product is
several MB, and trio-websocket's 1 MiB default would close the connection on it."""
DRAIN_TIMEOUT_S = 5.0
"""Bound on the shielded final publish when the feed is cancelled."""
CONNECT_TIMEOUT_S = 10.0
END_RESYNC_TIMEOUT_S = 10.0
"""How long a finished input (a recording) waits for its REST resyncs."""
REST_TIMEOUT_S = 10.0
RATE_LIMITED_DEFAULT_S = 60.0
"""Wait after a 429/418 answer without a ``Retry-After`` header."""
HANDOVER_OVERLAP_S = 2.0
"""A planned reconnect reads both connections for this long after the successor's first
frame, so everything the old one had in flight arrives before it is closed."""
HANDOVER_RETRY_S = 60.0
"""A successor that could not be opened is tried again after this long."""
CHECKSUM_HOLD_POLL_S = 1.0
PUBLISH_RETRY_INITIAL_S = 0.05
PUBLISH_RETRY_MAX_S = 2.0


class BookUnavailable(LedgerfluxError):
    """No REST book can be had for this request (not worth retrying)."""


class MissingCredentials(LedgerfluxError):
    """Channels that need authentication were asked for without credentials."""


class FrameSource(Protocol):
    """Where frames come from: a live WebSocket or a recording."""

    async def run(self, session: FeedSession, task_status: trio.TaskStatus[None]) -> None:
        """Hand frames to ``session.on_frame`` with their receipt time. Call
        ``task_status.started()`` once subscribed. Live sources run until cancelled;
        recordings return at their end."""
        ...


class BookFetcher(Protocol):
    async def fetch(self, request: RestRequest) -> bytes:
        """The body of the REST reply. Raises :class:`BookUnavailable` when retrying is
        pointless, any other exception when it may succeed later."""
        ...


# -- publishing -----------------------------------------------------------------------------


def message_limit(publisher: Publisher) -> int:
    """The largest payload the session may put in one message: the bus's ``max_payload``
    (a publisher without one, such as a test fake, gets nats-server's default) minus the
    room its headers need."""
    max_payload = getattr(publisher, "max_payload", None)
    if not isinstance(max_payload, int) or max_payload <= 0:
        max_payload = DEFAULT_MAX_PAYLOAD
    return max_payload - HEADER_HEADROOM_BYTES


class _PublishLoop:
    """Takes batches of up to ``batch`` frames from the queue: one ``publish_batch`` call per
    batch. Retryable failures (``PublishFailed``) are retried with backoff and the same
    message ids, so the server deduplicates what it had already stored; while that lasts the
    queue fills and its overflow policy applies. A message refused for good
    (``PublishRefused``: too large, no stream...) is never retried: the session sends it to
    the DLQ and the frames behind it go on. Unacked messages are kept in ``inflight`` so
    that the drain can publish them again."""

    def __init__(
        self, session: FeedSession, publisher: Publisher, batch: int, metrics: FeedMetrics
    ) -> None:
        self.session = session
        self.publisher = publisher
        self.batch = max(1, batch)
        self.metrics = metrics
        self.inflight: list[tuple[frozenset[str], OutMsg]] = []
        self.published = 0
        self._idle = trio.lowlevel.ParkingLot()

    async def run(self) -> None:
        """Runs until cancelled; the unacked batch stays in :attr:`inflight`."""
        queue = self.session.queue
        while True:
            frames = await queue.get_batch(self.batch)
            # Read per batch: after a reconnect the server may allow another size.
            self.session.max_message_bytes = message_limit(self.publisher)
            self._stage(frames)
            self.metrics.buffer_depth.set(len(queue))
            await self._publish_inflight()
            self._idle.unpark_all()

    def _stage(self, frames: Sequence[QueuedFrame]) -> None:
        self.inflight.extend((f.products, m) for f in frames for m in f.msgs)

    async def _publish_inflight(self, *, retry: bool = True) -> None:
        backoff = Backoff(PUBLISH_RETRY_INITIAL_S, PUBLISH_RETRY_MAX_S)
        while self.inflight:
            msgs = [msg for _, msg in self.inflight]
            try:
                results: Sequence[PubAck | BusError] = await self.publisher.publish_batch(msgs)
            except BusError as exc:
                results = [exc] * len(msgs)
            failed: list[tuple[frozenset[str], OutMsg]] = []
            rejected: dict[str, str] = {}
            refused: list[tuple[OutMsg, PublishRefused]] = []
            for item, result in zip(self.inflight, results, strict=False):
                if isinstance(result, PubAck):
                    self.published += 1
                elif isinstance(result, PublishRefused):
                    refused.append((item[1], result))
                elif isinstance(result, PublishFailed):
                    failed.append(item)
                else:
                    log.error("ingest.publish_rejected", subject=item[1].subject, error=str(result))
                    rejected.update(dict.fromkeys(item[0], str(result)))
            # A publisher that answers fewer results than messages: retry the rest.
            failed.extend(self.inflight[len(results) :])
            self.inflight = failed
            for msg, error in refused:
                self.session.on_publish_refused(msg, error)
            for product, reason in rejected.items():
                self.session.on_publish_rejected((product,), reason)
            if self.inflight:
                if not retry:
                    return
                await trio.sleep(backoff.next_delay())

    async def wait_idle(self) -> None:
        """Wait until the queue is empty and everything taken from it is acked."""
        while len(self.session.queue) or self.inflight:
            await self._idle.park()

    async def drain(self) -> None:
        """Publish what is left (unacked first), retrying until the caller's deadline."""
        self._stage(self.session.queue.take(len(self.session.queue)))
        await self._publish_inflight()


# -- resync ---------------------------------------------------------------------------------


async def _resync_loop(
    session: FeedSession,
    fetcher: BookFetcher,
    *,
    rate_per_s: float,
    backoff: Backoff,
) -> None:
    """Fetch REST books for products the session asks for, one at a time, rate limited.
    Runs until cancelled; a fetch cancelled halfway leaves the product resyncing."""
    plugin = session.plugin
    options = session.options
    bucket = TokenBucket(rate_per_s) if math.isfinite(rate_per_s) and rate_per_s > 0 else None
    weights = _weight_bucket(options)
    while True:
        product = await session.next_rest_resync()
        symbol = session.symbols.get(product, product.partition(":")[2])
        request = plugin.book_request(symbol)
        if request is None:
            session.give_up_rest(product, "plugin has no REST book")
            continue
        if bucket is not None:
            await bucket.acquire()
        if weights is not None and options.rest_weight is not None:
            await weights.acquire(options.rest_weight(request))
        try:
            body = await fetcher.fetch(request)
            snapshot = plugin.parse_book(symbol, body, time.time_ns())
        except BookUnavailable as exc:
            session.give_up_rest(product, str(exc))
            continue
        except _retryable_fetch_errors() as exc:
            code = _http_status(exc)
            if code in (418, 429):
                # The exchange's rate limit (418: banned for a while): wait as told.
                wait = _retry_after(_retry_after_header(exc))
                log.warning("ingest.rest_rate_limited", product=product, status=code, wait_s=wait)
                session.retry_rest(product, f"rate_limited: HTTP {code}, retry after {wait:.0f}s")
                await trio.sleep(wait)
                continue
            log.warning(
                "ingest.rest_book_failed", product=product, error=str(exc) or type(exc).__name__
            )
            session.retry_rest(product, str(exc) or type(exc).__name__)
            await trio.sleep(backoff.next_delay())
            continue
        backoff.reset()
        session.on_rest_book(product, snapshot)


def _weight_bucket(options: PluginOptions) -> TokenBucket | None:
    """Weighted REST budget (``rest_weight_per_minute``), bursts up to a quarter minute."""
    per_minute = options.rest_weight_per_minute
    if per_minute is None or options.rest_weight is None:
        return None
    return TokenBucket(per_minute / 60.0, burst=per_minute / 4.0)


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else RATE_LIMITED_DEFAULT_S
    except ValueError:
        seconds = RATE_LIMITED_DEFAULT_S
    return seconds if math.isfinite(seconds) and seconds > 0 else RATE_LIMITED_DEFAULT_S


async def _release_checksum_holds(session: FeedSession) -> None:
    """Ends checksum back-offs on time (the session itself has no timer)."""
    while True:
        await trio.sleep(CHECKSUM_HOLD_POLL_S)
        session.release_checksum_holds()


async def discover_instruments(
    plugin: FeedPlugin, fetcher: BookFetcher
) -> tuple[Instrument, ...] | None:
    """The exchange's instruments (plugins with ``instruments_request``), handed to the
    plugin's ``use_instruments``; None when the plugin has none or the request failed
    (logged: the plugin's own symbol mapping then applies)."""
    options = PluginOptions.of(plugin)
    if options.instruments_request is None or options.parse_instruments is None:
        return None
    request = options.instruments_request()
    if request is None:
        return None
    failures: tuple[type[Exception], ...] = (*_retryable_fetch_errors(), BookUnavailable)
    try:
        body = await fetcher.fetch(request)
        instruments = tuple(options.parse_instruments(body))
    except failures as exc:
        log.warning("ingest.instruments_failed", feed=plugin.name, error=str(exc))
        return None
    if options.use_instruments is not None:
        options.use_instruments(instruments)
    return instruments


def check_symbols(
    subscription: Subscription, instruments: Sequence[Instrument]
) -> tuple[Subscription, dict[str, str]]:
    """The subscription without symbols the exchange does not list or does not trade,
    and why each was left out (``unknown_symbol`` / ``not_trading: <status>``)."""
    by_symbol = {i.symbol: i for i in instruments}
    keep: list[str] = []
    left_out: dict[str, str] = {}
    for symbol in subscription.symbols:
        found = by_symbol.get(symbol)
        if found is None:
            left_out[symbol] = "unknown_symbol: not among the exchange's instruments"
        elif not found.trading:
            left_out[symbol] = f"not_trading: {found.status}"
        else:
            keep.append(symbol)
    return Subscription(symbols=tuple(keep), channels=subscription.channels), left_out


def _retryable_fetch_errors() -> tuple[type[Exception], ...]:
    """Errors of a REST fetch worth a retry: httpx's only when it is loaded (a live feed)."""
    httpx = sys.modules.get("httpx")
    errors: tuple[type[Exception], ...] = (ValueError, OSError)
    return errors if httpx is None else (httpx.HTTPError, *errors)


def _http_status(exc: Exception) -> int | None:
    """The HTTP status of an httpx status error, else None."""
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.HTTPStatusError):
        return int(exc.response.status_code)
    return None


def _retry_after_header(exc: Any) -> str | None:
    value = exc.response.headers.get("Retry-After")
    return value if isinstance(value, str) else None


class HttpBookFetcher:
    """REST books over httpx (which runs on Trio through anyio)."""

    def __init__(
        self, client: httpx.AsyncClient, *, default_base: str | None, base: str | None
    ) -> None:
        self.client = client
        self.default_base = default_base
        self.base = base

    def url_for(self, request: RestRequest) -> str:
        return rebase_url(request.url, self.default_base, self.base)

    async def fetch(self, request: RestRequest) -> bytes:
        response = await self.client.get(
            self.url_for(request),
            params=dict(request.params),
            headers=dict(request.headers),
            timeout=REST_TIMEOUT_S,
        )
        response.raise_for_status()
        return response.content


def rebase_url(url: str, default_base: str | None, base: str | None) -> str:
    """``url`` with the plugin's default REST base swapped for the configured one."""
    if base is None or default_base is None:
        return url
    if url.startswith(default_base):
        return base.rstrip("/") + "/" + url[len(default_base) :].lstrip("/")
    # Different spelling of the same host: keep path and query, take scheme and host.
    parts, new = urlsplit(url), urlsplit(base)
    return urlunsplit((new.scheme, new.netloc, parts.path, parts.query, parts.fragment))


# -- the shared driver ----------------------------------------------------------------------


async def run_session(
    session: FeedSession,
    source: FrameSource,
    publisher: Publisher,
    *,
    fetcher: BookFetcher | None,
    settings: IngestConfig,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
    rest_rate_limit_per_s: float | None = None,
    requests: RequestBus | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``source`` into ``session`` and ``session`` into ``publisher`` until the source
    ends (a recording) or the caller cancels (a live feed).

    With ``requests`` (the bus) the session also answers resync requests for its
    products (:func:`ledgerflux.resync.serve_resync_requests`), subscribed before the
    source starts.

    On cancellation: the source stops reading first; then ``offline`` is queued for every
    product, and everything already decoded (the unacked batch, then the queue) is published
    inside a shielded ``move_on_after(drain_timeout_s)``. What the bus has not acked by then
    is logged as lost. When the source ends by itself, pending REST resyncs get up to
    ``END_RESYNC_TIMEOUT_S`` to finish, what is still buffered is published after a
    ``stale`` status, and the queue is flushed before return.

    ``rest_rate_limit_per_s`` overrides the plugin's (replay answers from the file).
    """
    session.max_message_bytes = message_limit(publisher)
    loop = _PublishLoop(session, publisher, settings.publish_batch, session.metrics)
    backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loop.run)
            if requests is not None:
                await nursery.start(serve_resync_requests, requests, session)
            if session.options.book_checksum is not None:
                nursery.start_soon(_release_checksum_holds, session)
            if fetcher is not None:
                nursery.start_soon(
                    lambda: _resync_loop(
                        session,
                        fetcher,
                        rate_per_s=session.plugin.rest_rate_limit_per_s
                        if rest_rate_limit_per_s is None
                        else rest_rate_limit_per_s,
                        backoff=backoff,
                    )
                )
            await source.run(session, task_status)
            with trio.move_on_after(END_RESYNC_TIMEOUT_S):
                await session.wait_rest_resyncs()
            session.abandon_resyncs("input ended")
            await loop.wait_idle()
            nursery.cancel_scope.cancel()
    finally:
        session.on_disconnect("feed stopped")
        with trio.move_on_after(drain_timeout_s) as scope:
            scope.shield = True
            await loop.drain()
        if loop.inflight or len(session.queue):
            log.error(
                "ingest.unacked_at_shutdown",
                feed=session.feed,
                messages=len(loop.inflight) + sum(len(f.msgs) for f in session.queue.clear()),
            )


# -- the live WebSocket source --------------------------------------------------------------


class WebSocketSource:
    """One supervision loop: connect, subscribe within the plugin's deadline, read with a
    staleness watchdog (``fail_after(stale_after_s)`` around each receive), and on any loss
    reconnect after capped, jittered backoff, resubscribing exactly the same set."""

    def __init__(
        self,
        plugin: FeedPlugin,
        subscription: Subscription,
        *,
        endpoint: str,
        credentials: Credentials | None,
        backoff: Backoff,
    ) -> None:
        self.plugin = plugin
        self.subscription = subscription
        self.endpoint = endpoint
        self.credentials = credentials
        self.backoff = backoff
        self.connections = 0

    async def run(self, session: FeedSession, task_status: trio.TaskStatus[None]) -> None:
        """Runs until cancelled. Cancellation closes the current connection."""
        ready: list[trio.TaskStatus[None]] = [task_status]
        while True:
            up_since = trio.current_time()
            reason = await self._connection(session, ready)
            session.on_disconnect(reason)
            delay = self.backoff.next_delay(trio.current_time() - up_since)
            log.info(
                "ingest.reconnecting", feed=session.feed, reason=reason, delay_s=round(delay, 3)
            )
            await trio.sleep(delay)

    async def _connection(self, session: FeedSession, ready: list[trio.TaskStatus[None]]) -> str:
        """One connection, from connect to loss; returns why it ended.

        Each socket lives in its own task (:meth:`_socket`), which hands its frames over a
        small channel. With the plugin's ``max_connection_s`` a connection is replaced
        before that age by a successor opened alongside it (:meth:`_handover`), so one
        call can span several sockets. Cancellation closes them all."""
        self.connections += 1
        try:
            with trio.CancelScope() as scope:
                session.connection_scope = scope
                async with trio.open_nursery() as nursery:
                    link: _Link = await nursery.start(self._socket, session.on_connect)
                    if link.failed is not None:
                        nursery.cancel_scope.cancel()
                        return link.failed
                    options = session.options
                    current = [link]
                    if options.ping_interval_s and options.ping_message is not None:
                        nursery.start_soon(
                            _ping, current, options.ping_interval_s, options.ping_message
                        )
                    if options.resubscribe_messages is not None:
                        nursery.start_soon(_send_outgoing, current, session)
                    reason = await self._read(session, ready, current, nursery)
                    nursery.cancel_scope.cancel()
                    if reason is not None:
                        return reason
            return session.reconnect_reason or "reconnect requested"
        finally:
            session.connection_scope = None

    async def _socket(
        self,
        on_open: Callable[[], None] | None,
        task_status: trio.TaskStatus[_Link],
    ) -> None:
        """Open, subscribe, report the :class:`_Link`, then receive into it until the
        socket is lost (``link.failed`` says why) or this task is cancelled."""
        send, receive = trio.open_memory_channel[tuple[bytes | str, int]](LINK_BUFFER_FRAMES)
        link = _Link(receive, trio.CancelScope())
        started = False
        try:
            with link.scope:
                await self._serve_socket(link, send, on_open, task_status)
                started = True
        except (ConnectionClosed, HandshakeError, DisconnectionTimeout) as exc:
            link.failed = f"connection lost: {exc!r}"
        except (OSError, trio.BrokenResourceError) as exc:
            link.failed = f"connection failed: {exc!r}"
        send.close()
        if not started and link.ws is None and link.failed is not None:
            task_status.started(link)

    async def _serve_socket(
        self,
        link: _Link,
        send: trio.MemorySendChannel[tuple[bytes | str, int]],
        on_open: Callable[[], None] | None,
        task_status: trio.TaskStatus[_Link],
    ) -> None:
        async with open_websocket_url(
            self.endpoint, max_message_size=MAX_MESSAGE_BYTES, connect_timeout=CONNECT_TIMEOUT_S
        ) as ws:
            if on_open is not None:
                on_open()
            if not await self._subscribe(ws):
                link.failed = "subscribe deadline passed"
                link.ws = ws
                task_status.started(link)
                return
            link.ws = ws
            task_status.started(link)
            # ``send`` is closed by the caller, once ``link.failed`` says why.
            while True:
                message = await ws.get_message()
                await send.send((message, time.time_ns()))

    async def _subscribe(self, ws: WebSocketConnection) -> bool:
        messages = self.plugin.subscribe_messages(self.subscription, self.credentials, time.time())
        try:
            with trio.fail_after(self.plugin.subscribe_deadline_s):
                for text in messages:
                    await ws.send_message(text)
        except trio.TooSlowError:
            return False
        return True

    async def _read(
        self,
        session: FeedSession,
        ready: list[trio.TaskStatus[None]],
        current: list[_Link],
        nursery: trio.Nursery,
    ) -> str | None:
        """Frames into the session until staleness or loss (returns why) or a cancelled
        connection scope (returns None). Planned reconnects happen in here."""
        plugin = self.plugin
        lifetime = session.options.max_connection_s
        deadline = math.inf if lifetime is None else trio.current_time() + lifetime
        while True:
            if trio.current_time() >= deadline:
                if plugin.sequence_model is SequenceModel.PER_CONNECTION:
                    # A successor's counter starts again: no overlap can be matched up.
                    return "connection lifetime limit: planned reconnect"
                successor = await self._handover(session, current[0], nursery)
                assert lifetime is not None
                if successor is not None:
                    current[0] = successor
                deadline = trio.current_time() + (
                    lifetime if successor is not None else HANDOVER_RETRY_S
                )
                continue
            link = current[0]
            with trio.move_on_at(deadline):
                try:
                    with trio.fail_after(plugin.stale_after_s):
                        raw, ts = await link.frames.receive()
                except trio.TooSlowError:
                    reason = f"stale: no frame for {plugin.stale_after_s}s"
                    session.mark_stale(reason)
                    return reason
                except trio.EndOfChannel:
                    return link.failed or "connection closed"
                session.on_frame(raw, ts)
                if session.subscribed and ready:
                    ready.pop().started()

    async def _handover(
        self, session: FeedSession, old: _Link, nursery: trio.Nursery
    ) -> _Link | None:
        """Planned reconnect without loss: open and subscribe a successor while the old
        connection is still read; once the successor has delivered its first frame, keep
        reading both for :data:`HANDOVER_OVERLAP_S`, then close the old one and go on with
        the successor. Its frames repeating what the old one delivered are dropped by the
        sequence tracker and the session's handover memory. Returns None (the old
        connection goes on) when the successor cannot be opened or sends nothing."""
        log.info("ingest.planned_reconnect", feed=session.feed)
        decoder = session.begin_handover()
        successor: _Link = await nursery.start(self._socket, None)
        if successor.failed is not None:
            log.warning("ingest.successor_failed", feed=session.feed, error=successor.failed)
            session.end_handover(session.decoder)
            return None
        pending: list[tuple[bytes | str, int]] = []
        first = trio.Event()
        old_done = trio.Event()

        async def read_successor() -> None:
            async for item in successor.frames:
                pending.append(item)
                first.set()
                if len(pending) >= session.max_buffer_frames:
                    break
            first.set()

        async def read_old() -> None:
            async for raw, ts in old.frames:
                session.on_frame(raw, ts)
            old_done.set()

        async with trio.open_nursery() as both:
            both.start_soon(read_successor)
            both.start_soon(read_old)
            with trio.move_on_after(self.plugin.stale_after_s) as waited:
                await first.wait()
            if not waited.cancelled_caught:
                with trio.move_on_after(HANDOVER_OVERLAP_S):
                    await old_done.wait()
            both.cancel_scope.cancel()
        if not pending:
            log.warning("ingest.successor_silent", feed=session.feed)
            successor.close()
            session.end_handover(session.decoder)
            return None
        old.close()
        self.connections += 1
        for raw, ts in pending:
            session.on_frame(raw, ts, decoder=decoder)
        session.end_handover(decoder)
        return successor


LINK_BUFFER_FRAMES = 256
"""Frames a socket task may receive ahead of the session (then it stops reading: TCP
backpressure, as before the task existed)."""


class _Link:
    """One open socket as the reader sees it: its frames and, once lost, why."""

    def __init__(
        self, frames: trio.MemoryReceiveChannel[tuple[bytes | str, int]], scope: trio.CancelScope
    ) -> None:
        self.frames = frames
        self.scope = scope
        self.ws: WebSocketConnection | None = None
        """Set once connected (the ping task sends on it)."""
        self.failed: str | None = None

    def close(self) -> None:
        """Stop reading it: its task is cancelled and closes the socket."""
        self.frames.close()
        self.scope.cancel()


async def _ping(current: list[_Link], interval_s: float, message: Callable[[float], str]) -> None:
    """Application-level ping every ``interval_s`` on the current socket (the exchange's
    reply is a frame like any other, which also keeps the staleness watchdog quiet)."""
    while True:
        await trio.sleep(interval_s)
        ws = current[0].ws
        if ws is None:
            continue
        try:
            await ws.send_message(message(time.time()))
        except (ConnectionClosed, trio.BrokenResourceError):
            continue  # the reader sees the loss and reconnects


async def _send_outgoing(current: list[_Link], session: FeedSession) -> None:
    """Sends what the session queues for the current connection (a product's resubscribe)."""
    while True:
        frames = await session.next_outgoing()
        ws = current[0].ws
        if ws is None:
            continue  # no socket now: the next connection subscribes everything anyway
        try:
            for text in frames:
                await ws.send_message(text)
        except (ConnectionClosed, trio.BrokenResourceError):
            continue  # the reader sees the loss; the new connection subscribes everything


# -- entry points ---------------------------------------------------------------------------


def credentials_from_env(feed: str, environ: dict[str, str] | None = None) -> Credentials:
    """``LEDGERFLUX_<FEED>_API_KEY`` / ``_API_SECRET`` / ``_API_PASSPHRASE``."""
    env = os.environ if environ is None else environ
    prefix = f"LEDGERFLUX_{feed.upper().replace('-', '_')}_"
    key, secret = env.get(prefix + "API_KEY"), env.get(prefix + "API_SECRET")
    if not key or not secret:
        raise MissingCredentials(
            f"feed {feed!r}: the channels asked for need credentials; set "
            f"{prefix}API_KEY and {prefix}API_SECRET (and {prefix}API_PASSPHRASE if the "
            "exchange uses one)"
        )
    return Credentials(key=key, secret=secret, passphrase=env.get(prefix + "API_PASSPHRASE", ""))


def subscription_for(plugin: FeedPlugin, ingest: IngestConfig) -> Subscription:
    """The configured symbols and channels (the plugin's defaults when none are set)."""
    return Subscription(
        symbols=tuple(ingest.symbols), channels=tuple(ingest.channels or plugin.default_channels)
    )


def credentials_for(
    plugin: FeedPlugin, feed: str, subscription: Subscription
) -> Credentials | None:
    """Credentials from the environment when a subscribed channel needs them, else None.
    Raises :class:`MissingCredentials` naming the variables to set."""
    if set(subscription.channels) & plugin.needs_credentials:
        return credentials_from_env(feed)
    return None


async def run_feed(
    plugin: FeedPlugin,
    subscription: Subscription,
    publisher: Publisher,
    *,
    settings: IngestConfig,
    shards: int,
    endpoint: str | None = None,
    rest_endpoint: str | None = None,
    credentials: Credentials | None = None,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
    requests: RequestBus | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one live feed until cancelled; ``task_status.started()`` once subscribed (the
    first subscriptions reply or data frame).

    On cancellation the websocket stops being read and is closed, then what was already
    decoded is published under a shielded, bounded deadline (see :func:`run_session`).
    """
    import httpx

    async with httpx.AsyncClient() as client:
        fetcher = HttpBookFetcher(client, default_base=plugin.rest_endpoint, base=rest_endpoint)
        left_out: dict[str, str] = {}
        instruments = await discover_instruments(plugin, fetcher)
        if instruments is not None:
            subscription, left_out = check_symbols(subscription, instruments)
        await _run_feed_session(
            plugin,
            subscription,
            publisher,
            fetcher,
            left_out,
            settings=settings,
            shards=shards,
            endpoint=endpoint,
            credentials=credentials,
            drain_timeout_s=drain_timeout_s,
            requests=requests,
            task_status=task_status,
        )


async def _run_feed_session(
    plugin: FeedPlugin,
    subscription: Subscription,
    publisher: Publisher,
    fetcher: BookFetcher,
    left_out: dict[str, str],
    *,
    settings: IngestConfig,
    shards: int,
    endpoint: str | None,
    credentials: Credentials | None,
    drain_timeout_s: float,
    requests: RequestBus | None,
    task_status: trio.TaskStatus[None],
) -> None:
    metrics = FeedMetrics(plugin.name)
    queue = PublishQueue(settings.max_buffer_frames)
    session = FeedSession(
        plugin,
        subscription,
        queue,
        feed=plugin.name,
        shards=shards,
        max_buffer_frames=settings.max_buffer_frames,
        metrics=metrics,
    )
    source = WebSocketSource(
        plugin,
        subscription,
        endpoint=endpoint or plugin.endpoint,
        credentials=credentials,
        backoff=Backoff(settings.backoff_initial_s, settings.backoff_max_s),
    )
    for symbol, reason in left_out.items():
        log.error("ingest.symbol_left_out", feed=plugin.name, symbol=symbol, reason=reason)
        session.report_unavailable(symbol, reason)
    await run_session(
        session,
        source,
        publisher,
        fetcher=fetcher,
        settings=settings,
        drain_timeout_s=drain_timeout_s,
        requests=requests,
        task_status=task_status,
    )
