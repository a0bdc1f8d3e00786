"""``ledgerflux bench decode``: Coinbase frames decoded per second on one core.

For each API the decoder's rate is put next to plain ``orjson.loads`` of the same frames,
the floor no decoder can beat (``ratio`` = decoder / orjson; the target is >= 0.5).

Frames:

* Exchange: the received frames of the reference capture (``--capture``; by default
  ``coinbase-exchange-feed-2021.capture`` looked up in ``../shared/reference/``), else a
  recording (``--recording`` of plugin ``coinbase``), else frames synthesised in the
  capture's shapes.
* Advanced Trade: a recording (``--recording`` of plugin ``coinbase-advanced``), else
  frames synthesised in documented shapes (mostly ``l2_data`` updates, as live traffic).

* Other exchanges (:data:`RECORDED`): the received frames of the plugin's bundled
  recording, decoded by the installed plugin (a row is left out when either is missing).

Fairness: both sides see the same frames in the same process on one core, alternating
``ROUNDS`` times; each decoder pass starts with a fresh decoder and empty plugin caches
(decimals, seconds), so a pass costs what a cold start over those frames costs, not what
frames seen a thousand times cost.

Single-threaded on purpose: the figure is per core. With ``--json`` the last line printed
is ``{"bench": "decode", "metrics": ..., "baseline": ..., "ratio": ..., "machine": ...}``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from ledgerflux.bench import print_summary

__all__ = ["main", "measure", "synth_advanced", "synth_exchange"]

DEFAULT_CAPTURE = Path("..") / "shared" / "reference" / "coinbase-exchange-feed-2021.capture"
SYNTH_FRAMES = 5000
RECORDINGS = Path(__file__).resolve().parents[2] / "recordings"
RECORDED: dict[str, str] = {
    "binance": "binance/binance-channels.jsonl.gz",
    "okx": "okx/okx-channels.jsonl.gz",
    "kraken": "kraken/kraken-channels.jsonl.gz",
}
"""Plugin name → its recording under ``recordings/``: one more row each."""
ROUNDS = 4
"""Decoder and baseline alternate this many times so drift (turbo, a noisy neighbour)
hits both alike."""


def _iso(ns: int, digits: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{frac:09d}"[: 20 + digits] + "Z"


def synth_exchange(count: int = SYNTH_FRAMES, seed: int = 7) -> list[str]:
    """Exchange frames in the reference capture's mix: ~97% l2update, some ticker/match."""
    rng = random.Random(seed)
    frames: list[str] = []
    ts = 1_618_677_817_000_000_000
    seq = 201_390_000
    for _ in range(count):
        ts += rng.randrange(100_000, 5_000_000)
        price = f"{0.79 + rng.randrange(-50, 50) / 10_000:.4f}"
        roll = rng.random()
        if roll < 0.97:
            side = rng.choice(("buy", "sell"))
            size = rng.choice(("0.0", f"{rng.randrange(1, 50_000) / 10:.1f}"))
            msg: dict[str, Any] = {
                "type": "l2update",
                "product_id": "SKL-USD",
                "changes": [[side, price, size]],
                "time": _iso(ts, 6),
            }
        elif roll < 0.985:
            seq += rng.randrange(1, 40)
            msg = {
                "type": "match",
                "trade_id": seq - 200_000_000,
                "maker_order_id": "cac01d6d-8009-4c33-8e0d-f7f853d7c1bc",
                "taker_order_id": "3dec64e4-f6ad-4ca8-ad3f-e5b1a0eb0d06",
                "side": rng.choice(("buy", "sell")),
                "size": "450",
                "price": price,
                "product_id": "SKL-USD",
                "sequence": seq,
                "time": _iso(ts, 6),
            }
        else:
            msg = {
                "type": "ticker",
                "sequence": seq,
                "product_id": "SKL-USD",
                "price": price,
                "open_24h": "0.7055",
                "volume_24h": "34220478.50000000",
                "low_24h": "0.6915",
                "high_24h": "0.8098",
                "volume_30d": "948647831.20000000",
                "best_bid": "0.7901",
                "best_ask": "0.7912",
                "side": "buy",
                "time": _iso(ts, 6),
                "trade_id": seq - 200_000_000,
                "last_size": "450",
            }
        frames.append(orjson.dumps(msg).decode())
    return frames


