"""systemd ``sd_notify`` for ``Type=notify`` units, without libsystemd.

``READY=1`` is sent when the daemon is really ready (the moment ``/readyz`` turns green),
``STOPPING=1`` when the drain starts, ``WATCHDOG=1`` at half of ``WatchdogSec``. Outside
systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog
import trio
from prometheus_client import Counter

__all__ = ["Notifier", "serve_watchdog"]

log = structlog.get_logger(__name__)

NOTIFY_ERRORS = Counter(
    "ledgerflux_sdnotify_errors_total", "sd_notify datagrams that could not be sent"
)


class Notifier:
    """Sends sd_notify datagrams to ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
    socket). Sending never blocks and never raises: a failure is logged and counted, because
    a missing notification must not take the daemon down (systemd's timeouts will say it)."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_interval_s = watchdog_usec / 1e6 if watchdog_usec else None
        """``WatchdogSec`` in seconds, or None when systemd does not watch this process."""
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A full receive queue must not stall the Trio thread: drop and count instead.
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """A notifier from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        env = os.environ if env is None else env
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        # WATCHDOG_PID names the process systemd watches; a child inheriting the
        # environment must not ping on its parent's behalf.
        if env.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
            try:
                usec = int(env["WATCHDOG_USEC"])
            except ValueError:
                log.warning("sdnotify.bad_watchdog_usec", value=env["WATCHDOG_USEC"])
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, state: str) -> bool:
        """Send one raw state (``"READY=1"``); True if it was sent (or there is no socket)."""
        if self._sock is None or self.address is None:
            return True
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            self._sock.sendto(state.encode(), address)
        except OSError as exc:
            NOTIFY_ERRORS.inc()
            log.warning("sdnotify.send_failed", state=state, error=str(exc))
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        # One line only: a newline would start a new state assignment.
        return self.notify("STATUS=" + text.replace("\n", " "))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def serve_watchdog(
    notifier: Notifier, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Send ``WATCHDOG=1`` at half the watchdog interval until cancelled.

    Returns at once (after ``started``) when systemd does not watch this process.
    Cancellation simply stops the pings; a drain that outlives ``WatchdogSec`` should keep
    this task running, which is why the caller cancels it last.
    """
    task_status.started()
    interval = notifier.watchdog_interval_s
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await trio.sleep(interval / 2)
