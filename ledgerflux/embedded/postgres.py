"""Embedded PostgreSQL from the ``pgserver`` wheel (docs/configuration.md).

The cluster lives in ``<data_dir>/postgres`` and listens on a Unix socket only (no TCP
port to collide with). Run as root, pgserver runs the server as a ``pgserver`` system user
that it creates on first use.

The server never outlives its owner unnoticed:

* ``pg_ctl`` puts the postmaster in a session of its own, so a terminal's Ctrl-C reaches
  only the app, which stops the server after its drain;
* a small watchdog process (:mod:`ledgerflux.embedded.pg_watchdog`) holds a pipe from the
  owner and stops the server when the owner dies without doing so (``kill -9``);
* should both be gone (the watchdog killed too, a power cut), the next start finds the
  leftover postmaster through ``postmaster.pid`` and stops it (fast shutdown: committed
  data stays) before starting its own.

pgserver keeps, in the cluster folder, the list of processes using the server and stops it
when the last one lets go. A process killed with SIGKILL never lets go, so before starting
we forget the pids that are no longer alive; a ``postmaster.pid`` left by a killed server is
handled by PostgreSQL itself, except when its pid now belongs to an unrelated process,
which we detect and clear.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from ledgerflux.embedded.pg_watchdog import DONE as WATCHDOG_DONE
from ledgerflux.errors import LedgerfluxError

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "open_postgres",
    "running_postgres",
    "stop_leftover_server",
]

_log = structlog.get_logger(__name__)

_START_ATTEMPTS = 3
"""pg_ctl start is retried: right after a SIGKILL of the postmaster its orphaned backends
may still hold the shared memory block for a moment."""
_START_RETRY_DELAY_S = 0.5
_POSTMASTER_LINES = 8
_SOCKET_DIR_LINE = 4
"""postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem, status."""
_LEFTOVER_STOP_TIMEOUT_S = 15.0
"""Bound on a leftover server's fast shutdown (SIGINT) before immediate shutdown (SIGQUIT)."""
_WATCHDOG_STOP_TIMEOUT_S = 5.0


class EmbeddedPostgresError(LedgerfluxError, RuntimeError):
    """The embedded PostgreSQL could not be started."""


@attrs.frozen
class EmbeddedPostgres:
    url: str
    """libpq URL using the Unix socket directory (user ``postgres``, database ``postgres``)."""
    data_dir: Path
    """The PostgreSQL cluster folder (``<data_dir>/postgres``)."""


def _import_pgserver() -> Any:
    # pgserver asks platformdirs for a runtime dir at import time, which warns when
    # XDG_RUNTIME_DIR is unset (containers, CI); the fallback it uses is fine for us.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ModuleNotFoundError as exc:
            if exc.name != "pgserver":
                raise
            raise EmbeddedPostgresError(
                "embedded PostgreSQL needs the pgserver package, which is not installed in "
                "this environment: install it (a LedgerFlux dependency), or configure "
                "database.url (--database-url, LEDGERFLUX_DATABASE_URL)"
            ) from None

    return pgserver


def _pid_alive(pid: int) -> bool:
    """True for a running process; False for none or a zombie (dead, not yet reaped)."""
    if _is_zombie(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) state ...": comm may hold spaces or parentheses, so split at the last ')'.
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _process_name(pid: int) -> str | None:
    """The process's command name (Linux ``/proc``); None where that is not available."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _live_handles(pgdata: Path) -> list[int]:
    """The live processes in pgserver's list of those using the server; the dead ones are
    forgotten (a process killed with SIGKILL never takes itself off the list)."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        handles.unlink(missing_ok=True)
        return []
    alive = [p for p in pids if isinstance(p, int) and _pid_alive(p)]
    if alive != pids:
        _log.info("embedded_pg.dead_handles_forgotten", pids=sorted(set(pids) - set(alive)))
        handles.write_text(json.dumps(alive))
    return alive


