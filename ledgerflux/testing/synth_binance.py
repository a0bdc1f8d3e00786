"""Synthetic Binance Spot traffic in the recording format, from the project's market model.

``python -m ledgerflux.testing.synth_binance [--out DIR] [--seed N]`` writes, byte for
byte reproducibly (recordings/README.md):

* ``binance/binance-channels.jsonl.gz``: BTC-USDT and ETH-USDT on the combined stream, every
  channel (``depth@100ms``, ``trade``, ``aggTrade``, ``bookTicker``, ``ticker``,
  ``kline_1m``), the REST depth books the client fetched, a **continuity break** of
  ETH-USDT (three diffs missing) with its REST recovery, and a **reconnect** (conn 1) after
  which both chains have a hole and are recovered from REST;
* ``binance/binance-deep.jsonl.gz``: one product with a 5000-level REST book per side
  (``limit=5000``), then diffs, trades and quotes; no gaps.

Message shapes follow Binance's documented examples field for field (web-socket-streams:
trade, aggTrade, kline, 24hrTicker, bookTicker, depthUpdate; rest-api: ``/api/v3/depth``).
Update ids: every level change is one update id; a diff event covers the changes of one
100 ms window, ``U`` its first id and ``u`` its last, and carries each changed level's final
quantity. A REST book's ``lastUpdateId`` is the last id applied to it.
"""

from __future__ import annotations

import argparse
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from ledgerflux.recording import RecordedFrame, RecordingHeader, RecordingWriter
from ledgerflux.testing.synth import START_NS, Change, Fill, Market

__all__ = ["main", "write_all", "write_channels", "write_deep"]

WS = "wss://stream.binance.com:9443/stream"
REST = "https://api.binance.com"
WINDOW_NS = 100_000_000
"""``@depth@100ms``: one diff event per product per 100 ms with changes."""
LATENCY_NS = 15_000_000
_MS = 1_000_000
CHANNELS = ("depth", "trade", "aggTrade", "bookTicker", "ticker", "kline_1m")
STREAMS = {
    "depth": "depth@100ms",
    "trade": "trade",
    "aggTrade": "aggTrade",
    "bookTicker": "bookTicker",
    "ticker": "ticker",
    "kline_1m": "kline_1m",
}


def _s(value: Decimal) -> str:
    return f"{value:.8f}"


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


