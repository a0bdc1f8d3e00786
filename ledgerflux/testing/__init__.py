"""Test support for LedgerFlux and for feed-plugin authors (docs/plugins.md).

* :func:`open_fake_exchange` / :class:`FakeExchange` / :class:`Faults`: a fake exchange
  that replays a recording (:mod:`ledgerflux.recording`) with injected faults.
* :func:`check_plugin` / :func:`check_plugin_live`: the conformance checks for a feed
  plugin, sans-IO and against the real ingestor runtime.
"""

from __future__ import annotations

from ledgerflux.testing.conformance import (
    ConformanceError,
    ConformanceReport,
    check_plugin,
    check_plugin_live,
)
from ledgerflux.testing.fake_exchange import FakeExchange, Faults, open_fake_exchange
from ledgerflux.testing.trade_sides import TradeSideReport, check_trade_sides

__all__ = [
    "ConformanceError",
    "ConformanceReport",
    "FakeExchange",
    "Faults",
    "TradeSideReport",
    "check_plugin",
    "check_plugin_live",
    "check_trade_sides",
    "open_fake_exchange",
]
