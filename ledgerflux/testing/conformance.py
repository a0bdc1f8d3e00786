"""The feed-plugin conformance check (docs/plugins.md).

:func:`check_plugin` runs sans-IO checks of a plugin against a recording and collects every
failure (it does not stop at the first one):

* the class attributes of :class:`~ledgerflux.plugin.FeedPlugin` are present and typed
  right, and consistent (defaults among the channels, REST resync has a REST endpoint);
* :meth:`~ledgerflux.plugin.FeedPlugin.subscribe_messages` returns JSON text frames;
* the decoder never raises, on the recording nor on garbage and truncated frames, and
  reports a :class:`~ledgerflux.plugin.DecodeError` for a frame that is not JSON;
* every event's product starts with ``<exchange>:``, carries the receipt time it was given,
  has no public ``seq``/``epoch`` yet, and round-trips through :mod:`ledgerflux.codec`;
* sequence marks have the key shape of the plugin's sequence model and never go backwards
  within one recorded connection (a jump forward is a gap in the recording: counted, not a
  failure);
* the recording's REST replies parse with :meth:`~ledgerflux.plugin.FeedPlugin.parse_book`.

:func:`check_plugin_live` runs the real ingestor runtime
(:func:`ledgerflux.feeds.runtime.run_feed`) against :func:`open_fake_exchange` serving the
recording and checks what it publishes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import orjson
import trio

from ledgerflux import codec
from ledgerflux.book import BookError, OrderBook
from ledgerflux.events import Book, Event, Status
from ledgerflux.plugin import (
    BookSnapshot,
    Decoded,
    DecodeError,
    FeedPlugin,
    PluginOptions,
    ResyncMode,
    SequenceModel,
    Subscription,
)
from ledgerflux.recording import RecordedFrame, RecordingHeader, iter_frames, read_header
from ledgerflux.testing.fake_exchange import FakeExchange, Faults, open_fake_exchange

__all__ = [
    "GARBAGE_FRAMES",
    "ConformanceError",
    "ConformanceReport",
    "check_plugin",
    "check_plugin_live",
]

GARBAGE_FRAMES: tuple[bytes | str, ...] = (
    b"",
    b"\x00\xff\xfe",
    "not json",
    "{",
    "[]",
    "[1, 2, 3]",
    "null",
    "42",
    '"a string"',
    "{}",
    '{"type": 123}',
    '{"type": null, "channel": []}',
    '{"type": "x-ledgerflux-unknown", "channel": "x-ledgerflux-unknown"}',
    '{"type": "trade", "price": 1e309}',
    "\ud800".encode("utf-8", "surrogatepass"),
)
"""Frames no plugin should choke on (the decoder must return, never raise)."""
TRUNCATED_SAMPLE = 200
"""How many recorded frames are also fed truncated (cut in half)."""


class ConformanceError(AssertionError):
    """A plugin failed conformance; the message lists every failure."""


@attrs.frozen
class ConformanceReport:
    """The outcome of a conformance check."""

    plugin: str
    recording: Path
    failures: tuple[str, ...]
    frames: int = 0
    """Recorded ``in`` frames decoded."""
    events: int = 0
    decode_errors: int = 0
    """DecodeErrors the plugin reported for recorded frames (not failures by themselves:
    a recording may hold the exchange's own mistakes)."""
    gaps: int = 0
    """Forward jumps of a sequence key seen in the recording."""
    duplicates: int = 0
    """Marks that repeat the last number of their key (the runtime drops their events)."""
    rest_books: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_for_failures(self) -> None:
        """Raise :class:`ConformanceError` listing every failure, if there is any."""
        if self.failures:
            lines = "\n".join(f"  - {f}" for f in self.failures)
            raise ConformanceError(
                f"plugin {self.plugin!r} failed {len(self.failures)} conformance check(s) "
                f"on {self.recording}:\n{lines}"
            )


class _Collector:
    """Failures, with repeats of the same kind capped so a report stays readable."""

    LIMIT_PER_KIND = 5

    def __init__(self) -> None:
        self.failures: list[str] = []
        self._counts: dict[str, int] = defaultdict(int)

    UNLIMITED = frozenset({"attribute", "subscribe"})
    """Kinds with a bounded number of checks: always listed in full."""

    def fail(self, kind: str, detail: str) -> None:
        self._counts[kind] += 1
        n = self._counts[kind]
        if n <= self.LIMIT_PER_KIND or kind in self.UNLIMITED:
            self.failures.append(f"{kind}: {detail}")
        elif n == self.LIMIT_PER_KIND + 1:
            self.failures.append(f"{kind}: (further failures of this kind not listed)")


def _is_str_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, str) and v for v in value)


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _check_attributes(plugin: FeedPlugin, out: _Collector) -> None:
    cls = type(plugin)

    def attr(name: str) -> Any:
        if not hasattr(cls, name):
            out.fail("attribute", f"{name} is missing")
            return None
        return getattr(cls, name)

    name = attr("name")
    if name is not None and not (isinstance(name, str) and name):
        out.fail("attribute", f"name must be a non-empty str, got {name!r}")
    exchange = attr("exchange")
    if exchange is not None and not (
        isinstance(exchange, str) and exchange and ":" not in exchange
    ):
        out.fail("attribute", f"exchange must be a non-empty str without ':', got {exchange!r}")
    endpoint = attr("endpoint")
    if endpoint is not None and not (
        isinstance(endpoint, str) and endpoint.startswith(("ws://", "wss://"))
    ):
        out.fail("attribute", f"endpoint must be a ws:// or wss:// URL, got {endpoint!r}")
    rest = attr("rest_endpoint") if hasattr(cls, "rest_endpoint") else None
    if not hasattr(cls, "rest_endpoint"):
        out.fail("attribute", "rest_endpoint is missing (None when there is no REST)")
    elif rest is not None and not (
        isinstance(rest, str) and rest.startswith(("http://", "https://"))
    ):
        out.fail("attribute", f"rest_endpoint must be None or an http(s) URL, got {rest!r}")
    channels = attr("channels")
    if channels is not None and not (_is_str_tuple(channels) and channels):
        out.fail("attribute", f"channels must be a non-empty tuple of str, got {channels!r}")
    defaults = attr("default_channels")
    if defaults is not None:
        if not _is_str_tuple(defaults):
            out.fail("attribute", f"default_channels must be a tuple of str, got {defaults!r}")
        elif _is_str_tuple(channels) and not set(defaults) <= set(channels):
            out.fail("attribute", "default_channels must be among channels")
    model = attr("sequence_model")
    if model is not None and not isinstance(model, SequenceModel):
        out.fail("attribute", f"sequence_model must be a SequenceModel, got {model!r}")
    mode = attr("resync_mode")
    if mode is not None and not isinstance(mode, ResyncMode):
        out.fail("attribute", f"resync_mode must be a ResyncMode, got {mode!r}")
    if mode is ResyncMode.REST and rest is None:
        out.fail("attribute", "resync_mode REST needs a rest_endpoint")
    for number in ("subscribe_deadline_s", "stale_after_s"):
        value = attr(number)
        if value is not None and not _positive_number(value):
            out.fail("attribute", f"{number} must be a positive number, got {value!r}")
    rate = attr("rest_rate_limit_per_s")
    if rate is not None and not (
        isinstance(rate, int | float) and not isinstance(rate, bool) and rate >= 0
    ):
        out.fail("attribute", f"rest_rate_limit_per_s must be a number >= 0, got {rate!r}")
    creds = attr("needs_credentials")
    if creds is not None:
        if not (isinstance(creds, frozenset) and all(isinstance(c, str) for c in creds)):
            out.fail("attribute", f"needs_credentials must be a frozenset of str, got {creds!r}")
        elif _is_str_tuple(channels) and not creds <= set(channels):
            out.fail("attribute", "needs_credentials must be among channels")
    _check_options(plugin, channels, out)


