"""The WebSocket client every LedgerFlux connection uses: trio-websocket's, plus closing the
socket when the server (or the network) closed first.

trio-websocket 0.12's ``aclose()`` returns early when the *server* sent the close frame,
leaving the TCP stream open until the garbage collector finds it: a file descriptor leaked
per abnormal closure (1006), which a feed that reconnects for days cannot afford. This
wrapper closes the stream in that case.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from trio_websocket import WebSocketConnection
from trio_websocket import open_websocket_url as _open_websocket_url

__all__ = ["open_websocket_url"]


@contextlib.asynccontextmanager
async def open_websocket_url(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    async with _open_websocket_url(url, **kwargs) as ws:
        try:
            yield ws
        finally:
            if ws.closed is not None:
                await ws._stream.aclose()
