"""Every bundled Coinbase recording through the whole pipeline: the plugins, the normalizer
and the snapshotter agree, so nothing lands in the DLQ, and PostgreSQL holds every event
LF_MD carries, contiguous per product from seq 1."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

from ledgerflux.app import serve_up
from ledgerflux.bus import open_bus
from ledgerflux.config import Config, DatabaseConfig, GatewayConfig, IngestConfig, NatsConfig
from ledgerflux.store import open_store
from ledgerflux.subjects import DLQ_STREAM, MD_STREAM

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]


@pytest.mark.parametrize(
    "recording",
    [
        "coinbase/exchange-reference-2021.jsonl.gz",
        "coinbase/exchange-channels.jsonl.gz",
        "coinbase/advanced-channels.jsonl.gz",
    ],
)
async def test_recording_reaches_postgres_with_an_empty_dlq(
    recording: str, tmp_path: Path, nats_url: str, database_url: str
) -> None:
    config = Config(
        data_dir=str(tmp_path / "data"),
        drain_timeout_s=60.0,
        nats=NatsConfig(url=nats_url),
        database=DatabaseConfig(url=database_url),
        gateway=GatewayConfig(port=0),
        ingest=IngestConfig(
            feed="replay",
            replay_path=str(ROOT / "recordings" / recording),
            replay_speed=0.0,
            replay_loop=False,
        ),
    )
    with trio.fail_after(120):
        # A finite replay: serve_up returns once it ended and everything is persisted.
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_up, config))
        async with open_bus(NatsConfig(), url=nats_url) as bus:
            dlq = await bus.stream_state(DLQ_STREAM)
            md = await bus.stream_state(MD_STREAM)
        async with open_store(DatabaseConfig(), url=database_url) as store:
            stored = await store.history_count()
            latest = await store.latest_states()
            bounds = [await store.history_bounds(s.product, s.epoch) for s in latest]
    assert dlq.messages == 0
    assert md.messages > 0
    assert stored == md.messages
    assert bounds == [(1, s.seq) for s in latest]
