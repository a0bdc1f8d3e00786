"""SIGTERM/SIGINT: the first signal starts an orderly drain, a second one stops at once."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable

import attrs
import structlog
import trio

__all__ = ["Drain", "serve_drain_signals"]

log = structlog.get_logger(__name__)

SAME_REQUEST_S = 1.0
"""The same signal again sooner than this after the first is the same request (a
terminal's Ctrl-C reaching the app both directly and through a wrapper that forwards it),
not a person asking to stop at once. Another signal (SIGTERM after SIGINT) always is."""


@attrs.frozen
class Drain:
    """A drain request shared by the app's stages: stop input, finish in-flight work within
    ``deadline_s``, flush. ``request`` is safe to call more than once."""

    deadline_s: float = 10.0
    requested: trio.Event = attrs.field(factory=trio.Event)

    def request(self) -> None:
        self.requested.set()

    @property
    def is_requested(self) -> bool:
        return self.requested.is_set()


async def serve_drain_signals(
    on_drain: Callable[[], None],
    cancel_scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Receive SIGTERM and SIGINT until cancelled. The first calls *on_drain* (which must
    not block: it sets events); a second one — another signal, or the same one at least
    :data:`SAME_REQUEST_S` later — cancels *cancel_scope* at once and returns.

    While this runs, Ctrl-C does not raise KeyboardInterrupt: it drains. Must run in the
    main thread (Python delivers signals there). On return SIGINT is ignored: the
    process is shutting down, and a Ctrl-C forwarded late must not interrupt that.
    """
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            await _receive(signals, on_drain, cancel_scope)
    finally:
        # The process is on its way out after a drain: a Ctrl-C forwarded late (``uv run``)
        # must not interrupt the last steps of shutting down with a KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


async def _receive(
    signals: AsyncIterator[int], on_drain: Callable[[], None], cancel_scope: trio.CancelScope
) -> None:
    draining_since: float | None = None
    first: int | None = None
    async for signum in signals:
        name = signal.Signals(signum).name
        now = trio.current_time()
        if draining_since is None:
            draining_since, first = now, signum
            log.info("signal.drain", signal=name)
            on_drain()
        elif signum == first and now - draining_since < SAME_REQUEST_S:
            # One Ctrl-C, delivered twice: the terminal signals the whole process group
            # and a wrapper in it (``uv run``) forwards the same SIGINT to its child.
            log.info("signal.repeated", signal=name, after_s=round(now - draining_since, 3))
        else:
            log.warning("signal.stop_now", signal=name)
            cancel_scope.cancel()
            return