class _Product:
    """One market plus what Binance numbers about it."""

    def __init__(self, rng: random.Random, native: str, mid: str, levels: int) -> None:
        self.native = native
        self.market = Market(rng, native, Decimal(mid), levels)
        self.update_id = rng.randrange(1_000_000_000, 9_000_000_000)
        self.trade_id = rng.randrange(100_000_000, 900_000_000)
        self.agg_id = rng.randrange(10_000_000, 90_000_000)
        self.order_id = rng.randrange(1_000_000_000, 9_000_000_000)
        self.window: dict[tuple[str, Decimal], Decimal] = {}
        self.window_first: int | None = None
        self.kline_open: int | None = None
        self.kline: dict[str, Decimal] = {}
        self.kline_first_trade = self.trade_id + 1
        self.kline_trades = 0
        self._last_quote: object = None

    @property
    def stream(self) -> str:
        return self.native.lower()

    def record(self, change: Change) -> None:
        self.update_id += 1
        if self.window_first is None:
            self.window_first = self.update_id
        self.window[(change.side, change.price)] = change.size

    def take_diff(self, ts: int) -> dict[str, Any] | None:
        if self.window_first is None:
            return None
        bids = sorted(
            ((p, s) for (side, p), s in self.window.items() if side == "buy"), reverse=True
        )
        asks = sorted((p, s) for (side, p), s in self.window.items() if side == "sell")
        event = {
            "e": "depthUpdate",
            "E": ts // _MS,
            "s": self.native,
            "U": self.window_first,
            "u": self.update_id,
            "b": [[_s(p), _s(s)] for p, s in bids],
            "a": [[_s(p), _s(s)] for p, s in asks],
        }
        self.window, self.window_first = {}, None
        return event

    def rest_book(self, limit: int) -> str:
        m = self.market
        body = {
            "lastUpdateId": self.update_id,
            "bids": [[_s(p), _s(s)] for p, s in m.sorted_bids()[:limit]],
            "asks": [[_s(p), _s(s)] for p, s in m.sorted_asks()[:limit]],
        }
        return _dumps(body)

    def trade(self, fill: Fill, ts: int) -> list[dict[str, Any]]:
        self.trade_id += 1
        self.agg_id += 1
        self.order_id += 2
        buyer_is_maker = fill.side == "sell"  # a taker sell hits a resting buy order
        self._kline_trade(fill, ts)
        trade = {
            "e": "trade",
            "E": ts // _MS,
            "s": self.native,
            "t": self.trade_id,
            "p": _s(fill.price),
            "q": _s(fill.size),
            "b": self.order_id if fill.side == "buy" else self.order_id - 1,
            "a": self.order_id - 1 if fill.side == "buy" else self.order_id,
            "T": ts // _MS,
            "m": buyer_is_maker,
            "M": True,
        }
        agg = {
            "e": "aggTrade",
            "E": ts // _MS,
            "s": self.native,
            "a": self.agg_id,
            "p": _s(fill.price),
            "q": _s(fill.size),
            "f": self.trade_id,
            "l": self.trade_id,
            "T": ts // _MS,
            "m": buyer_is_maker,
            "M": True,
        }
        return [trade, agg]

    def _kline_trade(self, fill: Fill, ts: int) -> None:
        minute = ts // 60_000_000_000 * 60_000
        if self.kline_open != minute:
            self.kline_open = minute
            self.kline = {"o": fill.price, "h": fill.price, "l": fill.price, "v": Decimal(0)}
            self.kline_first_trade = self.trade_id
            self.kline_trades = 0
        k = self.kline
        k["h"], k["l"] = max(k["h"], fill.price), min(k["l"], fill.price)
        k["c"] = fill.price
        k["v"] += fill.size
        self.kline_trades += 1

    def kline_event(self, ts: int) -> dict[str, Any] | None:
        if self.kline_open is None:
            return None
        k = self.kline
        volume = k["v"]
        return {
            "e": "kline",
            "E": ts // _MS,
            "s": self.native,
            "k": {
                "t": self.kline_open,
                "T": self.kline_open + 59_999,
                "s": self.native,
                "i": "1m",
                "f": self.kline_first_trade,
                "L": self.trade_id,
                "o": _s(k["o"]),
                "c": _s(k["c"]),
                "h": _s(k["h"]),
                "l": _s(k["l"]),
                "v": _s(volume),
                "n": self.kline_trades,
                "x": False,
                "q": _s(volume * k["c"]),
                "V": _s(volume / 2),
                "Q": _s(volume / 2 * k["c"]),
                "B": "0",
            },
        }

    def ticker(self, ts: int) -> dict[str, Any]:
        m = self.market
        bid, ask = m.best_bid(), m.best_ask()
        return {
            "e": "24hrTicker",
            "E": ts // _MS,
            "s": self.native,
            "p": _s(m.last_price - m.open_24h),
            "P": f"{(m.last_price - m.open_24h) / m.open_24h * 100:.3f}",
            "w": _s(m.open_24h),
            "x": _s(m.open_24h),
            "c": _s(m.last_price),
            "Q": _s(m.last_size),
            "b": _s(bid),
            "B": _s(m.bids[bid]),
            "a": _s(ask),
            "A": _s(m.asks[ask]),
            "o": _s(m.open_24h),
            "h": _s(m.high_24h),
            "l": _s(m.low_24h),
            "v": _s(m.volume_24h),
            "q": _s(m.volume_24h * m.last_price),
            "O": ts // _MS - 86_400_000,
            "C": ts // _MS,
            "F": self.trade_id - 100_000,
            "L": self.trade_id,
            "n": 100_001,
        }

    def book_ticker(self) -> dict[str, Any] | None:
        m = self.market
        top = (m.best_bid(), m.best_ask())
        bid_size, ask_size = m.bids[top[0]], m.asks[top[1]]
        key = (top, bid_size, ask_size)
        if key == self._last_quote:
            return None
        self._last_quote = key
        return {
            "u": self.update_id,
            "s": self.native,
            "b": _s(top[0]),
            "B": _s(bid_size),
            "a": _s(top[1]),
            "A": _s(ask_size),
        }


