"""The worked example of docs/plugins.md: a minimal but complete LedgerFlux feed plugin.

The "example" exchange speaks JSON text frames; the recording that shows every one of them
is ``recordings/example/example.jsonl``::

    client → {"op":"subscribe","symbols":["BTC-USD"],"channels":["trades","book"]}
    server → {"type":"subscribed","symbols":["BTC-USD"]}
    server → {"type":"book","symbol":"BTC-USD","seq":7,"snapshot":true,
              "bids":[["100.5","2"]],"asks":[["101","1.5"]],"ts":1795000000000000000}
    server → {"type":"book","symbol":"BTC-USD","seq":8,"snapshot":false,
              "bids":[["100.5","0"]],"asks":[],"ts":...}
    server → {"type":"trade","symbol":"BTC-USD","seq":9,"price":"101","size":"0.25",
              "side":"buy","id":"t-1","ts":...}
    server → {"type":"heartbeat","ts":...}
    server → {"type":"error","message":"..."}

``seq`` counts per symbol (``SequenceModel.PER_PRODUCT``); a snapshot carries the
sequence of the state it shows. There is no REST book: after a gap the runtime subscribes
again and the exchange sends a fresh snapshot (``ResyncMode.RESUBSCRIBE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import orjson

from ledgerflux.events import Book, Event, PriceLevel, Side, Trade, make_product
from ledgerflux.plugin import (
    BookSnapshot,
    Credentials,
    Decoded,
    DecodeError,
    FeedDecoder,
    RestRequest,
    ResyncMode,
    SeqMark,
    SequenceModel,
    Subscription,
)

__all__ = ["ExampleDecoder", "ExampleFeed"]

EXCHANGE = "example"


class _Invalid(Exception):
    """A field of a frame that is not what the protocol says (becomes ``invalid_field``)."""


def _decimal(obj: dict[str, Any], key: str) -> Decimal:
    value = obj.get(key)
    # Prices arrive as strings; a float would already have lost its exact value.
    if not isinstance(value, str):
        raise _Invalid(f"{key} must be a decimal string, got {value!r}")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise _Invalid(f"{key} is not a decimal: {value!r}") from None
    if not result.is_finite() or result < 0:
        raise _Invalid(f"{key} must be finite and >= 0: {value!r}")
    return result


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{key} must be an integer, got {value!r}")
    return value


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{key} must be a non-empty string, got {value!r}")
    return value


def _levels(obj: dict[str, Any], key: str) -> tuple[PriceLevel, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise _Invalid(f"{key} must be a list of [price, size]")
    out: list[PriceLevel] = []
    for level in value:
        if not isinstance(level, list) or len(level) != 2:
            raise _Invalid(f"{key} level must be [price, size], got {level!r}")
        out.append((_decimal({"p": level[0]}, "p"), _decimal({"s": level[1]}, "s")))
    return tuple(out)


class ExampleDecoder:
    """Sans-IO decoder for one connection. Keeps no state: every frame stands alone."""

    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        raw = frame.encode("utf-8") if isinstance(frame, str) else frame
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Decoded(errors=(DecodeError("malformed_json", str(exc), raw),))
        if not isinstance(obj, dict):
            return Decoded(errors=(DecodeError("malformed_json", "not a JSON object", raw),))
        kind = obj.get("type")
        product: str | None = None
        try:
            if kind == "heartbeat":
                return Decoded(heartbeat=True)
            if kind == "subscribed":
                symbols = obj.get("symbols")
                if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
                    raise _Invalid("symbols must be a list of strings")
                return Decoded(subscribed=tuple(symbols))
            if kind == "error":
                detail = obj.get("message")
                return Decoded(errors=(DecodeError("exchange_error", str(detail), raw),))
            if kind == "trade":
                product = make_product(EXCHANGE, _str(obj, "symbol"))
                return self._trade(obj, product, ts_ingest)
            if kind == "book":
                product = make_product(EXCHANGE, _str(obj, "symbol"))
                return self._book(obj, product, ts_ingest)
        except _Invalid as exc:
            return Decoded(errors=(DecodeError("invalid_field", str(exc), raw, product),))
        return Decoded(errors=(DecodeError("unknown_type", f"type {kind!r}", raw),))

    def _trade(self, obj: dict[str, Any], product: str, ts_ingest: int) -> Decoded:
        seq = _int(obj, "seq")
        side = obj.get("side")
        if side not in ("buy", "sell"):
            raise _Invalid(f"side must be buy or sell, got {side!r}")
        taker: Side = "buy" if side == "buy" else "sell"
        trade_id = obj.get("id")
        event = Trade(
            product=product,
            src_seq=seq,
            ts_event=_int(obj, "ts"),
            ts_ingest=ts_ingest,
            price=_decimal(obj, "price"),
            size=_decimal(obj, "size"),
            side=taker,
            trade_id=trade_id if isinstance(trade_id, str) else None,
        )
        return Decoded(events=(event,), marks=(SeqMark(product, seq),))

    def _book(self, obj: dict[str, Any], product: str, ts_ingest: int) -> Decoded:
        seq = _int(obj, "seq")
        snapshot = obj.get("snapshot")
        if not isinstance(snapshot, bool):
            raise _Invalid(f"snapshot must be true or false, got {snapshot!r}")
        event: Event = Book(
            product=product,
            src_seq=seq,
            ts_event=_int(obj, "ts"),
            ts_ingest=ts_ingest,
            snapshot=snapshot,
            bids=_levels(obj, "bids"),
            asks=_levels(obj, "asks"),
        )
        return Decoded(
            events=(event,),
            marks=(SeqMark(product, seq),),
            snapshot_products=(product,) if snapshot else (),
        )


class ExampleFeed:
    """The "example" exchange. Registered as entry point ``example`` in ``ledgerflux.feeds``."""

    name: ClassVar[str] = "example"
    exchange: ClassVar[str] = EXCHANGE
    endpoint: ClassVar[str] = "ws://127.0.0.1:9/example"
    """A placeholder: tests and recordings point the runtime at a fake exchange."""
    rest_endpoint: ClassVar[str | None] = None
    channels: ClassVar[tuple[str, ...]] = ("trades", "book")
    default_channels: ClassVar[tuple[str, ...]] = ("trades", "book")
    sequence_model: ClassVar[SequenceModel] = SequenceModel.PER_PRODUCT
    resync_mode: ClassVar[ResyncMode] = ResyncMode.RESUBSCRIBE
    subscribe_deadline_s: ClassVar[float] = 5.0
    stale_after_s: ClassVar[float] = 10.0
    rest_rate_limit_per_s: ClassVar[float] = 0.0
    needs_credentials: ClassVar[frozenset[str]] = frozenset()

    def subscribe_messages(
        self, subscription: Subscription, credentials: Credentials | None, now_s: float
    ) -> Sequence[str]:
        message = {
            "op": "subscribe",
            "symbols": list(subscription.symbols),
            "channels": list(subscription.channels or self.default_channels),
        }
        return [orjson.dumps(message).decode("utf-8")]

    def new_decoder(self) -> FeedDecoder:
        return ExampleDecoder()

    def book_request(self, symbol: str) -> RestRequest | None:
        return None

    def parse_book(self, symbol: str, body: bytes, ts_ingest: int) -> BookSnapshot:
        raise ValueError("the example exchange has no REST book (ResyncMode.RESUBSCRIBE)")
