"""A fake exchange that replays a recording, with faults, for plugin and runtime tests.

:func:`open_fake_exchange` starts two servers on 127.0.0.1 (random ports):

* a WebSocket server (trio-websocket) that waits for the client's first frame (its
  subscribe message), then streams the recording's ``in`` frames, with
  :class:`Faults` applied;
* a minimal HTTP/1.1 server (h11 on Trio sockets) for the plugin's REST book path.

**One market, many connections.** The recording is the market: one task reads it and
hands every frame to each subscribed connection. It waits while no connection is
subscribed, so a client that reconnects misses nothing it would not have missed anyway
(a fault such as ``drop`` is the way to lose frames). A connection after the first one
gets, right after its subscribe message, a subscription reply and a fresh book snapshot
rendered from the *true* book (see below), the way a real exchange answers a resubscribe;
then it continues at the market's current position. When the recording's own ``conn``
number changes (the recorded client reconnected), the market keeps streaming to the
current connections: the frames of the new recorded connection (its subscription reply,
its snapshot) simply follow.

**The true book.** Every frame the market reads, including the ones a fault drops or
corrupts, is decoded with the recording's plugin (found by entry-point name in
``ledgerflux.feeds``) and applied to a :class:`~ledgerflux.book.OrderBook` per product;
the last sequence number per product is kept too. The REST server renders its book reply
from that true book, so a test can assert "after a forced gap the client's book equals
the REST book". With ``rest_source="recorded"`` (or when no renderer is known for the
plugin) it answers with the most recent ``rest`` reply of the recording for that symbol
at or before the current position instead. ``Faults.stale_rest_book`` serves the book as
it was :data:`STALE_LAG_EVENTS` book events earlier, with that older sequence number.

Per-connection counters (``SequenceModel.PER_CONNECTION``, Advanced Trade's
``sequence_num``) are renumbered for each client connection from 0, keeping the recorded
spacing: a dropped frame or a recorded gap is still a hole, and a recorded reconnect does
not restart the count.

Renderers (WebSocket snapshot, subscription reply, REST book) are known for the plugins
``coinbase``, ``coinbase-advanced``, ``example``, ``okx`` and ``kraken``; see
:class:`Dialect` to add one.

Backpressure policy: each connection has a bounded outbox of :data:`OUTBOX_FRAMES`
frames and the market **blocks** on a full outbox, so the market moves at the pace of
the slowest subscribed client and never loses a frame on its own.
"""

from __future__ import annotations

import datetime
import itertools
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
import orjson
import trio
import trio_websocket

from ledgerflux.book import BookError, BookState, OrderBook
from ledgerflux.events import Book
from ledgerflux.plugin import FeedDecoder, FeedPlugin, SequenceModel
from ledgerflux.recording import RecordedFrame, RecordingHeader, iter_frames, read_header

__all__ = [
    "DIALECT_ENTRY_POINTS",
    "OUTBOX_FRAMES",
    "STALE_LAG_EVENTS",
    "Dialect",
    "FakeExchange",
    "Faults",
    "Levels",
    "dialect_for",
    "open_fake_exchange",
]

OUTBOX_FRAMES = 256
"""Per-connection outbox size (frames); the market blocks when it is full."""
STALE_LAG_EVENTS = 20
"""How many book events behind the true book a ``stale_rest_book`` reply is."""
UNKNOWN_TYPE = "x-ledgerflux-unknown"
"""The ``type``/``channel`` of frames injected by ``Faults.unknown_type``."""

Levels = list[tuple[Decimal, Decimal]]


@attrs.define
class Faults:
    """Faults to inject; all off by default. Counts apply to the next frames streamed
    (after the subscribe message) and count down as they are used; they can be re-armed at
    runtime with :meth:`FakeExchange.inject`."""

    drop: int = 0
    """Drop the next N frames (they still move the true book: a real gap)."""
    duplicate: int = 0
    """Send each of the next N frames twice."""
    reorder: int = 0
    """Swap the next N pairs of frames."""
    malformed: int = 0
    """Replace the next N frames with their first half (truncated JSON)."""
    unknown_type: int = 0
    """Insert N frames of an unknown type (:data:`UNKNOWN_TYPE`) before the next frames."""
    close_after: int | None = None
    """Abruptly close every connection (TCP close, no close frame: the client sees 1006)
    after N more frames. One-shot."""
    stall_after: int | None = None
    """After N more frames, send nothing at all (no frames, no heartbeats) for
    ``stall_s`` seconds. One-shot."""
    stall_s: float = 0.0
    stale_rest_book: bool = False
    """The REST book is older than the stream (see :data:`STALE_LAG_EVENTS`)."""
    slow_reader: bool = False
    """The server stops reading client frames after the subscribe message: the client's
    pings go unanswered and its sends block once the TCP buffers are full."""
    start_after: int = 0
    """The counted faults (drop, duplicate, reorder, malformed, unknown_type) wait until
    the market has read this many frames of the recording (e.g. past the snapshots)."""