class _Writer:
    def __init__(self, writer: RecordingWriter, rng: random.Random) -> None:
        self.writer = writer
        self.rng = rng
        self.last_ts = 0
        self.conn = 0

    def emit(self, ts_event: int, raw: str, direction: str = "in", url: str | None = None) -> None:
        ts = max(self.last_ts + 1, ts_event + LATENCY_NS + self.rng.randrange(2_000_000))
        self.last_ts = ts
        frame = RecordedFrame(ts=ts, dir=direction, conn=self.conn, raw=raw, url=url)  # type: ignore[arg-type]
        self.writer.write(frame)

    def data(self, ts: int, product: _Product, stream: str, payload: dict[str, Any]) -> None:
        self.emit(ts, _dumps({"stream": f"{product.stream}@{STREAMS[stream]}", "data": payload}))

    def subscribe(self, ts: int, products: list[_Product], request_id: int) -> None:
        params = [f"{p.stream}@{STREAMS[c]}" for p in products for c in CHANNELS]
        message = {"method": "SUBSCRIBE", "params": params, "id": request_id}
        self.emit(ts, _dumps(message), "out")
        self.emit(ts + 30_000_000, _dumps({"result": None, "id": request_id}))

    def rest(self, ts: int, product: _Product, limit: int) -> None:
        url = f"{REST}/api/v3/depth?symbol={product.native}&limit={limit}"
        self.emit(ts, product.rest_book(limit), "rest", url)


def _header(symbols: list[str], natives: list[str], note: str) -> RecordingHeader:
    return RecordingHeader(
        plugin="binance",
        endpoint=WS,
        rest_endpoint=REST,
        symbols=tuple(symbols),
        channels=CHANNELS,
        created_ns=START_NS,
        note=note,
        native_symbols=dict(zip(symbols, natives, strict=True)),
    )


