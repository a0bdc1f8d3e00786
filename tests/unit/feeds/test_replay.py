"""The replay feed: recordings through the recorded plugin and the shared session logic."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import attrs
import pytest
import trio

from ledgerflux.config import Config, IngestConfig
from ledgerflux.events import Event, Status
from ledgerflux.feeds import replay as replay_module
from ledgerflux.feeds.registry import load_feed
from ledgerflux.feeds.replay import (
    LOOP_GAP_NS,
    RecordedBooks,
    RecordingSource,
    ReplayError,
    ReplayFeed,
    ReplayShift,
    resolve_replay_path,
    run_replay,
    scan_recording,
)
from ledgerflux.feeds.runtime import run_session
from ledgerflux.feeds.session import FeedSession, PublishQueue
from ledgerflux.plugin import Subscription
from ledgerflux.recording import iter_frames, read_header

from .toy import FakePublisher

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "ledgerflux" / "data" / "demo.jsonl.gz"
EXAMPLE = ROOT / "recordings" / "example" / "example.jsonl"


def decoded_by_product(path: Path) -> dict[str, list[Event]]:
    """Every event of every ``in`` frame, decoded directly (ts_ingest zeroed)."""
    plugin = load_feed(read_header(path).plugin)
    decoder, conn = plugin.new_decoder(), None
    out: dict[str, list[Event]] = defaultdict(list)
    for frame in iter_frames(path):
        if frame.dir != "in":
            continue
        if frame.conn != conn:
            decoder, conn = plugin.new_decoder(), frame.conn
        for event in decoder.decode(frame.raw, 0).events:
            out[event.product].append(event)
    return dict(out)


def published_by_product(publisher: FakePublisher) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for event in publisher.events():
        if not isinstance(event, Status):
            out[event.product].append(attrs.evolve(event, ts_ingest=0))
    return dict(out)


@pytest.mark.parametrize("path", [DEMO, EXAMPLE], ids=["demo", "example"])
async def test_replay_publishes_every_frames_events(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path.name} not present")
    publisher = FakePublisher()
    with trio.fail_after(120):
        stats = await run_replay(
            Config(), publisher=publisher, path=path, speed=0.0, loop=False, progress=False
        )
    assert published_by_product(publisher) == decoded_by_product(path)
    assert stats.decode_errors == 0
    statuses = [e for e in publisher.events() if isinstance(e, Status)]
    products = {e.product for e in statuses}
    assert [e.status for e in statuses[: len(products)]] == ["reset"] * len(products)
    assert statuses[-1].status == "offline"


async def test_runs_get_distinct_msg_ids() -> None:
    first, second = FakePublisher(), FakePublisher()
    with trio.fail_after(60):
        for publisher in (first, second):
            await run_replay(
                Config(), publisher=publisher, path=EXAMPLE, speed=0, loop=False, progress=False
            )
    ids = [{m.msg_id for m in p.acked if m.msg_id} for p in (first, second)]
    assert ids[0]
    assert ids[1]
    assert not ids[0] & ids[1]
    assert all(i.startswith("replay-") for i in ids[0])


async def test_loop_shifts_sequences_and_timestamps() -> None:
    scan = scan_recording(EXAMPLE, load_feed("example"))
    once = FakePublisher()
    with trio.fail_after(60):
        await run_replay(
            Config(), publisher=once, path=EXAMPLE, speed=0, loop=False, progress=False
        )
    per_pass = published_by_product(once)
    wanted = sum(len(v) for v in per_pass.values())

    looped = FakePublisher()
    looped.stop_after = 2 * wanted
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            looped.stop = nursery.cancel_scope
            nursery.start_soon(
                lambda: run_replay(
                    Config(), publisher=looped, path=EXAMPLE, speed=0, loop=True, progress=False
                )
            )

    shift_ns = scan.last_ts - scan.first_ts + LOOP_GAP_NS
    for product, first_pass in per_pass.items():
        got = published_by_product(looped)[product]
        assert got[: len(first_pass)] == first_pass
        span = scan.seq_span[product]
        second_pass = [
            attrs.evolve(e, src_seq=e.src_seq + span, ts_event=e.ts_event + shift_ns)
            for e in first_pass
        ]
        assert got[len(first_pass) : 2 * len(first_pass)] == second_pass
        seqs = [e.src_seq for e in got if e.src_seq is not None]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)


async def test_recorded_timing_is_kept_at_speed(autojump_clock: trio.abc.Clock) -> None:
    # The source on its own: run_replay scans in a worker thread, which the autojump clock
    # would take for idleness.
    plugin = load_feed("example")
    scan = scan_recording(EXAMPLE, plugin)
    header = scan.header
    session = FeedSession(
        plugin,
        Subscription(header.symbols, header.channels),
        PublishQueue(1000),
        feed="replay-timing",
        shards=2,
        max_buffer_frames=1000,
    )
    books = RecordedBooks(scan)
    source = RecordingSource(
        EXAMPLE, scan, speed=2.0, loop=False, books=books, shift=ReplayShift(scan)
    )
    publisher = FakePublisher()
    with trio.fail_after(3600):
        start = trio.current_time()
        await run_session(session, source, publisher, fetcher=books, settings=IngestConfig())
    duration = (scan.last_ts - scan.first_ts) / 1e9
    first_in = min(f.ts for f in iter_frames(EXAMPLE) if f.dir == "in")
    last_in = max(f.ts for f in iter_frames(EXAMPLE) if f.dir == "in")
    assert duration > 1.0
    assert trio.current_time() - start == pytest.approx((last_in - scan.first_ts) / 2e9)
    assert published_by_product(publisher) == decoded_by_product(EXAMPLE)
    assert first_in >= scan.first_ts


def test_replay_feed_declares_the_plugin_attributes() -> None:
    plugin = load_feed("replay")
    assert isinstance(plugin, ReplayFeed)
    assert plugin.name == "replay"
    assert plugin.subscribe_messages(Subscription((), ()), None, 0.0) == ()
    assert plugin.new_decoder().decode(b"x", 0).errors[0].reason == "unsupported"


def test_resolve_replay_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ReplayError, match="does not exist"):
        resolve_replay_path(tmp_path / "missing.jsonl")
    assert resolve_replay_path(EXAMPLE) == EXAMPLE
    # The demo ships inside the package, wherever the command runs.
    monkeypatch.chdir(tmp_path)
    assert resolve_replay_path(None) == DEMO


def test_missing_demo_names_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # An installation without the package data (a broken build): the message names the
    # flag that fixes it, not only a config key.
    monkeypatch.setattr(replay_module, "DEMO_RECORDING", "data/no-such-demo.jsonl.gz")
    with pytest.raises(ReplayError, match="pass --replay PATH"):
        resolve_replay_path(None)


async def test_dry_run_prints_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(60):
        stats = await run_replay(
            Config(ingest=IngestConfig(publish_batch=16)),
            publisher=None,
            path=EXAMPLE,
            speed=0,
            loop=False,
            progress=False,
        )
    out = capsys.readouterr().out
    assert f"{stats.frames} frames, {stats.events} events" in out
    assert stats.frames == scan_recording(EXAMPLE, load_feed("example")).frames_in
