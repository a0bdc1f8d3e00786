"""The NATS JetStream bus (DESIGN §3, §6).

nats-py is asyncio-only. It runs on **one** asyncio event loop in a dedicated thread, and
everything else in LedgerFlux (Trio) talks to it through :class:`_Bridge`:

* A call crosses **once per batch**, never once per message: :meth:`Bus.publish_batch`
  publishes a whole batch inside one asyncio task, :meth:`PullConsumer.fetch` returns a
  batch, :meth:`Bus.ordered` hands over lists of messages.
* The pull path is batch-shaped on the asyncio side too (:class:`_PullSession`): one
  persistent inbox subscription per consumer, one ``CONSUMER.MSG.NEXT`` request per fetch,
  the replies collected by a plain callback (no asyncio task per message, unlike nats-py's
  own ``fetch``), and ``ack`` as all ``+ACK`` publishes followed by one flush.
* Trio cancellation is propagated: the asyncio task is cancelled and the Trio side waits
  (shielded, bounded) until it has really finished, so no asyncio work outlives its caller.
* Backpressure both ways: Trio waits for the asyncio task of each crossing; the ordered
  consumer's pump blocks on a bounded Trio channel, so a slow Trio consumer stops the
  crossings, the subscription's queue is no longer drained, and JetStream flow control
  stops the server.

trio-asyncio is deliberately not used (3-5x slower and it patches asyncio process-wide).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeVar

import attrs
import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
import trio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg as NatsMsg
from nats.js import JetStreamContext, api
from nats.nuid import NUID
from prometheus_client import Counter, Histogram

from ledgerflux._slots import new_instance, slot_setter
from ledgerflux.config import NatsConfig
from ledgerflux.errors import LedgerfluxError
from ledgerflux.logging import describe_error
from ledgerflux.subjects import DLQ_STREAM, MD_STREAM, TICKS_STREAM

__all__ = [
    "Bus",
    "BusError",
    "BusUnavailable",
    "ConsumerConfigMismatch",
    "CoreMsg",
    "InMsg",
    "NoResponders",
    "OutMsg",
    "PubAck",
    "PublishFailed",
    "PublishFenced",
    "PublishRefused",
    "Publisher",
    "PullConsumer",
    "StreamConfigMismatch",
    "StreamReplicasUnavailable",
    "StreamState",
    "connect_budget_s",
    "open_bus",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")

PUBLISHES = Counter("ledgerflux_bus_publishes", "Messages acked by JetStream", ["stream"])
PUBLISH_FAILURES = Counter(
    "ledgerflux_bus_publish_failures", "Messages not acked (fenced or failed)", ["reason"]
)
RECONNECTS = Counter("ledgerflux_bus_reconnects", "NATS reconnections")
BUS_ERRORS = Counter("ledgerflux_bus_errors", "Errors reported by nats-py", ["kind"])
CROSSING_BATCH = Histogram(
    "ledgerflux_bus_crossing_batch_size",
    "Messages per Trio/asyncio crossing",
    ["op"],
    buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 4096),
)

DUPLICATE_WINDOW_S = 120.0
"""Nats-Msg-Id dedup window of every stream: a retried publish within it is a no-op."""
PUBLISH_RETRY_BUDGET_S = 10.0
"""How long a publish keeps retrying timeouts / no-responders before PublishFailed."""
PUBLISH_ATTEMPT_TIMEOUT_S = 2.0
CANCEL_GRACE_S = 5.0
"""Bound on waiting for a cancelled asyncio task to finish (it normally takes microseconds)."""
CLOSE_TIMEOUT_S = 5.0
CHECKPOINT_BUCKET = "LF_CHECKPOINTS"
"""JetStream object-store bucket holding daemon checkpoints (see :meth:`Bus.put_checkpoint`)."""
HANDOFF_BATCHES = 8
"""Batches an ordered consumer's asyncio side may hold while Trio is busy: enough to keep
nats-py delivering during a crossing, small enough to bound memory. A crossing takes all
of them at once. A full hand-off stalls nats-py's callback, which also delays the
JetStream flow-control replies and so idles the server: it should only fill up when the
Trio side really is slower."""
REQUEST_BUFFER = 256
"""Core NATS requests a :meth:`Bus.subscribe` hand-off holds while Trio is busy."""
ORDERED_IDLE_HEARTBEAT_S = 2.0
"""Ordered consumers are recreated after two missed heartbeats (e.g. server restart)."""

ACK_FLUSH_TIMEOUT_S = 2
"""Bound on the PING/PONG that ends an ack/nak crossing (an int: nats-py's flush takes one)."""
MIN_PULL_EXPIRES_S = 0.001
"""Shortest pull request lifetime sent to the server (a zero ``expires`` means "forever")."""

_ERR_WRONG_LAST_SEQUENCE = 10071
_ERR_SUBJECT_WRITE_IN_FLIGHT = 10164
"""``wrong last sequence`` without a number: not compared (see :func:`_pub_outcome`)."""
_ERR_STREAM_NAME_IN_USE = 10058
_ERR_NO_PEERS = 10005
_ERR_INSUFFICIENT_RESOURCES = 10023
_ERR_REPLICAS_NOT_CLUSTERED = 10074
_REPLICA_ERRORS = {
    _ERR_REPLICAS_NOT_CLUSTERED: "the server is not clustered",
    _ERR_NO_PEERS: "the cluster has too few JetStream servers for them",
    _ERR_INSUFFICIENT_RESOURCES: "the cluster lacks the resources for them",
}
"""JetStream's refusals of a stream's replica count, as an operator reads them."""
_HDR_MSG_ID = "Nats-Msg-Id"
_USERINFO = re.compile(r"//[^/@,]*@")
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_HDR_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default ``max_payload``; the real value comes from the server's INFO."""


# --------------------------------------------------------------------------- data types


@attrs.frozen
class OutMsg:
    subject: str
    data: bytes
    msg_id: str | None = None
    """Sent as ``Nats-Msg-Id``: the server drops a duplicate within the dedup window."""
    expected_last_subject_seq: int | None = None
    """Sent as ``Nats-Expected-Last-Subject-Sequence``: fences a single writer per subject."""
    headers: Mapping[str, str] | None = None
    """Extra headers stored with the message (e.g. the normalizer's input position)."""


@attrs.frozen
class InMsg:
    subject: str
    data: bytes
    stream_seq: int
    headers: Mapping[str, str]
    num_delivered: int = 1
    _raw: NatsMsg | None = attrs.field(default=None, eq=False, repr=False, alias="raw")
    """The nats-py message, kept to ack/nak it; None for messages read by direct get."""

    @property
    def num_pending(self) -> int | None:
        """Messages the consumer still had to deliver after this one (JetStream delivery
        metadata; None for a direct get). Parsed on demand: ask once per batch."""
        if self._raw is None or not self._raw.reply:
            return None
        try:
            return int(self._raw.metadata.num_pending)
        except (nats.errors.Error, ValueError, IndexError, TypeError):
            return None


@attrs.frozen
class CoreMsg:
    """A core NATS message (control traffic such as resync requests, not JetStream)."""

    subject: str
    data: bytes
    reply: str = ""
    """Where the answer goes ("" when the sender expects none); see :meth:`Bus.respond`."""


@attrs.frozen
class PubAck:
    stream: str
    seq: int
    duplicate: bool


@attrs.frozen
class StreamState:
    first_seq: int
    last_seq: int
    messages: int


class BusError(LedgerfluxError):
    """Base of every error raised or returned by the bus."""


class BusUnavailable(BusError):
    """Could not connect after the configured attempts."""


class StreamConfigMismatch(BusError):
    """An existing stream's config differs from the one LedgerFlux would create."""

    def __init__(self, stream: str, fields: Mapping[str, tuple[object, object]]) -> None:
        self.stream = stream
        self.fields = dict(fields)
        diffs = "; ".join(f"{k}: server has {h!r}, expected {w!r}" for k, (h, w) in fields.items())
        super().__init__(f"stream {stream} exists with a different config ({diffs})")


class StreamReplicasUnavailable(BusError):
    """A stream asks for more replicas (``nats.replicas``) than the NATS deployment can hold:
    a single server, or a cluster with fewer JetStream peers than replicas."""

    def __init__(self, stream: str, replicas: int, why: str, server_says: str) -> None:
        self.stream = stream
        self.replicas = replicas
        super().__init__(
            f"cannot create stream {stream} with nats.replicas = {replicas}: {why} "
            f"(server: {server_says}). Set nats.replicas (LEDGERFLUX_NATS__REPLICAS) to at most "
            "the number of JetStream servers: 1 for a single server, 3 for a 3-node cluster"
        )


class ConsumerConfigMismatch(BusError):
    """An existing durable consumer's config differs from the one :meth:`Bus.pull` asks for.

    Never changed silently (DESIGN §3), even where NATS could update it in place: a
    different filter or ack wait on a durable that another process may be using is an
    operator's decision. Delete the consumer (it restarts from the stream's first message)
    or make the configuration match.
    """

    def __init__(
        self, stream: str, durable: str, fields: Mapping[str, tuple[object, object]]
    ) -> None:
        self.stream = stream
        self.durable = durable
        self.fields = dict(fields)
        diffs = "; ".join(f"{k}: server has {h!r}, expected {w!r}" for k, (h, w) in fields.items())
        super().__init__(f"consumer {durable} on {stream} exists with a different config ({diffs})")


class NoResponders(BusError):
    """A core NATS request that no subscriber listens to (the server says so at once)."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__(f"nobody listens to {subject}")


class PublishFenced(BusError):
    """Another writer moved the subject on: the expected last subject sequence was wrong."""

    def __init__(self, subject: str, detail: str) -> None:
        self.subject = subject
        super().__init__(f"publish to {subject} fenced: {detail}")


class PublishFailed(BusError):
    """No ack after the retry budget, or the server refused the message."""


RefusalReason = Literal["too_large", "bad_subject", "bad_header", "no_stream", "rejected"]


class PublishRefused(PublishFailed):
    """A publish that can never succeed as it is: retrying it is pointless.

    ``reason``: ``too_large`` (subject, headers and payload exceed the server's
    ``max_payload``), ``bad_subject`` / ``bad_header`` (refused by the client before
    sending), ``no_stream`` (no stream listens to the subject: nobody answered for the whole
    retry budget *and* the JetStream API confirms that no stream has the subject), or
    ``rejected`` (JetStream answered with an error, e.g. the stream's own size limit)."""

    def __init__(self, subject: str, size: int, reason: RefusalReason, detail: str) -> None:
        self.subject = subject
        self.size = size
        self.reason: RefusalReason = reason
        self.detail = detail
        super().__init__(f"publish to {subject} ({size} bytes) refused, {reason}: {detail}")


class Publisher(Protocol):
    """What the ingestor and the normalizer need from the bus (tests use in-memory fakes)."""

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]: ...


# --------------------------------------------------------------------------- the bridge


class _Bridge:
    """One asyncio event loop in a dedicated thread, and the Trio→asyncio crossing.

    Calls into the loop are queued and run by one ``call_soon_threadsafe`` callback: a call
    made while an earlier one still waits for the loop rides on the same wake-up (one
    write to asyncio's self-pipe), and the queue keeps their order.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=f"{name}-asyncio", daemon=True)
        self._stopping = False
        self._lock = threading.Lock()
        self._calls: list[Callable[[], None]] = []

    def _submit(self, call: Callable[[], None]) -> None:
        """Run *call* on the loop, after every call submitted before it."""
        with self._lock:
            self._calls.append(call)
            if len(self._calls) > 1:
                return  # a wake-up is already on its way
        self.loop.call_soon_threadsafe(self._run_calls)

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            call()

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Whatever nats-py left running is cancelled and awaited, so the loop closes clean.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def stop(self) -> None:
        """Stop the loop and join the thread (in a worker thread, so Trio keeps running)."""
        if self._stopping:
            return
        self._stopping = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)

    async def run(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn()`` as a task on the asyncio loop and return its result.

        On Trio cancellation the asyncio task is cancelled and this waits (shielded, at most
        CANCEL_GRACE_S) for it to finish before re-raising, so no asyncio work is left behind.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        holder: list[asyncio.Task[T]] = []

        def wake(_: object) -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        def start() -> None:
            task = self.loop.create_task(fn())
            holder.append(task)
            task.add_done_callback(wake)

        def cancel() -> None:
            if holder:
                holder[0].cancel()

        # A call after stop() would be queued on a loop that never runs it again.
        if self._stopping:
            raise BusError("the bus is closed")
        self._submit(start)
        try:
            await done.wait()
        except BaseException:
            # FIFO: this cancel runs after start(), so the task exists by then.
            self._submit(cancel)
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_GRACE_S) as scope:
                await done.wait()
            if scope.cancelled_caught:
                log.warning("bus.cancel_grace_exceeded")
            raise
        task = holder[0]
        if task.cancelled():
            raise BusError("the bus was closed during the call")
        return task.result()


# --------------------------------------------------------------------------- conversions


# InMsg's slot descriptors: ``_in_msg`` fills a new instance through them. It runs once
# per consumed message, and this is about twice as fast as the attrs ``__init__`` (which
# goes through ``object.__setattr__`` once per field because the class is frozen). The
# result is an ordinary InMsg: equality, repr and immutability are the class's own.
_new_object = new_instance
_set_subject = slot_setter(InMsg, "subject")
_set_data = slot_setter(InMsg, "data")
_set_stream_seq = slot_setter(InMsg, "stream_seq")
_set_headers = slot_setter(InMsg, "headers")
_set_num_delivered = slot_setter(InMsg, "num_delivered")
_set_raw = slot_setter(InMsg, "_raw")
assert {a.name for a in attrs.fields(InMsg)} == {
    "subject",
    "data",
    "stream_seq",
    "headers",
    "num_delivered",
    "_raw",
}, "InMsg changed: update _in_msg"


def _in_msg(msg: NatsMsg) -> InMsg:
    # v1: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
    # v2 adds <domain>.<account hash> after $JS.ACK (and may end with a random token).
    # Parsed by hand: this runs once per consumed message.
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        delivered, stream_seq = tokens[4], tokens[5]
    elif len(tokens) >= 11:
        delivered, stream_seq = tokens[6], tokens[7]
    else:
        raise BusError(f"not a JetStream message reply subject: {msg.reply!r}")
    out: InMsg = _new_object(InMsg)
    _set_subject(out, msg.subject)
    _set_data(out, msg.data)
    _set_stream_seq(out, int(stream_seq))
    # nats-py builds a fresh dict per message (or None): kept as is, never copied.
    _set_headers(out, msg.headers or _NO_HEADERS)
    _set_num_delivered(out, int(delivered))
    _set_raw(out, msg)
    return out


def _in_msgs(raws: Sequence[NatsMsg], *, what: str) -> list[InMsg]:
    """Convert deliveries; one that is not a JetStream delivery is counted and dropped."""
    try:
        return [_in_msg(raw) for raw in raws]
    except (BusError, ValueError):
        pass  # rare: redone one by one, to keep the good ones
    out: list[InMsg] = []
    for raw in raws:
        try:
            out.append(_in_msg(raw))
        except (BusError, ValueError) as exc:
            BUS_ERRORS.labels(kind="bad_reply").inc()
            log.warning("bus.bad_delivery", consumer=what, error=describe_error(exc))
    return out


def _direct_msg(msg: NatsMsg) -> InMsg | None:
    headers = msg.headers or {}
    status = headers.get("Status")
    if status == "404":
        return None
    if status is not None:
        raise BusError(f"direct get failed: {status} {headers.get('Description', '')}".strip())
    user_headers = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
    for key in (_HDR_MSG_ID, _HDR_EXPECTED_LAST_SUBJECT_SEQ):
        if key in headers:
            user_headers[key] = headers[key]
    return InMsg(
        subject=headers["Nats-Subject"],
        data=msg.data,
        stream_seq=int(headers["Nats-Sequence"]),
        headers=user_headers,
    )


def _ns(seconds: float | None) -> int:
    return round((seconds or 0.0) * 1e9)


# --------------------------------------------------------------------------- the bus

_RECONNECT_WAIT_S = 1.0
"""Pause between nats-py's own reconnect attempts once a connection was made."""
_CONNECT_BACKOFF_MAX_S = 2.0


def _connect_backoff_s(attempt: int) -> float:
    """Pause after failed first-connect attempt number *attempt* (1-based)."""
    return min(0.2 * 2.0 ** (attempt - 1), _CONNECT_BACKOFF_MAX_S)


def connect_budget_s(config: NatsConfig) -> float:
    """The longest :func:`open_bus` takes to give up on an unreachable server: every
    attempt runs into ``connect_timeout_s`` (a server that accepts TCP and never answers, or
    drops packets), plus the pauses between attempts."""
    attempts = max(1, config.connect_attempts)
    pauses = sum(_connect_backoff_s(attempt) for attempt in range(1, attempts))
    return attempts * config.connect_timeout_s + pauses


def _connect_error(exc: BaseException | None, timeout_s: float) -> str:
    """The reason of a failed connect in words (``TimeoutError()`` says nothing)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # "connection refused", not asyncio's text
    return repr(exc)


@asynccontextmanager
async def open_bus(config: NatsConfig, *, url: str, name: str = "ledgerflux") -> AsyncIterator[Bus]:
    """Connect to NATS and yield a :class:`Bus`.

    Tries ``config.connect_attempts`` times, ``config.connect_timeout_s`` each, then raises
    :class:`BusUnavailable` naming the URL. While open, nats-py reconnects by itself forever.
    On exit (also on cancellation) the connection is drained and closed within a bound,
    then the asyncio thread is stopped and joined.
    """
    bridge = _Bridge(name)
    bridge.start()
    try:
        bus = Bus(url=url, config=config, bridge=bridge)
        await bus._connect(name)
        try:
            yield bus
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await bus._close()
    finally:
        await bridge.stop()


class Bus:
    """A connection to NATS JetStream; see :func:`open_bus`."""

    def __init__(self, *, url: str, config: NatsConfig, bridge: _Bridge) -> None:
        self.url = url
        self._safe_url = _USERINFO.sub("//***@", url)  # for logs and errors: no credentials
        self.reconnects = 0
        self._config = config
        self._bridge = bridge
        self._nc: NatsClient | None = None
        self._closing = False
        """Set by :meth:`_close`: the disconnect that follows is ours."""
        self._js: JetStreamContext | None = None
        self._publisher: _Publisher | None = None
        self._connect_errors: list[Exception] = []
        """The last error nats-py reported while not connected (one at most)."""

    # -- connection ----------------------------------------------------------------------

    @property
    def _client(self) -> NatsClient:
        if self._nc is None:
            raise BusError("the bus is not connected")
        return self._nc

    @property
    def _publisher_or_raise(self) -> _Publisher:
        if self._publisher is None:
            raise BusError("the bus is not connected")
        return self._publisher

    @property
    def _jsctx(self) -> JetStreamContext:
        if self._js is None:
            raise BusError("the bus is not connected")
        return self._js

    @property
    def max_payload(self) -> int:
        """The largest message (headers + payload, in bytes) the server accepts: the
        ``max_payload`` of its INFO, read at connect and again at each reconnect (a server
        of a cluster may be configured differently). A larger publish is refused with
        :class:`PublishRefused` (``too_large``) before it is sent."""
        return self._client.max_payload

    async def _connect(self, name: str) -> None:
        config = self._config
        attempts = max(1, config.connect_attempts)
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            try:
                nc, publisher = await self._bridge.run(lambda: self._connect_once(name))
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                last = exc
                log.warning(
                    "bus.connect_failed",
                    url=self._safe_url,
                    attempt=attempt,
                    error=describe_error(exc),
                )
                if attempt < attempts:
                    await trio.sleep(_connect_backoff_s(attempt))
                continue
            self._nc, self._publisher = nc, publisher
            self._js = nc.jetstream(timeout=PUBLISH_ATTEMPT_TIMEOUT_S)
            log.info("bus.connected", url=self._safe_url, max_payload=nc.max_payload)
            return
        raise BusUnavailable(
            f"cannot connect to NATS at {self._safe_url} after {attempts} attempt(s) of "
            f"{config.connect_timeout_s:g} s: {_connect_error(last, config.connect_timeout_s)}"
        )

    async def _connect_once(self, name: str) -> tuple[NatsClient, _Publisher]:
        nc = NatsClient()
        try:
            await asyncio.wait_for(self._connect_client(nc, name), self._config.connect_timeout_s)
            # Subscribed once per connection (nats-py resubscribes after a reconnect), so a
            # publish never creates a subscription or a task.
            publisher = _Publisher(nc)
            await publisher.start()
        except nats.errors.NoServersError:
            # nats-py tried each server of the pool and gave up: the reason is the last
            # error it reported.
            with suppress(Exception):
                await nc.close()
            raise (
                self._connect_errors[-1] if self._connect_errors else nats.errors.NoServersError()
            ) from None
        except BaseException:
            # A half-open attempt (TCP up, handshake timed out) must not leave tasks behind.
            with suppress(Exception):
                await nc.close()
            raise
        # ...and once connected, nats-py reconnects by itself forever (it reads these options
        # at each disconnection).
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = _RECONNECT_WAIT_S
        return nc, publisher

    async def _connect_client(self, nc: NatsClient, name: str) -> None:
        async def on_error(exc: Exception) -> None:
            if not nc.is_connected:
                self._connect_errors.append(exc)
                del self._connect_errors[:-1]
            BUS_ERRORS.labels(kind=type(exc).__name__).inc()
            log.warning("bus.nats_error", url=self._safe_url, error=describe_error(exc))

        async def on_disconnected() -> None:
            if self._closing:
                # Our own close (a drain): expected, not worth a warning.
                log.debug("bus.disconnected", url=self._safe_url, closing=True)
                return
            log.warning("bus.disconnected", url=self._safe_url)

        async def on_reconnected() -> None:
            self.reconnects += 1
            RECONNECTS.inc()
            log.info("bus.reconnected", url=self._safe_url, reconnects=self.reconnects)

        await nc.connect(
            servers=self.url.split(","),
            name=name,
            connect_timeout=int(max(1, self._config.connect_timeout_s)),
            # The first connect fails fast so that our own loop counts attempts: no reconnect
            # after a failed handshake, and each server of the pool tried at most twice
            # (nats-py's "0" would mean forever: a refused TCP connect is retried in a loop).
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )

    async def _close(self) -> None:
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        self._closing = True

        async def drain() -> None:
            try:
                await asyncio.wait_for(nc.drain(), CLOSE_TIMEOUT_S / 2)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("bus.drain_failed", error=describe_error(exc))
            if not nc.is_closed:
                await nc.close()

        await self._bridge.run(drain)

    async def _api(self, what: str, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """One crossing for a JetStream API call; nats-py errors become a named BusError."""
        try:
            return await self._bridge.run(fn)
        except nats.js.errors.NotFoundError as exc:
            raise BusError(f"{what}: not found ({exc.description or exc})") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"{what} failed: {exc!r}") from exc

    # -- streams -------------------------------------------------------------------------

    def _wanted_streams(self) -> list[api.StreamConfig]:
        c = self._config
        specs = [
            (TICKS_STREAM, "lf.ticks.>", c.ticks_max_age_s, c.ticks_max_bytes),
            (MD_STREAM, "lf.md.>", c.md_max_age_s, c.md_max_bytes),
            (DLQ_STREAM, "lf.dlq.>", c.dlq_max_age_s, c.dlq_max_bytes),
        ]
        return [
            api.StreamConfig(
                name=name,
                subjects=[subject],
                retention=api.RetentionPolicy.LIMITS,
                max_age=max_age,
                max_bytes=max_bytes,
                storage=api.StorageType.FILE,
                num_replicas=c.replicas,
                duplicate_window=DUPLICATE_WINDOW_S,
                allow_direct=True,
                discard=api.DiscardPolicy.OLD,
            )
            for name, subject, max_age, max_bytes in specs
        ]

    async def ensure_streams(self) -> None:
        """Create LF_TICKS, LF_MD and LF_DLQ if missing; accept them if equal.

        Raises :class:`StreamConfigMismatch` if an existing stream differs in subjects,
        retention, replicas, max_age or max_bytes (never changes it silently).
        Cancellation cancels the pending JetStream API requests.
        """
        for want in self._wanted_streams():
            have = await self._api(f"ensure stream {want.name}", partial(self._ensure_stream, want))
            mismatch = _stream_diff(have, want)
            if mismatch:
                raise StreamConfigMismatch(want.name or "", mismatch)

    async def _ensure_stream(self, want: api.StreamConfig) -> api.StreamConfig:
        js = self._jsctx
        assert want.name is not None
        try:
            return (await js.stream_info(want.name)).config
        except nats.js.errors.NotFoundError:
            pass
        try:
            info = await js.add_stream(want)
            log.info("bus.stream_created", stream=want.name)
            return info.config
        except nats.js.errors.APIError as exc:
            if exc.err_code in _REPLICA_ERRORS:
                raise StreamReplicasUnavailable(
                    want.name,
                    want.num_replicas or 1,
                    _REPLICA_ERRORS[exc.err_code],
                    exc.description or f"error {exc.err_code}",
                ) from exc
            # Another process created it between our two requests: compare with theirs.
            if exc.err_code != _ERR_STREAM_NAME_IN_USE:
                raise
            return (await js.stream_info(want.name)).config

    async def delete_stream(self, stream: str) -> bool:
        """Delete a stream (tests and admin tools); False if it did not exist."""

        async def delete() -> bool:
            try:
                return bool(await self._jsctx.delete_stream(stream))
            except nats.js.errors.NotFoundError:
                return False

        return await self._api(f"delete stream {stream}", delete)

    async def stream_state(self, stream: str) -> StreamState:
        """First/last sequence and message count of ``stream``."""
        info = await self._api(f"stream info {stream}", lambda: self._jsctx.stream_info(stream))
        state = info.state
        return StreamState(
            first_seq=state.first_seq, last_seq=state.last_seq, messages=state.messages
        )

    async def consumer_pending(self, stream: str, durable: str) -> int:
        """Messages not yet acked by ``durable`` (pending + ack pending); 0 if it is missing."""

        async def pending() -> int:
            try:
                info = await self._jsctx.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                return 0
            return (info.num_pending or 0) + (info.num_ack_pending or 0)

        return await self._api(f"consumer info {stream}/{durable}", pending)

    async def last_for_subject(self, stream: str, subject: str) -> InMsg | None:
        """The last message stored on ``subject`` (direct get), or None."""
        return await self._direct_get(stream, {"last_by_subj": subject})

    async def get_msg(self, stream: str, seq: int) -> InMsg | None:
        """The message at ``seq`` (direct get), or None if there is none (deleted/expired).

        Stream sequences start at 1: an empty stream's ``last_seq`` is 0, which holds
        nothing (the server would answer "408 Empty Request").
        """
        if seq < 1:
            return None
        return await self._direct_get(stream, {"seq": seq})

    async def _direct_get(self, stream: str, request: dict[str, object]) -> InMsg | None:
        # The request form with a JSON body works on nats-server 2.9 as well as later ones.
        async def get() -> InMsg | None:
            reply = await self._client.request(
                f"$JS.API.DIRECT.GET.{stream}",
                orjson.dumps(request),
                timeout=PUBLISH_ATTEMPT_TIMEOUT_S,
            )
            return _direct_msg(reply)

        try:
            return await self._bridge.run(get)
        except nats.errors.NoRespondersError:
            raise BusError(f"stream {stream} does not exist or has no direct get") from None
        except nats.errors.TimeoutError:
            raise BusError(f"direct get on {stream} timed out") from None

    # -- publishing ----------------------------------------------------------------------

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        """Publish ``msgs`` pipelined in one crossing; one result per message, in order.

        All messages are written, then all acks awaited (one shared reply inbox, see
        :class:`_Publisher`), so a batch costs about one round trip, not one per message.
        On the first attempt the messages reach the server in batch order, so messages for
        one subject are stored in the order given (the normalizer's fencing relies on it).

        Timeouts, no-responders and JetStream 503s (a server restarting, a leader election)
        are retried with the same ``Nats-Msg-Id`` (a message without one gets a fresh id,
        so retries are always deduplicated) for up to PUBLISH_RETRY_BUDGET_S, then
        :class:`PublishFailed`. A retry resends every message still unanswered, again in
        batch order among themselves; a retried message is stored after any later message
        of the batch that was accepted at the first attempt, so per-subject order holds
        only for messages that did not need a retry. A fenced message
        (``expected_last_subject_seq`` wrong) is never retried:
        :class:`PublishFenced`. A message that can never be stored (larger than
        :attr:`max_payload`, a bad subject or header, a JetStream error) is
        :class:`PublishRefused` at once, without being retried; so is one that nobody
        answered for the whole budget when the JetStream API says no stream has its
        subject (``no_stream``; while a server restarts the API does not answer, and the
        message stays a plain :class:`PublishFailed`). Results are returned, not raised.

        On cancellation the asyncio side stops at once (no task is left behind): some
        messages may already be stored; publishing them again with the same msg ids is safe.
        """
        if not msgs:
            return []
        CROSSING_BATCH.labels(op="publish").observe(len(msgs))
        publisher = self._publisher_or_raise
        results = await self._bridge.run(lambda: publisher.publish(msgs))
        acked: dict[str, int] = {}
        for r in results:
            if isinstance(r, PubAck):
                acked[r.stream] = acked.get(r.stream, 0) + 1
        for stream, count in acked.items():
            PUBLISHES.labels(stream=stream).inc(count)
        failed = len(results) - sum(acked.values())
        if failed:
            log.warning("bus.publish_errors", failed=failed, total=len(results))
            for r in results:
                if isinstance(r, PublishRefused):
                    log.warning(
                        "bus.publish_refused",
                        subject=r.subject,
                        size=r.size,
                        reason=r.reason,
                        detail=r.detail,
                    )
        return results

    # -- consuming -----------------------------------------------------------------------

    @asynccontextmanager
    async def pull(
        self,
        stream: str,
        durable: str,
        filter_subject: str,
        *,
        batch: int = 256,
        max_ack_pending: int = 10_000,
        ack_wait_s: float = 30.0,
    ) -> AsyncIterator[PullConsumer]:
        """A durable pull consumer (explicit ack, deliver all), created if missing.

        An existing consumer whose filter subject, ack policy, deliver policy, ack wait or
        max ack pending differs is a :class:`ConsumerConfigMismatch` (never updated
        silently). On exit (also on cancellation) the consumer's inbox subscription is
        removed, shielded and bounded; the durable consumer stays on the server, and
        messages delivered but not acked come back after ``ack_wait_s``.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subject=filter_subject,
            max_ack_pending=max_ack_pending,
            ack_wait=ack_wait_s,
        )
        session = await self._api(
            f"pull consumer {stream}/{durable}", lambda: self._open_pull(stream, config, batch)
        )
        try:
            yield PullConsumer(self._bridge, session, stream=stream, durable=durable)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._bridge.run(session.close)

    async def _open_pull(self, stream: str, config: api.ConsumerConfig, batch: int) -> _PullSession:
        js = self._jsctx
        durable = config.durable_name
        assert durable is not None
        try:
            have = (await js.consumer_info(stream, durable)).config
        except nats.js.errors.NotFoundError:
            try:
                have = (await js.add_consumer(stream, config)).config
            except nats.js.errors.APIError:
                # Another process created it between our two requests: compare with theirs.
                have = (await js.consumer_info(stream, durable)).config
        mismatch = _consumer_diff(have, config)
        if mismatch:
            raise ConsumerConfigMismatch(stream, durable, mismatch)
        session = _PullSession(self._client, stream=stream, durable=durable, batch=batch)
        await session.start()
        return session

    @asynccontextmanager
    async def ordered(
        self,
        stream: str,
        filter_subject: str,
        *,
        start_seq: int | None = None,
        max_batch: int = 512,
        buffer_batches: int = 16,
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[InMsg]]]:
        """An ephemeral ordered consumer from ``start_seq`` (None: only new messages).

        Yields a channel of batches (each at most ``max_batch`` messages, in stream order).
        One crossing carries everything the asyncio side holds, as several batches.
        Policy: **block**. The channel holds ``buffer_batches`` batches; when it is full the
        pump stops crossing (holding at most the HANDOFF_BATCHES batches of its last
        crossing), the asyncio hand-off fills up (HANDOFF_BATCHES batches), nats-py stops
        delivering and JetStream flow control stops the server, so a slow consumer never
        grows memory: at most ``(buffer_batches + 2 * HANDOFF_BATCHES) * max_batch``
        messages are held.
        The consumer is recreated after a server restart (missed heartbeats) from the last
        delivered sequence. Closing the context (or cancellation) stops the pump and
        unsubscribes.
        """
        if start_seq is None:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
        else:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq
            )

        buffer = _Handoff(HANDOFF_BATCHES * max_batch, self._bridge.loop)

        async def subscribe() -> JetStreamContext.PushSubscription:
            return await self._jsctx.subscribe(
                filter_subject,
                stream=stream,
                config=config,
                cb=buffer.put,
                ordered_consumer=True,
                idle_heartbeat=ORDERED_IDLE_HEARTBEAT_S,
            )

        sub = await self._api(f"ordered consumer on {stream} {filter_subject}", subscribe)
        send, receive = trio.open_memory_channel[list[InMsg]](buffer_batches)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_ordered, buffer, send, max_batch, filter_subject)
                try:
                    async with receive:
                        yield receive
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._bridge.run(lambda: _unsubscribe(sub))

    async def _pump_ordered(
        self,
        buffer: _Handoff,
        send: trio.MemorySendChannel[list[InMsg]],
        max_batch: int,
        filter_subject: str,
    ) -> None:
        async with send:
            while True:
                raws = await buffer.take()
                CROSSING_BATCH.labels(op="ordered").observe(len(raws))
                # Converted here, not in the asyncio callback: that thread is the one that
                # limits an ordered consumer's throughput (nats-py's parsing runs there).
                for start in range(0, len(raws), max_batch):
                    batch = _in_msgs(raws[start : start + max_batch], what=filter_subject)
                    if not batch:
                        continue
                    try:
                        await send.send(batch)
                    except trio.BrokenResourceError:
                        return

    # -- positions and checkpoints -------------------------------------------------------

    async def last_seq_matching(self, stream: str, filter_subject: str) -> int:
        """The stream sequence of the last message on any subject matching
        ``filter_subject`` (0 if there is none). A stream-order consumer with that filter
        has seen everything published so far once its position reaches this value (the
        drain of ``ledgerflux up`` waits for that)."""

        async def last() -> int:
            js = self._jsctx
            info = await js.stream_info(stream, subjects_filter=filter_subject)
            subjects = info.state.subjects or {}
            found = 0
            for subject in subjects:
                reply = await self._client.request(
                    f"$JS.API.DIRECT.GET.{stream}",
                    orjson.dumps({"last_by_subj": subject}),
                    timeout=PUBLISH_ATTEMPT_TIMEOUT_S,
                )
                msg = _direct_msg(reply)
                if msg is not None:
                    found = max(found, msg.stream_seq)
            return found

        return await self._api(f"last message of {stream} {filter_subject}", last)

    async def ensure_checkpoints(self) -> None:
        """Create the object-store bucket :data:`CHECKPOINT_BUCKET` if missing (same
        replicas as the streams). Idempotent."""

        async def ensure() -> None:
            js = self._jsctx
            try:
                await js.object_store(CHECKPOINT_BUCKET)
            except nats.js.errors.BucketNotFoundError:
                await js.create_object_store(
                    CHECKPOINT_BUCKET,
                    api.ObjectStoreConfig(
                        bucket=CHECKPOINT_BUCKET,
                        description="LedgerFlux daemon checkpoints (normalizer state)",
                        storage=api.StorageType.FILE,
                        replicas=self._config.replicas,
                    ),
                )

        await self._api(f"ensure object store {CHECKPOINT_BUCKET}", ensure)

    async def put_checkpoint(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` in the checkpoint bucket (chunked by the object
        store, so any size fits under ``max_payload``). The previous version is replaced
        only once the new one is complete."""

        async def put() -> None:
            store = await self._jsctx.object_store(CHECKPOINT_BUCKET)
            await store.put(name, data)

        await self._api(f"put checkpoint {name}", put)

    async def get_checkpoint(self, name: str) -> bytes | None:
        """The checkpoint stored under ``name``, or None if there is none."""

        async def get() -> bytes | None:
            try:
                store = await self._jsctx.object_store(CHECKPOINT_BUCKET)
                result = await store.get(name)
            except (nats.js.errors.ObjectNotFoundError, nats.js.errors.BucketNotFoundError):
                return None
            except nats.js.errors.NotFoundError:
                return None
            return bytes(result.data or b"")

        return await self._api(f"get checkpoint {name}", get)

    # -- core NATS request/reply (control traffic: resync requests) ---------------------
    #
    # Kept apart from the JetStream methods above: nothing here is stored or acked.

    async def request(self, subject: str, data: bytes, *, timeout_s: float) -> bytes:
        """One core NATS request in one crossing; the reply's payload.

        Raises :class:`NoResponders` at once when nobody subscribes to ``subject``, and
        :class:`BusError` when no reply comes within ``timeout_s``. Cancellation abandons
        the request (a late reply is dropped by nats-py)."""

        async def ask() -> bytes:
            reply = await self._client.request(subject, data, timeout=timeout_s)
            return reply.data

        try:
            return await self._bridge.run(ask)
        except nats.errors.NoRespondersError:
            raise NoResponders(subject) from None
        except nats.errors.TimeoutError:
            raise BusError(f"no reply on {subject} within {timeout_s:g} s") from None
        except nats.errors.Error as exc:
            raise BusError(f"request on {subject} failed: {exc!r}") from exc

    @asynccontextmanager
    async def subscribe(
        self, subjects: Sequence[str], *, buffer: int = REQUEST_BUFFER
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[CoreMsg]]]:
        """Core NATS subscriptions to ``subjects`` (no queue group), as one channel of
        batches: one crossing carries every message the asyncio side holds.

        Policy: **block**, then drop. The channel holds 4 batches; when it is full the pump
        stops crossing, the hand-off fills up (``buffer`` messages) and nats-py stops
        taking from the subscriptions, whose own queues are capped at ``buffer`` messages:
        beyond that nats-py drops and reports a slow consumer (counted in
        ``ledgerflux_bus_errors``). Core NATS keeps nothing, so a dropped request is one
        whose sender times out and may ask again; memory stays bounded.
        nats-py subscribes again after a reconnect. Closing the context (or cancellation)
        stops the pump and unsubscribes, shielded and bounded.
        """
        handoff = _Handoff(max(1, buffer), self._bridge.loop)

        async def subscribe_all() -> list[Any]:
            return [
                await self._client.subscribe(
                    subject, cb=handoff.put, pending_msgs_limit=max(1, buffer)
                )
                for subject in subjects
            ]

        subs = await self._api(f"subscribe {', '.join(subjects)}", subscribe_all)
        send, receive = trio.open_memory_channel[list[CoreMsg]](4)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_core, handoff, send)
                try:
                    async with receive:
                        yield receive
                finally:
                    nursery.cancel_scope.cancel()
        finally:

            async def unsubscribe_all() -> None:
                for sub in subs:
                    await _unsubscribe(sub)

            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._bridge.run(unsubscribe_all)

    async def _pump_core(
        self, handoff: _Handoff, send: trio.MemorySendChannel[list[CoreMsg]]
    ) -> None:
        async with send:
            while True:
                raws = await handoff.take()
                CROSSING_BATCH.labels(op="core").observe(len(raws))
                batch = [CoreMsg(m.subject, m.data, m.reply or "") for m in raws]
                try:
                    await send.send(batch)
                except trio.BrokenResourceError:
                    return

    async def respond(self, replies: Sequence[tuple[str, bytes]]) -> None:
        """Send ``(reply subject, payload)`` answers in one crossing (publishes, then one
        flush). A reply that cannot be sent is logged and counted: its requester times
        out, as it would if the answer were lost on the way."""
        if not replies:
            return

        async def send_all() -> None:
            nc = self._client
            try:
                for subject, payload in replies:
                    await nc.publish(subject, payload)
                await nc.flush(timeout=ACK_FLUSH_TIMEOUT_S)
            except (nats.errors.Error, TimeoutError) as exc:
                BUS_ERRORS.labels(kind=type(exc).__name__).inc()
                log.warning("bus.respond_failed", replies=len(replies), error=describe_error(exc))

        CROSSING_BATCH.labels(op="respond").observe(len(replies))
        await self._bridge.run(send_all)


class _Attempt:
    """The messages of one publish attempt that still wait for their ack."""

    __slots__ = ("answered", "replies", "unanswered")

    def __init__(self) -> None:
        self.replies: dict[int, NatsMsg] = {}
        """Batch index -> the server's reply (a PubAck, an error or a status message)."""
        self.unanswered = 0
        self.answered = asyncio.Event()
        """Set whenever ``unanswered`` drops to zero."""


class _Publisher:
    """asyncio side of :meth:`Bus.publish_batch`: pipelined JetStream publishes.

    One reply inbox subscription per connection (``<inbox>.*``); each publish is a plain
    ``PUB`` with its own reply subject ``<inbox>.<n>``, and ``_on_reply`` files the answer
    under the attempt and batch index that sent it. A batch writes all its messages, then
    waits once for all acks: no request, no future and no task per message (nats-py's
    ``js.publish`` is one request round trip each). nats-py's ``publish_async`` works the
    same way but has no timeout per message, so an ack lost in a server restart would
    wait forever; here an attempt ends after PUBLISH_ATTEMPT_TIMEOUT_S and what is still
    unanswered is sent again.

    Memory: bounded by the caller's batch. Replies for an attempt given up on find no
    entry in ``_waiting`` and are dropped (their retry has its own reply subject).
    """

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._prefix_len = len(self._prefix)
        self._sent = 0
        self._waiting: dict[str, tuple[_Attempt, int]] = {}
        self._nuid = NUID()

    async def start(self) -> None:
        await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: NatsMsg) -> None:
        entry = self._waiting.pop(msg.subject[self._prefix_len :], None)
        if entry is None:
            return  # the late answer of an attempt given up on
        attempt, index = entry
        attempt.replies[index] = msg
        attempt.unanswered -= 1
        if attempt.unanswered == 0:
            attempt.answered.set()

    async def publish(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        """See :meth:`Bus.publish_batch`: attempts until every message has an answer."""
        headers: list[dict[str, str]] = []
        for msg in msgs:
            # Built once: every attempt of a message carries the same msg id.
            h = {_HDR_MSG_ID: msg.msg_id or self._nuid.next().decode()}
            if msg.headers:
                h.update(msg.headers)
            if msg.expected_last_subject_seq is not None:
                h[_HDR_EXPECTED_LAST_SUBJECT_SEQ] = str(msg.expected_last_subject_seq)
            headers.append(h)
        results: list[PubAck | BusError | None] = [None] * len(msgs)
        todo = list(range(len(msgs)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_RETRY_BUDGET_S
        delay = 0.05
        while True:
            problems: dict[int, str] = {}  # why a message of this attempt is retried
            wait_s = max(0.05, min(PUBLISH_ATTEMPT_TIMEOUT_S, deadline - loop.time()))
            replies = await self._attempt(msgs, headers, todo, wait_s, results, problems)
            retry: list[int] = []
            for i in todo:
                if results[i] is not None:
                    continue  # refused while sending
                reply = replies.get(i)
                if reply is None:
                    problems.setdefault(i, f"no ack within {wait_s:g} s")
                    retry.append(i)
                    continue
                outcome = _pub_outcome(msgs[i].subject, reply, _wire_size(msgs[i], headers[i]))
                if isinstance(outcome, str):
                    problems[i] = outcome
                    retry.append(i)
                else:
                    results[i] = outcome
            if not retry:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                streamless = await self._subjects_without_stream(
                    {msgs[i].subject for i in retry if problems[i] == _NO_RESPONDERS}
                )
                for i in retry:
                    msg = msgs[i]
                    if msg.subject in streamless:
                        PUBLISH_FAILURES.labels(reason="no_stream").inc()
                        results[i] = PublishRefused(
                            msg.subject,
                            _wire_size(msg, headers[i]),
                            "no_stream",
                            f"no stream listens to the subject (no answer for "
                            f"{PUBLISH_RETRY_BUDGET_S:g} s, and the JetStream API lists none)",
                        )
                        continue
                    PUBLISH_FAILURES.labels(reason="timeout").inc()
                    results[i] = PublishFailed(
                        f"publish to {msg.subject} not acked within "
                        f"{PUBLISH_RETRY_BUDGET_S:g} s: {problems[i]}"
                    )
                break
            todo = retry
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)
        done: list[PubAck | BusError] = []
        for r in results:
            assert r is not None  # every message ends acked, fenced, refused or failed
            done.append(r)
        return done

    async def _subjects_without_stream(self, subjects: set[str]) -> set[str]:
        """Those of ``subjects`` that the JetStream API says no stream listens to. A
        subject whose answer does not come (no JetStream: a server restarting, a cluster
        without a meta leader) is not in the result: it stays retryable."""
        out: set[str] = set()
        for subject in sorted(subjects):
            try:
                reply = await self._nc.request(
                    "$JS.API.STREAM.NAMES",
                    orjson.dumps({"subject": subject}),
                    timeout=PUBLISH_ATTEMPT_TIMEOUT_S,
                )
                answer = orjson.loads(reply.data)
            except (nats.errors.Error, TimeoutError, orjson.JSONDecodeError):
                continue
            if isinstance(answer, dict) and "error" not in answer and answer.get("total") == 0:
                out.add(subject)
        return out

    async def _attempt(
        self,
        msgs: Sequence[OutMsg],
        headers: list[dict[str, str]],
        todo: list[int],
        wait_s: float,
        results: list[PubAck | BusError | None],
        problems: dict[int, str],
    ) -> dict[int, NatsMsg]:
        """Send ``todo`` (in order) and wait up to ``wait_s`` for their replies.

        Fills ``results`` for messages that cannot be sent at all (closed connection,
        invalid subject or header, too big) and ``problems`` for those to retry.
        """
        nc = self._nc
        attempt = _Attempt()
        tokens: list[str] = []
        max_payload = nc.max_payload
        try:
            for n, i in enumerate(todo):
                msg = msgs[i]
                # nats-py checks only the payload against max_payload; the server counts
                # the headers too, and answers a larger message by closing the connection.
                size = _wire_size(msg, headers[i])
                if size > max_payload:
                    PUBLISH_FAILURES.labels(reason="too_large").inc()
                    results[i] = PublishRefused(
                        msg.subject,
                        size,
                        "too_large",
                        f"headers and payload exceed the server's max_payload of {max_payload}",
                    )
                    continue
                self._sent += 1
                token = str(self._sent)
                # Registered before the write: publish() may yield (flushing a full
                # buffer), and the ack may be read before it returns.
                tokens.append(token)
                self._waiting[token] = (attempt, i)
                attempt.unanswered += 1
                try:
                    await nc.publish(
                        msg.subject, msg.data, reply=self._prefix + token, headers=headers[i]
                    )
                except (nats.errors.Error, OSError) as exc:
                    if self._waiting.pop(token, None) is not None:
                        attempt.unanswered -= 1
                    if isinstance(exc, nats.errors.ConnectionClosedError):
                        for j in todo[n:]:
                            PUBLISH_FAILURES.labels(reason="closed").inc()
                            results[j] = PublishFailed(
                                f"publish to {msgs[j].subject}: connection closed"
                            )
                        break
                    reason = _client_refusal(exc)
                    if reason is not None:
                        PUBLISH_FAILURES.labels(reason=reason).inc()
                        results[i] = PublishRefused(msg.subject, size, reason, repr(exc))
                        continue
                    # Reconnecting with a full buffer, draining: the rest waits for a retry
                    # (stopping here keeps the batch order for what was sent).
                    for j in todo[n:]:
                        problems[j] = repr(exc)
                    break
            if attempt.unanswered > 0:
                # ``answered`` may have been set while a write yielded, then unanswered
                # grew again: only the state now counts.
                attempt.answered.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(attempt.answered.wait(), wait_s)
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
        return attempt.replies


_NO_RESPONDERS = "no responders: no stream on the subject (yet), e.g. a server restarting"


def _client_refusal(exc: BaseException) -> RefusalReason | None:
    """The refusal reason of an error nats-py raises before sending, if it is permanent."""
    if isinstance(exc, nats.errors.MaxPayloadError):
        return "too_large"
    if isinstance(exc, nats.errors.BadSubjectError):
        return "bad_subject"
    if isinstance(exc, nats.errors.BadHeaderError):
        return "bad_header"
    return None


def _wire_size(msg: OutMsg, headers: Mapping[str, str]) -> int:
    """Bytes the server counts against ``max_payload``: payload plus the header block
    (``NATS/1.0\r\n``, one ``key: value\r\n`` per header, ``\r\n``)."""
    header_bytes = 12 + sum(len(k) + len(v) + 4 for k, v in headers.items())
    return len(msg.data) + header_bytes


def _pub_outcome(subject: str, reply: NatsMsg, size: int) -> PubAck | BusError | str:
    """What a publish reply means: an ack, a final error, or (a str) why to retry."""
    headers = reply.headers or _NO_HEADERS
    status = headers.get("Status")
    if status == "503":
        return _NO_RESPONDERS
    if status is not None:
        return f"status {status} {headers.get('Description', '')}".strip()
    try:
        resp = orjson.loads(reply.data)
        error = resp.get("error")
        if error is None:
            return PubAck(
                stream=resp["stream"], seq=resp["seq"], duplicate=bool(resp.get("duplicate", False))
            )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        PUBLISH_FAILURES.labels(reason="bad_ack").inc()
        return PublishFailed(f"publish to {subject}: unreadable ack {reply.data[:200]!r}: {exc!r}")
    if error.get("err_code") == _ERR_WRONG_LAST_SEQUENCE:
        PUBLISH_FAILURES.labels(reason="fenced").inc()
        return PublishFenced(subject, str(error.get("description", "")))
    if error.get("err_code") == _ERR_SUBJECT_WRITE_IN_FLIGHT:
        # A clustered stream refuses a fenced publish WITHOUT comparing while another
        # write to the subject is in flight, often the writer's own previous message whose
        # mark the leader has not cleared yet: it decides nothing, so ask again.
        return "another write to the subject is in flight (10164)"
    if error.get("code") == 503:
        return f"JetStream unavailable: {error}"
    PUBLISH_FAILURES.labels(reason="rejected").inc()
    return PublishRefused(subject, size, "rejected", str(error))


class _Handoff:
    """The crossing of a subscription's messages, pushed from asyncio to Trio.

    nats-py's message callback (:meth:`put`, asyncio thread) only appends the raw message;
    the Trio side (:meth:`take`) swaps the whole list out. The asyncio side wakes Trio
    (``run_sync_soon``) only for the first message after a take: every message that
    arrives before Trio gets round to taking rides on that one wake-up, so a crossing
    carries what arrived during the Trio loop turn, and no call goes the other way (no
    asyncio task, no ``call_soon_threadsafe``) unless the producer was blocked.
    The conversion to :class:`InMsg` happens on the Trio side: the asyncio thread is where
    an ordered consumer's throughput is decided (nats-py parses every message there).
    Policy: block. When ``limit`` messages wait, the callback awaits; nats-py's delivery
    task stops, flow-control replies stop, and the server stops sending.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self._items: list[NatsMsg] = []
        self._limit = limit
        self._loop = loop
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._readable = trio.Event()
        self._wake_sent = False
        self._blocked = False
        self._writable = asyncio.Event()

    async def put(self, msg: NatsMsg) -> None:
        """asyncio side: append *msg*, waiting while ``limit`` messages wait."""
        while True:
            with self._lock:
                if len(self._items) < self._limit:
                    self._items.append(msg)
                    wake = None if self._wake_sent else self._readable
                    self._wake_sent = True
                    break
                self._blocked = True
                self._writable.clear()
            await self._writable.wait()
        if wake is not None:
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(wake.set)

    async def take(self) -> list[NatsMsg]:
        """Trio side: everything waiting (one crossing for all of it)."""
        while True:
            with self._lock:
                if self._items:
                    items, self._items = self._items, []
                    self._wake_sent = False
                    unblock, self._blocked = self._blocked, False
                    break
                self._wake_sent = False
                self._readable = readable = trio.Event()
            await readable.wait()
        if unblock:
            self._loop.call_soon_threadsafe(self._writable.set)
        return items


async def _unsubscribe(sub: Any) -> None:
    try:
        await sub.unsubscribe()
    except (nats.errors.Error, ValueError) as exc:
        log.debug("bus.unsubscribe_failed", error=describe_error(exc))


def _stream_diff(
    have: api.StreamConfig, want: api.StreamConfig
) -> dict[str, tuple[object, object]]:
    diffs: dict[str, tuple[object, object]] = {}
    pairs: list[tuple[str, object, object]] = [
        ("subjects", sorted(have.subjects or []), sorted(want.subjects or [])),
        ("retention", have.retention, want.retention),
        ("replicas", have.num_replicas or 1, want.num_replicas or 1),
        ("max_age_ns", _ns(have.max_age), _ns(want.max_age)),
        ("max_bytes", have.max_bytes, want.max_bytes),
    ]
    for field, h, w in pairs:
        if h != w:
            diffs[field] = (h, w)
    return diffs


def _consumer_diff(
    have: api.ConsumerConfig, want: api.ConsumerConfig
) -> dict[str, tuple[object, object]]:
    # Servers >= 2.10 may report a single filter in ``filter_subjects``.
    have_filter = have.filter_subject
    if have_filter is None and have.filter_subjects and len(have.filter_subjects) == 1:
        have_filter = have.filter_subjects[0]
    diffs: dict[str, tuple[object, object]] = {}
    pairs: list[tuple[str, object, object]] = [
        ("filter_subject", have_filter, want.filter_subject),
        ("ack_policy", have.ack_policy, want.ack_policy),
        ("deliver_policy", have.deliver_policy, want.deliver_policy),
        ("ack_wait_ns", _ns(have.ack_wait), _ns(want.ack_wait)),
        ("max_ack_pending", have.max_ack_pending, want.max_ack_pending),
    ]
    for field, h, w in pairs:
        if h != w:
            diffs[field] = (h, w)
    return diffs


@attrs.define
class _PullRequest:
    """A pull request the server may still be answering."""

    reply: str
    """Its own reply subject: status messages (404/408/409) name the request they end."""
    remaining: int
    """Messages the server may still deliver for it (a full batch ends it without status)."""
    expires_at: float
    """asyncio loop time after which the server has certainly dropped it."""
    reconnects: int
    """The connection's reconnect count when sent: a request does not survive a reconnect."""


class _PullSession:
    """asyncio side of a :class:`PullConsumer`: one persistent inbox subscription and at
    most one open pull request.

    A fetch sends ``$JS.API.CONSUMER.MSG.NEXT`` with ``batch``, ``expires`` and ``no_wait``;
    with both, nats-server (2.9 and later) waits up to ``expires`` for the first message,
    then sends what is available and ends the request with a 404/408 status, or with
    nothing once ``batch`` messages are out. Messages reach ``_on_msg`` through nats-py's
    one delivery task per subscription, so no asyncio task is created per message (nats-py's
    own ``fetch`` awaits ``next_msg`` once per message, one task each).

    Messages a request delivers after its fetch gave up (timeout, cancellation) stay here
    and are returned by the next fetch instead of waiting ``ack_wait`` for a redelivery.
    Policy: **bounded by the request**. A request asks for at most ``batch`` messages and
    is only sent when nothing is buffered and no request is open, so at most ``batch``
    messages wait here.
    """

    def __init__(self, nc: NatsClient, *, stream: str, durable: str, batch: int) -> None:
        self.stream = stream
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._batch = batch
        self._msgs: deque[NatsMsg] = deque()
        self._open: _PullRequest | None = None
        self._sent = 0
        self._problem: str | None = None
        self._wakeup = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def close(self) -> None:
        if self._sub is not None:
            await _unsubscribe(self._sub)
            self._sub = None

    async def _on_msg(self, msg: NatsMsg) -> None:
        request = self._open
        if msg.reply:
            # A stream message ($JS.ACK reply). It does not name its request; with at most
            # one open it is that one's (or a late one of a request given up on: kept too).
            self._msgs.append(msg)
            if request is not None:
                request.remaining -= 1
                if request.remaining <= 0:
                    self._open = None
        elif request is not None and msg.subject == request.reply:
            headers = msg.headers or {}
            status = headers.get("Status")
            if status == "100":
                return  # idle heartbeat: the request is alive
            self._open = None
            if status not in ("404", "408"):
                # 409 (consumer deleted, leadership change, a limit exceeded) or unknown.
                self._problem = f"{status} {headers.get('Description', '')}".strip()
        else:
            return  # the end of a request given up on earlier: nothing to do
        self._wakeup.set()

    def _expire(self, now: float) -> None:
        request = self._open
        if request is not None and (
            now >= request.expires_at or request.reconnects != self._nc.stats["reconnects"]
        ):
            self._open = None

    async def _request(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        expires_s = max(timeout_s, MIN_PULL_EXPIRES_S)
        self._sent += 1
        request = _PullRequest(
            reply=f"{self._inbox}.{self._sent}",
            remaining=self._batch,
            expires_at=loop.time() + expires_s,
            reconnects=self._nc.stats["reconnects"],
        )
        body = {"batch": self._batch, "expires": _ns(expires_s), "no_wait": True}
        # Open before publishing: the answer may come before publish() returns.
        self._open = request
        try:
            await self._nc.publish(self._next_subject, orjson.dumps(body), reply=request.reply)
        except BaseException:
            self._open = None
            raise

    async def fetch(self, timeout_s: float) -> list[InMsg]:
        """Up to ``batch`` messages: returns once a request has ended (or the batch is
        full) with messages, or at the deadline. Sends at most one request; a request
        left open by an earlier fetch is waited for first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._problem = None
        sent = False
        timer: asyncio.TimerHandle | None = None
        try:
            while len(self._msgs) < self._batch:
                now = loop.time()
                self._expire(now)
                if self._open is None:
                    if self._msgs or self._problem is not None or sent or now >= deadline:
                        break
                    await self._request(deadline - now)
                    sent = True
                    continue
                if now >= deadline:
                    break
                self._wakeup.clear()
                if timer is None:
                    timer = loop.call_at(deadline, self._wakeup.set)
                await self._wakeup.wait()
        except nats.errors.Error as exc:
            BUS_ERRORS.labels(kind=type(exc).__name__).inc()
            log.warning("bus.fetch_failed", stream=self.stream, error=describe_error(exc))
            self._problem = repr(exc)
        finally:
            if timer is not None:
                timer.cancel()
        if self._problem is not None and not self._msgs:
            # A refused request (409) or a failed publish: an empty fetch that still takes
            # its time, so that a caller's fetch loop does not spin against the server.
            BUS_ERRORS.labels(kind="pull_status").inc()
            log.warning("bus.pull_refused", stream=self.stream, status=self._problem)
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            return []
        return self._take()

    def _take(self) -> list[InMsg]:
        msgs = self._msgs
        out: list[InMsg] = []
        for _ in range(min(self._batch, len(msgs))):
            raw = msgs.popleft()
            try:
                out.append(_in_msg(raw))
            except (BusError, ValueError) as exc:
                # Not a JetStream delivery: it cannot be acked either; counted and dropped.
                BUS_ERRORS.labels(kind="bad_reply").inc()
                log.warning("bus.bad_delivery", stream=self.stream, error=describe_error(exc))
        return out

    async def settle(self, replies: Sequence[str], payload: bytes) -> None:
        nc = self._nc
        try:
            for reply in replies:
                await nc.publish(reply, payload)
            await nc.flush(timeout=ACK_FLUSH_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError) as exc:
            BUS_ERRORS.labels(kind=type(exc).__name__).inc()
            log.warning(
                "bus.ack_failed",
                stream=self.stream,
                messages=len(replies),
                error=describe_error(exc),
            )


class PullConsumer:
    """A bound durable pull consumer; see :meth:`Bus.pull`.

    One fetch at a time (later callers wait their turn); ``ack``/``nak`` may run beside it.
    """

    def __init__(
        self, bridge: _Bridge, session: _PullSession, *, stream: str, durable: str
    ) -> None:
        self.stream = stream
        self.durable = durable
        self._bridge = bridge
        self._session = session
        self._fetching = trio.Lock()

    async def fetch(self, timeout_s: float = 1.0) -> list[InMsg]:
        """Up to ``batch`` messages in one crossing, ``[]`` if none arrive within ``timeout_s``.

        Returns as soon as the server has sent what it had (it does not wait to fill the
        batch). Server restarts, reconnections and refused requests (409) look like empty
        fetches (logged, counted), never errors. On cancellation the pull request stays
        open on the server until it expires; what it delivers is returned by the next
        fetch (or redelivered after ``ack_wait`` if the consumer is closed first).
        """
        async with self._fetching:
            out = await self._bridge.run(lambda: self._session.fetch(timeout_s))
        if out:
            CROSSING_BATCH.labels(op="fetch").observe(len(out))
        return out

    async def ack(self, msgs: Sequence[InMsg]) -> None:
        """Ack ``msgs`` in one crossing: all ``+ACK`` publishes, then one flush (PING/PONG).

        The acks are not acknowledged one by one (no ``ack_sync``): a lost ack only means
        a redelivery after ``ack_wait``, and every consumer of the bus is idempotent
        downstream (the snapshotter acks after its commit; upserts only move forward).
        When this returns without a logged ``bus.ack_failed``, the server has received the
        acks. On cancellation the acks already written may or may not be applied.
        """
        await self._settle(msgs, b"+ACK")

    async def nak(self, msgs: Sequence[InMsg], delay_s: float = 0.0) -> None:
        """Ask for redelivery of ``msgs`` (after ``delay_s``), in one crossing like :meth:`ack`."""
        payload = b"-NAK"
        if delay_s > 0:
            payload += b" " + orjson.dumps({"delay": _ns(delay_s)})
        await self._settle(msgs, payload)

    async def _settle(self, msgs: Sequence[InMsg], payload: bytes) -> None:
        replies = [m._raw.reply for m in msgs if m._raw is not None and m._raw.reply]
        if not replies:
            return
        CROSSING_BATCH.labels(op="ack").observe(len(replies))
        await self._bridge.run(lambda: self._session.settle(replies, payload))
