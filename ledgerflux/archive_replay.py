"""Reading the archive back by time range, in order (``ledgerflux replay --from-archive``).

The archive holds one object per (product, epoch) batch, named by the batch's first and
last ``ts_event`` (:mod:`ledgerflux.archive`), so the batches that overlap a range are
found from their names alone. Batches of different products overlap in time; they are
merged by ``ts_event`` (then product, then ``seq``): a batch is opened only once the
merge reaches its first event, so memory holds the batches that overlap the current
time, not the range.
"""

from __future__ import annotations

import datetime as dt
import heapq
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs

from ledgerflux.archive import Archive, LocalArchive, S3Archive, parse_events_key
from ledgerflux.config import ArchiveConfig
from ledgerflux.errors import LedgerfluxError
from ledgerflux.events import Event

__all__ = ["ArchiveSourceError", "archive_from", "iter_archive", "parse_time"]


class ArchiveSourceError(LedgerfluxError):
    """The archive to read does not exist or cannot be named that way."""


def parse_time(value: str | None, flag: str) -> int | None:
    """``2026-11-20T10:00:00Z`` (ISO 8601; no zone means UTC) or integer ns, as ns."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{flag}: expected ISO 8601 (2026-11-20T10:00:00Z) or ns, got {value!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def archive_from(source: str, config: ArchiveConfig) -> Archive:
    """The archive at *source*: ``s3://BUCKET/PREFIX`` (endpoint, region and keys from
    *config*), or a local folder: the archive root (holding ``<prefix>/events``) or the
    prefix folder itself (holding ``events``)."""
    if source.startswith("s3://"):
        bucket, _, prefix = source.removeprefix("s3://").partition("/")
        if not bucket:
            raise ArchiveSourceError(f"expected s3://BUCKET/PREFIX, got {source!r}")
        return S3Archive(
            endpoint=config.s3_endpoint,
            bucket=bucket,
            prefix=prefix.strip("/"),
            region=config.region,
            access_key_id=config.access_key_id,
            secret_access_key=config.secret_access_key,
        )
    path = Path(source)
    if (path / "events").is_dir():
        return LocalArchive(path.parent, prefix=path.name)
    if (path / config.prefix / "events").is_dir():
        return LocalArchive(path, prefix=config.prefix)
    raise ArchiveSourceError(
        f"no archive at {path}: expected {path / 'events'} or {path / config.prefix / 'events'}"
    )


@attrs.frozen(order=True)
class _Next:
    ts_event: int
    product: str
    seq: int
    index: int
    event: Event = attrs.field(order=False)


async def iter_archive(
    archive: Archive,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    product: str | None = None,
    progress: bool = False,
) -> AsyncIterator[Event]:
    """The archived events with ``start_ns <= ts_event <= end_ns`` (of *product*, or all),
    in ``ts_event`` order. *progress* shows the batches read on stderr (tqdm).
    Cancellation stops between two batches."""
    from tqdm import tqdm

    keys = await archive.list_keys(product, start_ns, end_ns)
    firsts = []
    for key in keys:
        parsed = parse_events_key(key)
        assert parsed is not None  # list_keys returns parsed keys only
        firsts.append(parsed.first_ts)
    heap: list[_Next] = []
    counter = 0
    with tqdm(total=len(keys), unit="batch", file=sys.stderr, disable=not progress) as bar:
        opened = 0
        while opened < len(keys) or heap:
            # Open every batch that starts before the earliest event held.
            while opened < len(keys) and (not heap or firsts[opened] <= heap[0].ts_event):
                for event in await archive.read_events(keys[opened]):
                    if (start_ns is None or event.ts_event >= start_ns) and (
                        end_ns is None or event.ts_event <= end_ns
                    ):
                        counter += 1
                        heapq.heappush(
                            heap, _Next(event.ts_event, event.product, event.seq, counter, event)
                        )
                opened += 1
                bar.update(1)
            if heap:
                yield heapq.heappop(heap).event
