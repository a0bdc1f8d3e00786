"""Consumers: ordered (stream order, from a position) and durable pull."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

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

from ledgerflux.bus.bridge import _Bridge, _Handoff
from ledgerflux.bus.conversions import _in_msg, _in_msgs, _ns
from ledgerflux.bus.core import _BusCore
from ledgerflux.bus.provisioning import _consumer_diff
from ledgerflux.bus.types import (
    ACK_FLUSH_TIMEOUT_S,
    BUS_ERRORS,
    CLOSE_TIMEOUT_S,
    CROSSING_BATCH,
    HANDOFF_BATCHES,
    MIN_PULL_EXPIRES_S,
    ORDERED_IDLE_HEARTBEAT_S,
    BusError,
    ConsumerConfigMismatch,
    InMsg,
)
from ledgerflux.logging import describe_error

log = structlog.get_logger("ledgerflux.bus")


async def _unsubscribe(sub: Any) -> None:
    try:
        await sub.unsubscribe()
    except (nats.errors.Error, ValueError) as exc:
        log.debug("bus.unsubscribe_failed", error=describe_error(exc))


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


class _Consuming(_BusCore):
    """The :class:`Bus` methods of its consumers."""

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
