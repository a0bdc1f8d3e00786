"""PostgreSQL store: event history and latest state per product (docs/architecture.md).

psycopg 3's *sync* API runs in Trio worker threads (its async API does not run under Trio).
One :class:`Store` owns one connection; a :class:`trio.Lock` lets one statement batch use it
at a time. When the calling Trio scope is cancelled while a statement runs, the statement is
cancelled on the server with ``conn.cancel_safe()``, the worker thread is waited for, its
transaction is rolled back, and only then does :class:`trio.Cancelled` propagate: the
connection stays usable and nothing is half-written.

Tables (migration ``0001_initial.sql``):

* ``md_history`` — one row per canonical event, partitioned by ``day`` (UTC day of
  ``ts_event``). Day partitions are created on demand; retention drops whole partitions.
* ``md_latest`` — the latest state per product; an upsert that only moves forward.
* ``consumer_positions`` — per stream-order consumer (the snapshotter), the last stream
  sequence whose effects are committed; written in the same transaction as those effects
  (migration ``0002_consumer_positions.sql``).
* ``md_candles`` — one-minute OHLCV candles per product (:mod:`ledgerflux.candles`),
  merged with the trades of each batch in the same transaction as their history rows
  (migration ``0003_candles.sql``); :meth:`Store.rebuild_candles` recomputes them from
  ``md_history``.
* ``schema_migrations`` — the applied migration versions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.resources
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import orjson
import outcome
import psycopg
import psycopg.conninfo
import psycopg.errors
import trio
from psycopg import sql
from psycopg.types.json import Jsonb

from ledgerflux.candles import Candle, fold
from ledgerflux.codec import CodecError, decode, to_wire
from ledgerflux.config import DatabaseConfig
from ledgerflux.errors import LedgerfluxError
from ledgerflux.events import Event, Trade

__all__ = [
    "ConsumerPosition",
    "HistoryRow",
    "StateRow",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "day_of",
    "open_store",
]

T = TypeVar("T")

_NS_PER_DAY = 86_400 * 1_000_000_000
_UNIX_EPOCH_DAY = dt.date(1970, 1, 1)
_MIGRATION_LOCK_KEY = 0x4C46_4D49_4752  # "LFMIGR": serialises concurrent open_store calls
_PARTITION_LOCK_KEY = 0x4C46_5041_5254  # "LFPART": serialises partition DDL
_PARTITION_NAME = re.compile(r"^md_history_(\d{8})$")
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_CANCEL_TIMEOUT_S = 5.0
_CANCEL_RETRY_S = 1.0
_CANCEL_ATTEMPTS = 10
_RECONNECT_BACKOFF_MAX_S = 2.0

_HISTORY_COLUMNS = "product, epoch, seq, day, type, ts_event, ts_ingest, stream_seq, payload"


class StoreError(LedgerfluxError):
    """A store operation failed (the message says which and why)."""


class StoreUnavailable(StoreError):
    """PostgreSQL could not be reached after the configured bounded retries.

    The message names the host and database, never the password."""


@attrs.frozen
class HistoryRow:
    event: Event
    """Canonical event with ``seq >= 1`` and ``epoch`` set."""
    stream_seq: int
    """The ``LF_MD`` stream sequence it came from."""


@attrs.frozen
class StateRow:
    product: str
    epoch: str
    seq: int
    ts_event: int
    stream_seq: int
    state: Mapping[str, Any]
    """JSON-able dict (``ProductState.to_json()``), stored as JSONB."""


@attrs.frozen
class ConsumerPosition:
    """A stream-order consumer's committed position: every message of ``stream`` up to
    ``stream_seq`` has had its effects committed together with this row."""

    consumer: str
    stream: str
    stream_seq: int


def day_of(ts_ns: int) -> dt.date:
    """The UTC day of a timestamp in ns: the history partition key (floor division, so
    stable for every timestamp, including ones before 1970)."""
    return _UNIX_EPOCH_DAY + dt.timedelta(days=ts_ns // _NS_PER_DAY)


def _partition_name(day: dt.date) -> str:
    return f"md_history_{day:%Y%m%d}"


def _describe_target(url: str) -> str:
    """``host/db`` for error messages; the password never appears."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database url>"
    host = params.get("host") or "localhost"
    port = params.get("port")
    db = params.get("dbname") or params.get("user") or "?"
    where = f"{host}:{port}" if port else str(host)
    return f"{where}/{db}"


