"""End-to-end: recording -> ingestor -> normalizers -> snapshotter + gateway -> WebSocket client,
on real NATS JetStream and PostgreSQL (the embedded servers the project starts itself).

(a) everything in one process; (b) the daemons as separate OS processes; (c) SIGTERM during
a replay drains in data order. Each checks the subscriber contract (snapshot at S, then S+1,
S+2, ... with no hole and no duplicate) and that PostgreSQL holds every event the client saw,
as whole events.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from e2e_support import DEMO, PRODUCT, Subscriber, free_port, ledgerflux_env

from ledgerflux import codec
from ledgerflux.app import serve_up
from ledgerflux.bus import open_bus
from ledgerflux.candles import Candle, fold
from ledgerflux.config import Config, DatabaseConfig, GatewayConfig, IngestConfig, NatsConfig
from ledgerflux.events import Event, Trade
from ledgerflux.store import open_store
from ledgerflux.subjects import MD_STREAM, md_subject
from ledgerflux.testing.websocket import open_websocket_url

pytestmark = [pytest.mark.e2e, pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

WANT = 300
"""Live events the subscriber collects before the test asks for a drain."""


def pipeline_config(tmp_path: Path, nats_url: str, database_url: str) -> Config:
    return Config(
        data_dir=str(tmp_path / "data"),
        drain_timeout_s=60.0,
        nats=NatsConfig(url=nats_url),
        database=DatabaseConfig(url=database_url),
        gateway=GatewayConfig(port=0),
        ingest=IngestConfig(
            feed="replay", replay_path=str(DEMO), replay_speed=2.0, replay_loop=True
        ),
    )


def _ohlcv(c: Candle) -> tuple[object, ...]:
    return (c.start, c.open, c.high, c.low, c.close, c.volume, c.trades)


async def assert_persisted(sub: Subscriber, nats_url: str, database_url: str) -> None:
    """Every event the client saw is in PostgreSQL (whole events), the history is contiguous
    from 1, and everything LF_MD acked for the product is in it."""
    sub.check_contiguous()
    by_epoch: dict[str, list[Event]] = {}
    for event in sub.events:
        by_epoch.setdefault(event.epoch, []).append(event)
    async with open_store(DatabaseConfig(), url=database_url) as store:
        for epoch, events in by_epoch.items():
            stored = await store.history(
                PRODUCT, epoch, events[0].seq, events[-1].seq, limit=1_000_000
            )
            assert stored == events
        latest = await store.latest_state(PRODUCT)
        assert latest is not None
        bounds = await store.history_bounds(PRODUCT, latest.epoch)
        # The snapshotter stored the candles of exactly the trades it stored.
        trades = [
            (e, None)
            for epoch in by_epoch
            for e in await store.history(PRODUCT, epoch, 1, limit=1_000_000)
            if isinstance(e, Trade)
        ]
        stored_candles = await store.candles(PRODUCT, -(2**62), 2**62, limit=1_000_000)
    assert stored_candles
    assert [_ohlcv(c) for c in stored_candles] == [_ohlcv(c) for c in fold(trades).values()]
    assert latest.epoch == sub.events[-1].epoch
    assert bounds == (1, latest.seq)
    async with open_bus(NatsConfig(), url=nats_url) as bus:
        tail = await bus.last_for_subject(MD_STREAM, md_subject(PRODUCT))
    assert tail is not None

    last_md = codec.decode(tail.data)
    assert (last_md.epoch, last_md.seq) == (latest.epoch, latest.seq)


async def test_pipeline_in_one_process(tmp_path: Path, nats_url: str, database_url: str) -> None:
    config = pipeline_config(tmp_path, nats_url, database_url)
    sub = Subscriber()
    enough = trio.Event()
    drain = trio.Event()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            info = await nursery.start(partial(serve_up, config, drain=drain))
            ws_url = info.gateway_url.replace("http://", "ws://", 1) + "/ws"
            async with open_websocket_url(ws_url) as ws:
                nursery.start_soon(partial(sub.run, ws, PRODUCT, enough=enough, want=WANT))
                await enough.wait()
                drain.set()
                with trio.fail_after(60):
                    await sub.drained.wait()
    await assert_persisted(sub, nats_url, database_url)


async def spawn(args: list[str], env: dict[str, str], log: Path) -> trio.Process:
    with log.open("wb") as out:
        return await trio.lowlevel.open_process(
            [sys.executable, "-m", "ledgerflux", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_ready(url: str, procs: list[trio.Process], logs: list[Path]) -> None:
    async with httpx.AsyncClient() as client:
        while True:
            for proc, log in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    raise AssertionError(
                        f"{proc.args} exited {proc.returncode}:\n{log.read_text()}"
                    )
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.1)


async def stop(proc: trio.Process, log: Path, deadline_s: float) -> None:
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(deadline_s):
        await proc.wait()
    assert proc.returncode == 0, log.read_text()


async def kill(proc: trio.Process) -> None:
    if proc.poll() is None:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()


async def test_pipeline_as_separate_processes(
    tmp_path: Path, nats_url: str, database_url: str
) -> None:
    port = free_port()
    env = ledgerflux_env(
        LEDGERFLUX_NATS_URL=nats_url,
        LEDGERFLUX_DATABASE_URL=database_url,
        LEDGERFLUX_DATA_DIR=str(tmp_path / "data"),
        LEDGERFLUX_GATEWAY__PORT=str(port),
        LEDGERFLUX_NORMALIZE__SHARDS="2",
        LEDGERFLUX_INGEST__FEED="replay",
        LEDGERFLUX_INGEST__REPLAY_PATH=str(DEMO),
        LEDGERFLUX_INGEST__REPLAY_SPEED="2",
        LEDGERFLUX_INGEST__REPLAY_LOOP="true",
    )
    daemons = [
        ["gateway"],
        ["snapshot"],
        ["normalize", "--shard", "0"],
        ["normalize", "--shard", "1"],
        ["ingest"],
    ]
    logs = [tmp_path / f"{'-'.join(d)}.log" for d in daemons]
    procs = [await spawn(d, env, log) for d, log in zip(daemons, logs, strict=True)]
    try:
        with trio.fail_after(120):
            await wait_ready(f"http://127.0.0.1:{port}/readyz", procs, logs)
            sub = Subscriber()
            enough = trio.Event()
            async with (
                open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(partial(sub.run, ws, PRODUCT, enough=enough, want=WANT))
                await enough.wait()
                # Drain in data order: producers first, the gateway last.
                for proc, log in reversed(list(zip(procs, logs, strict=True))):
                    await stop(proc, log, deadline_s=30)
        assert sub.drained.is_set()
        await assert_persisted(sub, nats_url, database_url)
    finally:
        for proc in procs:
            await kill(proc)


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (embedded servers left behind)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


async def test_sigterm_during_replay_drains_and_leaves_nothing_behind(tmp_path: Path) -> None:
    from ledgerflux.embedded.nats import open_nats_server
    from ledgerflux.embedded.postgres import open_postgres

    data_dir = tmp_path / "data"
    drain_timeout_s = 20
    env = ledgerflux_env(
        LEDGERFLUX_DATA_DIR=str(data_dir), LEDGERFLUX_DRAIN_TIMEOUT_S=str(drain_timeout_s)
    )
    log = tmp_path / "up.log"
    proc = await spawn(["up", "--replay", str(DEMO), "--speed", "2", "--port", "0"], env, log)
    try:
        with trio.fail_after(120):
            while not re.search(r"websocket\s+ws://\S+/ws", log.read_text()):
                if proc.poll() is not None:
                    raise AssertionError(f"up exited {proc.returncode}:\n{log.read_text()}")
                await trio.sleep(0.05)
            ws_url = re.search(r"websocket\s+(ws://\S+/ws)", log.read_text())
            assert ws_url is not None
            sub = Subscriber()
            enough = trio.Event()
            async with (
                open_websocket_url(ws_url.group(1)) as ws,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(partial(sub.run, ws, PRODUCT, enough=enough, want=WANT))
                await enough.wait()
                await stop(proc, log, deadline_s=drain_timeout_s + 10)
        assert sub.drained.is_set()
    finally:
        await kill(proc)
    assert processes_using(data_dir) == []

    # Start the same embedded servers on the same data dir: every event acked on LF_MD is in
    # PostgreSQL, and the history is whole (contiguous from 1 up to the latest state).
    with trio.fail_after(60):
        async with open_nats_server(data_dir) as nats, open_postgres(data_dir) as pg:
            await assert_persisted(sub, nats.url, pg.url)
    assert processes_using(data_dir) == []
