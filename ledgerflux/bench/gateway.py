"""``ledgerflux bench gateway``: events delivered per second to N WebSocket clients.

Two servers fan the same M canonical events out to the same N trio-websocket clients, in
the same process and the same run:

* **gateway**: :func:`ledgerflux.gateway.serve_gateway` on Hypercorn (port 0), fed through
  its LF_MD consumer path from an in-memory bus; every event goes through
  ``Hub.ingest`` (state, ring, per-client outbox) and Quart-Trio's WebSocket.
* **baseline**: a bare trio-websocket broadcast server: one loop puts the pre-encoded text
  into each connection's channel and one task per connection sends it. No state, no
  protocol: the floor a fan-out server cannot beat on this machine.

Publishing is closed-loop: windows of 100 events, the next one once every client has the
previous one. ``delivered_per_s`` = N x M / (last receipt - first publish); latencies are
publish → receipt per message (within a window of 100 events). ``ratio`` = gateway /
baseline (for ``_ms`` keys lower is better). The clients run in the same process, so both
figures include the same client cost. The gateway's send queue is sized to M for the run
so that the slow-consumer policy never fires. With ``--json`` the last line printed is
``{"bench": "gateway", "metrics": ..., "baseline": ..., "ratio": ..., "machine": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any

import attrs
import orjson
import trio
import trio.lowlevel
from trio_websocket import WebSocketRequest, open_websocket_url, serve_websocket

from ledgerflux.bench import print_summary
from ledgerflux.codec import encode
from ledgerflux.config import Config, GatewayConfig
from ledgerflux.events import Event, Quote, Trade

__all__ = ["main", "run_baseline", "run_gateway"]

PRODUCT = "bench:BTC-USD"
PUBLISH_BATCH = 100


@attrs.frozen
class Result:
    delivered_per_s: float
    p50_ms: float
    p99_ms: float

    def metrics(self) -> dict[str, float]:
        return {
            "delivered_per_s": round(self.delivered_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
        }


def make_events(count: int) -> list[Event]:
    """Trades and quotes alternately, seq 1..count, epoch ``bench``."""
    events: list[Event] = []
    for seq in range(1, count + 1):
        price = Decimal(30_000) + Decimal(seq % 100) / 100
        if seq % 2:
            events.append(
                Trade(
                    product=PRODUCT,
                    seq=seq,
                    epoch="bench",
                    ts_event=seq,
                    ts_ingest=seq,
                    price=price,
                    size=Decimal("0.01"),
                    side="buy",
                    trade_id=str(seq),
                )
            )
        else:
            events.append(
                Quote(
                    product=PRODUCT,
                    seq=seq,
                    epoch="bench",
                    ts_event=seq,
                    ts_ingest=seq,
                    bid_price=price,
                    bid_size=Decimal(1),
                    ask_price=price + 1,
                    ask_size=Decimal(2),
                )
            )
    return events


@attrs.frozen
class _Msg:
    subject: str
    data: bytes
    stream_seq: int


@attrs.frozen
class _StreamState:
    first_seq: int = 0
    last_seq: int = 0
    messages: int = 0


class _MemoryBus:
    """LF_MD in memory: the bench hands batches straight to the gateway's consumer."""

    def __init__(self) -> None:
        self.send, self._receive = trio.open_memory_channel[list[Any]](16)

    async def stream_state(self, stream: str) -> _StreamState:
        return _StreamState()

    @contextlib.asynccontextmanager
    async def ordered(
        self,
        stream: str,
        filter_subject: str,
        *,
        start_seq: int | None = None,
        max_batch: int = 512,
    ) -> AsyncIterator[trio.MemoryReceiveChannel[list[Any]]]:
        yield self._receive


class _EmptyStore:
    async def latest_states(self, products: Sequence[str] | None = None) -> list[Any]:
        return []

    async def history(
        self, product: str, epoch: str, from_seq: int, to_seq: int | None = None, limit: int = 1
    ) -> list[Event]:
        return []


async def _clients(
    url: str,
    n: int,
    last_seq: int,
    sent_at: dict[int, int],
    ready: Callable[[], None],
    batch: bool,
    window_done: dict[int, trio.Event],
) -> tuple[list[float], int]:
    """Run ``n`` subscribers until each has seen ``last_seq``; latencies in ms and the
    time of the last receipt (ns)."""
    latencies: list[float] = []
    last = 0
    subscribed = 0
    reached: dict[int, int] = {}

    async def client() -> None:
        nonlocal last, subscribed
        async with open_websocket_url(url, message_queue_size=64) as ws:
            await ws.send_message(
                orjson.dumps(
                    {"op": "subscribe", "id": 1, "products": [PRODUCT], "batch": batch}
                ).decode()
            )
            await ws.get_message()  # subscribed
            subscribed += 1
            if subscribed == n:
                ready()
            while True:
                frame = orjson.loads(await ws.get_message())
                now = time.perf_counter_ns()
                for message in frame if isinstance(frame, list) else (frame,):
                    seq = message["seq"]
                    latencies.append((now - sent_at[seq]) / 1e6)
                    if seq in window_done:
                        reached[seq] = reached.get(seq, 0) + 1
                        if reached[seq] == n:
                            window_done[seq].set()
                    if seq == last_seq:
                        last = max(last, now)
                        return

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(client)
    return latencies, last


