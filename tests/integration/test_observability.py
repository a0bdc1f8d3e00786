"""The four daemons as real processes on a real NATS and PostgreSQL, replaying the demo
recording: what operators see of them.

* every dashboard query and alert expression names only metrics some daemon's real
  ``/metrics`` exports, and each ``/metrics`` passes ``promtool check metrics``;
* the metric fixes: ``build_info``, consumer pending, the latency histograms, no
  always-empty label, real HELP texts;
* the control sockets: ``status`` with products and counters, ``resync PRODUCT`` through the
  bus, ``reload`` applying the log level and gateway limits and naming what needs a
  restart, ``drain``; and a shutdown whose logs carry no warning.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ledgerflux.control import control_path, control_request
from ledgerflux.testing.promql import (
    alert_expressions,
    dashboard_expressions,
    exported_names,
    metric_names,
    promtool,
)

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recordings" / "demo.jsonl.gz"
PRODUCT = "coinbase:BTC-USD"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class Daemon:
    name: str
    """The control socket's name (``ingest-replay``, ``normalize-0``, ...)."""
    port: int
    """Where its /metrics is (the gateway: its own port)."""
    proc: trio.Process
    log: Path


CONFIG = """\
log_format = "json"
drain_timeout_s = 20

[normalize]
shards = 1

[ingest]
feed = "replay"
replay_path = "{demo}"
replay_speed = 20
replay_loop = true

[gateway]
port = {gateway_port}
requests_per_s = 20.0
"""


