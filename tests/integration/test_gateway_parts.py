"""Parted book snapshots through a real gateway (Hypercorn on port 0, in-memory LF_MD):
clients get every part of a seq in order, and a snapshot reply for a book larger than a
client's default message limit (1 MiB in trio-websocket) arrives in parts."""

from __future__ import annotations

from decimal import Decimal

import attrs
import orjson
import trio

from ledgerflux.codec import encode
from ledgerflux.events import Book
from ledgerflux.parts import split_book
from ledgerflux.state import ProductState
from ledgerflux.testing.websocket import open_websocket_url
from tests.integration.test_gateway import receive, request, running_gateway, wire
from tests.unit.gateway.fakes import PRODUCT, FakeBus, book, trade


def deep_book(seq: int, levels: int) -> Book:
    return attrs.evolve(
        book(seq, snapshot=True),
        bids=tuple((Decimal(100_000 - i), Decimal(i + 1)) for i in range(levels)),
        asks=tuple((Decimal(200_000 + i), Decimal(i + 1)) for i in range(levels)),
    )


async def test_clients_get_every_part_and_huge_snapshots_in_parts() -> None:
    with trio.fail_after(60):
        bus = FakeBus()
        whole = deep_book(2, 40_000)
        assert len(encode(whole)) > 1024 * 1024  # more than a client takes in one message
        parts = split_book(whole, 512 * 1024)
        async with running_gateway(bus) as gw:
            async with open_websocket_url(gw.info.ws_url) as live:
                await request(live, op="subscribe", id=1, products=[PRODUCT])
                await receive(live, 1)
                for event in (trade(1), *parts, trade(3)):
                    bus.publish(event)
                got = await receive(live, len(parts) + 2)
                assert got == [wire(trade(1)), *(wire(p) for p in parts), wire(trade(3))]
            async with open_websocket_url(gw.info.ws_url) as late:
                await request(late, op="subscribe", id=2, products=[PRODUCT], snapshot=True)
                _, first = await receive(late, 2)
                assert (first["type"], first["part"], first["seq"]) == ("snapshot", 0, 3)
                rest = await receive(late, first["parts"] - 1)
                messages = [first, *rest]
                assert [m["part"] for m in messages] == list(range(first["parts"]))
                state = ProductState(PRODUCT)
                for event in (trade(1), whole, trade(3)):
                    state.apply(event)
                expected = orjson.loads(orjson.dumps(state.to_json()))
                assert [b for m in messages for b in m["book"]["bids"]] == expected["book"]["bids"]
                assert [a for m in messages for a in m["book"]["asks"]] == expected["book"]["asks"]
