"""The built-in ``replay`` feed: a recording played through the recorded plugin's decoder
and the same session logic as a live feed (sequence tracking, gap/resync, buffering,
publishing). Only the frame source differs: frames come from the file instead of a
WebSocket, and REST resyncs are answered from the recording's ``rest`` entries.

**Pacing.** ``speed == 0`` plays as fast as the bus takes it (backpressure: the source
waits while the publish queue is half full, since a file, unlike an exchange, can wait);
``speed == 1`` keeps the recorded timing, ``speed == X`` is X times faster.

**Loops.** Pass *k* (from 0) moves exchange data forward so that the stream stays valid:
``ts_event`` by k * (recording duration + 1 ms), and every ``src_seq`` and sequence mark
by k * (max - min + 1) of that product's (or that connection counter's) recorded range.
``ts_ingest`` is always the real receipt time of the replay; the ingest lag metric is
measured against the replay clock (the recorded receipt time, moved like ``ts_event``).

**Runs.** Each run starts with ``status: reset`` for every product (the normalizer starts a
new epoch), and its message ids carry a fresh run id (``replay-<run>:<product>:<src_seq>``):
JetStream drops a publish whose ``Nats-Msg-Id`` it saw within the duplicate window, so
without it a second replay of the same recording minutes later would be swallowed whole.
"""

from __future__ import annotations

import bisect
import importlib.resources
import math
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import trio

from ledgerflux.bus import BusError, OutMsg, PubAck, Publisher
from ledgerflux.config import Config
from ledgerflux.errors import LedgerfluxError
from ledgerflux.events import Event, make_product
from ledgerflux.feeds.metrics import FeedMetrics
from ledgerflux.feeds.registry import load_feed
from ledgerflux.feeds.runtime import BookUnavailable, run_session
from ledgerflux.feeds.session import FeedSession, PublishQueue, SessionStats
from ledgerflux.plugin import (
    BookSnapshot,
    Credentials,
    Decoded,
    DecodeError,
    FeedDecoder,
    FeedPlugin,
    RestRequest,
    ResyncMode,
    SeqMark,
    SequenceModel,
    Subscription,
)
from ledgerflux.recording import RecordingHeader, iter_frames, read_header
from ledgerflux.resync import RequestBus

__all__ = [
    "DEMO_RECORDING",
    "RecordedBooks",
    "RecordingSource",
    "ReplayError",
    "ReplayFeed",
    "ReplayShift",
    "resolve_replay_path",
    "run_replay",
    "scan_recording",
]

DEMO_RECORDING = "data/demo.jsonl.gz"
"""The ``ledgerflux up`` demo, shipped inside the package (``ledgerflux/data/demo.jsonl.gz``,
read through :mod:`importlib.resources`, so an installed wheel has it too)."""
LOOP_GAP_NS = 1_000_000
"""Added to the recording's duration between loop passes (1 ms)."""
_CHECKPOINT_EVERY = 64


class ReplayError(LedgerfluxError):
    """A recording that cannot be replayed (missing, or its plugin is not installed)."""


class _ReplayDecoder:
    def decode(self, frame: bytes | str, ts_ingest: int) -> Decoded:
        raw = frame.encode() if isinstance(frame, str) else frame
        detail = "the replay feed decodes through the recorded plugin's decoder"
        return Decoded(errors=(DecodeError("unsupported", detail, raw),))


