"""Logging context and rate limiting, the registry summary behind ``ctl status``, the
market-data and disk collectors, reload's configuration diff, and the CLI's completion."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ledgerflux.app import LIVE_KEYS, _flat, control_roles
from ledgerflux.cli import build_parser, main
from ledgerflux.completion import completion_script, options_by_command
from ledgerflux.config import Config, load_config
from ledgerflux.control import ControlContext, handle_request, role_handlers
from ledgerflux.events import Book, Quote, Ticker, Trade
from ledgerflux.gateway.market_metrics import MarketCollector
from ledgerflux.health import Readiness
from ledgerflux.logging import (
    RateLimitedLog,
    bind_daemon,
    bind_process,
    configure_logging,
    describe_error,
)
from ledgerflux.metrics import DiskCollector, registry_summary
from ledgerflux.state import ProductState

# -- logs -----------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def log(event: str, **fields: Any) -> None:
            self.lines.append((level, event, fields))

        return log


def test_the_rate_limiter_lets_one_line_per_key_and_interval_through() -> None:
    now = [100.0]
    recorder = Recorder()
    limited = RateLimitedLog(recorder, interval_s=10.0, clock=lambda: now[0])
    assert limited.log("error", "snapshot.seq_gap", key="A", got=5)
    for seq in range(6, 10):
        now[0] += 1.0
        assert not limited.log("error", "snapshot.seq_gap", key="A", got=seq)
    assert limited.log("error", "snapshot.seq_gap", key="B", got=1)  # another key: its own
    now[0] = 110.0
    assert limited.log("error", "snapshot.seq_gap", key="A", got=10)
    now[0] = 125.0
    assert limited.log("error", "snapshot.seq_gap", key="A", got=11)
    assert recorder.lines == [
        ("error", "snapshot.seq_gap", {"got": 5}),
        ("error", "snapshot.seq_gap", {"got": 1}),
        ("error", "snapshot.seq_gap", {"got": 10, "suppressed": 4}),
        ("error", "snapshot.seq_gap", {"got": 11}),
    ]


def json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]


async def test_bound_context_names_daemon_and_shard_in_every_task_it_starts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ledgerflux.logging

    monkeypatch.setattr(ledgerflux.logging, "_PROCESS_CONTEXT", {})  # this test's own
    configure_logging("info", "json")
    log = structlog.get_logger("test")
    bind_process("up")
    try:

        async def shard_task(i: int) -> None:
            with bind_daemon("normalize", i):

                async def child() -> None:
                    log.info("child.line", seq=i)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(child)

        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(shard_task, i)
        log.info("host.line")
        logging.getLogger("some.library").warning("library line")
        lines = json_lines(capsys)
    finally:
        configure_logging("info", "console")
    by_event = {(line["event"], line.get("seq")): line for line in lines}
    assert by_event[("child.line", 0)]["daemon"] == "normalize"
    assert by_event[("child.line", 0)]["shard"] == 0
    assert by_event[("child.line", 1)]["shard"] == 1
    assert by_event[("host.line", None)]["daemon"] == "up"
    assert by_event[("host.line", None)]["shard"] is None
    assert by_event[("library line", None)]["daemon"] == "up"


def test_json_lines_carry_errors_and_values_as_text_not_reprs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    try:
        structlog.get_logger("test").warning(
            "bus.nats_error", error=describe_error(TimeoutError()), price=Decimal("1.5")
        )
        (line,) = json_lines(capsys)
    finally:
        configure_logging("info", "console")
    assert line["error"] == "TimeoutError"
    assert line["price"] == "1.5"
    assert describe_error(ValueError("bad frame")) == "ValueError: bad frame"


# -- status, reload, roles --------------------------------------------------------------------


def test_registry_summary_sums_a_roles_metrics_and_lists_products() -> None:
    registry = CollectorRegistry()
    events = Counter("ledgerflux_x_events", "e", ["shard", "product"], registry=registry)
    events.labels("0", "coinbase:BTC-USD").inc(3)
    events.labels("0", "coinbase:ETH-USD").inc(2)
    events.labels("1", "coinbase:SOL-USD").inc(7)
    Gauge("ledgerflux_y_lag", "l", registry=registry).set(0.5)
    assert registry_summary(["ledgerflux_x_"], labels={"shard": "0"}, registry=registry) == {
        "counters": {"ledgerflux_x_events_total": 5},
        "products": ["coinbase:BTC-USD", "coinbase:ETH-USD"],
    }
    assert registry_summary(["ledgerflux_"], registry=registry)["counters"] == {
        "ledgerflux_x_events_total": 12,
        "ledgerflux_y_lag": 0.5,
    }


def test_up_opens_a_socket_per_role_and_split_daemons_one() -> None:
    config = attrs.evolve(Config(), normalize=attrs.evolve(Config().normalize, shards=2))
    assert control_roles("up", config) == [
        "up",
        "ingest-replay",
        "normalize-0",
        "normalize-1",
        "snapshot",
        "gateway",
    ]
    sharded = attrs.evolve(config, normalize=attrs.evolve(config.normalize, shard=1))
    assert control_roles("normalize", sharded) == ["normalize-1"]
    assert control_roles("normalize", config) == ["normalize"]
    assert control_roles("gateway", config) == ["gateway"]


def test_the_live_keys_are_configuration_keys() -> None:
    assert set(LIVE_KEYS) <= set(_flat(Config()))


async def test_role_handlers_answer_status_resync_and_reload() -> None:
    context = ControlContext()
    context.on_status("gateway", lambda: {"clients": 3})

    async def reload() -> dict[str, Any]:
        return {"applied": {"log_level": "debug"}, "needs_restart": []}

    handlers = role_handlers(
        "gateway",
        readiness=Readiness(),
        on_drain=lambda: None,
        context=context,
        reload=reload,
    )
    assert sorted(handlers) == ["drain", "reload", "resync", "status"]
    status = await handle_request(b'{"cmd": "status"}', handlers)
    assert status["ok"] is True
    assert status["clients"] == 3
    assert status["daemon"] == "gateway"
    not_yet = await handle_request(b'{"cmd": "resync", "product": "coinbase:BTC-USD"}', handlers)
    assert not_yet == {"ok": False, "error": "gateway is not connected to NATS yet"}
    missing = await handle_request(b'{"cmd": "resync"}', handlers)
    assert missing["ok"] is False
    assert await handle_request(b'{"cmd": "reload"}', handlers) == {
        "ok": True,
        "applied": {"log_level": "debug"},
        "needs_restart": [],
    }


async def test_a_normalize_process_of_every_shard_reports_each_shard() -> None:
    context = ControlContext()
    context.on_status("normalize-0", lambda: {"ticks_position": 7})
    context.on_status("normalize-1", lambda: {"ticks_position": 9})
    context.on_status("snapshot", lambda: {"md_position": 3})

    async def reload() -> dict[str, Any]:
        return {"applied": {}, "needs_restart": []}

    handlers = role_handlers(
        "normalize", readiness=Readiness(), on_drain=lambda: None, context=context, reload=reload
    )
    status = await handle_request(b'{"cmd": "status"}', handlers)
    assert status["shards"] == {
        "normalize-0": {"ticks_position": 7},
        "normalize-1": {"ticks_position": 9},
    }


# -- collectors ----------------------------------------------------------------------------

TS = 1_700_000_000_000_000_000


def families(collector: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        f.name: [(s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def test_market_gauges_come_from_the_product_state() -> None:
    state = ProductState("coinbase:BTC-USD")
    base = {"product": "coinbase:BTC-USD", "epoch": "e1", "ts_event": TS, "ts_ingest": TS}
    book = Book(
        **base,
        seq=1,
        snapshot=True,
        bids=((Decimal("99"), Decimal("2")), (Decimal("98"), Decimal("1"))),
        asks=((Decimal("101"), Decimal("3")),),
    )
    for event in (
        book,
        Quote(
            **base,
            seq=2,
            bid_price=Decimal("99"),
            bid_size=Decimal("2"),
            ask_price=Decimal("101"),
            ask_size=Decimal("3"),
        ),
        Trade(**base, seq=3, price=Decimal("100.5"), size=Decimal("0.1"), side="buy"),
        Ticker(**base, seq=4, price=Decimal("100.5"), volume_24h=Decimal("1234.5")),
    ):
        state.apply(event)
    got = families(MarketCollector(lambda: {"coinbase:BTC-USD": state}))
    p = {"product": "coinbase:BTC-USD"}
    assert got == {
        "ledgerflux_market_trade_price": [(p, 100.5)],
        "ledgerflux_market_best_price": [(p | {"side": "bid"}, 99.0), (p | {"side": "ask"}, 101.0)],
        "ledgerflux_market_spread": [(p, 2.0)],
        "ledgerflux_market_book_levels": [(p | {"side": "bid"}, 2.0), (p | {"side": "ask"}, 1.0)],
        "ledgerflux_market_depth_size": [(p | {"side": "bid"}, 3.0), (p | {"side": "ask"}, 3.0)],
        "ledgerflux_market_volume_24h": [(p, 1234.5)],
    }


def test_disk_gauges_describe_the_data_dirs_file_system(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    got = families(DiskCollector(tmp_path))
    assert got["ledgerflux_disk_size_bytes"] == [
        ({"path": str(tmp_path)}, float(st.f_blocks * st.f_frsize))
    ]
    ((labels, free),) = got["ledgerflux_disk_free_bytes"]
    assert labels == {"path": str(tmp_path)}
    assert 0 < free <= st.f_blocks * st.f_frsize
    assert families(DiskCollector(tmp_path / "missing")) == {}


# -- CLI --------------------------------------------------------------------------------------


def test_ingest_takes_channels_and_speed_as_documented() -> None:
    args = build_parser().parse_args(["ingest", "--channels", "ticker,level2", "--speed", "4"])
    from ledgerflux.cli import config_from_args

    config = config_from_args(args, env={})
    assert config.ingest.channels == ("ticker", "level2")
    assert config.ingest.replay_speed == 4.0


def test_history_without_a_database_names_both_ways(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--data-dir", str(tmp_path), "history", "coinbase:BTC-USD"], env={})
    assert code == 2
    err = capsys.readouterr().err
    assert "--database-url" in err
    assert f"no {tmp_path / 'postgres'}" in err


def test_the_completion_scripts_list_every_command_and_option() -> None:
    parser = build_parser()
    options = options_by_command(parser)
    script = completion_script(parser, "bash")
    for command, opts in options.items():
        if command:
            assert f"            {command}) COMPREPLY=" in script
        for opt in opts:
            assert opt in script
    assert "--from-archive" in options["replay"]
    assert completion_script(parser, "zsh").startswith("# ledgerflux completion for zsh")


def test_the_bash_completion_completes_commands_and_options(tmp_path: Path) -> None:
    script = tmp_path / "ledgerflux.bash"
    script.write_text(completion_script(build_parser(), "bash"))
    probe = (
        f"source {script}; "
        "COMP_WORDS=(ledgerflux ct); COMP_CWORD=1; _ledgerflux; echo ${COMPREPLY[@]}; "
        "COMP_WORDS=(ledgerflux replay --from); COMP_CWORD=2; _ledgerflux; echo ${COMPREPLY[@]}"
    )
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["ctl", "--from-archive"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_the_zsh_completion_loads_and_registers_itself(tmp_path: Path) -> None:
    script = tmp_path / "ledgerflux.zsh"
    script.write_text(completion_script(build_parser(), "zsh"))
    probe = (
        f"autoload -U compinit && compinit -u -D; source {script}; "
        'print -r -- "${_comps[ledgerflux]}"'
    )
    result = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == ["_bash_complete -F _ledgerflux"]


def test_completion_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"], env={}) == 0
    assert capsys.readouterr().out == completion_script(build_parser(), "bash")


def test_reload_config_diff_names_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "ledgerflux.toml"
    path.write_text("[gateway]\nrequests_per_s = 5.0\nring_size = 10\n")
    new = _flat(load_config(path=path, env={}))
    old = _flat(Config())
    changed = sorted(k for k, v in new.items() if old[k] != v)
    assert changed == ["gateway.requests_per_s", "gateway.ring_size"]
