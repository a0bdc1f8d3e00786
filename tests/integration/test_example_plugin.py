"""The example plugin of docs/plugins.md, found through its entry point, passes conformance;
so do the Coinbase plugins on their recordings. Broken plugins are caught."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio

from ledgerflux.events import Trade
from ledgerflux.plugin import Decoded, FeedDecoder, SeqMark, Subscription
from ledgerflux.testing import (
    ConformanceError,
    Faults,
    check_plugin,
    check_plugin_live,
)

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = ROOT / "recordings"


def load(name: str) -> Any:
    (ep,) = entry_points(group="ledgerflux.feeds", name=name)
    return ep.load()()


def test_example_plugin_is_registered_and_conforms() -> None:
    plugin = load("example")
    assert type(plugin).__module__ == "ledgerflux_example_feed"
    report = check_plugin(plugin, RECORDINGS / "example" / "example.jsonl")
    report.raise_for_failures()
    assert report.ok
    assert report.frames == 86
    assert report.events == 81
    assert (report.decode_errors, report.gaps, report.rest_books) == (0, 0, 0)


@pytest.mark.parametrize(
    ("name", "recording", "rest_books", "duplicates"),
    [
        ("coinbase", "demo.jsonl.gz", 0, 0),
        ("coinbase", "coinbase/exchange-channels.jsonl.gz", 1, 0),
        # Real traffic repeats sequence numbers (a product's last_match repeats its first
        # ticker's; some matches arrive after the ticker they caused): how many count as
        # duplicates depends on the plugin's marks, so it is not pinned here.
        ("coinbase", "coinbase/exchange-reference-2021.jsonl.gz", 0, None),
        ("coinbase-advanced", "coinbase/advanced-channels.jsonl.gz", 0, 0),
    ],
)
def test_coinbase_plugins_conform(
    name: str, recording: str, rest_books: int, duplicates: int | None
) -> None:
    if not entry_points(group="ledgerflux.feeds", name=name):
        pytest.skip(f"plugin {name} is not installed")
    report = check_plugin(load(name), RECORDINGS / recording)
    report.raise_for_failures()
    assert report.events > 0
    assert report.decode_errors == 0
    assert report.rest_books == rest_books
    if duplicates is not None:
        assert report.duplicates == duplicates


async def test_example_plugin_live_against_the_runtime() -> None:
    pytest.importorskip("ledgerflux.feeds.runtime")
    with trio.fail_after(60):
        report = await check_plugin_live(
            load("example"), RECORDINGS / "example" / "example.jsonl", timeout_s=30
        )
    report.raise_for_failures()
    assert report.events >= 81


async def test_example_plugin_resubscribes_after_a_gap_and_ends_with_the_true_book() -> None:
    pytest.importorskip("ledgerflux.feeds.runtime")
    with trio.fail_after(60):
        report = await check_plugin_live(
            load("example"),
            RECORDINGS / "example" / "example.jsonl",
            faults=Faults(start_after=20, drop=2),
            timeout_s=30,
        )
    report.raise_for_failures()


@pytest.mark.parametrize(
    ("name", "recording"),
    [
        ("coinbase", "coinbase/exchange-channels.jsonl.gz"),
        ("coinbase-advanced", "coinbase/advanced-channels.jsonl.gz"),
    ],
)
async def test_coinbase_plugins_live_with_a_forced_gap(name: str, recording: str) -> None:
    """After a forced gap the runtime resyncs (REST book for Exchange, resubscribe for
    Advanced Trade) and its published books end equal to the exchange's true books."""
    pytest.importorskip("ledgerflux.feeds.runtime")
    if not entry_points(group="ledgerflux.feeds", name=name):
        pytest.skip(f"plugin {name} is not installed")
    with trio.fail_after(60):
        report = await check_plugin_live(
            load(name),
            RECORDINGS / recording,
            faults=Faults(start_after=60, drop=3),
            timeout_s=30,
        )
    report.raise_for_failures()


# -- the check must catch broken plugins ------------------------------------------------


class _RaisingDecoder:
    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        if isinstance(frame, bytes):
            frame = frame.decode()
        return Decoded(
            events=(
                Trade(
                    product="wrong-prefix:BTC-USD",
                    ts_event=1,
                    ts_ingest=ts_ingest,
                    price=__import__("decimal").Decimal("1"),
                    size=__import__("decimal").Decimal("1"),
                    side="buy",
                ),
            ),
            marks=(SeqMark("example:BTC-USD", 5 - len(frame) % 3),),
        )


class BrokenFeed:
    name: ClassVar[str] = "broken"
    exchange: ClassVar[str] = "example"
    endpoint: ClassVar[str] = "http://not-a-websocket"
    channels: ClassVar[tuple[str, ...]] = ("trades",)
    default_channels: ClassVar[tuple[str, ...]] = ("book",)
    subscribe_deadline_s: ClassVar[float] = -1.0

    def subscribe_messages(
        self, subscription: Subscription, credentials: object, now_s: float
    ) -> Sequence[str]:
        return ["{not json"]

    def new_decoder(self) -> FeedDecoder:
        return _RaisingDecoder()

    def book_request(self, symbol: str) -> None:
        return None


def test_check_plugin_collects_every_failure() -> None:
    report = check_plugin(BrokenFeed(), RECORDINGS / "example" / "example.jsonl")  # type: ignore[arg-type]
    assert not report.ok
    text = "\n".join(report.failures)
    for expected in (
        "attribute: rest_endpoint is missing",
        "attribute: sequence_model is missing",
        "attribute: endpoint must be a ws:// or wss:// URL",
        "attribute: default_channels must be among channels",
        "attribute: subscribe_deadline_s must be a positive number",
        "subscribe: subscribe message is not JSON",
        "product: ",
        "sequence: ",
        "garbage: ",
    ):
        assert expected in text
    with pytest.raises(ConformanceError, match=r"failed \d+ conformance check"):
        report.raise_for_failures()
