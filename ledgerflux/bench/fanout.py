"""``ledgerflux bench gateway --fanout``: many connections, one hot product, separate processes.

Three kinds of process, so that the load generator never shares the gateway's core:

* **the gateway** (``python -m ledgerflux.bench.fanout gateway``): ``serve_gateway`` on
  port 0 with an in-memory LF_MD it feeds itself, at a rate the parent sets over stdin
  (the normalizer's publish path is not what is measured here). Every event is stamped
  with ``ts_ingest`` = wall-clock time at publish;
* **load generators** (``... load``, ``--procs`` of them): each opens its share of the
  connections with bare trio-websocket, ``--hot`` of them in all subscribed to the hot
  product (batched frames unless ``--one-per-frame``), the rest to one cold product each
  (idle connections). They count the events received and the latency ``ts_ingest`` →
  receipt;
* **this process**: starts them, reads the gateway's RSS from ``/proc`` (at start, with
  every connection idle, during the fan-out, after every client left), times ``/healthz``
  every 50 ms during the fan-out, and checks the gateway's log for ``EMFILE``.

Phases: connect (all connections, then RSS per idle connection), fan-out (``--rate``
events/s for ``--seconds``: deliveries/s, p50/p99 latency, /healthz p50/p99, slow-consumer
closes), leave (every client disconnects; RSS again). Figures depend on the machine and on
what else runs on it: report them with the load they were measured under.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import orjson
import trio
import trio.lowlevel

from ledgerflux.bench import print_summary

HOT = "bench:HOT-USD"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# -- the gateway process ---------------------------------------------------------------------


async def _gateway(max_clients: int) -> None:
    from ledgerflux.bench.gateway import _EmptyStore, _MemoryBus, _Msg
    from ledgerflux.codec import encode
    from ledgerflux.config import Config, GatewayConfig
    from ledgerflux.events import Trade
    from ledgerflux.gateway import serve_gateway

    bus = _MemoryBus()
    config = Config(
        gateway=GatewayConfig(
            port=0, max_clients=max_clients, max_clients_per_ip=max_clients, ring_size=1000
        )
    )
    rate = 0.0
    seq = 0

    async def feed() -> None:
        nonlocal seq
        # Open loop: events at ``rate``/s on a fixed schedule, whatever the gateway does.
        next_at = trio.current_time()
        while True:
            if rate <= 0:
                await trio.sleep(0.05)
                next_at = trio.current_time()
                continue
            next_at += 1.0 / rate
            await trio.sleep_until(next_at)
            seq += 1
            now = time.time_ns()
            event = Trade(
                product=HOT,
                seq=seq,
                epoch="bench",
                ts_event=now,
                ts_ingest=now,
                price=Decimal(30_000) + Decimal(seq % 100) / 100,
                size=Decimal("0.01"),
                side="buy",
                trade_id=str(seq),
            )
            await bus.send.send([_Msg("lf.md.bench.HOT-USD", encode(event), seq)])

    async def commands() -> None:
        nonlocal rate
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        async with stdin:
            while True:
                chunk = await stdin.receive_some()
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    words = line.decode().split()
                    if words and words[0] == "rate":
                        rate = float(words[1])
                    elif words and words[0] == "trim":
                        _trim()
                    print(orjson.dumps({"ok": line.decode(), "seq": seq}).decode(), flush=True)

    async with trio.open_nursery() as nursery:
        info = await nursery.start(
            lambda task_status: serve_gateway(
                config, bus=bus, store=_EmptyStore(), task_status=task_status
            )
        )
        print(orjson.dumps({"port": info.port, "pid": os.getpid()}).decode(), flush=True)
        nursery.start_soon(feed)
        await commands()
        nursery.cancel_scope.cancel()


def _trim() -> None:
    """Give freed heap back to the OS (what the gateway does after clients leave)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


# -- a load generator process ------------------------------------------------------------------


