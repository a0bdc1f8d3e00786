"""Resync requests over the bus (ledgerflux.resync) against a real nats-server: the
ingestor serving the product fetches the REST book from the fake exchange and publishes a
snapshot; `ledgerflux ctl resync` takes the same path."""

from __future__ import annotations

import base64
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from ledgerflux import codec
from ledgerflux.bus import Bus, open_bus
from ledgerflux.config import IngestConfig, NatsConfig
from ledgerflux.events import Book, Event, Status
from ledgerflux.feeds.backoff import Backoff
from ledgerflux.feeds.registry import load_feed
from ledgerflux.feeds.runtime import HttpBookFetcher, WebSocketSource, run_session
from ledgerflux.feeds.session import FeedSession, PublishQueue
from ledgerflux.plugin import Credentials, Subscription
from ledgerflux.recording import read_header
from ledgerflux.resync import (
    ResyncReply,
    ResyncUnavailable,
    request_resync,
    resync_handler,
    resync_subject,
)
from ledgerflux.subjects import TICKS_STREAM
from ledgerflux.testing.fake_exchange import FakeExchange, open_fake_exchange

pytestmark = pytest.mark.nats

ROOT = Path(__file__).resolve().parents[2]
CB = ROOT / "recordings" / "coinbase" / "exchange-channels.jsonl.gz"
BTC = "coinbase:BTC-USD"
CREDENTIALS = Credentials(key="key", secret=base64.b64encode(b"secret").decode(), passphrase="p")


@asynccontextmanager
async def ingestor(fake: FakeExchange, bus: Bus) -> AsyncIterator[FeedSession]:
    """The Coinbase Exchange feed on the fake exchange, publishing to and answering
    resync requests on the real bus."""
    plugin = load_feed("coinbase")
    header = read_header(fake.recording)
    settings = IngestConfig(backoff_initial_s=0.05, backoff_max_s=0.2)
    session = FeedSession(
        plugin,
        Subscription(header.symbols, header.channels),
        PublishQueue(settings.max_buffer_frames),
        feed="it-coinbase",
        shards=1,
        max_buffer_frames=settings.max_buffer_frames,
    )
    source = WebSocketSource(
        plugin,
        session.subscription,
        endpoint=fake.ws_url,
        credentials=CREDENTIALS,
        backoff=Backoff(0.05, 0.2),
    )
    async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
        fetcher = HttpBookFetcher(client, default_base=plugin.rest_endpoint, base=fake.rest_url)
        await nursery.start(
            lambda task_status: run_session(
                session,
                source,
                bus,
                fetcher=fetcher,
                settings=settings,
                requests=bus,
                task_status=task_status,
            )
        )
        yield session
        nursery.cancel_scope.cancel()


async def eventually(check: Callable[[], bool]) -> None:
    """Poll ``check`` (the caller's fail_after bounds the wait)."""
    for _ in range(1_000_000):
        if check():
            return
        await trio.sleep(0.02)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with open_bus(NatsConfig(), url=nats_url) as bus:
        with trio.fail_after(30):
            await bus.ensure_streams()
        yield bus


async def ticks_after(bus: Bus, start_seq: int, until: int) -> list[Event]:
    """LF_TICKS events from ``start_seq`` until a stream position ``until``."""
    events: list[Event] = []
    async with bus.ordered(TICKS_STREAM, "lf.ticks.>", start_seq=start_seq) as batches:
        async for batch in batches:
            for msg in batch:
                events.extend(codec.decode_many(msg.data))
            if batch[-1].stream_seq >= until:
                return events
    raise AssertionError("stream ended")


def resync_of(events: list[Event], reason: str) -> list[Event]:
    """The gap status carrying ``reason`` and what the product got after it."""
    mine = [e for e in events if e.product == BTC]
    start = next(
        i for i, e in enumerate(mine) if isinstance(e, Status) and e.reason.endswith(reason)
    )
    return mine[start:]


async def test_a_resync_request_fetches_the_rest_book_and_publishes_a_snapshot(bus: Bus) -> None:
    with trio.fail_after(60):
        async with (
            open_fake_exchange(CB, speed=1.0, loop=True) as fake,
            ingestor(fake, bus) as session,
        ):
            await eventually(lambda: session.stats.frames >= 100 and not session.resyncing())
            before = len(fake.rest_requests)
            start = (await bus.stream_state(TICKS_STREAM)).last_seq + 1
            reply = await request_resync(bus, BTC, "normalizer restart", timeout_s=5)
            assert reply == ResyncReply(ok=True, product=BTC, feed="it-coinbase", mode="rest")
            await eventually(lambda: BTC not in session.resyncing() and not len(session.queue))
            end = (await bus.stream_state(TICKS_STREAM)).last_seq
            events = await ticks_after(bus, start, end)
    assert len(fake.rest_requests) == before + 1
    assert fake.rest_requests[-1].startswith("/products/BTC-USD/book")
    after = resync_of(events, "resync requested: normalizer restart")
    assert isinstance(after[0], Status)
    assert after[0].status == "gap"
    done = next(i for i, e in enumerate(after) if isinstance(e, Status) and e.status == "resync")
    snapshot = after[done + 1]
    assert isinstance(snapshot, Book)
    assert snapshot.snapshot
    assert snapshot.bids
    assert snapshot.asks


async def test_a_product_nobody_serves_is_unavailable_at_once(bus: Bus) -> None:
    with trio.fail_after(10), pytest.raises(ResyncUnavailable, match="no ingestor serves"):
        await request_resync(bus, "coinbase:NOPE-USD", "test", timeout_s=5)


async def test_malformed_requests_get_an_error_reply(bus: Bus) -> None:
    with trio.fail_after(60):
        async with (
            open_fake_exchange(CB, speed=1.0, loop=True) as fake,
            ingestor(fake, bus),
        ):
            data = await bus.request(resync_subject(BTC), b"{", timeout_s=5)
            assert orjson.loads(data) == {
                "ok": False,
                "product": "",
                "error": orjson.loads(data)["error"],
            }
            assert "malformed JSON" in orjson.loads(data)["error"]
            data = await bus.request(resync_subject(BTC), b'{"reason": "x"}', timeout_s=5)
            assert orjson.loads(data)["ok"] is False


async def test_the_control_handler_and_ctl_resync_use_the_bus_path(bus: Bus, nats_url: str) -> None:
    with trio.fail_after(90):
        async with (
            open_fake_exchange(CB, speed=1.0, loop=True) as fake,
            ingestor(fake, bus) as session,
        ):
            await eventually(lambda: session.stats.frames >= 50 and not session.resyncing())
            handler = resync_handler(bus)
            reply = await handler({"cmd": "resync", "product": BTC, "reason": "ops"})
            assert reply == {"ok": True, "feed": "it-coinbase", "product": BTC, "mode": "rest"}
            await eventually(lambda: not session.resyncing())
            result = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "ledgerflux",
                    "--nats-url",
                    nats_url,
                    "ctl",
                    "resync",
                    BTC,
                    "reason=from the shell",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert result.returncode == 0, result.stderr.decode()
            assert orjson.loads(result.stdout)["mode"] in ("rest", "already")
            missing = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "ledgerflux",
                    "--nats-url",
                    nats_url,
                    "ctl",
                    "resync",
                    "coinbase:NOPE-USD",
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert missing.returncode == 1
            assert b"no ingestor serves coinbase:NOPE-USD" in missing.stderr + missing.stdout