def _check_options(plugin: FeedPlugin, channels: Any, out: _Collector) -> None:
    """The optional members (:class:`~ledgerflux.plugin.PluginOptions`), where present."""
    cls = type(plugin)
    rest_books: Any = getattr(cls, "rest_book_channels", frozenset())
    if not (isinstance(rest_books, frozenset) and all(isinstance(c, str) for c in rest_books)):
        out.fail("attribute", f"rest_book_channels must be a frozenset of str, got {rest_books!r}")
    elif _is_str_tuple(channels) and not rest_books <= set(channels):
        out.fail("attribute", "rest_book_channels must be among channels")
    elif rest_books and getattr(cls, "rest_endpoint", None) is None:
        out.fail("attribute", "rest_book_channels need a rest_endpoint")
    for number in ("max_connection_s", "ping_interval_s", "rest_weight_per_minute"):
        if hasattr(cls, number) and not _positive_number(getattr(cls, number)):
            out.fail("attribute", f"{number} must be a positive number when set")
    depth = getattr(cls, "book_depth", None)
    if depth is not None and not (isinstance(depth, int) and depth > 0):
        out.fail("attribute", f"book_depth must be a positive int when set, got {depth!r}")
    options = PluginOptions.of(plugin)
    if hasattr(cls, "ping_interval_s") and options.ping_message is None:
        out.fail("attribute", "ping_interval_s needs a ping_message(now_s) method")
    if options.ping_message is not None:
        try:
            ping: Any = options.ping_message(0.0)
        except Exception as exc:
            out.fail("attribute", f"ping_message raised {exc!r}")
        else:
            if not isinstance(ping, str):
                out.fail("attribute", f"ping_message must return str, got {type(ping).__name__}")
    if options.book_checksum is not None:
        try:
            value = options.book_checksum([], [])
        except Exception as exc:
            out.fail("attribute", f"book_checksum of an empty book raised {exc!r}")
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                out.fail("attribute", f"book_checksum must return int, got {value!r}")


