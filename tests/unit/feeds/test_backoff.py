"""Backoff shape and the supervision loop's reconnect timing (autojump clock)."""

from __future__ import annotations

import itertools
import random

import pytest
import trio

from ledgerflux.config import IngestConfig
from ledgerflux.feeds.backoff import Backoff, TokenBucket
from ledgerflux.feeds.runtime import WebSocketSource
from ledgerflux.feeds.session import FeedSession, PublishQueue
from ledgerflux.plugin import Subscription

from .toy import RestToyFeed


def test_ceiling_doubles_then_caps_and_delays_are_jittered_below_it() -> None:
    backoff = Backoff(0.5, 8.0, rng=random.Random(1))
    ceilings, delays = [], []
    for _ in range(8):
        ceilings.append(backoff.ceiling_s)
        delays.append(backoff.next_delay())
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder


def test_full_jitter_spreads_over_the_whole_range() -> None:
    backoff = Backoff(1.0, 1.0, rng=random.Random(2))
    delays = [backoff.next_delay() for _ in range(1000)]
    assert min(delays) < 0.1
    assert max(delays) > 0.9


def test_healthy_connection_resets_and_long_outage_does_not_overflow() -> None:
    backoff = Backoff(0.5, 30.0, healthy_after_s=60.0, rng=random.Random(3))
    for _ in range(2000):
        backoff.next_delay(up_for_s=1.0)
    assert backoff.ceiling_s == 30.0
    backoff.next_delay(up_for_s=61.0)  # that connection was healthy: count from zero
    assert backoff.ceiling_s == 1.0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(2.0, 1.0)


async def test_supervision_loop_waits_growing_capped_delays(
    autojump_clock: trio.abc.Clock,
) -> None:
    settings = IngestConfig(backoff_initial_s=1.0, backoff_max_s=8.0)
    plugin = RestToyFeed()
    session = FeedSession(
        plugin,
        Subscription(("BTC-USD",), ("book",)),
        PublishQueue(10),
        feed="backoff-test",
        shards=1,
        max_buffer_frames=10,
    )
    backoff = Backoff(1.0, 8.0, rng=random.Random(4))
    source = WebSocketSource(
        plugin,
        session.subscription,
        endpoint="ws://127.0.0.1:9/never",
        credentials=None,
        backoff=backoff,
    )
    attempts: list[float] = []
    up_for = {3: 100.0}  # the 4th connection stays up long enough to count as healthy

    async def connection(session: FeedSession, ready: object) -> str:
        attempts.append(trio.current_time())
        await trio.sleep(up_for.get(len(attempts) - 1, 0.0))
        return "refused"

    source._connection = connection  # type: ignore[method-assign]
    assert settings.backoff_max_s == 8.0
    with trio.move_on_after(300):
        await source.run(session, trio.TASK_STATUS_IGNORED)
    waits = [b - a for a, b in itertools.pairwise(attempts)]
    ceilings = [1.0, 2.0, 4.0, 100.0 + 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for wait, ceiling in zip(waits, ceilings, strict=False):
        assert 0 <= wait <= ceiling
    assert len(attempts) > 20  # it keeps trying, capped at 8 s per wait
    assert max(waits[5:]) <= 8.0


async def test_token_bucket_spaces_requests(autojump_clock: trio.abc.Clock) -> None:
    bucket = TokenBucket(2.0)
    stamps = []
    for _ in range(5):
        await bucket.acquire()
        stamps.append(trio.current_time())
    assert [round(b - a, 6) for a, b in itertools.pairwise(stamps)] == [0.5] * 4
