"""A 50,000-level book snapshot through the ingestor onto a real nats-server whose
``max_payload`` is the default 1 MiB (the reliability issue: it used to stall the feed).

The fake exchange serves a Coinbase Advanced Trade ``level2`` snapshot of 25,000 bids and
25,000 asks (its canonical encoding is well over 1 MiB), then a few updates. It must land
on LF_TICKS as parts that each fit, reassemble to the whole book, the later updates must
follow, and nothing may reach the DLQ."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import attrs
import orjson
import pytest
import trio

from ledgerflux import codec
from ledgerflux.bus import Bus, InMsg, open_bus
from ledgerflux.config import IngestConfig, NatsConfig
from ledgerflux.events import Book, Event
from ledgerflux.feeds.registry import load_feed
from ledgerflux.feeds.runtime import run_feed
from ledgerflux.parts import PartAssembler
from ledgerflux.plugin import Subscription
from ledgerflux.recording import RecordedFrame, RecordingHeader, RecordingWriter, iter_frames
from ledgerflux.subjects import DLQ_STREAM, TICKS_STREAM
from ledgerflux.testing.fake_exchange import (
    _adv_envelope,
    _adv_subscribed,
    _adv_ws_snapshot,
    _iso,
    open_fake_exchange,
)

pytestmark = pytest.mark.nats

T0 = 1_795_176_000_000_000_000
LEVELS_PER_SIDE = 25_000
UPDATES = 5


def write_deep_recording(path: Path) -> None:
    plugin = load_feed("coinbase-advanced")
    header = RecordingHeader(
        plugin="coinbase-advanced",
        endpoint=plugin.endpoint,
        rest_endpoint=plugin.rest_endpoint,
        symbols=("BTC-USD",),
        channels=("level2",),
        created_ns=T0,
        note="test: a 50,000-level level2 snapshot",
    )
    bids = [
        (Decimal("90000.00") - Decimal(i) / 100, Decimal(f"0.{i + 1:08d}"))
        for i in range(LEVELS_PER_SIDE)
    ]
    asks = [
        (Decimal("90000.01") + Decimal(i) / 100, Decimal(f"1.{i + 1:08d}"))
        for i in range(LEVELS_PER_SIDE)
    ]
    subscribe = '{"type":"subscribe","channel":"level2","product_ids":["BTC-USD"]}'
    frames = [
        *_adv_subscribed([subscribe], ("BTC-USD",), 0, T0),
        *_adv_ws_snapshot("BTC-USD", bids, asks, 1, T0 + 1_000),
    ]
    for n in range(UPDATES):
        ts = T0 + 2_000 + n
        update = {
            "side": "bid",
            "event_time": _iso(ts),
            "price_level": str(bids[n][0]),
            "new_quantity": f"{n + 7}",
        }
        event = {"type": "update", "product_id": "BTC-USD", "updates": [update]}
        frames.append(_adv_envelope("l2_data", [event], 2 + n, ts))
    with RecordingWriter(path, header) as writer:
        writer.write(RecordedFrame(ts=T0, dir="out", conn=0, raw=subscribe, url=None))
        for i, raw in enumerate(frames):
            writer.write(RecordedFrame(ts=T0 + 10 + i, dir="in", conn=0, raw=raw, url=None))


def expected_snapshot(path: Path) -> Book:
    """The snapshot as the plugin decodes it from the recording."""
    decoder = load_feed("coinbase-advanced").new_decoder()
    for frame in iter_frames(path):
        if frame.dir != "in":
            continue
        for event in decoder.decode(frame.raw, frame.ts).events:
            if isinstance(event, Book) and event.snapshot:
                return event
    raise AssertionError("no snapshot in the recording")


async def read_ticks(bus: Bus, until: int) -> list[InMsg]:
    out: list[InMsg] = []
    async with bus.ordered(TICKS_STREAM, "lf.ticks.>", start_seq=1) as batches:
        async for batch in batches:
            out.extend(batch)
            if out[-1].stream_seq >= until:
                return out
    raise AssertionError("LF_TICKS ended")


async def test_a_50k_level_snapshot_reaches_lf_ticks_as_parts(
    nats_url: str, tmp_path: Path
) -> None:
    recording = tmp_path / "deep.jsonl"
    write_deep_recording(recording)
    want = expected_snapshot(recording)
    assert len(want.bids) + len(want.asks) == 2 * LEVELS_PER_SIDE
    assert len(codec.encode(want)) > 1024 * 1024  # one message could not carry it
    plugin = load_feed("coinbase-advanced")
    with trio.fail_after(180):
        async with (
            open_bus(NatsConfig(), url=nats_url) as bus,
            open_fake_exchange(recording, speed=0.0) as fake,
            trio.open_nursery() as nursery,
        ):
            await bus.ensure_streams()
            assert bus.max_payload == 1024 * 1024
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
            # Every update is on LF_TICKS once the last one is: poll the stream's end.
            for _ in range(100_000):
                last = await bus.stream_state(TICKS_STREAM)
                tail = await bus.get_msg(TICKS_STREAM, last.last_seq)
                if tail is None:  # nothing published yet
                    await trio.sleep(0.1)
                    continue
                events = codec.decode_many(tail.data)
                last_size = Decimal(UPDATES - 1 + 7)
                if any(
                    isinstance(e, Book) and e.bids and e.bids[0][1] == last_size for e in events
                ):
                    break
                await trio.sleep(0.1)
            ticks = await read_ticks(bus, last.last_seq)
            dlq = await bus.stream_state(DLQ_STREAM)
            max_payload = bus.max_payload
            nursery.cancel_scope.cancel()
    assert dlq.messages == 0
    parted = [m for m in ticks if b'"parts"' in m.data]
    assert len(parted) >= 2
    count = len(parted)
    for index, msg in enumerate(parted):
        header_bytes = 12 + sum(len(k) + len(v) + 4 for k, v in msg.headers.items())
        assert len(msg.data) + header_bytes <= max_payload
        assert orjson.loads(msg.data)[0]["part"] == index
    # Advanced Trade books carry no exchange sequence: the parts are named after the
    # frame's receipt time, so a retried part is deduplicated by the server.
    ids = [m.headers["Nats-Msg-Id"] for m in parted]
    base = f"coinbase:BTC-USD:t{orjson.loads(parted[0].data)[0]['ts_ingest']}"
    assert ids == [f"{base}:{i}/{count}" for i in range(count)]
    # Consecutive on the subject: the parts are stream neighbours.
    assert [m.stream_seq for m in parted] == list(
        range(parted[0].stream_seq, parted[0].stream_seq + count)
    )
    events: list[Event] = [e for m in ticks for e in codec.decode_many(m.data)]
    assembler = PartAssembler()
    books: list[Book] = []
    for event in events:
        if isinstance(event, Book):
            whole = assembler.add(event)
            if whole is not None:
                books.append(whole)
    assert assembler.pending == frozenset()
    snapshot, *updates = books
    assert snapshot.snapshot
    assert snapshot.bids == want.bids
    assert snapshot.asks == want.asks
    # The whole event, but for the receipt time the ingestor stamped.
    assert snapshot == attrs.evolve(want, ts_ingest=snapshot.ts_ingest)
    assert [(u.snapshot, u.bids) for u in updates] == [
        (False, ((want.bids[n][0], Decimal(n + 7)),)) for n in range(UPDATES)
    ]
