"""Small fakes for the runtime tests: a REST-resyncing variant of the example plugin, a
scripted frame source, an in-memory publisher and a book fetcher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import orjson
import trio
from ledgerflux_example_feed import ExampleFeed

from ledgerflux import codec
from ledgerflux.bus import BusError, OutMsg, PubAck, PublishFailed
from ledgerflux.events import Book, Event
from ledgerflux.feeds.session import FeedSession
from ledgerflux.plugin import BookSnapshot, RestRequest, ResyncMode, SequenceModel

TS = 1_795_000_000_000_000_000


class RestToyFeed(ExampleFeed):
    """The example exchange with a REST book at ``/book/<symbol>`` (REST resync)."""

    name: ClassVar[str] = "toy"
    rest_endpoint: ClassVar[str | None] = "http://toy.invalid"
    resync_mode: ClassVar[ResyncMode] = ResyncMode.REST
    rest_rate_limit_per_s: ClassVar[float] = 2.0

    def book_request(self, symbol: str) -> RestRequest | None:
        return RestRequest(url=f"{self.rest_endpoint}/book/{symbol}")

    def parse_book(self, symbol: str, body: bytes, ts_ingest: int) -> BookSnapshot:
        obj = orjson.loads(body)
        decoded = self.new_decoder().decode(
            orjson.dumps({**obj, "type": "book", "symbol": symbol, "snapshot": True}), ts_ingest
        )
        if decoded.errors or not decoded.events:
            raise ValueError(f"bad REST book: {decoded.errors}")
        book = decoded.events[0]
        assert isinstance(book, Book)
        return BookSnapshot(book=book, src_seq=obj["seq"])


class ResubscribeToyFeed(ExampleFeed):
    name: ClassVar[str] = "toy-resub"


class ConnectionSeqToyFeed(RestToyFeed):
    """Sequence numbers count per connection (every mark's key is ``None``)."""

    name: ClassVar[str] = "toy-conn"
    sequence_model: ClassVar[SequenceModel] = SequenceModel.PER_CONNECTION


def book(symbol: str, seq: int, *, snapshot: bool = False, bids: Any = (), asks: Any = ()) -> str:
    return orjson.dumps(
        {
            "type": "book",
            "symbol": symbol,
            "seq": seq,
            "snapshot": snapshot,
            "bids": [list(b) for b in bids],
            "asks": [list(a) for a in asks],
            "ts": TS + seq,
        }
    ).decode()


def trade(symbol: str, seq: int, price: str = "100", size: str = "1") -> str:
    return orjson.dumps(
        {
            "type": "trade",
            "symbol": symbol,
            "seq": seq,
            "price": price,
            "size": size,
            "side": "buy",
            "id": f"t{seq}",
            "ts": TS + seq,
        }
    ).decode()


SUBSCRIBED = '{"type":"subscribed","symbols":["BTC-USD","ETH-USD"]}'


class FakePublisher:
    """Stores what it is given. ``fail_next`` makes the next N messages that carry a msg id
    fail (retryable);
    ``delay_s`` makes every batch slow; ``gate`` (when set) blocks batches until opened."""

    def __init__(self, *, delay_s: float = 0.0, fail_next: int = 0) -> None:
        self.delay_s = delay_s
        self.fail_next = fail_next
        self.calls: list[list[OutMsg]] = []
        self.acked: list[OutMsg] = []
        self.gate: trio.Event | None = None
        self.stop_after: int | None = None
        """Cancel ``stop`` once this many non-status events are acked."""
        self.stop: trio.CancelScope | None = None

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        self.calls.append(list(msgs))
        if self.gate is not None:
            await self.gate.wait()
        await trio.sleep(self.delay_s)
        results: list[PubAck | BusError] = []
        for msg in msgs:
            if self.fail_next > 0 and msg.msg_id is not None:
                self.fail_next -= 1
                results.append(PublishFailed("no ack"))
            else:
                self.acked.append(msg)
                results.append(PubAck(stream="LF_TICKS", seq=len(self.acked), duplicate=False))
        if self.stop is not None and self.stop_after is not None:
            data = [e for e in self.events() if e.TYPE != "status"]
            if len(data) >= self.stop_after:
                self.stop.cancel()
        return results

    def events(self, subject_prefix: str = "lf.ticks.") -> list[Event]:
        return [
            e
            for m in self.acked
            if m.subject.startswith(subject_prefix)
            for e in codec.decode_many(m.data)
        ]


class ScriptSource:
    """Feeds a fixed list of frames (one connection), then returns."""

    def __init__(self, frames: Sequence[str], *, pause_s: float = 0.0) -> None:
        self.frames = frames
        self.pause_s = pause_s

    async def run(self, session: FeedSession, task_status: trio.TaskStatus[None]) -> None:
        session.on_connect()
        task_status.started()
        for index, frame in enumerate(self.frames):
            session.on_frame(frame, TS + 1_000_000 + index)
            await trio.sleep(self.pause_s)


class FakeBooks:
    """REST bodies per URL; ``fail_first`` failures before answering."""

    def __init__(self, bodies: dict[str, dict[str, Any]], *, fail_first: int = 0) -> None:
        self.bodies = bodies
        self.fail_first = fail_first
        self.requests: list[str] = []

    async def fetch(self, request: RestRequest) -> bytes:
        await trio.lowlevel.checkpoint()
        self.requests.append(request.url)
        if self.fail_first > 0:
            self.fail_first -= 1
            raise OSError("REST down")
        return orjson.dumps(self.bodies[request.url])