# -- dialects: how a plugin's exchange renders what the fake has to invent ---------------


def _iso(ts_ns: int, digits: int = 6) -> str:
    seconds, frac = divmod(ts_ns, 1_000_000_000)
    base = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac // 10 ** (9 - digits):0{digits}d}Z"


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode("utf-8")


def _subscribe_symbols(message: str) -> tuple[str, ...] | None:
    """Symbols in a subscribe message of any of the known shapes; None if none found."""
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    found: list[str] = []
    for key in ("product_ids", "symbols"):
        value = obj.get(key)
        if isinstance(value, list):
            found.extend(v for v in value if isinstance(v, str))
    channels = obj.get("channels")
    if isinstance(channels, list):
        for channel in channels:
            if isinstance(channel, dict) and isinstance(channel.get("product_ids"), list):
                found.extend(v for v in channel["product_ids"] if isinstance(v, str))
    return tuple(dict.fromkeys(found)) or None


@attrs.frozen
class Dialect:
    """What the fake must render itself for one plugin's exchange (all pure functions)."""

    subscribed: Callable[[list[str], tuple[str, ...], int, int], list[str]]
    """(client subscribe messages, symbols, connection seq, ts_ns) → the exchange's
    subscription reply."""
    ws_snapshot: Callable[[str, Levels, Levels, int, int], list[str]]
    """(symbol, bids, asks, seq, ts_ns) → WebSocket frames carrying a full snapshot."""
    rest_book: Callable[[str, Levels, Levels, int, int], str] | None
    """(symbol, bids, asks, seq, ts_ns) → REST book body; None: no REST book."""
    rest_symbol: Callable[[str, dict[str, str]], str | None] | None = None
    """(path, query) → symbol, when the plugin itself cannot be asked."""
    conn_seq: Callable[[str], int | None] | None = None
    """For a per-connection counter (``SequenceModel.PER_CONNECTION``): the frame's number."""
    restamp: Callable[[str, int], str] | None = None
    """(frame, number) → the frame carrying that per-connection number instead."""
    instruments: Callable[[tuple[str, ...]], str] | None = None
    """(the recording's symbols) → the body of the plugin's ``instruments_request()``."""
    resubscribed: Callable[[str], tuple[str, ...]] | None = None
    """(a client frame after its subscribe) → the symbols whose book it subscribes again
    (an unsubscribe + subscribe of one product on the same connection)."""
    seq_from_book: bool = False
    """Render snapshots with the last book event's ``src_seq`` (the exchange's own number)
    instead of the last sequence mark (OKX: marks are chain positions)."""


def _cb_subscribed(messages: list[str], symbols: tuple[str, ...], seq: int, ts: int) -> list[str]:
    channels: list[str] = []
    for message in messages:
        try:
            obj = orjson.loads(message)
        except orjson.JSONDecodeError:
            continue
        for c in obj.get("channels", []) if isinstance(obj, dict) else []:
            name = c.get("name") if isinstance(c, dict) else c
            if isinstance(name, str):
                channels.append(name)
    reply = {
        "type": "subscriptions",
        "channels": [{"name": c, "product_ids": list(symbols)} for c in channels],
    }
    return [_dumps(reply)]


def _cb_ws_snapshot(symbol: str, bids: Levels, asks: Levels, seq: int, ts: int) -> list[str]:
    return [
        _dumps(
            {
                "type": "snapshot",
                "product_id": symbol,
                "bids": [[str(p), str(s)] for p, s in bids],
                "asks": [[str(p), str(s)] for p, s in asks],
                "time": _iso(ts),
            }
        )
    ]


def _cb_rest_book(symbol: str, bids: Levels, asks: Levels, seq: int, ts: int) -> str:
    return _dumps(
        {
            "bids": [[str(p), str(s), 1] for p, s in bids],
            "asks": [[str(p), str(s), 1] for p, s in asks],
            "sequence": seq,
            "auction_mode": False,
            "auction": None,
            "time": _iso(ts),
        }
    )


def _cb_rest_symbol(path: str, query: dict[str, str]) -> str | None:
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[-1] == "book" and parts[-3] == "products":
        return parts[-2]
    return None


def _adv_envelope(channel: str, events: list[Any], seq: int, ts: int) -> str:
    # Frames the fake invents reuse the market's last ``sequence_num``: they go to a new
    # connection, whose decoder has seen nothing yet, and the next recorded frame follows.
    return _dumps(
        {
            "channel": channel,
            "client_id": "",
            "timestamp": _iso(ts, 9),
            "sequence_num": seq,
            "events": events,
        }
    )


