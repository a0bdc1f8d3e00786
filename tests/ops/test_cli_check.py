"""``ledgerflux DAEMON --check`` and ``up --check``: the deploy files' tests rely on them, so
they must fail, with the daemon's own named error, wherever the daemon would fail to start
for its configuration; and the banner's "watch" command fits how ledgerflux was started."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledgerflux.app import cli_invocation
from ledgerflux.cli import main

NATS = "nats://nats.invalid:4222"
DB = "postgresql://db.invalid/ledgerflux"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["ingest", "--feed", "coinbase", "--nats-url", NATS], {}),
        (["normalize", "--shard", "1", "--nats-url", NATS], {}),
        (["snapshot", "--nats-url", NATS], {"LEDGERFLUX_DATABASE_URL": DB}),
        (["gateway", "--nats-url", NATS, "--database-url", DB], {}),
        (["gateway", "--embedded"], {}),
        (["up"], {}),
    ],
)
def test_check_passes_and_starts_nothing(
    argv: list[str], env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    assert main([*argv, "--check", "--data-dir", str(data_dir)], env=env) == 0
    assert capsys.readouterr().out == f"ok: {argv[0]}\n"
    assert not data_dir.exists()  # no server, no socket, no folder


@pytest.mark.parametrize(
    ("argv", "env", "code", "message"),
    [
        (["snapshot", "--nats-url", NATS], {}, 1, "database.url"),
        (["ingest"], {}, 1, "nats.url"),
        (["ingest", "--feed", "nope", "--nats-url", NATS], {}, 1, "nope"),
        (["normalize", "--shard", "2", "--nats-url", NATS], {}, 2, "normalize.shards"),
        (["gateway", "--port", "http", "--embedded"], {}, 2, "--port"),
        (["up", "--replay", "missing.jsonl"], {}, 1, "missing.jsonl does not exist"),
        (["gateway", "--embedded"], {"LEDGERFLUX_NO_SUCH_KEY": "1"}, 2, "LEDGERFLUX_NO_SUCH_KEY"),
    ],
)
def test_check_fails_as_the_daemon_would(
    argv: list[str],
    env: dict[str, str],
    code: int,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*argv, "--check"], env=env) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_watch_command_under_uv_run() -> None:
    assert cli_invocation("/x/.venv/bin/ledgerflux", {"UV": "/usr/bin/uv"}) == (
        "python3 -m uv run --no-dev ledgerflux"
    )


def test_watch_command_of_a_script_on_path(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "ledgerflux"
    script.parent.mkdir()
    script.write_text("")
    assert cli_invocation(str(script), {}, which=lambda name: str(script)) == "ledgerflux"
    # The same name on PATH is another installation: name this one by its path.
    other = tmp_path / "other"
    assert cli_invocation(str(script), {}, which=lambda name: str(other)) == str(script)
    assert cli_invocation(str(script), {}, which=lambda name: None) == str(script)


def test_watch_command_of_python_dash_m() -> None:
    assert cli_invocation("/src/ledgerflux/__main__.py", {}).endswith(" -m ledgerflux")
