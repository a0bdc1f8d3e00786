"""The recording format (ledgerflux.recording): round trip, gzip, and named errors."""

from __future__ import annotations

import gzip
import itertools
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledgerflux.book import OrderBook
from ledgerflux.events import Book
from ledgerflux.recording import (
    FORMAT,
    RecordedFrame,
    RecordingError,
    RecordingHeader,
    RecordingWriter,
    iter_frames,
    read_header,
)
from ledgerflux.testing.convert import CaptureError, convert
from ledgerflux.testing.synth import write_all, write_example

HEADER = RecordingHeader(
    plugin="example",
    endpoint="ws://127.0.0.1:1/",
    rest_endpoint=None,
    symbols=("BTC-USD", "ETH-USD"),
    channels=("trades",),
    created_ns=1_795_000_000_000_000_000,
    note="unit test",
)
FRAMES = [
    RecordedFrame(ts=1, dir="out", conn=0, raw='{"op":"subscribe"}'),
    RecordedFrame(ts=2, dir="in", conn=0, raw='{"type":"trade","price":"1.10"}'),
    RecordedFrame(ts=3, dir="rest", conn=0, raw='{"sequence":5}', url="http://x/book?level=2"),
    RecordedFrame(ts=4, dir="in", conn=1, raw="not json at all \u00e9"),
]


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with RecordingWriter(path, HEADER) as w:
        for frame in FRAMES:
            w.write(frame)
    assert read_header(path) == HEADER
    assert list(iter_frames(path)) == FRAMES
    assert HEADER.format == FORMAT


def test_gz_is_gzip_and_plain_is_not(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "a.jsonl.gz", HEADER):
        pass
    with RecordingWriter(tmp_path / "a.jsonl", HEADER):
        pass
    assert (tmp_path / "a.jsonl.gz").read_bytes()[:2] == b"\x1f\x8b"
    first = (tmp_path / "a.jsonl").read_text().splitlines()[0]
    assert '"format":"ledgerflux.recording/1"' in first
    assert gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()).decode().splitlines() == [first]


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _header_line(tmp_path: Path) -> str:
    with RecordingWriter(tmp_path / "h.jsonl", HEADER):
        pass
    return (tmp_path / "h.jsonl").read_text().splitlines()[0]


def test_bad_frame_names_file_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _header_line(tmp_path),
        '{"ts":1,"dir":"in","conn":0,"raw":"x"}',
        '{"ts":"soon","dir":"in","conn":0,"raw":"x"}',
    )
    with pytest.raises(RecordingError) as info:
        list(iter_frames(path))
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: invalid RecordedFrame")
    assert "soon" in str(info.value)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"ts":1,"dir":"sideways","conn":0,"raw":"x"}', "invalid RecordedFrame"),
        ('{"ts":1,"dir":"in","conn":0}', "invalid RecordedFrame"),
        ('{"ts":1,"dir":"in","conn":0,"raw":"x","extra":1}', "invalid RecordedFrame"),
    ],
)
def test_bad_frame_lines(tmp_path: Path, line: str, fragment: str) -> None:
    path = _write(tmp_path, _header_line(tmp_path), line)
    with pytest.raises(RecordingError, match=fragment) as info:
        list(iter_frames(path))
    assert info.value.line == 2


def test_wrong_format_and_empty(tmp_path: Path) -> None:
    other = _header_line(tmp_path).replace(FORMAT, "someone-else/9")
    path = _write(tmp_path, other)
    with pytest.raises(RecordingError, match="unsupported format"):
        read_header(path)
    with pytest.raises(RecordingError, match="unsupported format"):
        list(iter_frames(path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RecordingError, match="empty recording"):
        read_header(empty)
    with pytest.raises(RecordingError, match="empty recording"):
        list(iter_frames(empty))


def test_truncated_gzip_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    with RecordingWriter(path, HEADER) as w:
        for i in range(2000):
            w.write(RecordedFrame(ts=i, dir="in", conn=0, raw=f'{{"n":{i}}}' * 5))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordingError, match="cannot read"):
        list(iter_frames(path))


