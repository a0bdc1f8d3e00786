"""``ledgerflux.client``: a Trio client of the gateway that resumes across reconnects.

::

    async with open_client("ws://127.0.0.1:8000/ws") as client:
        await client.subscribe(["coinbase:BTC-USD"], snapshot=True)
        async for message in client:
            print(message["type"], message.get("seq"))

What the loop sees is one consistent stream per product, whatever happens to the
connection:

* a ``snapshot`` (when asked for), then the events after it, in ``seq`` order, each once;
* a book snapshot sent in parts, or a ``snapshot`` reply in parts, arrives as **one**
  message (the parts' levels concatenated, no ``part``/``parts`` keys); an incomplete
  collection is never shown;
* when the connection drops, the gateway drains (``drain``, 1001), closes a slow consumer
  (4001) or a token expires (4003), the client reconnects (to the next URL of the list,
  with capped exponential backoff and full jitter) and resubscribes each product with
  ``from_seq`` = last ``seq`` + 1 and its ``epoch``: the events continue with no hole and
  no duplicate. Replayed events already delivered are dropped;
* when the gateway cannot replay (retention), the loop gets its ``status: reset`` and the
  fresh ``snapshot`` after it: replace your state with that snapshot.

Refusals that retrying cannot fix end the iteration with :class:`ClientError`: HTTP 401
or 403 at the handshake, close codes 1008, 1009 and 4029, an ``error`` reply to
:meth:`Client.subscribe`. The wire protocol is ``docs/protocol.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeAlias

import attrs
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

__all__ = ["Client", "ClientError", "Message", "TokenSource", "open_client"]

log = logging.getLogger(__name__)

Message: TypeAlias = dict[str, Any]
"""One server message as a JSON object (``docs/protocol.md``; parts already merged)."""
TokenSource: TypeAlias = str | Callable[[], str] | Callable[[], Awaitable[str]] | None
"""A token (or ``id:secret`` API key), or a function called before every connection
attempt that returns one (so that a short-lived token can be minted fresh)."""

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""Largest message accepted from the gateway (it sends at most the bus's max_payload)."""
BUFFER: Final = 10_000
"""Messages processed but not yet taken by the loop. When full, the client stops reading
the socket; the gateway then applies its slow-consumer policy (a 4001 close after
``slow_consumer_after_s``) and the client resumes from where the loop is."""
_FATAL_CLOSES: Final = frozenset({1008, 1009, 4029})
_FATAL_STATUSES: Final = frozenset({400, 401, 403, 404})


