"""Embedded nats-server and PostgreSQL in a helper process of their own, for benchmarks:
their start is not timed and their CPU can be told from the measured processes'."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

__all__ = ["HelperServers", "helper_servers"]

_POLL_S = 0.05
_STOP_TIMEOUT_S = 30.0

_CODE = (
    "import sys, trio\n"
    "from pathlib import Path\n"
    "from ledgerflux.embedded.nats import open_nats_server\n"
    "from ledgerflux.embedded.postgres import open_postgres\n"
    "async def main():\n"
    "    d = Path(sys.argv[1])\n"
    "    async with open_nats_server(d) as n, open_postgres(d) as pg:\n"
    "        Path(sys.argv[2]).write_text(n.url + '\\n' + pg.url)\n"
    "        await trio.sleep_forever()\n"
    "trio.run(main)\n"
)


@attrs.frozen
class HelperServers:
    nats_url: str
    database_url: str
    pid: int
    """The helper process (nats-server is its child)."""
    folder: Path
    """Where the servers keep their data."""


@contextlib.contextmanager
def helper_servers(prefix: str, timeout_s: float) -> Iterator[HelperServers]:
    """Start the servers in a child process, wait up to *timeout_s* for their URLs, and stop
    them (SIGINT, so they stop cleanly) on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        folder = Path(name)
        ready = folder / "urls"
        proc = subprocess.Popen(
            [sys.executable, "-c", _CODE, str(folder), str(ready)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout_s
            # Both lines: the file may be seen before it is whole.
            while not ready.exists() or len(ready.read_text().splitlines()) < 2:
                if proc.poll() is not None:
                    raise RuntimeError(f"embedded servers exited {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError("embedded servers not up in time")
                time.sleep(_POLL_S)
            nats_url, database_url = ready.read_text().splitlines()
            yield HelperServers(nats_url, database_url, proc.pid, folder)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