def synth_advanced(count: int = SYNTH_FRAMES, seed: int = 13) -> list[str]:
    """Advanced Trade frames: 85% l2_data updates (1-4 levels), trades, tickers, heartbeats."""
    rng = random.Random(seed)
    frames: list[str] = []
    ts = 1_675_974_770_000_000_000
    for number in range(count):
        ts += rng.randrange(100_000, 5_000_000)
        stamp = _iso(ts, 9)
        roll = rng.random()
        if roll < 0.85:
            updates = [
                {
                    "side": rng.choice(("bid", "offer")),
                    "event_time": _iso(ts - rng.randrange(1_000, 90_000), 6),
                    "price_level": f"{21_900 + rng.randrange(0, 5_000) / 100:.2f}",
                    "new_quantity": rng.choice(("0", f"{rng.randrange(1, 10**8) / 10**8:.8f}")),
                }
                for _ in range(rng.randrange(1, 5))
            ]
            channel = "l2_data"
            events: list[Any] = [{"type": "update", "product_id": "BTC-USD", "updates": updates}]
        elif roll < 0.93:
            channel = "market_trades"
            trades = [
                {
                    "trade_id": str(478_171_321 + number),
                    "product_id": "BTC-USD",
                    "price": f"{21_900 + rng.randrange(0, 5_000) / 100:.2f}",
                    "size": f"{rng.randrange(1, 10**8) / 10**8:.8f}",
                    "side": rng.choice(("BUY", "SELL")),
                    "time": _iso(ts - 50_000, 6),
                }
                for _ in range(rng.randrange(1, 3))
            ]
            events = [{"type": "update", "trades": trades}]
        elif roll < 0.99:
            channel = "ticker"
            ticker = {
                "type": "ticker",
                "product_id": "BTC-USD",
                "price": f"{21_900 + rng.randrange(0, 5_000) / 100:.2f}",
                "volume_24_h": "16038.28770938",
                "low_24_h": "21835.29",
                "high_24_h": "23011.18",
                "low_52_w": "15460",
                "high_52_w": "48240",
                "price_percent_chg_24_h": "-4.15775596190603",
                "best_bid": "21931.98",
                "best_bid_quantity": "0.50000000",
                "best_ask": "21933.01",
                "best_ask_quantity": "0.01000000",
            }
            events = [{"type": "update", "tickers": [ticker]}]
        else:
            channel = "heartbeats"
            events = [{"current_time": stamp, "heartbeat_counter": number}]
        envelope = {
            "channel": channel,
            "client_id": "",
            "timestamp": stamp,
            "sequence_num": number,
            "events": events,
        }
        frames.append(orjson.dumps(envelope).decode())
    return frames


def _capture_frames(path: Path) -> list[str]:
    from ledgerflux_coinbase import read_capture

    return [f.frame for f in read_capture(path) if f.direction == "received"]


def _recording_frames(path: Path) -> tuple[str, list[str]]:
    from ledgerflux.recording import iter_frames, read_header

    plugin = read_header(path).plugin
    return plugin, [f.raw for f in iter_frames(path) if f.dir == "in"]


def _recorded(name: str, path: Path) -> tuple[Callable[[], Any], list[str]] | None:
    """The installed plugin ``name``'s decoder factory and the recording's received
    frames, or None when either is missing."""
    from ledgerflux.feeds.registry import FeedLoadError, UnknownFeed, load_feed

    if not path.exists():
        return None
    try:
        plugin = load_feed(name)
    except (UnknownFeed, FeedLoadError):
        return None
    return plugin.new_decoder, _recording_frames(path)[1]


