"""SIGTERM/SIGINT in a real process: the first drains, a second stops at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from ledgerflux.signals import SAME_REQUEST_S

# The child drains in DRAIN_STEPS steps and prints each; with `stuck` it never finishes
# draining, so only a second signal can end it.
CHILD = textwrap.dedent(
    """
    import sys
    from functools import partial

    import trio

    from ledgerflux.logging import configure_logging
    from ledgerflux.signals import Drain, serve_drain_signals

    configure_logging("info", "json")  # logs to stderr; stdout carries the test's lines

    async def main(stuck: bool) -> None:
        drain = Drain(deadline_s=5.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_drain_signals, drain.request, nursery.cancel_scope))
            print("ready", flush=True)
            await drain.requested.wait()
            print("draining", flush=True)
            if stuck:
                await trio.sleep_forever()
            print("drained", flush=True)
            nursery.cancel_scope.cancel()
        if nursery.cancel_scope.cancelled_caught and stuck:
            print("stopped", flush=True)

    trio.run(main, sys.argv[1] == "stuck")
    """
)


@asynccontextmanager
async def child(tmp_path: Path, mode: str) -> AsyncIterator[trio.Process]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(script), mode], stdout=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            assert proc.stdout is not None
            await proc.stdout.aclose()


async def read_line(proc: trio.Process, buffer: bytearray) -> str:
    assert proc.stdout is not None
    while b"\n" not in buffer:
        chunk = await proc.stdout.receive_some()
        if not chunk:
            raise AssertionError(f"child closed stdout; got {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
async def test_one_signal_drains_and_exits_cleanly(tmp_path: Path, first: signal.Signals) -> None:
    with trio.fail_after(30):
        async with child(tmp_path, "normal") as proc:
            buffer = bytearray()
            assert await read_line(proc, buffer) == "ready"
            proc.send_signal(first)
            assert await read_line(proc, buffer) == "draining"
            assert await read_line(proc, buffer) == "drained"
            assert await proc.wait() == 0


async def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with child(tmp_path, "stuck") as proc:
            buffer = bytearray()
            assert await read_line(proc, buffer) == "ready"
            proc.send_signal(signal.SIGTERM)
            assert await read_line(proc, buffer) == "draining"
            await trio.sleep(SAME_REQUEST_S + 0.2)  # a person pressing Ctrl-C again
            proc.send_signal(signal.SIGINT)
            assert await read_line(proc, buffer) == "stopped"
            assert await proc.wait() == 0


async def test_one_ctrl_c_delivered_twice_still_drains(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the app directly and again through a wrapper that
    forwards it (``uv run``): the same request, not a second one."""
    with trio.fail_after(30):
        async with child(tmp_path, "drain") as proc:
            buffer = bytearray()
            assert await read_line(proc, buffer) == "ready"
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGINT)
            assert await read_line(proc, buffer) == "draining"
            assert await read_line(proc, buffer) == "drained"
            assert await proc.wait() == 0
