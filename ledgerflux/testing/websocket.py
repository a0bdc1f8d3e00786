"""Re-export for tests and tools: see :mod:`ledgerflux.websocket`."""

from ledgerflux.websocket import open_websocket_url

__all__ = ["open_websocket_url"]
