"""Composition: the daemons hosted in nurseries, together (`ledgerflux up`) or one per process.

Nursery nesting mirrors the data (STYLE 6): servers outermost, then the sinks (gateway,
snapshotter), then the normalizers, then the ingestor innermost. A drain walks the same
order from the inside out, each stage under one overall deadline:

1. stop the input: ``/readyz`` turns 503, the ingestor is cancelled (it publishes what it
   had already decoded, shielded and bounded, then closes the exchange connection);
2. each consumer stage waits until its committed position reaches the last message of its
   input (which no longer grows: the stage before it has stopped), then is cancelled (its
   own shielded final flush: publish/commit, checkpoint);
3. the gateway tells every client ``drain`` and closes them with 1001;
4. the bus, the store and the embedded servers close as their ``async with`` blocks exit.

When the deadline passes first, whatever still runs is cancelled: nothing is lost, because
every stage resumes from a position committed together with its output, and reads the
rest again on the next start. A second SIGTERM/SIGINT cancels everything at once.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from ledgerflux.bus import Bus, open_bus
from ledgerflux.config import Config, NatsConfig
from ledgerflux.control import ControlContext, control_path, serve_control
from ledgerflux.errors import DrainIncomplete, LedgerfluxError
from ledgerflux.health import Readiness, serve_health
from ledgerflux.logging import bind_daemon, bind_process
from ledgerflux.preflight import check_urls, preflight
from ledgerflux.progress import Progress
from ledgerflux.sdnotify import Notifier, serve_watchdog
from ledgerflux.signals import serve_drain_signals

__all__ = [
    "DAEMONS",
    "EMBEDDED_DLQ_MAX_BYTES",
    "EMBEDDED_MD_MAX_BYTES",
    "EMBEDDED_TICKS_MAX_BYTES",
    "UpInfo",
    "check_daemon",
    "check_up",
    "cli_invocation",
    "embedded_nats_config",
    "run_daemon",
    "run_up",
    "serve_daemon",
    "serve_up",
    "up_config",
    "worst_case_stop_s",
]

log = structlog.get_logger(__name__)

DAEMONS = ("ingest", "normalize", "snapshot", "gateway")

EMBEDDED_TICKS_MAX_BYTES = 256 << 20
EMBEDDED_MD_MAX_BYTES = 1 << 30
EMBEDDED_DLQ_MAX_BYTES = 64 << 20
"""Size caps of the streams on an embedded nats-server (the demo runs for days on a laptop):
each stream's ``nats.*_max_bytes`` is lowered to these when nats is embedded, never raised."""


class UnknownDaemon(LedgerfluxError):
    pass


def _exec_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``), None where unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return uptime_s - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@attrs.define
class StartupTimeline:
    """Where a daemon's start goes: seconds since the process started at each step
    (imports, NATS connect, streams, PostgreSQL, the daemon's own start), logged with the
    ``ready`` line as ``startup_s`` and read by ``ledgerflux bench startup``."""

    marks: dict[str, float] = attrs.field(factory=dict)

    def mark(self, step: str) -> None:
        age = _exec_age_s()
        if age is not None:
            self.marks[step] = round(age, 3)


def worst_case_stop_s(config: Config) -> float:
    """The longest a daemon (or ``ledgerflux up``) with *config* takes from SIGTERM to exit.

    * the drain deadline, ``drain_timeout_s``, during which the stages finish in data order;
    * then the longest shielded final flush a stage may still be in, which the deadline
      cannot cut short: a normalizer batch (``max(drain_timeout_s, BATCH_DEADLINE_S)``,
      30 s by default), or the snapshotter's last commit and then its archive write
      (``drain_timeout_s`` each);
    * then closing the durable consumers and the NATS connection (``CLOSE_TIMEOUT_S`` each).

    With the defaults: 10 + 30 + 2 x 5 = 50 s. systemd's ``TimeoutStopSec`` and Kubernetes'
    ``terminationGracePeriodSeconds`` must exceed it, or the final flush is SIGKILLed.
    """
    from ledgerflux.bus import CLOSE_TIMEOUT_S
    from ledgerflux.normalizer import BATCH_DEADLINE_S

    drain = config.drain_timeout_s
    final_flush = max(drain, BATCH_DEADLINE_S, 2 * drain)
    return drain + final_flush + 2 * CLOSE_TIMEOUT_S


