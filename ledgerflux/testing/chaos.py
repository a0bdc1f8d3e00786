"""The chaos suite: the whole pipeline as separate processes, faults, invariants, a table.

``python -m ledgerflux.testing.chaos`` (``just chaos``) starts a 3-node NATS JetStream
cluster (R3 streams), PostgreSQL (pgserver's binaries, stoppable), an S3 server (moto, as
its own process) and the daemons as OS processes (``ingest``, ``normalize --shard 0/1``,
``snapshot``, ``gateway``) replaying a recording, plus a WebSocket subscriber of the
gateway that resumes with ``from_seq`` after every disconnect. Then, fault by fault, round
by round: wait a random (seeded) moment, inject the fault, heal it, wait for the pipeline
to recover and check the invariants of :mod:`ledgerflux.testing.chaos_checks` on
everything LF_MD, ``md_history`` and ``md_latest`` hold and the subscriber received.
Each new finding is charged to the fault of the round that revealed it.

The table at the end: fault, rounds, events, lost, duplicated, holes, other findings
(state, crashes), the slowest recovery (heal → every daemon ready and ``md_latest``
caught up with LF_MD), the slowest restart to ready and the slowest "book live" (a
restarted normalizer's readiness → its products' first book event on LF_MD; after an
exchange cut: the reconnect → the first book event). The same as JSON in the work dir.
Seeds, ports and log files are printed so that a failure can be replayed:
``python -m ledgerflux.testing.chaos --seed N --faults NAME``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import attrs
import httpx
import orjson
import psycopg
import trio
import trio_websocket

from ledgerflux.bus import Bus, BusError, open_bus
from ledgerflux.config import NatsConfig
from ledgerflux.embedded.postgres import open_postgres
from ledgerflux.errors import LedgerfluxError
from ledgerflux.events import make_product
from ledgerflux.recording import read_header
from ledgerflux.subjects import MD_STREAM, shard_of
from ledgerflux.testing.chaos_checks import (
    Finding,
    HistoryChecker,
    HistoryRecord,
    LatestChecker,
    LatestRecord,
    MdChecker,
    MdMessage,
    SubscriberLedger,
    parse_md,
)
from ledgerflux.testing.cluster import NatsCluster, open_nats_cluster
from ledgerflux.testing.fake_exchange import FakeExchange, open_fake_exchange
from ledgerflux.testing.processes import Child, free_port, log_tail
from ledgerflux.testing.synth import write_demo
from ledgerflux.websocket import open_websocket_url

__all__ = [
    "FAULTS",
    "ChaosError",
    "ChaosReport",
    "ChaosSettings",
    "FaultRow",
    "main",
    "run_chaos",
]

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recordings" / "demo.jsonl.gz"
SHARDS = 2
BUCKET = "ledgerflux"
READY_TIMEOUT_S = 60.0
"""Bound on a daemon's start to /readyz 200 before the round fails."""
BOOK_LIVE_WAIT_S = 10.0
"""How long "book live" is waited for; longer is reported as not live."""
RECONNECT_WAIT_S = 30.0
BUS_RETRY_S = 60.0
FILL_BY_GET = 2000
"""Up to this many messages the tail has not delivered are fetched by direct get."""
STOP_BOUND_S = 30.0
"""SIGTERM/SIGINT → exit bound: drain_timeout_s (10 s) plus room."""

FAULTS = (
    "kill-ingest",
    "kill-normalize",
    "kill-snapshot",
    "kill-gateway",
    "nats-node",
    "pg-stop",
    "s3-down",
    "exchange-cut",
    "big-snapshot",
    "sigint-up",
)
"""Every fault, in the order a run injects them."""

ENV_PREFIX = "LEDGERFLUX_CHAOS_"
T = TypeVar("T")


class ChaosError(LedgerfluxError, RuntimeError):
    """The harness itself could not go on (a server did not start, a bound passed)."""