class ClientError(Exception):
    """A refusal that reconnecting cannot fix (bad credentials, a bad request)."""

    def __init__(self, message: str, *, code: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code


@attrs.define(eq=False)
class _Subscription:
    products: tuple[str, ...]
    fields: dict[str, Any]
    """The request's options (``channels``, ``snapshot``, ``conflate``, ...)."""
    acked: trio.Event = attrs.field(factory=trio.Event)
    error: ClientError | None = None
    request_id: int = 0


@attrs.define
class _Parts:
    """A parted ``book`` or ``snapshot`` being collected (docs/protocol.md, parts)."""

    head: Message
    bids: list[Any] = attrs.field(factory=list)
    asks: list[Any] = attrs.field(factory=list)
    next: int = 0


class Client:
    """A connection to one of ``urls`` that resumes. Made by :func:`open_client`."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        token: TokenSource = None,
        batch: bool = True,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        buffer: int = BUFFER,
    ) -> None:
        if not urls:
            raise ValueError("at least one gateway URL is needed")
        self.urls = tuple(urls)
        self.token = token
        self.batch = batch
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        self.ssl_context = ssl_context
        self.seq: dict[str, int] = {}
        """Per product: the ``seq`` of the last message the loop got (0: none yet)."""
        self.epoch: dict[str, str] = {}
        """Per product: the epoch of that message."""
        self.connects = 0
        """Connections established so far (1 + the reconnects)."""
        self.url: str | None = None
        """The URL of the current connection."""
        self._subscriptions: list[_Subscription] = []
        self._ids = itertools.count(1)
        self._ws: WebSocketConnection | None = None
        self._parts: dict[tuple[str, str], _Parts] = {}
        self._send, self._receive = trio.open_memory_channel[Message](buffer)
        self._queued: dict[str, tuple[str, int]] = {}
        """Per product: ``(epoch, seq)`` of the last message queued for the loop: replays
        at or below it are dropped, and a reconnect resumes after it."""
        self._failure: BaseException | None = None
        self._first = trio.Event()
        """Set once the first connection is open, or the client failed for good."""
        self._healthy = False

    # -- the user's side -------------------------------------------------------------------

    async def subscribe(
        self,
        products: Iterable[str],
        *,
        channels: Iterable[str] | None = None,
        snapshot: bool = False,
        from_seq: dict[str, int] | None = None,
        epoch: dict[str, str] | None = None,
        conflate: bool = False,
        max_rate: float | None = None,
    ) -> None:
        """Subscribe (again on every reconnect) and wait for the gateway's ``subscribed``.

        ``from_seq``/``epoch`` apply to the first connection only; afterwards each product
        resumes from the last ``seq`` the loop got. Raises :class:`ClientError` when the
        gateway answers with an ``error``. Cancellation leaves the subscription registered.
        """
        fields: dict[str, Any] = {"snapshot": snapshot}
        if channels is not None:
            fields["channels"] = list(channels)
        if conflate:
            fields["conflate"] = True
        if max_rate is not None:
            fields["max_rate"] = max_rate
        listed = tuple(dict.fromkeys(products))
        for product, seq in (from_seq or {}).items():
            # Resume as if the loop had seen seq - 1 of this epoch.
            self._queued[product] = ((epoch or {}).get(product, ""), seq - 1)
        subscription = _Subscription(listed, fields)
        self._subscriptions.append(subscription)
        if self._ws is not None:
            await self._send_subscription(self._ws, subscription)
        await subscription.acked.wait()
        if subscription.error is not None:
            self._subscriptions.remove(subscription)
            raise subscription.error

    async def unsubscribe(self, products: Iterable[str]) -> None:
        """Stop following ``products`` (here and on later reconnects)."""
        gone = set(products)
        for subscription in self._subscriptions:
            subscription.products = tuple(p for p in subscription.products if p not in gone)
        self._subscriptions = [s for s in self._subscriptions if s.products]
        for product in gone:
            self.seq.pop(product, None)
            self.epoch.pop(product, None)
            self._queued.pop(product, None)
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._request(self._ws, {"op": "unsubscribe", "products": sorted(gone)})

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> Message:
        """The next message (what ``async for`` yields). Raises :class:`ClientError` once
        the client was refused for good, ``trio.EndOfChannel`` after it was closed."""
        try:
            message = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._failure is not None:
                raise self._failure from None
            raise trio.EndOfChannel from None
        self._remember(message)
        return message

    def _remember(self, message: Message) -> None:
        # Positions move when the loop *takes* a message: a reconnect resumes from there.
        product = message.get("product")
        seq = message.get("seq")
        if isinstance(product, str) and isinstance(seq, int):
            self.seq[product] = seq
            self.epoch[product] = str(message.get("epoch", ""))

    # -- the connection ----------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, subscribe, read; reconnect until cancelled or refused for good."""
        attempt = 0
        try:
            for index in itertools.count():
                url = self.urls[index % len(self.urls)]
                self._healthy = False
                try:
                    planned = await self._connection(url)
                except ClientError:
                    raise
                except (OSError, HandshakeError, ConnectionClosed, trio.TooSlowError) as exc:
                    log.info("gateway connection failed: %s: %r", url, exc)
                    planned = False
                # A planned end (drain, 4001, 4003) reconnects at once; a connection that
                # worked for a while starts the backoff again from its first step.
                attempt = 0 if planned else 1 if self._healthy else attempt + 1
                if attempt:
                    cap = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
                    await trio.sleep(random.uniform(0, cap))  # full jitter
        except ClientError as exc:
            self._failure = exc
            for subscription in self._subscriptions:
                if not subscription.acked.is_set():
                    subscription.error = exc
                    subscription.acked.set()
        finally:
            self._first.set()
            self._send.close()

    async def _connection(self, url: str) -> bool:
        """One connection; returns True when it ended in a planned way (a drain, a token
        expiry, a slow-consumer close: reconnect at once), False otherwise."""
        headers = []
        token = await self._token()
        if token:
            headers.append((b"Authorization", b"Bearer " + token.encode()))
        async with _open_websocket(url, headers, self.connect_timeout_s, self.ssl_context) as ws:
            self._ws = ws
            self.url = url
            self.connects += 1
            self._first.set()
            self._parts.clear()
            try:
                for subscription in self._subscriptions:
                    await self._send_subscription(ws, subscription)
                while True:
                    try:
                        text = await ws.get_message()
                    except ConnectionClosed as exc:
                        code = exc.reason.code if exc.reason is not None else 1006
                        why = exc.reason.reason if exc.reason is not None else ""
                        if code in _FATAL_CLOSES:
                            raise ClientError(
                                f"gateway closed the connection: {code} {why}", code=code
                            ) from None
                        log.info("gateway closed %s: %s %s", url, code, why)
                        return code in (1001, 4001, 4003)
                    self._healthy = True
                    frame = orjson.loads(text)
                    for message in frame if isinstance(frame, list) else (frame,):
                        await self._handle(message)
            finally:
                self._ws = None

    async def _token(self) -> str | None:
        source = self.token
        if source is None or isinstance(source, str):
            return source
        value = source()
        if not isinstance(value, str):
            value = await value
        return value

    async def _send_subscription(self, ws: WebSocketConnection, sub: _Subscription) -> None:
        request: dict[str, Any] = {"op": "subscribe", "products": list(sub.products)}
        request.update(sub.fields)
        if self.batch:
            request["batch"] = True
        positions = {p: self._queued[p] for p in sub.products if p in self._queued}
        resume = {p: seq + 1 for p, (_, seq) in positions.items()}
        if resume:
            request["from_seq"] = resume
            epochs = {p: positions[p][0] for p in resume if positions[p][0]}
            if epochs:
                request["epoch"] = epochs
        sub.request_id = await self._request(ws, request)

    async def _request(self, ws: WebSocketConnection, request: dict[str, Any]) -> int:
        request_id = next(self._ids)
        await ws.send_message(orjson.dumps({**request, "id": request_id}).decode())
        return request_id

    async def _handle(self, message: Message) -> None:
        kind = message.get("type")
        if kind in ("subscribed", "error", "unsubscribed", "pong"):
            self._reply(message)
            return
        if kind == "drain":
            log.info("gateway %s drains: reconnecting", self.url)
            return
        product = message.get("product")
        if not isinstance(product, str):
            return
        if "parts" in message:
            assembled = self._collect(product, message)
            if assembled is None:
                return
            message = assembled
        else:
            self._parts.pop((product, str(kind)), None)
        if self._seen(product, message):
            return  # replayed after a resume: the loop has it already
        await self._send.send(message)

    def _reply(self, message: Message) -> None:
        for product, position in (message.get("live_from") or {}).items():
            # Followed live: the stream starts after this seq; a reconnect resumes there.
            if product not in self._queued:
                self._queued[product] = (str(position.get("epoch", "")), int(position["seq"]))
        for subscription in self._subscriptions:
            if subscription.request_id == message.get("id") and not subscription.acked.is_set():
                if message["type"] == "error":
                    subscription.error = ClientError(
                        f"{message.get('code')}: {message.get('message')}",
                        code=message.get("code"),
                    )
                subscription.acked.set()
                return
        if message["type"] == "error":
            log.warning("gateway error: %s: %s", message.get("code"), message.get("message"))

    def _seen(self, product: str, message: Message) -> bool:
        """True for an event at or below the last one queued in the same epoch; otherwise
        it becomes the last one. A snapshot or a ``reset`` restarts the product there."""
        seq = message.get("seq")
        if not isinstance(seq, int):
            return False
        epoch = str(message.get("epoch", ""))
        restart = message.get("type") == "snapshot" or message.get("status") == "reset"
        last_epoch, last_seq = self._queued.get(product, ("", 0))
        if not restart and epoch == last_epoch and seq <= last_seq:
            return True
        self._queued[product] = (epoch, seq)
        return False

    def _collect(self, product: str, message: Message) -> Message | None:
        """Add one part; the whole message once the last part is in, else None."""
        key = (product, str(message.get("type")))
        part, parts = message.get("part"), message.get("parts")
        levels = message["book"] if message.get("type") == "snapshot" else message
        collected = self._parts.get(key)
        if part == 0:
            collected = self._parts[key] = _Parts(message)
        elif (
            collected is None
            or part != collected.next
            or parts != collected.head.get("parts")
            or message.get("seq") != collected.head.get("seq")
        ):
            # Not a continuation: never show half a book; the next snapshot replaces it.
            log.warning("incomplete book parts for %s dropped", product)
            self._parts.pop(key, None)
            return None
        collected.bids.extend(levels.get("bids", ()))
        collected.asks.extend(levels.get("asks", ()))
        collected.next += 1
        if collected.next < int(parts or 0):
            return None
        del self._parts[key]
        whole = {k: v for k, v in collected.head.items() if k not in ("part", "parts")}
        if whole.get("type") == "snapshot":
            whole["book"] = {**whole["book"], "bids": collected.bids, "asks": collected.asks}
        else:
            whole["bids"], whole["asks"] = collected.bids, collected.asks
        return whole


@contextlib.asynccontextmanager
async def open_client(
    url: str | Sequence[str],
    *,
    token: TokenSource = None,
    batch: bool = True,
    backoff_initial_s: float = 0.25,
    backoff_max_s: float = 10.0,
    connect_timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    buffer: int = BUFFER,
) -> AsyncIterator[Client]:
    """A :class:`Client` connected (and reconnecting) to ``url`` — or to each of several
    gateway URLs in turn, one at a time, moving on at every reconnect.

    Returns once the first connection is open (it retries with backoff until then; wrap
    it in ``trio.fail_after`` to bound that). On exit, or cancellation, the connection is
    closed at once (no drain on the client side); messages not yet taken are dropped.
    """
    client = Client(
        [url] if isinstance(url, str) else url,
        token=token,
        batch=batch,
        backoff_initial_s=backoff_initial_s,
        backoff_max_s=backoff_max_s,
        connect_timeout_s=connect_timeout_s,
        ssl_context=ssl_context,
        buffer=buffer,
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
            await client._first.wait()
            if client._failure is None:
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The connection task and the caller's body share the nursery: an exception of
        # the body comes out as itself, not as a group of one.
        single = _single(group)
        if single is None:
            raise
        raise single from None
    if client.connects == 0 and client._failure is not None:
        raise client._failure


@contextlib.asynccontextmanager
async def _open_websocket(
    url: str,
    headers: list[tuple[bytes, bytes]],
    connect_timeout_s: float,
    ssl_context: ssl.SSLContext | None,
) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket whose TCP stream this function owns and always closes (also when
    the handshake is refused: trio-websocket's own helper leaks the socket then)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ClientError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{port}"
    with trio.fail_after(connect_timeout_s):
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
        if secure:
            stream = await trio.open_ssl_over_tcp_stream(
                parts.hostname, port, ssl_context=ssl_context or ssl.create_default_context()
            )
        else:
            stream = await trio.open_tcp_stream(parts.hostname, port)
    try:
        async with stream, trio.open_nursery() as nursery:
            with trio.fail_after(connect_timeout_s):
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    host,
                    resource,
                    extra_headers=headers,
                    max_message_size=MAX_MESSAGE_BYTES,
                )
            try:
                yield ws
            finally:
                with trio.move_on_after(1.0) as scope:
                    scope.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The connection's reader task and the caller's body share the nursery: one
        # failure comes out as a group of one; callers handle the exception itself.
        single = _single(group)
        if single is None:
            raise
        if isinstance(single, ConnectionRejected) and single.status_code in _FATAL_STATUSES:
            body = (single.body or b"").decode(errors="replace").strip()
            raise ClientError(
                f"gateway refused the connection: HTTP {single.status_code} {body}",
                code=single.status_code,
            ) from None
        raise single from None


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside nested groups of one, or None when there are several."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc
