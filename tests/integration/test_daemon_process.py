"""A daemon as systemd runs it: READY=1 only once it is serving, /readyz following it,
/metrics served, and SIGTERM -> STOPPING=1 -> exit 0 after the drain."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

pytestmark = [pytest.mark.nats, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_normalizer_process_notifies_serves_probes_and_drains(
    tmp_path: Path, nats_url: str
) -> None:
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"\0ledgerflux-test-{os.getpid()}-{id(tmp_path)}"
    await notify.bind(address)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
    env |= {
        "NOTIFY_SOCKET": "@" + address[1:],
        "LEDGERFLUX_NATS_URL": nats_url,
        "LEDGERFLUX_DATA_DIR": str(tmp_path / "data"),
        "LEDGERFLUX_HEALTH_PORT": str(port),
    }
    log = tmp_path / "normalize.log"
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "ledgerflux", "normalize", "--shard", "0"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with trio.fail_after(60):
            assert await notify.recv(4096) == b"READY=1", log.read_text()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get("/healthz")).status_code == 200
                assert (await client.get("/readyz")).status_code == 200
                metrics = await client.get("/metrics")
                assert metrics.status_code == 200
                assert "ledgerflux_" in metrics.text
            proc.send_signal(signal.SIGTERM)
            assert await notify.recv(4096) == b"STOPPING=1"
            assert await proc.wait() == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        notify.close()


async def test_a_daemon_given_embedded_runs_its_own_servers_and_stops_them(
    tmp_path: Path,
) -> None:
    """``--embedded``: the explicit way to run a split-mode daemon without server URLs."""
    port = free_port()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
    env |= {"LEDGERFLUX_DATA_DIR": str(data_dir), "LEDGERFLUX_HEALTH_PORT": str(port)}
    log = tmp_path / "normalize.log"
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "ledgerflux", "normalize", "--shard", "0", "--embedded"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with trio.fail_after(120):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                while True:
                    if proc.poll() is not None:
                        raise AssertionError(log.read_text())
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
            assert (data_dir / "nats-server.log").exists()
            assert not (data_dir / "postgres").exists()  # a normalizer needs no database
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0, log.read_text()
        assert "nats_server.stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
