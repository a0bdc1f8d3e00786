"""Per-process ``/healthz``, ``/readyz`` and ``/metrics`` over HTTP/1.1 (h11 on Trio).

Kept tiny on purpose: probes and Prometheus scrapes only. The gateway serves the same
three paths on its own port; every other daemon runs this server on ``health_port``.

* ``/healthz``: 200 while the process runs (liveness).
* ``/readyz``: 503 until :meth:`Readiness.set_ready`, 200 after, 503 again once
  :meth:`Readiness.set_draining` is called (so a load balancer stops sending work first).
* ``/metrics``: the Prometheus text format of *registry*.
"""

from __future__ import annotations

import errno

import attrs
import h11
import structlog
import trio
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from ledgerflux import metrics as _process_metrics  # noqa: F401 - build_info on every /metrics
from ledgerflux.errors import LedgerfluxError

__all__ = ["PortInUse", "Readiness", "serve_health"]

log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 32
"""Probe connections served at once; further ones wait in the listen backlog
(backpressure: a flood of scrapes cannot grow memory)."""
REQUEST_TIMEOUT_S = 10.0
"""A connection idle or slow for this long is closed (a stuck client cannot pin a slot)."""
MAX_REQUEST_BYTES = 16 * 1024


class PortInUse(LedgerfluxError):
    """The address to listen on is already taken."""


@attrs.define
class Readiness:
    """Whether this process should receive work: not yet, yes, or no longer (draining)."""

    _ready: bool = False
    _draining: bool = False

    def set_ready(self) -> None:
        self._ready = True

    def set_draining(self) -> None:
        self._draining = True

    @property
    def is_ready(self) -> bool:
        return self._ready and not self._draining

    @property
    def is_draining(self) -> bool:
        return self._draining


async def open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """TCP listeners on *host*:*port*; :class:`PortInUse` names the address if it is taken."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"cannot listen on {host}:{port}: address already in use") from None
        raise LedgerfluxError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


async def serve_health(
    host: str,
    port: int,
    *,
    readiness: Readiness,
    registry: CollectorRegistry = REGISTRY,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the probes on *host*:*port* (0 picks a free port) until cancelled.

    ``task_status.started(bound_port)`` once listening. Raises :class:`PortInUse` before
    starting if the port is taken. Cancellation closes the listeners and every open
    connection at once: probes carry no state worth draining.
    """
    listeners = await open_listeners(host, port)
    if port == 0:
        # Port 0 on a name with several addresses gives each its own random port; keep one
        # so that the port we report is the only one served.
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound = listeners[0].socket.getsockname()[1]
    # A Semaphore, not a CapacityLimiter: the accept loop acquires, the connection task releases.
    limiter = trio.Semaphore(MAX_CONNECTIONS)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, limiter, readiness, registry)
        log.debug("health.listening", host=host, port=bound)
        task_status.started(bound)


async def _accept_loop(
    listener: trio.SocketListener,
    limiter: trio.Semaphore,
    readiness: Readiness,
    registry: CollectorRegistry,
) -> None:
    async with listener, trio.open_nursery() as nursery:
        while True:
            await limiter.acquire()
            try:
                stream = await listener.accept()
            except BaseException:
                limiter.release()
                raise
            nursery.start_soon(_serve_connection, stream, limiter, readiness, registry)


async def _serve_connection(
    stream: trio.SocketStream,
    limiter: trio.Semaphore,
    readiness: Readiness,
    registry: CollectorRegistry,
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        async with stream:
            try:
                await _serve_requests(stream, conn, readiness, registry)
            except h11.RemoteProtocolError as exc:
                # Not HTTP (400), or too large (431): answer while h11 still can, then
                # close. A malformed probe affects that probe only.
                await _send_error(stream, conn, exc.error_status_hint)
    except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        limiter.release()


async def _serve_requests(
    stream: trio.SocketStream,
    conn: h11.Connection,
    readiness: Readiness,
    registry: CollectorRegistry,
) -> None:
    """Answer requests on one connection (keep-alive) until the client is done or idle."""
    while True:
        with trio.move_on_after(REQUEST_TIMEOUT_S) as timeout:
            request = await _next_request(stream, conn)
        if timeout.cancelled_caught or request is None:
            return
        status, content_type, body = _respond(request, readiness, registry)
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        data = conn.send(h11.Response(status_code=status, headers=headers))
        data += conn.send(h11.Data(data=body)) if request.method != b"HEAD" else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        if conn.our_state is h11.MUST_CLOSE:
            return
        conn.start_next_cycle()


async def _send_error(stream: trio.SocketStream, conn: h11.Connection, status: int) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    headers = [(b"content-length", b"0"), (b"connection", b"close")]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data += conn.send(h11.EndOfMessage())
    with trio.move_on_after(REQUEST_TIMEOUT_S):
        await stream.send_all(data)


async def _next_request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    """The next request with its body consumed, or None when the client is done."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(MAX_REQUEST_BYTES)
            conn.receive_data(data)  # b"" tells h11 the peer closed
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _respond(
    request: h11.Request, readiness: Readiness, registry: CollectorRegistry
) -> tuple[int, bytes, bytes]:
    text = b"text/plain; charset=utf-8"
    if request.method not in (b"GET", b"HEAD"):
        return 405, text, b"method not allowed\n"
    path = request.target.split(b"?", 1)[0]
    if path == b"/healthz":
        return 200, text, b"ok\n"
    if path == b"/readyz":
        if readiness.is_ready:
            return 200, text, b"ready\n"
        return 503, text, b"draining\n" if readiness.is_draining else b"starting\n"
    if path == b"/metrics":
        return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(registry)
    return 404, text, b"not found\n"
