"""The ``ledgerflux`` command line.

Every subcommand loads one :class:`~ledgerflux.config.Config` (file < env < flags) and
hands it to the code that does the work. Heavy modules (Trio daemons, NATS, PostgreSQL)
are imported inside the subcommand that needs them, so ``ledgerflux --help`` stays fast.

Exit codes (``docs/operations.md``): 0 done (a daemon: drained cleanly), 1 a named runtime
error (a server unreachable, a port in use, a failed control request), 2 a usage or
configuration error, 75 a drain that ended with work not flushed or acked, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from ledgerflux.config import Config, Flag, dump_config, load_config
from ledgerflux.errors import EXIT_CONFIG, EXIT_ERROR, EXIT_INTERRUPTED, LedgerfluxError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["BENCHMARKS", "main"]

T = TypeVar("T")

BENCHMARKS = ("bus", "codec", "decode", "gateway", "pipeline", "startup", "store")
"""``ledgerflux bench NAME`` runs ``ledgerflux.bench.<NAME>.main(argv)``."""

CONTROL_COMMANDS = ("status", "drain", "resync", "reload")

# (argparse dest, config key, flag as the user typed it)
_GLOBAL_FLAGS = (
    ("data_dir", "data_dir", "--data-dir"),
    ("log_level", "log_level", "--log-level"),
    ("log_format", "log_format", "--log-format"),
    ("nats_url", "nats.url", "--nats-url"),
    ("database_url", "database.url", "--database-url"),
)
_COMMAND_FLAGS = (
    ("port", "gateway.port", "--port"),
    ("feed", "ingest.feed", "--feed"),
    ("symbols", "ingest.symbols", "--symbols"),
    ("channels", "ingest.channels", "--channels"),
    ("shard", "normalize.shard", "--shard"),
    ("shards", "normalize.shards", "--shards"),
    ("speed", "ingest.replay_speed", "--speed"),
)


class UsageError(LedgerfluxError):
    """A command was given arguments it cannot use (exit code 2)."""

    exit_code = EXIT_CONFIG


# --- the parser ----------------------------------------------------------------------------


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """The options every subcommand accepts, before or after its name.

    On subcommands the defaults are SUPPRESS so that a value given before the subcommand
    name is not reset by the subcommand's own (absent) option.
    """
    default = argparse.SUPPRESS if suppress else None
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("configuration (flags win over env, env over the file)")
    group.add_argument(
        "--config",
        dest="config_path",
        metavar="PATH",
        type=Path,
        default=default,
        help="TOML config file (default: $LEDGERFLUX_CONFIG, else none)",
    )
    group.add_argument(
        "--data-dir", metavar="DIR", default=default, help="data directory (data_dir)"
    )
    group.add_argument(
        "--log-level",
        metavar="LEVEL",
        default=default,
        help="debug, info, warning, error or critical (log_level)",
    )
    group.add_argument(
        "--log-format", metavar="FMT", default=default, help="console or json (log_format)"
    )
    group.add_argument(
        "--nats-url",
        metavar="URL",
        default=default,
        help="NATS server(s), nats://host:port (nats.url; none: embedded)",
    )
    group.add_argument(
        "--database-url",
        metavar="URL",
        default=default,
        help="PostgreSQL URL (database.url; none: embedded). Prefer LEDGERFLUX_DATABASE_URL: "
        "a password on the command line is visible to other users",
    )
    return parser


def _check_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check",
        action="store_true",
        help="load the configuration, validate the flags and the feed plugin, print 'ok' and "
        "exit 0 without starting anything (deploy files are tested with it)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(suppress=True)
    parser = argparse.ArgumentParser(
        prog="ledgerflux",
        description="LedgerFlux: exchange feeds -> NATS JetStream -> PostgreSQL/S3 -> "
        "WebSocket subscribers.",
        parents=[_global_options(suppress=False)],
        epilog="Run 'ledgerflux COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    def daemon(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = command(name, help_text)
        parser.add_argument(
            "--embedded",
            action="store_true",
            help="start a private embedded nats-server/PostgreSQL in the data dir for a "
            "server with no configured URL (default: a missing URL is an error)",
        )
        _check_flag(parser)
        return parser

    up = command(
        "up",
        "Run every daemon in one process on embedded defaults (nats-server, PostgreSQL, local "
        "archive) and print where to connect. Ctrl-C drains; a second Ctrl-C stops at once.",
    )
    up.add_argument("--replay", metavar="PATH", type=Path, help="recording to replay as feed")
    up.add_argument(
        "--speed", metavar="X", help="replay speed: 1 original timing, 10 ten times faster, 0 max"
    )
    up.add_argument(
        "--no-loop", action="store_true", help="stop the replay at its end instead of looping"
    )
    up.add_argument("--port", metavar="N", help="gateway port (gateway.port, default 8000)")
    _check_flag(up)

    ingest = daemon("ingest", "Run the ingestor: exchange feed -> LF_TICKS (one process per feed).")
    ingest.add_argument(
        "--feed", metavar="NAME", help="feed plugin (ledgerflux plugins lists them)"
    )
    ingest.add_argument("--symbols", metavar="A,B", help="comma-separated exchange symbols")
    ingest.add_argument(
        "--channels", metavar="A,B", help="comma-separated channels (ingest.channels)"
    )
    ingest.add_argument(
        "--speed",
        metavar="X",
        help="replay feed: 1 original timing, 10 ten times faster, 0 max (ingest.replay_speed)",
    )

    normalize = daemon(
        "normalize", "Run a normalizer: LF_TICKS -> LF_MD for one shard (or all shards)."
    )
    normalize.add_argument("--shard", metavar="I", help="the shard this process owns (0..N-1)")
    normalize.add_argument("--shards", metavar="N", help="number of shards (normalize.shards)")

    daemon("snapshot", "Run the snapshotter: LF_MD -> PostgreSQL state/history and S3 archive.")

    gateway = daemon("gateway", "Run the WebSocket gateway (/ws, /, /healthz, /readyz, /metrics).")
    gateway.add_argument("--port", metavar="N", help="listen port (gateway.port, default 8000)")

    record = command(
        "record", "Record a live exchange feed (frames in and out, REST replies) to a file."
    )
    record.add_argument("--feed", metavar="NAME", required=True, help="feed plugin to record")
    record.add_argument("--symbols", metavar="A,B", help="comma-separated exchange symbols")
    record.add_argument("--channels", metavar="A,B", help="comma-separated channels")
    record.add_argument("--out", metavar="PATH", type=Path, required=True, help="output file")
    record.add_argument(
        "--duration", metavar="S", type=float, help="stop after S seconds (default: Ctrl-C)"
    )
    record.add_argument(
        "--progress",
        action="store_true",
        help="show the frames written so far (default: when stderr is a terminal)",
    )

    replay = command(
        "replay", "Replay a recording into the configured NATS (LF_TICKS), as the ingestor would."
    )
    replay.add_argument(
        "path", metavar="PATH", type=Path, nargs="?", help="recording file (or --from-archive)"
    )
    replay.add_argument(
        "--from-archive",
        metavar="SRC",
        help="print archived canonical events instead, in ts_event order, as JSON lines: SRC "
        "is the archive folder (<data_dir>/archive) or s3://BUCKET/PREFIX (archive.s3_endpoint)",
    )
    replay.add_argument(
        "--start", metavar="T", help="with --from-archive: first ts_event (ISO 8601 or ns)"
    )
    replay.add_argument(
        "--end", metavar="T", help="with --from-archive: last ts_event (ISO 8601 or ns)"
    )
    replay.add_argument(
        "--product", metavar="PRODUCT", help="with --from-archive: one product only"
    )
    replay.add_argument(
        "--speed", metavar="X", help="1 original timing, 10 ten times faster, 0 max"
    )
    replay.add_argument("--loop", action="store_true", help="start again at the end")
    replay.add_argument(
        "--dry-run", action="store_true", help="decode only and print counts; publish nothing"
    )
    replay.add_argument("--progress", action="store_true", help="show a progress bar")

    tail = command(
        "tail",
        "Print a product's events as JSON lines, live, through the gateway (or LF_MD on NATS).",
    )
    tail.add_argument("product", metavar="PRODUCT", help="e.g. coinbase:BTC-USD")
    tail.add_argument(
        "--from-seq", metavar="N", type=int, help="replay from seq N first (then live)"
    )
    tail.add_argument("--snapshot", action="store_true", help="print the current state first")
    tail.add_argument(
        "--url", metavar="URL", help="gateway WebSocket (default ws://gateway.host:port/ws)"
    )
    tail.add_argument("--token", metavar="TOKEN", help="gateway token or API key id:secret")
    tail.add_argument("--token-file", metavar="PATH", type=Path, help="read TOKEN from a file")
    tail.add_argument(
        "--nats", action="store_true", help="read LF_MD from NATS directly, not the gateway"
    )
    tail.add_argument(
        "--all",
        action="store_true",
        help="with --nats: start from the oldest retained event, not new ones (implies --nats)",
    )

    history = command(
        "history",
        "Print a product's stored event history from PostgreSQL (database.url, else the "
        "embedded PostgreSQL of the data dir, as `ledgerflux up` left it).",
    )
    history.add_argument("product", metavar="PRODUCT", help="e.g. coinbase:BTC-USD")
    history.add_argument("--from-seq", metavar="N", type=int, default=1, help="first seq")
    history.add_argument("--limit", metavar="N", type=int, default=1000, help="at most N events")
    history.add_argument(
        "--epoch", metavar="EPOCH", help="seq space to read (default: the product's current one)"
    )

    candles = command(
        "candles",
        "Print a product's stored one-minute candles as JSON lines, or rebuild the stored "
        "candles from the trades in md_history (`candles rebuild [PRODUCT]`).",
    )
    candles.add_argument("product", metavar="PRODUCT", help="e.g. coinbase:BTC-USD; or 'rebuild'")
    candles.add_argument(
        "rebuild_product", metavar="REBUILD_PRODUCT", nargs="?", help=argparse.SUPPRESS
    )
    candles.add_argument(
        "--since",
        metavar="T",
        help="first minute: RFC 3339 (2026-12-01T23:00:00Z) or unix seconds (default: 1 h ago)",
    )
    candles.add_argument("--until", metavar="T", help="end, exclusive (default: now)")
    candles.add_argument(
        "--limit", metavar="N", type=int, default=1440, help="at most N candles (the newest)"
    )

    ctl = command(
        "ctl",
        "Send a control request to a running daemon over its ipc socket "
        "(<data_dir>/run/<DAEMON>.sock) and print the JSON reply. "
        "`ctl resync PRODUCT [reason=...]` asks the ingestor serving PRODUCT over NATS "
        "(--nats-url) instead, wherever it runs.",
    )
    ctl.add_argument(
        "daemon",
        metavar="DAEMON",
        help="e.g. ingest-coinbase, normalize-0, snapshot, gateway, up; or resync",
    )
    ctl.add_argument("cmd", metavar="CMD", help=f"one of {', '.join(CONTROL_COMMANDS)}")
    ctl.add_argument(
        "args", metavar="ARGS", nargs="*", help="resync: PRODUCT; others: optional key=value pairs"
    )
    ctl.add_argument("--timeout", metavar="S", type=float, default=5.0, help="reply timeout")

    config = command("config", "Print the effective configuration as TOML (secrets masked).")
    config.add_argument(
        "--show-secrets", action="store_true", help="print secrets unmasked (careful)"
    )

    command("plugins", "List the installed feed plugins (entry points in ledgerflux.feeds).")

    imp = command(
        "import",
        "Convert a cryptofeed capture (text EXCHANGE.ws.N.0 or JSON lines) into a recording.",
    )
    imp.add_argument("src", metavar="SRC", type=Path, help="capture file")
    imp.add_argument("dst", metavar="DST", type=Path, help="recording to write (.jsonl[.gz])")
    imp.add_argument("--plugin", metavar="NAME", required=True, help="plugin that decodes it")
    imp.add_argument(
        "--rest-endpoint", metavar="URL", help="REST base for the header (default: the plugin's)"
    )
    imp.add_argument(
        "--symbols", dest="header_symbols", metavar="A,B", help="header symbols (default: found)"
    )
    imp.add_argument(
        "--channels", dest="header_channels", metavar="A,B", help="header channels (default: found)"
    )
    completion = sub.add_parser(
        "completion",
        help='Print a shell completion script: eval "$(ledgerflux completion bash)".',
        description="Print a completion script for bash or zsh. bash: add "
        "'eval \"$(ledgerflux completion bash)\"' to ~/.bashrc; zsh: the same with zsh in "
        "~/.zshrc.",
    )
    completion.add_argument("shell", choices=("bash", "zsh"), help="bash or zsh")

    bench = sub.add_parser(
        "bench",
        help="Run a benchmark against its baseline; with --json the last line is one JSON object.",
        description="Run ledgerflux.bench.NAME with the remaining arguments "
        f"(NAME: {', '.join(BENCHMARKS)}). 'ledgerflux bench NAME --help' shows its options.",
    )
    bench.add_argument("name", metavar="NAME", help=", ".join(BENCHMARKS))
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ledgerflux")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


# --- configuration from flags --------------------------------------------------------------


def overrides_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The config overrides the parsed flags carry, each naming its flag for errors."""
    overrides: dict[str, object] = {}
    for dest, key, flag in (*_GLOBAL_FLAGS, *_COMMAND_FLAGS):
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = Flag(value, flag)
    return overrides


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Config:
    return load_config(
        path=getattr(args, "config_path", None), env=env, overrides=overrides_from_args(args)
    )


