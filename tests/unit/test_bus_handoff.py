"""The crossing of a subscription's messages from asyncio to Trio (``_Handoff``), on a real
asyncio loop in its own thread (``_Bridge``), as the bus runs it: order, one take for
everything that waited, and the block-then-resume backpressure policy."""

from __future__ import annotations

import asyncio
from typing import Any

import trio

from ledgerflux.bus import _Bridge, _Handoff


async def test_a_take_carries_everything_put_before_it_in_order() -> None:
    bridge = _Bridge("test")
    bridge.start()
    try:
        handoff = _Handoff(100, bridge.loop)

        async def put_all() -> None:
            for i in range(10):
                await handoff.put(i)  # type: ignore[arg-type]

        with trio.fail_after(10):
            await bridge.run(put_all)
            assert await handoff.take() == list(range(10))
    finally:
        await bridge.stop()


async def test_take_waits_for_the_first_message_after_an_empty_take() -> None:
    bridge = _Bridge("test")
    bridge.start()
    try:
        handoff = _Handoff(100, bridge.loop)
        got: list[Any] = []

        async def taker() -> None:
            got.extend(await handoff.take())

        async def put_one() -> None:
            await handoff.put("m")  # type: ignore[arg-type]

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(taker)
                await trio.sleep(0.05)  # the taker is parked on an empty hand-off
                assert got == []
                await bridge.run(put_one)
        assert got == ["m"]
    finally:
        await bridge.stop()


async def test_a_full_handoff_blocks_the_producer_until_a_take() -> None:
    bridge = _Bridge("test")
    bridge.start()
    try:
        handoff = _Handoff(3, bridge.loop)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()
        tasks: list[asyncio.Future[None]] = []

        def producer() -> None:
            async def put_five() -> None:
                for i in range(5):
                    await handoff.put(i)  # type: ignore[arg-type]
                token.run_sync_soon(done.set)

            tasks.append(asyncio.ensure_future(put_five(), loop=bridge.loop))

        bridge.loop.call_soon_threadsafe(producer)
        with trio.fail_after(10):
            first = await handoff.take()
            # The producer stopped at the limit: at most 3 were waiting at any time.
            assert first == [0, 1, 2][: len(first)]
            assert 1 <= len(first) <= 3
            rest: list[Any] = []
            while len(first) + len(rest) < 5:
                rest.extend(await handoff.take())
            await done.wait()
        assert first + rest == [0, 1, 2, 3, 4]
    finally:
        await bridge.stop()
