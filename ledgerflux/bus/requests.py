"""Core NATS request/reply (control traffic: resync requests).

Kept apart from the JetStream parts: nothing here is stored or acked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
import trio

from ledgerflux.bus.bridge import _Handoff
from ledgerflux.bus.consumers import _unsubscribe
from ledgerflux.bus.core import _BusCore
from ledgerflux.bus.types import (
    ACK_FLUSH_TIMEOUT_S,
    BUS_ERRORS,
    CLOSE_TIMEOUT_S,
    CROSSING_BATCH,
    REQUEST_BUFFER,
    BusError,
    CoreMsg,
    NoResponders,
)
from ledgerflux.logging import describe_error

log = structlog.get_logger("ledgerflux.bus")


class _Requests(_BusCore):
    """The :class:`Bus` methods of its core NATS request/reply."""

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