def _say(text: str) -> None:
    print(f"[chaos] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- settings


@attrs.frozen
class ChaosSettings:
    """What a chaos run does. :meth:`full` is ``just chaos``; :meth:`short` is CI's form."""

    seed: int
    rounds: int = 10
    faults: tuple[str, ...] = FAULTS
    pg_down_s: float = 30.0
    nats_down_s: float = 5.0
    s3_down_s: float = 10.0
    speed: float = 1.0
    """Replay speed of the recording (1 = recorded timing, ~290 frames/s)."""
    moment_s: tuple[float, float] = (0.5, 3.0)
    """A fault is injected after a random wait in this range (seeded)."""
    settle_timeout_s: float = 60.0
    big_levels: int = 50_000
    """Levels (both sides) of each book of the big-snapshot fault."""
    work_dir: Path | None = None
    """Where servers keep data and logs; a new temporary folder when None (kept)."""

    @classmethod
    def full(cls, seed: int | None = None) -> ChaosSettings:
        return cls(seed=_seed(seed))

    @classmethod
    def short(cls, seed: int | None = None) -> ChaosSettings:
        return cls(
            seed=_seed(seed),
            rounds=3,
            pg_down_s=5.0,
            nats_down_s=3.0,
            s3_down_s=3.0,
            moment_s=(0.3, 1.5),
        )

    def with_env(self, environ: Mapping[str, str]) -> ChaosSettings:
        """Overrides from ``LEDGERFLUX_CHAOS_{ROUNDS,SEED,FAULTS,PG_DOWN_S,NATS_DOWN_S,
        S3_DOWN_S,SPEED,WORK_DIR}``."""
        changes: dict[str, Any] = {}
        for key, kind in (
            ("rounds", int),
            ("seed", int),
            ("pg_down_s", float),
            ("nats_down_s", float),
            ("s3_down_s", float),
            ("speed", float),
        ):
            value = environ.get(f"{ENV_PREFIX}{key.upper()}")
            if value:
                changes[key] = kind(value)
        faults = environ.get(f"{ENV_PREFIX}FAULTS")
        if faults:
            changes["faults"] = _fault_names(faults)
        work_dir = environ.get(f"{ENV_PREFIX}WORK_DIR")
        if work_dir:
            changes["work_dir"] = Path(work_dir)
        return attrs.evolve(self, **changes)


def _seed(seed: int | None) -> int:
    return seed if seed is not None else random.SystemRandom().randrange(1, 2**31)


def _fault_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
    return names


# --------------------------------------------------------------------------- report


@attrs.define
class FaultRow:
    """One line of the table: a fault's rounds and what they revealed."""

    fault: str
    rounds: int = 0
    events: int = 0
    findings: list[Finding] = attrs.field(factory=list)
    recovery_s: list[float] = attrs.field(factory=list)
    ready_s: list[float] = attrs.field(factory=list)
    book_live_s: list[float] = attrs.field(factory=list)

    def count(self, *kinds: str) -> int:
        return sum(f.count for f in self.findings if f.kind in kinds)

    @property
    def clean(self) -> bool:
        return not [f for f in self.findings if f.kind != "explained"]

    def to_json(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "rounds": self.rounds,
            "events": self.events,
            "lost": self.count("lost"),
            "duplicated": self.count("duplicated"),
            "holes": self.count("hole"),
            "state": self.count("state"),
            "crashes": self.count("crash"),
            "explained": self.count("explained"),
            "max_recovery_s": _max(self.recovery_s),
            "max_ready_s": _max(self.ready_s),
            "max_book_live_s": _max(self.book_live_s),
            "findings": [attrs.asdict(f) for f in self.findings],
        }


def _max(values: Sequence[float]) -> float | None:
    return round(max(values), 3) if values else None


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return f">{BOOK_LIVE_WAIT_S:g}"
    return f"{value:.2f}"


@attrs.define
class ChaosReport:
    settings: ChaosSettings
    work_dir: Path
    ports: dict[str, Any] = attrs.field(factory=dict)
    rows: list[FaultRow] = attrs.field(factory=list)
    subscriber: dict[str, Any] = attrs.field(factory=dict)
    """The resuming subscriber: connections, events, close codes seen."""

    @property
    def clean(self) -> bool:
        return all(row.clean for row in self.rows)

    def table(self) -> str:
        head = (
            f"{'fault':<15}{'rounds':>7}{'events':>9}{'lost':>6}{'dup':>5}{'holes':>7}"
            f"{'state':>7}{'crash':>7}{'recovery_s':>12}{'ready_s':>9}{'book_live_s':>13}"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.fault:<15}{r.rounds:>7}{r.events:>9}{r.count('lost'):>6}"
                f"{r.count('duplicated'):>5}{r.count('hole'):>7}{r.count('state'):>7}"
                f"{r.count('crash'):>7}{_fmt(_max(r.recovery_s)):>12}"
                f"{_fmt(_max(r.ready_s)):>9}{_fmt(_max(r.book_live_s)):>13}"
            )
        return "\n".join(lines)

    def findings_text(self, limit: int = 8) -> str:
        out: list[str] = []
        for row in self.rows:
            bad = [f for f in row.findings if f.kind != "explained"]
            for f in bad[:limit]:
                out.append(f"  {row.fault}: [{f.kind}] {f.detail}")
            if len(bad) > limit:
                out.append(f"  {row.fault}: ... {len(bad) - limit} more (see the JSON report)")
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "seed": s.seed,
            "settings": {
                "rounds": s.rounds,
                "faults": list(s.faults),
                "pg_down_s": s.pg_down_s,
                "nats_down_s": s.nats_down_s,
                "s3_down_s": s.s3_down_s,
                "speed": s.speed,
            },
            "work_dir": str(self.work_dir),
            "ports": self.ports,
            "subscriber": self.subscriber,
            "clean": self.clean,
            "rows": [row.to_json() for row in self.rows],
        }


# --------------------------------------------------------------------------- servers


