"""The ingestor's side of resync requests (ledgerflux.resync), in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import orjson
import pytest
import trio

from ledgerflux import codec
from ledgerflux.bus import CoreMsg
from ledgerflux.config import IngestConfig
from ledgerflux.events import Status
from ledgerflux.resync import ResyncReply, answer, resync_subject, serve_resync_requests

from .test_runtime import BTC, make_session
from .toy import RestToyFeed, ResubscribeToyFeed


def test_subject_names_the_product() -> None:
    assert resync_subject("coinbase:BTC-USD") == "lf.ctl.resync.coinbase.BTC-USD"
    assert resync_subject("kraken:XBT/USD") == "lf.ctl.resync.kraken.XBT_USD"
    with pytest.raises(ValueError, match="exchange"):
        resync_subject("nocolon")


def test_a_request_starts_a_rest_resync_with_a_gap_status() -> None:
    session = make_session(RestToyFeed(), IngestConfig())
    body = orjson.dumps({"product": BTC, "reason": "normalizer restart"})
    assert answer(session, body) == ResyncReply(ok=True, product=BTC, feed="rt-toy", mode="rest")
    assert session.resyncing() == {BTC}
    [frame] = session.queue.take(1)
    [status] = [e for m in frame.msgs for e in codec.decode_many(m.data)]
    assert isinstance(status, Status)
    assert (status.status, status.reason) == ("gap", "resync requested: normalizer restart")
    # A second request while it runs does not restart it.
    assert answer(session, body).mode == "already"
    assert len(session.queue) == 0


def test_a_feed_without_rest_resubscribes() -> None:
    session = make_session(ResubscribeToyFeed(), IngestConfig())
    reply = answer(session, orjson.dumps({"product": BTC}))
    assert (reply.ok, reply.mode) == (True, "resubscribe")
    assert session.reconnect_reason == f"resync {BTC}: resync requested: requested"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{", "malformed JSON"),
        (b"[]", "expected"),
        (b'{"product": 5}', "expected"),
        (b'{"product": "example:DOGE-USD"}', "does not serve example:DOGE-USD"),
    ],
)
def test_bad_requests_are_refused_without_a_resync(body: bytes, error: str) -> None:
    session = make_session(RestToyFeed(), IngestConfig())
    reply = answer(session, body)
    assert reply.ok is False
    assert reply.error is not None
    assert error in reply.error
    assert session.resyncing() == frozenset()


class FakeRequestBus:
    """Hands the test's requests to the server as one batch and keeps the replies."""

    def __init__(self, batch: list[CoreMsg]) -> None:
        self.batch = batch
        self.subjects: list[str] = []
        self.replies: list[tuple[str, bytes]] = []
        self.answered = trio.Event()

    @asynccontextmanager
    async def subscribe(
        self, subjects: Sequence[str], *, buffer: int = 1
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[CoreMsg]]]:
        self.subjects = list(subjects)
        send, receive = trio.open_memory_channel[list[CoreMsg]](1)
        await send.send(self.batch)
        async with send, receive:
            yield receive

    async def respond(self, replies: Sequence[tuple[str, bytes]]) -> None:
        self.replies.extend(replies)
        self.answered.set()


async def test_serving_answers_a_batch_in_one_respond() -> None:
    session = make_session(RestToyFeed(), IngestConfig())
    good = orjson.dumps({"product": BTC, "reason": "r"})
    bus = FakeRequestBus(
        [
            CoreMsg(resync_subject(BTC), good, "_INBOX.1"),
            CoreMsg(resync_subject(BTC), b"{", "_INBOX.2"),
            CoreMsg(resync_subject(BTC), good, ""),  # no reply wanted
        ]
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_resync_requests, bus, session)
            await bus.answered.wait()
            nursery.cancel_scope.cancel()
    assert bus.subjects == [resync_subject(BTC)]
    assert [(r, orjson.loads(d)["ok"]) for r, d in bus.replies] == [
        ("_INBOX.1", True),
        ("_INBOX.2", False),
    ]
