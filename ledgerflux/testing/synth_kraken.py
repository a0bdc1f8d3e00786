"""Synthetic Kraken (WebSocket API v2) traffic in the recording format.

Written by ``python -m ledgerflux.testing.synth`` with the other recordings (see
recordings/README.md): the market model is :class:`ledgerflux.testing.synth.Market`, the
frames are Kraken's documented shapes. This module plays the *exchange*:

* it shows the client the best ``depth`` levels of a deeper book and, like Kraken, sends no
  removal for a level that an insert pushes out of that depth (a level that comes back
  into view is sent as an insert);
* it writes prices and quantities as JSON numbers with the pair's precision
  (``45283.5``, ``0.10000000``);
* it computes the book checksum itself (Kraken's rule, :func:`checksum`), independently of
  the plugin.

The renderers also serve the fake exchange (:mod:`ledgerflux.testing.fake_exchange`).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from ledgerflux.recording import RecordingHeader, RecordingWriter
from ledgerflux.testing.synth import (
    LATENCY_NS,
    START_NS,
    Fill,
    Market,
    _clock,
    _dumps,
    _Out,
    iso,
)

__all__ = [
    "KRAKEN_WS",
    "PAIRS",
    "checksum",
    "dumps",
    "render_snapshot",
    "render_subscribed",
    "write_kraken_channels",
    "write_kraken_deep",
]

KRAKEN_WS = "wss://ws.kraken.com/v2"
PAIRS: dict[str, tuple[int, int]] = {"BTC/USD": (1, 8), "ETH/USD": (2, 8)}
"""The recorded pairs' (price_precision, qty_precision)."""

Levels = Sequence[tuple[Decimal, Decimal]]

_NUMBER = re.compile(r'"#(-?[0-9.]+)#"')


def _n(value: Decimal, places: int) -> str:
    """A marker that :func:`dumps` writes as the bare JSON number ``value`` with ``places``
    decimals."""
    return f"#{value.quantize(Decimal(1).scaleb(-places)):f}#"


def dumps(obj: Any) -> str:
    """JSON text in which :func:`_n` markers are numbers (Kraken's full-precision form)."""
    return _NUMBER.sub(r"\1", _dumps(obj))


def _digits(value: Decimal, places: int) -> str:
    return f"{value.quantize(Decimal(1).scaleb(-places)):f}".replace(".", "").lstrip("0")


def checksum(bids: Levels, asks: Levels, price_places: int, qty_places: int) -> int:
    """Kraken's book checksum: the 10 best asks then the 10 best bids, each price and
    quantity at the pair's precision without the point and leading zeros; CRC32."""
    text = "".join(
        _digits(price, price_places) + _digits(qty, qty_places)
        for side in (asks, bids)
        for price, qty in side[:10]
    )
    return zlib.crc32(text.encode())


def _levels(levels: Levels, pair: str) -> list[dict[str, str]]:
    price_places, qty_places = PAIRS.get(pair, (2, 8))
    return [{"price": _n(p, price_places), "qty": _n(q, qty_places)} for p, q in levels]


def render_snapshot(pair: str, bids: Levels, asks: Levels, ts: int) -> str:
    price_places, qty_places = PAIRS.get(pair, (2, 8))
    data = {
        "symbol": pair,
        "bids": _levels(bids, pair),
        "asks": _levels(asks, pair),
        "checksum": checksum(bids, asks, price_places, qty_places),
        "timestamp": iso(ts),
    }
    return dumps({"channel": "book", "type": "snapshot", "data": [data]})


def render_subscribed(result: dict[str, Any], ts: int, req_id: int | None) -> str:
    reply: dict[str, Any] = {
        "method": "subscribe",
        "result": result,
        "success": True,
        "time_in": iso(ts),
        "time_out": iso(ts + 45_000),
    }
    if req_id is not None:
        reply["req_id"] = req_id
    return _dumps(reply)