@asynccontextmanager
async def daemons(
    tmp_path: Path, nats_url: str, database_url: str
) -> AsyncIterator[tuple[dict[str, Daemon], Path]]:
    gateway_port = free_port()
    config = tmp_path / "ledgerflux.toml"
    config.write_text(CONFIG.format(demo=DEMO, gateway_port=gateway_port))
    base = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
    base |= {
        "LEDGERFLUX_CONFIG": str(config),
        "LEDGERFLUX_NATS_URL": nats_url,
        "LEDGERFLUX_DATABASE_URL": database_url,
        "LEDGERFLUX_DATA_DIR": str(tmp_path / "data"),
    }
    commands = {
        "snapshot": ["snapshot"],
        "gateway": ["gateway"],
        "normalize-0": ["normalize", "--shard", "0"],
        "ingest-replay": ["ingest"],
    }
    running: dict[str, Daemon] = {}
    try:
        for name, argv in commands.items():
            port = gateway_port if name == "gateway" else free_port()
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "ledgerflux", *argv],
                    env=base | {"LEDGERFLUX_HEALTH_PORT": str(port)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            running[name] = Daemon(name, port, proc, log)
        async with httpx.AsyncClient() as client:
            for daemon in running.values():
                await _wait_ready(client, daemon)
        yield running, config
    finally:
        for daemon in running.values():
            if daemon.proc.poll() is None:
                daemon.proc.kill()
                with trio.CancelScope(shield=True):
                    await daemon.proc.wait()


async def _wait_ready(client: httpx.AsyncClient, daemon: Daemon) -> None:
    while True:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"{daemon.name} exited:\n{daemon.log.read_text()}")
        try:
            if (await client.get(f"http://127.0.0.1:{daemon.port}/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await trio.sleep(0.1)


async def scrape(client: httpx.AsyncClient, daemon: Daemon) -> str:
    reply = await client.get(f"http://127.0.0.1:{daemon.port}/metrics")
    assert reply.status_code == 200
    return reply.text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples(text).items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


FLOWING = (
    ("snapshot", "ledgerflux_snapshot_commit_seconds_count"),
    ("gateway", "ledgerflux_gateway_delivery_seconds_count"),
    ("gateway", "ledgerflux_gateway_events_in_total"),
    ("normalize-0", "ledgerflux_normalize_events_out_total"),
    ("ingest-replay", "ledgerflux_ingest_events_total"),
)
"""Each of these counts above 0 once events went all the way and reached a client."""


async def until_flowing(client: httpx.AsyncClient, running: dict[str, Daemon]) -> dict[str, str]:
    """Scrape every daemon until events went all the way (stored, on the gateway, sent to
    a client); the last scrape of each."""
    with trio.move_on_after(150):
        while True:
            texts = {name: await scrape(client, d) for name, d in running.items()}
            if all(total(texts[daemon], name) > 0 for daemon, name in FLOWING):
                return texts
            await trio.sleep(0.5)
    figures = {name: total(texts[daemon], name) for daemon, name in FLOWING}
    raise AssertionError(f"events did not flow: {figures}")


async def ctl(data_dir: Path, role: str, cmd: str, **fields: Any) -> dict[str, Any]:
    return await control_request(control_path(data_dir, role), {"cmd": cmd, **fields}, 20)


async def read_from_gateway(port: int, got_some: trio.Event, scope: trio.CancelScope) -> None:
    """A subscriber, so that the gateway's delivery histogram has frames to measure;
    until *scope* is cancelled."""

    with scope:
        await _read(port, got_some)


async def _read(port: int, got_some: trio.Event) -> None:
    from trio_websocket import open_websocket_url

    async with open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
        request = {"op": "subscribe", "id": 1, "products": [PRODUCT], "snapshot": True}
        await ws.send_message(orjson.dumps(request).decode())
        while True:
            await ws.get_message()
            got_some.set()


async def test_the_daemons_export_what_dashboards_and_alerts_use_and_obey_their_sockets(
    tmp_path: Path, nats_url: str, database_url: str
) -> None:
    data_dir = tmp_path / "data"
    with trio.fail_after(240):
        async with (
            daemons(tmp_path, nats_url, database_url) as (running, config),
            trio.open_nursery() as nursery,
        ):
            got_some = trio.Event()
            reader = trio.CancelScope()
            nursery.start_soon(read_from_gateway, running["gateway"].port, got_some, reader)
            # A resync through the ingestor's control socket: the bus request every
            # resync takes (lf.ctl.resync.<exchange>.<symbol>), answered by the ingestor.
            resync = await ctl(data_dir, "gateway", "resync", product=PRODUCT, reason="test")
            # "already" when the normalizer's own request (no book yet) came first.
            assert resync.pop("mode") in ("rest", "already")
            assert resync == {"ok": True, "feed": "coinbase", "product": PRODUCT}
            unserved = await ctl(data_dir, "gateway", "resync", product="coinbase:DOGE-USD")
            assert unserved["ok"] is False
            assert "no ingestor serves coinbase:DOGE-USD" in unserved["error"]

            # Closed before the drain: an idle keep-alive HTTP connection holds the
            # gateway's drain (hypercorn) until the drain deadline (a known issue).
            async with httpx.AsyncClient() as client:
                texts = await until_flowing(client, running)
            await got_some.wait()

            # -- what dashboards and alerts ask for exists ------------------------------
            exported = set().union(*(exported_names(t) for t in texts.values()))
            queries = dashboard_expressions() | alert_expressions()
            missing = {
                name: sorted(metric_names(expr) - exported)
                for name, expr in queries.items()
                if metric_names(expr) - exported
            }
            assert missing == {}
            for name, text in texts.items():
                # -- the metric fixes, on the real pages --------------------------------
                assert total(text, "ledgerflux_build_info") == 1, name
                for family in text_string_to_metric_families(text):
                    if family.name.startswith("ledgerflux_"):
                        assert family.documentation, (name, family.name)
                        assert not family.documentation.startswith("gateway "), family.name
                    for sample in family.samples:
                        assert "" not in sample.labels.values(), (name, sample)
                if promtool() is not None:
                    check = await trio.run_process(
                        [str(promtool()), "check", "metrics"],
                        stdin=text.encode(),
                        capture_stdout=True,
                        capture_stderr=True,
                        check=False,
                    )
                    assert check.returncode == 0, (name, check.stdout + check.stderr)
            ingest = texts["ingest-replay"]
            assert total(ingest, "ledgerflux_ingest_frames_total", feed="coinbase") > 0
            # Lag against the replay clock: the recording's own lag, not its age (days).
            lag_sum = total(ingest, "ledgerflux_ingest_lag_seconds_sum")
            lag_count = total(ingest, "ledgerflux_ingest_lag_seconds_count")
            assert lag_count > 0
            assert lag_sum / lag_count < 60
            assert (
                "ledgerflux_consumer_pending_messages",
                (("consumer", "normalize-0"),),
            ) in samples(texts["normalize-0"])
            assert total(texts["snapshot"], "ledgerflux_snapshot_events_total") > 0

            # -- status -----------------------------------------------------------------
            status = await ctl(data_dir, "ingest-replay", "status")
            assert status["ok"]
            assert status["ready"]
            assert status["daemon"] == "ingest-replay"
            assert PRODUCT in status["products"]
            assert status["counters"]["ledgerflux_ingest_frames_total"] > 0
            gateway = await ctl(data_dir, "gateway", "status")
            assert PRODUCT in gateway["products"]
            assert gateway["clients"] == 1
            assert gateway["limits"]["requests_per_s"] == 20.0
            shard = await ctl(data_dir, "normalize-0", "status")
            assert shard["counters"]["ledgerflux_normalize_events_out_total"] > 0
            assert shard["ticks_position"] > 0
            owned = shard["product_states"]
            assert sorted(owned) == shard["products"]
            for state in owned.values():
                assert state["seq"] > 0, state
                assert state["epoch"], state
            snapshot = await ctl(data_dir, "snapshot", "status")
            assert snapshot["md_position"] > 0
            assert sorted(snapshot["product_states"]) == snapshot["products"]
            assert PRODUCT in owned
            assert PRODUCT in snapshot["products"]

            # -- reload -----------------------------------------------------------------
            config.write_text(
                config.read_text()
                .replace('log_format = "json"', 'log_format = "json"\nlog_level = "warning"')
                .replace("requests_per_s = 20.0", "requests_per_s = 5.0\nring_size = 500")
            )
            before_reload = len(running["gateway"].log.read_text().splitlines())
            reloaded = await ctl(data_dir, "gateway", "reload")
            assert reloaded == {
                "ok": True,
                "applied": {"log_level": "warning", "gateway.requests_per_s": 5.0},
                "needs_restart": ["gateway.ring_size"],
            }
            gateway = await ctl(data_dir, "gateway", "status")
            assert gateway["limits"]["requests_per_s"] == 5.0
            again = await ctl(data_dir, "gateway", "reload")
            assert again["applied"] == {}

            # -- drain ------------------------------------------------------------------
            reader.cancel()
            assert (await ctl(data_dir, "ingest-replay", "drain"))["draining"] is True
            assert await running["ingest-replay"].proc.wait() == 0
            for name in ("normalize-0", "snapshot", "gateway"):
                running[name].proc.send_signal(signal.SIGTERM)
                assert await running[name].proc.wait() == 0, running[name].log.read_text()
    for daemon in running.values():
        lines = [orjson.loads(line) for line in daemon.log.read_text().splitlines() if line]
        for line in lines:
            assert line["daemon"] == daemon.name.partition("-")[0], line
            assert "shard" in line, line
        if daemon.name == "gateway":
            # It logs at "warning" since the reload: any line after it is one too many.
            late = lines[before_reload:]
        else:
            drains = [i for i, line in enumerate(lines) if line["event"] == "drain requested"]
            assert drains, (daemon.name, lines[-5:])
            late = [line for line in lines[drains[0] :] if line["level"] not in ("debug", "info")]
        assert late == [], daemon.name
