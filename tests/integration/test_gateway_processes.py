"""The gateway contract with real processes: two ``ledgerflux gateway`` processes on one
NATS and one PostgreSQL, clients of ``ledgerflux.client`` subscribed while one of them gets
SIGTERM, and connection churn against one process.

Events are published on LF_MD directly (what the normalizer would publish), so that every
client's stream can be compared, whole event by whole event, with what was published."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio

from ledgerflux.bus import Bus, OutMsg, open_bus
from ledgerflux.client import Client, open_client
from ledgerflux.codec import encode
from ledgerflux.config import NatsConfig
from ledgerflux.events import Event
from ledgerflux.subjects import md_msg_id, md_subject
from ledgerflux.testing.processes import free_port, log_tail
from tests.unit.gateway.fakes import PRODUCT, mixed

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.slow]

CLIENTS = 12
CHURN_CONNECTIONS = int(os.environ.get("LEDGERFLUX_TEST_CHURN_CONNECTIONS", "400"))
"""Connections of the churn test: 400 in the default suite (the 2-core CI machines run
everything else at the same time); ``ledgerflux bench gateway`` holds 5,000."""


class Gateway:
    """One ``ledgerflux gateway`` process on a free port."""

    def __init__(self, tmp_path: Path, name: str, nats_url: str, database_url: str) -> None:
        self.port = free_port()
        self.log = tmp_path / f"{name}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
        self.env |= {
            "LEDGERFLUX_NATS_URL": nats_url,
            "LEDGERFLUX_DATABASE_URL": database_url,
            "LEDGERFLUX_DATA_DIR": str(tmp_path / name),
            "LEDGERFLUX_GATEWAY__PORT": str(self.port),
            "LEDGERFLUX_GATEWAY__MAX_CLIENTS_PER_IP": "10000",
            "LEDGERFLUX_DRAIN_TIMEOUT_S": "10",
        }
        self.proc: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "ledgerflux", "gateway"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        async with httpx.AsyncClient(base_url=self.url) as http:
            while True:
                assert self.proc.poll() is None, log_tail(self.log)
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)

    async def metrics(self) -> dict[str, float]:
        async with httpx.AsyncClient(base_url=self.url) as http:
            text = (await http.get("/metrics")).text
        values = {}
        for line in text.splitlines():
            if line.startswith("ledgerflux_gateway_"):
                name, _, value = line.rpartition(" ")
                values[name.removeprefix("ledgerflux_gateway_")] = float(value)
        return values

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with trio.CancelScope(shield=True):
                await self.proc.wait()


async def publish(bus: Bus, events: list[Event]) -> None:
    await bus.publish_batch(
        [
            OutMsg(md_subject(e.product), encode(e), msg_id=md_msg_id(e.product, e.epoch, e.seq))
            for e in events
        ]
    )


def wire(event: Event) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(encode(event))
    return result


async def collect(client: Client, last_seq: int, into: list[dict[str, Any]]) -> None:
    async for message in client:
        into.append(message)
        if message.get("seq") == last_seq:
            return


@pytest.fixture
async def lf_bus(nats_url: str) -> AsyncIterator[Bus]:
    async with open_bus(NatsConfig(), url=nats_url) as bus:
        await bus.ensure_streams()
        yield bus


async def test_sigterm_of_one_gateway_moves_every_client_to_the_other_exactly(
    tmp_path: Path, nats_url: str, database_url: str, lf_bus: Bus
) -> None:
    events = [mixed(seq) for seq in range(1, 601)]
    a = Gateway(tmp_path, "a", nats_url, database_url)
    b = Gateway(tmp_path, "b", nats_url, database_url)
    try:
        with trio.fail_after(120):
            await publish(lf_bus, events[:50])
            await a.start()
            await b.start()
            got: list[list[dict[str, Any]]] = [[] for _ in range(CLIENTS)]
            clients: list[Client] = []
            async with trio.open_nursery() as nursery:

                async def run_client(index: int, task_status: trio.TaskStatus[None]) -> None:
                    # Every client starts on a; half of them resume from seq 20 (backfill),
                    # the others from a snapshot.
                    async with open_client([a.ws_url, b.ws_url]) as client:
                        if index % 2:
                            await client.subscribe([PRODUCT], from_seq={PRODUCT: 20})
                        else:
                            await client.subscribe([PRODUCT], snapshot=True)
                        clients.append(client)
                        task_status.started()
                        await collect(client, 600, got[index])

                for index in range(CLIENTS):
                    await nursery.start(run_client, index)
                for start in range(50, 300, 25):
                    await publish(lf_bus, events[start : start + 25])
                    await trio.sleep(0.05)
                assert a.proc is not None
                a.proc.send_signal(signal.SIGTERM)
                for start in range(300, 600, 25):
                    await publish(lf_bus, events[start : start + 25])
                    await trio.sleep(0.05)
                assert await a.proc.wait() == 0, log_tail(a.log)
            assert all(client.url == b.ws_url for client in clients)
            assert all(client.connects == 2 for client in clients)
            metrics = await b.metrics()
            assert metrics["holes_total"] == 0
        for index, messages in enumerate(got):
            if index % 2:
                assert messages == [wire(e) for e in events[19:]]
            else:
                snapshot, *rest = messages
                assert snapshot["type"] == "snapshot"
                assert rest == [wire(e) for e in events[snapshot["seq"] :]]
    finally:
        await a.stop()
        await b.stop()
        a_log, b_log = log_tail(a.log), log_tail(b.log)
        assert "Traceback" not in a_log + b_log, a_log + b_log


async def test_connection_churn_leaves_the_gateway_serving_and_empty(
    tmp_path: Path, nats_url: str, database_url: str, lf_bus: Bus
) -> None:
    products = [f"coinbase:C{i}-USD" for i in range(20)]
    gateway = Gateway(tmp_path, "gw", nats_url, database_url)
    try:
        with trio.fail_after(240):
            await publish(lf_bus, [mixed(1)])
            await gateway.start()
            done = 0

            async def churn(index: int) -> None:
                nonlocal done
                # One raw protocol conversation per connection: subscribe to a few
                # products, unsubscribe one, subscribe again, leave.
                mine = [products[(index + k) % len(products)] for k in range(3)]
                async with open_client(gateway.ws_url) as client:
                    await client.subscribe([*mine, PRODUCT])
                    await client.unsubscribe([mine[0]])
                    await client.subscribe([mine[0]], snapshot=True)
                    snapshot = await client.receive()
                    assert (snapshot["type"], snapshot["product"]) == ("snapshot", mine[0])
                done += 1

            limiter = trio.CapacityLimiter(200)

            async def bounded(index: int) -> None:
                async with limiter:
                    await churn(index)

            async with trio.open_nursery() as nursery:
                for index in range(CHURN_CONNECTIONS):
                    nursery.start_soon(bounded, index)
            assert done == CHURN_CONNECTIONS
            # A client that stayed sees exactly what is published after the churn.
            async with open_client(gateway.ws_url) as watcher:
                await watcher.subscribe([PRODUCT], from_seq={PRODUCT: 1})
                later = [mixed(seq) for seq in range(2, 102)]
                await publish(lf_bus, later)
                got: list[dict[str, Any]] = []
                await collect(watcher, 101, got)
                assert got == [wire(e) for e in [mixed(1), *later]]
            for _ in range(300):  # clients that left are detached within moments
                metrics = await gateway.metrics()
                if metrics["clients"] == 0:
                    break
                await trio.sleep(0.1)
            assert metrics["clients"] == 0
            assert metrics["slow_consumers_total"] == 0
            assert metrics["protocol_errors_total"] == 0
    finally:
        await gateway.stop()
