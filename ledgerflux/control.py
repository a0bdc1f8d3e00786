"""The per-daemon control plane: pynng REQ/REP on ``ipc://<data_dir>/run/<daemon>.sock``.

Requests and replies are JSON objects. A request names a command, ``{"cmd": "status"}``,
plus its arguments (``{"cmd": "resync", "product": "coinbase:BTC-USD"}``); the reply is
the handler's object with ``"ok": true`` added, or ``{"ok": false, "error": "..."}`` for
malformed JSON, an unknown command or a handler that raised. A bad request never takes the
daemon down. ``ledgerflux ctl <daemon> <cmd>`` is the client.

pynng's ``arecv``/``asend`` run on Trio (pynng picks the event loop through sniffio).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import orjson
import pynng
import structlog
import trio

from ledgerflux.errors import LedgerfluxError
from ledgerflux.health import Readiness
from ledgerflux.metrics import registry_summary
from ledgerflux.resync import Requester, ResyncUnavailable, request_resync

__all__ = [
    "ControlContext",
    "ControlError",
    "Handler",
    "Reloader",
    "control_path",
    "control_request",
    "role_handlers",
    "serve_control",
    "standard_handlers",
]

log = structlog.get_logger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Reloader = Callable[[Any], Mapping[str, Any]]
"""Applies what it can of a freshly loaded :class:`~ledgerflux.config.Config`; returns
``{config key: new value}`` for what it changed."""

CONTEXTS = 4
"""Requests served at once: a slow ``drain`` does not block a ``status``. Further
requests queue inside nng (bounded by its own buffers)."""
MAX_REQUEST_BYTES = 64 * 1024


class ControlError(LedgerfluxError):
    """The control socket could not be reached or did not answer in time."""


def control_path(data_dir: str | os.PathLike[str], daemon: str) -> Path:
    """Where *daemon*'s control socket lives under *data_dir*."""
    return Path(data_dir) / "run" / f"{daemon}.sock"


@attrs.define(eq=False)
class ControlContext:
    """What the running daemons hand to their control sockets once they have it.

    ``bus``: the process's bus, for ``resync`` (set by ``serve_up``/``serve_daemon`` once
    connected; before that ``resync`` answers that the daemon is not connected yet).
    ``reloaders``: what each daemon can change live on ``reload`` (the gateway's limits);
    the log level and format are handled by the host.
    """

    bus: Requester | None = None
    reloaders: dict[str, Reloader] = attrs.field(factory=dict)
    statuses: dict[str, Callable[[], Mapping[str, Any]]] = attrs.field(factory=dict)
    """Per role: fields a daemon adds to its ``status`` (the gateway: products, clients)."""

    def on_reload(self, name: str, reloader: Reloader) -> None:
        self.reloaders[name] = reloader

    def on_status(self, role: str, fields: Callable[[], Mapping[str, Any]]) -> None:
        self.statuses[role] = fields


def role_handlers(
    role: str,
    *,
    readiness: Readiness,
    on_drain: Callable[[], None],
    context: ControlContext,
    reload: Callable[[], Awaitable[Mapping[str, Any]]],
) -> dict[str, Handler]:
    """``status | drain | resync | reload`` for the control socket of *role*
    (``up``, ``ingest-<feed>``, ``normalize-<shard>``, ``snapshot``, ``gateway``).

    ``status`` adds the role's products and counters (its metrics from the process
    registry, summed over labels); ``resync`` sends the bus request every resync takes
    (:func:`ledgerflux.resync.request_resync`); ``reload`` calls *reload*.
    """
    prefixes, labels = _role_metrics(role)

    def status() -> Mapping[str, Any]:
        reply = registry_summary(prefixes, labels=labels)
        own = context.statuses.get(role)
        if own is not None:
            reply.update(own())
        elif role == "normalize":
            # A `normalize` process serving every shard: each shard's fields under its name.
            shards = {
                name: fields()
                for name, fields in sorted(context.statuses.items())
                if name.startswith("normalize-")
            }
            if shards:
                reply["shards"] = shards
        return reply

    handlers = standard_handlers(role, readiness=readiness, on_drain=on_drain, status=status)

    async def handle_resync(request: dict[str, Any]) -> dict[str, Any]:
        product = request.get("product")
        reason = request.get("reason", f"ledgerflux ctl {role} resync")
        if not isinstance(product, str) or not isinstance(reason, str):
            return {"ok": False, "error": 'resync needs "product" (and an optional "reason")'}
        if context.bus is None:
            return {"ok": False, "error": f"{role} is not connected to NATS yet"}
        try:
            reply = await request_resync(context.bus, product, reason)
        except ResyncUnavailable as exc:
            return {"ok": False, "product": product, "error": str(exc)}
        except ValueError as exc:
            return {"ok": False, "product": product, "error": f"bad product: {exc}"}
        return reply.to_json()

    async def handle_reload(request: dict[str, Any]) -> dict[str, Any]:
        return dict(await reload())

    handlers["resync"] = handle_resync
    handlers["reload"] = handle_reload
    return handlers


