"""The normalizer against a real nats-server: LF_TICKS → LF_MD with contiguous seq per
product, restart continuity, and two writers on one shard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from functools import partial

import attrs
import pytest
import trio

from ledgerflux import codec
from ledgerflux.bus import Bus, OutMsg, PubAck, open_bus
from ledgerflux.config import Config, NatsConfig, NormalizeConfig
from ledgerflux.events import Event, Trade
from ledgerflux.normalizer import NormalizeStats, serve_normalize
from ledgerflux.subjects import DLQ_STREAM, MD_STREAM, ticks_msg_id, ticks_subject

pytestmark = pytest.mark.nats

SHARDS = 2
CONFIG = Config(normalize=NormalizeConfig(shards=SHARDS, batch=50))
PRODUCTS = ["test:AAA-USD", "test:BBB-USD", "test:CCC-USD", "test:DDD-USD"]
T0 = 1_700_000_000_000_000_000


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with open_bus(NatsConfig(), url=nats_url) as bus:
        with trio.fail_after(30):
            await bus.ensure_streams()
        yield bus


def trade(product: str, src_seq: int) -> Trade:
    return Trade(
        product=product, src_seq=src_seq, ts_event=T0 + src_seq, ts_ingest=T0 + src_seq + 1,
        price=Decimal("100.01") + src_seq, size=Decimal("0.001"), side="buy",
    )  # fmt: skip


async def publish_ticks(bus: Bus, events: list[Event]) -> None:
    """One LF_TICKS message per event (as a one-element array), msg id from src_seq."""
    msgs = [
        OutMsg(
            ticks_subject(e.product, SHARDS),
            codec.encode_many([e]),
            msg_id=ticks_msg_id(e.product, e.src_seq or 0),
        )
        for e in events
    ]
    results = await bus.publish_batch(msgs)
    assert all(isinstance(r, PubAck) for r in results)


async def read_stream(bus: Bus, stream: str) -> list[bytes]:
    state = await bus.stream_state(stream)
    out: list[bytes] = []
    if not state.messages:
        return out
    for seq in range(state.first_seq, state.last_seq + 1):
        msg = await bus.get_msg(stream, seq)
        if msg is not None:
            out.append(msg.data)
    return out


async def md_events(bus: Bus) -> list[Event]:
    return [codec.decode(d) for d in await read_stream(bus, MD_STREAM)]


async def wait_for_md(bus: Bus, count: int) -> None:
    while (await bus.stream_state(MD_STREAM)).messages < count:  # noqa: ASYNC110
        await trio.sleep(0.05)


async def test_ticks_become_contiguous_md_per_product(bus: Bus) -> None:
    events = [trade(p, s) for s in range(1, 31) for p in PRODUCTS]
    with trio.fail_after(60):
        await publish_ticks(bus, events)
        async with trio.open_nursery() as nursery:
            for shard in range(SHARDS):
                await nursery.start(partial(serve_normalize, CONFIG, bus=bus, shard=shard))
            await wait_for_md(bus, len(events))
            nursery.cancel_scope.cancel()
        md = await md_events(bus)
    assert len(md) == len(events)
    for product in PRODUCTS:
        mine = [e for e in md if e.product == product]
        assert [e.seq for e in mine] == list(range(1, 31))
        assert len({e.epoch for e in mine}) == 1
        expected = [trade(product, s) for s in range(1, 31)]
        assert [attrs.evolve(e, seq=0, epoch="") for e in mine] == expected


async def test_restart_continues_the_sequence(bus: Bus) -> None:
    product = PRODUCTS[0]
    with trio.fail_after(60):
        for round_ in range(2):
            await publish_ticks(bus, [trade(product, round_ * 10 + s) for s in range(1, 11)])
            async with trio.open_nursery() as nursery:
                for shard in range(SHARDS):
                    await nursery.start(partial(serve_normalize, CONFIG, bus=bus, shard=shard))
                await wait_for_md(bus, (round_ + 1) * 10)
                nursery.cancel_scope.cancel()
        md = await md_events(bus)
    assert [e.seq for e in md] == list(range(1, 21))
    assert len({e.epoch for e in md}) == 1
    assert [e.src_seq for e in md] == list(range(1, 21))


async def test_two_normalizers_on_one_shard_keep_seq_contiguous(bus: Bus) -> None:
    """Split brain: two normalizers own the same shard and write the same subjects.
    Fencing makes the loser restart from LF_MD, so each product's seq stays contiguous,
    no event is published twice and every input reaches LF_MD exactly once (the restarted
    one recognises what is already there instead of sending it to the DLQ)."""
    product = PRODUCTS[0]
    shard = 0 if "lf.ticks.0." in ticks_subject(product, SHARDS) else 1
    n = 400
    stats = [NormalizeStats(), NormalizeStats()]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for s in stats:
                await nursery.start(partial(serve_normalize, CONFIG, bus=bus, shard=shard, stats=s))
            for start in range(1, n + 1, 50):
                await publish_ticks(bus, [trade(product, i) for i in range(start, start + 50)])
            await wait_for_md(bus, n)
            nursery.cancel_scope.cancel()
        md = [e for e in await md_events(bus) if e.product == product]
        dlq = await read_stream(bus, DLQ_STREAM)
    epochs = {e.epoch for e in md}
    assert len(epochs) == 1
    assert [e.seq for e in md] == list(range(1, n + 1))
    assert [e.src_seq for e in md] == list(range(1, n + 1))
    assert dlq == []