def test_iter_frames_streams(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with RecordingWriter(path, HEADER) as w:
        w.write(FRAMES[0])
        w.flush()
        assert list(iter_frames(path)) == [FRAMES[0]]
        w.write(FRAMES[1])
    it = iter_frames(path)
    assert next(it) == FRAMES[0]
    it.close()


def test_write_after_close_is_an_error(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path / "c.jsonl", HEADER)
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w.write(FRAMES[0])


# -- the committed recordings -------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
RECORDINGS = ROOT / "recordings"


@pytest.mark.slow
def test_synth_regenerates_the_committed_recordings_byte_for_byte(tmp_path: Path) -> None:
    written = write_all(tmp_path)
    assert len(written) == 8
    for path in written:
        committed = RECORDINGS / path.relative_to(tmp_path)
        assert path.read_bytes() == committed.read_bytes(), committed


def test_another_seed_gives_other_traffic(tmp_path: Path) -> None:
    write_example(tmp_path / "a.jsonl", seed=1)
    write_example(tmp_path / "b.jsonl", seed=2)
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "b.jsonl").read_bytes()


def test_convert_reproduces_the_reference_recording(tmp_path: Path) -> None:
    capture = ROOT.parent / "shared" / "reference" / "coinbase-exchange-feed-2021.capture"
    if not capture.exists():
        pytest.skip("reference capture not available in this checkout")
    convert(capture, tmp_path / "r.jsonl.gz")
    committed = RECORDINGS / "coinbase" / "exchange-reference-2021.jsonl.gz"
    assert (tmp_path / "r.jsonl.gz").read_bytes() == committed.read_bytes()


def test_convert_parses_the_capture_format(tmp_path: Path) -> None:
    capture = tmp_path / "c.capture"
    capture.write_text(
        "wss://feed <-> 1618677816.8434298\n"
        'wss://feed <- 1618677817.020616: {"type":"subscribe","product_ids":["A-B"],'
        '"channels":["level2",{"name":"ticker"}]}\n'
        '1618677817.061845: {"type":"subscriptions"}\n'
        "wss://feed <-> 1618677900.5\n"
        "1618677901.000000001: x y: z\n"
    )
    convert(capture, tmp_path / "out.jsonl", rest_endpoint=None)
    assert read_header(tmp_path / "out.jsonl") == RecordingHeader(
        plugin="coinbase",
        endpoint="wss://feed",
        rest_endpoint=None,
        symbols=("A-B",),
        channels=("level2", "ticker"),
        created_ns=1618677816843429800,
        note="converted from c.capture by ledgerflux.testing.convert",
    )
    assert list(iter_frames(tmp_path / "out.jsonl")) == [
        RecordedFrame(
            ts=1618677817020616000,
            dir="out",
            conn=0,
            raw='{"type":"subscribe","product_ids":["A-B"],"channels":["level2",{"name":"ticker"}]}',
        ),
        RecordedFrame(ts=1618677817061845000, dir="in", conn=0, raw='{"type":"subscriptions"}'),
        RecordedFrame(ts=1618677901000000001, dir="in", conn=1, raw="x y: z"),
    ]
    capture.write_text("garbage line\n")
    with pytest.raises(CaptureError, match=r"c\.capture:1"):
        convert(capture, tmp_path / "bad.jsonl")


def _levels(rows: list[list[str]]) -> tuple[tuple[Decimal, Decimal], ...]:
    for row in rows:
        assert all(isinstance(v, str) and "E" not in v for v in row[:2]), row
    return tuple((Decimal(r[0]), Decimal(r[1])) for r in rows)


def _exchange_book(msg: dict[str, Any], product: str) -> Book:
    if msg["type"] == "snapshot":
        return Book(
            product=product,
            ts_event=0,
            ts_ingest=0,
            snapshot=True,
            bids=_levels(msg["bids"]),
            asks=_levels(msg["asks"]),
        )
    changes = msg["changes"]
    return Book(
        product=product,
        ts_event=0,
        ts_ingest=0,
        snapshot=False,
        bids=_levels([c[1:] for c in changes if c[0] == "buy"]),
        asks=_levels([c[1:] for c in changes if c[0] == "sell"]),
    )


