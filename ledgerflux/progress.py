"""How far a stream-order consumer got: the position a drain waits for.

The normalizer and the snapshotter read their input stream in stream order from a position
they committed together with their effects (see docs/architecture.md, "Consumers resume
from committed positions"). Each exposes a :class:`Progress`; ``ledgerflux up`` drains a
stage by waiting until its position reaches the last message of its input that exists once
the stage before it has stopped.
"""

from __future__ import annotations

import attrs
import trio

__all__ = ["Progress"]


@attrs.define(eq=False)
class Progress:
    """``position``: every message of ``stream`` matching ``filter_subject`` up to this
    stream sequence has been handled and its effects are durable."""

    stream: str
    filter_subject: str
    position: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)

    def advance(self, position: int) -> None:
        """Move forward to ``position`` (never backward)."""
        if position > self.position:
            self.position = position
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, position: int) -> None:
        """Return once ``self.position >= position``. Cancellable."""
        while self.position < position:
            await self._changed.wait()
