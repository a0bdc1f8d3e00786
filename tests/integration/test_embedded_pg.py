"""The embedded PostgreSQL (pgserver): start, stop on every kind of exit, recover after crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from ledgerflux.embedded.postgres import EmbeddedPostgres, open_postgres
from ledgerflux.testing.pg_fixtures import server_data_dir

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# A LedgerFlux-like app that owns the embedded server, prints its URL, then waits to be killed.
_APP = """
import sys, time
from collections.abc import Iterator
from pathlib import Path
from ledgerflux.embedded.postgres import running_postgres
with running_postgres(Path(sys.argv[1])) as pg:
    print(pg.url, flush=True)
    time.sleep(120)
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with server_data_dir() as folder:
        yield folder


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().splitlines()[0])


def alive(pid: int) -> bool:
    """Running (a zombie — dead but not yet reaped by its parent — counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def query_one(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT 41 + 1").fetchone()
    assert row is not None
    return int(row[0])


async def wait_dead(pid: int) -> None:
    # Polling: there is no event to wait on for another process's exit.
    while alive(pid):  # noqa: ASYNC110
        await trio.sleep(0.05)


async def run_app_until_ready(data_dir: Path) -> tuple[trio.Process, str]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _APP, str(data_dir)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    received = b""
    while not received.endswith(b"\n"):
        chunk = await proc.stdout.receive_some()
        assert chunk, "the app exited before its database was ready"
        received += chunk
    return proc, received.decode().strip()


async def test_starts_serves_and_stops_on_exit(data_dir: Path) -> None:
    with trio.fail_after(60):
        async with open_postgres(data_dir) as pg:
            assert pg.data_dir == (data_dir / "postgres").resolve()
            assert "host=" in pg.url
            assert await trio.to_thread.run_sync(query_one, pg.url) == 42
            pid = postmaster_pid(pg)
            assert alive(pid)
        await wait_dead(pid)
        # The same data dir starts again, with its data kept.
        async with open_postgres(data_dir) as again:
            assert await trio.to_thread.run_sync(query_one, again.url) == 42
            pid = postmaster_pid(again)
        await wait_dead(pid)


async def test_stops_when_the_app_crashes_or_is_cancelled(data_dir: Path) -> None:
    with trio.fail_after(60):
        pids: list[int] = []

        async def crash() -> None:
            async with open_postgres(data_dir) as pg:
                pids.append(postmaster_pid(pg))
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await crash()
        await wait_dead(pids[0])

        with trio.move_on_after(30) as scope:
            async with open_postgres(data_dir) as pg:
                pid = postmaster_pid(pg)
                scope.cancel()  # what Ctrl-C does to the app's root scope
                await trio.sleep_forever()
        assert scope.cancelled_caught
        await wait_dead(pid)


def watchdogs(pgdata: Path) -> list[int]:
    """Live watchdog processes of the server in *pgdata*."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = (Path("/proc") / pid / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = b"ledgerflux.embedded.pg_watchdog" in cmdline and str(pgdata).encode() in cmdline
        if ours and alive(int(pid)):
            found.append(int(pid))
    return found


async def test_server_dies_with_an_app_that_was_sigkilled(data_dir: Path) -> None:
    """``kill -9`` of the owner: its watchdog stops the server within seconds, and the
    next start brings the cluster back with its data."""
    with trio.fail_after(60):
        app, url = await run_app_until_ready(data_dir)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        pid = int((data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])
        app.send_signal(signal.SIGKILL)
        await app.wait()
        with trio.fail_after(15):
            await wait_dead(pid)
            while watchdogs((data_dir / "postgres").resolve()):  # noqa: ASYNC110
                await trio.sleep(0.05)
        async with open_postgres(data_dir) as pg:
            with psycopg.connect(pg.url) as conn:
                assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]
            new_pid = postmaster_pid(pg)
        await wait_dead(new_pid)


async def test_a_leftover_server_of_a_dead_owner_is_stopped_on_start(data_dir: Path) -> None:
    """Owner and watchdog both SIGKILLed: the server keeps running with nobody owning it.
    The next start finds it through postmaster.pid, stops it (fast shutdown, committed data
    kept) and starts its own, which it stops on exit."""
    with trio.fail_after(90):
        app, url = await run_app_until_ready(data_dir)
        pgdata = (data_dir / "postgres").resolve()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        leftover = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        (watchdog,) = watchdogs(pgdata)
        os.kill(watchdog, signal.SIGKILL)
        app.send_signal(signal.SIGKILL)
        await app.wait()
        await wait_dead(watchdog)
        assert alive(leftover)

        async with open_postgres(data_dir) as pg:
            assert not alive(leftover)
            new_pid = postmaster_pid(pg)
            assert new_pid != leftover
            with psycopg.connect(pg.url) as conn:
                assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]
        await wait_dead(new_pid)
        assert watchdogs(pgdata) == []


async def test_recovers_a_stale_data_dir_after_the_server_was_sigkilled(data_dir: Path) -> None:
    """App and server both die with SIGKILL: postmaster.pid stays behind, and the next
    start recovers the cluster (crash recovery) with its committed data."""
    with trio.fail_after(90):
        app, url = await run_app_until_ready(data_dir)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        pidfile = data_dir / "postgres" / "postmaster.pid"
        server_pid = int(pidfile.read_text().splitlines()[0])
        app.send_signal(signal.SIGKILL)
        await app.wait()
        os.kill(server_pid, signal.SIGKILL)
        await wait_dead(server_pid)
        assert pidfile.exists()

        async with open_postgres(data_dir) as pg:
            with psycopg.connect(pg.url) as conn:
                assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]
            new_pid = postmaster_pid(pg)
            assert new_pid != server_pid
        await wait_dead(new_pid)


async def test_an_initdb_that_failed_half_way_is_redone_on_the_next_attempt(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen on a loaded machine: initdb exited 1 after writing PG_VERSION; the retry skipped
    # initdb and started the unfinished cluster ('role "postgres" does not exist'). An
    # initdb failure half way cannot be produced on demand, so it is injected here.
    import pgserver.postgres_server as pg_server

    real_initdb = pg_server.initdb
    calls = []

    def initdb_failing_once(args: list[str], **kwargs: object) -> object:
        calls.append(args)
        if len(calls) == 1:
            pgdata = Path(str(kwargs["pgdata"]))
            (pgdata / "PG_VERSION").write_text("16\n")
            raise subprocess.CalledProcessError(1, ["initdb", *args])
        return real_initdb(args, **kwargs)

    monkeypatch.setattr(pg_server, "initdb", initdb_failing_once)
    with trio.fail_after(120):
        async with open_postgres(data_dir) as pg:
            assert await trio.to_thread.run_sync(query_one, pg.url) == 42
    assert len(calls) == 2
