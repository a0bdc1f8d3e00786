"""The gateway daemon: LF_MD consumer + hub + Quart-Trio app on Hypercorn.

See docs/architecture.md and docs/protocol.md.

Nursery layout (drain order, docs/architecture.md): the LF_MD consumer is outermost, the HTTP server
innermost, so on drain the server stops first (no new connections, clients get ``drain``
and 1001) while events keep flowing until it is done; then the consumer is cancelled.
"""

from __future__ import annotations

import errno
import importlib.resources
import logging
import resource
import socket
import time
from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs
import hypercorn.config
import hypercorn.trio
import orjson
import structlog
import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from quart import Response, request, websocket
from quart_trio import QuartTrio

from ledgerflux.candles import INTERVAL_NS, candle_json, parse_time
from ledgerflux.codec import CodecError, decode
from ledgerflux.config import Config, ConfigError, GatewayConfig
from ledgerflux.gateway.auth import Authenticator, AuthError, Principal, parse_api_keys
from ledgerflux.gateway.hub import Hub, HubStats, Session
from ledgerflux.gateway.market_metrics import MarketCollector
from ledgerflux.gateway.ports import (
    BusLike,
    CandleStoreLike,
    ReadinessLike,
    StateFactory,
    StoreLike,
)
from ledgerflux.gateway.protocol import (
    CLOSE_POLICY,
    CLOSE_RATE_LIMITED,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    Ping,
    ProtocolError,
    Subscribe,
    TokenBucket,
    Unsubscribe,
    control,
    error_message,
    parse_request,
)
from ledgerflux.health import PortInUse
from ledgerflux.metrics import observe_pending
from ledgerflux.subjects import MD_STREAM, split_product

if TYPE_CHECKING:
    from ledgerflux.control import ControlContext

__all__ = ["GatewayInfo", "create_app", "serve_gateway"]

log = structlog.get_logger(__name__)

MD_FILTER: Final = "lf.md.>"
CLOSE_TIMEOUT_S: Final = 5.0
"""How long a close handshake may take before the handler gives up on the client."""
HTTP_DRAIN_GRACE_S: Final = 1.0
"""After the last subscriber closed, how long a drain waits for plain HTTP requests."""
RATE_LIMIT_STRIKES: Final = 10
"""Requests refused with ``rate_limited`` in a row before the client is closed with 4029."""
FD_RESERVE: Final = 256
"""File descriptors kept for everything but client sockets (NATS, PostgreSQL, logs, the
listener, accept bursts): ``max_clients`` + this must fit RLIMIT_NOFILE."""
CANDLE_CLOSE_GRACE_S: Final = 2.0
"""A minute's candle is closed this long after the minute ends (on the market clock,
:meth:`Hub.market_now`) when no trade of a later minute closed it first: room for trades
that arrive a little late."""
CANDLES_MAX: Final = 1440
"""Candles one ``/api/candles`` answer holds at most (a day of minutes); the newest win."""
CANDLES_DEFAULT: Final = 360
"""Candles ``/api/candles`` returns without ``limit``: the newest six hours of minutes."""
_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1


@attrs.frozen
class GatewayInfo:
    host: str
    port: int
    url: str
    """``http://host:port``: the live page at ``/``, the WebSocket at :attr:`ws_url`."""

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"


@attrs.define
class _Flags:
    ready: bool = False
    draining: bool = False
    process: ReadinessLike | None = None
    limits: GatewayConfig | None = None
    """The limits ``ctl gateway reload`` set (None: the configured ones); a connection
    takes them when it opens."""
    auth: tuple[Authenticator, frozenset[str]] | None = None
    """The authenticator and origin allow-list ``ctl gateway reload`` set (None: the
    configured ones); a connection takes them when it opens."""
    websockets: int = 0
    """WebSocket handlers running: the drain waits for them, not for plain HTTP
    connections."""
    no_websockets: trio.Event = attrs.field(factory=trio.Event)
    """Set while ``websockets`` is 0 (replaced when a handler starts)."""

    def websocket_started(self) -> None:
        if self.no_websockets.is_set():
            self.no_websockets = trio.Event()
        self.websockets += 1

    def websocket_ended(self) -> None:
        self.websockets -= 1
        if not self.websockets:
            self.no_websockets.set()

    @property
    def serving(self) -> bool:
        process_ready = self.process is None or self.process.is_ready
        return self.ready and not self.draining and process_ready