# --- commands ------------------------------------------------------------------------------


def _require_url(value: str | None, what: str, flag: str, env: str) -> str:
    if not value:
        raise UsageError(f"{what} needs a running server: set {flag} or {env}")
    return value


def _configure_logging(config: Config) -> None:
    from ledgerflux.logging import configure_logging

    configure_logging(config.log_level, config.log_format)


def cmd_up(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    from ledgerflux.app import check_up, run_up, up_config

    if args.check:
        check_up(up_config(config, replay=args.replay, loop=not args.no_loop))
        out.write("ok: up\n")
        return 0
    speed = config.ingest.replay_speed if args.speed is not None else None
    return run_up(
        config,
        replay=args.replay,
        speed=speed,
        loop=not args.no_loop,
        reload_config=partial(config_from_args, args),
    )


def cmd_daemon(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    from ledgerflux.app import check_daemon, run_daemon

    if args.check:
        check_daemon(str(args.command), config, embedded=bool(args.embedded), ports=False)
        out.write(f"ok: {args.command}\n")
        return 0
    return run_daemon(
        str(args.command),
        config,
        embedded=bool(args.embedded),
        reload_config=partial(config_from_args, args),
    )


def cmd_record(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    import trio

    from ledgerflux.feeds.record import run_record

    progress = bool(args.progress or sys.stderr.isatty())

    async def record() -> int | None:
        return await run_record(config, out=args.out, duration_s=args.duration, progress=progress)

    frames = trio.run(_until_signal, record)
    done = f"{frames} frames" if frames is not None else "stopped by signal"
    print(f"recorded to {args.out}: {done}", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    import trio

    from ledgerflux.feeds.replay import run_replay

    if args.from_archive is not None:
        return _replay_archive(args, config, out)
    if args.path is None:
        raise UsageError("replay needs a recording PATH (or --from-archive SRC)")
    if args.start is not None or args.end is not None or args.product is not None:
        raise UsageError("replay: --start, --end and --product go with --from-archive")

    speed = config.ingest.replay_speed
    progress = bool(args.progress or sys.stderr.isatty())
    replay = partial(
        run_replay, config, path=args.path, speed=speed, loop=args.loop, progress=progress
    )
    if args.dry_run:

        async def dry_run() -> object:
            return await replay(publisher=None)

        trio.run(_until_signal, dry_run)
        return 0
    url = _require_url(config.nats.url, "replay", "--nats-url", "LEDGERFLUX_NATS_URL")

    async def publish() -> object:
        from ledgerflux.bus import open_bus

        async with open_bus(config.nats, url=url, name="ledgerflux-replay") as bus:
            await bus.ensure_streams()
            return await _until_signal(partial(replay, publisher=bus))

    stats = trio.run(publish)
    if stats is not None:
        print(f"replayed {args.path}: {stats}", file=sys.stderr)
    return 0


def _replay_archive(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    """``replay --from-archive SRC``: the archived events in ``[start, end]`` as JSON lines."""
    import trio

    from ledgerflux.archive_replay import archive_from, iter_archive, parse_time
    from ledgerflux.codec import encode

    if args.path is not None:
        raise UsageError("replay: give a recording PATH or --from-archive SRC, not both")
    try:
        start = parse_time(args.start, "--start")
        end = parse_time(args.end, "--end")
    except ValueError as exc:
        raise UsageError(f"replay: {exc}") from None
    if start is not None and end is not None and end < start:
        raise UsageError("replay: --end is before --start")
    if args.product is not None:
        from ledgerflux.subjects import split_product

        _product_arg(args.product, split_product)
    archive = archive_from(args.from_archive, config.archive)
    progress = bool(args.progress or sys.stderr.isatty())

    async def replay() -> int:
        count = 0
        async for event in iter_archive(
            archive, start_ns=start, end_ns=end, product=args.product, progress=progress
        ):
            out.write(encode(event).decode() + "\n")
            count += 1
        out.flush()
        return count

    count = trio.run(_until_signal, replay)
    done = f"{count} events" if count is not None else "stopped by signal"
    print(f"replayed {args.from_archive}: {done}", file=sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    if args.nats or args.all:
        if args.from_seq is not None or args.snapshot:
            raise UsageError("tail: --from-seq and --snapshot go through the gateway, not --nats")
        return _tail_nats(args, config, out)
    return _tail_gateway(args, config, out)


def _tail_gateway(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    import math

    import orjson
    import trio

    from ledgerflux.client import open_client
    from ledgerflux.gateway.protocol import valid_product

    if not valid_product(args.product):
        raise UsageError(f"bad PRODUCT {args.product!r}: expected '<exchange>:<BASE>-<QUOTE>'")
    if args.from_seq is not None and args.from_seq < 1:
        raise UsageError("tail: --from-seq must be >= 1")
    host = config.gateway.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = args.url or f"ws://{host}:{config.gateway.port}/ws"
    token = args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"tail: cannot read --token-file: {exc.strerror}") from None

    async def tail() -> None:
        # The first connection must come within 10 s; after that the client reconnects
        # (and resumes) for as long as tail runs.
        connecting = trio.CancelScope(deadline=trio.current_time() + 10.0)
        with connecting:
            async with open_client(url, token=token) as client:
                connecting.deadline = math.inf
                await client.subscribe(
                    [args.product],
                    snapshot=args.snapshot,
                    from_seq=None if args.from_seq is None else {args.product: args.from_seq},
                )
                async for message in client:
                    out.write(orjson.dumps(message).decode() + "\n")
                    out.flush()
        if connecting.cancelled_caught:
            raise UsageError(f"tail: the gateway at {url} does not answer (--url, --nats)")

    trio.run(_until_signal, tail)
    return 0


def _tail_nats(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    import trio

    from ledgerflux.subjects import MD_STREAM, md_subject

    url = _require_url(config.nats.url, "tail --nats", "--nats-url", "LEDGERFLUX_NATS_URL")
    subject = _product_arg(args.product, md_subject)

    async def tail() -> None:
        from ledgerflux.bus import open_bus

        async with (
            open_bus(config.nats, url=url, name="ledgerflux-tail") as bus,
            bus.ordered(MD_STREAM, subject, start_seq=1 if args.all else None) as batches,
        ):
            async for batch in batches:
                out.write("".join(msg.data.decode() + "\n" for msg in batch))
                out.flush()

    trio.run(_until_signal, tail)
    return 0


def cmd_history(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    import trio

    from ledgerflux.codec import encode
    from ledgerflux.subjects import split_product

    _product_arg(args.product, split_product)
    if args.from_seq < 1 or args.limit < 1:
        raise UsageError("history: --from-seq and --limit must be >= 1")
    url = config.database.url
    embedded = Path(config.data_dir) / "postgres"
    if url is None and not embedded.is_dir():
        raise UsageError(
            f"history needs a PostgreSQL: set --database-url or LEDGERFLUX_DATABASE_URL, or "
            f"--data-dir to the data dir of a `ledgerflux up` (no {embedded})"
        )

    async def history() -> int:
        import contextlib

        from ledgerflux.store import open_store

        async with contextlib.AsyncExitStack() as stack:
            db_url = url
            if db_url is None:
                # The demo's own server: joined if `up` runs, else started and stopped again.
                from ledgerflux.embedded.postgres import open_postgres

                pg = await stack.enter_async_context(open_postgres(Path(config.data_dir)))
                db_url = pg.url
            store = await stack.enter_async_context(open_store(config.database, url=db_url))
            epoch = args.epoch
            if epoch is None:
                latest = await store.latest_state(args.product)
                if latest is None:
                    print(f"history: no stored state for {args.product}", file=sys.stderr)
                    return 1
                epoch = latest.epoch
            events = await store.history(args.product, epoch, args.from_seq, limit=args.limit)
        for event in events:
            out.write(encode(event).decode() + "\n")
        out.flush()
        return 0

    return trio.run(history)


def cmd_candles(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    import time

    import orjson
    import trio

    from ledgerflux.candles import INTERVAL_NS, candle_json, parse_time
    from ledgerflux.subjects import split_product

    url = _require_url(config.database.url, "candles", "--database-url", "LEDGERFLUX_DATABASE_URL")
    rebuild = args.product == "rebuild"
    product = args.rebuild_product if rebuild else args.product
    if product is not None:
        _product_arg(product, split_product)
    elif not rebuild:
        raise UsageError("candles: PRODUCT is required")
    if not rebuild and args.rebuild_product is not None:
        raise UsageError(f"candles: unexpected argument {args.rebuild_product!r}")
    now = time.time_ns()
    try:
        until = parse_time(args.until) if args.until else now + INTERVAL_NS
        since = parse_time(args.since) if args.since else now - 3600 * 10**9
    except ValueError as exc:
        raise UsageError(f"candles: {exc}") from None
    if args.limit < 1:
        raise UsageError("candles: --limit must be >= 1")

    async def run() -> int:
        from ledgerflux.store import open_store

        async with open_store(config.database, url=url) as store:
            if rebuild:
                written = await store.rebuild_candles(product)
                print(f"rebuilt {written} candles of {product or 'every product'}", file=out)
                return 0
            assert product is not None
            rows = await store.candles(product, since, until, args.limit)
        for candle in rows:
            out.write(orjson.dumps(candle_json(candle, closed=candle.end <= now)).decode() + "\n")
        out.flush()
        return 0

    return trio.run(run)


def cmd_ctl(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    import orjson
    import trio

    from ledgerflux.control import control_path, control_request

    if args.daemon == "resync":
        return _ctl_resync(args, config, out)
    if args.cmd not in CONTROL_COMMANDS:
        raise UsageError(
            f"ctl: unknown command {args.cmd!r}; expected one of {', '.join(CONTROL_COMMANDS)}"
        )
    request: dict[str, Any] = {"cmd": args.cmd}
    rest = list(args.args)
    if args.cmd == "resync":
        if not rest or "=" in rest[0]:
            raise UsageError("ctl resync needs a PRODUCT, e.g. coinbase:BTC-USD")
        request["product"] = rest.pop(0)
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"ctl: expected key=value, got {item!r}")
        request[key] = value
    path = control_path(config.data_dir, args.daemon)
    reply = trio.run(control_request, path, request, args.timeout)
    out.write(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if reply.get("ok") else 1


def _ctl_resync(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    """``ctl resync PRODUCT [reason=TEXT]``: the bus path every resync request takes."""
    import orjson
    import trio

    product = args.cmd
    reason = "ledgerflux ctl resync"
    for item in args.args:
        key, sep, value = item.partition("=")
        if key != "reason" or not sep:
            raise UsageError(f"ctl resync: expected reason=TEXT, got {item!r}")
        reason = value
    from ledgerflux.subjects import split_product

    _product_arg(product, split_product)

    async def ask() -> dict[str, Any]:
        from ledgerflux.bus import open_bus
        from ledgerflux.resync import request_resync

        url = config.nats.url or await _up_nats_url(config, args.timeout)
        async with open_bus(config.nats, url=url, name="ledgerflux-ctl") as bus:
            reply = await request_resync(bus, product, reason, timeout_s=args.timeout)
        return reply.to_json()

    reply = trio.run(ask)
    out.write(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if reply.get("ok") else 1


async def _up_nats_url(config: Config, timeout_s: float) -> str:
    """The NATS URL of the ``ledgerflux up`` running on this data dir (its embedded
    nats-server has a random port), from the ``status`` reply of its control socket."""
    from ledgerflux.control import ControlError, control_path, control_request

    path = control_path(config.data_dir, "up")
    try:
        reply = await control_request(path, {"cmd": "status"}, timeout_s)
    except ControlError as exc:
        raise ControlError(
            "ctl resync: no NATS URL configured (--nats-url or LEDGERFLUX_NATS_URL) and no "
            f"`ledgerflux up` answers on this data dir: {exc}"
        ) from None
    url = reply.get("nats_url")
    if not isinstance(url, str) or not url:
        raise ControlError(f"ctl resync: `ledgerflux up` at {path} did not report its NATS URL")
    return url


def cmd_completion(args: argparse.Namespace, out: TextIO) -> int:
    from ledgerflux.completion import completion_script

    out.write(completion_script(build_parser(), args.shell))
    return 0


def cmd_config(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    out.write(dump_config(config, masked=not args.show_secrets))
    return 0


def feed_entry_points() -> dict[str, EntryPoint]:
    """Installed feed plugins by name (the registry's view when it is available)."""
    try:
        from ledgerflux.feeds.registry import available_feeds
    except ImportError:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group="ledgerflux.feeds")}
    return dict(available_feeds())


def cmd_plugins(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    feeds = feed_entry_points()
    if not feeds:
        out.write("no feed plugins installed (entry-point group ledgerflux.feeds)\n")
        return 0
    rows = []
    for name, ep in sorted(feeds.items()):
        dist = ep.dist
        where = f"{dist.name} {dist.version}" if dist is not None else "(unknown distribution)"
        rows.append((name, where, ep.value))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, where, value in rows:
        out.write(f"{name:<{width[0]}}  {where:<{width[1]}}  {value}\n")
    return 0


def cmd_import(args: argparse.Namespace, config: Config, out: TextIO) -> int:
    from ledgerflux.feeds.registry import available_feeds, load_feed
    from ledgerflux.importer import import_capture

    rest = args.rest_endpoint
    if rest is None and args.plugin in available_feeds():
        rest = load_feed(args.plugin).rest_endpoint

    def listed(value: str | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(v for v in value.split(",") if v)

    stats = import_capture(
        args.src,
        args.dst,
        plugin=args.plugin,
        rest_endpoint=rest,
        symbols=listed(args.header_symbols),
        channels=listed(args.header_channels),
    )
    out.write(
        f"{args.dst}: {stats.frames} frames ({stats.received} received, {stats.sent} sent, "
        f"{stats.rest} REST) over {stats.connections} connections, from the {stats.form} form\n"
    )
    return 0


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    if args.name not in BENCHMARKS:
        raise UsageError(
            f"bench: unknown benchmark {args.name!r}; expected one of {', '.join(BENCHMARKS)}"
        )
    module_name = f"ledgerflux.bench.{args.name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise LedgerfluxError(f"bench: {module_name} is not available in this build") from None
    result = module.main(list(args.rest))
    return int(result or 0)


def _product_arg(product: str, check: Callable[[str], Any]) -> Any:
    try:
        return check(product)
    except ValueError as exc:
        raise UsageError(f"bad PRODUCT {product!r}: {exc}") from None


async def _until_signal(fn: Callable[[], Awaitable[T]]) -> T | None:
    """Run *fn* until it returns or a signal arrives: the first SIGINT/SIGTERM cancels it
    (its own cancellation path closes files and flushes), a second one stops at once.
    Returns None when stopped by a signal."""
    import trio

    from ledgerflux.signals import serve_drain_signals

    result: T | None = None
    async with trio.open_nursery() as nursery:
        work = trio.CancelScope()
        await nursery.start(serve_drain_signals, work.cancel, nursery.cancel_scope)
        with work:
            result = await fn()
        nursery.cancel_scope.cancel()
    return result


_COMMANDS: Mapping[str, Callable[[argparse.Namespace, Config, TextIO], int]] = {
    "up": cmd_up,
    "ingest": cmd_daemon,
    "normalize": cmd_daemon,
    "snapshot": cmd_daemon,
    "gateway": cmd_daemon,
    "record": cmd_record,
    "replay": cmd_replay,
    "tail": cmd_tail,
    "history": cmd_history,
    "candles": cmd_candles,
    "ctl": cmd_ctl,
    "config": cmd_config,
    "plugins": cmd_plugins,
    "import": cmd_import,
}
_QUIET = ("config", "plugins")
"""Commands whose output is the point: they do not set up logging."""


# --- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None) -> int:
    """Run ``ledgerflux`` with *argv* (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "bench":
            return cmd_bench(args, out)
        if args.command == "completion":
            return cmd_completion(args, out)
        config = config_from_args(args, env)
        if args.command not in _QUIET:
            _configure_logging(config)
        return _COMMANDS[args.command](args, config, out)
    except (KeyboardInterrupt, Exception) as exc:
        return _exit_code(exc)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups: Trio nurseries wrap what they raise."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _exit_code(exc: BaseException) -> int:
    """Report a known error as its message and exit code; re-raise anything else (a bug
    deserves its traceback)."""
    leaves = _leaves(exc)
    if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return EXIT_INTERRUPTED
    if all(isinstance(leaf, BrokenPipeError) for leaf in leaves):
        # `ledgerflux tail ... | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if not all(isinstance(leaf, LedgerfluxError) for leaf in leaves):
        raise exc
    for leaf in leaves:
        print(f"ledgerflux: {leaf}", file=sys.stderr)
    codes = {leaf.exit_code for leaf in leaves if isinstance(leaf, LedgerfluxError)}
    return codes.pop() if len(codes) == 1 else EXIT_ERROR