def _running_postmaster(pgdata: Path) -> int | None:
    """The pid of the live postmaster that ``postmaster.pid`` names, if there is one."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    if _pid_alive(pid) and _process_name(pid) in ("postgres", None):
        return pid
    return None


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_leftover_server(pgdata: Path, *, reason: str) -> bool:
    """Stop the server running on *pgdata* that no live process owns (blocking).

    Fast shutdown first (SIGINT: sessions end, open transactions roll back, committed data
    stays), immediate shutdown (SIGQUIT, crash recovery on the next start) after
    _LEFTOVER_STOP_TIMEOUT_S. Returns whether there was a server to stop."""
    pid = _running_postmaster(pgdata)
    if pid is None:
        return False
    _log.warning("embedded_pg.stopping_leftover", pid=pid, pgdata=str(pgdata), reason=reason)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    if not _wait_exit(pid, _LEFTOVER_STOP_TIMEOUT_S):
        _log.warning("embedded_pg.immediate_shutdown", pid=pid, why="ignored a fast shutdown")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        _wait_exit(pid, _LEFTOVER_STOP_TIMEOUT_S)
    return True


def _clear_stale_postmaster_pid(pgdata: Path) -> None:
    pidfile = pgdata / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        if pidfile.exists():
            _log.warning("embedded_pg.pidfile_removed", pidfile=str(pidfile), why="unreadable")
            pidfile.unlink(missing_ok=True)
        return
    if _pid_alive(pid):
        name = _process_name(pid)
        if name is None or name == "postgres":
            return  # a live server: pgserver joins it
        # The pid was reused by an unrelated process: the server that wrote it is dead.
        _log.warning(
            "embedded_pg.pidfile_removed", pidfile=str(pidfile), pid=pid, why=f"pid is {name}"
        )
        pidfile.unlink(missing_ok=True)
    elif len(lines) < _POSTMASTER_LINES or _is_zombie(pid):
        # The server is gone. PostgreSQL replaces a stale lock file itself, but pgserver
        # cannot parse one that a crash cut short, and PostgreSQL as well as pgserver take
        # an unreaped (zombie) postmaster for a running one.
        _log.warning("embedded_pg.pidfile_removed", pidfile=str(pidfile), pid=pid, why="dead pid")
        pidfile.unlink(missing_ok=True)
    else:
        return
    # The socket lock files name the same dead pid; PostgreSQL would refuse to start.
    socket_dirs = {pgdata}
    if len(lines) > _SOCKET_DIR_LINE and lines[_SOCKET_DIR_LINE].strip():
        socket_dirs.add(Path(lines[_SOCKET_DIR_LINE].strip()))
    for folder in socket_dirs:
        for lock in folder.glob(".s.PGSQL.*.lock"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(lock.read_text().splitlines()[0]) == pid:
                    lock.unlink()


def _start(pgdata: Path) -> Any:
    pgserver = _import_pgserver()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(_START_ATTEMPTS):
        # pgserver runs initdb only when PG_VERSION is missing; initdb writes it early, so
        # an attempt that failed half way through initdb would leave a cluster that later
        # attempts start as it is (no "postgres" role, say).
        new_cluster = not (pgdata / "PG_VERSION").exists()
        if pgdata.exists():
            with pgserver.postgres_server.PostgresServer._lock:
                if not _live_handles(pgdata):
                    # A server that no live process uses was left by an owner that died
                    # (and whose watchdog died too): stop it and start our own.
                    stop_leftover_server(pgdata, reason="left running by an owner that is gone")
            _clear_stale_postmaster_pid(pgdata)
        try:
            return pgserver.get_server(pgdata, cleanup_mode="stop")
        except (subprocess.SubprocessError, AssertionError, OSError) as exc:
            last = exc
            # pgserver caches the instance before it has started; a retry must not get it.
            pgserver.postgres_server.PostgresServer._instances.pop(pgdata, None)
            _log.warning("embedded_pg.start_failed", attempt=attempt + 1, error=str(exc))
            if new_cluster and (pgdata / "PG_VERSION").exists():
                # This attempt made the cluster (its initdb may not have finished): it holds
                # no data yet, so the next attempt starts from an empty folder.
                _log.warning("embedded_pg.unfinished_cluster_removed", pgdata=str(pgdata))
                _remove_unfinished_cluster(pgdata)
            time.sleep(_START_RETRY_DELAY_S)
    log_tail = ""
    with contextlib.suppress(OSError):
        log_tail = "\n".join((pgdata / "log").read_text().splitlines()[-10:])
    raise EmbeddedPostgresError(
        f"embedded PostgreSQL in {pgdata} did not start: {last}\n{log_tail}".rstrip()
    )


def _remove_unfinished_cluster(pgdata: Path) -> None:
    """Empty *pgdata* after an initdb that did not finish (the folder itself stays: pgserver
    made it, with its owner)."""
    for entry in pgdata.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _start_watchdog(pgdata: Path) -> subprocess.Popen[bytes]:
    """The process that stops the server if we die without stopping it (see the module
    docstring); only we hold the write end of its stdin."""
    with (pgdata.parent / "postgres-watchdog.log").open("ab") as log_file:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledgerflux.embedded.pg_watchdog",
                str(pgdata),
                str(os.getpid()),
            ],
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )


def _start_owned(pgdata: Path) -> tuple[Any, subprocess.Popen[bytes]]:
    server = _start(pgdata)
    try:
        return server, _start_watchdog(pgdata)
    except BaseException:
        server.cleanup()
        raise


def _stop(server: Any, watchdog: subprocess.Popen[bytes]) -> None:
    try:
        server.cleanup()
    finally:
        assert watchdog.stdin is not None
        with contextlib.suppress(OSError):
            watchdog.stdin.write(WATCHDOG_DONE)
            watchdog.stdin.close()
        try:
            watchdog.wait(_WATCHDOG_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()


@contextlib.contextmanager
def running_postgres(data_dir: Path) -> Iterator[EmbeddedPostgres]:
    """Blocking form of :func:`open_postgres`, for sync code (pytest session fixtures)."""
    pgdata = (data_dir / "postgres").resolve()
    server, watchdog = _start_owned(pgdata)
    try:
        yield EmbeddedPostgres(url=server.get_uri(), data_dir=pgdata)
    finally:
        _stop(server, watchdog)


@asynccontextmanager
async def open_postgres(data_dir: Path) -> AsyncIterator[EmbeddedPostgres]:
    """Start (or join) the embedded PostgreSQL in ``<data_dir>/postgres``; stop it on exit.

    Startup runs in a worker thread that is not abandoned on cancellation: if the caller is
    cancelled (Ctrl-C) while the server starts, we still get the handle and stop it. On
    exit — normal, cancelled, or by an exception — the server is stopped in a shielded
    worker thread (``pg_ctl stop``, fast mode), unless another live process still uses it."""
    pgdata = (data_dir / "postgres").resolve()
    server, watchdog = await trio.to_thread.run_sync(_start_owned, pgdata, abandon_on_cancel=False)
    try:
        yield EmbeddedPostgres(url=server.get_uri(), data_dir=pgdata)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_stop, server, watchdog)
