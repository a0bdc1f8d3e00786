"""kill -9 of the stateful daemons under live traffic, as an operator would do it.

The daemons run as separate OS processes on real NATS JetStream and PostgreSQL: an ingestor
replaying the demo recording (looping), two normalizer shards and a snapshotter. The
snapshotter and a normalizer shard are killed with SIGKILL at random moments and started
again at once. Afterwards, with the ingestor stopped and everything caught up:

* LF_MD is contiguous per product and epoch (no hole, no duplicate);
* ``md_history`` holds every LF_MD event exactly once, as the same whole event;
* ``md_latest`` equals the state rebuilt from ``md_history``;
* no book delta was refused for want of a snapshot (a restarted normalizer restores its
  books; it never waits for the exchange to send a new snapshot).

Before the consumers resumed from committed positions, the first point failed for the
snapshotter (history lost the messages the killed process held: they came back after
the ack wait, behind newer ones, and were taken for already applied), and the last one
for the normalizer (every delta after its restart went to the DLQ as no_base_snapshot).
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import orjson
import psycopg
import pytest
import trio
from e2e_support import DEMO, free_port, ledgerflux_env
from test_pipeline import kill, spawn, stop, wait_ready

from ledgerflux import codec
from ledgerflux.bus import Bus, open_bus
from ledgerflux.config import NatsConfig
from ledgerflux.events import Event
from ledgerflux.parts import StreamParts
from ledgerflux.state import ProductState
from ledgerflux.subjects import DLQ_STREAM, MD_STREAM

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

ROUNDS = int(os.environ.get("LEDGERFLUX_KILL9_ROUNDS", "3"))


class Daemon:
    def __init__(self, name: str, args: list[str], env: dict[str, str], tmp_path: Path) -> None:
        self.name = name
        self.args = args
        self.port = free_port()
        self.env = {**env, "LEDGERFLUX_HEALTH_PORT": str(self.port)}
        self.tmp_path = tmp_path
        self.starts = 0
        self.proc: trio.Process | None = None
        self.log = tmp_path / f"{name}.0.log"

    async def start(self) -> None:
        self.starts += 1
        self.log = self.tmp_path / f"{self.name}.{self.starts}.log"
        self.proc = await spawn(self.args, self.env, self.log)
        await wait_ready(f"http://127.0.0.1:{self.port}/readyz", [self.proc], [self.log])

    async def kill9(self) -> None:
        assert self.proc is not None
        assert self.proc.poll() is None, f"{self.name} died by itself:\n{self.log.read_text()}"
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


async def read_all(bus: Bus, stream: str) -> list[tuple[int, bytes]]:
    """Every message of ``stream`` in stream order: (stream seq, data)."""
    state = await bus.stream_state(stream)
    out: list[tuple[int, bytes]] = []
    if not state.messages:
        return out
    async with bus.ordered(stream, ">", start_seq=state.first_seq, max_batch=1000) as batches:
        async for batch in batches:
            out += [(m.stream_seq, m.data) for m in batch]
            if batch[-1].stream_seq >= state.last_seq:
                return out
    return out


def md_events(raw: list[tuple[int, bytes]]) -> list[Event]:
    """LF_MD as events, parted snapshots assembled (a snapshot is one event)."""
    parts = StreamParts()
    events = []
    for stream_seq, data in raw:
        whole = parts.add(codec.decode(data), stream_seq)
        if whole is not None:
            events.append(whole)
    return events


def assert_contiguous(events: list[Event]) -> None:
    last: dict[str, tuple[str, int]] = {}
    for e in events:
        epoch, seq = last.get(e.product, ("", 0))
        if e.epoch != epoch:
            assert e.seq == 1, f"{e.product}: epoch {e.epoch} starts at seq {e.seq}"
        else:
            assert e.seq == seq + 1, f"{e.product} {epoch}: seq {seq} then {e.seq}"
        last[e.product] = (e.epoch, e.seq)


def history_rows(database_url: str) -> list[tuple[str, str, int, str]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT product, epoch, seq, payload::text FROM md_history ORDER BY product, epoch, seq"
        ).fetchall()


def latest_rows(database_url: str) -> dict[str, dict[str, object]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT product, state::text FROM md_latest").fetchall()
    return {product: orjson.loads(state) for product, state in rows}


async def wait_persisted(bus: Bus, database_url: str) -> list[Event]:
    """Until LF_MD stops growing and md_history holds as many events; LF_MD's events."""
    previous = -1
    while True:
        events = md_events(await read_all(bus, MD_STREAM))
        stored = len(await trio.to_thread.run_sync(history_rows, database_url))
        if len(events) == previous and stored >= len(events):
            return events
        previous = len(events)
        await trio.sleep(1.0)


