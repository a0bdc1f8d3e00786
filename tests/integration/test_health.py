"""The probe server: /healthz, /readyz through the readiness states, /metrics, errors."""

from __future__ import annotations

from functools import partial

import pytest
import trio
from prometheus_client import CollectorRegistry, Counter

from ledgerflux.health import PortInUse, Readiness, serve_health


async def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    """One request on its own connection; returns (status, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_probes_follow_readiness() -> None:
    readiness = Readiness()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_health, "127.0.0.1", 0, readiness=readiness))
            assert await get(port, "/healthz") == (200, b"ok\n")
            assert await get(port, "/readyz") == (503, b"starting\n")
            readiness.set_ready()
            assert await get(port, "/readyz") == (200, b"ready\n")
            readiness.set_draining()
            assert await get(port, "/readyz") == (503, b"draining\n")
            assert await get(port, "/healthz") == (200, b"ok\n")
            nursery.cancel_scope.cancel()


async def test_metrics_serves_the_registry() -> None:
    registry = CollectorRegistry()
    counter = Counter("lf_test_things", "things", registry=registry)
    counter.inc(3)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve_health, "127.0.0.1", 0, readiness=Readiness(), registry=registry)
            )
            status, body = await get(port, "/metrics")
            nursery.cancel_scope.cancel()
    assert status == 200
    assert b"lf_test_things_total 3.0\n" in body


async def test_unknown_paths_methods_and_garbage_do_not_stop_the_server() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_health, "127.0.0.1", 0, readiness=Readiness()))
            assert await get(port, "/nope") == (404, b"not found\n")
            assert (await get(port, "/healthz", method="POST"))[0] == 405
            assert await get(port, "/healthz", method="HEAD") == (200, b"")
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"\x16\x03\x01 not http at all\r\n\r\n")
                reply = b""
                while chunk := await stream.receive_some():
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 400 ")
            assert await get(port, "/healthz") == (200, b"ok\n")
            nursery.cancel_scope.cancel()


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_health, "127.0.0.1", 0, readiness=Readiness()))
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                await stream.send_all(request * 2)
                data = b""
                while data.count(b"ok\n") < 2:
                    data += await stream.receive_some()
            assert data.count(b"HTTP/1.1 200") == 2
            nursery.cancel_scope.cancel()


async def test_a_taken_port_is_a_named_error() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_health, "127.0.0.1", 0, readiness=Readiness()))
            with pytest.raises(PortInUse, match=f"127.0.0.1:{port}"):
                await serve_health("127.0.0.1", port, readiness=Readiness())
            nursery.cancel_scope.cancel()
