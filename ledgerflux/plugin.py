"""The feed-plugin API (docs/plugins.md): what a plugin declares and what the runtime does for it.

A feed plugin is a class registered in the entry-point group ``ledgerflux.feeds``. It is
pure description plus a sans-IO decoder: it never opens a socket and never awaits.

The ingestor runtime (:mod:`ledgerflux.feeds.runtime`) does everything else, the same way
for every plugin: connect (trio-websocket), send :meth:`FeedPlugin.subscribe_messages`
within :attr:`FeedPlugin.subscribe_deadline_s`, watch for staleness
(:attr:`FeedPlugin.stale_after_s` without a frame), reconnect with capped exponential
backoff and jitter, resubscribe exactly the prior set, track sequence numbers according to
:attr:`FeedPlugin.sequence_model`, and on a gap resync the affected products (REST book for
``ResyncMode.REST``, a fresh subscription for ``ResyncMode.RESUBSCRIBE``).

Optional members (a plugin that leaves them out behaves as before; :class:`PluginOptions`
reads them once, with their defaults):

* ``rest_book_channels`` — channels whose stream sends no snapshot: the runtime fetches
  the REST book for every product at the first subscribe, buffering the diffs meanwhile
  (Binance's local-book procedure, with ``SequenceModel.UPDATE_ID_CHAIN``);
* ``book_checksum(bids, asks)`` and ``book_depth`` — verify the book after every applied
  update against :attr:`Decoded.checksums`;
* ``instruments_request()`` / ``parse_instruments(body)`` / ``use_instruments(...)`` —
  instrument discovery (:class:`Instrument`);
* ``native_symbol(symbol)`` — the exchange's id for a canonical ``BASE-QUOTE`` symbol;
* ``max_connection_s`` — planned reconnect (with overlap) before the exchange's
  connection lifetime limit;
* ``ping_interval_s`` / ``ping_message(now_s)`` — application-level ping;
* ``rest_weight_per_minute`` / ``rest_weight(request)`` — weighted REST limits;
* ``resubscribe_messages(symbol)`` — ``RESUBSCRIBE`` resync of one product on the
  current connection (unsubscribe + subscribe its book) instead of a reconnect.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs

from ledgerflux.events import Book, Event, PriceLevel
from ledgerflux.symbols import canonical_symbol

__all__ = [
    "BookChecksum",
    "BookSnapshot",
    "Credentials",
    "DecodeError",
    "Decoded",
    "FeedDecoder",
    "FeedPlugin",
    "Instrument",
    "PluginOptions",
    "RestRequest",
    "ResyncMode",
    "SeqMark",
    "SequenceModel",
    "Subscription",
]


class SequenceModel(enum.Enum):
    """How an exchange numbers its messages."""

    PER_PRODUCT = "per_product"
    """Each product has its own counter (Coinbase Exchange ``sequence``)."""
    PER_CONNECTION = "per_connection"
    """One counter for everything a connection carries (Advanced Trade ``sequence_num``):
    a hole means every product on the connection must be re-snapshotted."""
    NONE = "none"
    """No sequence numbers: gaps cannot be detected, only staleness."""
    UPDATE_ID_CHAIN = "update_id_chain"
    """Per product, each diff carries the first and last update ids it covers
    (:attr:`SeqMark.first`, :attr:`SeqMark.value`; Binance ``U``/``u``). Continuity is
    ``first == previous last + 1``; after a REST book with ``lastUpdateId`` L, diffs with
    ``last <= L`` are dropped and the first one applied must straddle ``L + 1``
    (``first <= L + 1 <= last``)."""


class ResyncMode(enum.Enum):
    REST = "rest"
    """Fetch the REST book (:meth:`FeedPlugin.book_request` / :meth:`FeedPlugin.parse_book`)."""
    RESUBSCRIBE = "resubscribe"
    """Reconnect and subscribe again; the exchange sends a fresh snapshot."""


@attrs.frozen
class Subscription:
    """What to subscribe to: exchange symbols (``BTC-USD``) and the plugin's channel names."""

    symbols: tuple[str, ...]
    channels: tuple[str, ...]


