"""The pynng control plane: commands, bad requests answered (never a crash), client errors."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pynng
import pytest
import trio

from ledgerflux.control import (
    ControlError,
    Handler,
    control_path,
    control_request,
    serve_control,
    standard_handlers,
)
from ledgerflux.health import Readiness


async def status(request: dict[str, Any]) -> dict[str, Any]:
    return {"daemon": "ingest", "products": ["coinbase:BTC-USD"]}


async def resync(request: dict[str, Any]) -> dict[str, Any]:
    return {"resyncing": request["product"]}


async def broken(request: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("boom")


async def slow(request: dict[str, Any]) -> dict[str, Any]:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


HANDLERS: dict[str, Handler] = {
    "status": status,
    "resync": resync,
    "reload": broken,
    "drain": slow,
}


@asynccontextmanager
async def control_server(tmp_path: Path) -> AsyncIterator[Path]:
    path = control_path(tmp_path, "ingest")
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_control, path, HANDLERS))
        yield path
        nursery.cancel_scope.cancel()


async def test_commands_get_their_replies(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with control_server(tmp_path) as path:
            assert path == tmp_path / "run" / "ingest.sock"
            assert await control_request(path, {"cmd": "status"}) == {
                "ok": True,
                "daemon": "ingest",
                "products": ["coinbase:BTC-USD"],
            }
            reply = await control_request(path, {"cmd": "resync", "product": "coinbase:ETH-USD"})
            assert reply == {"ok": True, "resyncing": "coinbase:ETH-USD"}
        assert not path.exists()


async def test_bad_requests_get_errors_and_the_server_keeps_serving(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with control_server(tmp_path) as path:
            with pynng.Req0(dial=f"ipc://{path}") as sock:
                for raw in (b"{not json", b"[1, 2]", b'{"cmd": 3}'):
                    await sock.asend(raw)
                    reply = await sock.arecv()
                    assert reply.startswith(b'{"ok":false,"error":')
            assert await control_request(path, {"cmd": "frobnicate"}) == {
                "ok": False,
                "error": "unknown command 'frobnicate' (known: drain, reload, resync, status)",
            }
            assert await control_request(path, {"cmd": "reload"}) == {
                "ok": False,
                "error": "reload failed: RuntimeError: boom",
            }
            assert (await control_request(path, {"cmd": "status"}))["ok"] is True


async def test_a_slow_command_does_not_block_status(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with control_server(tmp_path) as path, trio.open_nursery() as nursery:
            nursery.start_soon(partial(control_request, path, {"cmd": "drain"}, timeout_s=60))
            await trio.sleep(0.05)  # let the drain request reach its handler first
            assert (await control_request(path, {"cmd": "status"}))["ok"] is True
            nursery.cancel_scope.cancel()


async def test_no_reply_in_time_is_a_control_error(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with control_server(tmp_path) as path:
            with pytest.raises(ControlError, match=r"no reply from .* within 0.2 s"):
                await control_request(path, {"cmd": "drain"}, timeout_s=0.2)


async def test_nobody_listening_is_a_control_error(tmp_path: Path) -> None:
    with trio.fail_after(10), pytest.raises(ControlError, match="no daemon is listening"):
        await control_request(control_path(tmp_path, "gateway"), {"cmd": "status"})


async def test_standard_status_and_drain(tmp_path: Path) -> None:
    readiness = Readiness()
    drained: list[bool] = []
    handlers = standard_handlers(
        "snapshot",
        readiness=readiness,
        on_drain=lambda: drained.append(True),
        status=lambda: {"pending": 7},
    )
    path = control_path(tmp_path, "snapshot")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_control, path, handlers))
            readiness.set_ready()
            reply = await control_request(path, {"cmd": "status"})
            assert reply.pop("uptime_s") >= 0
            assert reply == {
                "ok": True,
                "daemon": "snapshot",
                "pid": os.getpid(),
                "ready": True,
                "draining": False,
                "pending": 7,
            }
            assert await control_request(path, {"cmd": "drain"}) == {"ok": True, "draining": True}
            assert drained == [True]
            nursery.cancel_scope.cancel()
