"""Synthetic OKX (API v5 public WebSocket) traffic in the recording format.

Written by ``python -m ledgerflux.testing.synth`` with the other recordings (see
recordings/README.md): the market model is :class:`ledgerflux.testing.synth.Market`, the
frames are OKX's documented shapes. This module plays the *exchange*: it computes the
``books`` checksum itself (OKX's rule, :func:`checksum`), independently of the plugin.

The renderers (:func:`render_snapshot`, :func:`render_subscribed`) also serve the fake
exchange (:mod:`ledgerflux.testing.fake_exchange`), which answers a resubscribe with them.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledgerflux.recording import RecordingHeader, RecordingWriter
from ledgerflux.testing.synth import (
    LATENCY_NS,
    START_NS,
    Change,
    Fill,
    Market,
    _clock,
    _dumps,
    _Out,
    _s,
    net_changes,
)

__all__ = [
    "OKX_BUSINESS_WS",
    "OKX_PUBLIC_WS",
    "checksum",
    "render_snapshot",
    "render_subscribed",
    "write_okx_candles",
    "write_okx_channels",
]

OKX_PUBLIC_WS = "wss://ws.okx.com:8443/ws/v5/public"
OKX_BUSINESS_WS = "wss://ws.okx.com:8443/ws/v5/business"
_CHANNELS = ["books", "trades", "tickers", "bbo-tbt"]
_ZERO = Decimal(0)

Levels = Sequence[tuple[Decimal, Decimal]]


def checksum(bids: Levels, asks: Levels) -> int:
    """OKX's ``books`` checksum of a book (best levels first): the best 25 of each side,
    alternating bid and ask as ``price:size``, joined by ``:``; signed CRC32."""
    fields: list[str] = []
    for i in range(25):
        for side in (bids, asks):
            if i < len(side):
                fields.append(f"{_s(side[i][0])}:{_s(side[i][1])}")
    value = zlib.crc32(":".join(fields).encode())
    return value if value < 2**31 else value - 2**32


def _ms(ts: int) -> str:
    return str(ts // 1_000_000)


def _level(price: Decimal, size: Decimal) -> list[str]:
    # OKX levels: [price, size, "0" (deprecated liquidated orders), number of orders].
    orders = 0 if size == _ZERO else 1 + int(price * 100) % 5
    return [_s(price), _s(size), "0", str(orders)]


def render_snapshot(
    symbol: str, bids: Levels, asks: Levels, seq_id: int, ts: int, csum: int | None = None
) -> str:
    """A ``books`` snapshot push (``prevSeqId`` -1)."""
    push = {
        "asks": [_level(p, s) for p, s in asks],
        "bids": [_level(p, s) for p, s in bids],
        "ts": _ms(ts),
        "checksum": checksum(bids, asks) if csum is None else csum,
        "prevSeqId": -1,
        "seqId": seq_id,
    }
    return _dumps(
        {"arg": {"channel": "books", "instId": symbol}, "action": "snapshot", "data": [push]}
    )


def render_subscribed(channel: str, symbol: str, conn_id: str) -> str:
    return _dumps(
        {"event": "subscribe", "arg": {"channel": channel, "instId": symbol}, "connId": conn_id}
    )


class _OkxBook:
    """One product's ``books`` channel: the seqId chain and the pushes."""

    def __init__(self, rng: random.Random, market: Market) -> None:
        self.rng = rng
        self.m = market
        self.seq = rng.randrange(10_000_000_000, 20_000_000_000)

    def snapshot(self, ts: int) -> str:
        self.seq += self.rng.randint(1, 9)
        return render_snapshot(
            self.m.symbol, self.m.sorted_bids(), self.m.sorted_asks(), self.seq, ts
        )

    def update(self, changes: list[Change], ts: int, *, corrupt: bool = False) -> str:
        prev, self.seq = self.seq, self.seq + self.rng.randint(1, 9)
        net = net_changes(changes)
        bids = [_level(c.price, c.size) for c in net if c.side == "buy"]
        asks = [_level(c.price, c.size) for c in net if c.side == "sell"]
        csum = checksum(self.m.sorted_bids(), self.m.sorted_asks())
        if corrupt:
            csum = csum + 1 if csum < 2**31 - 1 else csum - 1
        push = {
            "asks": asks,
            "bids": bids,
            "ts": _ms(ts),
            "checksum": csum,
            "prevSeqId": prev,
            "seqId": self.seq,
        }
        return _dumps(
            {
                "arg": {"channel": "books", "instId": self.m.symbol},
                "action": "update",
                "data": [push],
            }
        )

    def keepalive(self, ts: int) -> str:
        """No change for a while: empty levels, ``prevSeqId == seqId``."""
        csum = checksum(self.m.sorted_bids(), self.m.sorted_asks())
        push = {
            "asks": [],
            "bids": [],
            "ts": _ms(ts),
            "checksum": csum,
            "prevSeqId": self.seq,
            "seqId": self.seq,
        }
        return _dumps(
            {
                "arg": {"channel": "books", "instId": self.m.symbol},
                "action": "update",
                "data": [push],
            }
        )

    def lose(self) -> None:
        """A push the client never receives: the chain moves on without it."""
        self.seq += self.rng.randint(1, 9)