class _StatsCollector(Collector):
    def __init__(self, stats: HubStats) -> None:
        self.stats = stats

    def collect(self) -> Any:
        for field in attrs.fields(HubStats):
            metric = CounterMetricFamily(f"ledgerflux_gateway_{field.name}", field.metadata["help"])
            metric.add_metric([], getattr(self.stats, field.name))
            yield metric


def authenticator_for(gateway: GatewayConfig) -> Authenticator:
    """The credential check ``gateway`` configures. Raises ConfigError when the keys do
    not parse, or when no one could ever connect (no anonymous access and no key)."""
    try:
        keys = parse_api_keys(gateway.api_keys or "")
    except ValueError as exc:
        raise ConfigError(f"gateway.api_keys: {exc}") from None
    if not gateway.anonymous and not keys:
        raise ConfigError(
            "gateway.anonymous is false but gateway.api_keys is empty: no client could "
            "connect; set gateway.api_keys (or gateway.api_keys_file)"
        )
    return Authenticator(
        keys,
        anonymous=gateway.anonymous,
        max_skew_s=gateway.token_max_skew_s,
        max_ttl_s=gateway.token_max_ttl_s,
    )


def create_app(
    hub: Hub,
    gateway: GatewayConfig,
    flags: _Flags | None = None,
    store: StoreLike | None = None,
) -> QuartTrio:
    """The Quart-Trio app: ``/`` live page, ``/ws``, ``/healthz``, ``/readyz``, ``/metrics``,
    ``/api/products`` and ``/api/candles`` (from ``store``)."""
    flags = flags if flags is not None else _Flags(ready=True)
    configured_auth = (authenticator_for(gateway), frozenset(gateway.allowed_origins))
    per_ip: Counter[str] = Counter()
    app = QuartTrio(__name__)
    registry = CollectorRegistry()
    registry.register(_StatsCollector(hub.stats))
    registry.register(MarketCollector(lambda: hub.states))
    clients = Gauge("ledgerflux_gateway_clients", "Connected WebSocket clients", registry=registry)
    clients.set_function(lambda: len(hub.sessions))
    page = importlib.resources.files("ledgerflux.gateway").joinpath("page.html").read_bytes()

    @app.route("/")
    async def index() -> Response:
        return Response(page, content_type="text/html; charset=utf-8")

    @app.route("/api/products")
    async def products() -> Response:
        return _json({"products": _products(hub)})

    @app.route("/api/candles")
    async def candles() -> Response:
        return await _candles(hub, store, request.args)

    @app.route("/healthz")
    async def healthz() -> Response:
        return Response("ok\n", content_type="text/plain")

    @app.route("/readyz")
    async def readyz() -> Response:
        if flags.serving:
            return Response("ready\n", content_type="text/plain")
        reason = "draining\n" if flags.draining else "starting\n"
        return Response(reason, status=503, content_type="text/plain")

    @app.route("/metrics")
    async def metrics() -> Response:
        # The process-wide registry (bus, store metrics) plus this gateway's own.
        body = generate_latest(REGISTRY) + generate_latest(registry)
        return Response(body, content_type=CONTENT_TYPE_LATEST)

    def refuse(status: int, reason: str, client: str) -> Response:
        # Before the WebSocket accept: the client gets a plain HTTP answer (docs/protocol.md,
        # "Authentication"); counted by the caller.
        log.info("websocket refused", client=client, status=status, reason=reason)
        return Response(reason + "\n", status=status, content_type="text/plain")

    @app.websocket("/ws")
    async def ws() -> Response | None:
        peer = websocket.scope.get("client")
        client = _peer(peer)
        ip = str(peer[0]) if isinstance(peer, list | tuple) and peer else "-"
        origin = websocket.headers.get("Origin")
        authenticator, origins = flags.auth or configured_auth
        if origins and origin is not None and origin not in origins:
            hub.stats.origin_refused += 1
            return refuse(403, "origin not allowed", client)
        try:
            principal = authenticator.authenticate(_credential(), time.time())
        except AuthError as exc:
            hub.stats.auth_refused += 1
            return refuse(401, exc.reason, client)
        if per_ip[ip] >= (flags.limits or gateway).max_clients_per_ip:
            hub.stats.ip_limited += 1
            return refuse(429, "too many connections from this address", client)
        per_ip[ip] += 1
        flags.websocket_started()
        try:
            await websocket.accept()
            limits = flags.limits or gateway  # what a reload changed, for new connections
            if hub.draining or len(hub.sessions) >= limits.max_clients:
                reason = "draining" if hub.draining else "too many clients"
                hub.stats.clients_refused += 1
                await websocket.close(CLOSE_TRY_AGAIN, reason)
                return None
            await _serve_session(hub, limits, client, principal)
        finally:
            flags.websocket_ended()
            per_ip[ip] -= 1
            if not per_ip[ip]:
                del per_ip[ip]
        return None

    return app