@attrs.frozen(repr=False)
class Credentials:
    """Exchange API credentials, read from the environment by the runtime; never logged."""

    key: str
    secret: str
    passphrase: str = ""

    def __repr__(self) -> str:
        return "Credentials(key='***', secret='***', passphrase='***')"


@attrs.frozen
class SeqMark:
    """One sequence number seen in a frame.

    ``key`` is the canonical product for ``PER_PRODUCT`` and ``None`` for
    ``PER_CONNECTION``. ``carries_state`` is False for frames (such as Coinbase heartbeats)
    that repeat the last sequence number without new data: they prove a gap but are never
    duplicates.
    """

    key: str | None
    value: int
    carries_state: bool = True
    first: int | None = None
    """``UPDATE_ID_CHAIN`` only: the first update id the frame covers (``value`` is the
    last). None means the same as ``value``."""


@attrs.frozen
class DecodeError:
    """A frame (or part of one) that could not be decoded. Goes to the DLQ with ``reason``."""

    reason: str
    """Short machine-readable code: ``malformed_json``, ``unknown_type``, ``invalid_field``,
    ``exchange_error``, ..."""
    detail: str
    raw: bytes
    product: str | None = None


@attrs.frozen
class Decoded:
    """What one frame meant. The decoder never raises: problems are in ``errors``."""

    events: tuple[Event, ...] = ()
    errors: tuple[DecodeError, ...] = ()
    marks: tuple[SeqMark, ...] = ()
    """Sequence numbers this frame carries, for the runtime's gap/duplicate tracking. When a
    mark is a duplicate or out of order, the runtime drops the events of that mark's
    product (all events, for a ``None`` key)."""
    heartbeat: bool = False
    """The frame is a heartbeat (liveness only)."""
    subscribed: tuple[str, ...] | None = None
    """Symbols the exchange confirmed (a ``subscriptions`` reply), else None."""
    snapshot_products: tuple[str, ...] = ()
    """Canonical products for which this frame carries a full book snapshot: any resync
    in progress for them is complete once it is applied."""
    checksums: tuple[BookChecksum, ...] = ()
    """Book checksums the exchange sent in this frame, each valid once the frame's book
    events are applied (needs the plugin's ``book_checksum``)."""


@attrs.frozen
class BookChecksum:
    """The exchange's checksum of ``product``'s book after this frame (OKX, Kraken)."""

    product: str
    value: int


@attrs.frozen
class Instrument:
    """One tradable instrument from the exchange's instruments endpoint.

    ``symbol`` is canonical ``BASE-QUOTE`` (upper case; USDT is not USD); ``native`` is the
    exchange's own id (``BTCUSDT``, ``XBT/USD``, ``BTC-USDT``)."""

    native: str
    base: str
    quote: str
    tick_size: Decimal | None = None
    lot_size: Decimal | None = None
    status: str = "trading"
    """The exchange's word for the state (``TRADING``, ``online``, ``live``...), verbatim."""
    trading: bool = True
    """Whether it can be subscribed to now (False: halted, delisted, pre-launch)."""

    @property
    def symbol(self) -> str:
        return canonical_symbol(self.base, self.quote)


@attrs.frozen
class RestRequest:
    """An HTTP GET the runtime performs (with rate limiting) for a resync."""

    url: str
    params: Mapping[str, str] = attrs.field(factory=dict)
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class BookSnapshot:
    """A REST book: the ``Book`` snapshot event plus the exchange sequence it reflects."""

    book: Book
    src_seq: int


@runtime_checkable
class FeedDecoder(Protocol):
    """Sans-IO decoder, one per connection (it may keep per-connection state)."""

    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        """Decode one frame received at ``ts_ingest`` (ns). Never raises."""
        ...


