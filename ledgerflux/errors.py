"""The common base of LedgerFlux's named startup and runtime errors.

The CLI turns any :class:`LedgerfluxError` into its message and its ``exit_code``, never a
traceback: these errors describe the operator's environment (a port in use, a server down),
not a bug. The exit codes are listed in ``docs/operations.md``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "EXIT_CONFIG",
    "EXIT_DRAIN_INCOMPLETE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "DrainIncomplete",
    "LedgerfluxError",
]

EXIT_ERROR = 1
"""A named startup or runtime error: a server unreachable, a port in use, an unknown feed."""
EXIT_CONFIG = 2
"""A usage or configuration error."""
EXIT_DRAIN_INCOMPLETE = 75
"""The drain did not finish: its deadline passed (or a second signal stopped the process)
with work not yet flushed or acked. Nothing acked is lost; the rest is redelivered on the
next start. 75 is ``EX_TEMPFAIL`` of sysexits.h: try again."""
EXIT_INTERRUPTED = 130
"""Interrupted before the drain machinery ran (KeyboardInterrupt during startup)."""


class LedgerfluxError(Exception):
    """Base of every named LedgerFlux error; its message is written for an operator."""

    exit_code: ClassVar[int] = EXIT_ERROR


class DrainIncomplete(LedgerfluxError):
    """The shutdown drain ended before every stage had flushed and acked its work."""

    exit_code = EXIT_DRAIN_INCOMPLETE