def _credential() -> str | None:
    """The credential the client presents: ``Authorization: Bearer <token or id:secret>``,
    else the ``token`` query parameter (browsers cannot set WebSocket headers; API keys
    are not accepted in URLs, which end up in logs)."""
    header = websocket.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = websocket.args.get("token")
    if token and token.startswith("lf1."):
        return str(token)
    return "\0invalid" if token else None


async def _serve_session(
    hub: Hub, gateway: GatewayConfig, client: str, principal: Principal
) -> None:
    session = hub.open_session(client, principal)
    try:
        # A token's connection ends when the token does (4003): the client reconnects
        # with a fresh one and resumes from its last seq.
        deadline = trio.current_time() + (
            principal.expires + gateway.token_max_skew_s - time.time()
            if principal.expires is not None
            else float("inf")
        )
        code, reason = CLOSE_TOKEN_EXPIRED, "token expired"
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_requests, hub, session, gateway)
                code, reason = await session.run_sender(websocket.send)
                nursery.cancel_scope.cancel()
        if code == CLOSE_TOKEN_EXPIRED:
            hub.stats.tokens_expired += 1
            log.info("token expired: connection closed", client=client, session=session.id)
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await websocket.close(code, reason)
    finally:
        hub.detach(session)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def _http_error(status: int, code: str, message: str) -> Response:
    return _json({"error": code, "message": message}, status)


def _products(hub: Hub) -> list[dict[str, Any]]:
    """The products the gateway serves, with their position and last trade price."""
    out = []
    for product, state in sorted(hub.states.items()):
        body = state.to_json()
        trade = body.get("trade") or {}
        out.append(
            {"product": product, "seq": state.seq, "epoch": state.epoch, "last": trade.get("price")}
        )
    return out


async def _candles(hub: Hub, store: object, args: Any) -> Response:
    """``/api/candles?product=P&start=T&end=T&limit=N``: stored one-minute candles whose
    minute starts in ``[start, end)`` (no bound when not given), the newest ``limit`` of
    them, oldest first; times as RFC 3339 or unix seconds."""
    product = args.get("product", "")
    try:
        split_product(product)
    except ValueError as exc:
        return _http_error(400, "bad_product", f"product: {exc}")
    try:
        start = parse_time(args["start"]) if "start" in args else None
        end = parse_time(args["end"]) if "end" in args else None
        limit = int(args.get("limit", CANDLES_DEFAULT))
    except ValueError as exc:
        return _http_error(400, "bad_request", str(exc))
    if start is not None and end is not None and start >= end:
        return _http_error(400, "bad_request", "start must be before end")
    if not 1 <= limit <= CANDLES_MAX:
        return _http_error(400, "bad_request", f"limit must be in 1..{CANDLES_MAX}")
    if not isinstance(store, CandleStoreLike):
        return _http_error(503, "no_candles", "this gateway has no candle store")
    try:
        rows = await store.candles(
            product, _NS_MIN if start is None else start, _NS_MAX if end is None else end, limit
        )
    except Exception as exc:
        # The store is down or refused the query: an honest 503, logged.
        log.warning("candle query failed", product=product, error=str(exc))
        return _http_error(503, "store_unavailable", "the candle store did not answer")
    # Every stored minute is closed but the one the gateway still has open.
    live = hub.candles.open_candle(product)
    open_start = live.start if live is not None else None
    return _json(
        {
            "product": product,
            "interval_s": INTERVAL_NS // 10**9,
            "start": start,
            "end": end,
            "candles": [candle_json(c, closed=c.start != open_start) for c in rows],
        }
    )


