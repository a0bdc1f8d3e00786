"""How the project's fake exchange speaks Binance (entry point ``ledgerflux.fake_dialects``):
a subscribe reply, no WebSocket snapshot (the stream has none), the REST depth book
``{"lastUpdateId":N,"bids":[["p","q"],...],"asks":[...]}`` rendered from the true book, and
``exchangeInfo`` listing the recording's symbols (and ``LUNAUSDT`` in ``BREAK``)."""

from __future__ import annotations

import orjson

from ledgerflux.testing.fake_exchange import Dialect, Levels

__all__ = ["DIALECT"]


def _subscribed(messages: list[str], symbols: tuple[str, ...], seq: int, ts: int) -> list[str]:
    request_id = 1
    for message in messages:
        try:
            obj = orjson.loads(message)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("method") == "SUBSCRIBE":
            request_id = obj.get("id", 1)
    return [orjson.dumps({"result": None, "id": request_id}).decode()]


def _ws_snapshot(symbol: str, bids: Levels, asks: Levels, seq: int, ts: int) -> list[str]:
    return []


def _rest_book(symbol: str, bids: Levels, asks: Levels, seq: int, ts: int) -> str:
    body = {
        "lastUpdateId": seq,
        "bids": [[str(p), str(s)] for p, s in bids],
        "asks": [[str(p), str(s)] for p, s in asks],
    }
    return orjson.dumps(body).decode()


def _instruments(symbols: tuple[str, ...]) -> str:
    """``exchangeInfo`` listing the recording's symbols, trading, plus a halted one."""
    listed = [
        {
            "symbol": symbol.replace("-", ""),
            "status": "TRADING",
            "baseAsset": symbol.partition("-")[0],
            "quoteAsset": symbol.partition("-")[2],
            "filters": [
                {"filterType": "PRICE_FILTER", "tickSize": "0.01000000"},
                {"filterType": "LOT_SIZE", "stepSize": "0.00001000"},
            ],
        }
        for symbol in symbols
    ]
    listed.append(
        {"symbol": "LUNAUSDT", "status": "BREAK", "baseAsset": "LUNA", "quoteAsset": "USDT"}
    )
    return orjson.dumps({"timezone": "UTC", "symbols": listed}).decode()


DIALECT = Dialect(_subscribed, _ws_snapshot, _rest_book, instruments=_instruments)
