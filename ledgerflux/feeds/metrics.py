"""Prometheus metrics of the ingestor, labelled by ``feed`` and ``product``.

Connection-level figures (frames, reconnects) are labelled by ``feed`` only: a frame can
carry several products, or none. A decode error or a refused publish that cannot be tied to
a product is labelled ``product="unknown"``.
Labelled children are cached per product so that the per-event cost is one dict lookup.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["FeedMetrics"]

_LABELS = ("feed", "product")
UNKNOWN_PRODUCT = "unknown"

FRAMES = Counter("ledgerflux_ingest_frames", "WebSocket frames received", ("feed",))
EVENTS = Counter("ledgerflux_ingest_events", "Canonical events decoded", _LABELS)
DECODE_ERRORS = Counter(
    "ledgerflux_ingest_decode_errors", "Frames or parts of frames sent to the DLQ", _LABELS
)
GAPS = Counter("ledgerflux_ingest_gaps", "Exchange sequence gaps detected", _LABELS)
RESYNCS = Counter("ledgerflux_ingest_resyncs", "Completed resyncs", _LABELS)
RECONNECTS = Counter("ledgerflux_ingest_reconnects", "Connections lost and retried", ("feed",))
DUPLICATES = Counter(
    "ledgerflux_ingest_duplicates_dropped", "Events dropped as duplicate or out of order", _LABELS
)
DROPPED = Counter(
    "ledgerflux_ingest_overflow_dropped",
    "Frames dropped because the bus was slower than the feed (the product is resynced)",
    _LABELS,
)
STALE_SECONDS = Counter(
    "ledgerflux_ingest_stale_seconds", "Seconds products spent stale or resyncing", _LABELS
)
LAG = Histogram(
    "ledgerflux_ingest_lag_seconds",
    "ts_ingest - ts_event of decoded events",
    _LABELS,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SPLIT_MESSAGES = Counter(
    "ledgerflux_ingest_split_messages",
    "Messages larger than the bus's max_payload, split (book snapshots into parts)",
    _LABELS,
)
PUBLISH_REFUSED = Counter(
    "ledgerflux_ingest_publish_refused",
    "Messages the bus refused for good (sent to the DLQ, never retried), by reason",
    (*_LABELS, "reason"),
)
BOOK_CHECKS = Counter(
    "ledgerflux_ingest_book_check_failures",
    "Book verification failures by reason (checksum mismatch), each resynced or backed off",
    (*_LABELS, "reason"),
)
BUFFER_DEPTH = Gauge("ledgerflux_ingest_buffer_frames", "Frames waiting for the bus", ("feed",))


class FeedMetrics:
    """The metrics of one running feed."""

    def __init__(self, feed: str) -> None:
        self.feed = feed
        self.buffer_depth = BUFFER_DEPTH.labels(feed)
        self._frames = FRAMES.labels(feed)

    def frame(self) -> None:
        self._frames.inc()

    def events(self, product: str, count: int) -> None:
        EVENTS.labels(self.feed, product).inc(count)

    def lag(self, product: str, seconds: float) -> None:
        LAG.labels(self.feed, product).observe(seconds)

    def decode_error(self, product: str | None) -> None:
        DECODE_ERRORS.labels(self.feed, product or UNKNOWN_PRODUCT).inc()

    def gap(self, product: str) -> None:
        GAPS.labels(self.feed, product).inc()

    def resync(self, product: str) -> None:
        RESYNCS.labels(self.feed, product).inc()

    def reconnect(self) -> None:
        RECONNECTS.labels(self.feed).inc()

    def duplicates(self, product: str, count: int) -> None:
        DUPLICATES.labels(self.feed, product).inc(count)

    def dropped(self, product: str, count: int) -> None:
        DROPPED.labels(self.feed, product).inc(count)

    def split(self, product: str) -> None:
        SPLIT_MESSAGES.labels(self.feed, product).inc()

    def publish_refused(self, product: str | None, reason: str) -> None:
        PUBLISH_REFUSED.labels(self.feed, product or UNKNOWN_PRODUCT, reason).inc()

    def checksum_mismatch(self, product: str) -> None:
        BOOK_CHECKS.labels(self.feed, product, "checksum").inc()

    def stale_seconds(self, product: str, seconds: float) -> None:
        STALE_SECONDS.labels(self.feed, product).inc(max(seconds, 0.0))