async def _measure(
    url: str,
    clients: int,
    events: list[Event],
    publish: Callable[[list[Event]], Awaitable[None]],
    batch: bool = False,
) -> Result:
    sent_at: dict[int, int] = {}
    # Closed loop: a window of PUBLISH_BATCH events is published once every client has
    # the previous one, so latencies measure delivery, not an ever-growing backlog.
    window_done = {
        chunk[-1].seq: trio.Event()
        for chunk in (events[i : i + PUBLISH_BATCH] for i in range(0, len(events), PUBLISH_BATCH))
    }
    all_subscribed = trio.Event()
    outcome: list[tuple[list[float], int]] = []

    async def run_clients() -> None:
        outcome.append(
            await _clients(
                url, clients, events[-1].seq, sent_at, all_subscribed.set, batch, window_done
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_clients)
        await all_subscribed.wait()
        start = time.perf_counter_ns()
        for i in range(0, len(events), PUBLISH_BATCH):
            chunk = events[i : i + PUBLISH_BATCH]
            now = time.perf_counter_ns()
            for event in chunk:
                sent_at[event.seq] = now
            await publish(chunk)
            await window_done[chunk[-1].seq].wait()
    latencies, last = outcome[0]
    latencies.sort()
    elapsed_s = (last - start) / 1e9
    return Result(
        delivered_per_s=len(latencies) / elapsed_s,
        p50_ms=latencies[len(latencies) // 2],
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )


async def run_gateway(clients: int, events: list[Event], batch: bool = False) -> Result:
    """The gateway's fan-out path, end to end over WebSockets (``batch``: the negotiated
    several-events-per-frame option)."""
    from ledgerflux.gateway import serve_gateway

    bus = _MemoryBus()
    config = Config(
        gateway=GatewayConfig(
            port=0, send_queue=len(events) + 10, max_clients=clients + 10, ring_size=1000
        )
    )
    stream_seq = 0

    async def publish(batch: list[Event]) -> None:
        nonlocal stream_seq
        msgs = []
        for event in batch:
            stream_seq += 1
            msgs.append(_Msg("lf.md.bench.BTC-USD", encode(event), stream_seq))
        await bus.send.send(msgs)

    async with trio.open_nursery() as nursery:
        info = await nursery.start(
            lambda task_status: serve_gateway(
                config, bus=bus, store=_EmptyStore(), task_status=task_status
            )
        )
        result = await _measure(info.ws_url, clients, events, publish, batch)
        nursery.cancel_scope.cancel()
    return result


async def run_baseline(clients: int, events: list[Event]) -> Result:
    """A bare trio-websocket broadcast server doing the same delivery."""
    queues: list[trio.MemorySendChannel[str]] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        send, receive = trio.open_memory_channel[str](len(events) + 10)
        await ws.get_message()
        queues.append(send)
        await ws.send_message('{"type":"subscribed"}')
        async for text in receive:
            await ws.send_message(text)

    async def publish(batch: list[Event]) -> None:
        for event in batch:
            text = encode(event).decode()
            for queue in queues:
                queue.send_nowait(text)

    async with trio.open_nursery() as nursery:
        servers = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        port = servers.port
        result = await _measure(f"ws://127.0.0.1:{port}/ws", clients, events, publish)
        nursery.cancel_scope.cancel()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    args_in = list(sys.argv[1:] if argv is None else argv)
    if "--fanout" in args_in:
        # Many connections with the load generator in separate processes.
        from ledgerflux.bench import fanout

        return fanout.main([arg for arg in args_in if arg != "--fanout"])
    parser = argparse.ArgumentParser(prog="ledgerflux bench gateway", description=__doc__)
    parser.add_argument("--clients", type=int, default=100, help="WebSocket clients (100)")
    parser.add_argument("--events", type=int, default=2000, help="events published (2000)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument(
        "--batch", action="store_true", help="gateway clients negotiate batched frames"
    )
    parser.add_argument(
        "--fanout", action="store_true", help="the many-connections bench (see --fanout --help)"
    )
    args = parser.parse_args(args_in)
    if args.clients < 1 or args.events < 1:
        parser.error("--clients and --events must be >= 1")
    events = make_events(args.events)
    gateway = trio.run(run_gateway, args.clients, events, args.batch)
    baseline = trio.run(run_baseline, args.clients, events)
    metrics, base = gateway.metrics(), baseline.metrics()
    ratio = {key: round(metrics[key] / base[key], 3) if base[key] else None for key in metrics}
    print(
        f"gateway : {metrics['delivered_per_s']:>12,.0f} events/s delivered  "
        f"p50 {metrics['p50_ms']:.2f} ms  p99 {metrics['p99_ms']:.2f} ms"
    )
    print(
        f"baseline: {base['delivered_per_s']:>12,.0f} events/s delivered  "
        f"p50 {base['p50_ms']:.2f} ms  p99 {base['p99_ms']:.2f} ms"
    )
    mode = "batched frames" if args.batch else "one event per frame"
    print(f"ratio   : {ratio}  ({args.clients} clients x {args.events} events, {mode})")
    if args.json:
        print_summary("gateway", metrics=metrics, baseline=base, ratio=ratio)
    return 0