async def _load(url: str, connections: int, hot: int, batch: bool, first: int) -> None:
    from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

    from ledgerflux.gateway.app import raise_fd_limit

    raise_fd_limit(connections)

    latencies: list[float] = []
    received = 0
    closes: dict[str, int] = {}
    handshakes = trio.CapacityLimiter(100)
    connected = 0
    all_connected = trio.Event()
    stop = trio.Event()

    async def connection(index: int) -> None:
        nonlocal received, connected
        product = HOT if index < hot else f"bench:C{first + index}-USD"
        try:
            async with contextlib.AsyncExitStack() as stack:
                # At most 100 handshakes in flight: a client fleet ramps up, it does not
                # open 2,500 sockets in the same millisecond.
                async with handshakes:
                    ws = await stack.enter_async_context(
                        open_websocket_url(url, message_queue_size=4)
                    )
                    await ws.send_message(
                        orjson.dumps(
                            {"op": "subscribe", "id": 1, "products": [product], "batch": batch}
                        ).decode()
                    )
                    await ws.get_message()
                connected += 1
                if connected + closes.get("0", 0) == connections:
                    all_connected.set()
                with trio.move_on_at(math.inf) as scope:
                    stop_scopes.append(scope)
                    while True:
                        frame = orjson.loads(await ws.get_message())
                        now = time.time_ns()
                        for message in frame if isinstance(frame, list) else (frame,):
                            ts = message.get("ts_ingest")
                            if ts:
                                received += 1
                                if len(latencies) < 2_000_000:
                                    latencies.append((now - ts) / 1e6)
        except ConnectionClosed as exc:
            code = str(exc.reason.code if exc.reason is not None else 1006)
            closes[code] = closes.get(code, 0) + 1
        except (OSError, HandshakeError):
            closes["0"] = closes.get("0", 0) + 1  # 0: the handshake failed
            if connected + closes["0"] == connections:
                all_connected.set()

    stop_scopes: list[trio.CancelScope] = []

    async def commands() -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        async with stdin:
            buffer = b""
            while True:
                chunk = await stdin.receive_some()
                if not chunk:
                    stop.set()
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line == b"reset":
                        nonlocal received
                        received = 0
                        latencies.clear()
                        print(orjson.dumps({"ok": "reset"}).decode(), flush=True)
                    elif line == b"report":
                        print(
                            orjson.dumps(
                                {
                                    "received": received,
                                    "p50_ms": _percentile(latencies, 0.5),
                                    "p99_ms": _percentile(latencies, 0.99),
                                    "closes": closes,
                                }
                            ).decode(),
                            flush=True,
                        )
                    elif line == b"stop":
                        stop.set()
                        return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commands)
        for index in range(connections):
            nursery.start_soon(connection, index)
            if index % 50 == 49:
                await (
                    trio.lowlevel.checkpoint()
                )  # let handshakes progress instead of opening all first
        with trio.move_on_after(300):
            await all_connected.wait()
        print(orjson.dumps({"connected": connected, "closes": closes}).decode(), flush=True)
        await stop.wait()
        for scope in stop_scopes:
            scope.cancel()
        nursery.cancel_scope.deadline = trio.current_time() + 30
    print(orjson.dumps({"left": True}).decode(), flush=True)


# -- the parent ----------------------------------------------------------------------------


class _Child:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.buffer = b""

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(line.encode() + b"\n")

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self.buffer:
            chunk = await self.proc.stdout.receive_some()
            if not chunk:
                raise RuntimeError("a bench child process exited early")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            result: dict[str, Any] = orjson.loads(line)
        except orjson.JSONDecodeError:
            return await self.line()  # a log line on stdout: skip it
        return result


@contextlib.asynccontextmanager
async def _spawn(args: list[str], log: Any) -> AsyncIterator[_Child]:
    import subprocess

    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "ledgerflux.bench.fanout", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        yield _Child(proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            with trio.move_on_after(10) as scope:
                scope.shield = True
                await proc.wait()
            if proc.poll() is None:
                proc.kill()


async def _healthz_times(url: str, until: trio.Event, into: list[float]) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=30.0) as http:
        while not until.is_set():
            start = time.perf_counter()
            try:
                await http.get(url + "/healthz")
            except httpx.HTTPError:
                into.append(30_000.0)
            else:
                into.append((time.perf_counter() - start) * 1000)
            await trio.sleep(0.05)