def _apply_strict(book: OrderBook, change: Book) -> None:
    # A removal must name a level that exists: otherwise the stream is not coherent.
    if not change.snapshot:
        bids, asks = dict(book.bids()), dict(book.asks())
        for price, size in change.bids:
            assert size != 0 or price in bids, (book.product, "bid", price)
        for price, size in change.asks:
            assert size != 0 or price in asks, (book.product, "ask", price)
    book.apply(change)  # raises CrossedBook if the change would cross


@pytest.mark.slow
def test_demo_is_a_coherent_exchange_feed() -> None:
    path = RECORDINGS / "demo.jsonl.gz"
    header = read_header(path)
    assert (header.plugin, header.symbols) == ("coinbase", ("BTC-USD", "ETH-USD"))
    assert header.channels == ("heartbeat", "ticker", "matches", "level2_batch")
    books: dict[str, OrderBook] = {}
    last_seq: dict[str, int] = {}
    last_match: dict[str, int] = {}
    kinds: Counter[str] = Counter()
    frames = [f for f in iter_frames(path) if f.dir == "in"]
    for frame in frames:
        msg = orjson.loads(frame.raw)
        kinds[msg["type"]] += 1
        if msg["type"] in ("snapshot", "l2update"):
            product = msg["product_id"]
            if msg["type"] == "snapshot":
                assert product not in books
                assert min(len(msg["bids"]), len(msg["asks"])) >= 200
                books[product] = OrderBook(product)
            _apply_strict(books[product], _exchange_book(msg, product))
        if "sequence" in msg:
            product, seq = msg["product_id"], msg["sequence"]
            assert seq >= last_seq.get(product, 0)
            if msg["type"] == "match":
                assert seq > last_match.get(product, 0)
                last_match[product] = seq
            if msg["type"] == "ticker":
                assert seq == last_match[product]
                assert msg["best_bid"] < msg["best_ask"] or Decimal(msg["best_bid"]) < Decimal(
                    msg["best_ask"]
                )
            last_seq[product] = seq
    assert set(books) == {"BTC-USD", "ETH-USD"}
    assert kinds["subscriptions"] == 1
    assert kinds["heartbeat"] >= 2 * 60
    assert kinds["match"] == kinds["ticker"] > 500
    assert kinds["l2update"] > 10_000
    seconds = (frames[-1].ts - frames[0].ts) / 1e9
    assert 55 < seconds < 65
    assert 200 < len(frames) / seconds < 500