def _adv_subscribed(messages: list[str], symbols: tuple[str, ...], seq: int, ts: int) -> list[str]:
    subs: dict[str, list[str]] = {}
    for message in messages:
        try:
            obj = orjson.loads(message)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("channel"), str):
            subs[obj["channel"]] = list(symbols)
    return [_adv_envelope("subscriptions", [{"subscriptions": subs}], seq, ts)]


def _adv_ws_snapshot(symbol: str, bids: Levels, asks: Levels, seq: int, ts: int) -> list[str]:
    when = _iso(ts, 6)
    updates = [
        {"side": "bid", "event_time": when, "price_level": str(p), "new_quantity": str(s)}
        for p, s in bids
    ] + [
        {"side": "offer", "event_time": when, "price_level": str(p), "new_quantity": str(s)}
        for p, s in asks
    ]
    event = {"type": "snapshot", "product_id": symbol, "updates": updates}
    return [_adv_envelope("l2_data", [event], seq, ts)]


def _adv_rest_book(symbol: str, bids: Levels, asks: Levels, seq: int, ts: int) -> str:
    return _dumps(
        {
            "pricebook": {
                "product_id": symbol,
                "bids": [{"price": str(p), "size": str(s)} for p, s in bids],
                "asks": [{"price": str(p), "size": str(s)} for p, s in asks],
                "time": _iso(ts),
            },
            "last": "",
            "mid_market": "",
            "spread_bps": "",
            "spread_absolute": "",
        }
    )


def _adv_conn_seq(text: str) -> int | None:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("sequence_num") if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _adv_restamp(text: str, number: int) -> str:
    obj = orjson.loads(text)
    if obj.get("sequence_num") == number:
        return text  # keep the recorded bytes whenever the number is unchanged
    obj["sequence_num"] = number
    return _dumps(obj)


def _adv_rest_symbol(path: str, query: dict[str, str]) -> str | None:
    if path.rstrip("/").endswith("product_book"):
        return query.get("product_id")
    return None


def _ex_subscribed(messages: list[str], symbols: tuple[str, ...], seq: int, ts: int) -> list[str]:
    return [_dumps({"type": "subscribed", "symbols": list(symbols)})]


def _ex_ws_snapshot(symbol: str, bids: Levels, asks: Levels, seq: int, ts: int) -> list[str]:
    return [
        _dumps(
            {
                "type": "book",
                "symbol": symbol,
                "seq": seq,
                "snapshot": True,
                "bids": [[str(p), str(s)] for p, s in bids],
                "asks": [[str(p), str(s)] for p, s in asks],
                "ts": ts,
            }
        )
    ]


def _okx_subscribed(messages: list[str], symbols: tuple[str, ...], seq: int, ts: int) -> list[str]:
    from ledgerflux.testing.synth_okx import render_subscribed

    channels: list[str] = []
    for message in messages:
        obj = _loads_dict(message)
        for arg in obj.get("args", []) if obj else []:
            if isinstance(arg, dict) and isinstance(arg.get("channel"), str):
                channels.append(arg["channel"])
    return [render_subscribed(c, s, "fake0001") for c in dict.fromkeys(channels) for s in symbols]


def _okx_ws_snapshot(symbol: str, bids: Levels, asks: Levels, seq: int, ts: int) -> list[str]:
    from ledgerflux.testing.synth_okx import render_snapshot

    return [render_snapshot(symbol, bids, asks, seq, ts)]


def _okx_resubscribed(message: str) -> tuple[str, ...]:
    obj = _loads_dict(message)
    if obj is None or obj.get("op") != "subscribe":
        return ()
    return tuple(
        a["instId"]
        for a in obj.get("args", [])
        if isinstance(a, dict) and a.get("channel") == "books" and isinstance(a.get("instId"), str)
    )


def _kraken_subscribed(
    messages: list[str], symbols: tuple[str, ...], seq: int, ts: int
) -> list[str]:
    from ledgerflux.testing.synth_kraken import render_subscribed

    replies: list[str] = []
    for message in messages:
        obj = _loads_dict(message)
        params = obj.get("params") if obj else None
        if not isinstance(params, dict) or "symbol" not in params:
            continue
        for symbol in symbols:
            result = {k: v for k, v in params.items() if k != "symbol"}
            replies.append(render_subscribed({**result, "symbol": _kraken_pair(symbol)}, ts, None))
    return replies


def _kraken_pair(symbol: str) -> str:
    return symbol.replace("-", "/")