async def _read_requests(hub: Hub, session: Session, gateway: GatewayConfig) -> None:
    """Read and answer client requests until the socket closes or the session ends."""
    bucket = TokenBucket(gateway.requests_per_s, gateway.requests_burst)
    strikes = 0
    while session.close is None:
        data = await websocket.receive()
        if isinstance(data, bytes):
            session.kill(CLOSE_POLICY, "binary frames are not supported")
            return
        if len(data) > gateway.max_message_bytes:
            # Hypercorn enforces the same limit on the frame; this covers fragmented input.
            session.kill(CLOSE_TOO_BIG, "message too big")
            return
        if not bucket.take(trio.current_time()):
            hub.stats.rate_limited += 1
            strikes += 1
            if strikes > RATE_LIMIT_STRIKES:
                session.kill(CLOSE_RATE_LIMITED, "rate limited")
                return
            session.send_control(error_message("rate_limited", "too many requests"))
            continue
        strikes = 0
        try:
            request = parse_request(data)
            if isinstance(request, Subscribe):
                _check_products(hub, session, gateway, request.products, request.id)
                known = set(session.subs) | set(request.products)
                if len(known) > gateway.max_subscriptions:
                    raise ProtocolError(
                        "too_many_subscriptions",
                        f"at most {gateway.max_subscriptions} products per connection",
                        request.id,
                    )
                # Reply first: the snapshots and backfill follow the acknowledgement. A
                # product followed live (no snapshot, no from_seq) starts after its current
                # seq, which the reply says; nothing is ingested before hub.subscribe
                # registers the session (no checkpoint in between), so it is exact.
                live = [
                    p
                    for p in request.products
                    if p not in request.from_seq and not request.snapshot
                ]
                session.send_control(
                    control(
                        "subscribed",
                        id=request.id,
                        products=list(request.products),
                        channels=sorted(request.channels),
                        **({"live_from": hub.positions_of(live)} if live else {}),
                    )
                )
                await hub.subscribe(session, request)
            elif isinstance(request, Unsubscribe):
                removed = hub.unsubscribe(session, request.products)
                if not removed:
                    raise ProtocolError("not_subscribed", "none of these products", request.id)
                session.send_control(control("unsubscribed", id=request.id, products=removed))
            elif isinstance(request, Ping):
                session.send_control(control("pong", id=request.id))
        except ProtocolError as exc:
            hub.stats.protocol_errors += 1
            session.send_control(error_message(exc.code, exc.message, exc.request_id))


def _check_products(
    hub: Hub, session: Session, gateway: GatewayConfig, products: tuple[str, ...], request_id: Any
) -> None:
    for product in products:
        if not session.principal.allows(product):
            hub.stats.forbidden_products += 1
            raise ProtocolError(
                "forbidden_product", f"the token does not allow {product!r}", request_id
            )
        if gateway.known_products_only and product not in hub.states:
            raise ProtocolError("unknown_product", f"unknown product {product!r}", request_id)


