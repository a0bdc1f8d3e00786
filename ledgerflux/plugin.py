"""The feed-plugin API (DESIGN §7): what a plugin declares and what the runtime does for it.

A feed plugin is a class registered in the entry-point group ``ledgerflux.feeds``. It is
pure description plus a sans-IO decoder: it never opens a socket and never awaits.

The ingestor runtime (:mod:`ledgerflux.feeds.runtime`) does everything else, the same way
for every plugin: connect (trio-websocket), send :meth:`FeedPlugin.subscribe_messages`
within :attr:`FeedPlugin.subscribe_deadline_s`, watch for staleness
(:attr:`FeedPlugin.stale_after_s` without a frame), reconnect with capped exponential
backoff and jitter, resubscribe exactly the prior set, track sequence numbers according to
:attr:`FeedPlugin.sequence_model`, and on a gap resync the affected products (REST book for
``ResyncMode.REST``, a fresh subscription for ``ResyncMode.RESUBSCRIBE``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol, runtime_checkable

import attrs

from ledgerflux.events import Book, Event

__all__ = [
    "BookSnapshot",
    "Credentials",
    "DecodeError",
    "Decoded",
    "FeedDecoder",
    "FeedPlugin",
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