def _kraken_ws_snapshot(symbol: str, bids: Levels, asks: Levels, seq: int, ts: int) -> list[str]:
    from ledgerflux.testing.synth_kraken import render_snapshot

    return [render_snapshot(_kraken_pair(symbol), bids, asks, ts)]


def _kraken_resubscribed(message: str) -> tuple[str, ...]:
    obj = _loads_dict(message)
    params = obj.get("params") if obj else None
    if obj is None or obj.get("method") != "subscribe" or not isinstance(params, dict):
        return ()
    if params.get("channel") != "book" or not isinstance(params.get("symbol"), list):
        return ()
    return tuple(p.replace("/", "-") for p in params["symbol"] if isinstance(p, str))


def _loads_dict(message: str) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


DIALECTS: dict[str, Dialect] = {
    "coinbase": Dialect(_cb_subscribed, _cb_ws_snapshot, _cb_rest_book, _cb_rest_symbol),
    "coinbase-advanced": Dialect(
        _adv_subscribed,
        _adv_ws_snapshot,
        _adv_rest_book,
        _adv_rest_symbol,
        conn_seq=_adv_conn_seq,
        restamp=_adv_restamp,
    ),
    "example": Dialect(_ex_subscribed, _ex_ws_snapshot, None),
    "okx": Dialect(
        _okx_subscribed,
        _okx_ws_snapshot,
        None,
        resubscribed=_okx_resubscribed,
        seq_from_book=True,
    ),
    "kraken": Dialect(
        _kraken_subscribed, _kraken_ws_snapshot, None, resubscribed=_kraken_resubscribed
    ),
}
"""Renderers by plugin entry-point name."""


DIALECT_ENTRY_POINTS = "ledgerflux.fake_dialects"
"""Entry-point group where a plugin's distribution registers its :class:`Dialect` (under
the plugin's name), so the fake speaks its exchange without a change here."""


def dialect_for(name: str) -> Dialect | None:
    """The renderers for plugin ``name``: :data:`DIALECTS`, else the entry point."""
    if name in DIALECTS:
        return DIALECTS[name]
    for ep in entry_points(group=DIALECT_ENTRY_POINTS, name=name):
        try:
            found = ep.load()
        except Exception:  # a broken third-party dialect must not break the fake
            return None
        return found if isinstance(found, Dialect) else None
    return None


def load_plugin(name: str) -> FeedPlugin | None:
    """The installed feed plugin registered as ``name`` (a fresh instance), or None."""
    for ep in entry_points(group="ledgerflux.feeds", name=name):
        try:
            cls = ep.load()
        except Exception:  # a broken third-party plugin must not break the fake
            return None
        plugin: FeedPlugin = cls()
        return plugin
    return None


# -- the true book -----------------------------------------------------------------------


class _TrueMarket:
    """The exchange's real state at the market's position: books and sequences."""

    def __init__(self, plugin: FeedPlugin | None) -> None:
        self.plugin = plugin
        self.decoder: FeedDecoder | None = plugin.new_decoder() if plugin else None
        self.books: dict[str, OrderBook] = {}
        self.seqs: dict[str, int] = {}
        self.book_seqs: dict[str, int] = {}
        """The last ``src_seq`` of a book event per product."""
        self.conn_seq = 0
        self.book_errors = 0
        self.decode_errors = 0
        # Per product: events not yet applied to the stale book, and the stale book.
        self._lag: dict[str, deque[tuple[Book, int]]] = {}
        self.stale_books: dict[str, OrderBook] = {}
        self.stale_seqs: dict[str, int] = {}
        self._conn: int | None = None

    def feed(self, frame: RecordedFrame) -> None:
        if self.plugin is None or self.decoder is None:
            return
        if self._conn is not None and frame.conn != self._conn:
            # The recorded client reconnected: its decoder started afresh, so does ours.
            self.decoder = self.plugin.new_decoder()
        self._conn = frame.conn
        decoded = self.decoder.decode(frame.raw, frame.ts)
        self.decode_errors += len(decoded.errors)
        applied: set[str] = set()
        chain = self.plugin.sequence_model is SequenceModel.UPDATE_ID_CHAIN
        for mark in decoded.marks:
            if mark.key is None:
                self.conn_seq = mark.value
            else:
                last = self.seqs.get(mark.key)
                if chain and last is not None and mark.value <= last:
                    applied.add(mark.key)  # already in the book (a REST book is newer)
                first = mark.value if mark.first is None else mark.first
                if chain and last is not None and first > last + 1 and mark.key in self.books:
                    # The recording itself lost diffs: the book waits for its REST book.
                    self.books[mark.key].mark_gap()
                self.seqs[mark.key] = max(self.seqs.get(mark.key, 0), mark.value)
        for event in decoded.events:
            if not isinstance(event, Book) or event.product in applied:
                continue
            if event.src_seq is not None:
                self.book_seqs[event.product] = event.src_seq
            book = self.books.setdefault(event.product, OrderBook(event.product))
            try:
                book.apply(event)
            except BookError:
                # The recording itself is inconsistent here; count it, keep going.
                self.book_errors += 1
                continue
            self._lag_apply(event)

    def seq(self, product: str) -> int:
        return self.seqs.get(product, self.conn_seq)

    def seed(self, symbol: str, frame: RecordedFrame) -> None:
        """A recorded REST book of a feed whose stream has no snapshot (an update-id
        chain): it starts the true book, unless the book is already live."""
        plugin = self.plugin
        if plugin is None or plugin.sequence_model is not SequenceModel.UPDATE_ID_CHAIN:
            return
        try:
            snapshot = plugin.parse_book(symbol, frame.raw.encode(), frame.ts)
        except ValueError:
            self.decode_errors += 1
            return
        product = snapshot.book.product
        book = self.books.setdefault(product, OrderBook(product))
        if book.state is BookState.LIVE:
            return
        book.apply(snapshot.book)
        self.seqs[product] = snapshot.src_seq
        self._lag_apply(snapshot.book)

    def _lag_apply(self, event: Book) -> None:
        lag = self._lag.setdefault(event.product, deque())
        lag.append((event, self.seq(event.product)))
        while len(lag) > STALE_LAG_EVENTS:
            old, seq = lag.popleft()
            stale = self.stale_books.setdefault(old.product, OrderBook(old.product))
            try:
                stale.apply(old)
            except BookError:
                continue
            self.stale_seqs[old.product] = seq