class _KrakenBook:
    """What a ``depth`` subscriber sees of one market: its best ``depth`` levels."""

    def __init__(self, market: Market, pair: str, depth: int) -> None:
        self.m = market
        self.pair = pair
        self.depth = depth
        self.places = PAIRS[pair]
        self.bids, self.asks = self._view()

    def _view(self) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
        return (
            dict(self.m.sorted_bids()[: self.depth]),
            dict(self.m.sorted_asks()[: self.depth]),
        )

    def snapshot(self, ts: int) -> str:
        self.bids, self.asks = self._view()
        return render_snapshot(
            self.pair, self.m.sorted_bids()[: self.depth], self.m.sorted_asks()[: self.depth], ts
        )

    def update(self, ts: int, *, corrupt: bool = False) -> str | None:
        """The update that brings the subscriber's view up to the market, or None when the
        view did not change. Levels pushed out of the depth are *not* sent (Kraken)."""
        bids, asks = self._view()
        changes: dict[str, list[tuple[Decimal, Decimal]]] = {"bids": [], "asks": []}
        for key, old, new in (("bids", self.bids, bids), ("asks", self.asks, asks)):
            market = self.m.bids if key == "bids" else self.m.asks
            for price, qty in new.items():
                if old.get(price) != qty:
                    changes[key].append((price, qty))
            for price in old:
                # Out of view: removed from the market (sent as qty 0), or pushed out of
                # the depth by an insert (still in the market; Kraken says nothing).
                if price not in new and price not in market:
                    changes[key].append((price, Decimal(0)))
        self.bids, self.asks = bids, asks
        if not changes["bids"] and not changes["asks"]:
            return None
        top_bids = sorted(bids.items(), reverse=True)
        top_asks = sorted(asks.items())
        csum = checksum(top_bids, top_asks, *self.places)
        if corrupt:
            csum ^= 1
        data = {
            "symbol": self.pair,
            "bids": _levels(changes["bids"], self.pair),
            "asks": _levels(changes["asks"], self.pair),
            "checksum": csum,
            "timestamp": iso(ts),
        }
        return dumps({"channel": "book", "type": "update", "data": [data]})


def _trade(book: _KrakenBook, f: Fill, ts: int) -> str:
    price_places, qty_places = book.places
    data = {
        "symbol": book.pair,
        "side": f.side,  # Kraken: the taker's side
        "price": _n(f.price, price_places),
        "qty": _n(f.size, qty_places),
        "ord_type": "market" if f.trade_id % 3 else "limit",
        "trade_id": f.trade_id,
        "timestamp": iso(ts),
    }
    return dumps({"channel": "trade", "type": "update", "data": [data]})


def _ticker(book: _KrakenBook, ts: int) -> str:
    m = book.m
    price_places, qty_places = book.places
    bid, ask = m.best_bid(), m.best_ask()
    change = m.last_price - m.open_24h
    data = {
        "symbol": book.pair,
        "bid": _n(bid, price_places),
        "bid_qty": _n(m.bids[bid], qty_places),
        "ask": _n(ask, price_places),
        "ask_qty": _n(m.asks[ask], qty_places),
        "last": _n(m.last_price, price_places),
        "volume": _n(m.volume_24h, qty_places),
        "vwap": _n(m.open_24h, price_places),
        "low": _n(m.low_24h, price_places),
        "high": _n(m.high_24h, price_places),
        "change": _n(change, price_places),
        "change_pct": _n(change / m.open_24h * 100, 2),
        "timestamp": iso(ts),
    }
    return dumps({"channel": "ticker", "type": "update", "data": [data]})


