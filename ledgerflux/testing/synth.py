"""Deterministic synthetic exchange traffic in the recording format (recordings/README.md).

``python -m ledgerflux.testing.synth [--out DIR] [--seed N]`` writes:

* ``demo.jsonl.gz``: the ``ledgerflux up`` demo (Coinbase Exchange, BTC-USD and ETH-USD,
  heartbeat/ticker/matches/level2_batch, about 60 s);
* ``coinbase/exchange-channels.jsonl.gz``: every Exchange channel, with a sequence gap
  (plus the REST book the client fetched) and a reconnect;
* ``coinbase/advanced-channels.jsonl.gz``: Advanced Trade, every public channel, with a
  ``sequence_num`` gap and a reconnect;
* ``example/example.jsonl``: the example plugin's recording (docs/plugins.md).

Everything comes from one :class:`random.Random` seeded by ``--seed``: the same seed gives
the same bytes. The market model is one L2 book per product (hundreds of levels per side)
that changes by adding, resizing and removing levels and by trades against the best level;
a change never crosses the book. Prices and sizes are :class:`~decimal.Decimal` and are
written as exact decimal strings.
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import random
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import attrs
import orjson

from ledgerflux.recording import RecordedFrame, RecordingHeader, RecordingWriter

__all__ = [
    "START_NS",
    "Market",
    "main",
    "write_advanced_channels",
    "write_all",
    "write_demo",
    "write_example",
    "write_exchange_channels",
]

START_NS = 1_795_176_000_000_000_000
"""2026-11-20T12:00:00Z: the recordings' exchange clock starts here."""
EXCHANGE_WS = "wss://ws-feed.exchange.coinbase.com"
EXCHANGE_REST = "https://api.exchange.coinbase.com"
ADVANCED_WS = "wss://advanced-trade-ws.coinbase.com"
ADVANCED_REST = "https://api.coinbase.com/api/v3/brokerage"
LATENCY_NS = 20_000_000
"""Receipt time = exchange time + this (plus jitter): a plausible one-way delay."""

_SIZE_Q = Decimal("0.00000001")
_ZERO = Decimal(0)


def _s(value: Decimal) -> str:
    # format(..., "f") never switches to exponent notation ("1E-8"), which str() can.
    return format(value, "f")


def iso(ts_ns: int, digits: int = 6) -> str:
    """``2026-11-20T12:00:00.123456Z`` (``digits`` fractional digits) for ns ``ts_ns``."""
    seconds, frac = divmod(ts_ns, 1_000_000_000)
    base = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return f"{base:%Y-%m-%dT%H:%M:%S}.{frac // 10 ** (9 - digits):0{digits}d}Z"


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode("utf-8")


# -- the market model --------------------------------------------------------------------


@attrs.frozen
class Change:
    """A level's new size (0 removes it). ``side`` is the book side: buy = bid."""

    side: Literal["buy", "sell"]
    price: Decimal
    size: Decimal
    old_size: Decimal
    sequence: int = 0
    """The product's exchange sequence number of this change."""


@attrs.frozen
class Fill:
    """A trade: the taker ``side`` took ``size`` at the best opposite level."""

    side: Literal["buy", "sell"]
    price: Decimal
    size: Decimal
    trade_id: int
    maker_order_id: str
    taker_order_id: str
    change: Change


Step = list[Change | Fill]


