"""The fake exchange (ledgerflux.testing.fake_exchange): replay, faults, reconnect, REST."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
import trio
import trio_websocket

from ledgerflux.book import OrderBook
from ledgerflux.events import Book
from ledgerflux.recording import RecordedFrame, RecordingHeader, RecordingWriter, iter_frames
from ledgerflux.testing import Faults, open_fake_exchange
from ledgerflux.testing.fake_exchange import UNKNOWN_TYPE, load_plugin
from ledgerflux.testing.websocket import open_websocket_url

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "recordings" / "example" / "example.jsonl"
EXCHANGE = ROOT / "recordings" / "coinbase" / "exchange-channels.jsonl.gz"
SUBSCRIBE = '{"op":"subscribe","symbols":["BTC-USD","ETH-USD"],"channels":["trades","book"]}'


def recorded_in(path: Path) -> list[str]:
    return [f.raw for f in iter_frames(path) if f.dir == "in"]


async def receive(ws: trio_websocket.WebSocketConnection, n: int) -> list[str]:
    out: list[str] = []
    for _ in range(n):
        message = await ws.get_message()
        assert isinstance(message, str)
        out.append(message)
    return out


async def test_streams_every_in_frame_in_order_after_subscribe() -> None:
    expected = recorded_in(EXAMPLE)
    with trio.fail_after(10):
        async with (
            open_fake_exchange(EXAMPLE) as fake,
            open_websocket_url(fake.ws_url) as ws,
        ):
            assert fake.ws_url.startswith("ws://127.0.0.1:")
            await ws.send_message(SUBSCRIBE)
            got = await receive(ws, len(expected))
            await fake.finished.wait()
            assert got == expected
            assert fake.connections == 1
            assert fake.received == [SUBSCRIBE]
            assert fake.frames_read == len(expected)


async def test_nothing_is_streamed_before_the_subscribe_message() -> None:
    with trio.fail_after(10):
        async with (
            open_fake_exchange(EXAMPLE) as fake,
            open_websocket_url(fake.ws_url),
        ):
            await trio.sleep(0.05)
            assert fake.frames_read == 0


@pytest.mark.parametrize(
    ("faults", "transform"),
    [
        (Faults(drop=3), lambda e: e[3:]),
        (Faults(duplicate=2), lambda e: [e[0], e[0], e[1], e[1], *e[2:]]),
        (Faults(reorder=1), lambda e: [e[1], e[0], *e[2:]]),
        (Faults(malformed=1), lambda e: [e[0][: len(e[0]) // 2], *e[1:]]),
        (Faults(drop=2, start_after=5), lambda e: e[:5] + e[7:]),
        (
            Faults(unknown_type=1),
            lambda e: [f'{{"type":"{UNKNOWN_TYPE}","channel":"{UNKNOWN_TYPE}"}}', *e],
        ),
    ],
    ids=["drop", "duplicate", "reorder", "malformed", "start_after", "unknown_type"],
)
async def test_faults_change_the_stream_exactly(faults: Faults, transform: object) -> None:
    assert callable(transform)
    expected = transform(recorded_in(EXAMPLE))
    with trio.fail_after(10):
        async with (
            open_fake_exchange(EXAMPLE, faults=faults) as fake,
            open_websocket_url(fake.ws_url) as ws,
        ):
            await ws.send_message(SUBSCRIBE)
            got = await receive(ws, len(expected))
            await fake.finished.wait()
            assert got == expected


async def test_inject_arms_faults_at_runtime() -> None:
    expected = recorded_in(EXAMPLE)
    with trio.fail_after(10):
        async with (
            open_fake_exchange(EXAMPLE) as fake,
            open_websocket_url(fake.ws_url) as ws,
        ):
            fake.inject(drop=1)
            await ws.send_message(SUBSCRIBE)
            got = await receive(ws, 4)
            assert got == expected[1:5]
            with pytest.raises(TypeError, match="unknown fault"):
                fake.inject(explode=1)


def true_books(path: Path, frames: int) -> dict[str, OrderBook]:
    """The books after the first ``frames`` recorded in-frames, decoded independently."""
    plugin = load_plugin("example")
    assert plugin is not None
    decoder = plugin.new_decoder()
    books: dict[str, OrderBook] = {}
    ins = [f for f in iter_frames(path) if f.dir == "in"][:frames]
    for frame in ins:
        for event in decoder.decode(frame.raw, frame.ts).events:
            if isinstance(event, Book):
                books.setdefault(event.product, OrderBook(event.product)).apply(event)
    return books


async def test_close_after_is_abrupt_and_a_reconnect_gets_a_fresh_snapshot() -> None:
    expected = recorded_in(EXAMPLE)
    with trio.fail_after(10):
        async with open_fake_exchange(EXAMPLE, faults=Faults(close_after=6)) as fake:
            async with open_websocket_url(fake.ws_url) as ws:
                await ws.send_message(SUBSCRIBE)
                got = await receive(ws, 6)
                assert got == expected[:6]
                with pytest.raises(trio_websocket.ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason.code == 1006
            read = fake.frames_read
            async with open_websocket_url(fake.ws_url) as ws:
                await ws.send_message(SUBSCRIBE)
                reply, *snapshots = await receive(ws, 3)
                assert orjson.loads(reply) == {
                    "type": "subscribed",
                    "symbols": ["BTC-USD", "ETH-USD"],
                }
                books = true_books(EXAMPLE, read)
                for text in snapshots:
                    snap = orjson.loads(text)
                    book = books[f"example:{snap['symbol']}"]
                    assert snap["snapshot"] is True
                    assert [(Decimal(p), Decimal(s)) for p, s in snap["bids"]] == book.bids()
                    assert [(Decimal(p), Decimal(s)) for p, s in snap["asks"]] == book.asks()
                rest = await receive(ws, len(expected) - read)
                assert rest == expected[read:]
            assert fake.connections == 2
            assert fake.received == [SUBSCRIBE, SUBSCRIBE]


async def test_stall_sends_nothing_for_stall_s(autojump_clock: trio.abc.Clock) -> None:
    expected = recorded_in(EXAMPLE)
    with trio.fail_after(1000):
        async with (
            open_fake_exchange(EXAMPLE, faults=Faults(stall_after=3, stall_s=30.0)) as fake,
            open_websocket_url(fake.ws_url) as ws,
        ):
            await ws.send_message(SUBSCRIBE)
            start = trio.current_time()
            assert await receive(ws, 3) == expected[:3]
            assert trio.current_time() - start < 30
            assert await receive(ws, 1) == expected[3:4]
            assert trio.current_time() - start >= 30
            assert fake.faults.stall_after is None


async def test_client_frames_after_subscribe_are_recorded() -> None:
    with trio.fail_after(10):
        async with (
            open_fake_exchange(EXAMPLE) as fake,
            open_websocket_url(fake.ws_url) as ws,
        ):
            await ws.send_message(SUBSCRIBE)
            await ws.send_message('{"op":"ping"}')
            await receive(ws, 3)
            await fake.wait_received(2)
            assert fake.received == [SUBSCRIBE, '{"op":"ping"}']


async def test_speed_follows_the_recorded_timing(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "timed.jsonl"
    header = RecordingHeader("nobody", "ws://x/", None, ("A",), ("c",), 0)
    with RecordingWriter(path, header) as w:
        w.write(RecordedFrame(ts=0, dir="in", conn=0, raw="a"))
        w.write(RecordedFrame(ts=10_000_000_000, dir="in", conn=0, raw="b"))
    with trio.fail_after(1000):
        async with (
            open_fake_exchange(path, speed=2.0) as fake,
            open_websocket_url(fake.ws_url) as ws,
        ):
            await ws.send_message("hello")
            assert await receive(ws, 1) == ["a"]
            start = trio.current_time()
            assert await receive(ws, 1) == ["b"]
            assert trio.current_time() - start >= 5.0


async def test_loop_starts_the_recording_again() -> None:
    expected = recorded_in(EXAMPLE)
    with trio.fail_after(10):
        async with (
            open_fake_exchange(EXAMPLE, loop=True) as fake,
            open_websocket_url(fake.ws_url) as ws,
        ):
            await ws.send_message(SUBSCRIBE)
            assert await receive(ws, 2 * len(expected)) == expected + expected
            assert not fake.finished.is_set()


async def test_rest_without_a_book_path_is_404() -> None:
    with trio.fail_after(10):
        async with open_fake_exchange(EXAMPLE) as fake:
            async with httpx.AsyncClient() as client:
                reply = await client.get(f"{fake.rest_url}/products/BTC-USD/book?level=2")
            assert reply.status_code == 404
            assert fake.rest_requests == ["/products/BTC-USD/book?level=2"]


async def drain(ws: trio_websocket.WebSocketConnection) -> None:
    while True:
        await ws.get_message()


def _coinbase_available() -> bool:
    return load_plugin("coinbase") is not None


@pytest.mark.skipif(not _coinbase_available(), reason="ledgerflux_coinbase not installed yet")
@pytest.mark.parametrize("stale", [False, True])
async def test_rest_book_is_the_true_book_at_the_stream_position(stale: bool) -> None:
    with trio.fail_after(20):
        async with (
            open_fake_exchange(EXCHANGE, faults=Faults(stale_rest_book=stale)) as fake,
            open_websocket_url(fake.ws_url) as ws,
        ):
            await ws.send_message('{"type":"subscribe"}')
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, ws)
                await fake.finished.wait()
                nursery.cancel_scope.cancel()
            bids, asks, seq = fake.book("ETH-USD")
            async with httpx.AsyncClient() as client:
                reply = await client.get(f"{fake.rest_url}/products/ETH-USD/book?level=2")
            assert reply.status_code == 200
            body = reply.json()
            got_bids = [(Decimal(p), Decimal(s)) for p, s, _ in body["bids"]]
            got_asks = [(Decimal(p), Decimal(s)) for p, s, _ in body["asks"]]
            if stale:
                assert body["sequence"] < seq
                assert (got_bids, got_asks) != (bids, asks)
            else:
                assert body["sequence"] == seq
                assert (got_bids, got_asks) == (bids, asks)
            assert len(bids) > 100


@pytest.mark.skipif(not _coinbase_available(), reason="ledgerflux_coinbase not installed yet")
async def test_recorded_rest_reply_is_served_once_reached() -> None:
    recorded = [f for f in iter_frames(EXCHANGE) if f.dir == "rest"]
    assert len(recorded) == 1
    with trio.fail_after(20):
        async with (
            open_fake_exchange(EXCHANGE, rest_source="recorded") as fake,
            open_websocket_url(fake.ws_url) as ws,
            httpx.AsyncClient() as client,
        ):
            url = f"{fake.rest_url}/products/ETH-USD/book?level=2"
            assert (await client.get(url)).status_code == 404
            await ws.send_message('{"type":"subscribe"}')
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, ws)
                await fake.finished.wait()
                nursery.cancel_scope.cancel()
            reply = await client.get(url)
            assert reply.status_code == 200
            assert reply.text == recorded[0].raw


ADVANCED = ROOT / "recordings" / "coinbase" / "advanced-channels.jsonl.gz"


async def _numbers(ws: trio_websocket.WebSocketConnection, n: int) -> list[int]:
    return [orjson.loads(text)["sequence_num"] for text in await receive(ws, n)]


@pytest.mark.skipif(
    load_plugin("coinbase-advanced") is None, reason="ledgerflux_coinbase not installed yet"
)
async def test_per_connection_numbers_continue_across_a_recorded_reconnect() -> None:
    recorded = [orjson.loads(raw)["sequence_num"] for raw in recorded_in(ADVANCED)]
    assert recorded.count(0) == 2  # the recording reconnects once
    with trio.fail_after(20):
        async with (
            open_fake_exchange(ADVANCED) as fake,
            open_websocket_url(fake.ws_url) as ws,
        ):
            await ws.send_message('{"type":"subscribe","channel":"level2"}')
            got = await _numbers(ws, len(recorded))
    steps = [b - a for a, b in itertools.pairwise(got)]
    assert got[0] == 0
    assert sorted(set(steps)) == [1, 4]  # contiguous but for the recorded gap
    assert steps.count(4) == 1


@pytest.mark.skipif(
    load_plugin("coinbase-advanced") is None, reason="ledgerflux_coinbase not installed yet"
)
async def test_a_new_connection_counts_from_zero_with_a_fresh_snapshot() -> None:
    with trio.fail_after(20):
        async with open_fake_exchange(ADVANCED, faults=Faults(close_after=50)) as fake:
            async with open_websocket_url(fake.ws_url) as ws:
                await ws.send_message('{"type":"subscribe","channel":"level2"}')
                assert await _numbers(ws, 50) == list(range(50))
                with pytest.raises(trio_websocket.ConnectionClosed):
                    await ws.get_message()
            async with open_websocket_url(fake.ws_url) as ws:
                await ws.send_message('{"type":"subscribe","channel":"level2"}')
                frames = [orjson.loads(t) for t in await receive(ws, 40)]
    assert [f["sequence_num"] for f in frames] == list(range(40))
    assert frames[0]["channel"] == "subscriptions"
    snapshots = [f for f in frames[1:3] if f["channel"] == "l2_data"]
    assert [s["events"][0]["type"] for s in snapshots] == ["snapshot", "snapshot"]
    for snap in snapshots:
        updates = snap["events"][0]["updates"]
        bids = [Decimal(u["price_level"]) for u in updates if u["side"] == "bid"]
        asks = [Decimal(u["price_level"]) for u in updates if u["side"] == "offer"]
        assert min(len(bids), len(asks)) > 100
        assert max(bids) < min(asks)


async def test_slow_reader_stops_reading_client_frames() -> None:
    expected = recorded_in(EXAMPLE)
    with trio.fail_after(10):
        async with (
            open_fake_exchange(EXAMPLE, faults=Faults(slow_reader=True)) as fake,
            open_websocket_url(fake.ws_url) as ws,
        ):
            await ws.send_message(SUBSCRIBE)
            await ws.send_message('{"op":"ping"}')
            assert await receive(ws, len(expected)) == expected
            assert fake.received == [SUBSCRIBE]


def test_public_surface_of_ledgerflux_testing() -> None:
    import ledgerflux.testing

    assert sorted(ledgerflux.testing.__all__) == [
        "ConformanceError",
        "ConformanceReport",
        "FakeExchange",
        "Faults",
        "TradeSideReport",
        "check_plugin",
        "check_plugin_live",
        "check_trade_sides",
        "open_fake_exchange",
    ]
