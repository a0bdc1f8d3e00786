"""The shared driver (publish loop, resync loop, drain) with fakes and the autojump clock."""

from __future__ import annotations

import pytest
import trio

from ledgerflux.config import IngestConfig
from ledgerflux.events import Book, Status, Trade
from ledgerflux.feeds.runtime import run_session
from ledgerflux.feeds.session import FeedSession, PublishQueue
from ledgerflux.plugin import FeedPlugin, Subscription

from .toy import SUBSCRIBED, TS, FakeBooks, FakePublisher, RestToyFeed, ScriptSource, book, trade

BTC = "example:BTC-USD"


def make_session(plugin: FeedPlugin, settings: IngestConfig) -> FeedSession:
    return FeedSession(
        plugin,
        Subscription(("BTC-USD",), ("trades", "book")),
        PublishQueue(settings.max_buffer_frames),
        feed=f"rt-{plugin.name}",
        shards=2,
        max_buffer_frames=settings.max_buffer_frames,
    )


async def test_publishes_in_batches_of_frames(autojump_clock: trio.abc.Clock) -> None:
    settings = IngestConfig(publish_batch=4)
    session = make_session(RestToyFeed(), settings)
    publisher = FakePublisher(delay_s=0.01)
    frames = [SUBSCRIBED, *[trade("BTC-USD", n) for n in range(1, 21)]]
    with trio.fail_after(60):
        await run_session(session, ScriptSource(frames), publisher, fetcher=None, settings=settings)
    assert all(len(call) <= 4 for call in publisher.calls)
    assert len(publisher.calls) < 21
    trades = [e.src_seq for e in publisher.events() if isinstance(e, Trade)]
    assert trades == list(range(1, 21))
    kinds = [e.status for e in publisher.events() if isinstance(e, Status)]
    assert kinds == ["online", "offline"]


async def test_failed_publishes_are_retried_with_the_same_ids(
    autojump_clock: trio.abc.Clock,
) -> None:
    settings = IngestConfig(publish_batch=8)
    session = make_session(RestToyFeed(), settings)
    publisher = FakePublisher(fail_next=5)
    frames = [SUBSCRIBED, *[trade("BTC-USD", n) for n in range(1, 11)]]
    with trio.fail_after(60):
        await run_session(session, ScriptSource(frames), publisher, fetcher=None, settings=settings)
    # A retried message lands after the ones acked meanwhile (the bus publishes a batch
    # concurrently); none is missing and none is doubled.
    trades = [e.src_seq for e in publisher.events() if isinstance(e, Trade)]
    assert sorted(trades) == list(range(1, 11))
    sent_ids = [m.msg_id for call in publisher.calls for m in call if m.msg_id]
    acked_ids = [m.msg_id for m in publisher.acked if m.msg_id]
    assert len(sent_ids) > len(acked_ids)  # some were sent twice...
    assert set(sent_ids) == set(acked_ids)  # ...with the same ids


async def test_gap_fetches_the_rest_book_with_retries(autojump_clock: trio.abc.Clock) -> None:
    settings = IngestConfig(backoff_initial_s=0.5, backoff_max_s=4.0)
    session = make_session(RestToyFeed(), settings)
    publisher = FakePublisher()
    books = FakeBooks(
        {"http://toy.invalid/book/BTC-USD": {"seq": 6, "bids": [["10", "1"]], "asks": [], "ts": 1}},
        fail_first=2,
    )
    frames = [
        SUBSCRIBED,
        book("BTC-USD", 1, snapshot=True, bids=[("9", "1")]),
        book("BTC-USD", 5, bids=[("10", "1")]),
        book("BTC-USD", 6, bids=[("9", "0")]),
        *[trade("BTC-USD", n) for n in range(7, 40)],
    ]
    with trio.fail_after(120):
        await run_session(
            session, ScriptSource(frames, pause_s=0.5), publisher, fetcher=books, settings=settings
        )
    assert len(books.requests) == 3
    out = publisher.events()
    kinds = [e.status for e in out if isinstance(e, Status)]
    assert kinds[:2] == ["online", "gap"]
    assert kinds.count("stale") == 2  # each failed fetch says so
    assert "resync" in kinds
    resync_at = next(i for i, e in enumerate(out) if isinstance(e, Status) and e.status == "resync")
    assert isinstance(out[resync_at + 1], Book)
    assert out[resync_at + 1].src_seq == 6
    trades = [e.src_seq for e in out if isinstance(e, Trade)]
    assert trades == list(range(7, 40))  # buffered during the resync, none lost


