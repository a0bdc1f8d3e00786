"""LedgerFlux: exchange feeds -> NATS JetStream -> PostgreSQL/S3 -> WebSocket subscribers, on Trio.

The public surface is the names below (pinned by ``tests/unit/test_public_api.py``), plus the
namespace modules :mod:`ledgerflux.plugin` (the feed-plugin API), :mod:`ledgerflux.codec`
(the wire form) and :mod:`ledgerflux.testing` (the fake exchange and conformance check).
Everything else is internal.

Names resolve lazily (PEP 562) so that ``ledgerflux --help`` and a plugin importing
``ledgerflux.plugin`` do not pay for NATS, PostgreSQL and the web stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # canonical events (docs/protocol.md)
    "Event": "ledgerflux.events",
    "Trade": "ledgerflux.events",
    "Quote": "ledgerflux.events",
    "Ticker": "ledgerflux.events",
    "Book": "ledgerflux.events",
    "Status": "ledgerflux.events",
    "EVENT_TYPES": "ledgerflux.events",
    "CodecError": "ledgerflux.codec",
    # configuration (docs/configuration.md)
    "Config": "ledgerflux.config",
    "ConfigError": "ledgerflux.config",
    "load_config": "ledgerflux.config",
    "LedgerfluxError": "ledgerflux.errors",
    # sans-IO cores
    "OrderBook": "ledgerflux.book",
    "ProductState": "ledgerflux.state",
    # resources
    "open_bus": "ledgerflux.bus",
    "open_store": "ledgerflux.store",
    "open_archive": "ledgerflux.archive",
    # daemons (docs/architecture.md)
    "serve_ingest": "ledgerflux.feeds.ingest",
    "serve_normalize": "ledgerflux.normalizer",
    "serve_snapshot": "ledgerflux.snapshotter",
    "serve_gateway": "ledgerflux.gateway",
    "serve_up": "ledgerflux.app",
    "serve_daemon": "ledgerflux.app",
}

__all__ = [
    "EVENT_TYPES",
    "Book",
    "CodecError",
    "Config",
    "ConfigError",
    "Event",
    "LedgerfluxError",
    "OrderBook",
    "ProductState",
    "Quote",
    "Status",
    "Ticker",
    "Trade",
    "load_config",
    "open_archive",
    "open_bus",
    "open_store",
    "serve_daemon",
    "serve_gateway",
    "serve_ingest",
    "serve_normalize",
    "serve_snapshot",
    "serve_up",
]

if TYPE_CHECKING:
    from ledgerflux.app import serve_daemon, serve_up
    from ledgerflux.archive import open_archive
    from ledgerflux.book import OrderBook
    from ledgerflux.bus import open_bus
    from ledgerflux.codec import CodecError
    from ledgerflux.config import Config, ConfigError, load_config
    from ledgerflux.errors import LedgerfluxError
    from ledgerflux.events import EVENT_TYPES, Book, Event, Quote, Status, Ticker, Trade
    from ledgerflux.feeds.ingest import serve_ingest
    from ledgerflux.gateway import serve_gateway
    from ledgerflux.normalizer import serve_normalize
    from ledgerflux.snapshotter import serve_snapshot
    from ledgerflux.state import ProductState
    from ledgerflux.store import open_store


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ledgerflux' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*globals(), *__all__]
