"""Process-wide metrics every daemon exports, and a summary of the registry for ``ctl status``.

* ``ledgerflux_build_info{version, python}``: always 1; join on it to see which version
  runs where (``* on(instance) group_left(version) ledgerflux_build_info``).
* ``ledgerflux_consumer_pending_messages{consumer}``: messages JetStream still held for a
  stream-order consumer (``normalize-<shard>``, ``snapshot``, ``gateway``) when it
  delivered that consumer's latest batch: the ``num_pending`` of the last message's
  delivery metadata. It is 0 when the consumer is caught up; it does not grow while the
  consumer receives nothing (then the stage's lag and rates say it is stuck).

* ``ledgerflux_disk_free_bytes`` / ``ledgerflux_disk_size_bytes``: the file system that
  holds the data dir (embedded servers, local archive, control sockets), read at scrape
  time (:class:`DiskCollector`).

Per-product labels (``product`` on the ingest metrics, the snapshot and gateway latency
histograms are not per product) cost one time series per product and label value: with
``P`` products the ingestor exports about ``13 * P`` series plus ``12 * P`` histogram
buckets; see docs/operations.md, "Label cost".
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "BUILD_INFO",
    "CONSUMER_PENDING",
    "DiskCollector",
    "observe_pending",
    "register_disk",
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


class DiskCollector(Collector):
    """Free and total bytes of the file system holding *path* (statvfs at each scrape;
    a path that cannot be read exports nothing rather than failing the scrape)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return
        free = GaugeMetricFamily(
            "ledgerflux_disk_free_bytes",
            "Bytes available to LedgerFlux on the data dir's file system",
            labels=["path"],
        )
        free.add_metric([self.path], st.f_bavail * st.f_frsize)
        size = GaugeMetricFamily(
            "ledgerflux_disk_size_bytes", "Size of the data dir's file system", labels=["path"]
        )
        size.add_metric([self.path], st.f_blocks * st.f_frsize)
        yield free
        yield size


_disk: DiskCollector | None = None


def register_disk(path: str | os.PathLike[str], registry: CollectorRegistry = REGISTRY) -> None:
    """Export the data dir's disk space (once per process; a later call moves the path)."""
    global _disk
    if _disk is None:
        _disk = DiskCollector(path)
        registry.register(_disk)
    else:
        _disk.path = os.fspath(path)


def registry_summary(
    prefixes: Iterable[str],
    *,
    labels: Mapping[str, str] | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> dict[str, Any]:
    """The counters and gauges whose names start with one of *prefixes*, for ``ctl status``.

    ``{"counters": {name: total}, "products": [...]}``: each metric summed over its
    labels (histograms give their ``_count``), and every ``product`` label value seen.
    With *labels*, only samples that carry those label values (or not that label at all:
    a ``shard`` filter keeps the shard's series and drops the other shards').
    """
    want = dict(labels or {})
    wanted = tuple(prefixes)
    counters: dict[str, float] = {}
    products: set[str] = set()
    for metric in registry.collect():
        if not metric.name.startswith(wanted):
            continue
        for sample in metric.samples:
            if any(sample.labels.get(k, v) != v for k, v in want.items()):
                continue
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