class Market:
    """One product's book and statistics; every change bumps the exchange ``sequence``."""

    def __init__(
        self,
        rng: random.Random,
        symbol: str,
        mid: Decimal,
        levels: int,
        tick: Decimal = Decimal("0.01"),
    ) -> None:
        self.rng = rng
        self.symbol = symbol
        self.tick = tick
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.sequence = rng.randrange(10_000_000_000, 90_000_000_000)
        self.trade_id = rng.randrange(100_000_000, 900_000_000)
        self.levels = levels
        price = mid - self.tick
        for _ in range(levels):
            self.bids[price] = self._size()
            price -= self.tick * rng.randint(1, 4)
        price = mid + self.tick
        for _ in range(levels):
            self.asks[price] = self._size()
            price += self.tick * rng.randint(1, 4)
        self.last_price = mid
        self.last_size = Decimal("0.01")
        self.open_24h = (mid * Decimal("0.98")).quantize(self.tick)
        self.high_24h = (mid * Decimal("1.02")).quantize(self.tick)
        self.low_24h = (mid * Decimal("0.97")).quantize(self.tick)
        self.volume_24h = Decimal(rng.randint(5_000, 20_000)) + Decimal("0.12345678")
        self.volume_30d = self.volume_24h * 30
        self.last_side: Literal["buy", "sell"] = "buy"
        self.last_sequence = self.sequence

    def _size(self) -> Decimal:
        return (Decimal(self.rng.randint(1, 300_000_000)) * _SIZE_Q).quantize(_SIZE_Q)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def best_bid(self) -> Decimal:
        return max(self.bids)

    def best_ask(self) -> Decimal:
        return min(self.asks)

    def sorted_bids(self) -> list[tuple[Decimal, Decimal]]:
        return sorted(self.bids.items(), reverse=True)

    def sorted_asks(self) -> list[tuple[Decimal, Decimal]]:
        return sorted(self.asks.items())

    def _set(self, side: Literal["buy", "sell"], price: Decimal, size: Decimal) -> Change:
        book = self.bids if side == "buy" else self.asks
        old = book.get(price, _ZERO)
        if size == _ZERO:
            book.pop(price, None)
        else:
            book[price] = size
        # A size increase is a new order: the full channel says "received" then "open",
        # one sequence number each.
        self.sequence += 2 if size > old else 1
        return Change(side, price, size, old, self.sequence)

    def step(self) -> Step:
        """One market event: 1-3 level changes, or a trade."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.1:
            return [self._trade()]
        changes: Step = []
        for _ in range(rng.randint(1, 3)):
            changes.append(self._change())
        return changes

    def _change(self) -> Change:
        rng = self.rng
        side: Literal["buy", "sell"] = "buy" if rng.random() < 0.5 else "sell"
        book = self.bids if side == "buy" else self.asks
        ordered = sorted(book, reverse=side == "buy")
        roll = rng.random()
        if roll < 0.5 or len(ordered) < 2:
            # Resize a level near the top, where most activity is.
            price = ordered[min(int(rng.expovariate(0.15)), len(ordered) - 1)]
            return self._set(side, price, self._size())
        if roll < 0.78 or len(ordered) < self.levels - 20:
            # A new level: between the best and 30 ticks behind it, or inside the spread.
            best_bid, best_ask = self.best_bid(), self.best_ask()
            if side == "buy":
                low, high = best_bid - self.tick * 30, best_ask - self.tick
            else:
                low, high = best_bid + self.tick, best_ask + self.tick * 30
            steps = int((high - low) / self.tick)
            price = low + self.tick * rng.randint(0, max(steps, 0))
            if side == "buy" and price >= best_ask:
                price = best_ask - self.tick
            if side == "sell" and price <= best_bid:
                price = best_bid + self.tick
            return self._set(side, price, self._size())
        # Remove a level, never the last of a side.
        price = ordered[min(int(rng.expovariate(0.1)), len(ordered) - 1)]
        return self._set(side, price, _ZERO)

    def last_fill(self) -> Fill:
        """The most recent trade again (``last_match``, trade snapshots): no book change."""
        level = Change(self.last_side, self.last_price, _ZERO, _ZERO, self.last_sequence)
        return Fill(
            self.last_side,
            self.last_price,
            self.last_size,
            self.trade_id,
            self._uuid(),
            self._uuid(),
            level,
        )

    def _trade(self) -> Fill:
        rng = self.rng
        side: Literal["buy", "sell"] = "buy" if rng.random() < 0.5 else "sell"
        # A buy takes the best ask; a sell takes the best bid.
        maker_side: Literal["buy", "sell"] = "sell" if side == "buy" else "buy"
        book = self.asks if side == "buy" else self.bids
        price = self.best_ask() if side == "buy" else self.best_bid()
        available = book[price]
        size = min(available, self._size() / 10).quantize(_SIZE_Q)
        if size <= _ZERO:
            size = available
        remaining = available - size
        if len(book) <= 1:
            remaining = max(remaining, _SIZE_Q)
        change = self._set(maker_side, price, remaining)
        self.trade_id += 1
        self.last_price, self.last_size, self.last_side = price, size, side
        self.last_sequence = change.sequence
        self.volume_24h += size
        self.volume_30d += size
        self.high_24h = max(self.high_24h, price)
        self.low_24h = min(self.low_24h, price)
        return Fill(side, price, size, self.trade_id, self._uuid(), self._uuid(), change)


def _clock(
    rng: random.Random, markets: list[Market], rate_per_s: float
) -> Iterator[tuple[int, Market]]:
    """Market events of all products merged in time order, forever."""
    heap: list[tuple[int, int, Market]] = []
    for i, market in enumerate(markets):
        heap.append((START_NS + int(rng.expovariate(rate_per_s) * 1e9), i, market))
    heapq.heapify(heap)
    while True:
        ts, i, market = heapq.heappop(heap)
        yield ts, market
        heapq.heappush(heap, (ts + 1 + int(rng.expovariate(rate_per_s) * 1e9), i, market))


class _Out:
    """Frames with monotone receipt times."""

    def __init__(self, writer: RecordingWriter, rng: random.Random) -> None:
        self.writer = writer
        self.rng = rng
        self.last_ts = 0
        self.conn = 0

    def emit(
        self,
        ts_event: int,
        raw: str,
        direction: Literal["in", "out", "rest"] = "in",
        url: str | None = None,
    ) -> None:
        ts = max(self.last_ts + 1, ts_event + LATENCY_NS + self.rng.randrange(2_000_000))
        self.last_ts = ts
        self.writer.write(RecordedFrame(ts=ts, dir=direction, conn=self.conn, raw=raw, url=url))


# -- Coinbase Exchange -------------------------------------------------------------------


def _ex_snapshot(m: Market, ts: int) -> str:
    return _dumps(
        {
            "type": "snapshot",
            "product_id": m.symbol,
            "bids": [[_s(p), _s(s)] for p, s in m.sorted_bids()],
            "asks": [[_s(p), _s(s)] for p, s in m.sorted_asks()],
            "time": iso(ts),
        }
    )


def net_changes(changes: list[Change]) -> list[Change]:
    """One change per level, as an L2 feed reports them: the last size of each level,
    without levels that ended as they started (added and removed in the same step)."""
    first: dict[tuple[str, Decimal], Change] = {}
    last: dict[tuple[str, Decimal], Change] = {}
    for c in changes:
        first.setdefault((c.side, c.price), c)
        last[(c.side, c.price)] = c
    return [c for key, c in last.items() if c.size != first[key].old_size]


def _ex_l2update(m: Market, changes: list[Change], ts: int) -> str:
    return _dumps(
        {
            "type": "l2update",
            "product_id": m.symbol,
            "changes": [[c.side, _s(c.price), _s(c.size)] for c in net_changes(changes)],
            "time": iso(ts),
        }
    )


def _ex_match(m: Market, f: Fill, ts: int, kind: str = "match") -> str:
    # Coinbase's match ``side`` is the maker's side.
    maker_side = "sell" if f.side == "buy" else "buy"
    return _dumps(
        {
            "type": kind,
            "trade_id": f.trade_id,
            "maker_order_id": f.maker_order_id,
            "taker_order_id": f.taker_order_id,
            "side": maker_side,
            "size": _s(f.size),
            "price": _s(f.price),
            "product_id": m.symbol,
            "sequence": f.change.sequence,
            "time": iso(ts),
        }
    )


def _ex_ticker(m: Market, f: Fill, ts: int) -> str:
    bid, ask = m.best_bid(), m.best_ask()
    return _dumps(
        {
            "type": "ticker",
            "sequence": f.change.sequence,
            "product_id": m.symbol,
            "price": _s(m.last_price),
            "open_24h": _s(m.open_24h),
            "volume_24h": _s(m.volume_24h),
            "low_24h": _s(m.low_24h),
            "high_24h": _s(m.high_24h),
            "volume_30d": _s(m.volume_30d),
            "best_bid": _s(bid),
            "best_bid_size": _s(m.bids[bid]),
            "best_ask": _s(ask),
            "best_ask_size": _s(m.asks[ask]),
            "side": f.side,
            "time": iso(ts),
            "trade_id": f.trade_id,
            "last_size": _s(f.size),
        }
    )


def _ex_heartbeat(m: Market, ts: int) -> str:
    return _dumps(
        {
            "type": "heartbeat",
            "last_trade_id": m.trade_id,
            "product_id": m.symbol,
            "sequence": m.sequence,
            "time": iso(ts),
        }
    )


def _ex_rest_book(m: Market, ts: int) -> str:
    return _dumps(
        {
            "bids": [
                [_s(p), _s(s), 1 + (m.sequence + i) % 5] for i, (p, s) in enumerate(m.sorted_bids())
            ],
            "asks": [
                [_s(p), _s(s), 1 + (m.sequence + i) % 7] for i, (p, s) in enumerate(m.sorted_asks())
            ],
            "sequence": m.sequence,
            "auction_mode": False,
            "auction": None,
            "time": iso(ts),
        }
    )


def _ex_full(m: Market, c: Change, ts: int) -> list[str]:
    """The ``full`` channel messages that explain one level change (L3, approximated)."""
    base: dict[str, Any] = {
        "side": c.side,
        "product_id": m.symbol,
        "sequence": c.sequence,
        "time": iso(ts),
        "price": _s(c.price),
        "order_id": m._uuid(),
    }
    if c.size == _ZERO:
        return [
            _dumps({"type": "done", **base, "reason": "canceled", "remaining_size": _s(c.old_size)})
        ]
    if c.size > c.old_size:
        added = _s(c.size - c.old_size)
        received = {
            **base,
            "type": "received",
            "sequence": c.sequence - 1,
            "order_type": "limit",
            "size": added,
            "client_oid": "",
        }
        return [_dumps(received), _dumps({"type": "open", **base, "remaining_size": added})]
    return [
        _dumps(
            {
                "type": "change",
                **base,
                "old_size": _s(c.old_size),
                "new_size": _s(c.size),
                "reason": "STP",
            }
        )
    ]


def _ex_subscriptions(channels: list[str], symbols: list[str]) -> str:
    return _dumps(
        {
            "type": "subscriptions",
            "channels": [{"name": c, "product_ids": symbols} for c in channels],
        }
    )


def _ex_header(symbols: list[str], channels: list[str], note: str) -> RecordingHeader:
    return RecordingHeader(
        plugin="coinbase",
        endpoint=EXCHANGE_WS,
        rest_endpoint=EXCHANGE_REST,
        symbols=tuple(symbols),
        channels=tuple(channels),
        created_ns=START_NS,
        note=note,
    )


def write_demo(
    path: Path,
    *,
    seed: int = 7,
    seconds: float = 60.0,
    rate_per_s: float = 120.0,
    levels: int = 300,
) -> int:
    """The ``ledgerflux up`` demo recording. Returns the number of frames written."""
    rng = random.Random(seed)
    symbols = ["BTC-USD", "ETH-USD"]
    channels = ["heartbeat", "ticker", "matches", "level2_batch"]
    markets = [
        Market(rng, "BTC-USD", Decimal("91234.56"), levels),
        Market(rng, "ETH-USD", Decimal("3123.45"), levels),
    ]
    header = _ex_header(symbols, channels, f"synthetic (seed {seed}): ledgerflux up demo")
    with RecordingWriter(path, header) as writer:
        out = _Out(writer, rng)
        out.emit(
            START_NS - LATENCY_NS * 2,
            _dumps({"type": "subscribe", "product_ids": symbols, "channels": channels}),
            "out",
        )
        out.emit(START_NS, _ex_subscriptions(channels, symbols))
        for m in markets:
            out.emit(START_NS, _ex_heartbeat(m, START_NS))
        for m in markets:
            out.emit(START_NS, _ex_snapshot(m, START_NS))
        next_beat = START_NS + 1_000_000_000
        end = START_NS + int(seconds * 1e9)
        for ts, m in _clock(rng, markets, rate_per_s):
            if ts >= end:
                break
            while ts >= next_beat:
                for other in markets:
                    out.emit(next_beat, _ex_heartbeat(other, next_beat))
                next_beat += 1_000_000_000
            step = m.step()
            changes = [s.change if isinstance(s, Fill) else s for s in step]
            for s in step:
                if isinstance(s, Fill):
                    out.emit(ts, _ex_match(m, s, ts))
                    out.emit(ts, _ex_ticker(m, s, ts))
            if net_changes(changes):
                out.emit(ts, _ex_l2update(m, changes, ts))
        return writer.frames


def write_exchange_channels(path: Path, *, seed: int = 11, levels: int = 200) -> int:
    """Every Exchange channel, one gap (with its REST book) and one reconnect."""
    rng = random.Random(seed)
    symbols = ["BTC-USD", "ETH-USD"]
    channels = ["heartbeat", "status", "ticker", "matches", "level2", "full"]
    markets = {
        "BTC-USD": Market(rng, "BTC-USD", Decimal("91234.56"), levels),
        "ETH-USD": Market(rng, "ETH-USD", Decimal("3123.45"), levels),
    }
    header = _ex_header(
        symbols,
        channels,
        f"synthetic (seed {seed}): every Exchange channel, a sequence gap on ETH-USD "
        "with its REST book, a reconnect (conn 0 -> 1)",
    )
    # The authenticated level2 subscribe carries a signature; these values are dummies.
    auth = {
        "signature": "c2lnbmF0dXJl",
        "key": "example-key",
        "passphrase": "example",
        "timestamp": str(START_NS // 1_000_000_000),
    }
    subscribe = _dumps({"type": "subscribe", "product_ids": symbols, "channels": channels, **auth})
    status = _dumps(
        {
            "type": "status",
            "products": [
                {
                    "id": s,
                    "base_currency": s.split("-")[0],
                    "quote_currency": "USD",
                    "base_increment": "0.00000001",
                    "quote_increment": "0.01",
                    "display_name": s.replace("-", "/"),
                    "status": "online",
                    "status_message": "",
                    "min_market_funds": "1",
                    "post_only": False,
                    "limit_only": False,
                    "cancel_only": False,
                    "auction_mode": False,
                    "type": "spot",
                    "fx_stablecoin": False,
                    "max_slippage_percentage": "0.03000000",
                }
                for s in symbols
            ],
            "currencies": [
                {
                    "id": "BTC",
                    "name": "Bitcoin",
                    "min_size": "0.00000001",
                    "status": "online",
                    "status_message": "",
                    "max_precision": "0.00000001",
                    "convertible_to": [],
                    "details": {},
                },
                {
                    "id": "ETH",
                    "name": "Ether",
                    "min_size": "0.00000001",
                    "status": "online",
                    "status_message": "",
                    "max_precision": "0.00000001",
                    "convertible_to": [],
                    "details": {},
                },
            ],
        }
    )
    with RecordingWriter(path, header) as writer:
        out = _Out(writer, rng)

        def start_connection(ts: int) -> None:
            out.emit(ts - LATENCY_NS * 2, subscribe, "out")
            out.emit(ts, _ex_subscriptions(channels, symbols))
            out.emit(ts, status)
            for m in markets.values():
                # The matches channel first replays the last trade; a trade just before
                # the subscription makes it the product's latest sequence number, so the
                # heartbeat that follows repeats it and the full channel continues it.
                m._trade()
                out.emit(ts, _ex_match(m, m.last_fill(), ts, "last_match"))
                out.emit(ts, _ex_heartbeat(m, ts))
                out.emit(ts, _ex_snapshot(m, ts))

        start_connection(START_NS)
        clock = _clock(rng, list(markets.values()), 60.0)
        gap_at, gap_len, reconnect_at = 120, 4, 260
        n = 0
        rest_done = False
        for ts, m in clock:
            n += 1
            if n == reconnect_at:
                # The connection drops; the market moves on while the client reconnects.
                for _ in range(30):
                    for other in markets.values():
                        other.step()
                out.conn = 1
                start_connection(ts)
                continue
            if n > 400:
                break
            hidden = gap_at <= n < gap_at + gap_len and m.symbol == "ETH-USD"
            frames: list[str] = []
            step = m.step()
            for s in step:
                if isinstance(s, Fill):
                    # One message per sequence: the full match is the matches match.
                    frames.append(_ex_match(m, s, ts))
                    frames.append(_ex_ticker(m, s, ts))
                else:
                    frames.extend(_ex_full(m, s, ts))
            changes = [s.change if isinstance(s, Fill) else s for s in step]
            if net_changes(changes):
                frames.append(_ex_l2update(m, changes, ts))
            if n % 25 == 0:
                frames.append(_ex_heartbeat(m, ts))
            if hidden:
                continue  # lost in transit: the next ETH-USD sequence shows the gap
            for raw in frames:
                out.emit(ts, raw)
            if m.symbol == "ETH-USD" and n >= gap_at + gap_len and not rest_done:
                # The client saw the gap and fetched the REST book (its sequence is the
                # market's at that moment; later frames carry higher sequences).
                rest_done = True
                out.emit(
                    ts,
                    _ex_rest_book(m, ts),
                    "rest",
                    url=f"{EXCHANGE_REST}/products/{m.symbol}/book?level=2",
                )
        return writer.frames


# -- Coinbase Advanced Trade -------------------------------------------------------------


class _Advanced:
    """Envelope writer: one ``sequence_num`` counter per connection, across channels."""

    def __init__(self, out: _Out) -> None:
        self.out = out
        self.seq = 0

    def emit(self, channel: str, events: list[Any], ts: int) -> None:
        self.out.emit(
            ts,
            _dumps(
                {
                    "channel": channel,
                    "client_id": "",
                    "timestamp": iso(ts, 9),
                    "sequence_num": self.seq,
                    "events": events,
                }
            ),
        )
        self.seq += 1

    def skip(self, n: int) -> None:
        self.seq += n


def _adv_updates(changes: list[Change], ts: int) -> list[dict[str, str]]:
    return [
        {
            "side": "bid" if c.side == "buy" else "offer",
            "event_time": iso(ts),
            "price_level": _s(c.price),
            "new_quantity": _s(c.size),
        }
        for c in changes
    ]


def _adv_ticker(m: Market) -> dict[str, str]:
    bid, ask = m.best_bid(), m.best_ask()
    change = (m.last_price - m.open_24h) / m.open_24h * 100
    return {
        "type": "ticker",
        "product_id": m.symbol,
        "price": _s(m.last_price),
        "volume_24_h": _s(m.volume_24h),
        "low_24_h": _s(m.low_24h),
        "high_24_h": _s(m.high_24h),
        "low_52_w": _s(m.low_24h * Decimal("0.5")),
        "high_52_w": _s(m.high_24h * Decimal("1.1")),
        "price_percent_chg_24_h": _s(change.quantize(Decimal("0.00000001"))),
        "best_bid": _s(bid),
        "best_bid_quantity": _s(m.bids[bid]),
        "best_ask": _s(ask),
        "best_ask_quantity": _s(m.asks[ask]),
    }


def _adv_trade(m: Market, f: Fill, ts: int) -> dict[str, str]:
    return {
        "trade_id": str(f.trade_id),
        "product_id": m.symbol,
        "price": _s(f.price),
        "size": _s(f.size),
        # The maker's side, as Advanced Trade sends it (a taker buy hits a resting SELL).
        "side": "SELL" if f.side == "buy" else "BUY",
        "time": iso(ts),
    }


def _adv_candle(m: Market, ts: int) -> dict[str, str]:
    start = ts // 1_000_000_000 // 300 * 300
    return {
        "start": str(start),
        "high": _s(m.high_24h),
        "low": _s(m.low_24h),
        "open": _s(m.open_24h),
        "close": _s(m.last_price),
        "volume": _s(m.volume_24h),
        "product_id": m.symbol,
    }


def write_advanced_channels(path: Path, *, seed: int = 13, levels: int = 300) -> int:
    """Advanced Trade: every public channel, a ``sequence_num`` gap and a reconnect."""
    rng = random.Random(seed)
    symbols = ["BTC-USD", "ETH-USD"]
    channels = [
        "heartbeats",
        "status",
        "level2",
        "ticker",
        "ticker_batch",
        "market_trades",
        "candles",
    ]
    markets = {
        "BTC-USD": Market(rng, "BTC-USD", Decimal("91234.56"), levels),
        "ETH-USD": Market(rng, "ETH-USD", Decimal("3123.45"), levels),
    }
    header = RecordingHeader(
        plugin="coinbase-advanced",
        endpoint=ADVANCED_WS,
        rest_endpoint=ADVANCED_REST,
        symbols=tuple(symbols),
        channels=tuple(channels),
        created_ns=START_NS,
        note=f"synthetic (seed {seed}): every public Advanced Trade channel, a sequence_num "
        "gap, a reconnect (conn 0 -> 1)",
    )
    with RecordingWriter(path, header) as writer:
        out = _Out(writer, rng)
        adv = _Advanced(out)
        beats = 0

        def start_connection(ts: int) -> None:
            adv.seq = 0
            for channel in channels:
                # Advanced Trade takes one channel per subscribe message.
                out.emit(
                    ts - LATENCY_NS * 2,
                    _dumps(
                        {
                            "type": "subscribe",
                            "product_ids": [] if channel == "heartbeats" else symbols,
                            "channel": channel,
                        }
                    ),
                    "out",
                )
            for channel in channels:
                wanted = {
                    c: ([] if c == "heartbeats" else symbols)
                    for c in channels[: channels.index(channel) + 1]
                }
                adv.emit("subscriptions", [{"subscriptions": wanted}], ts)
            adv.emit(
                "status",
                [
                    {
                        "type": "snapshot",
                        "products": [
                            {
                                "product_type": "SPOT",
                                "id": s,
                                "base_currency": s.split("-")[0],
                                "quote_currency": "USD",
                                "base_increment": "0.00000001",
                                "quote_increment": "0.01",
                                "display_name": s,
                                "status": "online",
                                "status_message": "",
                                "min_market_funds": "1",
                            }
                            for s in symbols
                        ],
                    }
                ],
                ts,
            )
            for m in markets.values():
                adv.emit(
                    "l2_data",
                    [
                        {
                            "type": "snapshot",
                            "product_id": m.symbol,
                            "updates": _adv_updates(
                                [Change("buy", p, q, _ZERO) for p, q in m.sorted_bids()]
                                + [Change("sell", p, q, _ZERO) for p, q in m.sorted_asks()],
                                ts,
                            ),
                        }
                    ],
                    ts,
                )
            adv.emit(
                "ticker",
                [{"type": "snapshot", "tickers": [_adv_ticker(m) for m in markets.values()]}],
                ts,
            )
            adv.emit(
                "ticker_batch",
                [{"type": "snapshot", "tickers": [_adv_ticker(m) for m in markets.values()]}],
                ts,
            )
            adv.emit(
                "market_trades",
                [
                    {
                        "type": "snapshot",
                        "trades": [_adv_trade(m, m.last_fill(), ts) for m in markets.values()],
                    }
                ],
                ts,
            )
            adv.emit(
                "candles",
                [{"type": "snapshot", "candles": [_adv_candle(m, ts) for m in markets.values()]}],
                ts,
            )

        start_connection(START_NS)
        n = 0
        next_beat = START_NS + 1_000_000_000
        for ts, m in _clock(rng, list(markets.values()), 60.0):
            n += 1
            if n > 420:
                break
            if n == 280:
                for _ in range(30):
                    for other in markets.values():
                        other.step()
                out.conn = 1
                start_connection(ts)
                continue
            if n == 140:
                adv.skip(3)  # frames lost in transit: sequence_num jumps by 4
            while ts >= next_beat:
                beats += 1
                adv.emit(
                    "heartbeats",
                    [{"current_time": iso(next_beat, 9), "heartbeat_counter": beats}],
                    next_beat,
                )
                next_beat += 1_000_000_000
            step = m.step()
            changes = [s.change if isinstance(s, Fill) else s for s in step]
            fills = [s for s in step if isinstance(s, Fill)]
            if net_changes(changes):
                updates = _adv_updates(net_changes(changes), ts)
                adv.emit(
                    "l2_data", [{"type": "update", "product_id": m.symbol, "updates": updates}], ts
                )
            for f in fills:
                adv.emit(
                    "market_trades", [{"type": "update", "trades": [_adv_trade(m, f, ts)]}], ts
                )
                adv.emit("ticker", [{"type": "update", "tickers": [_adv_ticker(m)]}], ts)
            if n % 20 == 0:
                adv.emit("ticker_batch", [{"type": "update", "tickers": [_adv_ticker(m)]}], ts)
            if n % 50 == 0:
                adv.emit("candles", [{"type": "update", "candles": [_adv_candle(m, ts)]}], ts)
        return writer.frames


# -- the example plugin ------------------------------------------------------------------


def write_example(path: Path, *, seed: int = 5) -> int:
    """The example plugin's small recording (see tests/example_feed)."""
    rng = random.Random(seed)
    symbols = ["BTC-USD", "ETH-USD"]
    markets = [
        Market(rng, "BTC-USD", Decimal("100.00"), 5),
        Market(rng, "ETH-USD", Decimal("20.00"), 5),
    ]
    seqs = {m.symbol: rng.randint(1, 100) for m in markets}
    header = RecordingHeader(
        plugin="example",
        endpoint="ws://127.0.0.1:9/example",
        rest_endpoint=None,
        symbols=tuple(symbols),
        channels=("trades", "book"),
        created_ns=START_NS,
        note=f"synthetic (seed {seed}): the example plugin of docs/plugins.md",
    )
    with RecordingWriter(path, header) as writer:
        out = _Out(writer, rng)
        out.emit(
            START_NS - LATENCY_NS,
            _dumps({"op": "subscribe", "symbols": symbols, "channels": ["trades", "book"]}),
            "out",
        )
        out.emit(START_NS, _dumps({"type": "subscribed", "symbols": symbols}))
        for m in markets:
            out.emit(
                START_NS,
                _dumps(
                    {
                        "type": "book",
                        "symbol": m.symbol,
                        "seq": seqs[m.symbol],
                        "snapshot": True,
                        "bids": [[_s(p), _s(s)] for p, s in m.sorted_bids()],
                        "asks": [[_s(p), _s(s)] for p, s in m.sorted_asks()],
                        "ts": START_NS,
                    }
                ),
            )
        for i, (ts, m) in enumerate(_clock(rng, markets, 10.0)):
            if i >= 40:
                break
            if i % 10 == 9:
                out.emit(ts, _dumps({"type": "heartbeat", "ts": ts}))
            for s in m.step():
                seqs[m.symbol] += 1
                if isinstance(s, Fill):
                    out.emit(
                        ts,
                        _dumps(
                            {
                                "type": "trade",
                                "symbol": m.symbol,
                                "seq": seqs[m.symbol],
                                "price": _s(s.price),
                                "size": _s(s.size),
                                "side": s.side,
                                "id": str(s.trade_id),
                                "ts": ts,
                            }
                        ),
                    )
                    seqs[m.symbol] += 1
                    s = s.change
                key = "bids" if s.side == "buy" else "asks"
                other = "asks" if key == "bids" else "bids"
                out.emit(
                    ts,
                    _dumps(
                        {
                            "type": "book",
                            "symbol": m.symbol,
                            "seq": seqs[m.symbol],
                            "snapshot": False,
                            key: [[_s(s.price), _s(s.size)]],
                            other: [],
                            "ts": ts,
                        }
                    ),
                )
        return writer.frames


