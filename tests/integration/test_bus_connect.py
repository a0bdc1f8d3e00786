"""The first connect to NATS gives up within a bound, with an error that names the URL and
says why, instead of retrying a refused connection until a timeout says ``TimeoutError()``."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from ledgerflux.bus import BusUnavailable, connect_budget_s, open_bus
from ledgerflux.config import NatsConfig

UNREACHABLE_BUDGET_S = 10.0
"""Operators get a clear error about an unreachable NATS within this (defaults)."""


def test_the_default_connect_budget_gives_up_within_ten_seconds() -> None:
    assert connect_budget_s(NatsConfig()) <= UNREACHABLE_BUDGET_S
    # The budget is what the loop really waits: attempts x timeout plus the pauses.
    assert connect_budget_s(NatsConfig(connect_attempts=1, connect_timeout_s=3.0)) == 3.0
    assert connect_budget_s(NatsConfig(connect_attempts=3, connect_timeout_s=1.0)) == 3.6


async def test_a_refused_connection_is_bus_unavailable_naming_the_url() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        url = f"nats://127.0.0.1:{port}"
        config = NatsConfig(connect_attempts=2, connect_timeout_s=5.0)
        with trio.fail_after(30), pytest.raises(BusUnavailable) as caught:
            async with open_bus(config, url=url):
                pass
    message = str(caught.value)
    assert f"cannot connect to NATS at {url} after 2 attempt(s)" in message
    assert "connection refused" in message


async def test_a_server_that_never_answers_is_bus_unavailable_naming_the_url() -> None:
    accepted: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        accepted.append(stream)  # TCP up, never a NATS INFO line
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        url = f"nats://127.0.0.1:{port}"
        config = NatsConfig(connect_attempts=2, connect_timeout_s=1.0)
        with trio.fail_after(30), pytest.raises(BusUnavailable) as caught:
            async with open_bus(config, url=url):
                pass
        nursery.cancel_scope.cancel()
    assert accepted, "the client never reached the silent server"
    message = str(caught.value)
    assert f"cannot connect to NATS at {url} after 2 attempt(s) of 1 s" in message
    assert "no answer within 1 s" in message
