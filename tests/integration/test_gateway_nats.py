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