def write_all(out_dir: Path, *, seed: int = 0) -> dict[Path, int]:
    """Write every synthetic recording under ``out_dir``; returns frames per file."""
    # The exchange modules build on this one's market model, hence the late import.
    from ledgerflux.testing.synth_kraken import write_kraken_channels, write_kraken_deep
    from ledgerflux.testing.synth_okx import write_okx_candles, write_okx_channels

    written: dict[Path, int] = {}
    jobs: list[tuple[Path, Callable[..., int], int]] = [
        (out_dir / "demo.jsonl.gz", write_demo, 7),
        (out_dir / "coinbase" / "exchange-channels.jsonl.gz", write_exchange_channels, 11),
        (out_dir / "coinbase" / "advanced-channels.jsonl.gz", write_advanced_channels, 13),
        (out_dir / "example" / "example.jsonl", write_example, 5),
        (out_dir / "okx" / "okx-channels.jsonl.gz", write_okx_channels, 17),
        (out_dir / "okx" / "okx-candles.jsonl.gz", write_okx_candles, 19),
        (out_dir / "kraken" / "kraken-channels.jsonl.gz", write_kraken_channels, 23),
        (out_dir / "kraken" / "kraken-deep.jsonl.gz", write_kraken_deep, 29),
    ]
    for path, write, default_seed in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
        written[path] = write(path, seed=default_seed + seed)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ledgerflux.testing.synth", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("recordings"),
        help="output directory (default: recordings)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="added to each recording's own seed (default 0: the committed recordings)",
    )
    args = parser.parse_args(argv)
    for path, frames in write_all(args.out, seed=args.seed).items():
        print(f"{path}: {frames} frames")


if __name__ == "__main__":
    main()