def _json_dumps(obj: Any) -> str:
    # Decimal has no JSON type: it goes in as its exact string, like on the wire.
    return orjson.dumps(obj, default=str).decode()


def _load_migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every packaged migration, in version order."""
    found: list[tuple[int, str, str]] = []
    for entry in importlib.resources.files("ledgerflux.migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def _applied_versions(conn: psycopg.Connection[Any]) -> set[int]:
    """Versions recorded in ``schema_migrations``; none when the table does not exist yet."""
    row = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
    if row is None or row[0] is None:
        return set()
    return {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}


def _apply_migrations(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply missing migrations under a session advisory lock; returns versions applied.

    Each migration runs in its own transaction together with its ``schema_migrations``
    row, so a crash in the middle leaves either the whole migration or none of it.

    A schema already at the packaged version (every restart) costs two reads and no lock:
    versions are only ever added, so one seen applied stays applied."""
    applied_now: list[int] = []
    migrations = _load_migrations()
    if _applied_versions(conn) >= {version for version, _, _ in migrations}:
        return applied_now
    conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, _name, sql in migrations:
            if version in done:
                continue
            with conn.transaction():
                conn.execute(sql.encode())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied_now.append(version)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied_now


async def _in_worker(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=False)


async def _run_cancellable(conn: psycopg.Connection[Any], fn: Callable[[], T]) -> T:
    """Run ``fn`` (which uses ``conn``) in a worker thread.

    On cancellation: send a cancel request for the running statement (``cancel_safe``,
    from another worker thread, while ``fn``'s thread is still blocked), wait for ``fn`` to
    return (its ``conn.transaction()`` block rolls back on the resulting error), then
    re-raise :class:`trio.Cancelled`. The worker is never abandoned, so the connection is
    never used by two threads at once."""
    done = trio.Event()
    result: list[outcome.Outcome[T]] = []

    async def call() -> None:
        # abandon_on_cancel=False: this await does not end until fn has returned.
        result.append(await outcome.acapture(_in_worker, fn))
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        try:
            await done.wait()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                # A cancel request only stops the statement running when it arrives; one
                # sent while fn is between statements is ignored, so repeat until fn returns.
                for _ in range(_CANCEL_ATTEMPTS):
                    with trio.move_on_after(_CANCEL_TIMEOUT_S):
                        await trio.to_thread.run_sync(
                            lambda: conn.cancel_safe(timeout=_CANCEL_TIMEOUT_S),
                            abandon_on_cancel=True,
                        )
                    with trio.move_on_after(_CANCEL_RETRY_S):
                        await done.wait()
                    if done.is_set():
                        break
            raise
    return result[0].unwrap()


def _connect_once(url: str, timeout_s: float) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout_s)))
    return conn


async def _connect(config: DatabaseConfig, url: str) -> psycopg.Connection[Any]:
    """Connect with ``config.connect_attempts`` tries of ``config.connect_timeout_s`` each,
    with capped exponential backoff between them; then :class:`StoreUnavailable`."""
    attempts = max(1, config.connect_attempts)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            # abandon_on_cancel: a cancelled connect leaves at most a socket that libpq's own
            # connect_timeout closes; nothing else holds the half-made connection.
            return await trio.to_thread.run_sync(
                _connect_once, url, config.connect_timeout_s, abandon_on_cancel=True
            )
        except psycopg.Error as exc:
            last = exc
        if attempt + 1 < attempts:
            await trio.sleep(min(_RECONNECT_BACKOFF_MAX_S, 0.1 * 2**attempt))
    raise StoreUnavailable(
        f"cannot connect to PostgreSQL at {_describe_target(url)} after {attempts} attempt(s)"
        f" of {config.connect_timeout_s:g} s: {_first_line(last)}"
    )


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__