def raise_fd_limit(max_clients: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a default soft limit of 1024 makes
    Hypercorn log ``accept returned EMFILE`` long before ``max_clients``); returns it.
    Raises ConfigError when ``max_clients`` + FD_RESERVE cannot fit the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    elif hard == resource.RLIM_INFINITY:
        soft = max(soft, max_clients + FD_RESERVE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if max_clients + FD_RESERVE > soft:
        raise ConfigError(
            f"gateway.max_clients: {max_clients} connections (+{FD_RESERVE} descriptors for "
            f"the rest) do not fit RLIMIT_NOFILE, whose hard limit is {hard}: lower "
            "gateway.max_clients or raise the limit (systemd LimitNOFILE=, ulimit -Hn)"
        )
    return soft


RELOADABLE_LIMITS: Final = (
    "max_clients",
    "max_subscriptions",
    "requests_per_s",
    "requests_burst",
    "max_clients_per_ip",
)
"""The ``[gateway]`` limits a reload applies (to connections opened after it)."""
RELOADABLE_AUTH: Final = (
    "anonymous",
    "api_keys",
    "token_max_skew_s",
    "token_max_ttl_s",
    "allowed_origins",
)
"""The ``[gateway]`` access keys a reload applies (to connections opened after it): keys
rotate without a restart. ``api_keys`` is reported as ``"changed"``, never echoed."""


def _reload_limits(flags: _Flags, configured: GatewayConfig, config: Config) -> dict[str, Any]:
    current = flags.limits or configured
    changes = {
        key: getattr(config.gateway, key)
        for key in (*RELOADABLE_LIMITS, *RELOADABLE_AUTH)
        if getattr(config.gateway, key) != getattr(current, key)
    }
    if not changes:
        return {}
    if any(key in RELOADABLE_AUTH for key in changes):
        # Built before anything changes: a bad key set leaves the running one in place.
        authenticator = authenticator_for(config.gateway)
        flags.auth = (authenticator, frozenset(config.gateway.allowed_origins))
    flags.limits = attrs.evolve(current, **changes)
    return {
        f"gateway.{key}": "changed" if key == "api_keys" else value
        for key, value in changes.items()
    }


async def serve_gateway(
    config: Config,
    *,
    bus: BusLike,
    store: StoreLike,
    readiness: ReadinessLike | None = None,
    drain: trio.Event | None = None,
    state_factory: StateFactory | None = None,
    control: ControlContext | None = None,
    task_status: trio.TaskStatus[GatewayInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until ``drain`` is set or the caller cancels.

    With *control*, ``ctl gateway reload`` changes the per-connection limits
    (:data:`RELOADABLE_LIMITS`) for connections opened afterwards.

    Start: load the latest state per product from ``store``, replay LF_MD from the oldest
    loaded state's stream position (or the stream's start; new events only when there is
    no history), then listen. ``task_status.started(GatewayInfo)`` is called once caught up
    and listening (the bound port is reported, so port 0 works).

    Drain (``drain`` set, or cancellation): /readyz turns 503, the listener closes, every
    client gets ``{"type": "drain"}`` after its queued events and a 1001 close, bounded by
    ``config.drain_timeout_s``; then the consumer stops and the function returns.
    """
    if state_factory is None:
        from ledgerflux.state import ProductState

        state_factory = ProductState
    gw = config.gateway
    raise_fd_limit(gw.max_clients)
    hub = Hub(
        state_factory=state_factory,
        ring_size=gw.ring_size,
        send_queue=gw.send_queue,
        send_queue_bytes=gw.send_queue_bytes,
        slow_consumer_after_s=gw.slow_consumer_after_s,
        store=store,
    )
    rows = await store.latest_states()
    positions = []
    for row in rows:
        try:
            hub.load_state(dict(row.state), row.stream_seq)
        except ValueError as exc:
            # A stored state we cannot read: rebuild that product from the stream instead.
            hub.stats.bad_states += 1
            log.warning("ignoring a bad stored state", product=row.product, error=str(exc))
            continue
        if row.stream_seq is not None:
            positions.append(row.stream_seq)
    stream = await bus.stream_state(MD_STREAM)
    start_seq: int | None = min(positions) + 1 if positions else None
    if stream.messages:
        if start_seq is None or start_seq > stream.last_seq + 1:
            # Nothing stored, or the stream is behind the store (it was recreated): replay
            # all of it; events at or below a product's stored seq are skipped as duplicates.
            start_seq = stream.first_seq
        else:
            start_seq = max(start_seq, stream.first_seq)
    target = int(stream.last_seq)
    caught_up = trio.Event()
    if start_seq is None or start_seq > target:
        caught_up.set()

    await _seed_candles(hub, store)
    flags = _Flags(process=readiness)
    app = create_app(hub, gw, flags, store)
    if control is not None:
        control.on_reload("gateway", partial(_reload_limits, flags, gw))
        control.on_status(
            "gateway",
            lambda: {
                "products": sorted(hub.states),
                "clients": len(hub.sessions),
                "limits": {k: getattr(flags.limits or gw, k) for k in RELOADABLE_LIMITS},
            },
        )
    hconfig = hypercorn.config.Config()
    hconfig.bind = [f"{gw.host}:{gw.port}"]
    hconfig.websocket_max_message_size = gw.max_message_bytes
    hconfig.graceful_timeout = config.drain_timeout_s
    # Hypercorn's default listen backlog (100) drops handshakes when thousands of clients
    # reconnect at once (after another gateway drained, say); the kernel caps it at
    # net.core.somaxconn.
    hconfig.backlog = min(gw.max_clients, 4096)
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    _check_bind(gw.host, gw.port)

    async with trio.open_nursery() as consumer_nursery:
        consumer_nursery.start_soon(_consume, hub, bus, start_seq, target, caught_up)
        consumer_nursery.start_soon(_close_candles, hub)
        await caught_up.wait()
        stop_http = trio.Event()
        http_done = trio.Event()
        http_scope = trio.CancelScope(shield=True)

        async def run_http(task_status: trio.TaskStatus[list[str]]) -> None:
            # Shielded so that a cancelled caller still gets a drain, not a dropped
            # socket; the finally below bounds it with the drain deadline.
            try:
                with http_scope:
                    await hypercorn.trio.serve(
                        app, hconfig, shutdown_trigger=stop_http.wait, task_status=task_status
                    )
            finally:
                http_done.set()

        binds = await consumer_nursery.start(run_http)
        host, port = _parse_bind(binds[0])
        # ``readiness`` is process-wide: the caller marks it ready once everything it runs
        # has started; /readyz here needs both.
        flags.ready = True
        task_status.started(GatewayInfo(host, port, f"http://{host}:{port}"))
        try:
            if drain is not None:
                await drain.wait()
            else:
                await trio.sleep_forever()
        finally:
            with trio.move_on_after(config.drain_timeout_s + 1.0) as drain_scope:
                drain_scope.shield = True
                flags.draining = True
                if readiness is not None:
                    readiness.set_draining()
                hub.drain()
                stop_http.set()
                # Subscribers get their drain and close; plain HTTP gets a short grace
                # after that: a keep-alive connection (a metrics scraper) would otherwise
                # hold Hypercorn's shutdown until the deadline.
                if flags.websockets:
                    await flags.no_websockets.wait()
                with trio.move_on_after(HTTP_DRAIN_GRACE_S):
                    await http_done.wait()
            if drain_scope.cancelled_caught:
                log.warning("gateway.drain_deadline", open_websockets=flags.websockets)
            http_scope.cancel()
            consumer_nursery.cancel_scope.cancel()


async def _seed_candles(hub: Hub, store: object) -> None:
    """Start each product's live candle from the newest stored one, so that a gateway
    started mid-minute shows the whole minute (trades read again are recognised by their
    stream position). A store without candles, or one that fails here, only means live
    candles start with the next trade (logged)."""
    if not isinstance(store, CandleStoreLike):
        return
    try:
        stored = await store.latest_candles()
    except Exception as exc:
        hub.stats.store_errors += 1
        log.warning("cannot load the stored candles", error=str(exc))
        return
    for candle in stored:
        hub.candles.seed(candle)


async def _close_candles(hub: Hub) -> None:
    """Close minutes that ended without a later trade, once a second."""
    while True:
        hub.close_candles(trio.current_time(), int(CANDLE_CLOSE_GRACE_S * 1e9))
        await trio.sleep(1.0)


async def _consume(
    hub: Hub, bus: BusLike, start_seq: int | None, target: int, caught_up: trio.Event
) -> None:
    """Feed LF_MD into the hub, in stream order, never skipping what the stream still holds.

    * Stream positions are checked: a message below the next expected position is a
      redelivery (skipped); one above it means the ordered consumer jumped (recreated
      after a server restart, say). If the stream still holds the expected position the
      consumer is reopened there; if it does not, the messages are gone (retention) and
      the hub's per-product check turns the hole into ``status: reset`` for subscribers.
    * A per-product ``seq`` jump (the stored state older than the stream, a hole) is
      filled from the store; what the store does not hold either is a hole.
    * A message that does not decode is counted and logged (the normalizer's DLQ holds
      rejected input; LF_MD should never carry it).
    """
    expected = start_seq
    retried: int | None = None
    while True:
        async with bus.ordered(MD_STREAM, MD_FILTER, start_seq=expected) as batches:
            reopen = False
            async for batch in batches:
                observe_pending("gateway", getattr(batch[-1], "num_pending", None))
                for msg in batch:
                    position = int(msg.stream_seq)
                    if expected is not None and position < expected:
                        hub.stats.duplicates += 1
                        continue
                    if expected is not None and position > expected and retried != expected:
                        stream = await bus.stream_state(MD_STREAM)
                        if stream.messages and stream.first_seq <= expected <= stream.last_seq:
                            hub.stats.stream_jumps += 1
                            log.warning(
                                "LF_MD consumer skipped messages the stream holds: re-reading",
                                expected=expected,
                                got=position,
                            )
                            retried = expected
                            reopen = True
                            break
                        log.warning(
                            "LF_MD messages no longer retained", expected=expected, got=position
                        )
                    await _ingest(hub, msg)
                    # One event fanned out to every subscriber is a synchronous burst of
                    # offers; yield after each so that senders, handshakes and /healthz
                    # run between events instead of after a whole batch (512 events x
                    # 1,000 subscribers stalled the process for seconds).
                    await trio.lowlevel.checkpoint()
                    expected = position + 1
                    if position >= target:
                        caught_up.set()
                if reopen:
                    break
            if not reopen:
                raise RuntimeError("LF_MD consumer ended")


async def _ingest(hub: Hub, msg: Any) -> None:
    try:
        event = decode(msg.data)
    except CodecError as exc:
        hub.stats.bad_events += 1
        log.warning("undecodable LF_MD message", stream_seq=msg.stream_seq, error=str(exc))
        return
    text = msg.data.decode() if isinstance(msg.data, bytes) else str(msg.data)
    gap = hub.offer(event, text, msg.stream_seq)
    if gap is not None:
        await hub.fill_gap(gap)
        assert gap.event is not None
        hub.ingest(gap.event, gap.texts, gap.stream_seq, hole=True)


def _check_bind(host: str, port: int) -> None:
    """Fail early with a named error when the address is taken: Hypercorn would raise a bare
    OSError from deep inside its nursery. Binds the way Hypercorn will (SO_REUSEADDR, every
    address the host name resolves to), then releases the sockets at once."""
    if port == 0:
        return
    for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(
                        f"gateway: {host}:{port} is already in use (gateway.port)"
                    ) from None
                raise


def _peer(client: Any) -> str:
    """``host:port`` of the ASGI scope's ``client`` (for log lines), ``-`` when unknown."""
    if isinstance(client, list | tuple) and len(client) == 2:
        return f"{client[0]}:{client[1]}"
    return "-"


def _parse_bind(bind: str) -> tuple[str, int]:
    # Hypercorn reports "http://host:port" (IPv6 hosts in brackets).
    hostport = bind.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)