@attrs.frozen
class Servers:
    nats_url: str
    database_url: str
    embedded: tuple[str, ...]
    """Which of ``nats``/``postgres`` this process started itself."""
    nats: NatsConfig
    """The bus settings to use: the configured ones, with the embedded size caps applied
    when this process runs the nats-server."""


def embedded_nats_config(nats: NatsConfig) -> NatsConfig:
    """*nats* with each stream's size capped for an embedded server (EMBEDDED_*_MAX_BYTES)."""
    return attrs.evolve(
        nats,
        ticks_max_bytes=min(nats.ticks_max_bytes, EMBEDDED_TICKS_MAX_BYTES),
        md_max_bytes=min(nats.md_max_bytes, EMBEDDED_MD_MAX_BYTES),
        dlq_max_bytes=min(nats.dlq_max_bytes, EMBEDDED_DLQ_MAX_BYTES),
    )


@attrs.frozen
class UpInfo:
    """What ``serve_up`` reports once everything is ready."""

    gateway_url: str
    """``http://host:port`` of the gateway (page at ``/``, WebSocket at ``/ws``)."""
    nats_url: str
    database_url: str = attrs.field(repr=False)
    embedded: tuple[str, ...]
    ready_s: float
    """Seconds from the start of ``serve_up`` until every daemon reported ready."""


@contextlib.asynccontextmanager
async def open_servers(config: Config, *, need_database: bool = True) -> AsyncIterator[Servers]:
    """The NATS and PostgreSQL servers the configuration points at, starting embedded ones for
    whatever has no URL. Only ``ledgerflux up`` and daemons started with ``--embedded`` come
    here without URLs; a plain split-mode daemon is stopped before by :func:`check_urls`.
    Embedded servers are owned by this context: they stop when it exits, whether normally,
    on Ctrl-C or on a crash, and die with this process if it is killed."""
    data_dir = trio.Path(config.data_dir)
    await data_dir.mkdir(parents=True, exist_ok=True)
    embedded: list[str] = []
    nats_config = config.nats
    async with contextlib.AsyncExitStack() as stack:
        nats_url = config.nats.url
        if nats_url is None:
            from ledgerflux.embedded.nats import open_nats_server

            nats = await stack.enter_async_context(open_nats_server(Path(data_dir)))
            nats_url = nats.url
            nats_config = embedded_nats_config(nats_config)
            embedded.append("nats")
        database_url = config.database.url
        if database_url is None and need_database:
            from ledgerflux.embedded.postgres import open_postgres

            pg = await stack.enter_async_context(open_postgres(Path(data_dir)))
            database_url = pg.url
            embedded.append("postgres")
        yield Servers(nats_url, database_url or "", tuple(embedded), nats_config)


class EmbeddedStreamsOutdated(LedgerfluxError):
    """The embedded nats-server's streams were made with other limits (an older version)."""


async def _ensure_streams(bus: Bus, servers: Servers, config: Config) -> None:
    from ledgerflux.bus import StreamConfigMismatch

    try:
        await bus.ensure_streams()
    except StreamConfigMismatch as exc:
        if "nats" not in servers.embedded:
            raise
        store = Path(config.data_dir) / "nats"
        raise EmbeddedStreamsOutdated(
            f"{exc}. This data dir's embedded streams were created with other limits (an "
            f"older LedgerFlux): remove {store} to recreate them"
        ) from exc


@attrs.define
class _Stage:
    """One daemon (or group of them) with its own cancel scope, so a drain can stop the
    stages one by one in data order."""

    name: str
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)


async def _start_stage(
    nursery: trio.Nursery, name: str, fn: Callable[..., Awaitable[Any]]
) -> tuple[_Stage, Any]:
    stage = _Stage(name)

    kind, _, shard = name.partition("-")

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        # Every line this stage (and every task it starts) logs names it.
        try:
            with stage.scope, bind_daemon(kind, int(shard) if shard.isdigit() else None):
                await fn(task_status=task_status)
        finally:
            stage.done.set()

    value = await nursery.start(run)
    return stage, value