def test_exchange_channels_has_every_channel_a_gap_with_its_rest_book_and_a_reconnect() -> None:
    path = RECORDINGS / "coinbase" / "exchange-channels.jsonl.gz"
    frames = list(iter_frames(path))
    kinds = Counter(orjson.loads(f.raw).get("type") for f in frames if f.dir == "in")
    for kind in (
        "subscriptions", "status", "heartbeat", "ticker", "snapshot", "l2update", "match",
        "last_match", "received", "open", "done", "change",
    ):  # fmt: skip
        assert kinds[kind] > 0, kind
    # The authenticated level2 subscribe is signed.
    outs = [orjson.loads(f.raw) for f in frames if f.dir == "out"]
    assert [f.conn for f in frames if f.dir == "out"] == [0, 1]
    assert all({"signature", "key", "passphrase", "timestamp"} <= set(o) for o in outs)
    # Reconnect: conn 1 starts with its subscribe, then snapshots for both products.
    first_of_1 = next(i for i, f in enumerate(frames) if f.conn == 1)
    assert frames[first_of_1].dir == "out"
    snapshots = [
        orjson.loads(f.raw)["product_id"]
        for f in frames[first_of_1:]
        if f.dir == "in" and orjson.loads(f.raw)["type"] == "snapshot"
    ]
    assert snapshots == ["BTC-USD", "ETH-USD"]
    # The gap: ETH-USD's full-channel sequence jumps once in conn 0; the REST book follows
    # it, with a sequence between the last seen and the next, and the l2updates after it
    # apply to it coherently.
    (rest_index,) = [i for i, f in enumerate(frames) if f.dir == "rest"]
    assert frames[rest_index].url == (
        "https://api.exchange.coinbase.com/products/ETH-USD/book?level=2"
    )
    rest = orjson.loads(frames[rest_index].raw)
    seqs = [
        (i, orjson.loads(f.raw)["sequence"])
        for i, f in enumerate(frames[:first_of_1])
        if f.dir == "in" and orjson.loads(f.raw).get("product_id") == "ETH-USD"
        and "sequence" in orjson.loads(f.raw)
    ]  # fmt: skip
    jumps = [(i, a, b) for (_, a), (i, b) in itertools.pairwise(seqs) if b > a + 1]
    (gap,) = jumps
    assert gap[0] < rest_index
    before = max(s for i, s in seqs if i < rest_index)
    after = min(s for i, s in seqs if i > rest_index)
    assert before <= rest["sequence"] < after
    assert all(len(level) == 3 for level in rest["bids"] + rest["asks"])
    book = OrderBook("ETH-USD")
    book.apply(
        Book(
            product="ETH-USD",
            ts_event=0,
            ts_ingest=0,
            snapshot=True,
            bids=_levels(rest["bids"]),
            asks=_levels(rest["asks"]),
        )
    )
    applied = 0
    for f in frames[rest_index + 1 : first_of_1]:
        msg = orjson.loads(f.raw)
        if f.dir == "in" and msg["type"] == "l2update" and msg["product_id"] == "ETH-USD":
            _apply_strict(book, _exchange_book(msg, "ETH-USD"))
            applied += 1
    assert applied > 10


def test_advanced_channels_has_one_counter_per_connection_a_gap_and_a_reconnect() -> None:
    path = RECORDINGS / "coinbase" / "advanced-channels.jsonl.gz"
    header = read_header(path)
    assert header.plugin == "coinbase-advanced"
    frames = [f for f in iter_frames(path) if f.dir == "in"]
    by_conn: dict[int, list[int]] = {}
    channels: Counter[str] = Counter()
    for f in frames:
        msg = orjson.loads(f.raw)
        by_conn.setdefault(f.conn, []).append(msg["sequence_num"])
        channels[msg["channel"]] += 1
        if msg["channel"] == "heartbeats":
            assert isinstance(msg["events"][0]["heartbeat_counter"], int)
        if msg["channel"] == "l2_data" and msg["events"][0]["type"] == "snapshot":
            sides = Counter(u["side"] for u in msg["events"][0]["updates"])
            assert min(sides["bid"], sides["offer"]) >= 200
    assert set(by_conn) == {0, 1}
    assert by_conn[1] == list(range(len(by_conn[1])))
    first = by_conn[0]
    assert first[0] == 0
    steps = [b - a for a, b in itertools.pairwise(first)]
    assert sorted(set(steps)) == [1, 4]
    assert steps.count(4) == 1
    for channel in (
        "subscriptions", "status", "l2_data", "ticker", "ticker_batch", "market_trades",
        "candles", "heartbeats",
    ):  # fmt: skip
        assert channels[channel] > 0, channel
    outs = [orjson.loads(f.raw) for f in iter_frames(path) if f.dir == "out"]
    assert len(outs) == 2 * len(header.channels)
    assert {o["channel"] for o in outs} == set(header.channels)


def test_example_recording_is_small_and_sequenced_per_symbol() -> None:
    frames = [f for f in iter_frames(RECORDINGS / "example" / "example.jsonl") if f.dir == "in"]
    assert 50 < len(frames) < 200
    last: dict[str, int] = {}
    for f in frames:
        msg = orjson.loads(f.raw)
        if "seq" in msg:
            symbol = msg["symbol"]
            assert symbol not in last or msg["seq"] == last[symbol] + 1
            last[symbol] = msg["seq"]
    assert set(last) == {"BTC-USD", "ETH-USD"}