def _subscription(plugin: FeedPlugin, header: RecordingHeader) -> Subscription:
    """The recording's symbols and channels, without channels the plugin does not know
    or that need credentials (the check runs without any)."""
    known = getattr(plugin, "channels", ())
    defaults = getattr(plugin, "default_channels", ())
    secret: frozenset[str] = getattr(plugin, "needs_credentials", frozenset())
    channels = tuple(c for c in (header.channels or defaults) if c in known and c not in secret)
    return Subscription(symbols=header.symbols, channels=channels or tuple(defaults))


def _check_subscribe(plugin: FeedPlugin, header: RecordingHeader, out: _Collector) -> None:
    try:
        # Typed Any on purpose: the point is to check what a third-party plugin returns.
        messages: Any = plugin.subscribe_messages(_subscription(plugin, header), None, 1.0e9)
    except Exception as exc:
        out.fail("subscribe", f"subscribe_messages raised {exc!r}")
        return
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        out.fail("subscribe", f"subscribe_messages must return str frames, got {messages!r}")
        return
    for message in messages:
        if not isinstance(message, str):
            out.fail("subscribe", f"subscribe message must be str, got {type(message).__name__}")
            continue
        try:
            orjson.loads(message)
        except orjson.JSONDecodeError:
            out.fail("subscribe", f"subscribe message is not JSON: {message[:120]!r}")


