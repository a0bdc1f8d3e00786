"""Child processes for the chaos suite: spawn, ``kill -9``, signal, wait, restart.

A :class:`Child` is one OS process (a daemon, a nats-server node, the S3 server) with its
output appended to a log file. It is started from the Trio thread with
``PR_SET_PDEATHSIG`` so that a harness killed with SIGKILL takes its children along, and in
its own session (``start_new_session``) so that a signal meant for one process group (the
``up`` Ctrl-C fault) reaches exactly that group. :meth:`Child.wait` waits on a pidfd: no
thread, no polling.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import trio

__all__ = ["Child", "free_port", "log_tail"]

_PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 10.0
"""Bound on a graceful stop (SIGTERM) before SIGKILL."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (bind to 0, read, close)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(path: Path, size: int = 2000) -> str:
    """The last ``size`` bytes of a log file, decoded; "" when there is none."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _die_with_parent() -> None:
    # Between fork and exec. PDEATHSIG fires when the forking *thread* exits, which is why
    # children are spawned from the Trio thread and not from a worker thread.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def _wait_exit(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is not None:
        return proc.returncode
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return await trio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    return proc.wait()


@attrs.define(eq=False)
class Child:
    """One restartable child process; the same argv, env and log on every start."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the process (it must not be running). Returns at once."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            out.flush()
            # Forked from the Trio thread on purpose: see _die_with_parent.
            self.proc = subprocess.Popen(
                list(self.argv),
                env=dict(self.env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1

    def send_signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the process (not its group); a no-op when it is not running."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def signal_group(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the process group the child leads (a terminal's Ctrl-C)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    async def wait(self) -> int:
        """Wait for the process to exit; its exit code (negative: killed by that signal)."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return await _wait_exit(self.proc)

    async def kill(self) -> int | None:
        """``kill -9`` and wait for the exit; None when it was not running."""
        if not self.running:
            return None
        self.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            code = await self.wait()
        return code

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Shielded: it always finishes."""
        if not self.running:
            return None
        with trio.CancelScope(shield=True):
            self.send_signal(signal.SIGTERM)
            with trio.move_on_after(timeout_s):
                await self.wait()
            self.send_signal(signal.SIGKILL)
            code = await self.wait()
        return code
