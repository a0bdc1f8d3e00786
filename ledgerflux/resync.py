"""Resync requests over the bus: "send me a fresh book for this product".

A consumer that cannot restore a product's book (the normalizer after a restart without
a usable checkpoint) or an operator (``ledgerflux ctl resync PRODUCT``) asks the ingestor
that serves the product to resync it, with a core NATS request (nothing is stored):

* subject ``lf.ctl.resync.<exchange>.<symbol>`` (tokens as on every other subject), so
  the request reaches only the ingestor(s) serving that product, and nobody listening is
  known at once (no responders) instead of after a timeout;
* request ``{"product": "coinbase:BTC-USD", "reason": "normalizer restart"}``;
* reply ``{"ok": true, "feed": "coinbase", "product": ..., "mode": "rest"}`` (``mode``:
  ``rest`` or ``resubscribe``, how the ingestor resyncs; ``already`` when a resync of the
  product was under way) or ``{"ok": false, "error": "..."}``.

The ingestor answers at once; the resync itself runs afterwards as any other (``status:
gap`` with the reason, then ``status: resync`` and the snapshot on LF_TICKS).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

import attrs
import orjson
import structlog
import trio

from ledgerflux.bus import BusError, CoreMsg, NoResponders
from ledgerflux.errors import LedgerfluxError
from ledgerflux.subjects import split_product, subject_token

__all__ = [
    "RESYNC_PREFIX",
    "RequestBus",
    "ResyncReply",
    "ResyncTarget",
    "ResyncUnavailable",
    "request_resync",
    "resync_handler",
    "resync_subject",
    "serve_resync_requests",
]

log = structlog.get_logger(__name__)

RESYNC_PREFIX = "lf.ctl.resync"
DEFAULT_TIMEOUT_S = 5.0

ResyncAction = Literal["rest", "resubscribe", "already"]


class ResyncUnavailable(LedgerfluxError):
    """No ingestor answered a resync request (none serves the product, or none replied
    in time)."""


@attrs.frozen
class ResyncReply:
    """An ingestor's answer to a resync request."""

    ok: bool
    product: str
    feed: str | None = None
    mode: ResyncAction | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "feed": self.feed, "product": self.product, "mode": self.mode}
        return {"ok": False, "product": self.product, "error": self.error}


class Requester(Protocol):
    async def request(self, subject: str, data: bytes, *, timeout_s: float) -> bytes: ...


class RequestBus(Protocol):
    """What the serving side needs from :class:`ledgerflux.bus.Bus`."""

    def subscribe(
        self, subjects: Sequence[str], *, buffer: int = ...
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[list[CoreMsg]]]: ...

    async def respond(self, replies: Sequence[tuple[str, bytes]]) -> None: ...


class ResyncTarget(Protocol):
    """The ingestor side: :class:`ledgerflux.feeds.session.FeedSession`."""

    feed: str
    products: tuple[str, ...]

    def request_resync(self, product: str, reason: str) -> ResyncAction: ...


def resync_subject(product: str) -> str:
    """``resync_subject("coinbase:BTC-USD") == "lf.ctl.resync.coinbase.BTC-USD"``."""
    exchange, symbol = split_product(product)
    return f"{RESYNC_PREFIX}.{subject_token(exchange)}.{subject_token(symbol)}"


async def request_resync(
    bus: Requester, product: str, reason: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> ResyncReply:
    """Ask the ingestor serving ``product`` to resync it; its reply.

    Returns the reply whether the ingestor accepted (``ok``) or refused the request.
    Raises :class:`ResyncUnavailable` when no ingestor serves the product or none answers
    within ``timeout_s``, and ValueError for a malformed product. Cancellation abandons the
    request (the ingestor may still resync)."""
    subject = resync_subject(product)
    body = orjson.dumps({"product": product, "reason": reason})
    try:
        data = await bus.request(subject, body, timeout_s=timeout_s)
    except NoResponders:
        raise ResyncUnavailable(
            f"no ingestor serves {product} (nobody listens on {subject})"
        ) from None
    except BusError as exc:
        raise ResyncUnavailable(f"resync {product}: {exc}") from exc
    return _parse_reply(product, data)


def resync_handler(
    bus: Requester, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """The ``resync`` command for a daemon's control socket
    (``ledgerflux ctl <daemon> resync PRODUCT``): the same bus request as
    ``ledgerflux ctl resync PRODUCT``, so there is one resync path."""

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        product = request.get("product")
        reason = request.get("reason", "ledgerflux ctl")
        if not isinstance(product, str) or not isinstance(reason, str):
            return {"ok": False, "error": 'resync needs "product" (and an optional "reason")'}
        reply = await request_resync(bus, product, reason, timeout_s=timeout_s)
        return reply.to_json()

    return handle


def _parse_reply(product: str, data: bytes) -> ResyncReply:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        return ResyncReply(ok=False, product=product, error=f"unreadable reply {data[:200]!r}")
    if not obj["ok"]:
        return ResyncReply(ok=False, product=product, error=str(obj.get("error", "refused")))
    feed, mode = obj.get("feed"), obj.get("mode")
    return ResyncReply(
        ok=True,
        product=product,
        feed=feed if isinstance(feed, str) else None,
        mode=mode if mode in ("rest", "resubscribe", "already") else None,
    )


def answer(target: ResyncTarget, data: bytes) -> ResyncReply:
    """The ingestor's reply to one request payload (and the resync started, if accepted)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return ResyncReply(ok=False, product="", error=f"malformed JSON: {exc}")
    product = obj.get("product") if isinstance(obj, dict) else None
    reason = obj.get("reason", "") if isinstance(obj, dict) else ""
    if not isinstance(product, str) or not isinstance(reason, str):
        return ResyncReply(
            ok=False, product="", error='expected {"product": "<exchange>:<SYMBOL>", "reason": ""}'
        )
    if product not in target.products:
        return ResyncReply(
            ok=False, product=product, error=f"feed {target.feed} does not serve {product}"
        )
    mode = target.request_resync(product, reason or "requested")
    return ResyncReply(ok=True, product=product, feed=target.feed, mode=mode)


async def serve_resync_requests(
    bus: RequestBus,
    target: ResyncTarget,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer resync requests for ``target``'s products until cancelled.

    ``task_status.started()`` once subscribed. Each batch of requests is answered in one
    crossing, at once: the resyncs themselves run in the feed's own resync loop. A
    request without a reply subject is served but not answered. Cancellation unsubscribes
    (a request in flight gets no reply: its sender times out)."""
    subjects = [resync_subject(product) for product in target.products]
    async with bus.subscribe(subjects) as requests:
        task_status.started()
        async for batch in requests:
            replies: list[tuple[str, bytes]] = []
            for msg in batch:
                reply = answer(target, msg.data)
                log.info(
                    "resync.requested",
                    feed=target.feed,
                    product=reply.product,
                    ok=reply.ok,
                    mode=reply.mode,
                    error=reply.error,
                )
                if msg.reply:
                    replies.append((msg.reply, orjson.dumps(reply.to_json())))
            await bus.respond(replies)
