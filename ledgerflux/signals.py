"""SIGTERM/SIGINT: the first signal starts an orderly drain, a second one stops at once."""

from __future__ import annotations

import signal
from collections.abc import Callable

import attrs
import structlog
import trio

__all__ = ["Drain", "serve_drain_signals"]

log = structlog.get_logger(__name__)


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
    not block: it sets events), a second cancels *cancel_scope* at once and returns.

    While this runs, Ctrl-C does not raise KeyboardInterrupt: it drains. Must run in the
    main thread (Python delivers signals there). Cancellation restores the previous
    handlers.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        draining = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if not draining:
                draining = True
                log.info("signal.drain", signal=name)
                on_drain()
            else:
                log.warning("signal.stop_now", signal=name)
                cancel_scope.cancel()
                return