class ReplayFeed:
    """Entry point ``replay``: replays ``ingest.replay_path`` (see :func:`run_replay`).

    It declares the plugin attributes so that ``ledgerflux plugins`` can list it; the
    recording's own plugin does the decoding.
    """

    name: ClassVar[str] = "replay"
    exchange: ClassVar[str] = "replay"
    endpoint: ClassVar[str] = "file:ledgerflux/data/demo.jsonl.gz"
    rest_endpoint: ClassVar[str | None] = None
    channels: ClassVar[tuple[str, ...]] = ()
    default_channels: ClassVar[tuple[str, ...]] = ()
    sequence_model: ClassVar[SequenceModel] = SequenceModel.NONE
    resync_mode: ClassVar[ResyncMode] = ResyncMode.RESUBSCRIBE
    subscribe_deadline_s: ClassVar[float] = math.inf
    stale_after_s: ClassVar[float] = math.inf
    rest_rate_limit_per_s: ClassVar[float] = math.inf
    needs_credentials: ClassVar[frozenset[str]] = frozenset()

    def subscribe_messages(
        self, subscription: Subscription, credentials: Credentials | None, now_s: float
    ) -> Sequence[str]:
        return ()

    def new_decoder(self) -> FeedDecoder:
        return _ReplayDecoder()

    def book_request(self, symbol: str) -> RestRequest | None:
        return None

    def parse_book(self, symbol: str, body: bytes, ts_ingest: int) -> BookSnapshot:
        raise ValueError("the replay feed has no REST book of its own")


def resolve_replay_path(path: str | Path | None) -> Path:
    """``path``, or the demo recording shipped inside the package (:data:`DEMO_RECORDING`).
    Raises :class:`ReplayError`."""
    if path is not None:
        found = Path(path)
        if not found.is_file():
            raise ReplayError(f"recording {found} does not exist")
        return found
    demo = importlib.resources.files("ledgerflux").joinpath(DEMO_RECORDING)
    # A package installed as files (a wheel, an editable checkout) gives a real path; one
    # imported from a zip archive does not, and the replay reads the file by path.
    if isinstance(demo, Path) and demo.is_file():
        return demo
    raise ReplayError(
        f"no recording given and this installation has no demo recording ({demo}); "
        "pass --replay PATH (or set ingest.replay_path in the config)"
    )


# -- a first pass over the file ------------------------------------------------------------


def _rest_key(url: str, params: Sequence[tuple[str, str]] = ()) -> str:
    """Path and sorted query: the recorded host may be a fake exchange's."""
    parts = urlsplit(url)
    query = sorted([*parse_qsl(parts.query), *params])
    return f"{parts.path}?{urlencode(query)}"


@attrs.frozen
class RecordingScan:
    """What a first pass over a recording learned: sizes, ranges, and its REST replies."""

    header: RecordingHeader
    frames_in: int
    first_ts: int
    last_ts: int
    seq_span: dict[str | None, int]
    """Per product (``None``: the connection counter), ``max - min + 1`` of its sequences."""
    rest: dict[str, list[tuple[int, str]]]
    """Request key → ``[(ts, body)]`` in file order."""

    @property
    def loop_shift_ns(self) -> int:
        return self.last_ts - self.first_ts + LOOP_GAP_NS


def scan_recording(path: Path, plugin: FeedPlugin) -> RecordingScan:
    """Decode the whole recording once (counts, per-product sequence ranges, REST replies)."""
    header = read_header(path)
    low: dict[str | None, int] = {}
    high: dict[str | None, int] = {}

    def see(key: str | None, value: int) -> None:
        low[key] = min(low.get(key, value), value)
        high[key] = max(high.get(key, value), value)

    frames_in, first_ts, last_ts = 0, 0, 0
    rest: dict[str, list[tuple[int, str]]] = {}
    decoder: FeedDecoder | None = None
    conn: int | None = None
    for frame in iter_frames(path):
        first_ts = first_ts or frame.ts
        last_ts = max(last_ts, frame.ts)
        if frame.dir == "rest" and frame.url is not None:
            rest.setdefault(_rest_key(frame.url), []).append((frame.ts, frame.raw))
        if frame.dir != "in":
            continue
        frames_in += 1
        if decoder is None or frame.conn != conn:
            decoder, conn = plugin.new_decoder(), frame.conn
        decoded = decoder.decode(frame.raw, frame.ts)
        for event in decoded.events:
            if event.src_seq is not None:
                see(event.product, event.src_seq)
        for mark in decoded.marks:
            see(mark.key, mark.value)
    span = {key: high[key] - low[key] + 1 for key in low}
    return RecordingScan(header, frames_in, first_ts, last_ts, span, rest)


