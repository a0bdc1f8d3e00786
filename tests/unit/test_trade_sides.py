"""Trade sides are the aggressor's on every plugin's recordings: a taker buy prints at the
ask, a taker sell at the bid, checked against the book rebuilt at that moment."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from ledgerflux_binance import BinanceFeed
from ledgerflux_coinbase import CoinbaseAdvancedFeed, CoinbaseExchangeFeed
from ledgerflux_kraken import KrakenFeed
from ledgerflux_okx import OkxFeed

from ledgerflux.events import Trade
from ledgerflux.plugin import Decoded, FeedDecoder, FeedPlugin
from ledgerflux.testing import check_trade_sides

ROOT = Path(__file__).resolve().parents[2] / "recordings"

CASES: list[tuple[str, FeedPlugin]] = [
    ("coinbase/exchange-reference-2021.jsonl.gz", CoinbaseExchangeFeed()),  # real traffic
    ("coinbase/exchange-channels.jsonl.gz", CoinbaseExchangeFeed()),
    ("coinbase/advanced-channels.jsonl.gz", CoinbaseAdvancedFeed()),
    ("binance/binance-channels.jsonl.gz", BinanceFeed()),
    ("binance/binance-deep.jsonl.gz", BinanceFeed()),
    ("okx/okx-channels.jsonl.gz", OkxFeed()),
    ("kraken/kraken-channels.jsonl.gz", KrakenFeed()),
    ("kraken/kraken-deep.jsonl.gz", KrakenFeed()),
]


@pytest.mark.parametrize(("name", "plugin"), CASES, ids=[c[0] for c in CASES])
def test_trades_print_on_the_aggressor_side(name: str, plugin: FeedPlugin) -> None:
    report = check_trade_sides(plugin, ROOT / name)
    assert report.contradicted == 0, report.examples
    assert report.consistent > 0
    assert report.consistent >= report.inside


class _Flipped:
    """A plugin whose decoder reports the maker's side (the bug the check exists for)."""

    def __init__(self, plugin: FeedPlugin) -> None:
        self._plugin = plugin

    def __getattr__(self, name: str) -> object:
        return getattr(self._plugin, name)

    def new_decoder(self) -> FeedDecoder:
        inner = self._plugin.new_decoder()

        class Decoder:
            def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
                decoded = inner.decode(frame, ts_ingest)
                events = tuple(
                    attrs.evolve(e, side="sell" if e.side == "buy" else "buy")
                    if isinstance(e, Trade)
                    else e
                    for e in decoded.events
                )
                return attrs.evolve(decoded, events=events)

        return Decoder()


@pytest.mark.parametrize(
    ("name", "plugin"),
    CASES[:1] + CASES[3:4] + CASES[5:7],
    ids=["coinbase", "binance", "okx", "kraken"],
)
def test_the_check_catches_a_maker_side_feed(name: str, plugin: FeedPlugin) -> None:
    flipped: FeedPlugin = _Flipped(plugin)  # type: ignore[assignment]
    report = check_trade_sides(flipped, ROOT / name)
    assert report.contradicted > 0
    assert report.consistent == 0