def _check_event(
    plugin: FeedPlugin, event: Any, ts_ingest: int, where: str, out: _Collector
) -> None:
    if not isinstance(event, Event):
        out.fail("event", f"{where}: not a canonical event: {event!r}")
        return
    exchange = getattr(plugin, "exchange", "")
    if not event.product.startswith(f"{exchange}:") or not event.symbol:
        out.fail("product", f"{where}: product {event.product!r} must be '{exchange}:<SYMBOL>'")
    if event.ts_ingest != ts_ingest:
        out.fail(
            "ts_ingest",
            f"{where}: ts_ingest {event.ts_ingest} is not the receipt time "
            f"{ts_ingest} the decoder was given",
        )
    if event.seq != 0 or event.epoch != "":
        out.fail(
            "seq",
            f"{where}: seq/epoch are assigned by the normalizer, got "
            f"seq={event.seq} epoch={event.epoch!r}",
        )
    try:
        again = codec.decode(codec.encode(event))
    except (codec.CodecError, TypeError, ValueError) as exc:
        out.fail("codec", f"{where}: {type(event).__name__} does not encode/decode: {exc}")
        return
    if again != event:
        out.fail(
            "codec",
            f"{where}: {type(event).__name__} changes in a codec round trip: "
            f"{event!r} -> {again!r}",
        )


def _check_decoded(
    plugin: FeedPlugin, decoded: Any, ts: int, where: str, out: _Collector
) -> Decoded | None:
    if not isinstance(decoded, Decoded):
        out.fail("decoder", f"{where}: decode() must return Decoded, got {decoded!r}")
        return None
    for error in decoded.errors:
        if not (isinstance(error, DecodeError) and error.reason and isinstance(error.raw, bytes)):
            out.fail("decoder", f"{where}: bad DecodeError {error!r}")
    if decoded.subscribed is not None and not _is_str_tuple(decoded.subscribed):
        out.fail("decoder", f"{where}: subscribed must be a tuple of str")
    for event in decoded.events:
        _check_event(plugin, event, ts, where, out)
    return decoded


def _check_marks(
    plugin: FeedPlugin,
    decoded: Decoded,
    where: str,
    last: dict[str | None, int],
    out: _Collector,
) -> tuple[int, int]:
    """Checks the marks of one frame against ``last`` (per key, updated); returns the
    (gaps, duplicates) seen."""
    gaps = duplicates = 0
    model = getattr(plugin, "sequence_model", None)
    exchange = getattr(plugin, "exchange", "")
    for mark in decoded.marks:
        if model is SequenceModel.NONE:
            out.fail("sequence", f"{where}: sequence model NONE but the decoder gave a mark")
            return gaps, duplicates
        keyed = model in (SequenceModel.PER_PRODUCT, SequenceModel.UPDATE_ID_CHAIN)
        if keyed and not (isinstance(mark.key, str) and mark.key.startswith(f"{exchange}:")):
            out.fail("sequence", f"{where}: {model} marks are keyed by product, got {mark.key!r}")
        if mark.first is not None and (
            model is not SequenceModel.UPDATE_ID_CHAIN or mark.first > mark.value
        ):
            out.fail(
                "sequence",
                f"{where}: mark.first is for UPDATE_ID_CHAIN, at most value; got "
                f"{mark.first}..{mark.value} under {model}",
            )
        first = mark.value if mark.first is None else mark.first
        if model is SequenceModel.PER_CONNECTION and mark.key is not None:
            out.fail("sequence", f"{where}: PER_CONNECTION marks have key None, got {mark.key!r}")
        previous = last.get(mark.key)
        if previous is not None:
            if mark.value < previous:
                out.fail(
                    "sequence",
                    f"{where}: {mark.key or 'connection'} sequence went "
                    f"from {previous} back to {mark.value} within one connection",
                )
            elif mark.value == previous and mark.carries_state:
                # The runtime drops this frame's events as a duplicate. Real exchanges do
                # send some (Coinbase's last_match repeats the first ticker's number), so
                # it is counted, not failed; a synthetic recording should have none.
                duplicates += 1
            elif first > previous + 1:
                gaps += 1
        last[mark.key] = max(mark.value, previous or mark.value)
    return gaps, duplicates


def _rest_symbol(plugin: FeedPlugin, header: RecordingHeader, url: str) -> str | None:
    path = urlsplit(url).path.rstrip("/")
    query = urlsplit(url).query
    for symbol in header.symbols:
        request = plugin.book_request(symbol)
        if request is None:
            continue
        want = urlsplit(request.url)
        if want.path.rstrip("/") == path and all(
            f"{k}={v}" in query for k, v in request.params.items()
        ):
            return symbol
    return None