class FeedPlugin(Protocol):
    """What a feed plugin declares. Implementations are plain classes with a no-argument
    constructor; see ``docs/plugins.md`` for a worked example."""

    name: ClassVar[str]
    """Entry-point name, e.g. ``coinbase``."""
    exchange: ClassVar[str]
    """Product prefix, e.g. ``coinbase`` in ``coinbase:BTC-USD``."""
    endpoint: ClassVar[str]
    """Default WebSocket URL."""
    rest_endpoint: ClassVar[str | None]
    """Default REST base URL (None when the plugin has no REST resync)."""
    channels: ClassVar[tuple[str, ...]]
    """Channel names the plugin understands; the first ones are the defaults."""
    default_channels: ClassVar[tuple[str, ...]]
    sequence_model: ClassVar[SequenceModel]
    resync_mode: ClassVar[ResyncMode]
    subscribe_deadline_s: ClassVar[float]
    """The exchange closes a connection that has not subscribed within this time."""
    stale_after_s: ClassVar[float]
    """No frame (data or heartbeat) for this long means the connection is stale."""
    rest_rate_limit_per_s: ClassVar[float]
    needs_credentials: ClassVar[frozenset[str]]
    """Channels that need authentication."""

    def subscribe_messages(
        self, subscription: Subscription, credentials: Credentials | None, now_s: float
    ) -> Sequence[str]:
        """The text frames to send to subscribe (several where the exchange wants one
        channel per message). ``now_s`` is for signatures."""
        ...

    def new_decoder(self) -> FeedDecoder: ...

    def book_request(self, symbol: str) -> RestRequest | None: ...

    def parse_book(self, symbol: str, body: bytes, ts_ingest: int) -> BookSnapshot:
        """Parse a REST book reply. Raises ``ValueError`` with a clear message."""
        ...


ChecksumFn = Callable[[Sequence[PriceLevel], Sequence[PriceLevel]], int]
"""``book_checksum(bids, asks)``: levels best first (as deep as the runtime's book)."""


@attrs.frozen
class PluginOptions:
    """The optional plugin members (see the module doc), read once with their defaults."""

    rest_book_channels: frozenset[str] = frozenset()
    book_checksum: ChecksumFn | None = None
    book_depth: int | None = None
    max_connection_s: float | None = None
    ping_interval_s: float | None = None
    ping_message: Callable[[float], str] | None = None
    rest_weight_per_minute: float | None = None
    rest_weight: Callable[[RestRequest], int] | None = None
    instruments_request: Callable[[], RestRequest | None] | None = None
    parse_instruments: Callable[[bytes], Sequence[Instrument]] | None = None
    use_instruments: Callable[[Sequence[Instrument]], None] | None = None
    native_symbol: Callable[[str], str] | None = None
    resubscribe_messages: Callable[[str], Sequence[str]] | None = None

    @classmethod
    def of(cls, plugin: Any) -> PluginOptions:
        def method(name: str) -> Any:
            found = getattr(plugin, name, None)
            return found if callable(found) else None

        def number(name: str) -> Any:
            value = getattr(plugin, name, None)
            return value if isinstance(value, int | float) and value > 0 else None

        ping = number("ping_interval_s")
        return cls(
            rest_book_channels=frozenset(getattr(plugin, "rest_book_channels", ())),
            book_checksum=method("book_checksum"),
            book_depth=number("book_depth"),
            max_connection_s=number("max_connection_s"),
            ping_interval_s=ping if method("ping_message") else None,
            ping_message=method("ping_message"),
            rest_weight_per_minute=number("rest_weight_per_minute"),
            rest_weight=method("rest_weight"),
            instruments_request=method("instruments_request"),
            parse_instruments=method("parse_instruments"),
            use_instruments=method("use_instruments"),
            native_symbol=method("native_symbol"),
            resubscribe_messages=method("resubscribe_messages"),
        )

    def wants_rest_book(self, subscription: Subscription) -> bool:
        """Whether the subscription includes a channel without a WebSocket snapshot."""
        return bool(self.rest_book_channels & set(subscription.channels))

    def native(self, symbol: str) -> str:
        """The exchange's id for canonical ``symbol`` (itself without ``native_symbol``)."""
        return self.native_symbol(symbol) if self.native_symbol is not None else symbol
