"""``ledgerflux bench pipeline``: a recording in, WebSocket subscribers out, through the real
daemons, next to plain asyncio nats-py moving the same payloads over the same hops.

One run measures, for each mode (``one``: ``ledgerflux up``, every daemon in one process;
``split``: ``ingest``, ``normalize``, ``snapshot`` and ``gateway`` as four processes):

* **saturation** — the replay feed at ``--speed 0`` (as fast as the bus takes it), looping:
  events/s reaching the subscriber and LF_MD messages/s committed to PostgreSQL (the
  snapshotter's committed position), over a window after a warm-up;
* **fixed rates** (``--rates``, default 300 and 3,000 events/s; the replay speed is the rate
  divided by the recording's own event rate): CPU microseconds per delivered event counting
  *every* process — the LedgerFlux process(es), nats-server and every PostgreSQL process
  (``utime + stime + cutime + cstime`` from ``/proc/<pid>/stat``, so exited backends count
  through their parent) — and p50/p99 from an event's ``ts_ingest`` to its receipt by the
  subscriber.

The servers (embedded nats-server and PostgreSQL) run in a helper process started before any
clock; each measurement starts on empty ``LF_*`` streams and a fresh database.

**Baseline**, in the same run on the same nats-server: one asyncio process with plain
nats-py doing the same hops with no LedgerFlux logic — publish the recording's LF_TICKS
payloads (one JSON array per frame, encoded by :mod:`ledgerflux.codec` before the clock) to
one stream with pipelined ``publish_async``; a pull consumer fetches, publishes one LF_MD
payload per event to a second stream, waits for those acks and acks its input; an ordered
push consumer receives them. Latency is from the LF_TICKS publish to that receipt (a
header carries the time). Its CPU counts the baseline process and nats-server (it writes
no PostgreSQL). ``ratio`` = LedgerFlux / baseline: above 1 is better for throughput, below
1 is better for CPU and latency.

The subscriber runs in this process (its CPU is not counted, for either side). With
``--json`` the last line printed is one JSON object (docs/development.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import httpx
import orjson
import trio
from trio_websocket import open_websocket_url

from ledgerflux.bench import print_summary
from ledgerflux.bench.servers import helper_servers

__all__ = ["MODES", "main"]

MODES = ("one", "split")
READY_TIMEOUT_S = 120.0
SERVERS_TIMEOUT_S = 120.0
_POLL_S = 0.05
_DEMO = Path(__file__).resolve().parents[2] / "recordings" / "demo.jsonl.gz"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_BASELINE_BATCH = 256


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    return [comm, *text.rpartition(")")[2].split()]


def _tree(root: int) -> list[int]:
    """*root* and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(int(stat[2]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_by_role(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each process tree, split by role: the trees named
    ``servers`` and ``postgres`` are split into ``nats-server`` and ``postgres`` (the rest:
    ``servers``) by command name. A process's
    own time plus its reaped children's (``cutime``/``cstime``), so short-lived PostgreSQL
    backends count through the postmaster."""
    out: dict[str, float] = {}
    for label, root in roots.items():
        for pid in _tree(root):
            stat = _stat(pid)
            if stat is None:
                continue
            role = label
            if label in ("servers", "postgres"):
                role = {"nats-server": "nats-server", "postgres": "postgres"}.get(
                    stat[0], "servers"
                )
            # fields after the comm: state=1 ... utime=12 stime=13 cutime=14 cstime=15
            ticks = sum(int(stat[i]) for i in (12, 13, 14, 15))
            out[role] = out.get(role, 0.0) + ticks / _CLK_TCK
    return out


@attrs.frozen
class Servers:
    nats_url: str
    database_url: str
    pid: int
    postgres_pid: int
    """The postmaster: ``pg_ctl`` starts it in a session of its own, outside our tree."""

    def roots(self) -> dict[str, int]:
        return {"servers": self.pid, "postgres": self.postgres_pid}


@contextlib.contextmanager
def _servers() -> Iterator[Servers]:
    """The embedded servers in a helper process (:mod:`ledgerflux.bench.servers`), with the
    postmaster's pid so its CPU is counted too."""
    with helper_servers("lf-bench-pipeline-", SERVERS_TIMEOUT_S) as helper:
        pidfile = next(helper.folder.rglob("postmaster.pid"))
        postgres_pid = int(pidfile.read_text().splitlines()[0])
        yield Servers(helper.nats_url, helper.database_url, helper.pid, postgres_pid)


async def _delete_streams(url: str, prefixes: Sequence[str]) -> None:
    import nats

    nc = await nats.connect(url, name="ledgerflux-bench-reset")
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(tuple(prefixes)):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


def _fresh_database(url: str, name: str) -> str:
    """A new empty database *name* on the server of *url*; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _committed(database_url: str) -> int:
    """The snapshotter's committed LF_MD position (0 before its first commit)."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        try:
            row = conn.execute(
                "SELECT stream_seq FROM consumer_positions WHERE consumer = 'snapshot'"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


@attrs.frozen
class Recording:
    path: Path
    products: tuple[str, ...]
    events_per_s: float
    """Canonical events per second at the recorded timing."""


def read_recording(path: Path) -> Recording:
    from ledgerflux.feeds.registry import load_feed
    from ledgerflux.recording import iter_frames, read_header

    header = read_header(path)
    plugin = load_feed(header.plugin)
    decoder = plugin.new_decoder()
    frames = [f for f in iter_frames(path) if f.dir == "in"]
    events = sum(len(decoder.decode(f.raw, f.ts).events) for f in frames)
    duration_s = max((frames[-1].ts - frames[0].ts) / 1e9, 1e-3)
    products = tuple(f"{plugin.exchange}:{s}" for s in header.symbols)
    return Recording(path, products, events / duration_s)


def _wait_ready(urls: Sequence[str], procs: Sequence[subprocess.Popen[bytes]], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=1.0) as client:
        for url in urls:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get(url).status_code == 200:
                        break
                for proc in procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"a daemon exited {proc.returncode}: {log.read_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready within {READY_TIMEOUT_S} s: {url}")
                time.sleep(_POLL_S)


@contextlib.contextmanager
def _ledgerflux(
    mode: str, servers: Servers, database_url: str, recording: Recording, speed: float, folder: Path
) -> Iterator[tuple[str, list[subprocess.Popen[bytes]], list[str]]]:
    """The pipeline replaying *recording* (looping) at *speed*; yields the gateway's ws URL,
    the processes and their ``/metrics`` URLs, once every one is ready."""
    gateway_port = _free_port()
    env = os.environ | {
        "LEDGERFLUX_NATS_URL": servers.nats_url,
        "LEDGERFLUX_DATABASE_URL": database_url,
        "LEDGERFLUX_DATA_DIR": str(folder / "data"),
        "LEDGERFLUX_LOG_LEVEL": "warning",
        "LEDGERFLUX_GATEWAY__PORT": str(gateway_port),
        "LEDGERFLUX_INGEST__FEED": "replay",
        "LEDGERFLUX_INGEST__REPLAY_PATH": str(recording.path),
        "LEDGERFLUX_INGEST__REPLAY_SPEED": repr(speed),
        "LEDGERFLUX_INGEST__REPLAY_LOOP": "true",
    }
    python = [sys.executable, "-m", "ledgerflux"]
    commands: list[tuple[list[str], int | None]]
    if mode == "one":
        speed_arg = ["--replay", str(recording.path), "--speed", repr(speed)]
        commands = [([*python, "up", *speed_arg], None)]
    else:
        commands = [
            ([*python, "gateway"], None),
            ([*python, "snapshot"], _free_port()),
            ([*python, "normalize"], _free_port()),
            ([*python, "ingest"], _free_port()),
        ]
    log = folder / f"{mode}.log"
    procs: list[subprocess.Popen[bytes]] = []
    metrics: list[str] = []
    with log.open("wb") as out:
        try:
            for args, health in commands:
                extra = {} if health is None else {"LEDGERFLUX_HEALTH_PORT": str(health)}
                procs.append(subprocess.Popen(args, env=env | extra, stdout=out, stderr=out))
                port = gateway_port if health is None else health
                _wait_ready([f"http://127.0.0.1:{port}/readyz"], procs, log)
                metrics.append(f"http://127.0.0.1:{port}/metrics")
            yield f"ws://127.0.0.1:{gateway_port}/ws", procs, metrics
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# --------------------------------------------------------------------------- measuring

_CROSSINGS = re.compile(r'^ledgerflux_bus_crossing_batch_size_count\{op="(\w+)"\} (\S+)$', re.M)


def crossings(urls: Sequence[str]) -> dict[str, float]:
    """Trio/asyncio crossings so far per bus operation, summed over the processes (the
    ``ledgerflux_bus_crossing_batch_size`` histogram's counts on their ``/metrics``)."""
    out: dict[str, float] = {}
    with httpx.Client(timeout=5.0) as client:
        for url in urls:
            for op, count in _CROSSINGS.findall(client.get(url).text):
                out[op] = out.get(op, 0.0) + float(count)
    return out


@attrs.define
class Receipts:
    events: int = 0
    latencies_us: list[float] = attrs.Factory(list)
    recording: bool = False
    first: trio.Event = attrs.Factory(trio.Event)


async def _subscriber(
    url: str, products: Sequence[str], receipts: Receipts, task_status: trio.TaskStatus[None]
) -> None:
    async with open_websocket_url(url, max_message_size=16 << 20) as ws:
        request = {"op": "subscribe", "id": 1, "products": list(products), "batch": True}
        await ws.send_message(orjson.dumps(request).decode())
        await ws.get_message()  # subscribed
        task_status.started()
        while True:
            frame = orjson.loads(await ws.get_message())
            now = time.time_ns()
            for message in frame if isinstance(frame, list) else (frame,):
                ts_ingest = message.get("ts_ingest")
                if "seq" not in message or ts_ingest is None:
                    continue
                receipts.events += 1
                receipts.first.set()
                if receipts.recording:
                    receipts.latencies_us.append((now - ts_ingest) / 1e3)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@attrs.frozen
class Window:
    events_per_s: float
    committed_per_s: float | None
    cpu_us_per_event: float | None
    cpu_by_role_s: dict[str, float]
    crossings_per_event: dict[str, float] | None
    p50_us: float | None
    p99_us: float | None
    events: int


def _window_result(
    events: int,
    elapsed: float,
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
    latencies: Sequence[float],
    committed: int | None,
    crossed: dict[str, float] | None = None,
) -> Window:
    roles = {k: round(cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0), 3) for k in cpu_after}
    total = sum(roles.values())
    return Window(
        events_per_s=events / elapsed,
        committed_per_s=None if committed is None else committed / elapsed,
        cpu_us_per_event=total * 1e6 / events if events else None,
        cpu_by_role_s=roles,
        crossings_per_event=None
        if crossed is None or not events
        else {op: round(n / events, 3) for op, n in sorted(crossed.items())},
        p50_us=_percentile(latencies, 0.50),
        p99_us=_percentile(latencies, 0.99),
        events=events,
    )


async def _measure_ledgerflux(
    ws_url: str,
    products: Sequence[str],
    roots: dict[str, int],
    metrics_urls: Sequence[str],
    database_url: str,
    warmup_s: float,
    window_s: float,
) -> Window:
    receipts = Receipts()
    async with trio.open_nursery() as nursery:
        await nursery.start(_subscriber, ws_url, products, receipts)
        with trio.fail_after(READY_TIMEOUT_S):
            await receipts.first.wait()
        await trio.sleep(warmup_s)
        committed0 = await trio.to_thread.run_sync(_committed, database_url)
        crossed0 = await trio.to_thread.run_sync(crossings, metrics_urls)
        cpu0, events0, t0 = cpu_by_role(roots), receipts.events, time.monotonic()
        receipts.recording = True
        await trio.sleep(window_s)
        receipts.recording = False
        cpu1, events1, t1 = cpu_by_role(roots), receipts.events, time.monotonic()
        crossed1 = await trio.to_thread.run_sync(crossings, metrics_urls)
        committed1 = await trio.to_thread.run_sync(_committed, database_url)
        nursery.cancel_scope.cancel()
    crossed = {op: n - crossed0.get(op, 0.0) for op, n in crossed1.items()}
    return _window_result(
        events1 - events0,
        t1 - t0,
        cpu0,
        cpu1,
        receipts.latencies_us,
        committed1 - committed0,
        crossed,
    )


# --------------------------------------------------------------------------- baseline


def baseline_payloads(path: Path) -> list[tuple[bytes, list[bytes]]]:
    """Per recorded frame with events: its LF_TICKS payload (the frame's events as one JSON
    array) and the LF_MD payloads of those events (one each, with ``seq``/``epoch`` set)."""
    from ledgerflux.codec import encode, encode_many
    from ledgerflux.feeds.registry import load_feed
    from ledgerflux.recording import iter_frames, read_header

    decoder = load_feed(read_header(path).plugin).new_decoder()
    seqs: dict[str, int] = {}
    out = []
    for frame in iter_frames(path):
        if frame.dir != "in":
            continue
        events = decoder.decode(frame.raw, frame.ts).events
        if not events:
            continue
        md = []
        for event in events:
            seqs[event.product] = seqs.get(event.product, 0) + 1
            md.append(encode(attrs.evolve(event, seq=seqs[event.product], epoch="0bench0000000")))
        out.append((encode_many(events), md))
    return out


async def _baseline(url: str, path: Path, rate: float, warmup_s: float, window_s: float) -> None:
    """Runs in its own process; prints one JSON line with its window's figures."""
    import nats
    from nats.js import api

    frames = baseline_payloads(path)
    nc = await nats.connect(url, name="ledgerflux-bench-baseline")
    js = nc.jetstream()
    for name, subject in (("BENCH_TICKS", "bench.ticks.>"), ("BENCH_MD", "bench.md.>")):
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
        await js.add_stream(
            api.StreamConfig(
                name=name, subjects=[subject], storage=api.StorageType.FILE, allow_direct=True
            )
        )
    received = 0
    first = asyncio.Event()
    recording = False
    latencies: list[float] = []

    async def on_md(msg: Any) -> None:
        nonlocal received
        received += 1
        first.set()
        if recording:
            latencies.append((time.time_ns() - int(msg.headers["Bench-Ts"])) / 1e3)

    await js.subscribe("bench.md.>", stream="BENCH_MD", cb=on_md, ordered_consumer=True)
    pull = await js.pull_subscribe("bench.ticks.>", durable="bench", stream="BENCH_TICKS")

    async def publish_ticks() -> None:
        sent = 0
        started = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        for i in range(10**12):
            data, md = frames[i % len(frames)]
            headers = {"Nats-Msg-Id": f"t{i}", "Bench-Ts": str(time.time_ns())}
            pending.append(await js.publish_async("bench.ticks.0.x", data, headers=headers))
            sent += len(md)
            if len(pending) >= _BASELINE_BATCH:
                await asyncio.gather(*pending)
                pending.clear()
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.gather(*pending)
                    pending.clear()
                    await asyncio.sleep(ahead)

    async def normalize() -> None:
        index = 0
        while True:
            try:
                msgs = await pull.fetch(_BASELINE_BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            pending = []
            for msg in msgs:
                count = len(orjson.loads(msg.data))
                _, md = frames[index % len(frames)]
                index += 1
                stamp = {"Bench-Ts": (msg.headers or {})["Bench-Ts"]}
                for j, payload in enumerate(md[:count]):
                    headers = {"Nats-Msg-Id": f"m{index}.{j}", **stamp}
                    pending.append(await js.publish_async("bench.md.x", payload, headers=headers))
            await asyncio.gather(*pending)
            for msg in msgs:
                await msg.ack()

    tasks = [asyncio.create_task(publish_ticks()), asyncio.create_task(normalize())]
    await asyncio.wait_for(first.wait(), READY_TIMEOUT_S)
    await asyncio.sleep(warmup_s)
    print("window", flush=True)
    cpu0, events0, t0 = time.process_time(), received, time.monotonic()
    recording = True
    await asyncio.sleep(window_s)
    recording = False
    cpu1, events1, t1 = time.process_time(), received, time.monotonic()
    print("end", flush=True)
    for task in tasks:
        task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.gather(*tasks)
    await nc.close()
    events = events1 - events0
    print(
        orjson.dumps(
            {
                "events": events,
                "elapsed": t1 - t0,
                "cpu_s": cpu1 - cpu0,
                "p50_us": _percentile(latencies, 0.5),
                "p99_us": _percentile(latencies, 0.99),
            }
        ).decode(),
        flush=True,
    )


def _run_baseline(
    servers: Servers, recording: Recording, rate: float, warmup_s: float, window_s: float
) -> Window:
    args = [servers.nats_url, str(recording.path), repr(rate), repr(warmup_s), repr(window_s)]
    roots = servers.roots()
    cpu0: dict[str, float] = {}
    cpu1: dict[str, float] = {}
    result: dict[str, Any] = {}
    with subprocess.Popen(
        [sys.executable, "-m", "ledgerflux.bench.pipeline", "--baseline-worker", *args],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "window":
                cpu0 = cpu_by_role(roots)
            elif line.strip() == "end":
                cpu1 = cpu_by_role(roots)
            elif line.startswith("{"):
                result = orjson.loads(line)
    if proc.returncode != 0 or not result:
        raise RuntimeError(f"the baseline worker exited {proc.returncode}")
    cpu0 = {k: v for k, v in cpu0.items() if k == "nats-server"}
    cpu1 = {k: v for k, v in cpu1.items() if k == "nats-server"}
    cpu0["baseline"], cpu1["baseline"] = 0.0, result["cpu_s"]
    window = _window_result(result["events"], result["elapsed"], cpu0, cpu1, [], None)
    return attrs.evolve(window, p50_us=result["p50_us"], p99_us=result["p99_us"])


# --------------------------------------------------------------------------- the run


def _measure_mode(
    mode: str,
    servers: Servers,
    recording: Recording,
    rate: float,
    warmup_s: float,
    window_s: float,
    folder: Path,
) -> Window:
    asyncio.run(_delete_streams(servers.nats_url, ["LF_", "OBJ_LF_", "KV_LF_"]))
    name = f"bench_{mode}_{int(rate)}"
    database_url = _fresh_database(servers.database_url, name)
    speed = rate / recording.events_per_s if rate > 0 else 0.0
    pipeline = _ledgerflux(mode, servers, database_url, recording, speed, folder)
    with pipeline as (ws_url, procs, metrics_urls):
        roots = servers.roots()
        roots |= {f"ledgerflux{i}": proc.pid for i, proc in enumerate(procs)}
        window = trio.run(
            _measure_ledgerflux,
            ws_url,
            recording.products,
            roots,
            metrics_urls,
            database_url,
            warmup_s,
            window_s,
        )
    lf = sum(v for k, v in window.cpu_by_role_s.items() if k.startswith("ledgerflux"))
    roles = {k: v for k, v in window.cpu_by_role_s.items() if not k.startswith("ledgerflux")}
    return attrs.evolve(window, cpu_by_role_s=roles | {"ledgerflux": round(lf, 3)})


def _key(rate: float) -> str:
    return "sat" if rate == 0 else f"{int(rate)}"


def _figures(prefix: str, rate: float, w: Window) -> dict[str, float | None]:
    key = f"{prefix}{_key(rate)}"
    out: dict[str, float | None] = {}
    if rate == 0:
        out[f"{key}_events_per_s"] = round(w.events_per_s)
        if w.committed_per_s is not None:
            out[f"{key}_committed_per_s"] = round(w.committed_per_s)
    else:
        out[f"{key}_events_per_s"] = round(w.events_per_s)
        cpu = w.cpu_us_per_event
        out[f"{key}_cpu_us_per_event"] = None if cpu is None else round(cpu, 1)
        out[f"{key}_p50_us"] = None if w.p50_us is None else round(w.p50_us)
        out[f"{key}_p99_us"] = None if w.p99_us is None else round(w.p99_us)
        if w.crossings_per_event is not None:
            out[f"{key}_crossings_per_event"] = round(sum(w.crossings_per_event.values()), 3)
    return out


def _describe(label: str, rate: float, w: Window) -> str:
    what = "saturation" if rate == 0 else f"{int(rate)}/s"
    line = f"{label:<9} {what:>10}: {w.events_per_s:>9,.0f} events/s"
    if w.committed_per_s is not None and rate == 0:
        line += f", {w.committed_per_s:,.0f} committed/s"
    if rate:
        cpu = "-" if w.cpu_us_per_event is None else f"{w.cpu_us_per_event:,.0f}"
        p50 = "-" if w.p50_us is None else f"{w.p50_us / 1e3:.2f}"
        p99 = "-" if w.p99_us is None else f"{w.p99_us / 1e3:.2f}"
        line += f", CPU {cpu} µs/event {w.cpu_by_role_s}, p50 {p50} ms, p99 {p99} ms"
        if w.crossings_per_event is not None:
            line += f", crossings/event {w.crossings_per_event}"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--baseline-worker"]:
        url, path, rate_s, warmup, window = argv[1:6]
        asyncio.run(_baseline(url, Path(path), float(rate_s), float(warmup), float(window)))
        return 0
    parser = argparse.ArgumentParser(prog="ledgerflux bench pipeline", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print a JSON line last")
    parser.add_argument("--recording", type=Path, default=_DEMO)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: one,split")
    parser.add_argument(
        "--rates", default="0,300,3000", help="events/s, comma-separated; 0 is saturation"
    )
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: expected some of {', '.join(MODES)}")
    rates = [float(r) for r in args.rates.split(",") if r]
    if not rates or any(r < 0 for r in rates) or args.window_s <= 0 or args.warmup_s < 0:
        parser.error("--rates must be >= 0, --window-s > 0, --warmup-s >= 0")

    recording = read_recording(args.recording)
    print(
        f"pipeline bench: {args.recording.name}, {len(recording.products)} products, "
        f"{recording.events_per_s:,.0f} events/s recorded; window {args.window_s:g} s "
        f"after {args.warmup_s:g} s warm-up"
    )
    metrics: dict[str, float | None] = {}
    baseline: dict[str, float | None] = {}
    with _servers() as servers, tempfile.TemporaryDirectory(prefix="lf-bench-run-") as tmp:
        for rate in rates:
            if not args.no_baseline:
                base = _run_baseline(servers, recording, rate, args.warmup_s, args.window_s)
                baseline |= _figures("", rate, base)
                print(_describe("baseline", rate, base), flush=True)
            for mode in modes:
                folder = Path(tmp) / f"{mode}-{_key(rate)}"
                folder.mkdir()
                got = _measure_mode(
                    mode, servers, recording, rate, args.warmup_s, args.window_s, folder
                )
                metrics |= _figures(f"{mode}_", rate, got)
                print(_describe(mode, rate, got), flush=True)
                shutil.rmtree(folder, ignore_errors=True)
    ratio: dict[str, float | None] = {}
    for key, value in metrics.items():
        base_value = baseline.get(key.split("_", 1)[1])
        if value is not None and base_value:
            ratio[key] = round(value / base_value, 3)
    if args.json:
        print_summary("pipeline", metrics=metrics, baseline=baseline, ratio=ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