def _trade(m: Market, f: Fill, ts: int) -> str:
    data = {
        "instId": m.symbol,
        "tradeId": str(f.trade_id),
        "px": _s(f.price),
        "sz": _s(f.size),
        "side": f.side,  # OKX: the taker's side
        "ts": _ms(ts),
        "count": "1",
    }
    return _dumps({"arg": {"channel": "trades", "instId": m.symbol}, "data": [data]})


def _ticker(m: Market, ts: int) -> str:
    bid, ask = m.best_bid(), m.best_ask()
    data = {
        "instType": "SPOT",
        "instId": m.symbol,
        "last": _s(m.last_price),
        "lastSz": _s(m.last_size),
        "askPx": _s(ask),
        "askSz": _s(m.asks[ask]),
        "bidPx": _s(bid),
        "bidSz": _s(m.bids[bid]),
        "open24h": _s(m.open_24h),
        "high24h": _s(m.high_24h),
        "low24h": _s(m.low_24h),
        "volCcy24h": _s((m.volume_24h * m.last_price).quantize(Decimal("0.0001"))),
        "vol24h": _s(m.volume_24h),
        "sodUtc0": _s(m.open_24h),
        "sodUtc8": _s(m.open_24h),
        "ts": _ms(ts),
    }
    return _dumps({"arg": {"channel": "tickers", "instId": m.symbol}, "data": [data]})


def _bbo(m: Market, book: _OkxBook, ts: int) -> str:
    bid, ask = m.best_bid(), m.best_ask()
    data = {
        "asks": [_level(ask, m.asks[ask])],
        "bids": [_level(bid, m.bids[bid])],
        "ts": _ms(ts),
        "seqId": book.seq,
    }
    return _dumps({"arg": {"channel": "bbo-tbt", "instId": m.symbol}, "data": [data]})


def _subscribe(op: str, args: list[dict[str, str]]) -> str:
    return _dumps({"op": op, "args": args})


