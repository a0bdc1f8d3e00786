"""A normalizer shard restarted mid-stream on a real nats-server, with an Exchange-style
feed that sends its book snapshot once (on subscribe) and only changes after that.

The restarted shard must continue the books from its checkpoint and its own LF_MD output:
every later change is applied (none refused as ``no_base_snapshot``, no ``gap`` status), and
the book equals the one rebuilt from LF_MD from seq 1. Both ways of stopping are tried: a
clean stop (final checkpoint written) and a crash after which only an older checkpoint
exists (here: checkpoint writes start failing, as when the bus cannot store them).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from functools import partial

import orjson
import pytest
import trio

from ledgerflux import codec
from ledgerflux.bus import Bus, BusError, OutMsg, PubAck, open_bus
from ledgerflux.config import Config, NatsConfig, NormalizeConfig
from ledgerflux.events import Book, Event, Status
from ledgerflux.normalizer import NormalizeStats, checkpoint_name, serve_normalize
from ledgerflux.parts import StreamParts
from ledgerflux.progress import Progress
from ledgerflux.state import ProductState
from ledgerflux.subjects import DLQ_STREAM, MD_STREAM, TICKS_STREAM, ticks_msg_id, ticks_subject

pytestmark = pytest.mark.nats

SHARDS = 1
PRODUCT = "test:BTC-USD"
T0 = 1_700_000_000_000_000_000
D = Decimal


class CrashingBus:
    """The real bus, except that checkpoint writes fail once ``broken`` is set."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.broken = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._bus, name)

    async def put_checkpoint(self, name: str, data: bytes) -> None:
        if self.broken:
            raise BusError("checkpoint store unavailable (test)")
        await self._bus.put_checkpoint(name, data)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with open_bus(NatsConfig(), url=nats_url) as bus:
        with trio.fail_after(30):
            await bus.ensure_streams()
        yield bus


def snapshot(levels: int) -> Book:
    return Book(
        product=PRODUCT, src_seq=1, ts_event=T0, ts_ingest=T0 + 1, snapshot=True,
        bids=tuple((D(10_000 - i), D("1.5")) for i in range(levels)),
        asks=tuple((D(10_001 + i), D("2.5")) for i in range(levels)),
    )  # fmt: skip


def change(src_seq: int) -> Book:
    """Moves sizes around the top of the book and removes a deep level now and then."""
    side = src_seq % 2
    price = D(10_000 - src_seq % 7) if side else D(10_001 + src_seq % 5)
    level = (price, D(src_seq % 9 + 1))
    remove = (D(10_000 - 50 - src_seq), D(0))
    bids = (level, remove) if side else ()
    asks = () if side else (level,)
    return Book(
        product=PRODUCT, src_seq=src_seq, ts_event=T0 + src_seq, ts_ingest=T0 + src_seq + 1,
        snapshot=False, bids=bids, asks=asks,
    )  # fmt: skip


async def publish_ticks(bus: Bus, events: list[Event]) -> None:
    results = await bus.publish_batch(
        [
            OutMsg(
                ticks_subject(e.product, SHARDS),
                codec.encode_many([e]),
                msg_id=ticks_msg_id(e.product, e.src_seq or 0),
            )
            for e in events
        ]
    )
    assert all(isinstance(r, PubAck) for r in results), results


async def read_all(bus: Bus, stream: str) -> list[bytes]:
    state = await bus.stream_state(stream)
    if not state.messages:
        return []
    out: list[bytes] = []
    async with bus.ordered(stream, ">", start_seq=state.first_seq, max_batch=1000) as batches:
        async for batch in batches:
            out += [m.data for m in batch]
            if batch[-1].stream_seq >= state.last_seq:
                break
    return out


async def md_events(bus: Bus) -> list[Event]:
    parts = StreamParts()
    events = []
    for i, data in enumerate(await read_all(bus, MD_STREAM)):
        whole = parts.add(codec.decode(data), i)
        if whole is not None:
            events.append(whole)
    return events


async def caught_up(bus: Bus, progress: Progress) -> None:
    target = (await bus.stream_state(TICKS_STREAM)).last_seq
    await progress.wait_for(target)


@pytest.mark.parametrize("crash", [False, True], ids=["clean-stop", "crash"])
async def test_restarted_shard_continues_its_books(bus: Bus, crash: bool) -> None:
    config = Config(normalize=NormalizeConfig(shards=SHARDS, batch=50, checkpoint_interval_s=0.2))
    flaky = CrashingBus(bus)
    stats = NormalizeStats()
    live_after_s: float | None = None
    with trio.fail_after(60):
        await publish_ticks(bus, [snapshot(200), *[change(s) for s in range(2, 300)]])
        async with trio.open_nursery() as nursery:
            progress = await nursery.start(
                partial(serve_normalize, config, bus=flaky, shard=0, stats=stats)  # type: ignore[arg-type]
            )
            await caught_up(bus, progress)
            await trio.sleep(0.5)  # a checkpoint or two
            if crash:
                flaky.broken = True  # later checkpoints (the final one too) are lost
            await publish_ticks(bus, [change(s) for s in range(300, 600)])
            await caught_up(bus, progress)
            nursery.cancel_scope.cancel()
        flaky.broken = False
        md_before = len(await md_events(bus))

        async with trio.open_nursery() as nursery:
            started = time.monotonic()
            progress = await nursery.start(
                partial(serve_normalize, config, bus=bus, shard=0, stats=stats)
            )
            await publish_ticks(bus, [change(s) for s in range(600, 900)])
            await caught_up(bus, progress)
            live_after_s = time.monotonic() - started
            nursery.cancel_scope.cancel()
        events = await md_events(bus)
        dlq = [orjson.loads(d) for d in await read_all(bus, DLQ_STREAM)]
        final = await bus.get_checkpoint(checkpoint_name(0, SHARDS))

    print(f"restart ({'crash' if crash else 'clean'}): ready and caught up in {live_after_s:.3f} s")
    assert dlq == []
    assert not [e for e in events if isinstance(e, Status)]
    # Every input became exactly one LF_MD event, in order, in one epoch.
    assert [e.src_seq for e in events] == list(range(1, 900))
    assert [e.seq for e in events] == list(range(1, 900))
    assert len({e.epoch for e in events}) == 1
    assert md_before == 599
    if crash:
        assert stats.replayed > 0  # input already on LF_MD was recognised, not redone
    # The book the normalizer kept equals the one rebuilt from LF_MD.
    rebuilt = ProductState(PRODUCT)
    for event in events:
        rebuilt.apply(event)
    assert rebuilt.book.state.value == "live"
    assert final is not None
    assert orjson.loads(final)["products"][PRODUCT]["state"] == rebuilt.to_json()
