"""Messages larger than the bus allows: split before publishing, and a refusal is never
retried (the DLQ gets it, the feed goes on)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import orjson
import trio

from ledgerflux import codec
from ledgerflux.bus import BusError, OutMsg, PubAck, PublishRefused
from ledgerflux.config import IngestConfig
from ledgerflux.events import Book, Event, Status, Trade
from ledgerflux.feeds.runtime import message_limit, run_session
from ledgerflux.feeds.session import HEADER_HEADROOM_BYTES
from ledgerflux.parts import PartAssembler

from .test_runtime import BTC, make_session
from .toy import SUBSCRIBED, FakeBooks, FakePublisher, RestToyFeed, ScriptSource, book, trade

MAX_PAYLOAD = 8 * 1024


class SizedPublisher(FakePublisher):
    """A fake bus with a ``max_payload`` that refuses larger messages, as the real one does
    (``refuse`` names further subjects to refuse as if no stream listened to them)."""

    def __init__(self, max_payload: int = MAX_PAYLOAD, refuse: Sequence[str] = ()) -> None:
        super().__init__()
        self.max_payload = max_payload
        self.refuse = tuple(refuse)
        self.refused: list[OutMsg] = []

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        ok = [m for m in msgs if len(m.data) <= self.max_payload and m.subject not in self.refuse]
        acks = iter(await super().publish_batch(ok))
        results: list[PubAck | BusError] = []
        for msg in msgs:
            if msg in ok:
                results.append(next(acks))
                continue
            self.refused.append(msg)
            reason = "too_large" if len(msg.data) > self.max_payload else "no_stream"
            results.append(PublishRefused(msg.subject, len(msg.data), reason, "test"))
        return results


def deep_book(seq: int, levels: int) -> str:
    bids = [(f"{50_000 - i}.{i % 100:02d}", f"0.{i:06d}") for i in range(levels)]
    asks = [(f"{60_000 + i}.{i % 100:02d}", f"1.{i:06d}") for i in range(levels)]
    return book("BTC-USD", seq, snapshot=True, bids=bids, asks=asks)


def assembled(events: list[Event]) -> list[Event]:
    """The events as a consumer applies them: parted snapshots reassembled."""
    assembler = PartAssembler()
    out: list[Event] = []
    for event in events:
        if isinstance(event, Book):
            whole = assembler.add(event)
            if whole is not None:
                out.append(whole)
        else:
            out.append(event)
    assert assembler.pending == frozenset()
    return out


def test_message_limit_is_the_bus_max_payload_less_header_room() -> None:
    assert message_limit(SizedPublisher(max_payload=4096)) == 4096 - HEADER_HEADROOM_BYTES
    assert message_limit(FakePublisher()) == 1024 * 1024 - HEADER_HEADROOM_BYTES


async def test_a_snapshot_larger_than_max_payload_goes_as_parts(
    autojump_clock: trio.abc.Clock,
) -> None:
    settings = IngestConfig()
    session = make_session(RestToyFeed(), settings)
    publisher = SizedPublisher()
    frames = [SUBSCRIBED, deep_book(1, 300), book("BTC-USD", 2, bids=[("49999.50", "3")])]
    with trio.fail_after(60):
        await run_session(session, ScriptSource(frames), publisher, fetcher=None, settings=settings)
    assert publisher.refused == []
    ticks = [m for m in publisher.acked if m.subject.startswith("lf.ticks.")]
    parts = [m for m in ticks if b'"parts"' in m.data]
    assert len(parts) >= 3
    for index, msg in enumerate(parts):
        assert len(msg.data) <= MAX_PAYLOAD - HEADER_HEADROOM_BYTES
        assert msg.msg_id == f"{BTC}:1:book:{index}/{len(parts)}"
    # Consecutive on the product's subject, and whole again once reassembled.
    first = ticks.index(parts[0])
    assert ticks[first : first + len(parts)] == parts
    expected = session.plugin.new_decoder().decode(deep_book(1, 300), 1).events[0]
    books = [e for e in assembled(publisher.events()) if isinstance(e, Book)]
    assert [b.src_seq for b in books] == [1, 2]
    assert books[0] == attrs.evolve(expected, ts_ingest=books[0].ts_ingest)
    assert not [m for m in publisher.acked if m.subject.startswith("lf.dlq.")]


async def test_a_large_frame_of_many_events_becomes_several_messages(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A message with many events over the limit is cut between events, in order."""
    settings = IngestConfig()
    session = make_session(RestToyFeed(), settings)
    session.max_message_bytes = 1500
    trades = [trade("BTC-USD", n) for n in range(1, 41)]
    decoder = session.plugin.new_decoder()
    events = [e for t in trades for e in decoder.decode(t, 5).events]
    session.on_connect()
    session._emit(BTC, events)
    session._flush()
    [frame] = session.queue.take(1)
    assert len(frame.msgs) > 1
    assert all(len(m.data) <= 1500 for m in frame.msgs)
    out = [e for m in frame.msgs for e in codec.decode_many(m.data)]
    assert out == events
    ids = [m.msg_id for m in frame.msgs]
    assert ids == [f"{BTC}:40:trade:{i}/{len(ids)}" for i in range(len(ids))]


