"""``ledgerflux bench bus``: JetStream events/s through the Trio bus vs plain asyncio nats-py.

Measured, in one run against the same server (``--url``, else an embedded one in a temp dir):

* ``publish_per_s``: messages published *and acked* through :meth:`Bus.publish_batch`, in
  sequential batches of ``--batch`` (one Trio/asyncio crossing per batch).
* ``consume_per_s``: the same messages read back through :meth:`Bus.ordered` (on both
  sides the clock stops at the last message, before the consumer is closed).
* ``pull_per_s``: read back through a durable pull consumer, ``fetch`` + ``ack`` per batch.

The baseline is plain nats-py on its own ``asyncio.run`` (in a thread) doing the same work
the idiomatic fast asyncio way: pipelined publishing with ``js.publish_async`` (one shared
reply inbox, a future per message; all messages of a batch written, then all acks
awaited), which is also how :meth:`Bus.publish_batch` publishes, and an ordered push
consumer with a message callback. (An ``asyncio.gather`` of ``js.publish``, one request
and one future per message, was the baseline before; it is slower, about 0.7x of
``publish_async`` here, and would flatter the bus.) Both carry a
``Nats-Msg-Id`` on every message, as LedgerFlux publishes do. Payloads are ~200-byte
canonical trade events from :func:`ledgerflux.codec.encode`. The work happens in a
throw-away stream (``LF_BENCH_*``), deleted at the end, so a real server's LedgerFlux
streams are not touched.

Bus and baseline alternate ``--rounds`` times and the best round of each counts, so drift
(a noisy neighbour) hits both alike. ``ratio`` = bus / baseline; the target is >= 0.9.
With ``--json`` the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import attrs
import nats
import nats.js.errors
import trio
from nats.aio.msg import Msg as NatsMsg
from nats.js import api

from ledgerflux.bench import machine, print_summary
from ledgerflux.bus import Bus, OutMsg, PubAck, open_bus
from ledgerflux.codec import encode
from ledgerflux.config import NatsConfig
from ledgerflux.embedded.nats import open_nats_server
from ledgerflux.events import Trade

__all__ = ["main"]

CONSUME_TIMEOUT_S = 120.0


@attrs.frozen
class BenchResult:
    metrics: dict[str, int]
    baseline: dict[str, int]
    ratio: dict[str, float]
    machine: str
    payload_bytes: int


def payloads(count: int) -> list[bytes]:
    """``count`` encoded trades, each about 200 bytes."""
    ts = 1_763_600_000_000_000_000
    return [
        encode(
            Trade(
                product="coinbase:BTC-USD",
                seq=i + 1,
                epoch="01JD0BENCH",
                src_seq=90_000_000 + i,
                ts_event=ts + i * 1_000_000,
                ts_ingest=ts + i * 1_000_000 + 350_000,
                price=Decimal("91234.56") + Decimal(i % 100) / 100,
                size=Decimal("0.00412300"),
                side="buy" if i % 2 else "sell",
                trade_id=str(700_000_000 + i),
            )
        )
        for i in range(count)
    ]


# --------------------------------------------------------------------------- baseline


async def _baseline(
    url: str, stream: str, subject: str, data: list[bytes], batch: int
) -> dict[str, float]:
    nc = await nats.connect(url, name="ledgerflux-bench-baseline")
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        first = info.state.last_seq + 1
        started = time.perf_counter()
        for start in range(0, len(data), batch):
            # Pipelined: every message of the batch is written, then all acks awaited.
            futures = [
                await js.publish_async(
                    subject, d, headers={"Nats-Msg-Id": f"{subject}:{start + i}"}
                )
                for i, d in enumerate(data[start : start + batch])
            ]
            acks = await asyncio.gather(*futures)
            assert len(acks) == len(data[start : start + batch])
        publish_s = time.perf_counter() - started

        done = asyncio.Event()
        received = 0

        async def on_msg(_: NatsMsg) -> None:
            nonlocal received
            received += 1
            if received >= len(data):
                done.set()

        started = time.perf_counter()
        sub = await js.subscribe(
            subject,
            stream=stream,
            cb=on_msg,
            ordered_consumer=True,
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first
            ),
        )
        await asyncio.wait_for(done.wait(), CONSUME_TIMEOUT_S)
        consume_s = time.perf_counter() - started
        await sub.unsubscribe()
    finally:
        await nc.close()
    return {
        "publish_per_s": len(data) / publish_s,
        "consume_per_s": len(data) / consume_s,
    }


async def _create_stream(url: str, stream: str, subjects: str) -> None:
    nc = await nats.connect(url, name="ledgerflux-bench-setup")
    try:
        await nc.jetstream().add_stream(
            api.StreamConfig(
                name=stream,
                subjects=[subjects],
                storage=api.StorageType.FILE,
                duplicate_window=120.0,
                allow_direct=True,
            )
        )
    finally:
        await nc.close()


# --------------------------------------------------------------------------- the bus


async def _bus_round(
    bus: Bus, stream: str, subject: str, data: list[bytes], batch: int, durable: str
) -> dict[str, float]:
    first = (await bus.stream_state(stream)).last_seq + 1
    msgs = [OutMsg(subject=subject, data=d, msg_id=f"{subject}:{i}") for i, d in enumerate(data)]
    started = time.perf_counter()
    for start in range(0, len(msgs), batch):
        results = await bus.publish_batch(msgs[start : start + batch])
        bad = [r for r in results if not isinstance(r, PubAck)]
        if bad:
            raise RuntimeError(f"publish failed during the benchmark: {bad[0]!r}")
    publish_s = time.perf_counter() - started

    started = time.perf_counter()
    received = 0
    consume_s = 0.0
    with trio.fail_after(CONSUME_TIMEOUT_S):
        async with bus.ordered(stream, subject, start_seq=first) as channel:
            async for got in channel:
                received += len(got)
                if received >= len(data):
                    # Stopped at the last message, as the baseline's clock is: closing the
                    # consumer (an unsubscribe round trip) is not consuming.
                    consume_s = time.perf_counter() - started
                    break

    started = time.perf_counter()
    received = 0
    with trio.fail_after(CONSUME_TIMEOUT_S):
        async with bus.pull(stream, durable, subject, batch=batch) as consumer:
            while received < len(data):
                got = await consumer.fetch(timeout_s=1.0)
                await consumer.ack(got)
                received += len(got)
    pull_s = time.perf_counter() - started
    return {
        "publish_per_s": len(data) / publish_s,
        "consume_per_s": len(data) / consume_s,
        "pull_per_s": len(data) / pull_s,
    }


async def _run(url: str | None, messages: int, batch: int, rounds: int) -> BenchResult:
    if url is not None:
        return await _measure(url, messages, batch, rounds)
    with tempfile.TemporaryDirectory(prefix="lf-bench-bus-") as tmp:
        async with open_nats_server(Path(tmp)) as server:
            return await _measure(server.url, messages, batch, rounds)


async def _measure(url: str, messages: int, batch: int, rounds: int) -> BenchResult:
    data = payloads(messages)
    tag = f"{os.getpid()}_{time.time_ns()}"
    stream = f"LF_BENCH_{tag}"
    prefix = f"lfbench.{tag}"
    await trio.to_thread.run_sync(asyncio.run, _create_stream(url, stream, f"{prefix}.>"))
    best_bus: dict[str, float] = {}
    best_base: dict[str, float] = {}
    async with open_bus(NatsConfig(), url=url, name="ledgerflux-bench") as bus:
        try:
            for r in range(rounds):
                base = await trio.to_thread.run_sync(
                    asyncio.run, _baseline(url, stream, f"{prefix}.base{r}", data, batch)
                )
                ours = await _bus_round(bus, stream, f"{prefix}.bus{r}", data, batch, f"pull{r}")
                for best, got in ((best_base, base), (best_bus, ours)):
                    for key, value in got.items():
                        best[key] = max(best.get(key, 0.0), value)
        finally:
            with trio.CancelScope(shield=True):
                await bus.delete_stream(stream)
    return BenchResult(
        metrics={k: round(v) for k, v in best_bus.items()},
        baseline={k: round(v) for k, v in best_base.items()},
        ratio={
            "publish": round(best_bus["publish_per_s"] / best_base["publish_per_s"], 3),
            "consume": round(best_bus["consume_per_s"] / best_base["consume_per_s"], 3),
        },
        machine=machine(),
        payload_bytes=len(data[0]),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledgerflux bench bus", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print a JSON line last")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--url", default=None, help="nats://...; default: embedded server")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.batch < 1 or args.rounds < 1:
        parser.error("--messages, --batch and --rounds must be >= 1")
    result = trio.run(_run, args.url, args.messages, args.batch, args.rounds)
    metrics, baseline, ratio = result.metrics, result.baseline, result.ratio
    print(
        f"bus bench: {args.messages} messages of {result.payload_bytes} bytes, "
        f"batch {args.batch}, best of {args.rounds} rounds"
    )
    print(
        f"publish+ack: bus {metrics['publish_per_s']:>9,}/s   "
        f"asyncio {baseline['publish_per_s']:>9,}/s   ratio {ratio['publish']}"
    )
    print(
        f"ordered:     bus {metrics['consume_per_s']:>9,}/s   "
        f"asyncio {baseline['consume_per_s']:>9,}/s   ratio {ratio['consume']}"
    )
    print(f"pull+ack:    bus {metrics['pull_per_s']:>9,}/s")
    if args.json:
        print_summary("bus", metrics=result.metrics, baseline=result.baseline, ratio=result.ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