def _ohlc(book: _KrakenBook, ts: int) -> str:
    m = book.m
    price_places, qty_places = book.places
    begin = ts // 60_000_000_000 * 60_000_000_000
    data = {
        "symbol": book.pair,
        "open": _n(m.open_24h, price_places),
        "high": _n(m.high_24h, price_places),
        "low": _n(m.low_24h, price_places),
        "close": _n(m.last_price, price_places),
        "trades": 3 + m.trade_id % 50,
        "volume": _n(m.volume_24h / 1000, qty_places),
        "vwap": _n(m.last_price, price_places),
        "interval_begin": iso(begin, 9),
        "interval": 1,
        "timestamp": iso(begin + 60_000_000_000),
    }
    return dumps({"channel": "ohlc", "type": "update", "timestamp": iso(ts), "data": [data]})


def _instrument() -> str:
    pairs = [
        {
            "symbol": pair,
            "base": pair.split("/")[0],
            "quote": pair.split("/")[1],
            "status": "online",
            "qty_precision": qty,
            "qty_increment": _n(Decimal(1).scaleb(-qty), qty),
            "price_precision": price,
            "cost_precision": 5,
            "marginable": True,
            "has_index": True,
            "cost_min": _n(Decimal("0.5"), 1),
            "tick_size": _n(Decimal(1).scaleb(-price), price),
            "price_increment": _n(Decimal(1).scaleb(-price), price),
            "qty_min": _n(Decimal("0.0001"), 4),
        }
        for pair, (price, qty) in PAIRS.items()
    ]
    assets = [
        {
            "id": code,
            "status": "enabled",
            "precision": 10,
            "precision_display": 5,
            "borrowable": True,
            "collateral_value": _n(Decimal(1), 2),
            "margin_rate": _n(Decimal("0.02"), 2),
        }
        for code in ("BTC", "ETH", "USD")
    ]
    return dumps(
        {"channel": "instrument", "type": "snapshot", "data": {"assets": assets, "pairs": pairs}}
    )