def write_okx_channels(path: Path, *, seed: int = 17, levels: int = 400) -> int:
    """Every public OKX channel; a checksum failure and a seqId chain break, each repaired
    by resubscribing that book alone; a reconnect. Returns the number of frames."""
    rng = random.Random(seed)
    symbols = ["BTC-USDT", "ETH-USDT"]
    markets = {
        "BTC-USDT": Market(rng, "BTC-USDT", Decimal("91234.56"), levels),
        "ETH-USDT": Market(rng, "ETH-USDT", Decimal("3123.45"), levels),
    }
    books = {s: _OkxBook(rng, m) for s, m in markets.items()}
    header = RecordingHeader(
        plugin="okx",
        endpoint=OKX_PUBLIC_WS,
        rest_endpoint=None,
        symbols=tuple(symbols),
        channels=tuple(_CHANNELS),
        created_ns=START_NS,
        note=f"synthetic (seed {seed}): every public OKX channel, a books checksum failure "
        "(BTC-USDT) and a seqId chain break (ETH-USDT) each repaired by resubscribing that "
        "book, a reconnect (conn 0 -> 1)",
    )
    args = [{"channel": c, "instId": s} for c in _CHANNELS for s in symbols]
    with RecordingWriter(path, header) as writer:
        out = _Out(writer, rng)

        def start_connection(ts: int) -> None:
            conn_id = f"{rng.getrandbits(32):08x}"
            out.emit(ts - LATENCY_NS * 2, _subscribe("subscribe", args), "out")
            for arg in args:
                out.emit(ts, render_subscribed(arg["channel"], arg["instId"], conn_id))
            for symbol in symbols:
                out.emit(ts, books[symbol].snapshot(ts))

        def resubscribe(symbol: str, ts: int) -> None:
            arg = [{"channel": "books", "instId": symbol}]
            out.emit(ts, _subscribe("unsubscribe", arg), "out")
            out.emit(ts, _subscribe("subscribe", arg), "out")
            conn_id = f"{rng.getrandbits(32):08x}"
            out.emit(ts, _dumps({"event": "unsubscribe", "arg": arg[0], "connId": conn_id}))
            out.emit(ts, render_subscribed("books", symbol, conn_id))
            out.emit(ts, books[symbol].snapshot(ts))

        start_connection(START_NS)
        checksum_at, break_at, keepalive_at, reconnect_at = 90, 150, 60, 240
        n = 0
        pending: str | None = None
        for ts, m in _clock(rng, list(markets.values()), 60.0):
            n += 1
            if n > 330:
                break
            if n == reconnect_at:
                for _ in range(30):
                    for other in markets.values():
                        other.step()
                out.conn = 1
                start_connection(ts)
                continue
            book = books[m.symbol]
            if n == keepalive_at:
                quiet = books["ETH-USDT" if m.symbol == "BTC-USDT" else "BTC-USDT"]
                out.emit(ts, quiet.keepalive(ts))
            top = (m.best_bid(), m.best_ask())
            step = m.step()
            changes = [s.change if isinstance(s, Fill) else s for s in step]
            for s in step:
                if isinstance(s, Fill):
                    out.emit(ts, _trade(m, s, ts))
            if net_changes(changes):
                if n >= break_at and m.symbol == "ETH-USDT" and pending is None:
                    book.lose()  # lost in transit; the next ETH-USDT push shows it
                    pending = "ETH-USDT"
                    continue
                corrupt = n >= checksum_at and m.symbol == "BTC-USDT" and checksum_at > 0
                out.emit(ts, book.update(changes, ts, corrupt=corrupt))
                if corrupt:
                    checksum_at = 0
                    resubscribe("BTC-USDT", ts)
                elif pending == m.symbol:
                    pending = ""
                    resubscribe(m.symbol, ts)
            if any(isinstance(s, Fill) for s in step):
                out.emit(ts, _ticker(m, ts))
            if (m.best_bid(), m.best_ask()) != top:
                out.emit(ts, _bbo(m, book, ts))
        return writer.frames


def _candle(m: Market, start_ms: int, confirm: bool) -> list[str]:
    return [
        str(start_ms),
        _s(m.open_24h),
        _s(m.high_24h),
        _s(m.low_24h),
        _s(m.last_price),
        _s(m.volume_24h),
        _s((m.volume_24h * m.last_price).quantize(Decimal("0.0001"))),
        _s((m.volume_24h * m.last_price).quantize(Decimal("0.0001"))),
        "1" if confirm else "0",
    ]


def write_okx_candles(path: Path, *, seed: int = 19) -> int:
    """``candle1m`` on the business endpoint: updates of the open candle, then its close."""
    rng = random.Random(seed)
    symbols = ["BTC-USDT", "ETH-USDT"]
    markets = [
        Market(rng, s, Decimal(p), 20)
        for s, p in zip(symbols, ("91234.56", "3123.45"), strict=True)
    ]
    header = RecordingHeader(
        plugin="okx-candles",
        endpoint=OKX_BUSINESS_WS,
        rest_endpoint=None,
        symbols=tuple(symbols),
        channels=("candle1m",),
        created_ns=START_NS,
        note=f"synthetic (seed {seed}): OKX candle1m on the business endpoint",
    )
    args: list[dict[str, str]] = [{"channel": "candle1m", "instId": s} for s in symbols]
    with RecordingWriter(path, header) as writer:
        out = _Out(writer, rng)
        out.emit(START_NS - LATENCY_NS * 2, _subscribe("subscribe", args), "out")
        conn_id = f"{rng.getrandbits(32):08x}"
        for arg in args:
            out.emit(START_NS, render_subscribed("candle1m", arg["instId"], conn_id))
        for second in range(0, 90, 5):
            ts = START_NS + second * 1_000_000_000
            minute_ms = ts // 1_000_000 // 60_000 * 60_000
            for m in markets:
                m.step()
                out.emit(
                    ts,
                    _dumps(
                        {
                            "arg": {"channel": "candle1m", "instId": m.symbol},
                            "data": [_candle(m, minute_ms, False)],
                        }
                    ),
                )
                if second % 60 == 55:
                    data: list[Any] = [_candle(m, minute_ms, True)]
                    out.emit(
                        ts,
                        _dumps({"arg": {"channel": "candle1m", "instId": m.symbol}, "data": data}),
                    )
        return writer.frames