@attrs.define
class ReplayShift:
    """The loop-pass rewrite (see the module doc); pass 0 changes nothing."""

    scan: RecordingScan
    loop_pass: int = 0

    def _seq(self, key: str | None, value: int) -> int:
        return value + self.loop_pass * self.scan.seq_span.get(key, 0)

    def _event(self, event: Event) -> Event:
        src_seq = None if event.src_seq is None else self._seq(event.product, event.src_seq)
        return attrs.evolve(
            event,
            ts_event=event.ts_event + self.loop_pass * self.scan.loop_shift_ns,
            src_seq=src_seq,
        )

    def decoded(self, decoded: Decoded) -> Decoded:
        if self.loop_pass == 0:
            return decoded
        return attrs.evolve(
            decoded,
            events=tuple(self._event(e) for e in decoded.events),
            marks=tuple(
                SeqMark(m.key, self._seq(m.key, m.value), m.carries_state) for m in decoded.marks
            ),
        )

    def book(self, snapshot: BookSnapshot) -> BookSnapshot:
        if self.loop_pass == 0:
            return snapshot
        product = snapshot.book.product
        book = attrs.evolve(
            snapshot.book,
            ts_event=snapshot.book.ts_event + self.loop_pass * self.scan.loop_shift_ns,
            src_seq=None
            if snapshot.book.src_seq is None
            else self._seq(product, snapshot.book.src_seq),
        )
        return BookSnapshot(book=book, src_seq=self._seq(product, snapshot.src_seq))


class RecordedBooks:
    """REST replies from the recording: the first one for the request at or after the
    replay's position (what a live resync would have fetched), else the last before it."""

    def __init__(self, scan: RecordingScan) -> None:
        self.scan = scan
        self.position_ts = 0

    async def fetch(self, request: RestRequest) -> bytes:
        await trio.lowlevel.checkpoint()
        replies = self.scan.rest.get(_rest_key(request.url, list(request.params.items())))
        if not replies:
            raise BookUnavailable(f"the recording has no REST reply for {request.url}")
        index = bisect.bisect_left([ts for ts, _ in replies], self.position_ts)
        _, body = replies[min(index, len(replies) - 1)]
        return body.encode("utf-8")


class _Bar(Protocol):
    def __enter__(self) -> Any: ...
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any: ...
    def update(self, n: int = 1) -> Any: ...