async def test_kill9_of_snapshotter_and_normalizer_loses_nothing(
    tmp_path: Path, nats_url: str, database_url: str
) -> None:
    seed = int(os.environ.get("LEDGERFLUX_KILL9_SEED", random.randrange(1 << 30)))
    print(f"kill -9 test: seed={seed} nats={nats_url}")
    rng = random.Random(seed)
    env = ledgerflux_env(
        LEDGERFLUX_NATS_URL=nats_url,
        LEDGERFLUX_DATABASE_URL=database_url,
        LEDGERFLUX_DATA_DIR=str(tmp_path / "data"),
        LEDGERFLUX_NORMALIZE__SHARDS="2",
        LEDGERFLUX_NORMALIZE__CHECKPOINT_INTERVAL_S="1",
        LEDGERFLUX_INGEST__FEED="replay",
        LEDGERFLUX_INGEST__REPLAY_PATH=str(DEMO),
        LEDGERFLUX_INGEST__REPLAY_SPEED="4",
        LEDGERFLUX_INGEST__REPLAY_LOOP="true",
    )
    snapshot = Daemon("snapshot", ["snapshot"], env, tmp_path)
    shards = [
        Daemon(f"normalize-{i}", ["normalize", "--shard", str(i)], env, tmp_path) for i in (0, 1)
    ]
    ingest = Daemon("ingest", ["ingest"], env, tmp_path)
    daemons = [snapshot, *shards, ingest]
    try:
        with trio.fail_after(300):
            for daemon in daemons:
                await daemon.start()
            for round_ in range(ROUNDS):
                await trio.sleep(rng.uniform(0.5, 2.0))
                await snapshot.kill9()
                await trio.sleep(rng.uniform(0.0, 1.0))
                await snapshot.start()
                await trio.sleep(rng.uniform(0.5, 2.0))
                victim = shards[round_ % 2]
                await victim.kill9()
                await trio.sleep(rng.uniform(0.0, 1.0))
                await victim.start()
            await trio.sleep(1.0)
            assert ingest.proc is not None
            await stop(ingest.proc, ingest.log, deadline_s=60)
            async with open_bus(NatsConfig(), url=nats_url) as bus:
                events = await wait_persisted(bus, database_url)
                dlq = [orjson.loads(d) for _, d in await read_all(bus, DLQ_STREAM)]
    finally:
        for daemon in daemons:
            if daemon.proc is not None:
                await kill(daemon.proc)

    assert len(events) > 1000
    assert_contiguous(events)
    # md_history holds every LF_MD event exactly once, as the same whole event.
    rows = await trio.to_thread.run_sync(history_rows, database_url)
    stored = {(p, e, s): codec.decode(payload) for p, e, s, payload in rows}
    assert len(stored) == len(rows)
    assert stored == {(e.product, e.epoch, e.seq): e for e in events}
    # md_latest equals the state rebuilt from md_history.
    rebuilt: dict[str, ProductState] = {}
    for key in sorted(stored):  # epochs sort by time, so this is stream order per product
        event = stored[key]
        state = rebuilt.setdefault(event.product, ProductState(event.product))
        state.apply(event, strict_book=False)
    assert latest_rows(database_url) == {p: s.to_json() for p, s in rebuilt.items()}
    reasons = {entry["reason"] for entry in dlq}
    assert "no_base_snapshot" not in reasons, dlq[:3]
    assert not reasons & {"duplicate", "out_of_order"}, dlq[:3]
