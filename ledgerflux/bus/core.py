"""What every part of :class:`Bus` shares: its state, the client, one API call."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from ledgerflux.bus.bridge import _Bridge
from ledgerflux.bus.types import _USERINFO, BusError
from ledgerflux.config import NatsConfig

if TYPE_CHECKING:
    from ledgerflux.bus.publishing import _Publisher

T = TypeVar("T")


class _BusCore:
    """The state every part of :class:`Bus` works on."""

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

    async def _api(self, what: str, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """One crossing for a JetStream API call; nats-py errors become a named BusError."""
        try:
            return await self._bridge.run(fn)
        except nats.js.errors.NotFoundError as exc:
            raise BusError(f"{what}: not found ({exc.description or exc})") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusError(f"{what} failed: {exc!r}") from exc
