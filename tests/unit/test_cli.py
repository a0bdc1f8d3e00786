"""The ``ledgerflux`` command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import structlog

from ledgerflux.cli import _exit_code, build_parser, main
from ledgerflux.config import ConfigError
from ledgerflux.errors import LedgerfluxError
from ledgerflux.events import Trade


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """main() configures logging process-wide; leave the next test as this one found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


SUBCOMMANDS = [
    "up",
    "ingest",
    "normalize",
    "snapshot",
    "gateway",
    "record",
    "replay",
    "tail",
    "history",
    "candles",
    "ctl",
    "config",
    "plugins",
    "import",
    "bench",
    "completion",
]


def test_every_subcommand_is_tested() -> None:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", [[], *([c] for c in SUBCOMMANDS)])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"], env={})
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ledgerflux {' '.join(command)}".rstrip())


def test_config_prints_the_effective_config_masked(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"LEDGERFLUX_DATABASE_URL": "postgresql://lf:hunter2@db/lf"}
    code = main(["--nats-url", "nats://n:4222", "config", "--log-level", "debug"], env=env)
    out = capsys.readouterr().out
    assert code == 0
    assert 'url = "postgresql://lf:***@db/lf"' in out
    assert 'url = "nats://n:4222"' in out
    assert 'log_level = "debug"' in out
    assert "hunter2" not in out


def test_config_file_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lf.toml"
    path.write_text("[gateway]\nport = 9100\n")
    assert main(["--config", str(path), "config"], env={}) == 0
    assert "port = 9100\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["gateway", "--port", "http"],
            {},
            "ledgerflux: gateway.port: expected an integer between 0 and 65535, got 'http' "
            "(from --port)\n",
        ),
        (
            ["config"],
            {"LEDGERFLUX_LOG_LEVEL": "chatty"},
            "ledgerflux: log_level: expected one of 'debug', 'info', 'warning', 'error', "
            "'critical', got 'chatty' (from env LEDGERFLUX_LOG_LEVEL)\n",
        ),
        (
            ["normalize", "--shard", "3", "--shards", "2"],
            {},
            "ledgerflux: normalize.shard: expected an integer below normalize.shards (2, from "
            "--shards), got 3 (from --shard)\n",
        ),
        (
            ["tail", "--nats", "coinbase:BTC-USD"],
            {},
            "ledgerflux: tail --nats needs a running server: set --nats-url or "
            "LEDGERFLUX_NATS_URL\n",
        ),
        (
            ["--data-dir", "no-such-dir", "history", "coinbase:BTC-USD"],
            {},
            "ledgerflux: history needs a PostgreSQL: set --database-url or "
            "LEDGERFLUX_DATABASE_URL, or --data-dir to the data dir of a `ledgerflux up` "
            "(no no-such-dir/postgres)\n",
        ),
        (
            ["bench", "nope", "--json"],
            {},
            "ledgerflux: bench: unknown benchmark 'nope'; expected one of bus, codec, decode, "
            "gateway, pipeline, startup, store\n",
        ),
        (
            ["ctl", "ingest", "explode"],
            {},
            "ledgerflux: ctl: unknown command 'explode'; expected one of status, drain, resync, "
            "reload\n",
        ),
        (
            ["ctl", "ingest", "resync"],
            {},
            "ledgerflux: ctl resync needs a PRODUCT, e.g. coinbase:BTC-USD\n",
        ),
    ],
)
def test_usage_and_config_errors_exit_2_with_the_key_named(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, env=env) == 2
    assert capsys.readouterr().err == message


def test_ctl_without_a_daemon_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--data-dir", str(tmp_path), "ctl", "ingest", "status"], env={})
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ledgerflux: no daemon is listening on {tmp_path}/run/ingest.sock")


def test_plugins_lists_the_installed_feeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"], env={}) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["replay"] == ["ledgerflux", "0.1.0", "ledgerflux.feeds.replay:ReplayFeed"]
    assert rows["coinbase"][0] == "ledgerflux-coinbase"


class Unavailable(LedgerfluxError):
    pass


