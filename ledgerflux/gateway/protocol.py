"""Gateway protocol v1, sans-IO (docs/protocol.md, docs/protocol.md).

Plain objects only: text in, typed requests or a :class:`ProtocolError` out; server
messages as JSON text; the per-client token bucket and the per-client send queue with its
slow-consumer / conflation policy. No sockets, no ``await``, no clock reads (callers pass
``now``), so every rule here is tested in memory.
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal, TypeAlias

import attrs
import orjson

__all__ = [
    "CHANNELS",
    "CLOSE_DRAIN",
    "CLOSE_POLICY",
    "CLOSE_RATE_LIMITED",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOKEN_EXPIRED",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "DEFAULT_CHANNELS",
    "MAX_ID_CHARS",
    "MAX_PRODUCTS_PER_REQUEST",
    "MAX_RATE",
    "MAX_SEQ",
    "MIN_RATE",
    "PRODUCT_MAX_CHARS",
    "ErrorCode",
    "Outbox",
    "Ping",
    "ProtocolError",
    "Request",
    "Subscribe",
    "TokenBucket",
    "Unsubscribe",
    "control",
    "error_message",
    "pack",
    "parse_request",
    "valid_product",
]

# Close codes (RFC 6455 §7.4 plus the application range 4000-4999).
CLOSE_DRAIN: Final = 1001
"""Going away: the gateway is draining (sent after a ``drain`` message)."""
CLOSE_POLICY: Final = 1008
"""Policy violation: e.g. a binary frame."""
CLOSE_TOO_BIG: Final = 1009
"""A client message larger than ``gateway.max_message_bytes``."""
CLOSE_TRY_AGAIN: Final = 1013
"""``gateway.max_clients`` reached, or the gateway is draining: try another instance."""
CLOSE_TOKEN_EXPIRED: Final = 4003
"""The connection's token expired (reconnect with a fresh one)."""
CLOSE_SLOW_CONSUMER: Final = 4001
"""The client's send queue overflowed (it does not read fast enough)."""
CLOSE_RATE_LIMITED: Final = 4029
"""The client kept sending requests while rate limited."""

ErrorCode: TypeAlias = Literal[
    "bad_json",
    "bad_request",
    "unknown_op",
    "bad_product",
    "unknown_product",
    "forbidden_product",
    "out_of_range",
    "unknown_channel",
    "too_many_subscriptions",
    "not_subscribed",
    "rate_limited",
]

PRODUCT_MAX_CHARS: Final = 64
"""Longest product id accepted (``<exchange>:<BASE>-<QUOTE>`` is far shorter)."""
_PRODUCT: Final = re.compile(r"[a-z0-9_]{1,24}:[A-Z0-9]{1,16}(?:-[A-Z0-9]{1,16}){1,3}", re.ASCII)
"""The canonical product grammar: a lowercase exchange name (``coinbase``, or a derived
feed such as ``consolidated``), a colon, then the uppercase symbol ``BASE-QUOTE`` with at
most two more dash-separated parts (a future's expiry, say). ASCII only, no spaces."""
MAX_SEQ: Final = 2**63 - 1
"""``from_seq`` above this is refused (``seq`` is a signed 64-bit integer in the store)."""
MIN_RATE: Final = 0.1
MAX_RATE: Final = 100_000.0
"""``max_rate`` bounds in events per second: below one event every 10 s the pacing sleep
would outlive any connection; above 100k/s it limits nothing."""
MAX_ID_CHARS: Final = 128
MAX_ID_INT: Final = 2**53
"""An integer ``id`` is at most 2**53 in magnitude (exact in every JSON reader, JavaScript
included); a string ``id`` at most MAX_ID_CHARS characters."""
MAX_PRODUCTS_PER_REQUEST: Final = 1000
"""Products named in one request at most (``max_subscriptions`` bounds what is kept)."""
_EPOCH: Final = re.compile(r"[A-Za-z0-9_.:-]{0,64}", re.ASCII)
"""What an ``epoch`` a client sends back may look like (the gateway's are decimal
nanosecond strings; anything else simply differs and gets a reset)."""


def valid_product(product: str) -> bool:
    """True when ``product`` follows the canonical grammar (see ``docs/protocol.md``)."""
    return len(product) <= PRODUCT_MAX_CHARS and _PRODUCT.fullmatch(product) is not None


