"""``ledgerflux bench codec``: canonical events encoded and decoded per second on one core.

Every daemon boundary (ingestor → normalizer → snapshotter / gateway) crosses
:mod:`ledgerflux.codec`, so its per-event cost is paid several times per event. This bench
puts each codec path next to plain orjson on the *same wire dicts*, the floor no codec can
beat (it converts nothing: no Decimal, no attrs instance):

* ``encode``: :func:`ledgerflux.codec.encode` of each event vs ``orjson.dumps`` of its wire
  dict (``codec.to_wire(event)``, made once before timing).
* ``decode``: :func:`ledgerflux.codec.decode` of each event's bytes vs ``orjson.loads`` of
  the same bytes.
* ``encode_many`` / ``decode_many``: the same in batches of :data:`BATCH` events (the
  gateway's packed frames, the normalizer's batches) vs ``orjson.dumps`` / ``orjson.loads``
  of the list of wire dicts.

Events: a realistic mix synthesised with a fixed seed (:func:`synth_events`): mostly book
deltas with 1-3 levels, then trades, quotes, tickers and a few statuses, with prices and sizes
of the shapes exchanges send (fixed decimals, trailing zeros, size ``"0"`` removals).

Fairness: both sides see the same events in the same process on one core, alternating
``ROUNDS`` times so drift (turbo, a noisy neighbour) hits both alike. ``ratio`` is the codec's
rate divided by orjson's. With ``--json`` the last line printed is
``{"bench": "codec", "metrics": ..., "baseline": ..., "ratio": ..., "machine": ...}``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import orjson

from ledgerflux import codec
from ledgerflux.bench import print_summary
from ledgerflux.events import Book, Event, Quote, Status, Ticker, Trade

__all__ = ["main", "measure", "synth_events"]

SYNTH_EVENTS = 5000
BATCH = 100
"""Events per ``encode_many`` / ``decode_many`` call."""
ROUNDS = 4
"""Codec and baseline alternate this many times per path."""

PATHS = ("encode", "decode", "encode_many", "decode_many")


def _price(rng: random.Random) -> Decimal:
    return Decimal(f"{61_000 + rng.randrange(0, 200_000) / 100:.2f}")


def _size(rng: random.Random) -> Decimal:
    return Decimal(f"{rng.randrange(1, 10**8) / 10**8:.8f}")


def synth_events(count: int = SYNTH_EVENTS, seed: int = 11) -> list[Event]:
    """Sequenced LF_MD events: 75% book deltas (1-3 levels, a quarter of them removals),
    12% trades, 7% quotes, 5% tickers, 1% statuses, over a few products."""
    rng = random.Random(seed)
    products = ("coinbase:BTC-USD", "coinbase:ETH-USD", "coinbase:SOL-USD")
    seqs = dict.fromkeys(products, 0)
    ts = 1_675_974_770_000_000_000
    src_seq = 27_166_532_412
    events: list[Event] = []
    for _ in range(count):
        product = rng.choice(products)
        seqs[product] += 1
        ts += rng.randrange(100_000, 5_000_000)
        src_seq += rng.randrange(1, 4)
        base: dict[str, Any] = {
            "product": product,
            "seq": seqs[product],
            "epoch": "01JD0000000000000000000000",
            "src_seq": src_seq,
            "ts_event": ts - rng.randrange(50_000, 900_000),
            "ts_ingest": ts,
        }
        roll = rng.random()
        event: Event
        if roll < 0.75:
            bids: list[tuple[Decimal, Decimal]] = []
            asks: list[tuple[Decimal, Decimal]] = []
            for _ in range(rng.randrange(1, 4)):
                size = Decimal("0") if rng.random() < 0.25 else _size(rng)
                (bids if rng.random() < 0.5 else asks).append((_price(rng), size))
            event = Book(**base, snapshot=False, bids=tuple(bids), asks=tuple(asks))
        elif roll < 0.87:
            event = Trade(
                **base,
                price=_price(rng),
                size=_size(rng),
                side=rng.choice(("buy", "sell")),
                trade_id=str(478_171_321 + src_seq),
            )
        elif roll < 0.94:
            bid = _price(rng)
            event = Quote(
                **base,
                bid_price=bid,
                bid_size=_size(rng),
                ask_price=bid + Decimal("0.01"),
                ask_size=_size(rng),
            )
        elif roll < 0.99:
            event = Ticker(
                **base,
                price=_price(rng),
                open_24h=Decimal("60000.00"),
                high_24h=Decimal("62000.00"),
                low_24h=Decimal("59000.01"),
                volume_24h=Decimal("12345.67890123"),
                best_bid=_price(rng),
                best_ask=_price(rng),
            )
        else:
            event = Status(**base, status="gap", reason="exchange sequence jumped")
        events.append(event)
    return events


def _rate(work: Callable[[], int], seconds: float) -> tuple[int, float]:
    """Run ``work`` (one pass; returns the event count) for at least ``seconds``."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        done += work()
        now = time.perf_counter()
        if now >= deadline:
            return done, now - start