def test_named_errors_inside_exception_groups_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    group = ExceptionGroup("nursery", [Unavailable("nats://n:4222 is unreachable")])
    assert _exit_code(group) == 1
    assert capsys.readouterr().err == "ledgerflux: nats://n:4222 is unreachable\n"
    assert _exit_code(ExceptionGroup("n", [ConfigError("x: bad")])) == 2
    assert _exit_code(BaseExceptionGroup("n", [KeyboardInterrupt()])) == 130


def test_an_incomplete_drain_exits_75_and_mixed_named_errors_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ledgerflux.errors import DrainIncomplete

    nested = ExceptionGroup("up", [ExceptionGroup("nursery", [DrainIncomplete("deadline")])])
    assert _exit_code(nested) == 75
    assert capsys.readouterr().err == "ledgerflux: deadline\n"
    assert _exit_code(ExceptionGroup("n", [DrainIncomplete("d"), Unavailable("u")])) == 1


def test_daemons_take_embedded_and_up_does_not_need_it() -> None:
    parser = build_parser()
    for argv in (["snapshot"], ["gateway"], ["ingest"], ["normalize", "--shard", "0"]):
        assert parser.parse_args(argv).embedded is False
        assert parser.parse_args([*argv, "--embedded"]).embedded is True
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--embedded"])


def test_a_bug_keeps_its_traceback() -> None:
    bug = ExceptionGroup("nursery", [Unavailable("fine"), ZeroDivisionError()])
    with pytest.raises(ExceptionGroup):
        _exit_code(bug)


def test_python_dash_m_ledgerflux_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ledgerflux", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ledgerflux")
    assert "plugins" in result.stdout


@pytest.mark.nats
async def test_tail_prints_the_products_events_as_json_lines(nats_url: str) -> None:
    import trio

    from ledgerflux.bus import OutMsg, open_bus
    from ledgerflux.codec import decode, encode
    from ledgerflux.config import NatsConfig
    from ledgerflux.subjects import md_msg_id, md_subject

    trades = [trade(1, product) for product in ("coinbase:BTC-USD", "coinbase:ETH-USD")]
    with trio.fail_after(60):
        async with open_bus(NatsConfig(), url=nats_url) as bus:
            await bus.ensure_streams()
            await bus.publish_batch(
                [
                    OutMsg(md_subject(t.product), encode(t), msg_id=md_msg_id(t.product, "e1", 1))
                    for t in trades
                ]
            )
        argv = ["--nats-url", nats_url, "tail", "--all", "coinbase:BTC-USD"]
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "ledgerflux", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        try:
            data = b""
            while b"\n" not in data:
                chunk = await proc.stdout.receive_some()
                assert chunk, "tail exited before printing an event"
                data += chunk
        finally:
            proc.send_signal(signal.SIGTERM)  # the first signal stops tail cleanly
            with trio.CancelScope(shield=True):
                code = await proc.wait()
                await proc.stdout.aclose()
    assert decode(data.split(b"\n")[0]) == trades[0]
    assert code == 0


def trade(seq: int, product: str = "coinbase:BTC-USD") -> Trade:
    return Trade(
        product=product,
        seq=seq,
        epoch="e1",
        ts_event=1_700_000_000_000_000_000 + seq,
        ts_ingest=1_700_000_000_000_000_001 + seq,
        price=Decimal("50000.01"),
        size=Decimal(seq),
        side="sell",
    )