class _NoBar:
    """Stands in for a tqdm bar when no progress is shown."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


class RecordingSource:
    """Frames from a recording file, paced and looped (see the module doc).

    Cancellation stops between two frames."""

    def __init__(
        self,
        path: Path,
        scan: RecordingScan,
        *,
        speed: float,
        loop: bool,
        books: RecordedBooks,
        shift: ReplayShift,
        progress: bool = False,
    ) -> None:
        if speed < 0 or not math.isfinite(speed):
            raise ValueError(f"speed must be >= 0 and finite, got {speed}")
        self.path = path
        self.scan = scan
        self.speed = speed
        self.loop = loop
        self.books = books
        self.shift = shift
        self.progress = progress
        self.passes = 0

    async def run(self, session: FeedSession, task_status: trio.TaskStatus[None]) -> None:
        session.reset("replay started")
        task_status.started()
        queue = session.queue
        high_water = max(1, queue.capacity // 2)
        # tqdm only for the command line's bar: a replay daemon does not import it.
        bar: _Bar = _NoBar()
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=None if self.loop else self.scan.frames_in,
                file=sys.stderr,
                unit="frame",
                desc=self.path.name,
            )
        with bar:
            start = trio.current_time()
            while True:
                self.shift.loop_pass = self.passes
                pass_start = start + self.passes * self.scan.loop_shift_ns / 1e9 / (
                    self.speed or 1.0
                )
                conn: int | None = None
                count = 0
                for frame in iter_frames(self.path):
                    if frame.dir != "in":
                        continue
                    if frame.conn != conn:
                        if conn is not None:
                            session.on_disconnect("recorded reconnect")
                        session.on_connect()
                        conn = frame.conn
                    if self.speed > 0:
                        offset = (frame.ts - self.scan.first_ts) / 1e9 / self.speed
                        await trio.sleep_until(pass_start + offset)
                    elif len(queue) >= high_water:
                        await queue.wait_below(high_water)
                    count += 1
                    if count % _CHECKPOINT_EVERY == 0:
                        await trio.lowlevel.checkpoint()
                    self.books.position_ts = frame.ts
                    clock = frame.ts + self.passes * self.scan.loop_shift_ns
                    session.on_frame(frame.raw, time.time_ns(), clock_ns=clock)
                    bar.update(1)
                self.passes += 1
                if not self.loop:
                    return
                session.on_disconnect("replay looped")


class _CountingPublisher:
    """Dry run: acks everything and counts messages per subject."""

    def __init__(self) -> None:
        self.messages = 0
        self.subjects: dict[str, int] = {}

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        await trio.lowlevel.checkpoint()
        acks: list[PubAck | BusError] = []
        for msg in msgs:
            self.messages += 1
            self.subjects[msg.subject] = self.subjects.get(msg.subject, 0) + 1
            acks.append(PubAck(stream="dry-run", seq=self.messages, duplicate=False))
        return acks


async def run_replay(
    config: Config,
    *,
    publisher: Publisher | None,
    path: Path,
    speed: float,
    loop: bool,
    progress: bool,
    requests: RequestBus | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> SessionStats:
    """Replay the recording at ``path`` into ``publisher`` (``None``: dry run, which decodes
    everything and prints counts). Ready once the run's ``reset`` statuses are queued.

    Returns at the end of the recording (never, with ``loop``) after everything is acked.
    On cancellation it stops between two frames and drains like a live feed
    (:func:`ledgerflux.feeds.runtime.run_session`). ``progress`` shows a tqdm bar on
    stderr (the CLI passes ``sys.stderr.isatty()`` unless told otherwise). With
    ``requests`` it answers resync requests for the replayed products
    (:mod:`ledgerflux.resync`) from the recorded REST books.
    """
    path = Path(path)
    header = read_header(path)
    try:
        plugin = load_feed(header.plugin)
    except LedgerfluxError as exc:
        raise ReplayError(f"cannot replay {path}: {exc}") from exc
    scan = await trio.to_thread.run_sync(scan_recording, path, plugin)
    settings = config.ingest
    subscription = Subscription(symbols=header.symbols, channels=header.channels)
    shift = ReplayShift(scan)
    books = RecordedBooks(scan)
    run_id = uuid.uuid4().hex[:12]
    session = FeedSession(
        plugin,
        subscription,
        PublishQueue(settings.max_buffer_frames),
        feed=plugin.name,
        shards=config.normalize.shards,
        max_buffer_frames=settings.max_buffer_frames,
        msg_id_prefix=f"replay-{run_id}:",
        shift=shift,
        metrics=FeedMetrics(plugin.name),
    )
    source = RecordingSource(
        path, scan, speed=speed, loop=loop, books=books, shift=shift, progress=progress
    )
    counting = _CountingPublisher()
    await run_session(
        session,
        source,
        counting if publisher is None else publisher,
        fetcher=books,
        settings=settings,
        drain_timeout_s=config.drain_timeout_s,
        rest_rate_limit_per_s=math.inf,
        requests=requests,
        task_status=task_status,
    )
    if publisher is None:
        stats = session.stats
        print(
            f"{path}: {stats.frames} frames, {stats.events} events, "
            f"{stats.decode_errors} decode errors, {stats.gaps} gaps, {stats.resyncs} "
            f"resyncs, {stats.duplicates} duplicates dropped, {counting.messages} messages "
            f"for {len(counting.subjects)} subjects, products "
            f"{', '.join(make_product(plugin.exchange, s) for s in header.symbols)}"
        )
    return session.stats