CHANNELS: Final[Mapping[str, str]] = {
    "trades": "trade",
    "quotes": "quote",
    "ticker": "ticker",
    "book": "book",
    "candles": "candle",
}
"""Subscription channel → canonical event ``type``. ``status`` events always go to every
subscriber of the product, whatever its channels. ``candles`` carries the gateway's own
one-minute candles (ledgerflux.candles), not events of LF_MD."""
DEFAULT_CHANNELS: Final = ("trades", "quotes", "ticker", "book")
"""What a subscribe without ``channels`` gets: the event channels (candles are asked for)."""

_CONFLATABLE: Final = frozenset({"quote", "ticker"})
"""Event types where only the newest per product matters (a newer one supersedes)."""


class ProtocolError(Exception):
    """A client request the gateway answers with an ``error`` message (connection stays)."""

    def __init__(self, code: ErrorCode, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.request_id = request_id


@attrs.frozen(kw_only=True)
class Subscribe:
    id: Any
    products: tuple[str, ...]
    channels: frozenset[str]
    """Canonical event types (``trade``, ``quote``, ``ticker``, ``book``)."""
    snapshot: bool = False
    from_seq: Mapping[str, int] = attrs.field(factory=dict)
    epoch: Mapping[str, str] = attrs.field(factory=dict)
    max_rate: float | None = None
    """Events per second for this client; implies conflation."""
    conflate: bool = False
    batch: bool = False


@attrs.frozen(kw_only=True)
class Unsubscribe:
    id: Any
    products: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Ping:
    id: Any


Request: TypeAlias = Subscribe | Unsubscribe | Ping

_SUBSCRIBE_KEYS: Final = frozenset(
    {"op", "id", "products", "channels", "snapshot", "from_seq", "epoch", "max_rate", "conflate",
     "batch"}
)  # fmt: skip


def parse_request(data: str | bytes) -> Request:
    """One client text frame → a request. Raises :class:`ProtocolError`."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "message must be a JSON object")
    request_id = _request_id(obj.get("id"))
    op = obj.get("op")
    if op == "ping":
        return Ping(id=request_id)
    if op == "unsubscribe":
        return Unsubscribe(id=request_id, products=_products(obj, request_id))
    if op == "subscribe":
        return _parse_subscribe(obj, request_id)
    raise ProtocolError("unknown_op", f"unknown op: {op!r}", request_id)


def _request_id(raw: Any) -> str | int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ProtocolError("bad_request", "'id' must be a string or an integer")
    if isinstance(raw, int) and not -MAX_ID_INT <= raw <= MAX_ID_INT:
        raise ProtocolError("out_of_range", "an integer 'id' must be within +-2**53")
    if isinstance(raw, str) and len(raw) > MAX_ID_CHARS:
        raise ProtocolError("out_of_range", f"a string 'id' must be <= {MAX_ID_CHARS} chars")
    return raw


def _parse_subscribe(obj: dict[str, Any], request_id: Any) -> Subscribe:
    extra = set(obj) - _SUBSCRIBE_KEYS
    if extra:
        raise ProtocolError("bad_request", f"unknown field(s): {sorted(extra)}", request_id)
    products = _products(obj, request_id)
    raw_channels = obj.get("channels", list(DEFAULT_CHANNELS))
    if not isinstance(raw_channels, list) or not raw_channels:
        raise ProtocolError("bad_request", "'channels' must be a non-empty list", request_id)
    channels = set()
    for name in raw_channels:
        if not isinstance(name, str) or name not in CHANNELS:
            raise ProtocolError("unknown_channel", f"unknown channel: {name!r}", request_id)
        channels.add(CHANNELS[name])
    from_seq = obj.get("from_seq", {})
    if not isinstance(from_seq, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in from_seq.values()
    ):
        raise ProtocolError("bad_request", "'from_seq' must map product -> seq >= 1", request_id)
    for product, seq in from_seq.items():
        if product not in products:
            raise ProtocolError("bad_request", f"from_seq for unlisted {product!r}", request_id)
        if seq > MAX_SEQ:
            raise ProtocolError("out_of_range", "'from_seq' must be below 2**63", request_id)
    epoch = _epochs(obj.get("epoch", {}), products, request_id)
    max_rate = obj.get("max_rate")
    if max_rate is not None:
        if (
            isinstance(max_rate, bool)
            or not isinstance(max_rate, int | float)
            or not math.isfinite(max_rate)
            or max_rate <= 0
        ):
            raise ProtocolError("bad_request", "'max_rate' must be a positive number", request_id)
        if not MIN_RATE <= max_rate <= MAX_RATE:
            raise ProtocolError(
                "out_of_range",
                f"'max_rate' must be between {MIN_RATE:g} and {MAX_RATE:g} events/s",
                request_id,
            )
    flags = {}
    for key in ("snapshot", "conflate", "batch"):
        value = obj.get(key, False)
        if not isinstance(value, bool):
            raise ProtocolError("bad_request", f"{key!r} must be a boolean", request_id)
        flags[key] = value
    return Subscribe(
        id=request_id,
        products=products,
        channels=frozenset(channels),
        snapshot=flags["snapshot"],
        from_seq=dict(from_seq),
        epoch=epoch,
        max_rate=None if max_rate is None else float(max_rate),
        conflate=flags["conflate"] or max_rate is not None,
        batch=flags["batch"],
    )


def _products(obj: dict[str, Any], request_id: Any) -> tuple[str, ...]:
    products = obj.get("products")
    if not isinstance(products, list) or not products:
        raise ProtocolError("bad_request", "'products' must be a non-empty list", request_id)
    if len(products) > MAX_PRODUCTS_PER_REQUEST:
        raise ProtocolError(
            "out_of_range", f"at most {MAX_PRODUCTS_PER_REQUEST} products per request", request_id
        )
    for product in products:
        if not isinstance(product, str) or not valid_product(product):
            shown = repr(product) if len(repr(product)) <= 80 else repr(product)[:77] + "..."
            raise ProtocolError(
                "bad_product",
                f"bad product {shown}: expected '<exchange>:<BASE>-<QUOTE>' "
                "(exchange [a-z0-9_], symbol parts [A-Z0-9])",
                request_id,
            )
    return tuple(dict.fromkeys(products))


def _epochs(raw: Any, products: tuple[str, ...], request_id: Any) -> dict[str, str]:
    # A bare string is allowed when exactly one product is subscribed (docs/protocol.md).
    if isinstance(raw, str):
        if len(products) != 1:
            raise ProtocolError("bad_request", "a string 'epoch' needs one product", request_id)
        raw = {products[0]: raw}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ProtocolError("bad_request", "'epoch' must map product -> string", request_id)
    for product, epoch in raw.items():
        if product not in products:
            raise ProtocolError("bad_request", f"epoch for unlisted {product!r}", request_id)
        if _EPOCH.fullmatch(epoch) is None:
            raise ProtocolError(
                "bad_request", "an 'epoch' is at most 64 chars of [A-Za-z0-9_.:-]", request_id
            )
    return dict(raw)


def control(type_: str, **fields: Any) -> str:
    """A server control message (``subscribed``, ``pong``, ``drain``, ...) as JSON text."""
    return orjson.dumps({"type": type_, **fields}).decode()


def error_message(code: ErrorCode, message: str, request_id: Any = None) -> str:
    return control("error", id=request_id, code=code, message=message)


def pack(texts: list[str]) -> str:
    """Several JSON messages as one JSON array frame (the negotiated ``batch`` option)."""
    return "[" + ",".join(texts) + "]"


@attrs.define
class TokenBucket:
    """Request rate limit: ``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float
    burst: float
    tokens: float = attrs.field(default=math.nan)
    last: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token at time ``now`` (seconds); False if none is left."""
        if math.isnan(self.tokens):
            self.tokens = self.burst
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@attrs.define(eq=False)
class _Entry:
    text: str | None
    """JSON text to send; None for a book-resync marker (rendered at send time)."""
    product: str | None = None
    type: str | None = None
    seq: int = 0
    alive: bool = True
    counted: bool = True
    """False for backfill: bounded by the ring / the store query, not by the queue limit."""
    queued_at: float = 0.0
    """When a counted (live) entry was queued: the slow-consumer policy's clock."""
    size: int = 0
    """``len(text)``."""
    ts_ingest: int = 0
    """The live event's ``ts_ingest`` (ns; 0 for control and backfill): the start of the
    delivery latency measured when it is sent."""


@attrs.define
class Outbox:
    """One client's bounded send queue and its overflow policy.

    Policy (docs/protocol.md, "Slow consumers"). Live events count against three bounds:

    * ``max_age_s``: the oldest queued live event waited longer than this — the client is
      that far behind (the primary rule: a burst that a reading client works through
      never trips it, a client that stopped reading does);
    * ``max_bytes``: the JSON text of the queued live events (the memory bound);
    * ``limit``: their number (bounds the per-entry overhead).

    * ``conflate=False`` (default): events are queued in order; past a bound
      :meth:`offer` returns False, :attr:`overflow` says which, and the caller disconnects
      the client (4001).
    * ``conflate=True``: a newer ``quote``/``ticker`` replaces the queued one of the same
      product (it moves to the back so ``seq`` stays increasing). Past a bound, queued
      book deltas are dropped and replaced by one book-resync marker per product,
      rendered at send time as a fresh ``book`` snapshot; later deltas at or below that
      snapshot's ``seq`` are skipped. Trades are never dropped: if trades alone overflow,
      :meth:`offer` returns False (4001).

    Control messages (replies, snapshots) are always accepted: they are bounded by the
    request rate limit, not by the event rate. Backfill (:meth:`put_backfill`) is queued
    outside the bounds too, bounded by the ring size and the store backfill cap; the
    bounds apply to live events queued behind it.
    """

    limit: int
    conflate: bool = False
    max_bytes: int = 8 * 1024 * 1024
    max_age_s: float = math.inf
    _queue: collections.deque[_Entry] = attrs.field(factory=collections.deque)
    _live: int = 0
    _uncounted: int = 0
    _live_bytes: int = 0
    _bytes: int = 0
    _ages: collections.deque[_Entry] = attrs.field(factory=collections.deque)
    """The counted entries in queue order (dead ones are dropped lazily from the left)."""
    _latest: dict[tuple[str, str], _Entry] = attrs.field(factory=dict)
    _resync: dict[str, _Entry] = attrs.field(factory=dict)
    book_floor: dict[str, int] = attrs.field(factory=dict)
    """Per product: the ``seq`` of the last book snapshot sent; deltas at or below it are
    stale and skipped."""
    overflow: str = ""
    """Why the last refused :meth:`offer` was refused (for the 4001 log line)."""
    popped_ts_ingest: int = 0
    """The earliest ``ts_ingest`` of the live events taken by the last :meth:`pop` (0:
    none): the sender measures the delivery latency of the frame from it."""

    def __len__(self) -> int:
        return self._live + self._uncounted

    @property
    def nbytes(self) -> int:
        """Bytes of JSON text queued (live, backfill and control)."""
        return self._bytes

    def oldest_age(self, now: float) -> float:
        """How long the oldest queued live event has waited (0 when there is none)."""
        ages = self._ages
        while ages and not ages[0].alive:
            ages.popleft()
        return now - ages[0].queued_at if ages else 0.0

    def put_control(self, text: str) -> None:
        self._append(_Entry(text, counted=False, size=len(text)))

    def put_backfill(self, product: str, type_: str, seq: int, text: str) -> None:
        """Queue one replayed event: exact (never conflated or dropped), not limited."""
        self._append(_Entry(text, product, f"backfill:{type_}", seq, counted=False, size=len(text)))

    def offer(
        self,
        product: str,
        type_: str,
        seq: int,
        text: str | tuple[str, ...],
        now: float = 0.0,
        ts_ingest: int = 0,
    ) -> bool:
        """Queue one live event at time ``now``; False means a slow-consumer bound was hit
        (:attr:`overflow` says which): the caller disconnects the client.

        ``text`` may be the parts of one book snapshot: they are queued together or not at
        all, and conflation drops all of them or none (a client never gets half a book)."""
        if isinstance(text, str):
            size = len(text)
            if not self.conflate:
                # The common case, kept short: one event, no conflation.
                ages = self._ages
                live = self._live
                if (
                    live >= self.limit
                    or (live and self._live_bytes + size > self.max_bytes)
                    or (ages and now - ages[0].queued_at > self.max_age_s)
                ):
                    self._over(size, 1, now)
                    return False
                entry = _Entry(text, product, type_, seq, True, True, now, size, ts_ingest)
                self._queue.append(entry)
                ages.append(entry)
                self._live = live + 1
                self._live_bytes += size
                self._bytes += size
                return True
            texts: tuple[str, ...] = (text,)
        else:
            texts = text
            size = sum(map(len, texts))
        count = len(texts)
        conflatable = self.conflate and type_ in _CONFLATABLE and count == 1
        if conflatable:
            old = self._latest.pop((product, type_), None)
            if old is not None:
                self._kill(old)
        if self._over(size, count, now) and not (
            self.conflate and self._make_room(size, count, now)
        ):
            return False
        if type_ == "book" and product in self._resync:
            # A resync snapshot is already queued for this product: this book will be
            # covered by it (it is rendered from the newest state when sent).
            return True
        for part in texts:
            entry = _Entry(
                part, product, type_, seq, queued_at=now, size=len(part), ts_ingest=ts_ingest
            )
            if conflatable:
                self._latest[(product, type_)] = entry
            self._append(entry)
        return True

    def _over(self, size: int, count: int, now: float) -> bool:
        ages = self._ages
        while ages and not ages[0].alive:
            ages.popleft()
        if self._live + count > self.limit:
            self.overflow = f"more than {self.limit} events queued"
        elif self._live and self._live_bytes + size > self.max_bytes:
            self.overflow = f"more than {self.max_bytes} bytes queued"
        elif ages and now - ages[0].queued_at > self.max_age_s:
            self.overflow = f"oldest queued event waited more than {self.max_age_s:g} s"
        else:
            return False
        return True

    def _make_room(self, size: int, count: int, now: float) -> bool:
        dropped: set[str] = set()
        for entry in self._queue:
            if entry.alive and entry.counted and entry.type == "book" and entry.text is not None:
                self._kill(entry)
                assert entry.product is not None
                dropped.add(entry.product)
        for name in dropped:
            if name not in self._resync:
                marker = _Entry(None, name, "book", queued_at=now)  # size 0
                self._resync[name] = marker
                self._append(marker)
        return not self._over(size, count, now)

    def pop(
        self, max_items: int, max_bytes: float = math.inf
    ) -> Iterator[tuple[str | None, str | None, str | None, int]]:
        """Up to ``max_items`` queued entries as ``(text, product, type, seq)``, stopping
        before one that would take their total past ``max_bytes`` (the first one always
        comes); ``text`` is None for a book-resync marker of ``product``."""
        taken = 0
        total = 0
        queue = self._queue
        self.popped_ts_ingest = 0
        while queue and taken < max_items:
            entry = queue[0]
            if not entry.alive:
                queue.popleft()
                continue
            total += entry.size
            if taken and total > max_bytes:
                return
            queue.popleft()
            self._kill(entry)
            if entry.counted and self._ages and self._ages[0] is entry:
                self._ages.popleft()
            if entry.product is not None:
                if entry.text is None:
                    del self._resync[entry.product]
                elif entry.type is not None:
                    key = (entry.product, entry.type)
                    if self._latest.get(key) is entry:
                        del self._latest[key]
                    if entry.type == "book" and entry.seq <= self.book_floor.get(entry.product, 0):
                        continue
            taken += 1
            if entry.ts_ingest and not self.popped_ts_ingest:
                self.popped_ts_ingest = entry.ts_ingest
            yield entry.text, entry.product, entry.type, entry.seq

    def new_epoch(self, product: str) -> None:
        """``product``'s events now come in a new epoch (a new ``seq`` space): its book
        floor belongs to the old one and must not hide the new epoch's deltas. Old-epoch
        deltas still queued at or below the floor are dropped, as they would have been."""
        floor = self.book_floor.pop(product, None)
        if floor is None:
            return
        for entry in self._queue:
            if (
                entry.alive
                and entry.product == product
                and entry.type == "book"
                and entry.text is not None
                and entry.seq <= floor
            ):
                self._kill(entry)

    def clear(self) -> None:
        self._queue.clear()
        self._ages.clear()
        self._latest.clear()
        self._resync.clear()
        self._live = 0
        self._uncounted = 0
        self._live_bytes = 0
        self._bytes = 0

    def _append(self, entry: _Entry) -> None:
        self._queue.append(entry)
        size = entry.size
        self._bytes += size
        if entry.counted:
            self._live += 1
            self._live_bytes += size
            self._ages.append(entry)
        else:
            self._uncounted += 1

    def _kill(self, entry: _Entry) -> None:
        if entry.alive:
            entry.alive = False
            size = entry.size
            self._bytes -= size
            if entry.counted:
                self._live -= 1
                self._live_bytes -= size
            else:
                self._uncounted -= 1
