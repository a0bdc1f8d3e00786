"""Stops the embedded PostgreSQL when the process that owns it dies without stopping it.

``pg_ctl`` daemonizes the postmaster, so it is not a child of its owner and
``PR_SET_PDEATHSIG`` cannot tie the two together. Instead the owner starts this small
process (in a session of its own, so a terminal's Ctrl-C does not reach it) with a pipe on
its stdin whose write end only the owner holds:

* the owner stops the server itself, then writes ``b"done"`` and closes the pipe: the
  watchdog exits doing nothing;
* the owner dies in any way (``kill -9`` included): the kernel closes the pipe, the
  watchdog reads end-of-file, takes the owner out of pgserver's list of processes using the
  server, and when no live process is left on it stops the server (``pg_ctl stop``, fast
  mode: open transactions roll back, committed data stays).

Run as ``python -m ledgerflux.embedded.pg_watchdog PGDATA OWNER_PID``.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["DONE", "main"]

DONE = b"done"
"""What a well-behaved owner writes before closing the pipe."""


def _stop_if_unused(pgdata: Path, owner: int) -> None:
    from ledgerflux.embedded.postgres import (
        _import_pgserver,
        _live_handles,
        _log,
        stop_leftover_server,
    )

    pgserver = _import_pgserver()
    with pgserver.postgres_server.PostgresServer._lock:
        others = [pid for pid in _live_handles(pgdata) if pid != owner]
        if others:
            _log.info("embedded postgres: owner %d died; still used by %s", owner, others)
            return
        stop_leftover_server(pgdata, reason=f"its owner (pid {owner}) died")


def main(argv: list[str]) -> int:
    pgdata, owner = Path(argv[0]), int(argv[1])
    message = sys.stdin.buffer.read()  # blocks until the owner closes the pipe or dies
    if message == DONE:
        return 0
    _stop_if_unused(pgdata, owner)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
