"""The gateway end to end over real WebSockets (Hypercorn on port 0), fed by an in-memory
LF_MD (tests/unit/gateway/fakes.py) so that the protocol guarantees are tested at the seam
without a broker. tests/integration/test_gateway_nats.py runs the same path on real NATS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ledgerflux.codec import encode
from ledgerflux.config import Config, GatewayConfig
from ledgerflux.events import Event
from ledgerflux.gateway import GatewayInfo, serve_gateway
from ledgerflux.gateway.ports import StoreLike
from ledgerflux.state import ProductState
from ledgerflux.testing.websocket import open_websocket_url
from tests.unit.gateway.fakes import PRODUCT, FakeBus, FakeStore, StateRow, mixed, quote, trade


@attrs.define
class Running:
    info: GatewayInfo
    bus: FakeBus
    store: StoreLike
    drain: trio.Event
    done: trio.Event


@contextlib.asynccontextmanager
async def running_gateway(
    bus: FakeBus | None = None, store: StoreLike | None = None, **gateway: Any
) -> AsyncIterator[Running]:
    bus = bus if bus is not None else FakeBus()
    store = store if store is not None else FakeStore()
    config = Config(gateway=GatewayConfig(port=0, **gateway), drain_timeout_s=5.0)
    drain, done = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[GatewayInfo]) -> None:
        try:
            await serve_gateway(config, bus=bus, store=store, drain=drain, task_status=task_status)
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        info = await nursery.start(run)
        yield Running(info, bus, store, drain, done)
        nursery.cancel_scope.cancel()


def wire(event: Event) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(encode(event))
    return result


async def request(ws: WebSocketConnection, **fields: Any) -> None:
    await ws.send_message(orjson.dumps(fields).decode())


async def receive(ws: WebSocketConnection, n: int) -> list[Any]:
    return [orjson.loads(await ws.get_message()) for _ in range(n)]


async def read_until_closed(ws: WebSocketConnection) -> tuple[list[Any], int]:
    messages = []
    try:
        while True:
            messages.append(orjson.loads(await ws.get_message()))
    except ConnectionClosed as exc:
        return messages, exc.reason.code


async def test_snapshot_then_live_is_contiguous() -> None:
    with trio.fail_after(20):
        bus = FakeBus()
        for seq in range(1, 11):
            bus.publish(mixed(seq))
        async with running_gateway(bus) as gw, open_websocket_url(gw.info.ws_url) as ws:
            await request(ws, op="subscribe", id=1, products=[PRODUCT], snapshot=True)
            subscribed, snapshot = await receive(ws, 2)
            assert subscribed == {
                "type": "subscribed",
                "id": 1,
                "products": [PRODUCT],
                "channels": ["book", "quote", "ticker", "trade"],
            }
            state = ProductState(PRODUCT)
            for seq in range(1, 11):
                state.apply(mixed(seq), strict_book=False)
            assert snapshot == {"type": "snapshot", **orjson.loads(orjson.dumps(state.to_json()))}
            live = [mixed(seq) for seq in range(11, 31)]
            for event in live:
                gw.bus.publish(event)
            assert await receive(ws, 20) == [wire(e) for e in live]


async def test_from_seq_backfills_from_ring_then_store_and_resets_when_gone() -> None:
    with trio.fail_after(20):
        bus, store = FakeBus(), FakeStore()
        events = [mixed(seq) for seq in range(1, 41)]
        for event in events:
            bus.publish(event)
        store.add_history(events[5:])  # 1..5 expired from the store
        async with running_gateway(bus, store, ring_size=10) as gw:
            async with open_websocket_url(gw.info.ws_url) as ws:
                await request(
                    ws, op="subscribe", id=1, products=[PRODUCT], from_seq={PRODUCT: 35}, epoch="e1"
                )
                assert [m.get("seq") for m in await receive(ws, 7)] == [None, *range(35, 41)]
            async with open_websocket_url(gw.info.ws_url) as ws:
                await request(ws, op="subscribe", id=2, products=[PRODUCT], from_seq={PRODUCT: 6})
                _, *backfill = await receive(ws, 36)
                assert backfill == [wire(e) for e in events[5:]]
                gw.bus.publish(mixed(41))
                assert await receive(ws, 1) == [wire(mixed(41))]
            async with open_websocket_url(gw.info.ws_url) as ws:
                await request(ws, op="subscribe", id=3, products=[PRODUCT], from_seq={PRODUCT: 2})
                _, status, snapshot = await receive(ws, 3)
                assert (status["type"], status["status"], status["seq"]) == ("status", "reset", 41)
                assert (snapshot["type"], snapshot["seq"]) == ("snapshot", 41)


async def test_start_from_stored_state_replays_only_the_tail() -> None:
    with trio.fail_after(20):
        bus, store = FakeBus(), FakeStore()
        state = ProductState(PRODUCT)
        for seq in range(1, 21):
            bus.publish(mixed(seq))
            if seq <= 15:
                state.apply(mixed(seq), strict_book=False)
        store.rows.append(StateRow(PRODUCT, "e1", 15, 0, 15, state.to_json()))
        async with running_gateway(bus, store) as gw, open_websocket_url(gw.info.ws_url) as ws:
            await request(ws, op="subscribe", id=1, products=[PRODUCT], from_seq={PRODUCT: 16})
            assert [m.get("seq") for m in await receive(ws, 6)] == [None, *range(16, 21)]


async def test_slow_consumer_is_closed_with_4001() -> None:
    with trio.fail_after(30):
        async with (
            running_gateway(send_queue=8) as gw,
            open_websocket_url(gw.info.ws_url, message_queue_size=0) as ws,
        ):
            await request(ws, op="subscribe", id=1, products=[PRODUCT], channels=["trades"])
            await receive(ws, 1)
            # Big frames fill the socket buffers quickly; then the send queue overflows.
            for seq in range(1, 2001):
                gw.bus.publish(trade(seq, trade_id="x" * 20_000))
                if seq % 100 == 0:
                    await trio.sleep(0.01)
            messages, code = await read_until_closed(ws)
            assert code == 4001
            # What did arrive is an exact prefix: the policy never skips, it disconnects.
            assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))


async def test_max_rate_conflates_quotes_to_the_newest() -> None:
    with trio.fail_after(20):
        async with running_gateway() as gw, open_websocket_url(gw.info.ws_url) as ws:
            await request(ws, op="subscribe", id=1, products=[PRODUCT], max_rate=2)
            await receive(ws, 1)
            gw.bus.publish(trade(1))
            for seq in range(2, 50):
                gw.bus.publish(quote(seq, bid=str(100 + seq)))
            gw.bus.publish(trade(50))
            # The first event goes at once; the rest wait for the pacing and conflate.
            assert await receive(ws, 3) == [
                wire(trade(1)),
                wire(quote(49, bid="149")),
                wire(trade(50)),
            ]


async def test_bad_requests_get_errors_and_the_connection_stays() -> None:
    with trio.fail_after(20):
        async with (
            running_gateway(max_message_bytes=1000) as gw,
            open_websocket_url(gw.info.ws_url) as ws,
        ):
            for text in (
                "{nope",
                '{"op":"fly","id":1}',
                '{"op":"subscribe","products":["X"]}',
                '{"op":"subscribe","products":["a:B-C"],"channels":["l3"]}',
                '{"op":"unsubscribe","products":["a:B-C"]}',
            ):
                await ws.send_message(text)
            await request(ws, op="ping", id=9)
            replies = await receive(ws, 6)
            assert [m.get("code") for m in replies[:5]] == [
                "bad_json",
                "unknown_op",
                "bad_product",
                "unknown_channel",
                "not_subscribed",
            ]
            assert replies[5] == {"type": "pong", "id": 9}
            await ws.send_message("x" * 2000)
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1009


async def test_requests_are_rate_limited_then_closed_4029() -> None:
    with trio.fail_after(20):
        async with (
            running_gateway(requests_per_s=0.001, requests_burst=3) as gw,
            open_websocket_url(gw.info.ws_url) as ws,
        ):
            # 3 within the burst, 10 refused, and the 14th refusal closes the connection
            # (no more after it: writing to a closed socket would reset it).
            for i in range(14):
                await request(ws, op="ping", id=i)
            replies = await receive(ws, 13)
            assert [r["type"] for r in replies] == ["pong"] * 3 + ["error"] * 10
            assert replies[3] == {
                "type": "error",
                "id": None,
                "code": "rate_limited",
                "message": "too many requests",
            }
            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 4029


async def test_max_subscriptions() -> None:
    with trio.fail_after(20):
        async with (
            running_gateway(max_subscriptions=2) as gw,
            open_websocket_url(gw.info.ws_url) as ws,
        ):
            await request(ws, op="subscribe", id=1, products=["a:B-C", "a:C-D", "a:D-E"])
            (reply,) = await receive(ws, 1)
            assert (reply["type"], reply["code"]) == ("error", "too_many_subscriptions")


async def test_http_endpoints_and_drain() -> None:
    with trio.fail_after(20):
        async with running_gateway() as gw:
            async with httpx.AsyncClient(base_url=gw.info.url) as http:
                assert (await http.get("/healthz")).status_code == 200
                assert (await http.get("/readyz")).status_code == 200
                page = await http.get("/")
                assert 'id="bids"' in page.text
                metrics = (await http.get("/metrics")).text
                assert "ledgerflux_gateway_events_in_total" in metrics
            async with open_websocket_url(gw.info.ws_url) as ws:
                await request(ws, op="subscribe", id=1, products=[PRODUCT])
                await receive(ws, 1)
                gw.bus.publish(trade(1))
                assert await receive(ws, 1) == [wire(trade(1))]
                gw.drain.set()
                assert await receive(ws, 1) == [{"type": "drain"}]
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason.code == 1001
            await gw.done.wait()


async def test_binary_frames_are_closed_1008_and_max_clients_1013() -> None:
    with trio.fail_after(20):
        async with (
            running_gateway(max_clients=1) as gw,
            open_websocket_url(gw.info.ws_url) as first,
        ):
            async with open_websocket_url(gw.info.ws_url) as second:
                assert await read_until_closed(second) == ([], 1013)
            await first.send_message(b'{"op":"ping"}')
            assert await read_until_closed(first) == ([], 1008)


async def test_readyz_follows_the_process_readiness() -> None:
    from ledgerflux.health import Readiness

    readiness = Readiness()
    config = Config(gateway=GatewayConfig(port=0), drain_timeout_s=5.0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            info: GatewayInfo = await nursery.start(
                lambda task_status: serve_gateway(
                    config,
                    bus=FakeBus(),
                    store=FakeStore(),
                    readiness=readiness,
                    task_status=task_status,
                )
            )
            async with httpx.AsyncClient(base_url=info.url) as http:
                assert (await http.get("/readyz")).status_code == 503
                readiness.set_ready()
                assert (await http.get("/readyz")).status_code == 200
            nursery.cancel_scope.cancel()
    assert readiness.is_draining