# -- the fake exchange -------------------------------------------------------------------


@attrs.define(eq=False)
class _Conn:
    number: int
    ws: trio_websocket.WebSocketConnection
    outbox: trio.MemorySendChannel[tuple[str, int | None]]
    symbols: tuple[str, ...] | None
    greeted: int = 0
    """Frames the fake rendered for this connection before streaming (a resubscribe)."""
    seq_base: int | None = None
    """Market number that maps to this connection's number 0 (per-connection counters)."""
    subscribed: bool = False


class FakeExchange:
    """A running fake exchange; made by :func:`open_fake_exchange`."""

    def __init__(
        self,
        recording: Path,
        header: RecordingHeader,
        faults: Faults,
        *,
        speed: float,
        loop: bool,
        plugin: FeedPlugin | None,
        dialect: Dialect | None,
        rest_source: Literal["true", "recorded"],
        answer_resubscribe: bool = False,
    ) -> None:
        self.recording = recording
        self.header = header
        self.faults = faults
        self.speed = speed
        self.loop = loop
        self.plugin = plugin
        self.dialect = dialect
        self.rest_source = rest_source
        self.answer_resubscribe = answer_resubscribe
        self.resubscribes = 0
        """Resubscribes answered with a fresh snapshot (``answer_resubscribe``)."""
        self.ws_url = ""
        self.rest_url = ""
        self.connections = 0
        """Connections accepted so far."""
        self.received: list[str] = []
        """Every frame any client sent, in order."""
        self.rest_requests: list[str] = []
        """Every REST request target (path and query), in order."""
        self.frames_read = 0
        """``in`` frames the market has read from the recording (sent or dropped)."""
        self.frames_sent = 0
        """Frames sent, over all connections."""
        self.finished = trio.Event()
        """Set once the market has read the whole recording (never, with ``loop``)."""
        self.true = _TrueMarket(plugin)
        self._recorded_rest: dict[str, str] = {}
        self._conns: list[_Conn] = []
        self._has_subscriber = trio.Event()
        self._received_event = trio.Event()
        self._number_conn: int | None = None
        self._number_offset = 0
        self._last_number = 0
        self._ts_now = header.created_ns
        self._pending_close = faults.close_after
        self._pending_stall = faults.stall_after

    # -- public --------------------------------------------------------------------------

    def inject(self, **faults: Any) -> None:
        """Arm faults at runtime, e.g. ``inject(drop=3)`` drops the next three frames.

        Takes the field names of :class:`Faults`; an unknown name is a ``TypeError``."""
        known = {f.name for f in attrs.fields(Faults)}
        unknown = set(faults) - known
        if unknown:
            raise TypeError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        for name, value in faults.items():
            setattr(self.faults, name, value)
        if "close_after" in faults:
            self._pending_close = faults["close_after"]
        if "stall_after" in faults:
            self._pending_stall = faults["stall_after"]

    async def wait_received(self, count: int) -> None:
        """Wait until clients have sent at least ``count`` frames in total (see
        :attr:`received`). Cancellation just stops the wait."""
        while len(self.received) < count:
            await self._received_event.wait()

    def pending(self) -> int:
        """Frames queued for the current connections and not sent yet (with
        :attr:`finished`, zero means the whole recording is out)."""
        return sum(conn.outbox.statistics().current_buffer_used for conn in self._conns)

    def _receive(self, message: str | bytes) -> str:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        self.received.append(text)
        self._received_event.set()
        self._received_event = trio.Event()
        return text

    def book(self, symbol: str) -> tuple[Levels, Levels, int]:
        """The true book of ``symbol`` at the market's position: bids, asks (best first)
        and the last sequence number seen for it."""
        product = self._product(symbol)
        book = self.true.books.get(product)
        seq = self.true.seq(product)
        if self.dialect is not None and self.dialect.seq_from_book:
            seq = self.true.book_seqs.get(product, seq)
        if book is None:
            return [], [], seq
        return book.bids(), book.asks(), seq

    # -- internals -----------------------------------------------------------------------

    def product(self, symbol: str) -> str:
        """The canonical product of an exchange symbol (``coinbase:BTC-USD``)."""
        return self._product(symbol)

    def _product(self, symbol: str) -> str:
        exchange = self.plugin.exchange if self.plugin is not None else self.header.plugin
        return f"{exchange}:{symbol}"

    def _frames(self) -> Iterator[RecordedFrame]:
        for round_ in itertools.count():
            if round_ and not self.loop:
                return
            yield from iter_frames(self.recording)

    async def _serve_market(self) -> None:
        """Read the recording and hand each frame, faults applied, to every subscriber."""
        held: tuple[str, int | None] | None = None
        prev_ts: int | None = None
        for frame in self._frames():
            if frame.dir == "out":
                continue
            if frame.dir == "rest":
                symbol = self._rest_symbol_of(frame.url or "")
                if symbol is not None:
                    self._recorded_rest[symbol] = frame.raw
                    self.true.seed(symbol, frame)
                continue
            await self._has_subscriber.wait()
            if self.speed > 0 and prev_ts is not None and frame.ts > prev_ts:
                await trio.sleep((frame.ts - prev_ts) / 1e9 / self.speed)
            prev_ts = frame.ts
            self._ts_now = frame.ts
            self.true.feed(frame)
            self.frames_read += 1
            item = (frame.raw, self._market_number(frame))
            f = self.faults
            if self.frames_read <= f.start_after and held is None:
                await self._broadcast(item)
                continue
            while f.unknown_type > 0:
                f.unknown_type -= 1
                unknown = _dumps({"type": UNKNOWN_TYPE, "channel": UNKNOWN_TYPE})
                await self._broadcast((unknown, None))
            if f.drop > 0:
                f.drop -= 1
                continue
            if f.malformed > 0:
                f.malformed -= 1
                item = (frame.raw[: len(frame.raw) // 2], None)
            if f.reorder > 0 and held is None:
                held = item
                continue
            await self._broadcast(item)
            if held is not None:
                f.reorder -= 1
                item, held = held, None
                await self._broadcast(item)
            if f.duplicate > 0:
                f.duplicate -= 1
                await self._broadcast(item)
        if held is not None:
            await self._broadcast(held)
        self.finished.set()

    def _market_number(self, frame: RecordedFrame) -> int | None:
        """The frame's per-connection number on the market's own continuous counter.

        A recorded reconnect restarts the recorded counter; the market's counter continues
        instead (the fake keeps streaming on the same connection), and each client
        connection then counts from its own start (see ``_Conn.seq_base``).
        """
        if self.dialect is None or self.dialect.conn_seq is None:
            return None
        recorded = self.dialect.conn_seq(frame.raw)
        if recorded is None:
            return None
        if self._number_conn is None:
            self._number_offset = 0
        elif frame.conn != self._number_conn:
            self._number_offset = self._last_number + 1 - recorded
        self._number_conn = frame.conn
        self._last_number = recorded + self._number_offset
        return self._last_number

    def _stamp(self, conn: _Conn, item: tuple[str, int | None]) -> str:
        text, number = item
        if number is None or self.dialect is None or self.dialect.restamp is None:
            return text
        if conn.seq_base is None:
            conn.seq_base = number - conn.greeted
        return self.dialect.restamp(text, number - conn.seq_base)

    async def _broadcast(self, item: tuple[str, int | None]) -> None:
        text = item[0]
        for conn in list(self._conns):
            if conn.symbols is not None and not self._for_symbols(text, conn.symbols):
                continue
            try:
                await conn.outbox.send(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop_conn(conn)
        await self._after_frame()

    def _for_symbols(self, text: str, symbols: tuple[str, ...]) -> bool:
        # Only frames that clearly name another product are filtered; anything else
        # (heartbeats of a connection, subscription replies, garbage) goes to everyone.
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(obj, dict):
            return True
        product = obj.get("product_id", obj.get("symbol"))
        return not isinstance(product, str) or product in symbols

    async def _after_frame(self) -> None:
        if self._pending_stall is not None:
            self._pending_stall -= 1
            if self._pending_stall <= 0:
                self._pending_stall = None
                self.faults.stall_after = None
                await trio.sleep(self.faults.stall_s)

    async def _count_for_close(self) -> None:
        # Counted where frames are really sent, not where the market queues them, so
        # that the client receives exactly ``close_after`` frames before the drop.
        if self._pending_close is None:
            return
        self._pending_close -= 1
        if self._pending_close <= 0:
            self._pending_close = None
            self.faults.close_after = None
            for conn in list(self._conns):
                await self._abort(conn)

    async def _abort(self, conn: _Conn) -> None:
        self._drop_conn(conn)
        # Closing the TCP stream under trio-websocket skips the close handshake, which is
        # exactly the fault: the client sees an abnormal closure (1006). There is no
        # public API for that, hence the private attribute.
        stream: trio.abc.Stream = conn.ws._stream
        with trio.CancelScope(shield=True):
            await stream.aclose()

    def _drop_conn(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
            conn.outbox.close()
        if not self._conns and self._has_subscriber.is_set():
            # Only replace a set event: the market may already wait on an unset one.
            self._has_subscriber = trio.Event()

    async def _handle_ws(self, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        self.connections += 1
        number = self.connections
        try:
            first = await ws.get_message()
        except trio_websocket.ConnectionClosed:
            return
        first_text = self._receive(first)
        send, receive = trio.open_memory_channel[tuple[str, int | None]](OUTBOX_FRAMES)
        conn = _Conn(number, ws, send, _subscribe_symbols(first_text))
        async with trio.open_nursery() as nursery:
            if not self.faults.slow_reader:
                nursery.start_soon(self._read_client, ws, nursery.cancel_scope, conn)
            try:
                if number > 1 and self.dialect is not None:
                    await self._greet(ws, first_text, conn)
                self._conns.append(conn)
                self._has_subscriber.set()
                async with receive:
                    async for item in receive:
                        await ws.send_message(self._stamp(conn, item))
                        self.frames_sent += 1
                        await self._count_for_close()
            except trio_websocket.ConnectionClosed:
                pass
            finally:
                self._drop_conn(conn)
                nursery.cancel_scope.cancel()

    async def _greet(self, ws: trio_websocket.WebSocketConnection, first: str, conn: _Conn) -> None:
        """A resubscribe on a new connection: subscription reply, then fresh snapshots."""
        dialect = self.dialect
        assert dialect is not None
        wanted = conn.symbols or self.header.symbols
        frames = list(dialect.subscribed([first], wanted, 0, self._ts_now))
        for symbol in wanted:
            bids, asks, seq = self.book(symbol)
            if self._product(symbol) in self.true.books:
                frames.extend(dialect.ws_snapshot(symbol, bids, asks, seq, self._ts_now))
        for text in frames:
            if dialect.restamp is not None:
                # A per-connection counter starts at 0 on every connection.
                text = dialect.restamp(text, conn.greeted)
            conn.greeted += 1
            await ws.send_message(text)
            self.frames_sent += 1

    async def _read_client(
        self, ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope, conn: _Conn
    ) -> None:
        try:
            while True:
                text = self._receive(await ws.get_message())
                await self._resubscribe(text, conn)
        except trio_websocket.ConnectionClosed:
            scope.cancel()

    async def _resubscribe(self, text: str, conn: _Conn) -> None:
        """A client subscribing one product's book again on its connection gets the
        subscription reply and a snapshot of the true book, in stream order (through its
        outbox), with ``answer_resubscribe``; otherwise the recording's own answer does."""
        dialect = self.dialect
        if not self.answer_resubscribe or dialect is None or dialect.resubscribed is None:
            return
        symbols = dialect.resubscribed(text)
        if not symbols:
            return
        frames = list(dialect.subscribed([text], symbols, 0, self._ts_now))
        for symbol in symbols:
            bids, asks, seq = self.book(symbol)
            frames.extend(dialect.ws_snapshot(symbol, bids, asks, seq, self._ts_now))
        self.resubscribes += 1
        try:
            for frame in frames:
                await conn.outbox.send((frame, None))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    # -- REST --------------------------------------------------------------------------

    def _instruments_reply(self, target: str) -> str | None:
        """The instruments listing when ``target`` is the plugin's instruments request."""
        render = self.dialect.instruments if self.dialect is not None else None
        ask = getattr(self.plugin, "instruments_request", None)
        request = ask() if callable(ask) else None
        if render is None or request is None:
            return None
        if urlsplit(target).path.endswith(urlsplit(request.url).path):
            return render(self.header.symbols)
        return None

    def _rest_symbol_of(self, target: str) -> str | None:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        if self.plugin is not None:
            base = urlsplit(self.plugin.rest_endpoint or "").path.rstrip("/")
            for symbol in self.header.symbols:
                request = self.plugin.book_request(symbol)
                if request is None:
                    continue
                want = urlsplit(request.url)
                rel = want.path[len(base) :] if want.path.startswith(base) else want.path
                want_query = {**dict(parse_qsl(want.query)), **request.params}
                if parts.path.endswith(rel) and all(
                    query.get(k) == v for k, v in want_query.items()
                ):
                    return symbol
        if self.dialect is not None and self.dialect.rest_symbol is not None:
            return self.dialect.rest_symbol(parts.path, query)
        return None

    def _rest_reply(self, target: str) -> tuple[int, str]:
        listing = self._instruments_reply(target)
        if listing is not None:
            return 200, listing
        symbol = self._rest_symbol_of(target)
        if symbol is None:
            return 404, _dumps({"message": "NotFound"})
        product = self._product(symbol)
        render = self.dialect.rest_book if self.dialect is not None else None
        true_book = self.true.books.get(product)
        live = true_book is not None and true_book.state is BookState.LIVE
        if self.rest_source == "true" and render is not None and live:
            if self.faults.stale_rest_book:
                stale = self.true.stale_books.get(product, OrderBook(product))
                seq = self.true.stale_seqs.get(product, 0)
                return 200, render(symbol, stale.bids(), stale.asks(), seq, self._ts_now)
            bids, asks, seq = self.book(symbol)
            return 200, render(symbol, bids, asks, seq, self._ts_now)
        recorded = self._recorded_rest.get(symbol)
        if recorded is None:
            return 404, _dumps({"message": "NotFound"})
        return 200, recorded

    async def _serve_rest_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    target = event.target.decode("ascii", "replace")
                    self.rest_requests.append(target)
                    status, body = self._rest_reply(target)
                    payload = body.encode("utf-8")
                    headers = [
                        ("content-type", "application/json"),
                        ("content-length", str(len(payload))),
                    ]
                    await stream.send_all(
                        conn.send(h11.Response(status_code=status, headers=headers)) or b""
                    )
                    await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
                    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                elif event is h11.PAUSED:
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
                    else:
                        return
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (h11.RemoteProtocolError, h11.LocalProtocolError, trio.BrokenResourceError):
            return
        finally:
            await stream.aclose()


@asynccontextmanager
async def open_fake_exchange(
    recording: Path,
    *,
    faults: Faults | None = None,
    speed: float = 0.0,
    loop: bool = False,
    plugin: FeedPlugin | None = None,
    rest_source: Literal["true", "recorded"] = "true",
    answer_resubscribe: bool = False,
) -> AsyncIterator[FakeExchange]:
    """Serve ``recording`` as a fake exchange on 127.0.0.1 (random ports).

    ``speed`` 0 streams as fast as the client reads; otherwise with the recording's timing
    divided by ``speed``. ``loop`` starts the recording again at its end. ``plugin``
    defaults to the installed plugin named in the recording's header (used to keep the
    true book and to match REST paths).

    ``answer_resubscribe``: a client that subscribes one product's book again on its
    connection (OKX, Kraken) gets a snapshot of the true book right away; without it only
    the recording's own frames answer (the recorded client's resubscribes).

    On exit (or cancellation) both servers and every connection are closed at once; a
    client sees its connection drop.
    """
    header = read_header(recording)
    if plugin is None:
        plugin = load_plugin(header.plugin)
    if not math.isfinite(speed) or speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    fake = FakeExchange(
        Path(recording),
        header,
        faults if faults is not None else Faults(),
        speed=speed,
        loop=loop,
        plugin=plugin,
        dialect=dialect_for(header.plugin),
        rest_source=rest_source,
        answer_resubscribe=answer_resubscribe,
    )
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(
            trio_websocket.serve_websocket, fake._handle_ws, "127.0.0.1", 0, None
        )
        fake.ws_url = f"ws://127.0.0.1:{ws_server.port}/"
        listeners = await nursery.start(
            partial(trio.serve_tcp, fake._serve_rest_connection, 0, host="127.0.0.1")
        )
        rest_port = listeners[0].socket.getsockname()[1]
        fake.rest_url = f"http://127.0.0.1:{rest_port}"
        nursery.start_soon(fake._serve_market)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
