"""Sans-IO decoder for OKX's API v5 public WebSocket (``/ws/v5/public``, ``/ws/v5/business``).

Frame shapes are OKX's documented examples; ``recordings/okx/okx-channels.jsonl.gz`` holds
one or more of each, and ``tests/unit/okx`` decodes them into whole events.

* Replies: ``{"event": "subscribe", "arg": {"channel", "instId"}}`` → ``Decoded.subscribed``;
  ``{"event": "error", "code", "msg"}`` → ``DecodeError("exchange_error")``, or
  ``unknown_symbol`` with an ``offline`` status when the message names an instrument that
  does not exist (code 60018); ``{"event": "notice"}`` (a service upgrade is coming) →
  ``DecodeError("exchange_notice")``. The text ``pong`` (the answer to ``ping``) is a
  heartbeat.
* ``books`` (400 levels): ``action`` ``snapshot`` → ``Book(snapshot=True)`` and
  ``snapshot_products``; ``update`` → ``Book`` changes (size ``"0"`` removes a level).
  ``src_seq`` is ``seqId``. Continuity is OKX's chain rule: an update's ``prevSeqId`` must
  equal the previous push's ``seqId`` (a snapshot has ``prevSeqId`` -1; a keep-alive push
  with no levels has ``prevSeqId == seqId``; after a sequence reset ``seqId`` may be
  *smaller* than ``prevSeqId``, and the chain still holds). An update before any snapshot
  is a ``DecodeError("no_snapshot")``. The ``checksum`` is reported (see below).
* ``bbo-tbt``: ``Quote`` from the one bid and one ask level (``src_seq`` = ``seqId``).
* ``tickers``: ``Ticker`` (``last``, ``open24h``, ``high24h``, ``low24h``, ``vol24h`` in the
  base currency, best bid/ask) and a ``Quote`` from ``bidPx``/``bidSz``/``askPx``/``askSz``.
* ``trades``: ``Trade``; OKX's ``side`` is the taker's side (the aggressor), used as is.
  ``src_seq`` is the numeric ``tradeId``.
* ``candle1m`` (business endpoint): validated; no event (LedgerFlux builds its own
  candles from trades).

Book integrity, split between the decoder and the runtime:

* **Continuity.** OKX's chain rule cannot be a plain counter (keep-alives repeat the last
  ``seqId``, a reset makes it smaller), so the decoder judges it and reports the verdict as
  a contiguous *chain position* per product for ``SequenceModel.PER_PRODUCT``: the snapshot
  is a baseline, each push that continues the chain is the next position, a keep-alive
  repeats the position (``carries_state=False``), a duplicate (``seqId`` not newer, an old
  ``prevSeqId``) repeats it as state (the runtime drops it), and a break skips one
  position (the runtime reports ``status: gap`` and resyncs that product). Events keep
  OKX's own ``seqId`` as ``src_seq``.
* **Checksum.** Each push's ``checksum`` goes into ``Decoded.checksums``; the runtime
  applies the published book events to its copy of the book and compares it with
  :func:`ledgerflux_okx.checksum.okx_checksum` (the plugin's ``book_checksum``).

A resync is a resubscribe of that product's ``books`` on the same connection
(:meth:`ledgerflux_okx.feed.OkxFeed.resubscribe_messages`): OKX answers with a snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from ledgerflux.events import Book, Event, Quote, Side, Status, Ticker, Trade, make_product
from ledgerflux.plugin import BookChecksum, Decoded, DecodeError, SeqMark
from ledgerflux_okx._wire import (
    FieldError,
    get_decimal,
    get_dict,
    get_int,
    get_list,
    get_ms_ns,
    get_opt_decimal,
    get_str,
    levels,
    raw_bytes,
)
from ledgerflux_okx.instruments import canonical_symbol

__all__ = ["EXCHANGE", "OkxDecoder"]

EXCHANGE = "okx"

_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
_UNKNOWN_INST = re.compile(r"instId:\s*([A-Za-z0-9-]+)")
"""OKX's 60018 message names the instrument: ``...channel:books,instId:FOO-BAR doesn't exist``."""

_Handler = Callable[[list[Any], dict[str, Any], str, int, bytes], Decoded]


class OkxDecoder:
    """Decoder for one OKX connection (per-connection state: the books' seqId chains)."""

    def __init__(self) -> None:
        self.last_seq: dict[str, int] = {}
        """The last ``seqId`` per product of the ``books`` channel."""
        self.positions: dict[str, int] = {}
        """The chain position reported per product (see the module doc)."""
        self.duplicates = 0
        """Book pushes whose ``seqId`` was not newer than the last (reported as repeats)."""
        self.breaks = 0
        """Book pushes that did not continue the chain (reported as gaps)."""
        self._handlers: dict[str, _Handler] = {
            "books": self._books,
            "bbo-tbt": self._bbo,
            "tickers": self._tickers,
            "trades": self._trades,
            "candle1m": self._candles,
        }

    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        """One frame received at ``ts_ingest`` (ns). Never raises."""
        if frame == "pong" or frame == b"pong":
            return Decoded(heartbeat=True)
        raw = raw_bytes(frame)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Decoded(errors=(DecodeError("malformed_json", str(exc), raw),))
        if type(obj) is not dict:
            detail = f"expected a JSON object, got {type(obj).__name__}"
            return Decoded(errors=(DecodeError("invalid_field", detail, raw),))
        product: str | None = None
        try:
            if "event" in obj:
                return self._event(obj, raw, ts_ingest)
            arg = get_dict(obj.get("arg"), "arg")
            channel = arg.get("channel")
            handler = self._handlers.get(channel) if type(channel) is str else None
            if handler is None:
                return Decoded(errors=(DecodeError("unknown_type", f"channel {channel!r}", raw),))
            product = _product(get_str(arg, "instId"))
            return handler(get_list(obj, "data"), obj, product, ts_ingest, raw)
        except FieldError as exc:
            return Decoded(errors=(DecodeError(exc.reason, exc.detail, raw, product),))

    # -- replies ---------------------------------------------------------------------------

    def _event(self, obj: dict[str, Any], raw: bytes, ts: int) -> Decoded:
        kind = obj.get("event")
        if kind == "subscribe":
            arg = get_dict(obj.get("arg"), "arg")
            symbol = canonical_symbol(get_str(arg, "instId"))
            if symbol is None:
                raise FieldError("invalid_field", f"not a spot instrument: {arg['instId']!r}")
            return Decoded(subscribed=(symbol,))
        if kind == "unsubscribe":
            return Decoded()
        if kind == "error":
            code = obj.get("code")
            message = obj.get("msg")
            detail = f"OKX error {code}: {message}"
            found = _UNKNOWN_INST.search(message) if type(message) is str else None
            symbol = canonical_symbol(found.group(1)) if found else None
            if code == "60018" and symbol is not None:
                product = make_product(EXCHANGE, symbol)
                status = Status(
                    product=product,
                    ts_event=ts,
                    ts_ingest=ts,
                    status="offline",
                    reason=f"unknown_symbol: {message}",
                )
                error = DecodeError("unknown_symbol", detail, raw, product)
                return Decoded(events=(status,), errors=(error,))
            return Decoded(errors=(DecodeError("exchange_error", detail, raw),))
        if kind == "notice":
            detail = f"OKX notice {obj.get('code')}: {obj.get('msg')}"
            return Decoded(errors=(DecodeError("exchange_notice", detail, raw),))
        return Decoded(errors=(DecodeError("unknown_type", f"event {kind!r}", raw),))

    # -- books -----------------------------------------------------------------------------

    def _books(
        self, data: list[Any], obj: dict[str, Any], product: str, ts: int, raw: bytes
    ) -> Decoded:
        action = obj.get("action")
        if action not in ("snapshot", "update"):
            detail = f"field 'action': expected snapshot/update, got {action!r}"
            raise FieldError("invalid_field", detail)
        events: list[Event] = []
        errors: list[DecodeError] = []
        marks: list[SeqMark] = []
        checksums: list[BookChecksum] = []
        snapshot = action == "snapshot"
        for item in data:
            push = get_dict(item, "data")
            bids = levels(get_list(push, "bids"), "bids")
            asks = levels(get_list(push, "asks"), "asks")
            seq = get_int(push, "seqId")
            prev = get_int(push, "prevSeqId")
            ts_event = get_ms_ns(push, "ts")
            checksum = push.get("checksum")
            if checksum is not None and type(checksum) is not int:
                raise FieldError(
                    "invalid_field", f"field 'checksum': not an integer: {checksum!r:.40}"
                )
            if not snapshot and product not in self.last_seq:
                detail = f"{product}: update (seqId {seq}) before any snapshot"
                errors.append(DecodeError("no_snapshot", detail, raw, product))
                continue
            mark = self._chain(product, seq, prev, snapshot, bool(bids or asks))
            marks.append(mark)
            if not mark.carries_state:
                continue  # keep-alive: nothing changed
            events.append(
                Book(
                    product=product,
                    src_seq=seq,
                    ts_event=ts_event,
                    ts_ingest=ts,
                    snapshot=snapshot,
                    bids=bids,
                    asks=asks,
                )
            )
            if checksum is not None:
                checksums.append(BookChecksum(product, checksum))
        return Decoded(
            events=tuple(events),
            errors=tuple(errors),
            marks=tuple(marks),
            checksums=tuple(checksums),
            snapshot_products=(product,) if snapshot and events else (),
        )

    def _chain(self, product: str, seq: int, prev: int, snapshot: bool, changes: bool) -> SeqMark:
        """OKX's seqId chain as a contiguous position per product (see the module doc)."""
        last = self.last_seq.get(product)
        position = self.positions.get(product, 0)
        if snapshot or last is None:
            self.last_seq[product] = seq
            self.positions[product] = position + 1
            return SeqMark(product, position + 1)
        if prev == last:
            if seq == prev and not changes:
                return SeqMark(product, position, carries_state=False)  # keep-alive
            self.last_seq[product] = seq
            self.positions[product] = position + 1
            return SeqMark(product, position + 1)
        if seq <= last and prev < last:
            self.duplicates += 1
            return SeqMark(product, position)  # a repeat of a push already applied
        # A break: one position skipped, so the runtime sees the gap and resyncs. The
        # chain goes on from this push (its successors are dropped until the snapshot).
        self.breaks += 1
        self.last_seq[product] = seq
        self.positions[product] = position + 2
        return SeqMark(product, position + 2)

    # -- quotes, tickers, trades, candles --------------------------------------------------

    def _bbo(
        self, data: list[Any], obj: dict[str, Any], product: str, ts: int, raw: bytes
    ) -> Decoded:
        events: list[Event] = []
        for item in data:
            push = get_dict(item, "data")
            bids = levels(get_list(push, "bids"), "bids")
            asks = levels(get_list(push, "asks"), "asks")
            seq = push.get("seqId")
            events.append(
                Quote(
                    product=product,
                    src_seq=get_int(push, "seqId") if seq is not None else None,
                    ts_event=get_ms_ns(push, "ts"),
                    ts_ingest=ts,
                    bid_price=bids[0][0] if bids else None,
                    bid_size=bids[0][1] if bids else None,
                    ask_price=asks[0][0] if asks else None,
                    ask_size=asks[0][1] if asks else None,
                )
            )
        return Decoded(events=tuple(events))

    def _tickers(
        self, data: list[Any], obj: dict[str, Any], product: str, ts: int, raw: bytes
    ) -> Decoded:
        events: list[Event] = []
        for item in data:
            tick = get_dict(item, "data")
            ts_event = get_ms_ns(tick, "ts")
            bid, ask = get_opt_decimal(tick, "bidPx"), get_opt_decimal(tick, "askPx")
            events.append(
                Ticker(
                    product=product,
                    ts_event=ts_event,
                    ts_ingest=ts,
                    price=get_decimal(tick, "last"),
                    open_24h=get_opt_decimal(tick, "open24h"),
                    high_24h=get_opt_decimal(tick, "high24h"),
                    low_24h=get_opt_decimal(tick, "low24h"),
                    volume_24h=get_opt_decimal(tick, "vol24h"),
                    best_bid=bid,
                    best_ask=ask,
                )
            )
            events.append(
                Quote(
                    product=product,
                    ts_event=ts_event,
                    ts_ingest=ts,
                    bid_price=bid,
                    bid_size=get_opt_decimal(tick, "bidSz") if bid is not None else None,
                    ask_price=ask,
                    ask_size=get_opt_decimal(tick, "askSz") if ask is not None else None,
                )
            )
        return Decoded(events=tuple(events))

    def _trades(
        self, data: list[Any], obj: dict[str, Any], product: str, ts: int, raw: bytes
    ) -> Decoded:
        events: list[Event] = []
        for item in data:
            trade = get_dict(item, "data")
            side_text = get_str(trade, "side")
            side = _SIDES.get(side_text)
            if side is None:
                detail = f"field 'side': expected buy/sell, got {side_text!r}"
                raise FieldError("invalid_field", detail)
            trade_id = get_str(trade, "tradeId")
            events.append(
                Trade(
                    product=product,
                    src_seq=int(trade_id) if trade_id.isdigit() and trade_id.isascii() else None,
                    ts_event=get_ms_ns(trade, "ts"),
                    ts_ingest=ts,
                    price=get_decimal(trade, "px"),
                    size=get_decimal(trade, "sz"),
                    side=side,
                    trade_id=trade_id,
                )
            )
        return Decoded(events=tuple(events))

    def _candles(
        self, data: list[Any], obj: dict[str, Any], product: str, ts: int, raw: bytes
    ) -> Decoded:
        for item in data:
            # [ts, open, high, low, close, vol, volCcy, volCcyQuote, confirm]
            if type(item) is not list or len(item) < 9:
                raise FieldError("invalid_field", f"candle: expected 9 fields, got {item!r:.80}")
            get_ms_ns({"ts": item[0]}, "ts")
            for name, value in zip(("o", "h", "l", "c", "vol"), item[1:6], strict=True):
                get_decimal({name: value}, name)
        return Decoded(heartbeat=True)


def _product(inst_id: str) -> str:
    symbol = canonical_symbol(inst_id)
    if symbol is None:
        raise FieldError("invalid_field", f"field 'instId': not a spot instrument: {inst_id!r}")
    return make_product(EXCHANGE, symbol)
