"""The common base of LedgerFlux's named startup and runtime errors.

The CLI turns any :class:`LedgerfluxError` into its message and exit code 1 (a
:class:`~ledgerflux.config.ConfigError` exits 2), never a traceback: these errors describe
the operator's environment (a port in use, a server down), not a bug.
"""

from __future__ import annotations

__all__ = ["LedgerfluxError"]


class LedgerfluxError(Exception):
    """Base of every named LedgerFlux error; its message is written for an operator."""
