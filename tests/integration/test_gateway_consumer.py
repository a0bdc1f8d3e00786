"""The gateway's LF_MD consumer never skips a seq it can still receive (docs/protocol.md): an
ordered consumer that jumps is reopened where it left off, redeliveries are dropped, a
product whose seq jumps is filled from the store, and only a real hole reaches clients,
as ``status: reset`` + ``snapshot``. In-memory LF_MD here; the server restart runs on a
real nats-server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from ledgerflux.bus import open_bus
from ledgerflux.config import Config, GatewayConfig, NatsConfig
from ledgerflux.embedded.nats import EmbeddedNats
from ledgerflux.gateway import GatewayInfo, serve_gateway
from ledgerflux.state import ProductState
from ledgerflux.testing.websocket import open_websocket_url
from tests.integration.test_gateway import receive, request, running_gateway, wire
from tests.integration.test_gateway_nats import publish
from tests.unit.gateway.fakes import PRODUCT, FakeBus, FakeStore, InMsg, StateRow, mixed


class JumpingBus(FakeBus):
    """The first ordered consumer skips ``skip`` stream positions and redelivers the one
    before them (what a consumer recreated at the wrong place would do)."""

    def __init__(self, skip: range) -> None:
        super().__init__()
        self.skip = skip
        self.opened: list[int | None] = []

    @contextlib.asynccontextmanager
    async def ordered(
        self,
        stream: str,
        filter_subject: str,
        *,
        start_seq: int | None = None,
        max_batch: int = 512,
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[InMsg]]]:
        self.opened.append(start_seq)
        async with super().ordered(stream, filter_subject, start_seq=start_seq) as inner:
            if len(self.opened) > 1:
                yield inner
                return
            send, receive = trio.open_memory_channel[list[InMsg]](4)

            async def mangle() -> None:
                async with send:
                    async for batch in inner:
                        out = []
                        for msg in batch:
                            if msg.stream_seq in self.skip:
                                continue
                            if msg.stream_seq == self.skip.stop:
                                out.append(self.messages[self.skip.start - 2])  # a redelivery
                            out.append(msg)
                        await send.send(out)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(mangle)
                yield receive
                nursery.cancel_scope.cancel()


async def metric(info: GatewayInfo, name: str) -> float:
    async with httpx.AsyncClient(base_url=info.url) as http:
        for line in (await http.get("/metrics")).text.splitlines():
            if line.startswith(f"ledgerflux_gateway_{name}_total "):
                return float(line.split()[1])
    raise AssertionError(name)


async def test_an_ordered_consumer_that_jumps_is_reopened_where_it_left_off() -> None:
    with trio.fail_after(30):
        bus = JumpingBus(skip=range(15, 25))
        async with running_gateway(bus) as gw, open_websocket_url(gw.info.ws_url) as ws:
            await request(ws, op="subscribe", id=1, products=[PRODUCT])
            await receive(ws, 1)
            events = [mixed(seq) for seq in range(1, 41)]
            for event in events:
                bus.publish(event)
            assert await receive(ws, 40) == [wire(e) for e in events]
            assert bus.opened == [None, 15]
            assert await metric(gw.info, "stream_jumps") == 1.0
            assert await metric(gw.info, "holes") == 0.0


async def test_a_stored_state_older_than_the_stream_is_filled_from_the_store() -> None:
    # Retention removed LF_MD messages after the product's stored state; the snapshotter's
    # history still has them: the gateway must not jump over them.
    with trio.fail_after(30):
        events = [mixed(seq) for seq in range(1, 31)]
        bus, store = FakeBus(), FakeStore()
        for event in events:
            bus.publish(event)
        bus.expire(20)  # the stream now starts at position 21 (seq 21)
        store.add_history(events)
        state = ProductState(PRODUCT)
        for event in events[:10]:
            state.apply(event, strict_book=False)
        store.rows.append(StateRow(PRODUCT, "e1", 10, 0, 10, state.to_json()))
        async with running_gateway(bus, store) as gw, open_websocket_url(gw.info.ws_url) as ws:
            await request(ws, op="subscribe", id=1, products=[PRODUCT], from_seq={PRODUCT: 5})
            _, *backfill = await receive(ws, 27)
            assert backfill == [wire(e) for e in events[4:]]
            assert await metric(gw.info, "gaps_filled") == 1.0
            assert await metric(gw.info, "holes") == 0.0


@pytest.mark.nats
@pytest.mark.slow
async def test_subscribers_see_every_seq_once_across_a_nats_server_restart(
    nats_server: EmbeddedNats,
) -> None:
    with trio.fail_after(120):
        async with open_bus(NatsConfig(), url=nats_server.url) as bus:
            await bus.ensure_streams()
            await publish(bus, [mixed(seq) for seq in range(1, 11)])
            config = Config(gateway=GatewayConfig(port=0))
            async with trio.open_nursery() as nursery:
                info: GatewayInfo = await nursery.start(
                    lambda task_status: serve_gateway(
                        config, bus=bus, store=FakeStore(), task_status=task_status
                    )
                )
                async with open_websocket_url(info.ws_url) as ws:
                    await request(
                        ws, op="subscribe", id=1, products=[PRODUCT], from_seq={PRODUCT: 1}
                    )
                    _, *before = await receive(ws, 11)
                    assert before == [wire(mixed(seq)) for seq in range(1, 11)]
                    await nats_server.restart()
                    await publish(bus, [mixed(seq) for seq in range(11, 31)])
                    assert await receive(ws, 20) == [wire(mixed(seq)) for seq in range(11, 31)]
                    await request(ws, op="ping", id=2)
                    assert await receive(ws, 1) == [{"type": "pong", "id": 2}]
                assert await metric(info, "holes") == 0.0
                nursery.cancel_scope.cancel()
