"""Archive of canonical events and state snapshots: S3/MinIO, or a local folder.

See docs/architecture.md, "Snapshotter".

Both backends use the same key layout, and keys sort by time::

    <prefix>/events/<exchange>/<symbol>/<YYYY>/<MM>/<DD>/<first>-<last>-<epoch>-<first seq>.jsonl.gz
    <prefix>/state/<YYYY>/<MM>/<DD>/<ts>.json.gz

``<first>``/``<last>`` are the smallest and largest ``ts_event`` of the batch (ns, zero-padded
to 19 digits, so string order is time order); the day folders are the UTC day of
``<first>``. The name alone lets ``ledgerflux replay`` pick the batches that overlap a time
range without opening them. Tokens are made key-safe like subject tokens (characters outside
``[A-Za-z0-9_-]``, plus ``.`` in epochs, become ``_``).

An events object is gzip'd JSON lines, one canonical wire event per line (the codec's
form). A state object is gzip'd JSON ``{"ts": <ns>, "states": [StateRow as JSON, ...]}``.
Writing the same batch twice writes the same key with the same bytes: archiving is
idempotent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import orjson
import trio

from ledgerflux.codec import CodecError, decode, encode
from ledgerflux.config import ArchiveConfig
from ledgerflux.errors import LedgerfluxError
from ledgerflux.events import Event
from ledgerflux.store import StateRow
from ledgerflux.subjects import split_product, subject_token

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "Archive",
    "ArchiveError",
    "EventsKey",
    "LocalArchive",
    "S3Archive",
    "events_key",
    "open_archive",
    "parse_events_key",
    "state_key",
]

T = TypeVar("T")

_TS_WIDTH = 19
_EPOCH_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_EVENTS_NAME = re.compile(r"^(\d{19})-(\d{19})-(.+)-(\d+)\.jsonl\.gz$")
_STATE_NAME = re.compile(r"^(\d{19})\.json\.gz$")


class ArchiveError(LedgerfluxError):
    """An archive object could not be written, found or read (the message names the key)."""


class Archive(Protocol):
    """Where the snapshotter archives event batches and state snapshots.

    Writes wait for the object to be stored even when cancelled (a half-sent object is
    never visible: S3 puts are atomic, local files are renamed into place); reads and
    listings are abandoned on cancellation."""

    async def put_events(self, product: str, events: Sequence[Event]) -> str:
        """Store one batch of one product's events (one epoch); returns its key."""
        ...

    async def put_state_snapshot(self, ts_ns: int, states: Sequence[StateRow]) -> str: ...

    async def list_keys(
        self, product: str | None = None, start_ns: int | None = None, end_ns: int | None = None
    ) -> list[str]:
        """Event-batch keys (of ``product``, or all) whose ``ts_event`` range overlaps
        ``[start_ns, end_ns]``, in time order (first ``ts_event``, then key)."""
        ...

    async def read_events(self, key: str) -> list[Event]: ...

    async def list_state_keys(
        self, start_ns: int | None = None, end_ns: int | None = None
    ) -> list[str]: ...

    async def read_state_snapshot(self, key: str) -> tuple[int, list[StateRow]]: ...


@attrs.frozen
class EventsKey:
    exchange: str
    symbol: str
    first_ts: int
    last_ts: int
    epoch: str
    first_seq: int