async def run_fanout(
    connections: int, hot: int, procs: int, rate: float, seconds: float, batch: bool
) -> dict[str, float]:
    import tempfile

    with tempfile.TemporaryFile() as log:
        async with _spawn(["gateway", "--max-clients", str(connections + 100)], log) as gw:
            hello = await gw.line()
            port, pid = hello["port"], hello["pid"]
            url = f"ws://127.0.0.1:{port}/ws"
            base = f"http://127.0.0.1:{port}"
            rss_start = _rss_kib(pid)
            async with contextlib.AsyncExitStack() as stack:
                loads = []
                share, hot_share = connections // procs, hot // procs
                for i in range(procs):
                    args = [
                        "load",
                        url,
                        str(share),
                        str(hot_share),
                        str(int(batch)),
                        str(i * share),
                    ]
                    loads.append(await stack.enter_async_context(_spawn(args, None)))
                connected = [await load.line() for load in loads]
                await trio.sleep(1.0)
                rss_idle = _rss_kib(pid)
                for load in loads:
                    await load.send("reset")
                    await load.line()
                healthz: list[float] = []
                done = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_healthz_times, base, done, healthz)
                    await gw.send(f"rate {rate}")
                    start_seq = (await gw.line())["seq"]
                    await trio.sleep(seconds)
                    rss_busy = _rss_kib(pid)
                    await gw.send("rate 0")
                    end_seq = (await gw.line())["seq"]
                    await trio.sleep(1.0)  # what was published is delivered (or not)
                    done.set()
                reports = []
                for load in loads:
                    await load.send("report")
                    reports.append(await load.line())
                for load in loads:
                    await load.send("stop")
                for load in loads:
                    await load.line()
            await trio.sleep(2.0)
            rss_left = _rss_kib(pid)
            await gw.send("trim")
            await gw.line()
            rss_trimmed = _rss_kib(pid)
            log.seek(0)
            emfile = log.read().count(b"EMFILE")
    received = sum(r["received"] for r in reports)
    opened = sum(c["connected"] for c in connected)
    published = end_seq - start_seq
    closes: dict[str, int] = {}
    for r in [*connected, *reports]:
        for code, count in r["closes"].items():
            closes[str(code)] = closes.get(str(code), 0) + count
    return {
        "connections": opened,
        "hot": hot_share * procs,
        "published": published,
        "deliveries_per_s": round(received / seconds, 1),
        "expected_deliveries_per_s": round(published * hot_share * procs / seconds, 1),
        "p50_ms": round(max(r["p50_ms"] for r in reports), 2),
        "p99_ms": round(max(r["p99_ms"] for r in reports), 2),
        "healthz_p50_ms": round(_percentile(healthz, 0.5), 2),
        "healthz_p99_ms": round(_percentile(healthz, 0.99), 2),
        "rss_start_mib": round(rss_start / 1024, 1),
        "rss_idle_mib": round(rss_idle / 1024, 1),
        "kib_per_idle_connection": round((rss_idle - rss_start) / max(opened, 1), 1),
        "rss_busy_mib": round(rss_busy / 1024, 1),
        "rss_after_leave_mib": round(rss_left / 1024, 1),
        "rss_after_trim_mib": round(rss_trimmed / 1024, 1),
        **{f"closes_{code}": float(count) for code, count in sorted(closes.items())},
        "emfile_log_lines": emfile,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "gateway":
        trio.run(_gateway, int(args[2]))
        return 0
    if args and args[0] == "load":
        url, n, hot, batch, first = args[1:6]
        trio.run(_load, url, int(n), int(hot), bool(int(batch)), int(first))
        return 0
    parser = argparse.ArgumentParser(prog="ledgerflux bench gateway --fanout", description=__doc__)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--hot", type=int, default=1000, help="of them on one product")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--rate", type=float, default=50.0, help="events/s on the hot product")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--one-per-frame", action="store_true", help="no batched frames")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(args)
    result = trio.run(
        run_fanout,
        opts.connections,
        opts.hot,
        opts.procs,
        opts.rate,
        opts.seconds,
        not opts.one_per_frame,
    )
    for key, value in result.items():
        print(f"{key:28} {value}")
    if opts.json:
        print_summary("gateway-fanout", metrics=result, baseline={}, ratio={})
    return 0


if __name__ == "__main__":
    sys.exit(main())
