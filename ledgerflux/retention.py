"""History retention: drop the day partitions of ``md_history`` that have expired.

Runs next to the snapshotter (in ``ledgerflux up`` and in ``ledgerflux snapshot``): one
round at start, then one every ``database.retention_interval_s``. A round keeps
``database.history_retention_days`` whole days before today (UTC) and drops older partitions
(``Store.apply_retention``). Several snapshotters may run it at once: the store serialises
partition DDL under an advisory lock and dropping is idempotent.

A failed round (database down, lock timeout) is logged and counted, and the next round tries
again; it never stops the daemon.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog
import trio
from prometheus_client import Counter

from ledgerflux.config import Config
from ledgerflux.errors import LedgerfluxError

__all__ = ["RETENTION_DROPPED", "RETENTION_ERRORS", "RetentionStore", "serve_retention"]

log = structlog.get_logger(__name__)

RETENTION_DROPPED = Counter(
    "ledgerflux_retention_partitions_dropped", "History day partitions dropped by retention"
)
RETENTION_ERRORS = Counter("ledgerflux_retention_errors", "Retention rounds that failed")
RETENTION_ROUNDS = Counter("ledgerflux_retention_rounds", "Retention rounds that completed")


class RetentionStore(Protocol):
    async def apply_retention(self, now_ns: int) -> int: ...


async def serve_retention(
    config: Config,
    *,
    store: RetentionStore,
    clock: Callable[[], int] = time.time_ns,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply retention at start and then every ``config.database.retention_interval_s``,
    until cancelled. Reports started at once: readiness never waits for a round.

    *clock* gives the wall-clock time in ns since the Unix epoch (partitions are UTC days).
    Cancellation cancels a running round (its transaction rolls back, nothing half-dropped).
    """
    interval = config.database.retention_interval_s
    days = config.database.history_retention_days
    task_status.started()
    while True:
        try:
            dropped = await store.apply_retention(clock())
        except LedgerfluxError as exc:
            RETENTION_ERRORS.inc()
            log.warning("retention.failed", error=str(exc), retry_in_s=interval)
        else:
            RETENTION_ROUNDS.inc()
            RETENTION_DROPPED.inc(dropped)
            if dropped:
                log.info("retention.dropped", partitions=dropped, keep_days=days)
        await trio.sleep(interval)
