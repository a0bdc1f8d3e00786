"""Small fakes implementing the interfaces the gateway codes against (see
ledgerflux/gateway/ports.py): ProductState, Bus (ordered consumer + stream_state), Store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import attrs
import trio

from ledgerflux.codec import encode, to_wire
from ledgerflux.events import Book, Event, Quote, Status, Ticker, Trade


class FakeProductState:
    """The ProductState API (ledgerflux.state) reduced to what the gateway needs."""

    def __init__(self, product: str) -> None:
        self.product = product
        self.epoch = ""
        self.seq = 0
        self.ts_event = 0
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.quote: dict[str, Any] | None = None
        self.trade: dict[str, Any] | None = None
        self.ticker: dict[str, Any] | None = None
        self.status: dict[str, Any] | None = None

    def apply(self, event: Event, *, strict_book: bool = True) -> None:
        if event.epoch == self.epoch and event.seq != self.seq + 1:
            raise ValueError(f"expected seq {self.seq + 1}, got {event.seq}")
        self.epoch, self.seq, self.ts_event = event.epoch, event.seq, event.ts_event
        if isinstance(event, Book):
            if event.snapshot:
                self.bids, self.asks = {}, {}
            for side, levels in ((self.bids, event.bids), (self.asks, event.asks)):
                for price, size in levels:
                    if size == 0:
                        side.pop(price, None)
                    else:
                        side[price] = size
        elif isinstance(event, Quote):
            self.quote = to_wire(event)
        elif isinstance(event, Trade):
            self.trade = to_wire(event)
        elif isinstance(event, Ticker):
            self.ticker = to_wire(event)
        elif isinstance(event, Status):
            self.status = to_wire(event)

    def to_json(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "epoch": self.epoch,
            "seq": self.seq,
            "ts_event": self.ts_event,
            "book": {
                "bids": [[str(p), str(s)] for p, s in sorted(self.bids.items(), reverse=True)],
                "asks": [[str(p), str(s)] for p, s in sorted(self.asks.items())],
            },
            "quote": self.quote,
            "trade": self.trade,
            "ticker": self.ticker,
            "status": self.status,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FakeProductState:
        state = cls(obj["product"])
        state.epoch, state.seq, state.ts_event = obj["epoch"], obj["seq"], obj["ts_event"]
        state.bids = {Decimal(p): Decimal(s) for p, s in obj["book"]["bids"]}
        state.asks = {Decimal(p): Decimal(s) for p, s in obj["book"]["asks"]}
        state.quote, state.trade = obj["quote"], obj["trade"]
        state.ticker, state.status = obj["ticker"], obj["status"]
        return state


@attrs.frozen
class InMsg:
    subject: str
    data: bytes
    stream_seq: int
    headers: dict[str, str] | None = None


@attrs.frozen
class StreamState:
    first_seq: int
    last_seq: int
    messages: int


class FakeBus:
    """An in-memory LF_MD: ``publish`` appends; ``ordered`` replays from ``start_seq`` and
    then follows new messages, in batches."""

    def __init__(self) -> None:
        self.messages: list[InMsg] = []
        self.expired = 0
        """Messages removed from the head (retention): positions start at expired + 1."""
        self._changed = trio.Event()

    def expire(self, count: int) -> None:
        """Retention: drop the oldest ``count`` messages."""
        del self.messages[:count]
        self.expired += count

    def publish(self, event: Event) -> int:
        return self.publish_raw(encode(event))

    def publish_raw(self, data: bytes) -> int:
        seq = self.expired + len(self.messages) + 1
        self.messages.append(InMsg("lf.md.x.y", data, seq))
        self._changed.set()
        self._changed = trio.Event()
        return seq

    async def stream_state(self, stream: str) -> StreamState:
        n = len(self.messages)
        return StreamState(self.expired + 1 if n else 0, self.expired + n, n)

    @contextlib.asynccontextmanager
    async def ordered(
        self,
        stream: str,
        filter_subject: str,
        *,
        start_seq: int | None = None,
        max_batch: int = 512,
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[InMsg]]]:
        send, receive = trio.open_memory_channel[list[InMsg]](4)
        next_seq = start_seq if start_seq is not None else self.expired + len(self.messages) + 1

        async def pump() -> None:
            nonlocal next_seq
            async with send:
                while True:
                    index = max(next_seq - (self.expired + 1), 0)
                    if index < len(self.messages):
                        batch = self.messages[index : index + max_batch]
                        next_seq = batch[-1].stream_seq + 1
                        await send.send(batch)
                    else:
                        await self._changed.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            yield receive
            nursery.cancel_scope.cancel()


@attrs.frozen
class StateRow:
    product: str
    epoch: str
    seq: int
    ts_event: int
    stream_seq: int | None
    state: dict[str, Any]


class FakeStore:
    """History and latest state in memory; ``history_delay`` widens the backfill seam."""

    def __init__(self) -> None:
        self.rows: list[StateRow] = []
        self.events: dict[tuple[str, str], list[Event]] = {}
        self.history_delay = 0.0
        self.history_calls = 0

    def add_history(self, events: Sequence[Event]) -> None:
        for event in events:
            self.events.setdefault((event.product, event.epoch), []).append(event)

    async def latest_states(self, products: Sequence[str] | None = None) -> list[StateRow]:
        return list(self.rows)

    async def history(
        self, product: str, epoch: str, from_seq: int, to_seq: int | None = None, limit: int = 1000
    ) -> list[Event]:
        self.history_calls += 1
        if self.history_delay:
            await trio.sleep(self.history_delay)
        found = [
            e
            for e in self.events.get((product, epoch), [])
            if e.seq >= from_seq and (to_seq is None or e.seq <= to_seq)
        ]
        return found[:limit]


PRODUCT = "coinbase:BTC-USD"


def trade(
    seq: int,
    *,
    product: str = PRODUCT,
    epoch: str = "e1",
    price: str = "100.5",
    trade_id: str | None = None,
) -> Trade:
    return Trade(
        product=product,
        seq=seq,
        epoch=epoch,
        ts_event=seq * 1000,
        ts_ingest=seq * 1000 + 1,
        price=Decimal(price),
        size=Decimal("0.25"),
        side="buy",
        trade_id=trade_id,
    )


def quote(seq: int, *, product: str = PRODUCT, epoch: str = "e1", bid: str = "100") -> Quote:
    return Quote(
        product=product,
        seq=seq,
        epoch=epoch,
        ts_event=seq * 1000,
        ts_ingest=seq * 1000,
        bid_price=Decimal(bid),
        bid_size=Decimal(1),
        ask_price=Decimal(bid) + 1,
        ask_size=Decimal(2),
    )


def book(
    seq: int,
    *,
    product: str = PRODUCT,
    epoch: str = "e1",
    snapshot: bool = False,
    bids: tuple[tuple[str, str], ...] = (("100", "1"),),
    asks: tuple[tuple[str, str], ...] = (("101", "2"),),
) -> Book:
    return Book(
        product=product,
        seq=seq,
        epoch=epoch,
        ts_event=seq * 1000,
        ts_ingest=seq * 1000,
        snapshot=snapshot,
        bids=tuple((Decimal(p), Decimal(s)) for p, s in bids),
        asks=tuple((Decimal(p), Decimal(s)) for p, s in asks),
    )


def mixed(seq: int, **kw: Any) -> Event:
    """A deterministic mix of event types by seq."""
    kind = seq % 3
    if kind == 0:
        return trade(seq, **kw)
    if kind == 1:
        return quote(seq, **kw)
    return book(seq, bids=((str(90 + seq % 7), str(seq)),), **kw)
