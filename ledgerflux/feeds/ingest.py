"""The ingest daemon: the configured feed plugin, or the replay feed, into the bus.

It sits above both :mod:`~ledgerflux.feeds.runtime` (live feeds) and
:mod:`~ledgerflux.feeds.replay` (recordings), which builds on the runtime, so neither of
those imports the other back.
"""

from __future__ import annotations

import trio

from ledgerflux.bus import Bus, Publisher
from ledgerflux.config import Config
from ledgerflux.feeds.registry import load_feed
from ledgerflux.feeds.replay import ReplayFeed, resolve_replay_path, run_replay
from ledgerflux.feeds.runtime import credentials_for, run_feed, subscription_for

__all__ = ["serve_ingest"]


async def serve_ingest(
    config: Config,
    *,
    bus: Publisher,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The ingest daemon: the configured feed (or the replay feed) into ``bus``.

    Ready once subscribed (replay: once the first frame is published). Runs until
    cancelled (a replay without ``replay_loop`` returns at the recording's end); on
    cancellation it drains as :func:`run_feed` describes, bounded by ``drain_timeout_s``.
    On a real bus it answers resync requests for its products (:mod:`ledgerflux.resync`).
    """
    requests = bus if isinstance(bus, Bus) else None

    ingest = config.ingest
    plugin = load_feed(ingest.feed)
    if isinstance(plugin, ReplayFeed):
        await run_replay(
            config,
            publisher=bus,
            path=resolve_replay_path(ingest.replay_path),
            speed=ingest.replay_speed,
            loop=ingest.replay_loop,
            progress=False,
            requests=requests,
            task_status=task_status,
        )
        return
    subscription = subscription_for(plugin, ingest)
    credentials = credentials_for(plugin, ingest.feed, subscription)
    await run_feed(
        plugin,
        subscription,
        bus,
        settings=ingest,
        shards=config.normalize.shards,
        endpoint=ingest.endpoint,
        rest_endpoint=ingest.rest_endpoint,
        credentials=credentials,
        drain_timeout_s=config.drain_timeout_s,
        requests=requests,
        task_status=task_status,
    )
