"""The Binance plugin through the real ingestor runtime against the fake exchange, with
faults: the published books must end equal to the exchange's true books, every break
announced (``gap``) and repaired from the REST depth book, nothing undecodable."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import trio
from ledgerflux_binance import BinanceFeed

from ledgerflux.feeds import runtime
from ledgerflux.testing import Faults, check_plugin_live

RECORDINGS = Path(__file__).resolve().parents[2] / "recordings" / "binance"
DEEP = RECORDINGS / "binance-deep.jsonl.gz"
CHANNELS = RECORDINGS / "binance-channels.jsonl.gz"


class QuickStaleBinance(BinanceFeed):
    """Stale after half a second instead of 75 s (the stall fault)."""

    stale_after_s: ClassVar[float] = 0.5


@pytest.mark.parametrize("recording", [DEEP, CHANNELS], ids=["deep", "channels"])
async def test_live_conformance(recording: Path) -> None:
    with trio.fail_after(90):
        report = await check_plugin_live(BinanceFeed(), recording, timeout_s=60)
    report.raise_for_failures()
    assert report.decode_errors == 0


FAULTS = {
    "drop": Faults(drop=3, start_after=40),
    "duplicate": Faults(duplicate=10, start_after=20),
    "reorder": Faults(reorder=5, start_after=30),
    "close": Faults(close_after=60),
    "stale_rest_book": Faults(stale_rest_book=True),
    "malformed": Faults(malformed=2, start_after=10),
}


@pytest.mark.parametrize("name", list(FAULTS))
async def test_faults_end_with_the_true_books(name: str) -> None:
    with trio.fail_after(90):
        report = await check_plugin_live(BinanceFeed(), CHANNELS, faults=FAULTS[name], timeout_s=60)
    report.raise_for_failures()


async def test_a_stall_reconnects_and_the_books_still_match() -> None:
    with trio.fail_after(90):
        report = await check_plugin_live(
            QuickStaleBinance(), CHANNELS, faults=Faults(stall_after=80, stall_s=1.5), timeout_s=60
        )
    report.raise_for_failures()


class ShortLivedBinance(BinanceFeed):
    """Connections replaced after 0.8 s, pings every 0.1 s."""

    max_connection_s: ClassVar[float] = 0.8
    ping_interval_s: ClassVar[float] = 0.1


async def test_planned_reconnects_lose_and_double_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # The recording streams in real time (3 s) while connections live 0.8 s: two or three
    # handovers. Trades, quotes and tickers must be exactly the recording's (no loss, no
    # repeat from the overlap) and the book must equal the true book.
    monkeypatch.setattr(runtime, "HANDOVER_OVERLAP_S", 0.2)
    with trio.fail_after(90):
        report = await check_plugin_live(ShortLivedBinance(), DEEP, timeout_s=60, speed=1.0)
    report.raise_for_failures()
