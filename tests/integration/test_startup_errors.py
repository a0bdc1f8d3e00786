"""Startup errors are reported before any server starts, as one clear line and an exit code.

Each case runs the real command line in a fresh data dir and checks that the error names the
thing to fix and that no embedded server was started (nothing written to the data dir).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from ledgerflux.errors import EXIT_CONFIG, EXIT_ERROR

UNREACHABLE_NATS = "nats://127.0.0.1:1"


def clean_env(data_dir: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
    return env | {"LEDGERFLUX_DATA_DIR": str(data_dir), **more}


async def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "ledgerflux", *args],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def started_servers(data_dir: Path) -> list[str]:
    """What an embedded server leaves in the data dir once started."""
    names = ("nats", "nats-server.log", "postgres", "postgres-watchdog.log")
    return [name for name in names if (data_dir / name).exists()]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_up_with_an_unknown_feed_fails_before_servers_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = await run(["up"], clean_env(data_dir, LEDGERFLUX_INGEST__FEED="nosuch"))
    stderr = done.stderr.decode()
    assert done.returncode == EXIT_ERROR, stderr
    assert "unknown feed 'nosuch'" in stderr
    assert "replay" in stderr  # the installed feeds are listed
    assert "Traceback" not in stderr
    assert started_servers(data_dir) == []


async def test_up_with_a_taken_port_fails_before_servers_start(
    tmp_path: Path, taken_port: int
) -> None:
    data_dir = tmp_path / "data"
    done = await run(["up", "--port", str(taken_port)], clean_env(data_dir))
    stderr = done.stderr.decode()
    assert done.returncode == EXIT_ERROR, stderr
    assert f"127.0.0.1:{taken_port} (gateway.port): address already in use" in stderr
    assert started_servers(data_dir) == []


async def test_up_with_a_bad_port_fails_before_servers_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = await run(["up", "--port", "70000"], clean_env(data_dir))
    stderr = done.stderr.decode()
    assert done.returncode == EXIT_CONFIG, stderr
    assert "gateway.port" in stderr
    assert "--port" in stderr
    assert started_servers(data_dir) == []


async def test_ingest_with_an_unknown_feed_fails_before_connecting(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(data_dir, LEDGERFLUX_NATS_URL=UNREACHABLE_NATS)
    done = await run(["ingest", "--feed", "nosuch"], env)
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == EXIT_ERROR, output
    assert "unknown feed 'nosuch'" in output
    assert "connect" not in output  # no NATS connect was tried


async def test_gateway_with_a_taken_port_fails_before_connecting(
    tmp_path: Path, taken_port: int
) -> None:
    env = clean_env(
        tmp_path / "data",
        LEDGERFLUX_NATS_URL=UNREACHABLE_NATS,
        LEDGERFLUX_DATABASE_URL="postgresql://127.0.0.1:1/none",
    )
    done = await run(["gateway", "--port", str(taken_port)], env)
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == EXIT_ERROR, output
    assert f"127.0.0.1:{taken_port} (gateway.port): address already in use" in output
    assert "connect" not in output


@pytest.mark.parametrize(
    ("daemon", "missing"),
    [
        (["snapshot"], "database.url"),
        (["gateway", "--port", "0"], "database.url"),
        (["ingest"], "nats.url"),
        (["normalize", "--shard", "0"], "nats.url"),
    ],
)
async def test_split_daemon_without_a_url_never_embeds_a_server(
    tmp_path: Path, daemon: list[str], missing: str
) -> None:
    data_dir = tmp_path / "data"
    # The NATS URL is set for the database cases, so only the database one is missing.
    more = {} if missing == "nats.url" else {"LEDGERFLUX_NATS_URL": UNREACHABLE_NATS}
    done = await run(daemon, clean_env(data_dir, **more))
    stderr = done.stderr.decode()
    assert done.returncode == EXIT_ERROR, stderr
    assert f"{daemon[0]} needs the URL of" in stderr
    assert missing in stderr
    assert "--embedded" in stderr
    assert started_servers(data_dir) == []


async def test_unreachable_nats_is_a_clear_error_naming_the_url(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "data", LEDGERFLUX_NATS_URL=UNREACHABLE_NATS)
    done = await run(["normalize", "--shard", "0"], env)
    stderr = done.stderr.decode()
    assert done.returncode == EXIT_ERROR, stderr
    assert f"cannot connect to NATS at {UNREACHABLE_NATS}" in stderr
    assert "Traceback" not in stderr