def write_kraken_channels(path: Path, *, seed: int = 23, depth: int = 10) -> int:
    """Every Kraken v2 public channel with a deep book (``depth`` levels), levels pushed out
    of that depth, a checksum failure repaired by resubscribing that book, a ping, and a
    reconnect. Returns the number of frames."""
    rng = random.Random(seed)
    symbols = ["BTC-USD", "ETH-USD"]
    pairs = ["BTC/USD", "ETH/USD"]
    channel = f"book-{depth}"
    markets = {
        "BTC/USD": Market(rng, "BTC/USD", Decimal("91234.5"), depth + 40, tick=Decimal("0.1")),
        "ETH/USD": Market(rng, "ETH/USD", Decimal("3123.45"), depth + 40),
    }
    books = {pair: _KrakenBook(m, pair, depth) for pair, m in markets.items()}
    header = RecordingHeader(
        plugin="kraken",
        endpoint=KRAKEN_WS,
        rest_endpoint=None,
        symbols=tuple(symbols),
        channels=("instrument", channel, "trade", "ticker", "ohlc"),
        created_ns=START_NS,
        note=f"synthetic (seed {seed}): every Kraken v2 public channel, a {depth}-level book "
        "whose inserts push levels out of the depth, a checksum failure on BTC/USD repaired "
        "by resubscribing that book, ping/pong, a reconnect (conn 0 -> 1)",
    )
    subscribes: list[dict[str, Any]] = [
        {"channel": "instrument", "snapshot": True},
        {"channel": "book", "symbol": pairs, "depth": depth, "snapshot": True},
        {"channel": "trade", "symbol": pairs},
        {"channel": "ticker", "symbol": pairs},
        {"channel": "ohlc", "symbol": pairs, "interval": 1, "snapshot": False},
    ]
    with RecordingWriter(path, header) as writer:
        out = _Out(writer, rng)

        def start_connection(ts: int) -> None:
            for req_id, params in enumerate(subscribes, 1):
                out.emit(
                    ts - LATENCY_NS * 2,
                    _dumps({"method": "subscribe", "params": params, "req_id": req_id}),
                    "out",
                )
            status = {
                "version": "2.0.9",
                "system": "online",
                "api_version": "v2",
                "connection_id": rng.getrandbits(62),
            }
            out.emit(ts, _dumps({"channel": "status", "type": "update", "data": [status]}))
            for req_id, params in enumerate(subscribes, 1):
                if params["channel"] == "instrument":
                    out.emit(
                        ts,
                        render_subscribed({"channel": "instrument", "snapshot": True}, ts, req_id),
                    )
                    out.emit(ts, _instrument())
                    continue
                for pair in pairs:
                    result = {k: v for k, v in params.items() if k != "symbol"}
                    result["symbol"] = pair
                    out.emit(ts, render_subscribed(result, ts, req_id))
                    if params["channel"] == "book":
                        out.emit(ts, books[pair].snapshot(ts))

        def resubscribe(pair: str, ts: int) -> None:
            params = {"channel": "book", "symbol": [pair], "depth": depth}
            out.emit(ts, _dumps({"method": "unsubscribe", "params": params}), "out")
            out.emit(
                ts, _dumps({"method": "subscribe", "params": {**params, "snapshot": True}}), "out"
            )
            out.emit(
                ts,
                _dumps(
                    {
                        "method": "unsubscribe",
                        "result": {"channel": "book", "depth": depth, "symbol": pair},
                        "success": True,
                        "time_in": iso(ts),
                        "time_out": iso(ts + 40_000),
                    }
                ),
            )
            out.emit(
                ts,
                render_subscribed(
                    {"channel": "book", "depth": depth, "snapshot": True, "symbol": pair}, ts, None
                ),
            )
            out.emit(ts, books[pair].snapshot(ts))

        start_connection(START_NS)
        checksum_at, ping_at, reconnect_at = 100, 50, 250
        next_beat = START_NS + 1_000_000_000
        n = 0
        for ts, m in _clock(rng, list(markets.values()), 60.0):
            n += 1
            if n > 340:
                break
            if n == reconnect_at:
                for _ in range(30):
                    for other in markets.values():
                        other.step()
                out.conn = 1
                start_connection(ts)
                continue
            while ts >= next_beat:
                out.emit(next_beat, _dumps({"channel": "heartbeat"}))
                next_beat += 1_000_000_000
            if n == ping_at:
                out.emit(ts, _dumps({"method": "ping", "req_id": 101}), "out")
                out.emit(
                    ts,
                    _dumps(
                        {
                            "method": "pong",
                            "req_id": 101,
                            "time_in": iso(ts),
                            "time_out": iso(ts + 30_000),
                        }
                    ),
                )
            book = books[m.symbol]
            if n % 5 == 0:
                # Activity just beyond the subscribed depth: invisible to the subscriber,
                # so a level it kept after an insert pushed it out is now wrong.
                side: Literal["buy", "sell"] = "buy" if n % 10 else "sell"
                ordered = m.sorted_bids() if side == "buy" else m.sorted_asks()
                price = ordered[depth + rng.randint(0, 2)][0]
                m._set(side, price, Decimal(0) if n % 3 else m._size())
            step = m.step()
            for s in step:
                if isinstance(s, Fill):
                    out.emit(ts, _trade(book, s, ts))
            corrupt = n >= checksum_at and m.symbol == "BTC/USD" and checksum_at > 0
            update = book.update(ts, corrupt=corrupt)
            if update is not None:
                out.emit(ts, update)
                if corrupt:
                    checksum_at = 0
                    resubscribe(m.symbol, ts)
            if any(isinstance(s, Fill) for s in step):
                out.emit(ts, _ticker(book, ts))
            if n % 40 == 0:
                out.emit(ts, _ohlc(book, ts))
        return writer.frames


def write_kraken_deep(path: Path, *, seed: int = 29) -> int:
    """The same channels with a 1000-level book (``book-1000``)."""
    return write_kraken_channels(path, seed=seed, depth=1000)