def _check_rest(
    plugin: FeedPlugin, header: RecordingHeader, frame: RecordedFrame, where: str, out: _Collector
) -> bool:
    symbol = _rest_symbol(plugin, header, frame.url or "")
    if symbol is None:
        out.fail("rest", f"{where}: no symbol's book_request() matches {frame.url!r}")
        return False
    try:
        snapshot: Any = plugin.parse_book(symbol, frame.raw.encode("utf-8"), frame.ts)
    except ValueError as exc:
        out.fail("rest", f"{where}: parse_book failed on the recorded reply: {exc}")
        return False
    except Exception as exc:
        out.fail("rest", f"{where}: parse_book must raise ValueError, raised {exc!r}")
        return False
    if not isinstance(snapshot, BookSnapshot) or not isinstance(snapshot.book, Book):
        out.fail("rest", f"{where}: parse_book must return a BookSnapshot, got {snapshot!r}")
        return False
    if not snapshot.book.snapshot:
        out.fail("rest", f"{where}: the REST book must be a snapshot (snapshot=True)")
    _check_event(plugin, snapshot.book, frame.ts, where, out)
    return True


def check_plugin(plugin: FeedPlugin, recording: Path) -> ConformanceReport:
    """Run the sans-IO conformance checks of ``plugin`` against ``recording``.

    Never raises for a plugin's fault: every failure is collected in the report (call
    :meth:`ConformanceReport.raise_for_failures` in a test). A recording that cannot be
    read raises :class:`~ledgerflux.recording.RecordingError`.
    """
    recording = Path(recording)
    out = _Collector()
    header = read_header(recording)
    _check_attributes(plugin, out)
    _check_subscribe(plugin, header, out)
    frames = events = errors = gaps = duplicates = rest_books = 0
    try:
        decoder = plugin.new_decoder()
    except Exception as exc:
        out.fail("decoder", f"new_decoder() raised {exc!r}")
        return ConformanceReport(
            plugin=type(plugin).__name__, recording=recording, failures=tuple(out.failures)
        )
    conn: int | None = None
    last: dict[str | None, int] = {}
    sample: list[RecordedFrame] = []
    for lineno, frame in enumerate(iter_frames(recording), start=2):
        where = f"{recording.name}:{lineno}"
        if frame.dir == "rest":
            rest_books += _check_rest(plugin, header, frame, where, out)
            continue
        if frame.dir != "in":
            continue
        if conn is not None and frame.conn != conn:
            # A reconnect: the runtime uses a fresh decoder and fresh sequence tracking.
            decoder = plugin.new_decoder()
            last = {}
        conn = frame.conn
        frames += 1
        if len(sample) < TRUNCATED_SAMPLE:
            sample.append(frame)
        try:
            result = decoder.decode(frame.raw, frame.ts)
        except Exception as exc:
            out.fail("decoder", f"{where}: decode() raised {exc!r}")
            continue
        decoded = _check_decoded(plugin, result, frame.ts, where, out)
        if decoded is None:
            continue
        events += len(decoded.events)
        errors += len(decoded.errors)
        new_gaps, new_duplicates = _check_marks(plugin, decoded, where, last, out)
        gaps += new_gaps
        duplicates += new_duplicates
    _check_garbage(plugin, sample, out)
    return ConformanceReport(
        plugin=getattr(type(plugin), "name", type(plugin).__name__),
        recording=recording,
        failures=tuple(out.failures),
        frames=frames,
        events=events,
        decode_errors=errors,
        gaps=gaps,
        duplicates=duplicates,
        rest_books=rest_books,
    )


