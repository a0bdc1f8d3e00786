"""Market-data gauges for the Grafana "market data" dashboard, read from the gateway's
product states at scrape time (nothing on the per-event path).

Per product: last trade price, best bid and ask, spread, book depth (levels per side and
the size resting on the best :data:`DEPTH_LEVELS` levels) and the 24 h volume of the last
ticker. A product costs 9 series here (docs/operations.md, "Label cost"); a scrape walks
every product's top levels once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ledgerflux.gateway.ports import ProductStateLike
from ledgerflux.state import ProductState

__all__ = ["DEPTH_LEVELS", "MarketCollector"]

DEPTH_LEVELS = 10
"""Levels per side summed into ``ledgerflux_market_depth_size``."""


class MarketCollector(Collector):
    """Collects ``ledgerflux_market_*`` from the states *states* returns."""

    def __init__(self, states: Callable[[], Mapping[str, ProductStateLike]]) -> None:
        self.states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        price = GaugeMetricFamily(
            "ledgerflux_market_trade_price", "Price of the last trade", labels=["product"]
        )
        best = GaugeMetricFamily(
            "ledgerflux_market_best_price",
            "Best bid and ask of the book (quote)",
            labels=["product", "side"],
        )
        spread = GaugeMetricFamily(
            "ledgerflux_market_spread", "Best ask - best bid", labels=["product"]
        )
        levels = GaugeMetricFamily(
            "ledgerflux_market_book_levels", "Price levels in the book", labels=["product", "side"]
        )
        depth = GaugeMetricFamily(
            "ledgerflux_market_depth_size",
            f"Size resting on the best {DEPTH_LEVELS} levels of a side",
            labels=["product", "side"],
        )
        volume = GaugeMetricFamily(
            "ledgerflux_market_volume_24h", "24 h volume of the last ticker", labels=["product"]
        )
        for product, state in sorted(self.states().items()):
            if not isinstance(state, ProductState):
                continue
            if state.trade is not None:
                price.add_metric([product], float(state.trade.price))
            quote = state.quote
            if quote is not None:
                if quote.bid_price is not None:
                    best.add_metric([product, "bid"], float(quote.bid_price))
                if quote.ask_price is not None:
                    best.add_metric([product, "ask"], float(quote.ask_price))
                if quote.bid_price is not None and quote.ask_price is not None:
                    spread.add_metric([product], float(quote.ask_price - quote.bid_price))
            book = state.book
            for side, top, count in (
                ("bid", book.bids(DEPTH_LEVELS), book.level_count("bid")),
                ("ask", book.asks(DEPTH_LEVELS), book.level_count("ask")),
            ):
                levels.add_metric([product, side], count)
                depth.add_metric([product, side], float(sum((s for _, s in top), Decimal(0))))
            if state.ticker is not None and state.ticker.volume_24h is not None:
                volume.add_metric([product], float(state.ticker.volume_24h))
        yield from (price, best, spread, levels, depth, volume)