async def test_slow_publisher_bounded_buffer_stale_then_resync(
    autojump_clock: trio.abc.Clock,
) -> None:
    settings = IngestConfig(max_buffer_frames=16, publish_batch=4)
    session = make_session(RestToyFeed(), settings)
    publisher = FakePublisher(delay_s=1.0)
    depth: list[int] = []

    class Watch(ScriptSource):
        async def run(self, session: FeedSession, task_status: trio.TaskStatus[None]) -> None:
            session.on_connect()
            task_status.started()
            for index, frame in enumerate(self.frames):
                session.on_frame(frame, TS + index)
                depth.append(len(session.queue))
                await trio.sleep(0.01)

    books = FakeBooks(
        {"http://toy.invalid/book/BTC-USD": {"seq": 200, "bids": [], "asks": [], "ts": 1}}
    )
    frames = [SUBSCRIBED, *[trade("BTC-USD", n) for n in range(1, 201)]]
    with trio.fail_after(600):
        await run_session(session, Watch(frames), publisher, fetcher=books, settings=settings)
    assert max(depth) <= 16
    kinds = [e.status for e in publisher.events() if isinstance(e, Status)]
    assert "stale" in kinds
    assert "resync" in kinds
    assert session.stats.overflow_dropped > 0


async def test_cancellation_drains_what_was_decoded(autojump_clock: trio.abc.Clock) -> None:
    settings = IngestConfig(publish_batch=2)
    session = make_session(RestToyFeed(), settings)
    publisher = FakePublisher()
    publisher.gate = trio.Event()

    class Endless(ScriptSource):
        async def run(self, session: FeedSession, task_status: trio.TaskStatus[None]) -> None:
            session.on_connect()
            session.on_frame(SUBSCRIBED, TS)
            for n in range(1, 11):
                session.on_frame(trade("BTC-USD", n), TS + n)
            task_status.started()
            await trio.sleep_forever()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_session(
                    session,
                    Endless([]),
                    publisher,
                    fetcher=None,
                    settings=settings,
                    drain_timeout_s=5.0,
                    task_status=task_status,
                )
            )
            await trio.sleep(1)
            assert publisher.acked == []  # the bus is stuck...
            nursery.cancel_scope.cancel()
            publisher.gate.set()  # ...and comes back during the drain
    trades = [e.src_seq for e in publisher.events() if isinstance(e, Trade)]
    assert trades == list(range(1, 11))
    assert [e.status for e in publisher.events() if isinstance(e, Status)][-1] == "offline"


async def test_drain_is_bounded_when_the_bus_never_answers(
    autojump_clock: trio.abc.Clock,
) -> None:
    settings = IngestConfig()
    session = make_session(RestToyFeed(), settings)
    publisher = FakePublisher()
    publisher.gate = trio.Event()  # never set
    with trio.fail_after(60):
        with trio.move_on_after(1):
            await run_session(
                session,
                ScriptSource([SUBSCRIBED, trade("BTC-USD", 1)], pause_s=100),
                publisher,
                fetcher=None,
                settings=settings,
                drain_timeout_s=3.0,
            )
        assert trio.current_time() == pytest.approx(4.0)  # 1 s run + the 3 s drain bound
    assert publisher.acked == []
