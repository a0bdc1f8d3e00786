"""The gateway on a real embedded NATS JetStream LF_MD (marker ``nats``): replay to catch
up at start, snapshot + live with no hole, from_seq backfill, and drain on cancellation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest
import trio

from ledgerflux.bus import Bus, OutMsg, open_bus
from ledgerflux.codec import encode
from ledgerflux.config import Config, GatewayConfig, NatsConfig
from ledgerflux.events import Event
from ledgerflux.gateway import GatewayInfo, serve_gateway
from ledgerflux.subjects import md_msg_id, md_subject
from tests.integration.test_gateway import open_websocket_url, read_until_closed, receive, wire
from tests.unit.gateway.fakes import PRODUCT, FakeStore, mixed

pytestmark = pytest.mark.nats


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with open_bus(NatsConfig(), url=nats_url) as bus:
        await bus.ensure_streams()
        yield bus


async def publish(bus: Bus, events: Sequence[Event]) -> None:
    msgs = [
        OutMsg(md_subject(e.product), encode(e), md_msg_id(e.product, e.epoch, e.seq))
        for e in events
    ]
    for ack in await bus.publish_batch(msgs):
        assert not isinstance(ack, Exception)


def request(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


async def test_catch_up_snapshot_live_and_backfill_on_jetstream(bus: Bus) -> None:
    with trio.fail_after(30):
        await publish(bus, [mixed(seq) for seq in range(1, 11)])
        config = Config(gateway=GatewayConfig(port=0))
        async with trio.open_nursery() as nursery:
            info: GatewayInfo = await nursery.start(
                lambda task_status: serve_gateway(
                    config, bus=bus, store=FakeStore(), task_status=task_status
                )
            )
            async with open_websocket_url(info.ws_url) as ws:
                await ws.send_message(
                    request(op="subscribe", id=1, products=[PRODUCT], snapshot=True)
                )
                _, snapshot = await receive(ws, 2)
                assert (snapshot["type"], snapshot["seq"], snapshot["epoch"]) == (
                    "snapshot",
                    10,
                    "e1",
                )
                live = [mixed(seq) for seq in range(11, 31)]
                await publish(bus, live)
                assert await receive(ws, 20) == [wire(e) for e in live]
            async with open_websocket_url(info.ws_url) as ws:
                await ws.send_message(
                    request(
                        op="subscribe", id=2, products=[PRODUCT], from_seq={PRODUCT: 3}, epoch="e1"
                    )
                )
                _, *backfill = await receive(ws, 29)
                assert backfill == [wire(mixed(seq)) for seq in range(3, 31)]
            nursery.cancel_scope.cancel()


async def test_cancellation_drains_clients_with_1001(bus: Bus) -> None:
    with trio.fail_after(30):
        config = Config(gateway=GatewayConfig(port=0), drain_timeout_s=5.0)
        gateway_scope = trio.CancelScope()
        returned = trio.Event()

        async def run(task_status: trio.TaskStatus[GatewayInfo]) -> None:
            with gateway_scope:
                await serve_gateway(config, bus=bus, store=FakeStore(), task_status=task_status)
            returned.set()

        async with trio.open_nursery() as nursery:
            info: GatewayInfo = await nursery.start(run)
            async with open_websocket_url(info.ws_url) as ws:
                await ws.send_message(request(op="subscribe", id=1, products=[PRODUCT]))
                await receive(ws, 1)
                gateway_scope.cancel()
                messages, code = await read_until_closed(ws)
                assert (messages, code) == ([{"type": "drain"}], 1001)
            await returned.wait()


async def read_response(stream: trio.SocketStream) -> bytes | None:
    """One whole HTTP/1.1 response (headers and a Content-Length body); None at EOF."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            if len(body) >= length:
                return data
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk


async def test_drain_is_not_held_by_a_keep_alive_http_client(bus: Bus) -> None:
    """A metrics scraper keeps one HTTP/1.1 connection and asks on it again and again;
    Hypercorn serves it through its shutdown, so the drain used to wait out its whole
    deadline (and the process exited 75). Subscribers still get their drain."""
    config = Config(gateway=GatewayConfig(port=0), drain_timeout_s=60.0)
    drain = trio.Event()
    returned = trio.Event()
    answers = 0
    answered_twice = trio.Event()

    async def run(task_status: trio.TaskStatus[GatewayInfo]) -> None:
        await serve_gateway(
            config, bus=bus, store=FakeStore(), drain=drain, task_status=task_status
        )
        returned.set()

    async def scrape(host: str, port: int) -> None:
        nonlocal answers
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            while not returned.is_set():
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
                reply = await read_response(stream)
                if reply is None:
                    return  # the gateway closed the connection
                assert reply.startswith(b"HTTP/1.1 ")
                answers += 1
                if answers == 2:
                    answered_twice.set()
                await trio.sleep(0.2)

    # Far below the 60 s deadline the old code waited out, far above a drain's real cost.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            info: GatewayInfo = await nursery.start(run)
            nursery.start_soon(scrape, info.host, info.port)
            async with open_websocket_url(info.ws_url) as ws:
                await ws.send_message(request(op="subscribe", id=1, products=[PRODUCT]))
                await receive(ws, 1)
                await answered_twice.wait()
                drain.set()
                messages, code = await read_until_closed(ws)
                assert (messages, code) == ([{"type": "drain"}], 1001)
            await returned.wait()
            nursery.cancel_scope.cancel()
    assert answers >= 2