def _run(
    out: _Writer,
    products: list[_Product],
    rng: random.Random,
    start: int,
    end: int,
    *,
    hide: dict[str, tuple[int, int]] | None = None,
    silent: bool = False,
) -> int:
    """Market activity from ``start`` to ``end`` (ns): ~40 steps/s per product, diffs per
    100 ms window, trades as they happen, bookTicker on top-of-book changes, ticker every
    second, kline every 2 s. ``hide`` drops a product's diff events in a time range (a
    continuity break); ``silent`` moves the market without recording anything."""
    ts = start
    next_window = (start // WINDOW_NS + 1) * WINDOW_NS
    next_second = (start // 1_000_000_000 + 1) * 1_000_000_000
    while ts < end:
        ts += int(rng.expovariate(80) * 1e9) + 1
        while next_window <= ts:
            for product in products:
                diff = product.take_diff(next_window)
                hidden = hide is not None and product.native in hide
                if hidden:
                    low, high = hide[product.native]  # type: ignore[index]
                    hidden = low <= next_window < high
                if diff is not None and not silent and not hidden:
                    out.data(next_window, product, "depth", diff)
            next_window += WINDOW_NS
        while next_second <= ts:
            for product in products:
                if not silent:
                    out.data(next_second, product, "ticker", product.ticker(next_second))
                    kline = product.kline_event(next_second)
                    if kline is not None and next_second // 1_000_000_000 % 2 == 0:
                        out.data(next_second, product, "kline_1m", kline)
            next_second += 1_000_000_000
        product = products[rng.randrange(len(products))]
        for item in product.market.step():
            if isinstance(item, Fill):
                product.record(item.change)
                if not silent:
                    trade, agg = product.trade(item, ts)
                    out.data(ts, product, "trade", trade)
                    out.data(ts, product, "aggTrade", agg)
                else:
                    product.trade(item, ts)
            else:
                product.record(item)
        quote = product.book_ticker()
        if quote is not None and not silent:
            out.data(ts, product, "bookTicker", quote)
    return ts


def write_channels(path: Path, *, seed: int = 17, levels: int = 120) -> int:
    """The every-channel recording (module doc)."""
    rng = random.Random(seed)
    btc = _Product(rng, "BTCUSDT", "91234.50", levels)
    eth = _Product(rng, "ETHUSDT", "3123.40", levels)
    products = [btc, eth]
    note = (
        "synthetic (ledgerflux.testing.synth_binance): every channel; ETH-USDT continuity "
        "break with REST recovery; reconnect with REST recovery of both"
    )
    header = _header(["BTC-USDT", "ETH-USDT"], ["BTCUSDT", "ETHUSDT"], note)
    with RecordingWriter(path, header) as writer:
        out = _Writer(writer, rng)
        out.subscribe(START_NS, products, 1)
        ts = _run(out, products, rng, START_NS + 50_000_000, START_NS + 450_000_000)
        # The client fetched both REST books while the diffs were buffered; each book's
        # lastUpdateId lies inside a 100 ms window, so the next diff straddles it.
        for product in products:
            out.rest(ts, product, 5000)
        ts = _run(out, products, rng, ts, START_NS + 4_000_000_000)
        # Continuity break: three ETH diff windows never arrive.
        ts = _run(
            out,
            products,
            rng,
            ts,
            START_NS + 4_600_000_000,
            hide={"ETHUSDT": (START_NS + 4_100_000_000, START_NS + 4_400_000_000)},
        )
        out.rest(ts, eth, 5000)  # the client's resync of ETH-USDT only
        ts = _run(out, products, rng, ts, START_NS + 8_000_000_000)
        # Reconnect: the market moves on while the client is away.
        ts = _run(out, products, rng, ts, START_NS + 8_700_000_000, silent=True)
        out.conn = 1
        out.subscribe(ts, products, 2)
        ts = _run(out, products, rng, ts, ts + 300_000_000)
        for product in products:
            out.rest(ts, product, 5000)
        _run(out, products, rng, ts, START_NS + 12_000_000_000)
        return writer.frames


def write_deep(path: Path, *, seed: int = 19, levels: int = 5000) -> int:
    """One product with a 5000-level book per side (the ``limit=5000`` REST book)."""
    rng = random.Random(seed)
    btc = _Product(rng, "BTCUSDT", "91234.50", levels)
    note = "synthetic (ledgerflux.testing.synth_binance): 5000-level REST book, no gaps"
    header = _header(["BTC-USDT"], ["BTCUSDT"], note)
    with RecordingWriter(path, header) as writer:
        out = _Writer(writer, rng)
        out.subscribe(START_NS, [btc], 1)
        ts = _run(out, [btc], rng, START_NS + 50_000_000, START_NS + 350_000_000)
        out.rest(ts, btc, 5000)
        _run(out, [btc], rng, ts, START_NS + 3_000_000_000)
        return writer.frames


def write_all(out_dir: Path, *, seed: int = 0) -> dict[Path, int]:
    written: dict[Path, int] = {}
    for name, write, default_seed in (
        ("binance-channels.jsonl.gz", write_channels, 17),
        ("binance-deep.jsonl.gz", write_deep, 19),
    ):
        path = out_dir / "binance" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        written[path] = write(path, seed=default_seed + seed)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("recordings"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path, frames in write_all(args.out, seed=args.seed).items():
        print(f"{path}: {frames} frames")


if __name__ == "__main__":
    main()