@asynccontextmanager
async def open_store(config: DatabaseConfig, *, url: str) -> AsyncIterator[Store]:
    """Connect, apply migrations, yield a :class:`Store`, close.

    Connects with ``config.connect_attempts`` x ``config.connect_timeout_s`` and then raises
    :class:`StoreUnavailable`. Migrations run under ``pg_advisory_lock``, so concurrent
    opens (several daemons starting at once) are safe. On cancellation during connect or
    migration the partial work is abandoned (a migration's transaction rolls back); on exit
    the connection is closed in a shielded worker thread."""
    conn = await _connect(config, url)
    try:
        try:
            await _run_cancellable(conn, lambda: _apply_migrations(conn))
        except psycopg.Error as exc:
            raise StoreError(f"applying migrations failed: {_first_line(exc)}") from exc
        store = Store(config, url, conn)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_close_quietly, conn)
        raise
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            # The store's connection: it may have replaced the first one after a loss.
            await trio.to_thread.run_sync(_close_quietly, store._conn)


def _close_quietly(conn: psycopg.Connection[Any]) -> None:
    # Closing a broken connection may fail: there is nothing left to release then.
    with contextlib.suppress(psycopg.Error):
        conn.close()


class Store:
    """Event history and latest state in PostgreSQL. Create with :func:`open_store`.

    Every method is cancellable: a cancelled call cancels its statement on the server and
    rolls its transaction back before :class:`trio.Cancelled` propagates. A connection that
    broke is replaced on the next call (bounded retries, then :class:`StoreUnavailable`);
    any other database error is a :class:`StoreError`."""

    def __init__(self, config: DatabaseConfig, url: str, conn: psycopg.Connection[Any]) -> None:
        self._config = config
        self._url = url
        self._conn = conn
        self._lock = trio.Lock()
        self._staging_ready = False
        self._known_partitions: set[dt.date] = set()

    async def _call(self, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        async with self._lock:
            if self._conn.closed or self._conn.broken:
                await trio.to_thread.run_sync(_close_quietly, self._conn)
                self._conn = await _connect(self._config, self._url)
                self._staging_ready = False
            conn = self._conn
            try:
                return await _run_cancellable(conn, lambda: fn(conn))
            except psycopg.OperationalError as exc:
                if conn.broken:
                    raise StoreUnavailable(
                        f"{what}: lost the connection to {_describe_target(self._url)}:"
                        f" {_first_line(exc)}"
                    ) from exc
                raise StoreError(f"{what} failed: {_first_line(exc)}") from exc
            except psycopg.Error as exc:
                raise StoreError(f"{what} failed: {_first_line(exc)}") from exc

    # -- writes ---------------------------------------------------------------------------

    async def write_batch(
        self,
        history: Sequence[HistoryRow],
        states: Sequence[StateRow],
        position: ConsumerPosition | None = None,
    ) -> None:
        """Write history rows, latest states and the consumer's position in ONE transaction.

        ``position`` is where the writer resumes after a restart: committed atomically with
        the rows, it can never be ahead of (or behind) what is stored.

        History is COPYed into a temporary staging table, then inserted with
        ``ON CONFLICT DO NOTHING``: writing the same batch twice leaves the same rows.
        The batch's trades are merged into their one-minute candles (``md_candles``) in
        the same transaction — only the trades whose history rows this transaction
        inserted, so a batch written again (or overlapping one already written) leaves
        every candle exactly as it was. Latest state only moves forward: a row replaces
        the stored one when it has the same epoch and a greater ``seq``, or another epoch
        and a newer ``ts_event`` (an epoch change restarts ``seq``). On cancellation or
        error nothing of the batch is written; an unsequenced event (``seq`` 0 or no
        epoch) is a :class:`StoreError` before any I/O."""
        if not history and not states and position is None:
            return
        for row in history:
            if row.event.seq < 1 or not row.event.epoch:
                raise StoreError(
                    f"history needs sequenced events (seq >= 1, epoch set), got"
                    f" {row.event.product} seq={row.event.seq} epoch={row.event.epoch!r}"
                )
        rows = [_history_tuple(row) for row in history]
        days = {row[3] for row in rows}
        missing = days - self._known_partitions
        if missing:
            await self._call(
                "creating history partitions", lambda c: _create_partitions(c, missing)
            )
            self._known_partitions |= missing
        state_params = [
            (s.product, s.epoch, s.seq, s.ts_event, s.stream_seq, Jsonb(s.state, _json_dumps))
            for s in states
        ]
        trades = {
            (row.event.product, row.event.epoch, row.event.seq): (row.event, row.stream_seq)
            for row in history
            if isinstance(row.event, Trade)
        }
        await self._call(
            "write_batch", lambda c: self._write(c, rows, state_params, position, trades)
        )

    def _write(
        self,
        conn: psycopg.Connection[Any],
        rows: list[tuple[Any, ...]],
        state_params: list[tuple[Any, ...]],
        position: ConsumerPosition | None = None,
        trades: Mapping[tuple[str, str, int], tuple[Trade, int]] | None = None,
    ) -> None:
        if not self._staging_ready:
            # A temp table is per session: created once per connection, emptied on commit.
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS md_history_stage"
                " (LIKE md_history INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            self._staging_ready = True
        with conn.transaction(), conn.cursor() as cur:
            if rows:
                # Fast path: COPY straight into md_history inside a savepoint. A batch that
                # overlaps rows already written (a redelivery after a lost ack) violates the
                # primary key; only then pay for the staging table + ON CONFLICT DO NOTHING.
                # Measured: direct COPY runs ~2x the staging path (`ledgerflux bench store`).
                try:
                    with (
                        conn.transaction(),
                        cur.copy(f"COPY md_history ({_HISTORY_COLUMNS}) FROM STDIN") as copy,
                    ):
                        for row in rows:
                            copy.write_row(row)
                except psycopg.errors.UniqueViolation:
                    with cur.copy(f"COPY md_history_stage ({_HISTORY_COLUMNS}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    cur.execute(
                        f"INSERT INTO md_history ({_HISTORY_COLUMNS})"
                        f" SELECT {_HISTORY_COLUMNS} FROM md_history_stage"
                        " ON CONFLICT (product, epoch, seq, day) DO NOTHING"
                        " RETURNING product, epoch, seq"
                    )
                    if trades:
                        # Only the trades stored now: the others are in their candles already.
                        inserted = {(p, e, int(q)) for p, e, q in cur.fetchall()}
                        trades = {k: v for k, v in trades.items() if k in inserted}
            if trades:
                candles = fold(trades.values()).values()
                cur.executemany(_CANDLE_UPSERT, [_candle_params(c) for c in candles])
            if state_params:
                cur.executemany(
                    "INSERT INTO md_latest AS cur"
                    " (product, epoch, seq, ts_event, stream_seq, state, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, now())"
                    " ON CONFLICT (product) DO UPDATE SET"
                    " epoch = EXCLUDED.epoch, seq = EXCLUDED.seq, ts_event = EXCLUDED.ts_event,"
                    " stream_seq = EXCLUDED.stream_seq, state = EXCLUDED.state,"
                    " updated_at = EXCLUDED.updated_at"
                    " WHERE (EXCLUDED.epoch = cur.epoch AND EXCLUDED.seq > cur.seq)"
                    " OR (EXCLUDED.epoch <> cur.epoch AND EXCLUDED.ts_event > cur.ts_event)",
                    state_params,
                )
            if position is not None:
                cur.execute(
                    "INSERT INTO consumer_positions (consumer, stream, stream_seq, updated_at)"
                    " VALUES (%s, %s, %s, now())"
                    " ON CONFLICT (consumer) DO UPDATE SET stream = EXCLUDED.stream,"
                    " stream_seq = EXCLUDED.stream_seq, updated_at = EXCLUDED.updated_at",
                    (position.consumer, position.stream, position.stream_seq),
                )

    # -- reads ----------------------------------------------------------------------------

    async def latest_states(self, products: Sequence[str] | None = None) -> list[StateRow]:
        """Latest state of ``products`` (all products when None), ordered by product."""
        if products is None:
            query = f"{_LATEST_SELECT} ORDER BY product"
            params: tuple[Any, ...] = ()
        else:
            query = f"{_LATEST_SELECT} WHERE product = ANY(%s) ORDER BY product"
            params = (list(products),)
        rows = await self._call("latest_states", lambda c: c.execute(query, params).fetchall())
        return [_state_row(r) for r in rows]

    async def consumer_position(self, consumer: str) -> ConsumerPosition | None:
        """The committed position of ``consumer``, or None if it never committed one."""
        query = "SELECT consumer, stream, stream_seq FROM consumer_positions WHERE consumer = %s"
        row = await self._call(
            "consumer_position", lambda c: c.execute(query, (consumer,)).fetchone()
        )
        if row is None:
            return None
        return ConsumerPosition(row[0], row[1], int(row[2]))

    async def latest_state(self, product: str) -> StateRow | None:
        found = await self.latest_states([product])
        return found[0] if found else None

    async def history(
        self,
        product: str,
        epoch: str,
        from_seq: int,
        to_seq: int | None = None,
        limit: int = 10_000,
    ) -> list[Event]:
        """Events of ``product`` in ``epoch`` with ``from_seq <= seq <= to_seq`` (inclusive;
        no upper bound when None), ordered by ``seq``, at most ``limit`` of them."""
        query = (
            "SELECT seq, payload::text FROM md_history WHERE product = %s AND epoch = %s"
            " AND seq >= %s AND (%s::bigint IS NULL OR seq <= %s::bigint)"
            " ORDER BY seq LIMIT %s"
        )
        params = (product, epoch, from_seq, to_seq, to_seq, limit)
        rows = await self._call("history", lambda c: c.execute(query, params).fetchall())
        events: list[Event] = []
        for seq, payload in rows:
            try:
                events.append(decode(payload))
            except CodecError as exc:
                raise StoreError(
                    f"history row {product} {epoch} seq={seq} is invalid: {exc}"
                ) from exc
        return events

    async def history_count(self, product: str | None = None) -> int:
        query = "SELECT count(*) FROM md_history WHERE (%s::text IS NULL OR product = %s::text)"
        row = await self._call(
            "history_count", lambda c: c.execute(query, (product, product)).fetchone()
        )
        return int(row[0]) if row else 0

    async def history_bounds(self, product: str, epoch: str) -> tuple[int, int] | None:
        """(min seq, max seq) retained for ``product`` in ``epoch``; None when none is."""
        query = "SELECT min(seq), max(seq) FROM md_history WHERE product = %s AND epoch = %s"
        row = await self._call(
            "history_bounds", lambda c: c.execute(query, (product, epoch)).fetchone()
        )
        if row is None or row[0] is None:
            return None
        return int(row[0]), int(row[1])

    # -- candles --------------------------------------------------------------------------

    async def candles(
        self, product: str, start_ns: int, end_ns: int, limit: int = 10_000
    ) -> list[Candle]:
        """Candles of ``product`` whose minute starts in ``[start_ns, end_ns)``, oldest
        first, at most ``limit`` (the newest ones when there are more)."""
        query = (
            f"SELECT * FROM (SELECT {_CANDLE_COLUMNS} FROM md_candles WHERE product = %s"
            " AND start_ns >= %s AND start_ns < %s ORDER BY start_ns DESC LIMIT %s) AS newest"
            " ORDER BY start_ns"
        )
        params = (product, start_ns, end_ns, limit)
        rows = await self._call("candles", lambda c: c.execute(query, params).fetchall())
        return [_candle_row(r) for r in rows]

    async def latest_candles(self, products: Sequence[str] | None = None) -> list[Candle]:
        """The newest stored candle of each of ``products`` (all when None)."""
        query = (
            f"SELECT DISTINCT ON (product) {_CANDLE_COLUMNS} FROM md_candles"
            " WHERE (%s::text[] IS NULL OR product = ANY(%s::text[]))"
            " ORDER BY product, start_ns DESC"
        )
        names = None if products is None else list(products)
        rows = await self._call(
            "latest_candles", lambda c: c.execute(query, (names, names)).fetchall()
        )
        return [_candle_row(r) for r in rows]

    async def rebuild_candles(self, product: str | None = None) -> int:
        """Recompute the candles of ``product`` (every product when None) from the trades
        in ``md_history``, in one transaction; returns how many candles were written.

        Only minutes from the first day ``md_history`` still holds are rebuilt: older
        candles outlive the history that retention dropped and are kept as they are. The
        table is locked against concurrent batches for the rebuild (a batch waits, then
        merges its trades into the rebuilt candles), so a rebuild while the snapshotter
        runs is exact too."""
        return await self._call("rebuild_candles", lambda c: _rebuild_candles(c, product))

    # -- retention ------------------------------------------------------------------------

    async def apply_retention(self, now_ns: int) -> int:
        """Drop the day partitions older than ``config.history_retention_days`` before the
        day of ``now_ns`` (and delete such rows from the default partition). Returns the
        number of partitions dropped."""
        cutoff = day_of(now_ns) - dt.timedelta(days=self._config.history_retention_days)
        dropped = await self._call("apply_retention", lambda c: _drop_partitions(c, cutoff))
        self._known_partitions = {d for d in self._known_partitions if d >= cutoff}
        return dropped


_CANDLE_COLUMNS = (
    "product, start_ns, open, high, low, close, volume, trades,"
    " first_ts, first_epoch, first_seq, last_ts, last_epoch, last_seq, stream_seq"
)
_FIRST_IS_NEW = (
    "(EXCLUDED.first_ts, EXCLUDED.first_epoch, EXCLUDED.first_seq)"
    " < (cur.first_ts, cur.first_epoch, cur.first_seq)"
)
_LAST_IS_NEW = (
    "(EXCLUDED.last_ts, EXCLUDED.last_epoch, EXCLUDED.last_seq)"
    " > (cur.last_ts, cur.last_epoch, cur.last_seq)"
)


def _pick(condition: str, column: str) -> str:
    return f" {column} = CASE WHEN {condition} THEN EXCLUDED.{column} ELSE cur.{column} END,"


_CANDLE_UPSERT = (
    f"INSERT INTO md_candles AS cur ({_CANDLE_COLUMNS})"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (product, start_ns) DO UPDATE SET"
    + "".join(_pick(_FIRST_IS_NEW, c) for c in ("open", "first_ts", "first_epoch", "first_seq"))
    + "".join(_pick(_LAST_IS_NEW, c) for c in ("close", "last_ts", "last_epoch", "last_seq"))
    + " high = GREATEST(cur.high, EXCLUDED.high), low = LEAST(cur.low, EXCLUDED.low),"
    " volume = cur.volume + EXCLUDED.volume, trades = cur.trades + EXCLUDED.trades,"
    " stream_seq = GREATEST(cur.stream_seq, EXCLUDED.stream_seq)"
)
"""Merge a partial candle into the stored one: :func:`ledgerflux.candles.merge` in SQL."""

_MINUTE_NS = 60_000_000_000
_REBUILD_CANDLES = f"""
WITH t AS (
    SELECT product, epoch COLLATE "C" AS epoch, seq, ts_event, stream_seq,
           (payload->>'price')::numeric AS price, (payload->>'size')::numeric AS size,
           ts_event - mod(mod(ts_event, {_MINUTE_NS}) + {_MINUTE_NS}, {_MINUTE_NS}) AS start_ns
    FROM md_history
    WHERE type = 'trade' AND (%(product)s::text IS NULL OR product = %(product)s::text)
      AND ts_event >= %(from_ns)s
), o AS (
    SELECT DISTINCT ON (product, start_ns) product, start_ns, price AS open,
           ts_event AS first_ts, epoch AS first_epoch, seq AS first_seq
    FROM t ORDER BY product, start_ns, ts_event, epoch, seq
), c AS (
    SELECT DISTINCT ON (product, start_ns) product, start_ns, price AS close,
           ts_event AS last_ts, epoch AS last_epoch, seq AS last_seq
    FROM t ORDER BY product, start_ns, ts_event DESC, epoch DESC, seq DESC
), a AS (
    SELECT product, start_ns, max(price) AS high, min(price) AS low, sum(size) AS volume,
           count(*) AS trades, max(stream_seq) AS stream_seq
    FROM t GROUP BY product, start_ns
)
INSERT INTO md_candles ({_CANDLE_COLUMNS})
SELECT a.product, a.start_ns, o.open, a.high, a.low, c.close, a.volume, a.trades,
       o.first_ts, o.first_epoch, o.first_seq, c.last_ts, c.last_epoch, c.last_seq,
       a.stream_seq
FROM a JOIN o USING (product, start_ns) JOIN c USING (product, start_ns)
"""
"""All candles from md_history's trades at once (the rebuild; the incremental path is
:data:`_CANDLE_UPSERT`)."""


def _rebuild_candles(conn: psycopg.Connection[Any], product: str | None) -> int:
    with conn.transaction(), conn.cursor() as cur:
        # EXCLUSIVE: a concurrent write_batch waits at its candle upsert until the rebuild
        # commits, then merges its (newly visible) trades on top; reads go on.
        cur.execute("LOCK TABLE md_candles IN EXCLUSIVE MODE")
        row = cur.execute("SELECT min(day) FROM md_history").fetchone()
        first_day = row[0] if row is not None else None
        from_ns = None if first_day is None else (first_day - _UNIX_EPOCH_DAY).days * _NS_PER_DAY
        cur.execute(
            "DELETE FROM md_candles"
            " WHERE (%(product)s::text IS NULL OR product = %(product)s::text)"
            " AND (%(from_ns)s::bigint IS NULL OR start_ns >= %(from_ns)s::bigint)",
            {"product": product, "from_ns": from_ns},
        )
        if from_ns is None:
            return 0
        cur.execute(_REBUILD_CANDLES, {"product": product, "from_ns": from_ns})
        return cur.rowcount


def _candle_params(candle: Candle) -> tuple[Any, ...]:
    return (
        candle.product,
        candle.start,
        candle.open,
        candle.high,
        candle.low,
        candle.close,
        candle.volume,
        candle.trades,
        *candle.first,
        *candle.last,
        candle.stream_seq,
    )


def _candle_row(row: tuple[Any, ...]) -> Candle:
    (product, start, open_, high, low, close, volume, trades,
     first_ts, first_epoch, first_seq, last_ts, last_epoch, last_seq, stream_seq) = row  # fmt: skip
    return Candle(
        product=product,
        start=int(start),
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        trades=int(trades),
        first=(int(first_ts), first_epoch, int(first_seq)),
        last=(int(last_ts), last_epoch, int(last_seq)),
        stream_seq=int(stream_seq),
    )


_LATEST_SELECT = "SELECT product, epoch, seq, ts_event, stream_seq, state::text FROM md_latest"


def _state_row(row: tuple[Any, ...]) -> StateRow:
    product, epoch, seq, ts_event, stream_seq, state = row
    return StateRow(
        product=product,
        epoch=epoch,
        seq=int(seq),
        ts_event=int(ts_event),
        stream_seq=int(stream_seq),
        state=orjson.loads(state),
    )


def _history_tuple(row: HistoryRow) -> tuple[Any, ...]:
    event = row.event
    return (
        event.product,
        event.epoch,
        event.seq,
        day_of(event.ts_event),
        event.TYPE,
        event.ts_event,
        event.ts_ingest,
        row.stream_seq,
        orjson.dumps(to_wire(event)).decode(),
    )


def _create_partitions(conn: psycopg.Connection[Any], days: set[dt.date]) -> None:
    """Create the day partitions that do not exist yet (idempotent, safe concurrently).

    Runs in its own short transaction before the data transaction, so the DDL lock on the
    parent table is not held while a batch is copied in."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK_KEY,))
        for day in sorted(days):
            name = _partition_name(day)
            try:
                with conn.transaction():  # a savepoint: one failure does not undo the others
                    # DDL takes no bind parameters: the bounds go in as quoted literals.
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {} PARTITION OF md_history"
                            " FOR VALUES FROM ({}) TO ({})"
                        ).format(
                            sql.Identifier(name),
                            sql.Literal(day),
                            sql.Literal(day + dt.timedelta(days=1)),
                        )
                    )
            except psycopg.errors.CheckViolation:
                # The default partition already holds rows of that day (written by an older
                # writer before the partition existed); they stay there and are still found.
                pass


def _drop_partitions(conn: psycopg.Connection[Any], cutoff: dt.date) -> int:
    dropped = 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK_KEY,))
        names = [
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid"
                " JOIN pg_class p ON p.oid = i.inhparent"
                " WHERE p.relname = 'md_history'"
            )
        ]
        for name in names:
            match = _PARTITION_NAME.match(name)
            if not match:
                continue
            day = dt.datetime.strptime(match.group(1), "%Y%m%d").date()
            if day < cutoff:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                dropped += 1
        conn.execute("DELETE FROM md_history_default WHERE day < %s", (cutoff,))
    return dropped