@pytest.mark.postgres
async def test_history_prints_stored_events_from_a_seq(database_url: str) -> None:
    import trio

    from ledgerflux.codec import decode
    from ledgerflux.config import DatabaseConfig
    from ledgerflux.store import HistoryRow, StateRow, open_store

    events = [trade(seq) for seq in range(1, 6)]
    state = StateRow("coinbase:BTC-USD", "e1", 5, events[-1].ts_event, 5, {})
    with trio.fail_after(60):
        async with open_store(DatabaseConfig(), url=database_url) as store:
            rows = [HistoryRow(event, stream_seq=event.seq) for event in events]
            await store.write_batch(rows, [state])
        argv = ["history", "coinbase:BTC-USD", "--from-seq", "2", "--limit", "3"]
        result = await trio.run_process(
            [sys.executable, "-m", "ledgerflux", *argv],
            env={**os.environ, "LEDGERFLUX_DATABASE_URL": database_url},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert [decode(line) for line in result.stdout.splitlines()] == events[1:4]


def test_json_logs_go_to_stderr_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    import orjson

    from ledgerflux.logging import configure_logging

    configure_logging("info", "json")
    structlog.get_logger("lf.test").info("hello", price=Decimal("1.5"))
    logging.getLogger("some.library").warning("from %s", "stdlib")
    structlog.get_logger("lf.test").debug("filtered out")
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [orjson.loads(line) for line in captured.err.splitlines()]
    assert [(line["event"], line["level"], line["logger"]) for line in lines] == [
        ("hello", "info", "lf.test"),
        ("from stdlib", "warning", "some.library"),
    ]
    assert lines[0]["price"] == "1.5"


@pytest.mark.postgres
@pytest.mark.slow
async def test_history_finds_the_embedded_postgres_of_the_data_dir(tmp_path: Path) -> None:
    """What ``ledgerflux up`` leaves in its data dir is enough: no URL to build by hand."""
    import trio

    from ledgerflux.codec import decode
    from ledgerflux.config import DatabaseConfig
    from ledgerflux.embedded.postgres import open_postgres
    from ledgerflux.store import HistoryRow, StateRow, open_store

    events = [trade(seq) for seq in range(1, 4)]
    state = StateRow("coinbase:BTC-USD", "e1", 3, events[-1].ts_event, 3, {})
    with trio.fail_after(180):
        async with open_postgres(tmp_path) as pg, open_store(DatabaseConfig(), url=pg.url) as store:
            await store.write_batch([HistoryRow(e, stream_seq=e.seq) for e in events], [state])
        # The server is stopped now: history starts it from the data dir, and stops it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "ledgerflux",
                "--data-dir",
                str(tmp_path),
                "history",
                "coinbase:BTC-USD",
            ],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert [decode(line) for line in result.stdout.splitlines()] == events


def test_replay_from_archive_prints_the_range_in_time_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batches of two products overlap in time; the output is one ts_event order."""
    import attrs
    import trio

    from ledgerflux.archive import LocalArchive
    from ledgerflux.codec import decode

    archive = LocalArchive(tmp_path / "archive")
    base = 1_700_000_000_000_000_000
    btc = [attrs.evolve(trade(seq), ts_event=base + 2 * seq) for seq in range(1, 7)]
    eth = [
        attrs.evolve(trade(seq, "coinbase:ETH-USD"), ts_event=base + 2 * seq + 1)
        for seq in range(1, 7)
    ]

    async def write() -> None:
        for batch in (btc[:3], btc[3:], eth[:4], eth[4:]):
            await archive.put_events(batch[0].product, batch)

    trio.run(write)
    everything = sorted([*btc, *eth], key=lambda e: e.ts_event)
    start, end = everything[2].ts_event, everything[9].ts_event
    code = main(
        [
            "replay",
            "--from-archive",
            str(tmp_path / "archive"),
            "--start",
            str(start),
            "--end",
            str(end),
        ],
        env={},
    )
    assert code == 0
    captured = capsys.readouterr()
    assert [decode(line) for line in captured.out.splitlines()] == everything[2:10]
    assert "8 events" in captured.err


def test_replay_from_archive_takes_iso_times_and_names_a_missing_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ledgerflux.archive_replay import parse_time

    assert parse_time("2026-11-20T10:00:00Z", "--start") == 1_795_168_800_000_000_000
    assert parse_time("2026-11-20T10:00:00", "--start") == 1_795_168_800_000_000_000
    code = main(["replay", "--from-archive", str(tmp_path / "nothing")], env={})
    assert code == 1
    assert f"no archive at {tmp_path / 'nothing'}" in capsys.readouterr().err
    assert main(["replay", "--from-archive", str(tmp_path), "--start", "yesterday"], env={}) == 2