def _check_garbage(plugin: FeedPlugin, sample: list[RecordedFrame], out: _Collector) -> None:
    decoder = plugin.new_decoder()
    cases: list[tuple[str, bytes | str]] = [(f"garbage {g!r:.40}", g) for g in GARBAGE_FRAMES]
    for frame in sample:
        cut = frame.raw[: len(frame.raw) // 2]
        cases.append((f"truncated frame {cut[:40]!r}", cut))
        cases.append((f"truncated bytes {cut[:40]!r}", cut.encode("utf-8")))
    for what, garbage in cases:
        try:
            result = decoder.decode(garbage, 1)
        except Exception as exc:
            out.fail("garbage", f"decode() raised {exc!r} on {what}")
            continue
        decoded = _check_decoded(plugin, result, 1, what, out)
        if decoded is None:
            continue
        try:
            orjson.loads(garbage)
        except orjson.JSONDecodeError:
            # Not JSON at all: the frame must be reported, never silently ignored.
            if not decoded.errors:
                out.fail("garbage", f"no DecodeError for a frame that is not JSON: {what}")


# -- live: the real runtime against the fake exchange -----------------------------------


class _CollectingPublisher:
    """A publisher that acks everything and keeps it (the runtime's Publisher protocol)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.dlq: list[dict[str, Any]] = []
        self.bad: list[str] = []
        self._changed = trio.Event()

    async def publish_batch(self, msgs: Sequence[Any]) -> list[Any]:
        from ledgerflux.bus import PubAck

        acks: list[Any] = []
        for i, msg in enumerate(msgs):
            if msg.subject.startswith("lf.dlq."):
                self.dlq.append(orjson.loads(msg.data))
            else:
                try:
                    self.events.extend(codec.decode_many(msg.data))
                except codec.CodecError as exc:
                    self.bad.append(f"{msg.subject}: {exc}")
            acks.append(PubAck(stream="LF_TICKS", seq=len(self.events) + i, duplicate=False))
        self._changed.set()
        self._changed = trio.Event()
        return acks

    async def wait_changed(self) -> None:
        await self._changed.wait()


def _comparable(event: Event) -> Event:
    # The runtime stamps its own receipt time; everything else must be what was decoded.
    # An event without an exchange time (Binance bookTicker) carries its receipt time.
    if event.ts_event == event.ts_ingest:
        return attrs.evolve(event, ts_ingest=0, ts_event=0)
    return attrs.evolve(event, ts_ingest=0)


def _expected_events(plugin: FeedPlugin, recording: Path) -> list[Event]:
    decoder = plugin.new_decoder()
    conn: int | None = None
    expected: list[Event] = []
    for frame in iter_frames(recording):
        if frame.dir != "in":
            continue
        if conn is not None and frame.conn != conn:
            decoder = plugin.new_decoder()
        conn = frame.conn
        expected.extend(_comparable(e) for e in decoder.decode(frame.raw, frame.ts).events)
    return expected


def _published_books(events: Sequence[Event], out: _Collector | None) -> dict[str, OrderBook]:
    """The books a consumer of the published stream would hold (``gap``/``resync`` status
    events invalidate a book until its next snapshot, as in the normalizer)."""
    books: dict[str, OrderBook] = {}
    for event in events:
        book = books.setdefault(event.product, OrderBook(event.product))
        if isinstance(event, Status):
            if event.status == "gap":
                book.mark_gap()
            elif event.status == "resync":
                book.start_resync()
        elif isinstance(event, Book):
            try:
                book.apply(event)
            except BookError as exc:
                if out is not None:
                    out.fail("live", f"published book change cannot be applied: {exc}")
    return books


def _books_match(fake: FakeExchange, books: dict[str, OrderBook], symbols: Sequence[str]) -> bool:
    for symbol in symbols:
        true_bids, true_asks, _ = fake.book(symbol)
        if not true_bids and not true_asks:
            continue  # no book for this symbol in the recording
        book = books.get(fake.product(symbol))
        if book is None or (book.bids(), book.asks()) != (true_bids, true_asks):
            return False
    return True


async def check_plugin_live(
    plugin: FeedPlugin,
    recording: Path,
    *,
    faults: Faults | None = None,
    timeout_s: float = 30.0,
    speed: float = 0.0,
) -> ConformanceReport:
    """Run the ingestor runtime with ``plugin`` against a fake exchange replaying
    ``recording`` (with ``faults``, if given), and check what it publishes.

    Checks: the runtime reports ready (``task_status.started()``); nothing published is
    undecodable; every published book change applies; at the end each product's published
    book equals the fake exchange's true book. Without faults, and for a recording without
    sequence gaps, the published non-status events must also be exactly the events of the
    recording decoded sans-IO, in order (receipt times aside). With a ``drop`` fault the
    runtime must publish a ``gap`` status. Gives up after ``timeout_s`` (a failure, not an
    exception). On cancellation the runtime and the fake exchange are shut down and
    nothing is reported. ``speed`` is the fake exchange's (0: as fast as the runtime reads).
    """
    from ledgerflux.config import IngestConfig
    from ledgerflux.feeds.runtime import run_feed

    recording = Path(recording)
    out = _Collector()
    header = read_header(recording)
    sans_io = check_plugin(plugin, recording)
    subscription = _subscription(plugin, header)
    # A stream without snapshots starts from a REST book fetched live (its diffs up to the
    # book's id are dropped): its books are judged by the true books, its other events
    # must still be exactly the recording's.
    rest_first = PluginOptions.of(plugin).wants_rest_book(subscription)

    def compared(event: Event) -> bool:
        return not isinstance(event, Status) and not (rest_first and isinstance(event, Book))

    expected = _expected_events(plugin, recording)
    expected_data = [e for e in expected if compared(e)]
    settings = IngestConfig(
        feed=plugin.name, symbols=header.symbols, channels=subscription.channels
    )
    # The fake counts faults down in place: remember what was asked for.
    wants_gap = faults is not None and faults.drop > 0
    publisher = _CollectingPublisher()
    books_equal = False
    with trio.move_on_after(timeout_s) as scope:
        async with (
            open_fake_exchange(recording, plugin=plugin, faults=faults, speed=speed) as fake,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(
                partial(
                    run_feed,
                    plugin,
                    subscription,
                    publisher,
                    settings=settings,
                    shards=1,
                    endpoint=fake.ws_url,
                    rest_endpoint=fake.rest_url,
                )
            )
            await fake.finished.wait()
            # Wait for the runtime to catch up: the books match the exchange's true books
            # (and, without faults, every recorded event is out).
            while True:
                count = sum(compared(e) for e in publisher.events)
                books_equal = _books_match(
                    fake, _published_books(publisher.events, None), header.symbols
                )
                if books_equal and (faults is not None or count >= len(expected_data)):
                    break
                await publisher.wait_changed()
            nursery.cancel_scope.cancel()
    published = [_comparable(e) for e in publisher.events if compared(e)]
    if scope.cancelled_caught:
        out.fail(
            "live",
            f"timed out after {timeout_s} s: {len(published)} of {len(expected_data)} events "
            f"published, books {'equal' if books_equal else 'not equal'} to the true books",
        )
    _published_books(publisher.events, out)
    for bad in publisher.bad:
        out.fail("live", f"undecodable publish: {bad}")
    statuses = [e.status for e in publisher.events if isinstance(e, Status)]
    if wants_gap and "gap" not in statuses:
        out.fail("live", f"dropped frames but no gap status was published (saw {statuses})")
    exact = faults is None and sans_io.gaps == 0 and not scope.cancelled_caught
    if exact and published != expected_data:
        first = next(
            (i for i, (a, b) in enumerate(zip(published, expected_data, strict=False)) if a != b),
            min(len(published), len(expected_data)),
        )
        out.fail(
            "live",
            f"published events differ from the recording's from index {first}: "
            f"{published[first : first + 1]!r} vs {expected_data[first : first + 1]!r}",
        )
    return ConformanceReport(
        plugin=plugin.name,
        recording=recording,
        failures=tuple(out.failures),
        frames=sans_io.frames,
        events=len(publisher.events),
        decode_errors=len(publisher.dlq),
        gaps=sans_io.gaps,
        rest_books=sans_io.rest_books,
    )