class Postgres:
    """The run's PostgreSQL: pgserver's cluster, stopped and started with its ``pg_ctl``
    (as the ``pgserver`` user when run as root, as pgserver itself does)."""

    def __init__(self, url: str, pgdata: Path) -> None:
        self.admin_url = url
        self.pgdata = pgdata
        host = parse_qs(urlsplit(url).query).get("host", [str(pgdata)])[0]
        self.socket_dir = host
        parts = urlsplit(url)
        self.url = urlunsplit(parts._replace(path="/lfchaos"))
        self.down = False
        self.restarted = False
        """Started by :meth:`start`: pgserver no longer knows its pid, we stop it."""

    def _pg_ctl(self, *args: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
        user = "pgserver" if os.geteuid() == 0 else None
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args],
            check=True,
            user=user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    async def stop(self) -> None:
        """``pg_ctl stop -m fast``: connections are closed, the server is gone."""
        await trio.to_thread.run_sync(self._pg_ctl, "-w", "-m", "fast", "stop")
        self.down = True

    async def start(self) -> None:
        await trio.to_thread.run_sync(
            self._pg_ctl,
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.pgdata / "log"),
            "start",
        )
        self.down = False
        self.restarted = True

    def create_database(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS lfchaos WITH (FORCE)")
            conn.execute("CREATE DATABASE lfchaos")


@asynccontextmanager
async def open_chaos_postgres() -> AsyncIterator[Postgres]:
    # Not under the work dir: run as root, the server runs as the pgserver user, which must
    # be able to traverse every parent folder (a pytest tmp dir is mode 0700).
    folder = Path(tempfile.mkdtemp(prefix="ledgerflux-chaos-pg-"))
    await trio.Path(folder).chmod(0o755)
    try:
        async with open_postgres(folder) as server:
            pg = Postgres(server.url, server.data_dir)
            await trio.to_thread.run_sync(pg.create_database)
            try:
                yield pg
            finally:
                # pgserver stops only a server it started itself; one the suite restarted
                # is stopped here.
                if pg.restarted and not pg.down:
                    with (
                        trio.CancelScope(shield=True),
                        contextlib.suppress(subprocess.SubprocessError, OSError),
                    ):
                        await pg.stop()
    finally:
        await trio.to_thread.run_sync(partial(shutil.rmtree, folder, ignore_errors=True))


class S3Server:
    """moto in server mode as its own process, so that it can be killed and restarted."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        binary = Path(sys.executable).parent / "moto_server"
        self.child = Child(
            name="s3",
            argv=[str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
            env=_base_env(work),
            log=work / "logs" / "s3.log",
        )

    async def start(self) -> None:
        """Start and wait until it answers; create the archive bucket (moto keeps objects
        in memory, so a restarted server has none: the restart stands for S3 coming back)."""
        self.child.start()
        async with httpx.AsyncClient(timeout=2.0) as client:
            with trio.move_on_after(30):
                while True:
                    if not self.child.running:
                        raise ChaosError(f"moto server exited: {log_tail(self.child.log)}")
                    try:
                        reply = await client.put(f"{self.endpoint}/{BUCKET}")
                        if reply.status_code < 500:
                            return
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
        raise ChaosError("moto server did not answer within 30 s")


def _base_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
    # Restarts read their modules' bytecode, as a deployed install does, instead of
    # compiling every module from source again (PYTHONDONTWRITEBYTECODE, a source tree):
    # the first start writes it under the work dir.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    env.update(
        PYTHONUNBUFFERED="1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return env


# --------------------------------------------------------------------------- daemons


@attrs.define(eq=False)
class Daemon:
    name: str
    child: Child
    ready_url: str
    products: tuple[str, ...] = ()
    """The products this daemon owns (normalizers), for "book live"."""


async def _wait_ready(daemon: Daemon, timeout_s: float = READY_TIMEOUT_S) -> None:
    async with httpx.AsyncClient(timeout=1.0) as client:
        with trio.move_on_after(timeout_s):
            while True:
                if not daemon.child.running:
                    code = None if daemon.child.proc is None else daemon.child.proc.returncode
                    raise ChaosError(
                        f"{daemon.name} exited with {code} before ready:\n"
                        f"{log_tail(daemon.child.log)}"
                    )
                try:
                    if (await client.get(daemon.ready_url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    raise ChaosError(f"{daemon.name} not ready within {timeout_s} s:\n{log_tail(daemon.child.log)}")


# --------------------------------------------------------------------------- the run


@attrs.define
class RoundTimes:
    ready_s: float | None = None
    book_live_s: float | None = None
    live_products: tuple[str, ...] = ()
    """Products whose "book live" is measured after recovery, from ``live_since``."""
    live_since: float = 0.0
    live_snapshot: bool = False
    """Only a book snapshot counts (after an exchange reconnect: the resync itself)."""


class ChaosRun:
    """Everything running, and what was seen so far."""

    def __init__(
        self,
        settings: ChaosSettings,
        work: Path,
        cluster: NatsCluster,
        pg: Postgres,
        s3: S3Server,
        bus: Bus,
    ) -> None:
        self.settings = settings
        self.work = work
        self.cluster = cluster
        self.pg = pg
        self.s3 = s3
        self.bus = bus
        header = read_header(DEMO)
        self.products = tuple(make_product(header.plugin, s) for s in header.symbols)
        self.gateway_port = free_port()
        self.env = _base_env(work) | {
            "LEDGERFLUX_NATS_URL": cluster.url,
            "LEDGERFLUX_NATS__REPLICAS": "3",
            "LEDGERFLUX_DATABASE_URL": pg.url,
            "LEDGERFLUX_S3_ENDPOINT": s3.endpoint,
            "LEDGERFLUX_ARCHIVE__BUCKET": BUCKET,
            "LEDGERFLUX_ARCHIVE__ACCESS_KEY_ID": "testing",
            "LEDGERFLUX_ARCHIVE__SECRET_ACCESS_KEY": "testing",
            "LEDGERFLUX_ARCHIVE__BATCH_MAX_AGE_S": "2",
            "LEDGERFLUX_DATA_DIR": str(work / "data"),
            "LEDGERFLUX_GATEWAY__PORT": str(self.gateway_port),
            "LEDGERFLUX_NORMALIZE__SHARDS": str(SHARDS),
            "LEDGERFLUX_DRAIN_TIMEOUT_S": "10",
            # Retention follows event time and the recordings are older than the default
            # 7 days: without this a (re)started snapshotter would drop their history.
            "LEDGERFLUX_DATABASE__HISTORY_RETENTION_DAYS": "36500",
        }
        self.replay_env = {
            "LEDGERFLUX_INGEST__FEED": "replay",
            "LEDGERFLUX_INGEST__REPLAY_PATH": str(DEMO),
            "LEDGERFLUX_INGEST__REPLAY_SPEED": str(settings.speed),
            "LEDGERFLUX_INGEST__REPLAY_LOOP": "true",
        }
        self.daemons: dict[str, Daemon] = {}
        self.active: set[str] = set()
        for name, args in (
            ("gateway", ["gateway"]),
            ("snapshot", ["snapshot"]),
            *((f"normalize-{i}", ["normalize", "--shard", str(i)]) for i in range(SHARDS)),
            ("ingest", ["ingest"]),
        ):
            self._add_daemon(name, args)
        self.md: dict[int, MdMessage] = {}
        """LF_MD messages read and not checked yet, by stream seq."""
        self.md_checked = 0
        """Every LF_MD message up to this stream seq went through the checkers."""
        self.md_read = 0
        """The highest stream seq read so far."""
        self.books: list[tuple[float, str, bool]] = []
        """(arrival, product, snapshot) of every book message the tail saw, in order."""
        self.md_unreadable: list[Finding] = []
        self.md_checker = MdChecker()
        self.md_last_by_product: dict[str, int] = {}
        """Per product, its last checked LF_MD stream seq."""
        self.history_checker = HistoryChecker()
        self.latest_checker = LatestChecker()
        self.ledger = SubscriberLedger()
        self.sub_closes: Counter[str] = Counter()
        self.sub_errors: list[Finding] = []
        self.seen: set[str] = set()
        self.crashes = 0
        self.total_events = 0

    # -- daemons -------------------------------------------------------------------------

    def _add_daemon(self, name: str, args: list[str], extra: Mapping[str, str] = {}) -> Daemon:
        health = self.gateway_port if name in ("gateway", "up") else free_port()
        env = self.env | self.replay_env | dict(extra)
        if name not in ("gateway", "up"):
            env["LEDGERFLUX_HEALTH_PORT"] = str(health)
        daemon = Daemon(
            name=name,
            child=Child(
                name=name,
                argv=[sys.executable, "-m", "ledgerflux", *args],
                env=env,
                log=self.work / "logs" / f"{name}.log",
            ),
            ready_url=f"http://127.0.0.1:{health}/readyz",
            products=tuple(p for p in self.products if name == f"normalize-{shard_of(p, SHARDS)}"),
        )
        self.daemons[name] = daemon
        return daemon

    async def start(self, name: str) -> float:
        """Start a daemon and wait for /readyz; seconds from spawn to ready."""
        daemon = self.daemons[name]
        t0 = trio.current_time()
        daemon.child.start()
        self.active.add(name)
        await _wait_ready(daemon)
        return trio.current_time() - t0

    async def stop(self, name: str, findings: list[Finding]) -> None:
        """SIGTERM and wait; an exit other than 0, or none within the bound, is a finding."""
        daemon = self.daemons[name]
        self.active.discard(name)
        if not daemon.child.running:
            return
        t0 = time.monotonic()
        code = await daemon.child.stop(timeout_s=STOP_BOUND_S)
        if code != 0:
            findings.append(
                Finding(
                    "crash",
                    f"stop:{name}:{daemon.child.starts}",
                    1,
                    f"{name} exited {code} {time.monotonic() - t0:.1f} s after SIGTERM: "
                    f"{_last_error(daemon.child.log)}",
                )
            )

    async def restart_crashed(self, findings: list[Finding]) -> None:
        """Every active daemon that exited on its own is a ``crash`` finding; start it."""
        for name in sorted(self.active):
            child = self.daemons[name].child
            if child.running:
                continue
            code = None if child.proc is None else child.proc.returncode
            self.crashes += 1
            findings.append(
                Finding(
                    "crash",
                    f"crash:{name}:{child.starts}",
                    1,
                    f"{name} exited by itself with {code}: {_last_error(child.log)}",
                )
            )
            _say(f"{name} exited by itself ({code}); restarting")
            try:
                await self.start(name)
            except ChaosError as exc:
                findings.append(Finding("crash", f"restart:{name}:{child.starts}", 1, str(exc)))

    # -- observers -----------------------------------------------------------------------

    def _record(self, stream_seq: int, data: bytes, arrival: float | None) -> None:
        if stream_seq <= self.md_checked or stream_seq in self.md:
            return
        parsed = parse_md(stream_seq, data)
        if isinstance(parsed, Finding):
            self.md_unreadable.append(parsed)
            return
        self.md[stream_seq] = parsed
        self.md_read = max(self.md_read, stream_seq)
        if arrival is not None and parsed.wire.get("type") == "book":
            self.books.append((arrival, parsed.product, bool(parsed.wire.get("snapshot"))))

    async def tail_md(self) -> None:
        """Follow LF_MD from its start (ordered consumer), noting each message's arrival
        time; re-opened from the last position after an error. Runs until cancelled."""
        while True:
            start = self.md_read + 1
            try:
                async with self.bus.ordered(MD_STREAM, "lf.md.>", start_seq=start) as batches:
                    async for batch in batches:
                        now = trio.current_time()
                        for msg in batch:
                            self._record(msg.stream_seq, msg.data, now)
            except BusError as exc:
                _say(f"LF_MD tail: {exc!r}; reopening")
            await trio.sleep(0.5)

    async def subscribe(self) -> None:
        """A gateway client that resumes with ``from_seq`` after every disconnect."""
        url = f"ws://127.0.0.1:{self.gateway_port}/ws"
        request_id = 0
        while True:
            try:
                async with open_websocket_url(url) as ws:
                    self.ledger.connection += 1
                    request_id += 1
                    request = self.ledger.resume_request(self.products, request_id)
                    await ws.send_message(orjson.dumps(request).decode())
                    while True:
                        frame = orjson.loads(await ws.get_message())
                        for msg in frame if isinstance(frame, list) else [frame]:
                            if msg.get("type") == "error":
                                self.sub_errors.append(
                                    Finding(
                                        "state",
                                        f"sub-error:{self.ledger.connection}:{msg.get('code')}",
                                        1,
                                        f"gateway error to the subscriber: {msg}",
                                    )
                                )
                            self.ledger.on_message(msg)
            except trio_websocket.ConnectionClosed as exc:
                code = exc.reason.code if exc.reason is not None else None
                self.sub_closes[str(code)] += 1
                if code == 4001:
                    # The documented slow-consumer policy (docs/protocol.md): reported, and
                    # the resume that follows is checked for holes like any other.
                    self.sub_errors.append(
                        Finding(
                            "explained",
                            f"sub-close:{self.ledger.connection}",
                            1,
                            f"gateway closed the subscriber as slow: {exc.reason}",
                        )
                    )
                elif code == 4029:
                    self.sub_errors.append(
                        Finding(
                            "state",
                            f"sub-close:{self.ledger.connection}",
                            1,
                            f"gateway closed the subscriber: {exc.reason}",
                        )
                    )
            except (trio_websocket.HandshakeError, OSError, trio.BrokenResourceError):
                pass
            await trio.sleep(0.2)

    # -- settle and check ----------------------------------------------------------------

    async def _bus_retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """The suite's own reads of the bus, retried through leader elections and node
        restarts (up to BUS_RETRY_S): the observer must not fail where the daemons may."""
        deadline = trio.current_time() + BUS_RETRY_S
        while True:
            try:
                return await fn()
            except BusError as exc:
                if trio.current_time() > deadline:
                    raise ChaosError(f"{what}: {exc}") from exc
                _say(f"{what}: {exc!r}; retrying")
                await trio.sleep(0.5)

    def _missing(self, last_seq: int) -> list[int]:
        return [s for s in range(self.md_checked + 1, last_seq + 1) if s not in self.md]

    async def _fill_md(self, last_seq: int) -> None:
        """Make sure every message up to ``last_seq`` was read: give the tail a moment,
        then direct-get what it has not delivered (yet)."""
        with trio.move_on_after(10):
            while True:
                if len(self._missing(last_seq)) <= FILL_BY_GET:
                    break
                await trio.sleep(0.1)
        missing = self._missing(last_seq)
        if len(missing) > FILL_BY_GET:
            _say(f"LF_MD tail is {len(missing)} messages behind; fetching them one by one")
        for seq in missing:
            msg = await self._bus_retry(
                f"get LF_MD #{seq}", partial(self.bus.get_msg, MD_STREAM, seq)
            )
            if msg is not None:
                self._record(seq, msg.data, None)

    async def _md_position(self) -> tuple[int, dict[str, int]]:
        """LF_MD's last stream seq and, per product, its last message at or below it."""
        state = await self._bus_retry(
            "LF_MD stream info", partial(self.bus.stream_state, MD_STREAM)
        )
        await self._fill_md(state.last_seq)
        targets = dict(self.md_last_by_product)
        for stream_seq, msg in self.md.items():
            if stream_seq <= state.last_seq:
                targets[msg.product] = max(targets.get(msg.product, 0), stream_seq)
        return state.last_seq, targets

    def _latest_positions(self) -> tuple[dict[str, int], int]:
        """md_latest's stream position per product, and the snapshotter's committed LF_MD
        position (0 where the store keeps none)."""
        with psycopg.connect(self.pg.url, connect_timeout=3) as conn:
            rows = conn.execute("SELECT product, stream_seq FROM md_latest").fetchall()
            position = _committed_position(conn)
        return {str(p): int(s) for p, s in rows}, position

    async def settle(self, findings: list[Finding]) -> float:
        """Wait until every active daemon is ready and md_latest has caught up with what
        LF_MD held when the wait began; seconds it took. Past the bound: a finding."""
        t0 = trio.current_time()
        # Set before the bound can pass: on a loaded machine it may pass while LF_MD's
        # position is still being read, and the finding must still be reported.
        targets: dict[str, int] | None = None
        latest: dict[str, int] = {}
        with trio.move_on_after(self.settings.settle_timeout_s) as scope:
            await self.restart_crashed(findings)
            for name in sorted(self.active):
                await _wait_ready(self.daemons[name], self.settings.settle_timeout_s)
            if "snapshot" not in self.active and "up" not in self.active:
                return trio.current_time() - t0
            last_seq, targets = await self._md_position()
            while True:
                try:
                    latest, position = await trio.to_thread.run_sync(self._latest_positions)
                except psycopg.Error:
                    latest, position = {}, 0
                if position >= last_seq or all(latest.get(p, 0) >= s for p, s in targets.items()):
                    break
                await self.restart_crashed(findings)
                await trio.sleep(0.2)
        if scope.cancelled_caught:
            behind: object = (
                "LF_MD's position was still being read"
                if targets is None
                else {p: (latest.get(p, 0), s) for p, s in targets.items()}
            )
            findings.append(
                Finding(
                    "state",
                    f"stall:{len(self.seen)}:{t0}",
                    1,
                    f"md_latest did not catch up with LF_MD within "
                    f"{self.settings.settle_timeout_s:g} s (product: (md_latest, LF_MD) "
                    f"stream positions) {behind}",
                )
            )
        return trio.current_time() - t0

    def _read_pg(self, from_stream_seq: int) -> tuple[list[LatestRecord], list[HistoryRecord], int]:
        with psycopg.connect(self.pg.url, connect_timeout=5) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                latest = [
                    LatestRecord(p, e, int(s), int(ss), orjson.loads(state))
                    for p, e, s, ss, state in conn.execute(
                        "SELECT product, epoch, seq, stream_seq, state::text FROM md_latest"
                    )
                ]
                history = [
                    HistoryRecord(p, e, int(s), int(ss), orjson.loads(payload))
                    for p, e, s, ss, payload in conn.execute(
                        "SELECT product, epoch, seq, stream_seq, payload::text FROM md_history"
                        " WHERE stream_seq >= %s",
                        (from_stream_seq,),
                    )
                ]
                position = _committed_position(conn)
        return latest, history, position

    async def check(self) -> list[Finding]:
        """Every invariant on everything seen so far; returns only findings not reported
        before (so each is charged to the round that revealed it)."""
        # PostgreSQL first: every row it holds then comes from LF_MD below last_seq. The
        # checkers are incremental: each message and each history row is looked at once
        # (plus a small window), so a check costs what arrived since the previous one.
        latest, history, position = await trio.to_thread.run_sync(
            self._read_pg, self.history_checker.fetch_from
        )
        last_seq, _ = await self._md_position()
        messages = [
            self.md.pop(s) for s in range(self.md_checked + 1, last_seq + 1) if s in self.md
        ]
        self.md_checked = max(self.md_checked, last_seq)
        for msg in messages:
            self.md_last_by_product[msg.product] = msg.stream_seq
        events, findings = self.md_checker.add(messages)
        self.total_events = self.md_checker.events
        findings += self.md_unreadable
        self.history_checker.add_events(events)
        # Committed: up to md_latest's position for the product, and up to the
        # snapshotter's committed stream position for every product.
        persisted = {p: position for p in self.products}
        for row in latest:
            persisted[row.product] = max(persisted.get(row.product, 0), row.stream_seq)
        findings += self.history_checker.check(history, persisted)
        findings += self.latest_checker.check(latest, history)
        findings += self.ledger.findings
        findings += self.sub_errors
        new = [f for f in findings if f.key not in self.seen]
        self.seen.update(f.key for f in new)
        return new

    # -- measurements --------------------------------------------------------------------

    async def book_live(
        self, products: Iterable[str], since: float, *, snapshot: bool = False
    ) -> float:
        """Seconds from ``since`` until every product in ``products`` has a book event on
        LF_MD that arrived after it; ``inf`` when there is none BOOK_LIVE_WAIT_S after
        ``since`` (the messages seen so far are looked at once even when that is past)."""
        wanted = set(products)
        if not wanted:
            return 0.0
        with trio.move_on_at(since + BOOK_LIVE_WAIT_S):
            while True:
                first: dict[str, float] = {}
                start = bisect.bisect_left(self.books, (since, "", False))
                for arrival, product, is_snapshot in self.books[start:]:
                    if product in wanted and product not in first and (is_snapshot or not snapshot):
                        first[product] = arrival
                if set(first) == wanted:
                    return max(first.values()) - since
                await trio.sleep(0.05)
        return math.inf


def _committed_position(conn: psycopg.Connection[Any]) -> int:
    """The snapshotter's committed LF_MD position (``consumer_positions``, when the
    store has that table): every message up to it has its rows committed."""
    found = conn.execute("SELECT to_regclass('consumer_positions') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return 0
    row = conn.execute(
        "SELECT max(stream_seq) FROM consumer_positions WHERE stream = %s", (MD_STREAM,)
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _last_error(log: Path) -> str:
    lines = [line for line in log_tail(log, 4000).splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "Error" in line:
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "(empty log)"


# --------------------------------------------------------------------------- faults


class Fault:
    """A fault: ``phase`` sets up what its rounds need; each round ``inject`` s, waits
    ``hold_s`` and ``heal`` s. Subclasses are small; the table is :data:`FAULT_TYPES`."""

    name: ClassVar[str]

    def hold_s(self, run: ChaosRun) -> float:
        return 0.0

    @asynccontextmanager
    async def phase(self, run: ChaosRun, findings: list[Finding]) -> AsyncIterator[None]:
        yield

    async def inject(self, run: ChaosRun, rng: random.Random, findings: list[Finding]) -> str:
        raise NotImplementedError

    async def heal(self, run: ChaosRun, findings: list[Finding]) -> RoundTimes:
        return RoundTimes()


class KillDaemon(Fault):
    """``kill -9`` of one daemon at a random moment, then its restart."""

    daemon: ClassVar[str]

    def __init__(self) -> None:
        self.victim = ""

    def choose(self, run: ChaosRun, rng: random.Random) -> str:
        return self.daemon

    async def inject(self, run: ChaosRun, rng: random.Random, findings: list[Finding]) -> str:
        self.victim = self.choose(run, rng)
        child = run.daemons[self.victim].child
        pid = child.pid
        await child.kill()
        return f"kill -9 {self.victim} (pid {pid})"

    async def heal(self, run: ChaosRun, findings: list[Finding]) -> RoundTimes:
        ready = await run.start(self.victim)
        products = run.daemons[self.victim].products
        return RoundTimes(ready_s=ready, live_products=products, live_since=trio.current_time())


class KillIngest(KillDaemon):
    name = "kill-ingest"
    daemon = "ingest"


class KillNormalize(KillDaemon):
    name = "kill-normalize"

    def choose(self, run: ChaosRun, rng: random.Random) -> str:
        return f"normalize-{rng.randrange(SHARDS)}"


class KillSnapshot(KillDaemon):
    name = "kill-snapshot"
    daemon = "snapshot"


class KillGateway(KillDaemon):
    name = "kill-gateway"
    daemon = "gateway"


class NatsNodeDown(Fault):
    """``kill -9`` of one NATS node; it comes back on its ports and store."""

    name = "nats-node"

    def __init__(self) -> None:
        self.node = 0

    def hold_s(self, run: ChaosRun) -> float:
        return run.settings.nats_down_s

    async def inject(self, run: ChaosRun, rng: random.Random, findings: list[Finding]) -> str:
        self.node = rng.randrange(len(run.cluster.nodes))
        await run.cluster.kill(self.node)
        return f"kill -9 nats {run.cluster.nodes[self.node].name}"

    async def heal(self, run: ChaosRun, findings: list[Finding]) -> RoundTimes:
        t0 = trio.current_time()
        await run.cluster.restart(self.node)
        return RoundTimes(ready_s=trio.current_time() - t0)


class PostgresDown(Fault):
    """PostgreSQL stopped (``pg_ctl stop -m fast``) for ``pg_down_s``, then started."""

    name = "pg-stop"

    def hold_s(self, run: ChaosRun) -> float:
        return run.settings.pg_down_s

    async def inject(self, run: ChaosRun, rng: random.Random, findings: list[Finding]) -> str:
        await run.pg.stop()
        return f"PostgreSQL stopped for {run.settings.pg_down_s:g} s"

    async def heal(self, run: ChaosRun, findings: list[Finding]) -> RoundTimes:
        await run.pg.start()
        return RoundTimes()


class S3Down(Fault):
    """The S3 server killed for ``s3_down_s`` (connections refused), then back."""

    name = "s3-down"

    def hold_s(self, run: ChaosRun) -> float:
        return run.settings.s3_down_s

    async def inject(self, run: ChaosRun, rng: random.Random, findings: list[Finding]) -> str:
        await run.s3.child.kill()
        return f"S3 down for {run.settings.s3_down_s:g} s"

    async def heal(self, run: ChaosRun, findings: list[Finding]) -> RoundTimes:
        await run.s3.start()
        return RoundTimes()


class ExchangeCut(Fault):
    """The ingestor runs the Coinbase plugin against the fake exchange, which closes the
    connection abruptly (no close frame) after a random number of frames; the ingestor
    reconnects and resynchronises from the exchange's fresh snapshot."""

    name = "exchange-cut"

    def __init__(self) -> None:
        self.fake: FakeExchange | None = None
        self.connections = 0
        self.cut_at = 0.0

    def recording(self, run: ChaosRun) -> Path:
        return DEMO

    @asynccontextmanager
    async def phase(self, run: ChaosRun, findings: list[Finding]) -> AsyncIterator[None]:
        path = self.recording(run)
        header = read_header(path)
        await run.stop("ingest", findings)
        async with open_fake_exchange(path, speed=run.settings.speed) as fake:
            self.fake = fake
            feed = run._add_daemon(
                "ingest",
                ["ingest"],
                {
                    "LEDGERFLUX_INGEST__FEED": header.plugin,
                    "LEDGERFLUX_INGEST__ENDPOINT": fake.ws_url,
                    "LEDGERFLUX_INGEST__REST_ENDPOINT": fake.rest_url,
                    "LEDGERFLUX_INGEST__SYMBOLS": ",".join(header.symbols),
                    "LEDGERFLUX_INGEST__CHANNELS": ",".join(header.channels),
                    "LEDGERFLUX_INGEST__BACKOFF_INITIAL_S": "0.1",
                    "LEDGERFLUX_INGEST__BACKOFF_MAX_S": "1",
                },
            )
            feed.child.log = run.work / "logs" / f"ingest-{self.name}.log"
            try:
                # From the spawn: the first snapshot may come before /readyz turns 200.
                since = trio.current_time()
                await run.start("ingest")
                live = await run.book_live(run.products, since, snapshot=True)
                _say(f"{self.name}: first connection, books live after {_fmt(live)} s")
                yield
            finally:
                with trio.CancelScope(shield=True):
                    await run.stop("ingest", findings)
                    self.fake = None
        run._add_daemon("ingest", ["ingest"])
        await run.start("ingest")

    async def inject(self, run: ChaosRun, rng: random.Random, findings: list[Finding]) -> str:
        assert self.fake is not None
        self.connections = self.fake.connections
        frames = rng.randint(5, 200)
        self.fake.inject(close_after=frames)
        return f"exchange connection cut after {frames} more frames"

    async def heal(self, run: ChaosRun, findings: list[Finding]) -> RoundTimes:
        assert self.fake is not None
        with trio.move_on_after(RECONNECT_WAIT_S):
            while True:
                if self.fake.connections > self.connections:
                    break
                await trio.sleep(0.02)
            return RoundTimes(
                live_products=run.products, live_since=trio.current_time(), live_snapshot=True
            )
        findings.append(
            Finding(
                "state",
                f"no-reconnect:{self.name}:{self.connections}",
                1,
                f"the ingestor did not reconnect within {RECONNECT_WAIT_S:g} s of the cut",
            )
        )
        return RoundTimes(book_live_s=math.inf)


class BigSnapshot(ExchangeCut):
    """As ``exchange-cut``, on a market whose books hold ``big_levels`` levels each (half
    per side): each (re)connection starts with snapshots above one bus message (1 MiB)."""

    name = "big-snapshot"

    def recording(self, run: ChaosRun) -> Path:
        path = run.work / f"big-{run.settings.big_levels}.jsonl.gz"
        if not path.exists():
            # write_demo's ``levels`` are per side: each product's snapshot holds big_levels.
            write_demo(path, seconds=120, rate_per_s=20, levels=run.settings.big_levels // 2)
        return path


class SigintUp(Fault):
    """The split daemons stop (SIGTERM, producers first); ``ledgerflux up`` runs on the
    same servers; a SIGINT to its process group (a terminal's Ctrl-C) must drain it and
    exit 0; then the split daemons start again."""

    name = "sigint-up"
    ORDER: ClassVar[tuple[str, ...]] = (
        "ingest",
        "normalize-0",
        "normalize-1",
        "snapshot",
        "gateway",
    )

    async def inject(self, run: ChaosRun, rng: random.Random, findings: list[Finding]) -> str:
        for name in self.ORDER:
            await run.stop(name, findings)
        up = run._add_daemon(
            "up", ["up", "--replay", str(DEMO), "--speed", str(run.settings.speed)]
        )
        await run.start("up")
        await trio.sleep(rng.uniform(*run.settings.moment_s))
        t0 = time.monotonic()
        up.child.signal_group(signal.SIGINT)
        run.active.discard("up")
        code: int | None = None
        with trio.move_on_after(STOP_BOUND_S):
            code = await up.child.wait()
        took = time.monotonic() - t0
        tail = log_tail(up.child.log, 6000)
        if code != 0 or "Traceback" in tail.split("===== start")[-1]:
            findings.append(
                Finding(
                    "crash",
                    f"sigint-up:{up.child.starts}:{len(run.seen)}",
                    1,
                    f"ledgerflux up after Ctrl-C: exit {code} after {took:.1f} s: "
                    f"{_last_error(up.child.log)}",
                )
            )
        if code is None:
            await up.child.kill()
        return f"SIGINT to the process group of up (exit {code} after {took:.1f} s)"

    async def heal(self, run: ChaosRun, findings: list[Finding]) -> RoundTimes:
        ready = 0.0
        for name in reversed(self.ORDER):
            ready = max(ready, await run.start(name))
        return RoundTimes(ready_s=ready)


FAULT_TYPES: dict[str, type[Fault]] = {
    cls.name: cls
    for cls in (
        KillIngest,
        KillNormalize,
        KillSnapshot,
        KillGateway,
        NatsNodeDown,
        PostgresDown,
        S3Down,
        ExchangeCut,
        BigSnapshot,
        SigintUp,
    )
}


# --------------------------------------------------------------------------- driver


async def _run_fault(run: ChaosRun, fault: Fault, row: FaultRow) -> None:
    settings = run.settings
    rng = random.Random(f"{settings.seed}:{fault.name}")
    findings: list[Finding] = []
    async with fault.phase(run, findings):
        for number in range(1, settings.rounds + 1):
            await trio.sleep(rng.uniform(*settings.moment_s))
            what = await fault.inject(run, rng, findings)
            await trio.sleep(fault.hold_s(run))
            t_heal = trio.current_time()
            times = await fault.heal(run, findings)
            await run.settle(findings)
            recovery = trio.current_time() - t_heal
            if times.live_products:
                # From the tail's arrival times: waits only while a book is not live yet.
                times.book_live_s = await run.book_live(
                    times.live_products, times.live_since, snapshot=times.live_snapshot
                )
            before = run.total_events
            findings += await run.check()
            row.rounds += 1
            row.events += run.total_events - before
            row.recovery_s.append(recovery)
            if times.ready_s is not None:
                row.ready_s.append(times.ready_s)
            if times.book_live_s is not None:
                row.book_live_s.append(times.book_live_s)
            bad = [f for f in findings if f.kind != "explained"]
            _say(
                f"{fault.name} round {number}/{settings.rounds}: {what}; "
                f"ready {_fmt(times.ready_s)} s, book live {_fmt(times.book_live_s)} s, "
                f"recovered {recovery:.2f} s; {len(bad)} finding(s)"
            )
            for f in bad[:5]:
                _say(f"    [{f.kind}] {f.detail}")
            row.findings += findings
            findings = []
    row.findings += findings


async def run_chaos(settings: ChaosSettings) -> ChaosReport:
    """Run every fault of ``settings`` and return the report (also written as JSON to
    ``<work_dir>/chaos-report.json``). Servers and daemons are stopped on return and on
    cancellation; the work dir (logs, stores) is kept."""
    work = settings.work_dir or Path(tempfile.mkdtemp(prefix="ledgerflux-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    report = ChaosReport(settings=settings, work_dir=work)
    _say(f"seed {settings.seed}; work dir {work}; faults {','.join(settings.faults)}")
    s3 = S3Server(work)
    async with (
        open_nats_cluster(work / "nats") as cluster,
        open_chaos_postgres() as pg,
    ):
        await s3.start()
        try:
            async with open_bus(NatsConfig(replicas=3), url=cluster.url, name="chaos") as bus:
                run = ChaosRun(settings, work, cluster, pg, s3, bus)
                report.ports = {
                    "nats": cluster.url,
                    "nats_nodes": cluster.describe().splitlines(),
                    "postgres": pg.url,
                    "s3": s3.endpoint,
                    "gateway": run.gateway_port,
                    "health": {n: d.ready_url for n, d in run.daemons.items()},
                }
                _say(f"nats cluster:\n{cluster.describe()}")
                _say(f"postgres {pg.url}; s3 {s3.endpoint}; gateway {run.gateway_port}")
                await _drive(run, report)
        finally:
            with trio.CancelScope(shield=True):
                await s3.child.stop()
    path = work / "chaos-report.json"
    path.write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2))
    _say(f"report: {path}")
    return report


async def _heal_everything(run: ChaosRun, findings: list[Finding]) -> None:
    """After a failed round: every server and every split daemon running again."""
    for index, node in enumerate(run.cluster.nodes):
        if not node.child.running:
            await run.cluster.restart(index)
    if run.pg.down:
        await run.pg.start()
    if not run.s3.child.running:
        await run.s3.start()
    run.active.discard("up")
    for name in ("gateway", "snapshot", *(f"normalize-{i}" for i in range(SHARDS)), "ingest"):
        if not run.daemons[name].child.running:
            try:
                await run.start(name)
            except ChaosError as exc:
                findings.append(Finding("crash", f"heal:{name}:{len(run.seen)}", 1, str(exc)))


async def _drive(run: ChaosRun, report: ChaosReport) -> None:
    try:
        for name in ("gateway", "snapshot", *(f"normalize-{i}" for i in range(SHARDS)), "ingest"):
            ready = await run.start(name)
            _say(f"{name} ready in {ready:.2f} s")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.tail_md)
            nursery.start_soon(run.subscribe)
            warmup: list[Finding] = []
            await trio.sleep(2.0)
            await run.settle(warmup)
            warmup += await run.check()
            if warmup:
                report.rows.append(FaultRow("(start)", findings=warmup))
            for name in run.settings.faults:
                row = FaultRow(name)
                report.rows.append(row)
                try:
                    await _run_fault(run, FAULT_TYPES[name](), row)
                except ChaosError as exc:
                    # A bound passed (a daemon never ready, a server that did not come
                    # back): the row says so and the next fault starts from a healed run.
                    _say(f"{name}: round failed: {exc}")
                    row.findings.append(Finding("state", f"harness:{name}", 1, str(exc)))
                    await _heal_everything(run, row.findings)
            nursery.cancel_scope.cancel()
    finally:
        report.subscriber = {
            "connections": run.ledger.connection,
            "events": run.ledger.events,
            "closes": dict(run.sub_closes),
        }
        with trio.CancelScope(shield=True):
            for daemon in run.daemons.values():
                await daemon.child.stop(timeout_s=15)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledgerflux.testing.chaos",
        description="Run the chaos suite and print its table (exit 1 if a promise broke).",
    )
    parser.add_argument("--short", action="store_true", help="CI's short form (3 rounds)")
    parser.add_argument("--seed", type=int, help="replay a run: the seed it printed")
    parser.add_argument("--rounds", type=int, help="rounds per fault (full: 10, short: 3)")
    parser.add_argument("--faults", help=f"comma-separated subset of: {','.join(FAULTS)}")
    parser.add_argument("--pg-down-s", type=float, help="PostgreSQL stop duration")
    parser.add_argument("--speed", type=float, help="replay speed of the recording")
    parser.add_argument("--work-dir", type=Path, help="data and logs (default: a new temp dir)")
    args = parser.parse_args(argv)
    settings = (ChaosSettings.short() if args.short else ChaosSettings.full()).with_env(os.environ)
    changes: dict[str, Any] = {}
    for key in ("seed", "rounds", "pg_down_s", "speed", "work_dir"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.faults:
        changes["faults"] = _fault_names(args.faults)
    settings = attrs.evolve(settings, **changes)
    report = trio.run(run_chaos, settings)
    print(report.table())
    text = report.findings_text()
    if text:
        print("findings:")
        print(text)
    print(f"seed {settings.seed}; report {report.work_dir / 'chaos-report.json'}")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