def _passes(events: Sequence[Event]) -> dict[str, tuple[Callable[[], int], Callable[[], int]]]:
    """Per path: (codec pass, orjson pass), each returning how many events it handled."""
    count = len(events)
    wires = [codec.to_wire(e) for e in events]
    datas = [codec.encode(e) for e in events]
    batches = [list(events[i : i + BATCH]) for i in range(0, count, BATCH)]
    wire_batches = [wires[i : i + BATCH] for i in range(0, count, BATCH)]
    packed = [codec.encode_many(b) for b in batches]
    encode, decode = codec.encode, codec.decode
    encode_many, decode_many = codec.encode_many, codec.decode_many
    dumps, loads = orjson.dumps, orjson.loads

    def codec_encode() -> int:
        for event in events:
            encode(event)
        return count

    def orjson_encode() -> int:
        for wire in wires:
            dumps(wire)
        return count

    def codec_decode() -> int:
        for data in datas:
            decode(data)
        return count

    def orjson_decode() -> int:
        for data in datas:
            loads(data)
        return count

    def codec_encode_many() -> int:
        for batch in batches:
            encode_many(batch)
        return count

    def orjson_encode_many() -> int:
        for wire_batch in wire_batches:
            dumps(wire_batch)
        return count

    def codec_decode_many() -> int:
        for data in packed:
            decode_many(data)
        return count

    def orjson_decode_many() -> int:
        for data in packed:
            loads(data)
        return count

    return {
        "encode": (codec_encode, orjson_encode),
        "decode": (codec_decode, orjson_decode),
        "encode_many": (codec_encode_many, orjson_encode_many),
        "decode_many": (codec_decode_many, orjson_decode_many),
    }


def measure(events: Sequence[Event], seconds: float) -> dict[str, tuple[float, float]]:
    """Per path: (codec events/s, orjson events/s), ``seconds`` in total per path."""
    result: dict[str, tuple[float, float]] = {}
    for path, (ours, floor) in _passes(events).items():
        totals = {"ours": [0.0, 0.0], "floor": [0.0, 0.0]}
        for _ in range(ROUNDS):
            for side, work in (("ours", ours), ("floor", floor)):
                count, elapsed = _rate(work, seconds / (2 * ROUNDS))
                totals[side][0] += count
                totals[side][1] += elapsed
        result[path] = (
            totals["ours"][0] / totals["ours"][1],
            totals["floor"][0] / totals["floor"][1],
        )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ledgerflux bench codec", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--seconds", type=float, default=2.0, help="per path (default 2)")
    parser.add_argument(
        "--events", type=int, default=SYNTH_EVENTS, help=f"events (default {SYNTH_EVENTS})"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    if args.events <= 0:
        parser.error("--events must be > 0")

    events = synth_events(args.events)
    rates = measure(events, args.seconds)
    for path, (rate, floor) in rates.items():
        print(
            f"{path:<12} {rate:>11,.0f} events/s codec   {floor:>11,.0f} events/s orjson"
            f"   ratio {rate / floor:.3f}   ({len(events)} events)"
        )
    if args.json:
        print_summary(
            "codec",
            metrics={f"{path}_per_s": rate for path, (rate, _) in rates.items()},
            baseline={f"{path}_orjson_per_s": floor for path, (_, floor) in rates.items()},
            ratio={path: rate / floor for path, (rate, floor) in rates.items()},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
