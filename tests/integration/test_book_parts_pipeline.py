"""A 50,000-level book snapshot through the whole pipeline on a real nats-server with the
default 1 MiB ``max_payload``: fake exchange → ingestor → LF_TICKS (parts) → normalizer →
LF_MD (parts of one seq) → snapshotter → PostgreSQL, and → gateway → a WebSocket
subscriber that asks for a snapshot.

The book used to stall the feed forever (the publish was refused and retried), lose the
snapshot and send every later delta to the DLQ. Now every consumer applies the parts
atomically: PostgreSQL holds the snapshot as one history row, ``md_latest`` holds the whole
book with the later updates applied, the subscriber's snapshot is the whole book, and the
DLQ stays empty.
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from test_book_parts_nats import UPDATES, expected_snapshot, write_deep_recording

from ledgerflux.archive import open_archive
from ledgerflux.bus import open_bus
from ledgerflux.config import (
    ArchiveConfig,
    Config,
    DatabaseConfig,
    GatewayConfig,
    IngestConfig,
    NatsConfig,
    NormalizeConfig,
)
from ledgerflux.feeds.registry import load_feed
from ledgerflux.feeds.runtime import run_feed
from ledgerflux.gateway import serve_gateway
from ledgerflux.normalizer import serve_normalize
from ledgerflux.plugin import Subscription
from ledgerflux.snapshotter import serve_snapshot
from ledgerflux.state import ProductState
from ledgerflux.store import open_store
from ledgerflux.subjects import DLQ_STREAM, MD_STREAM
from ledgerflux.testing.fake_exchange import open_fake_exchange
from ledgerflux.testing.websocket import open_websocket_url

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

PRODUCT = "coinbase:BTC-USD"


def levels(raw: list[list[str]]) -> tuple[tuple[Decimal, Decimal], ...]:
    return tuple((Decimal(p), Decimal(s)) for p, s in raw)


async def subscribe_snapshot(ws_url: str) -> dict[str, Any]:
    """The gateway's snapshot reply, its parts (if any) put together."""
    async with open_websocket_url(ws_url, max_message_size=8 * 1024 * 1024) as ws:
        request = {"op": "subscribe", "id": 1, "products": [PRODUCT], "snapshot": True}
        await ws.send_message(orjson.dumps(request).decode())
        collected: dict[str, Any] | None = None
        while True:
            msg = orjson.loads(await ws.get_message())
            if msg.get("type") != "snapshot":
                continue
            parts = msg.get("parts", 1)
            if parts == 1:
                return dict(msg)
            if msg["part"] == 0:
                collected = msg
                continue
            assert collected is not None
            assert msg["part"] > 0
            assert (msg["seq"], msg["epoch"]) == (collected["seq"], collected["epoch"])
            collected["book"]["bids"] += msg["book"]["bids"]
            collected["book"]["asks"] += msg["book"]["asks"]
            if msg["part"] == parts - 1:
                collected.pop("part")
                collected.pop("parts")
                return dict(collected)


async def test_a_50k_level_snapshot_through_the_whole_pipeline(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    recording = tmp_path / "deep.jsonl"
    write_deep_recording(recording)
    want = expected_snapshot(recording)
    config = Config(
        data_dir=str(tmp_path / "data"),
        nats=NatsConfig(url=nats_url),
        database=DatabaseConfig(url=database_url),
        normalize=NormalizeConfig(shards=1),
        gateway=GatewayConfig(port=0),
        archive=ArchiveConfig(),
    )
    plugin = load_feed("coinbase-advanced")
    with trio.fail_after(240):
        async with (
            open_bus(config.nats, url=nats_url) as bus,
            open_store(config.database, url=database_url) as store,
            open_fake_exchange(recording, speed=0.0) as fake,
            trio.open_nursery() as nursery,
        ):
            await bus.ensure_streams()
            archive = open_archive(config.archive, tmp_path / "data")
            snapshot_progress = await nursery.start(
                partial(serve_snapshot, config, bus=bus, store=store, archive=archive)
            )
            gateway = await nursery.start(partial(serve_gateway, config, bus=bus, store=store))
            normalize_progress = await nursery.start(
                partial(serve_normalize, config, bus=bus, shard=0)
            )
            await nursery.start(
                lambda task_status: run_feed(
                    plugin,
                    Subscription(("BTC-USD",), ("level2",)),
                    bus,
                    settings=IngestConfig(),
                    shards=1,
                    endpoint=fake.ws_url,
                    rest_endpoint=fake.rest_url,
                    requests=bus,
                    task_status=task_status,
                )
            )
            await fake.finished.wait()
            # Caught up: every book event of the recording is on LF_MD and in PostgreSQL.
            while True:
                state = await store.latest_state(PRODUCT)
                if state is not None and state.seq >= 1 + UPDATES:
                    break
                await trio.sleep(0.2)
            md = await bus.stream_state(MD_STREAM)
            await snapshot_progress.wait_for(md.last_seq)
            assert normalize_progress.position > 0
            reply = await subscribe_snapshot(gateway.ws_url)
            history = await store.history(PRODUCT, state.epoch, 1)
            dlq = await bus.stream_state(DLQ_STREAM)
            nursery.cancel_scope.cancel()

    assert dlq.messages == 0
    assert md.messages > 2 + UPDATES  # the snapshot went as several LF_MD messages
    # PostgreSQL: the snapshot is one history row (one seq), whole; then the updates.
    snapshot_row, *updates = [e for e in history if e.TYPE == "book"]
    assert snapshot_row.snapshot
    assert snapshot_row.parts == 1
    assert (snapshot_row.bids, snapshot_row.asks) == (want.bids, want.asks)
    assert len(updates) == UPDATES
    # md_latest: the whole book with the updates applied, as a rebuild from history.
    rebuilt = ProductState(PRODUCT)
    for event in history:
        rebuilt.apply(event)
    assert state.state == rebuilt.to_json()
    assert len(state.state["book"]["bids"]) + len(state.state["book"]["asks"]) == 50_000
    # The subscriber: the whole current book, stamped with the last seq.
    assert reply["seq"] == state.seq
    assert levels(reply["book"]["bids"]) == tuple(rebuilt.book.bids())
    assert levels(reply["book"]["asks"]) == tuple(rebuilt.book.asks())