def _role_metrics(role: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """The metric prefixes (and label filter) ``status`` reports for *role*."""
    name, _, arg = role.partition("-")
    if name == "normalize" and arg:
        return ("ledgerflux_normalize_",), {"shard": arg}
    if name in ("normalize", "ingest", "snapshot", "gateway"):
        extra = ("ledgerflux_retention_",) if name == "snapshot" else ()
        return (f"ledgerflux_{name}_", *extra), {}
    return ("ledgerflux_",), {}


def _address(path: str | os.PathLike[str]) -> str:
    return f"ipc://{os.fspath(path)}"


def standard_handlers(
    daemon: str,
    *,
    readiness: Readiness,
    on_drain: Callable[[], None],
    status: Callable[[], Mapping[str, Any]] | None = None,
) -> dict[str, Handler]:
    """``status`` and ``drain`` as every daemon answers them; a daemon adds its own
    (``resync``, ``reload``) to the returned dict.

    ``status`` replies ``{"daemon", "pid", "ready", "draining", "uptime_s"}`` plus what the
    optional *status* callable returns; ``drain`` calls *on_drain* (the same callback as the
    first SIGTERM) and replies ``{"draining": true}``.
    """
    started = time.monotonic()

    async def handle_status(request: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "daemon": daemon,
            "pid": os.getpid(),
            "ready": readiness.is_ready,
            "draining": readiness.is_draining,
            "uptime_s": round(time.monotonic() - started, 3),
        }
        if status is not None:
            reply.update(status())
        return reply

    async def handle_drain(request: dict[str, Any]) -> dict[str, Any]:
        on_drain()
        return {"draining": True}

    return {"status": handle_status, "drain": handle_drain}


async def serve_control(
    path: str | os.PathLike[str],
    handlers: Mapping[str, Handler],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer control requests on the ipc socket at *path* until cancelled.

    Creates the parent directory; ``task_status.started()`` once listening. A handler
    receives the whole request object and returns the reply object. Cancellation closes the
    socket (a request being handled gets no reply; the client's timeout reports it) and
    removes the socket file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sock = pynng.Rep0(recv_max_size=MAX_REQUEST_BYTES)
        sock.listen(_address(path))
    except pynng.NNGException as exc:
        raise ControlError(f"cannot listen on control socket {path}: {exc}") from None
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(CONTEXTS):
                nursery.start_soon(_serve_context, sock.new_context(), handlers)
            task_status.started()
    finally:
        sock.close()
        path.unlink(missing_ok=True)


async def _serve_context(context: pynng.Context, handlers: Mapping[str, Handler]) -> None:
    with context:
        while True:
            data = await context.arecv()
            reply = await handle_request(data, handlers)
            await context.asend(orjson.dumps(reply))


async def handle_request(data: bytes, handlers: Mapping[str, Handler]) -> dict[str, Any]:
    """One request to one reply; errors become ``{"ok": false, "error": ...}``."""
    try:
        request = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return {"ok": False, "error": f"malformed JSON: {exc}"}
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return {"ok": False, "error": 'expected a JSON object with a string "cmd"'}
    cmd = request["cmd"]
    handler = handlers.get(cmd)
    if handler is None:
        known = ", ".join(sorted(handlers)) or "none"
        return {"ok": False, "error": f"unknown command {cmd!r} (known: {known})"}
    try:
        reply = await handler(request)
    except Exception as exc:
        # The daemon keeps serving: a failed command is the operator's answer, not a crash.
        log.exception("control.handler_failed", cmd=cmd)
        return {"ok": False, "error": f"{cmd} failed: {type(exc).__name__}: {exc}"}
    return {"ok": True, **reply}


async def control_request(
    path: str | os.PathLike[str], request: Mapping[str, Any], timeout_s: float = 5.0
) -> dict[str, Any]:
    """Send one *request* to the daemon listening at *path*; return its reply object.

    Raises :class:`ControlError` if nothing listens there or no reply comes within
    *timeout_s*. Cancellation abandons the request (REQ/REP has no cancel message).
    """
    try:
        sock = pynng.Req0(dial=_address(path), block_on_dial=True)
    except pynng.NNGException as exc:
        raise ControlError(
            f"no daemon is listening on {os.fspath(path)} ({exc}); is it running with the "
            "same data_dir?"
        ) from None
    with sock:
        try:
            with trio.fail_after(timeout_s):
                await sock.asend(orjson.dumps(dict(request)))
                data = await sock.arecv()
        except trio.TooSlowError:
            raise ControlError(f"no reply from {os.fspath(path)} within {timeout_s:g} s") from None
    reply = orjson.loads(data)
    if not isinstance(reply, dict):
        raise ControlError(f"unexpected reply from {os.fspath(path)}: {reply!r}")
    return reply