async def test_a_refused_message_goes_to_the_dlq_and_the_feed_goes_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The old loop retried a refused publish forever and every frame behind it waited.
    Now: one attempt, a DLQ entry with the reason, subject and size, a gap and a REST
    resync for the product whose book was lost, and the later frames published."""
    settings = IngestConfig()
    session = make_session(RestToyFeed(), settings)
    # A single level larger than the limit cannot be split: the bus refuses the message.
    publisher = SizedPublisher()
    huge = book("BTC-USD", 1, snapshot=True, bids=[("1." + "0" * 9000, "1")])
    books = FakeBooks(
        {"http://toy.invalid/book/BTC-USD": {"seq": 1, "bids": [["10", "1"]], "asks": [], "ts": 1}}
    )
    frames = [SUBSCRIBED, huge, trade("BTC-USD", 2), book("BTC-USD", 3, bids=[("9", "1")])]
    with trio.fail_after(60):
        await run_session(
            session, ScriptSource(frames, pause_s=0.1), publisher, fetcher=books, settings=settings
        )
    assert len(publisher.refused) == 1
    sent = [m for call in publisher.calls for m in call]
    assert len(publisher.refused[0].data) > MAX_PAYLOAD
    assert all(len(m.data) <= MAX_PAYLOAD for m in sent)  # never offered again
    [dlq] = [m for m in publisher.acked if m.subject.startswith("lf.dlq.")]
    assert dlq.subject == "lf.dlq.example.BTC-USD"
    body = orjson.loads(dlq.data)
    refused = publisher.refused[0]
    assert body["reason"] == "publish_refused"
    assert body["refusal"] == "too_large"
    assert (body["subject"], body["size"]) == (refused.subject, len(refused.data))
    # Cut so that the entry itself fits the bus.
    assert body["raw_truncated"] is True
    assert refused.data.decode().startswith(body["raw"])
    assert len(dlq.data) <= MAX_PAYLOAD - HEADER_HEADROOM_BYTES
    assert session.stats.publish_refused == 1
    out = publisher.events()
    kinds = [(e.status, e.reason) for e in out if isinstance(e, Status)]
    assert ("gap", "publish refused (too_large): 1 events lost") in kinds
    assert books.requests == ["http://toy.invalid/book/BTC-USD"]  # the book is resynced
    assert [e.src_seq for e in out if isinstance(e, Trade)] == [2]
    assert [e.src_seq for e in out if isinstance(e, Book)] == [1, 3]  # REST book, delta


async def test_a_refused_oversized_payload_is_cut_in_the_dlq(
    autojump_clock: trio.abc.Clock,
) -> None:
    settings = IngestConfig()
    session = make_session(RestToyFeed(), settings)
    publisher = SizedPublisher(max_payload=2 * 1024 * 1024)
    session.on_connect()
    msg = OutMsg(subject="lf.ticks.0.example.BTC-USD", data=b"x" * (200 * 1024))
    session.on_publish_refused(msg, PublishRefused(msg.subject, len(msg.data), "too_large", "t"))
    [frame] = session.queue.take(1)
    [dlq] = frame.msgs
    body = orjson.loads(dlq.data)
    assert body["raw_truncated"] is True
    assert len(body["raw"]) < len(msg.data)
    assert dlq.subject == "lf.dlq._._"  # not decodable: no product to file it under
    assert len(dlq.data) < publisher.max_payload
