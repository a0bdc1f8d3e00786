"""Process-wide metrics every daemon exports, and a summary of the registry for ``ctl status``.

* ``ledgerflux_build_info{version, python}``: always 1; join on it to see which version
  runs where (``* on(instance) group_left(version) ledgerflux_build_info``).
* ``ledgerflux_consumer_pending_messages{consumer}``: messages JetStream still held for a
  stream-order consumer (``normalize-<shard>``, ``snapshot``, ``gateway``) when it
  delivered that consumer's latest batch: the ``num_pending`` of the last message's
  delivery metadata. It is 0 when the consumer is caught up; it does not grow while the
  consumer receives nothing (then the stage's lag and rates say it is stuck).

Per-product labels (``product`` on the ingest metrics, the snapshot and gateway latency
histograms are not per product) cost one time series per product and label value: with
``P`` products the ingestor exports about ``13 * P`` series plus ``12 * P`` histogram
buckets; see docs/operations.md, "Label cost".
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Info

__all__ = [
    "BUILD_INFO",
    "CONSUMER_PENDING",
    "observe_pending",
    "registry_summary",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ledgerflux")
    except PackageNotFoundError:  # pragma: no cover - a bare checkout
        return "unknown"


BUILD_INFO = Info("ledgerflux_build", "The LedgerFlux version and Python this process runs")
BUILD_INFO.info({"version": _version(), "python": platform.python_version()})

CONSUMER_PENDING = Gauge(
    "ledgerflux_consumer_pending_messages",
    "Messages JetStream still held for this stream-order consumer at its last delivery",
    ["consumer"],
)


def observe_pending(consumer: str, num_pending: int | None) -> None:
    """Record a delivery's ``num_pending`` (None: not a JetStream delivery, ignored)."""
    if num_pending is not None:
        CONSUMER_PENDING.labels(consumer).set(num_pending)


def registry_summary(
    prefixes: Iterable[str], registry: CollectorRegistry = REGISTRY
) -> dict[str, Any]:
    """The counters and gauges whose names start with one of *prefixes*, for ``ctl status``.

    ``{"counters": {name: total}, "products": [...]}``: each metric summed over its
    labels (histograms give their ``_count``), and every ``product`` label value seen.
    """
    wanted = tuple(prefixes)
    counters: dict[str, float] = {}
    products: set[str] = set()
    for metric in registry.collect():
        if not metric.name.startswith(wanted):
            continue
        for sample in metric.samples:
            product = sample.labels.get("product")
            if product:
                products.add(product)
            if sample.name.endswith(("_created", "_bucket", "_sum")):
                continue
            counters[sample.name] = counters.get(sample.name, 0.0) + sample.value
    return {
        "counters": {name: _number(value) for name, value in sorted(counters.items())},
        "products": sorted(products),
    }


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else round(value, 6)