def _rate(work: Callable[[], int], seconds: float) -> tuple[int, float]:
    """Run ``work`` (one pass over the frames; returns the frame count) for ``seconds``."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        done += work()
        now = time.perf_counter()
        if now >= deadline:
            return done, now - start


def measure(
    frames: Sequence[str], new_decoder: Callable[[], Any], seconds: float
) -> tuple[float, float, int]:
    """(decoder frames/s, orjson frames/s, decode errors in one pass)."""
    from ledgerflux_coinbase._fields import clear_caches

    loads = orjson.loads
    decoder = new_decoder()
    errors = sum(len(decoder.decode(frame, 0).errors) for frame in frames)

    def decode_pass() -> int:
        # The plugin's value caches start empty every pass: the same frames come round
        # again each pass, and warm caches would hit on every price and size, which live
        # traffic (new sizes all the time) does not. Clearing is outside the timed loop's
        # frames but inside the pass, so its cost is counted, as a cold start's would be.
        clear_caches()
        decode = new_decoder().decode  # a fresh connection per pass, as after a reconnect
        for frame in frames:
            decode(frame, 0)
        return len(frames)

    def loads_pass() -> int:
        for frame in frames:
            loads(frame)
        return len(frames)

    totals = {"decode": [0, 0.0], "loads": [0, 0.0]}
    for _ in range(ROUNDS):
        for name, work in (("decode", decode_pass), ("loads", loads_pass)):
            count, elapsed = _rate(work, seconds / (2 * ROUNDS))
            totals[name][0] += count
            totals[name][1] += elapsed
    return (
        totals["decode"][0] / totals["decode"][1],
        totals["loads"][0] / totals["loads"][1],
        errors,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from ledgerflux_coinbase import AdvancedDecoder, ExchangeDecoder

    parser = argparse.ArgumentParser(
        prog="ledgerflux bench decode", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--seconds", type=float, default=4.0, help="per API (default 4)")
    parser.add_argument("--recording", type=Path, help="a coinbase or coinbase-advanced recording")
    parser.add_argument("--capture", type=Path, help="the Exchange reference capture")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")

    sources = {"exchange": "synthetic", "advanced": "synthetic"}
    exchange_frames: list[str] | None = None
    advanced_frames: list[str] | None = None
    if args.recording is not None:
        plugin, frames = _recording_frames(args.recording)
        if plugin == "coinbase":
            exchange_frames = frames
            sources["exchange"] = str(args.recording)
        elif plugin == "coinbase-advanced":
            advanced_frames = frames
            sources["advanced"] = str(args.recording)
        else:
            parser.error(f"--recording: plugin {plugin!r} is not a Coinbase plugin")
    capture = args.capture or (DEFAULT_CAPTURE if DEFAULT_CAPTURE.exists() else None)
    if exchange_frames is None and capture is not None:
        exchange_frames = _capture_frames(capture)
        sources["exchange"] = str(capture)
    if exchange_frames is None:
        exchange_frames = synth_exchange()
    if advanced_frames is None:
        advanced_frames = synth_advanced()

    ex_rate, ex_floor, ex_errors = measure(exchange_frames, ExchangeDecoder, args.seconds)
    adv_rate, adv_floor, adv_errors = measure(advanced_frames, AdvancedDecoder, args.seconds)
    rows: tuple[tuple[str, str, int, float, float, int], ...] = (
        ("exchange", sources["exchange"], len(exchange_frames), ex_rate, ex_floor, ex_errors),
        ("advanced", sources["advanced"], len(advanced_frames), adv_rate, adv_floor, adv_errors),
    )
    metrics = {"exchange_frames_per_s": ex_rate, "advanced_frames_per_s": adv_rate}
    baseline = {"exchange_orjson_per_s": ex_floor, "advanced_orjson_per_s": adv_floor}
    ratio = {"exchange": ex_rate / ex_floor, "advanced": adv_rate / adv_floor}
    for name, relative in RECORDED.items():
        recorded = _recorded(name, RECORDINGS / relative)
        if recorded is None:
            continue
        new_decoder, frames = recorded
        rate, floor, errors = measure(frames, new_decoder, args.seconds)
        rows += ((name, str(RECORDINGS / relative), len(frames), rate, floor, errors),)
        metrics[f"{name}_frames_per_s"] = rate
        baseline[f"{name}_orjson_per_s"] = floor
        ratio[name] = rate / floor
    for api, source, count, rate, floor, errors in rows:
        print(
            f"{api:<9} {rate:>10,.0f} frames/s decoded   {floor:>10,.0f} frames/s orjson.loads"
            f"   ratio {rate / floor:.2f}   ({count} frames from {source}, {errors} errors)"
        )
    if args.json:
        print_summary("decode", metrics=metrics, baseline=baseline, ratio=ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
