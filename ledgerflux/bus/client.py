"""The connection: :func:`open_bus` and :class:`Bus`, which combines the parts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import nats
import nats.errors
import nats.js.errors
import structlog
import trio
from nats.aio.client import Client as NatsClient

from ledgerflux.bus.bridge import _Bridge
from ledgerflux.bus.consumers import _Consuming
from ledgerflux.bus.direct import _Direct
from ledgerflux.bus.provisioning import _Provisioning
from ledgerflux.bus.publishing import PUBLISH_ATTEMPT_TIMEOUT_S, _Publisher, _Publishing
from ledgerflux.bus.requests import _Requests
from ledgerflux.bus.types import BUS_ERRORS, CLOSE_TIMEOUT_S, RECONNECTS, BusUnavailable
from ledgerflux.config import NatsConfig
from ledgerflux.logging import describe_error

log = structlog.get_logger("ledgerflux.bus")


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


class Bus(_Provisioning, _Direct, _Publishing, _Consuming, _Requests):
    """A connection to NATS JetStream; see :func:`open_bus`."""

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
