"""ledgerflux.client against real gateways (Hypercorn on port 0, in-memory LF_MD): the loop
sees one consistent stream across drains, slow-consumer closes and book parts."""

from __future__ import annotations

from typing import Any

import orjson
import trio

from ledgerflux.client import Client, open_client
from ledgerflux.parts import split_book
from ledgerflux.state import ProductState
from tests.integration.test_gateway import running_gateway, wire
from tests.integration.test_gateway_parts import deep_book
from tests.unit.gateway.fakes import PRODUCT, FakeBus, mixed, trade


async def take(client: Client, until_seq: int) -> list[dict[str, Any]]:
    """Messages until one of PRODUCT at ``until_seq``."""
    got = []
    async for message in client:
        got.append(message)
        if message.get("product") == PRODUCT and message.get("seq") == until_seq:
            return got
    raise AssertionError("the client stopped")


def snapshot_of(events: list[Any]) -> dict[str, Any]:
    state = ProductState(PRODUCT)
    for event in events:
        state.apply(event, strict_book=False)
    body: dict[str, Any] = orjson.loads(orjson.dumps(state.to_json()))
    return {"type": "snapshot", **body}


async def test_the_client_resumes_on_the_other_gateway_when_one_drains() -> None:
    with trio.fail_after(60):
        bus = FakeBus()
        events = [mixed(seq) for seq in range(1, 201)]
        for event in events[:10]:
            bus.publish(event)
        async with (
            running_gateway(bus) as a,
            running_gateway(bus) as b,
            open_client([a.info.ws_url, b.info.ws_url]) as client,
        ):
            await client.subscribe([PRODUCT], snapshot=True)
            assert client.url == a.info.ws_url
            first = [await client.receive()]
            for event in events[10:100]:
                bus.publish(event)
            first += await take(client, 60)
            a.drain.set()  # SIGTERM's path: drain, 1001; the client moves to b
            for event in events[100:]:
                bus.publish(event)
            rest = await take(client, 200)
            assert client.url == b.info.ws_url
            assert client.connects == 2
        assert [*first, *rest] == [snapshot_of(events[:10]), *(wire(e) for e in events[10:])]


async def test_a_client_whose_loop_stalls_is_closed_4001_and_resumes_exactly() -> None:
    with trio.fail_after(60):
        bus = FakeBus()
        events = [mixed(seq) for seq in range(1, 3001)]
        async with (
            running_gateway(bus, send_queue=50, slow_consumer_after_s=0.2) as gw,
            open_client(gw.info.ws_url, buffer=10) as client,
        ):
            await client.subscribe([PRODUCT])
            for event in events:
                bus.publish(event)
            await trio.sleep(1.5)  # the loop takes nothing: the gateway gives up on us
            got = await take(client, 3000)
            assert client.connects >= 2
            assert got == [wire(e) for e in events]


async def test_book_parts_and_snapshot_parts_arrive_whole() -> None:
    with trio.fail_after(60):
        bus = FakeBus()
        whole = deep_book(2, 40_000)
        parts = split_book(whole, 512 * 1024)
        assert len(parts) > 1
        async with running_gateway(bus) as gw:
            async with open_client(gw.info.ws_url) as live:
                await live.subscribe([PRODUCT])
                for event in (trade(1), *parts, trade(3)):
                    bus.publish(event)
                got = await take(live, 3)
                assert got == [wire(trade(1)), wire(whole), wire(trade(3))]
            async with open_client(gw.info.ws_url) as late:
                await late.subscribe([PRODUCT], snapshot=True)
                (snapshot,) = await take(late, 3)
                assert snapshot == snapshot_of([trade(1), whole, trade(3)])


async def test_from_seq_on_the_first_connection_then_live() -> None:
    with trio.fail_after(30):
        bus = FakeBus()
        events = [mixed(seq) for seq in range(1, 31)]
        for event in events[:20]:
            bus.publish(event)
        async with running_gateway(bus) as gw, open_client(gw.info.ws_url) as client:
            await client.subscribe([PRODUCT], from_seq={PRODUCT: 15}, epoch={PRODUCT: "e1"})
            for event in events[20:]:
                bus.publish(event)
            assert await take(client, 30) == [wire(e) for e in events[14:]]
            assert (client.seq[PRODUCT], client.epoch[PRODUCT]) == (30, "e1")


async def test_tail_goes_through_the_gateway_from_a_seq() -> None:
    import signal
    import subprocess
    import sys

    with trio.fail_after(60):
        bus = FakeBus()
        events = [mixed(seq) for seq in range(1, 21)]
        for event in events:
            bus.publish(event)
        async with running_gateway(bus) as gw:
            argv = ["tail", "--url", gw.info.ws_url, "--from-seq", "11", PRODUCT]
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "ledgerflux", *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert proc.stdout is not None
            try:
                data = b""
                while data.count(b"\n") < 10:
                    chunk = await proc.stdout.receive_some()
                    assert chunk, "tail exited before printing ten events"
                    data += chunk
            finally:
                proc.send_signal(signal.SIGTERM)
                with trio.CancelScope(shield=True):
                    code = await proc.wait()
                    await proc.stdout.aclose()
        assert [orjson.loads(line) for line in data.splitlines()] == [wire(e) for e in events[10:]]
        assert code == 0
