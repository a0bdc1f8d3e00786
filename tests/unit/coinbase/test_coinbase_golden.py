"""Golden decode tests: one realistic frame per channel of both APIs, and the WHOLE result.

Each file in ``tests/golden/coinbase/<api>/`` holds the input ``frame`` (real frames from
the reference capture where it has them, documented shapes otherwise; ``source`` says
which), optional ``before`` frames fed first to the same decoder (a subscriptions reply),
the receipt time, and the expected :class:`Decoded` with every event in its canonical
wire form. To rewrite the expectations after a deliberate change, run with
``LEDGERFLUX_REGEN_GOLDEN=1`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from coinbase_support import GOLDEN, decoded_to_json
from ledgerflux_coinbase import AdvancedDecoder, ExchangeDecoder

from ledgerflux import codec

FILES = sorted(GOLDEN.glob("*/*.json"))
REGEN = os.environ.get("LEDGERFLUX_REGEN_GOLDEN") == "1"


def _decoder(path: Path) -> ExchangeDecoder | AdvancedDecoder:
    return ExchangeDecoder() if path.parent.name == "exchange" else AdvancedDecoder()


def test_every_channel_has_a_golden_file() -> None:
    names = {f"{p.parent.name}/{p.stem}" for p in FILES}
    exchange = {"ticker", "heartbeat", "match", "last_match", "snapshot", "l2update_bid"}
    exchange |= {"level2_batch", "status", "subscriptions", "error"}
    exchange |= {f"full_{t}" for t in ("received", "open", "done", "match", "change", "activate")}
    advanced = {"l2_snapshot", "l2_update", "ticker", "ticker_batch", "market_trades_update"}
    advanced |= {"market_trades_snapshot", "heartbeats", "candles", "status", "subscriptions"}
    advanced |= {"error"}
    expected = {f"exchange/{n}" for n in exchange} | {f"advanced/{n}" for n in advanced}
    assert expected <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    decoder = _decoder(path)
    for before in case.get("before", []):  # e.g. the subscriptions reply that sets state
        assert not decoder.decode(before, case["ts_ingest"]).errors
    decoded = decoder.decode(case["frame"].encode(), case["ts_ingest"])
    got = decoded_to_json(decoded)
    if REGEN:
        case["decoded"] = got
        path.write_text(json.dumps(case, indent=2) + "\n")
    assert got == case["decoded"]
    # The DLQ gets the whole frame, byte for byte.
    for error in decoded.errors:
        assert error.raw == case["frame"].encode()
    # Every event survives the wire codec unchanged.
    for event in decoded.events:
        assert codec.decode(codec.encode(event)) == event