def _day_path(ts_ns: int) -> str:
    day = dt.datetime.fromtimestamp(ts_ns // 1_000_000_000, tz=dt.UTC)
    return f"{day:%Y/%m/%d}"


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def events_key(prefix: str, events: Sequence[Event]) -> str:
    """The key of a batch of events of one product and one epoch (raises ValueError)."""
    if not events:
        raise ValueError("an events batch must not be empty")
    first = events[0]
    if any(e.product != first.product or e.epoch != first.epoch for e in events):
        raise ValueError("an events batch must hold one product and one epoch")
    exchange, symbol = split_product(first.product)
    lo = min(e.ts_event for e in events)
    hi = max(e.ts_event for e in events)
    if lo < 0:
        raise ValueError(f"ts_event before 1970 cannot be archived: {lo}")
    epoch = _EPOCH_UNSAFE.sub("_", first.epoch) or "_"
    name = f"{lo:0{_TS_WIDTH}d}-{hi:0{_TS_WIDTH}d}-{epoch}-{first.seq}.jsonl.gz"
    return _join(
        prefix, "events", subject_token(exchange), subject_token(symbol), _day_path(lo), name
    )


def parse_events_key(key: str) -> EventsKey | None:
    """The parts of an events key; None for a key that is not one."""
    parts = key.split("/")
    if len(parts) < 7 or parts[-7] != "events":
        return None
    match = _EVENTS_NAME.match(parts[-1])
    if match is None:
        return None
    return EventsKey(
        exchange=parts[-6],
        symbol=parts[-5],
        first_ts=int(match.group(1)),
        last_ts=int(match.group(2)),
        epoch=match.group(3),
        first_seq=int(match.group(4)),
    )


def state_key(prefix: str, ts_ns: int) -> str:
    if ts_ns < 0:
        raise ValueError(f"a state snapshot time before 1970 cannot be archived: {ts_ns}")
    return _join(prefix, "state", _day_path(ts_ns), f"{ts_ns:0{_TS_WIDTH}d}.json.gz")


def _encode_events(events: Sequence[Event]) -> bytes:
    # mtime=0: the same batch gives the same bytes, so a re-archived batch is identical.
    return gzip.compress(b"".join(encode(e) + b"\n" for e in events), mtime=0)


def _decode_events(key: str, data: bytes) -> list[Event]:
    try:
        lines = gzip.decompress(data).splitlines()
        return [decode(line) for line in lines if line.strip()]
    except (OSError, EOFError, CodecError) as exc:
        raise ArchiveError(f"archive object {key} is not a valid events batch: {exc}") from exc


def _encode_state(ts_ns: int, states: Sequence[StateRow]) -> bytes:
    body = {"ts": ts_ns, "states": [attrs.asdict(s) for s in states]}
    return gzip.compress(orjson.dumps(body, default=str), mtime=0)


def _decode_state(key: str, data: bytes) -> tuple[int, list[StateRow]]:
    try:
        body = orjson.loads(gzip.decompress(data))
        return int(body["ts"]), [StateRow(**s) for s in body["states"]]
    except (OSError, EOFError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ArchiveError(f"archive object {key} is not a valid state snapshot: {exc}") from exc


def _overlaps(key: EventsKey, start_ns: int | None, end_ns: int | None) -> bool:
    return (start_ns is None or key.last_ts >= start_ns) and (
        end_ns is None or key.first_ts <= end_ns
    )


class _KeyValueArchive:
    """The archive logic over three blocking primitives that a backend provides."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    # Backend primitives, called in worker threads.
    def _put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def _get(self, key: str) -> bytes:
        raise NotImplementedError

    def _list(self, prefix: str) -> list[str]:
        raise NotImplementedError

    async def _write(self, fn: Callable[[], None]) -> None:
        # Not abandoned: a cancelled caller still waits until the object is stored (or the
        # request failed), so no write outlives the task that asked for it.
        await trio.to_thread.run_sync(fn, abandon_on_cancel=False)

    async def _read(self, fn: Callable[[], T]) -> T:
        # Reads have no side effects: on cancellation the worker's result is dropped.
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)

    async def put_events(self, product: str, events: Sequence[Event]) -> str:
        if any(e.product != product for e in events):
            raise ValueError(f"every event of the batch must be of {product}")
        key = events_key(self._prefix, events)
        data = _encode_events(events)
        await self._write(lambda: self._put(key, data))
        return key

    async def put_state_snapshot(self, ts_ns: int, states: Sequence[StateRow]) -> str:
        key = state_key(self._prefix, ts_ns)
        data = _encode_state(ts_ns, states)
        await self._write(lambda: self._put(key, data))
        return key

    async def list_keys(
        self, product: str | None = None, start_ns: int | None = None, end_ns: int | None = None
    ) -> list[str]:
        if product is None:
            where = _join(self._prefix, "events") + "/"
        else:
            exchange, symbol = split_product(product)
            where = (
                _join(self._prefix, "events", subject_token(exchange), subject_token(symbol)) + "/"
            )
        found: list[tuple[int, str]] = []
        for key in await self._read(lambda: self._list(where)):
            parsed = parse_events_key(key)
            if parsed is not None and _overlaps(parsed, start_ns, end_ns):
                found.append((parsed.first_ts, key))
        return [key for _, key in sorted(found)]

    async def read_events(self, key: str) -> list[Event]:
        return _decode_events(key, await self._read(lambda: self._get(key)))

    async def list_state_keys(
        self, start_ns: int | None = None, end_ns: int | None = None
    ) -> list[str]:
        where = _join(self._prefix, "state") + "/"
        found: list[tuple[int, str]] = []
        for key in await self._read(lambda: self._list(where)):
            match = _STATE_NAME.match(key.rpartition("/")[2])
            if match is None:
                continue
            ts = int(match.group(1))
            if (start_ns is None or ts >= start_ns) and (end_ns is None or ts <= end_ns):
                found.append((ts, key))
        return [key for _, key in sorted(found)]

    async def read_state_snapshot(self, key: str) -> tuple[int, list[StateRow]]:
        return _decode_state(key, await self._read(lambda: self._get(key)))


class LocalArchive(_KeyValueArchive):
    """The archive in a local folder (no S3 endpoint configured): ``<root>/<key>``."""

    def __init__(self, root: Path, prefix: str = "archive") -> None:
        super().__init__(prefix)
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ArchiveError(f"archive key escapes the archive folder: {key}")
        return path

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write aside, then rename: a reader never sees a partial object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ArchiveError(f"no archive object {key} in {self.root}") from None

    def _list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return [
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        ]


class S3Archive(_KeyValueArchive):
    """The archive in an S3 bucket (AWS or MinIO). boto3 runs in worker threads; the bucket
    is created on first use if it does not exist.

    The boto3 client is made on first use too, in the worker thread of that call: importing
    boto3 and loading its service model take about a second of CPU, which a snapshotter
    would otherwise pay before it is ready (its first archive write comes later)."""

    def __init__(
        self,
        *,
        endpoint: str | None,
        bucket: str,
        prefix: str = "archive",
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        super().__init__(prefix)
        self.bucket = bucket
        self._endpoint = endpoint
        self._region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._client_lock = threading.Lock()
        self._s3: S3Client | None = None
        self._bucket_ready = False

    @property
    def _client(self) -> S3Client:
        with self._client_lock:
            if self._s3 is None:
                self._s3 = self._make_client()
            return self._s3

    def _make_client(self) -> S3Client:
        import boto3
        from botocore.config import Config as BotoConfig

        try:
            return boto3.client(
                "s3",
                endpoint_url=self._endpoint,
                region_name=self._region,
                aws_access_key_id=self._access_key_id,
                aws_secret_access_key=self._secret_access_key,
                config=BotoConfig(
                    # Path-style addressing works with MinIO and any endpoint without DNS.
                    s3={"addressing_style": "path"},
                    connect_timeout=5,
                    read_timeout=30,
                    retries={"max_attempts": 3, "mode": "standard"},
                ),
            )
        except ValueError as exc:  # botocore: "Invalid endpoint: ..."
            raise ArchiveError(f"S3 client for {self._endpoint}: {exc}") from exc

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self._region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
            try:
                self._client.create_bucket(**kwargs)
            except ClientError as create_exc:
                # Another process created it between our two calls: fine.
                if _error_code(create_exc) != "BucketAlreadyOwnedByYou":
                    raise
        self._bucket_ready = True

    def _put(self, key: str, data: bytes) -> None:
        with _s3_errors(f"writing {key} to bucket {self.bucket}"):
            self._ensure_bucket()
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def _get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        with _s3_errors(f"reading {key} from bucket {self.bucket}"):
            try:
                return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if _error_code(exc) in {"NoSuchKey", "404", "NoSuchBucket"}:
                    raise ArchiveError(f"no archive object {key} in bucket {self.bucket}") from None
                raise

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with _s3_errors(f"listing {prefix} in bucket {self.bucket}"):
            self._ensure_bucket()
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []) if "Key" in obj)
        return keys


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """botocore's errors (unreachable endpoint, denied, ...) as :class:`ArchiveError`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise ArchiveError(f"S3 error {what}: {exc}") from exc


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def open_archive(config: ArchiveConfig, data_dir: Path) -> Archive:
    """The configured archive: S3 when ``config.s3_endpoint`` is set, else a local folder
    (``config.local_dir``, default ``<data_dir>/archive``) with the same key layout."""
    if config.s3_endpoint is None:
        root = Path(config.local_dir) if config.local_dir else data_dir / "archive"
        return LocalArchive(root, prefix=config.prefix)
    return S3Archive(
        endpoint=config.s3_endpoint,
        bucket=config.bucket,
        prefix=config.prefix,
        region=config.region,
        access_key_id=config.access_key_id,
        secret_access_key=config.secret_access_key,
    )
