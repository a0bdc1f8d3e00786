"""The snapshotter against real NATS and PostgreSQL (and a local-folder archive): the
whole path LF_TICKS → normalizer → LF_MD → snapshotter → history, latest state, archive."""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio

from ledgerflux import codec
from ledgerflux.archive import LocalArchive
from ledgerflux.bus import OutMsg, PubAck, open_bus
from ledgerflux.config import (
    ArchiveConfig,
    Config,
    DatabaseConfig,
    NatsConfig,
    NormalizeConfig,
    SnapshotConfig,
)
from ledgerflux.events import Book, Event, Trade
from ledgerflux.normalizer import serve_normalize
from ledgerflux.snapshotter import SnapshotStats, serve_snapshot
from ledgerflux.state import ProductState
from ledgerflux.store import open_store
from ledgerflux.subjects import ticks_msg_id, ticks_subject

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e]

SHARDS = 2
CONFIG = Config(
    normalize=NormalizeConfig(shards=SHARDS, batch=64),
    snapshot=SnapshotConfig(batch=25, flush_interval_s=0.05),
    archive=ArchiveConfig(batch_max_events=20, batch_max_age_s=0.5, state_snapshot_interval_s=1),
    drain_timeout_s=5,
)
PRODUCTS = ["test:AAA-USD", "test:BBB-USD", "test:CCC-USD"]
T0 = 1_700_000_000_000_000_000
D = Decimal


def events_for(product: str) -> list[Event]:
    out: list[Event] = [
        Book(product=product, src_seq=1, ts_event=T0, ts_ingest=T0 + 1, snapshot=True,
             bids=((D("99.5"), D(1)),), asks=((D("100.5"), D(2)),)),
    ]  # fmt: skip
    for s in range(2, 41):
        if s % 2:
            out.append(Book(product=product, src_seq=s, ts_event=T0 + s, ts_ingest=T0 + s + 1,
                            snapshot=False, bids=((D("99") + D(s) / 100, D(s)),)))  # fmt: skip
        else:
            out.append(Trade(product=product, src_seq=s, ts_event=T0 + s, ts_ingest=T0 + s + 1,
                             price=D("100.5"), size=D("0.1"), side="buy"))  # fmt: skip
    return out


async def test_every_event_reaches_history_state_and_archive(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    expected = {p: events_for(p) for p in PRODUCTS}
    total = sum(len(v) for v in expected.values())
    archive = LocalArchive(tmp_path / "archive", prefix="archive")
    stats = SnapshotStats()
    with trio.fail_after(120):
        async with (
            open_bus(NatsConfig(), url=nats_url) as bus,
            open_store(DatabaseConfig(), url=database_url) as store,
        ):
            await bus.ensure_streams()
            msgs = [
                OutMsg(ticks_subject(e.product, SHARDS), codec.encode_many([e]),
                       msg_id=ticks_msg_id(e.product, e.src_seq or 0))
                for events in expected.values() for e in events
            ]  # fmt: skip
            assert all(isinstance(r, PubAck) for r in await bus.publish_batch(msgs))
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(serve_snapshot, CONFIG, bus=bus, store=store, archive=archive,
                            stats=stats)
                )  # fmt: skip
                for shard in range(SHARDS):
                    await nursery.start(partial(serve_normalize, CONFIG, bus=bus, shard=shard))
                while await store.history_count() < total:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()  # drain: final commit, ack, archive

            for product, events in expected.items():
                row = await store.latest_state(product)
                assert row is not None
                history = await store.history(product, row.epoch, 1)
                assert [attrs.evolve(e, seq=0, epoch="") for e in history] == events
                assert [e.seq for e in history] == list(range(1, len(events) + 1))
                # the stored state equals replaying the history
                replayed = ProductState(product)
                for e in history:
                    replayed.apply(e)
                assert row.seq == len(events)
                assert dict(row.state) == replayed.to_json()
            assert await bus.consumer_pending("LF_MD", "snapshot") == 0

    archived: list[Event] = []
    for key in await archive.list_keys():
        archived.extend(await archive.read_events(key))
    assert sorted((e.product, e.seq) for e in archived) == sorted(
        (p, i) for p, events in expected.items() for i in range(1, len(events) + 1)
    )
    assert await archive.list_state_keys()
    assert stats.events == total