async def _wait_caught_up(bus: Bus, progress: Progress) -> None:
    """Until ``progress`` reaches the last message of its input that exists now."""
    target = await bus.last_seq_matching(progress.stream, progress.filter_subject)
    await progress.wait_for(target)


async def _stop(stage: _Stage) -> None:
    stage.scope.cancel()
    await stage.done.wait()


async def serve_up(
    config: Config,
    *,
    readiness: Readiness | None = None,
    drain: trio.Event | None = None,
    control: ControlContext | None = None,
    task_status: trio.TaskStatus[UpInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The whole pipeline in this process: ingestor -> normalizer shards -> snapshotter ->
    gateway, on the servers the config names (embedded where it names none).

    Reports :class:`UpInfo` once every daemon is ready. Returns after ``drain`` is set and the
    ordered drain finished (or its deadline passed), or when the replay ends and everything
    it produced is persisted (``ingest.replay_loop`` false). Cancellation stops at once.
    *control* receives the bus (``ctl ... resync``) and the gateway's live limits.
    """
    from ledgerflux.archive import open_archive
    from ledgerflux.feeds.ingest import serve_ingest
    from ledgerflux.gateway import serve_gateway
    from ledgerflux.normalizer import serve_normalize
    from ledgerflux.retention import serve_retention
    from ledgerflux.snapshotter import serve_snapshot
    from ledgerflux.store import open_store

    t0 = time.monotonic()
    readiness = Readiness() if readiness is None else readiness
    drain = trio.Event() if drain is None else drain
    shards = range(config.normalize.shards)
    # Before any server starts: a typo must not cost an embedded nats-server and PostgreSQL.
    preflight(config, feed=True, gateway=True)
    drained = True
    async with (
        open_servers(config) as servers,
        open_bus(servers.nats, url=servers.nats_url, name="ledgerflux-up") as bus,
        open_store(config.database, url=servers.database_url) as store,
    ):
        await _ensure_streams(bus, servers, config)
        if control is not None:
            control.bus = bus
        archive = open_archive(config.archive, Path(config.data_dir))
        # The gateway drains last, on its own event: a drain request must not close the
        # subscribers while the pipeline behind them is still flushing.
        gateway_drain = trio.Event()
        async with trio.open_nursery() as nursery:
            gateway, gw_info = await _start_stage(
                nursery,
                "gateway",
                partial(
                    serve_gateway,
                    config,
                    bus=bus,
                    store=store,
                    readiness=readiness,
                    drain=gateway_drain,
                    control=control,
                ),
            )
            snapshot, snapshot_progress = await _start_stage(
                nursery,
                "snapshot",
                partial(
                    serve_snapshot, config, bus=bus, store=store, archive=archive, control=control
                ),
            )
            await nursery.start(partial(serve_retention, config, store=store))
            normalizers = [
                await _start_stage(
                    nursery,
                    f"normalize-{i}",
                    partial(serve_normalize, config, bus=bus, shard=i, control=control),
                )
                for i in shards
            ]
            ingest, _ = await _start_stage(
                nursery, "ingest", partial(serve_ingest, config, bus=bus)
            )
            readiness.set_ready()
            info = UpInfo(
                gateway_url=gw_info.url,
                nats_url=servers.nats_url,
                database_url=servers.database_url,
                embedded=servers.embedded,
                ready_s=time.monotonic() - t0,
            )
            task_status.started(info)
            log.info("ready", gateway=info.gateway_url, ready_s=round(info.ready_s, 3))

            # Wait for a drain request, or for a finite replay to end.
            async with trio.open_nursery() as waiter:

                async def until(event_wait: Callable[[], Awaitable[object]]) -> None:
                    await event_wait()
                    waiter.cancel_scope.cancel()

                waiter.start_soon(until, drain.wait)
                waiter.start_soon(until, ingest.done.wait)

            readiness.set_draining()
            with trio.move_on_after(config.drain_timeout_s) as deadline:
                await _stop(ingest)
                for _, progress in normalizers:
                    await _wait_caught_up(bus, progress)
                for stage, _ in normalizers:
                    await _stop(stage)
                await _wait_caught_up(bus, snapshot_progress)
                await _stop(snapshot)
                gateway_drain.set()
                await gateway.done.wait()
            if deadline.cancelled_caught:
                drained = False
                log.warning(
                    "drain deadline passed; cancelling the rest", deadline_s=config.drain_timeout_s
                )
            nursery.cancel_scope.cancel()
    if not drained:
        raise _drain_incomplete(config)


def _drain_incomplete(config: Config) -> DrainIncomplete:
    return DrainIncomplete(
        f"drain deadline passed ({config.drain_timeout_s:g} s, drain_timeout_s) with work not "
        "flushed or acked; nothing acked is lost and the rest is redelivered on the next start"
    )


def check_daemon(name: str, config: Config, *, embedded: bool = False, ports: bool = True) -> None:
    """The checks a daemon runs before it starts anything: a known daemon, the server URLs it
    needs (unless *embedded*), its feed plugin, and (with *ports*) that the gateway can bind
    its port. ``ledgerflux DAEMON --check`` runs them with ``ports=False`` (the address is the
    host's to give, not the configuration's) and also imports the feed plugin and finds the
    recording of the replay feed. Raises a named :class:`~ledgerflux.errors.LedgerfluxError`."""
    if name not in DAEMONS:
        raise UnknownDaemon(f"unknown daemon {name!r}; expected one of {', '.join(DAEMONS)}")
    need_database = name in ("snapshot", "gateway")
    if not embedded:
        check_urls(config, name, need=["nats", "database"] if need_database else ["nats"])
    preflight(config, feed=name == "ingest", gateway=name == "gateway" and ports)
    if name == "ingest" and not ports:
        _check_feed_loads(config)


def _check_feed_loads(config: Config) -> None:
    from ledgerflux.feeds.registry import load_feed

    load_feed(config.ingest.feed)
    if config.ingest.feed == "replay":
        from ledgerflux.feeds.replay import resolve_replay_path

        resolve_replay_path(config.ingest.replay_path)


def check_up(config: Config) -> None:
    """``ledgerflux up --check``: the feed of the effective configuration (see
    :func:`up_config`) loads, and the replay feed's recording exists. Servers without a URL
    are embedded, so none is required; ports are not bound."""
    preflight(config, feed=True, gateway=False)
    _check_feed_loads(config)


async def serve_daemon(
    name: str,
    config: Config,
    *,
    readiness: Readiness,
    drain: trio.Event,
    embedded: bool = False,
    startup: StartupTimeline | None = None,
    control: ControlContext | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One daemon (``ingest``, ``normalize``, ``snapshot`` or ``gateway``) against the
    servers the config names. Reports the daemon's own start value once it is ready; returns
    when ``drain`` is set and the daemon finished its in-flight work, or when it ends.

    A server without a configured URL is :class:`~ledgerflux.preflight.MissingServerUrl`,
    unless *embedded* asks for private embedded servers in the data dir. Raises
    :class:`~ledgerflux.errors.DrainIncomplete` when the drain deadline passed first.
    *startup*, when given, is marked at each step of the start."""
    check_daemon(name, config, embedded=embedded)
    startup = StartupTimeline() if startup is None else startup
    need_database = name in ("snapshot", "gateway")
    # Each daemon imports only its own modules (the gateway's web stack, the snapshotter's
    # archive client, ...), before any connection, so the timeline tells imports apart.
    if name == "ingest":
        from ledgerflux.feeds.ingest import serve_ingest
    elif name == "normalize":
        from ledgerflux.normalizer import serve_normalize
    else:
        from ledgerflux.store import open_store

        if name == "snapshot":
            from ledgerflux.archive import open_archive
            from ledgerflux.retention import serve_retention
            from ledgerflux.snapshotter import serve_snapshot
        else:
            from ledgerflux.gateway import serve_gateway
    startup.mark("imports")
    drained = True
    async with (
        open_servers(config, need_database=need_database) as servers,
        open_bus(servers.nats, url=servers.nats_url, name=f"ledgerflux-{name}") as bus,
        contextlib.AsyncExitStack() as stack,
    ):
        startup.mark("nats")
        await _ensure_streams(bus, servers, config)
        startup.mark("streams")
        if control is not None:
            control.bus = bus
        fn: Callable[..., Awaitable[Any]]
        if name == "ingest":
            fn = partial(serve_ingest, config, bus=bus)
        elif name == "normalize":
            shards = (
                [config.normalize.shard]
                if config.normalize.shard is not None
                else list(range(config.normalize.shards))
            )

            async def serve_shards(task_status: trio.TaskStatus[None]) -> None:
                async with trio.open_nursery() as nursery:
                    for shard in shards:
                        await nursery.start(
                            partial(serve_normalize, config, bus=bus, shard=shard, control=control)
                        )
                    task_status.started()

            fn = serve_shards
        else:
            store = await stack.enter_async_context(
                open_store(config.database, url=servers.database_url)
            )
            startup.mark("postgres")
            if name == "snapshot":
                archive = open_archive(config.archive, Path(config.data_dir))
                fn = partial(
                    _with_retention,
                    partial(
                        serve_snapshot,
                        config,
                        bus=bus,
                        store=store,
                        archive=archive,
                        control=control,
                    ),
                    partial(serve_retention, config, store=store),
                )
            else:
                fn = partial(
                    serve_gateway,
                    config,
                    bus=bus,
                    store=store,
                    readiness=readiness,
                    drain=drain,
                    control=control,
                )
        async with trio.open_nursery() as nursery:
            shard = config.normalize.shard if name == "normalize" else None
            stage, value = await _start_stage(
                nursery, name if shard is None else f"{name}-{shard}", fn
            )
            startup.mark(name)
            readiness.set_ready()
            task_status.started(value)
            async with trio.open_nursery() as waiter:

                async def until(event_wait: Callable[[], Awaitable[object]]) -> None:
                    await event_wait()
                    waiter.cancel_scope.cancel()

                waiter.start_soon(until, drain.wait)
                waiter.start_soon(until, stage.done.wait)
            readiness.set_draining()
            with trio.move_on_after(config.drain_timeout_s) as deadline:
                if name == "gateway":
                    await stage.done.wait()
                else:
                    await _stop(stage)
            if deadline.cancelled_caught:
                drained = False
                log.warning(
                    "drain deadline passed; cancelling the rest", deadline_s=config.drain_timeout_s
                )
            nursery.cancel_scope.cancel()
    if not drained:
        raise _drain_incomplete(config)


async def _with_retention(
    serve: Callable[..., Awaitable[Any]],
    retention: Callable[..., Awaitable[Any]],
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """*serve* with the retention schedule beside it; ends (cancelling retention) when
    *serve* ends. Retention starts once *serve* is ready: its first round (a scan of the
    default partition, under the store's one connection) must not delay the start."""
    async with trio.open_nursery() as nursery:

        async def main(task_status: trio.TaskStatus[Any]) -> None:
            await serve(task_status=task_status)
            nursery.cancel_scope.cancel()

        value = await nursery.start(main)
        await nursery.start(retention)
        task_status.started(value)


LIVE_KEYS = frozenset(
    {
        "log_level",
        "log_format",
        "gateway.max_clients",
        "gateway.max_subscriptions",
        "gateway.requests_per_s",
        "gateway.requests_burst",
        "gateway.max_clients_per_ip",
        "gateway.anonymous",
        "gateway.api_keys",
        "gateway.token_max_skew_s",
        "gateway.token_max_ttl_s",
        "gateway.allowed_origins",
    }
)
"""Configuration keys ``ctl DAEMON reload`` applies to a running process; a change to any
other key is reported as ``needs_restart``."""


def _flat(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}{key}.", inner)
        else:
            out[prefix[:-1]] = value

    walk("", attrs.asdict(config))
    return out


def control_roles(name: str, config: Config) -> list[str]:
    """The control sockets a process opens: one per daemon role it runs, so
    ``ledgerflux ctl ROLE ...`` reaches a role the same way under ``up`` as in split mode
    (``up`` itself answers for the whole process too)."""
    if name == "up":
        shards = [f"normalize-{i}" for i in range(config.normalize.shards)]
        return ["up", f"ingest-{config.ingest.feed}", *shards, "snapshot", "gateway"]
    if name == "ingest":
        return [f"ingest-{config.ingest.feed}"]
    if name == "normalize" and config.normalize.shard is not None:
        return [f"normalize-{config.normalize.shard}"]
    return [name]


async def _host(
    serve: Callable[..., Awaitable[None]],
    config: Config,
    *,
    roles: list[str],
    announce: Callable[[Any], None],
    health: bool,
    status_of: Callable[[Any], Mapping[str, Any]] | None = None,
    reload_config: Callable[[], Config] | None = None,
) -> None:
    """Process plumbing shared by every entry point: signals (first drains, second stops),
    sd_notify READY/STOPPING/WATCHDOG, a control socket per role (``ledgerflux ctl``), and
    for daemons other than the gateway a small /healthz /readyz /metrics server.
    *status_of* turns the start value into fields of the first role's ``status`` reply
    (``up`` reports its NATS URL there, so ``ctl resync`` finds an embedded nats-server)."""
    from ledgerflux.control import ControlContext, role_handlers
    from ledgerflux.logging import configure_logging
    from ledgerflux.metrics import register_disk

    notifier = Notifier.from_env()
    readiness = Readiness()
    drain = trio.Event()
    context = ControlContext()
    register_disk(config.data_dir)
    finished = False
    status: dict[str, Any] = {}
    live = {key: value for key, value in _flat(config).items() if key in LIVE_KEYS}
    kind, _, shard = roles[0].partition("-")
    # Every line of the process names it, threads included; the stages of `up` bind
    # their own role over it.
    bind_process(kind, int(shard) if shard.isdigit() else None)

    async def reload() -> dict[str, Any]:
        """Load the configuration again (file, env, the original flags) and apply what can
        change live; name the rest."""
        if reload_config is None:
            return {"applied": {}, "needs_restart": [], "note": "no configuration to reload"}
        new = reload_config()
        flat = _flat(new)
        original = _flat(config)
        applied: dict[str, Any] = {}
        if (new.log_level, new.log_format) != (live["log_level"], live["log_format"]):
            configure_logging(new.log_level, new.log_format)
            for key in ("log_level", "log_format"):
                if flat[key] != live[key]:
                    applied[key] = flat[key]
        for reloader in context.reloaders.values():
            applied.update(reloader(new))
        live.update({key: flat[key] for key in LIVE_KEYS})
        restart = sorted(k for k, v in flat.items() if k not in LIVE_KEYS and original.get(k) != v)
        log.info("control.reloaded", applied=sorted(applied), needs_restart=restart)
        return {"applied": applied, "needs_restart": restart}

    async with trio.open_nursery() as nursery:

        def on_drain() -> None:
            if drain.is_set():
                return
            log.info("drain requested")
            readiness.set_draining()
            notifier.stopping()
            drain.set()

        await nursery.start(partial(serve_drain_signals, on_drain, nursery.cancel_scope))
        for role in roles:
            handlers = role_handlers(
                role, readiness=readiness, on_drain=on_drain, context=context, reload=reload
            )
            await nursery.start(
                partial(serve_control, control_path(config.data_dir, role), handlers)
            )
        if health:
            port = await nursery.start(
                partial(serve_health, config.health_host, config.health_port, readiness=readiness)
            )
            log.info("health", url=f"http://{config.health_host}:{port}")
        if notifier.watchdog_interval_s is not None:
            await nursery.start(serve_watchdog, notifier)

        async def main(task_status: trio.TaskStatus[Any]) -> None:
            nonlocal finished
            await serve(
                config, readiness=readiness, drain=drain, control=context, task_status=task_status
            )
            finished = True
            # The daemons are done: the helpers above have nothing left to serve.
            nursery.cancel_scope.cancel()

        value = await nursery.start(main)
        if status_of is not None:
            status.update(status_of(value))
            own = context.statuses.get(roles[0])

            def first_role_status() -> Mapping[str, Any]:
                return {**status, **(own() if own is not None else {})}

            context.on_status(roles[0], first_role_status)
        notifier.ready()
        announce(value)
    if not finished:
        # Only a second signal cancels this nursery without an error: no drain finished.
        raise DrainIncomplete(
            "stopped at once by a second signal, before the drain finished; nothing acked is "
            "lost and the rest is redelivered on the next start"
        )


def cli_invocation(
    argv0: str | None = None,
    env: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> str:
    """How to run ``ledgerflux`` again the way this process was started, for the banner:
    ``python3 -m uv run --no-dev ledgerflux`` under ``uv run`` (uv sets ``UV`` for what it
    runs), ``ledgerflux`` when that name on PATH is this very script, else the script's own
    path (a venv not on PATH), or ``<python> -m ledgerflux``."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    env = os.environ if env is None else env
    if env.get("UV"):
        return "python3 -m uv run --no-dev ledgerflux"
    script = Path(argv0)
    if script.name == "__main__.py" or not script.name.startswith("ledgerflux"):
        return f"{shlex.quote(sys.executable)} -m ledgerflux"
    on_path = which("ledgerflux")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "ledgerflux"
    return shlex.quote(str(script.absolute()))


def _print_up(info: UpInfo) -> None:
    ws = info.gateway_url.replace("http://", "ws://", 1) + "/ws"
    embedded = f" (embedded: {', '.join(info.embedded)})" if info.embedded else ""
    print(
        f"LedgerFlux is up in {info.ready_s:.2f} s{embedded}\n"
        f"  live page   {info.gateway_url}/\n"
        f"  websocket   {ws}\n"
        f'              send {{"op": "subscribe", "id": 1, "products": ["coinbase:BTC-USD"],'
        f' "snapshot": true}}\n'
        f"  metrics     {info.gateway_url}/metrics\n"
        f"  NATS        {info.nats_url}\n"
        f"  watch       {cli_invocation()} tail coinbase:BTC-USD --url {ws}\n"
        "Ctrl-C drains and stops (a second Ctrl-C stops at once).",
        file=sys.stdout,
        flush=True,
    )


def _up_status(info: UpInfo) -> dict[str, Any]:
    return {"nats_url": info.nats_url, "gateway_url": info.gateway_url}


def up_config(
    config: Config, *, replay: Path | None = None, speed: float | None = None, loop: bool = True
) -> Config:
    """The configuration ``ledgerflux up`` runs: the replay feed (unless the config names
    another feed and no recording is given) at original timing, looping, so the demo stays
    live."""
    ingest = config.ingest
    if replay is not None or ingest.feed == "replay":
        ingest = attrs.evolve(
            ingest,
            feed="replay",
            replay_path=str(replay) if replay is not None else ingest.replay_path,
            replay_speed=1.0 if speed is None else speed,
            replay_loop=loop,
        )
    return attrs.evolve(config, ingest=ingest)


def run_up(
    config: Config,
    *,
    replay: Path | None = None,
    speed: float | None = None,
    loop: bool = True,
    reload_config: Callable[[], Config] | None = None,
) -> int:
    """``ledgerflux up``: blocks until drained; returns the process exit code (a drain that
    did not finish raises DrainIncomplete). *reload_config* loads the configuration again
    for ``ctl up reload``."""
    config = up_config(config, replay=replay, speed=speed, loop=loop)
    reload = None
    if reload_config is not None:
        source = reload_config

        def reload() -> Config:
            return up_config(source(), replay=replay, speed=speed, loop=loop)

    trio.run(
        partial(
            _host,
            serve_up,
            config,
            roles=control_roles("up", config),
            announce=_print_up,
            health=False,
            status_of=_up_status,
            reload_config=reload,
        )
    )
    return 0


def run_daemon(
    name: str,
    config: Config,
    *,
    embedded: bool = False,
    reload_config: Callable[[], Config] | None = None,
) -> int:
    """``ledgerflux ingest|normalize|snapshot|gateway``: blocks until drained; returns the
    process exit code (a drain that did not finish raises DrainIncomplete). *reload_config*
    loads the configuration again for ``ctl DAEMON reload``."""

    startup = StartupTimeline()
    startup.mark("main")

    def announce(value: object) -> None:
        startup.mark("ready")
        # A plain mapping (the gateway's address), never a Python repr in a JSON line.
        info = (
            attrs.asdict(value, recurse=False, filter=lambda a, _: not a.name.startswith("_"))  # type: ignore[arg-type]
            if attrs.has(type(value))
            else None
        )
        log.info("ready", pid=os.getpid(), info=info, startup_s=startup.marks)

    trio.run(
        partial(
            _host,
            partial(serve_daemon, name, embedded=embedded, startup=startup),
            config,
            roles=control_roles(name, config),
            announce=announce,
            health=name != "gateway",
            reload_config=reload_config,
        )
    )
    return 0
