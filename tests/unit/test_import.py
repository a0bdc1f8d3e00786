"""``ledgerflux import``: cryptofeed captures (text and JSON lines) become recordings with
exact receipt times, REST replies as ``rest`` frames, one connection number per connect."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from ledgerflux_binance import BinanceFeed

from ledgerflux.cli import main
from ledgerflux.importer import CaptureLineError, import_capture
from ledgerflux.recording import RecordedFrame, iter_frames, read_header
from ledgerflux.testing import check_plugin

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference" / "coinbase-exchange-feed-2021.capture"
COINBASE_REF = ROOT / "recordings" / "coinbase" / "exchange-reference-2021.jsonl.gz"

WS = "wss://stream.binance.com:9443/stream"
SUB = '{"method":"SUBSCRIBE","params":["btcusdt@depth@100ms","btcusdt@trade"],"id":1}'
DEPTH = (
    '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1700000000100,'
    '"s":"BTCUSDT","U":101,"u":103,"b":[["100.0","1"]],"a":[]}}'
)
TRADE = (
    '{"stream":"btcusdt@trade","data":{"e":"trade","E":1700000000200,"s":"BTCUSDT","t":9,'
    '"p":"100.5","q":"0.1","b":1,"a":2,"T":1700000000200,"m":false,"M":true}}'
)
REST_URL = "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=5000"
BOOK = '{"lastUpdateId":101,"bids":[["100.0","2"]],"asks":[["101.0","1"]]}'


TRADE_2 = TRADE.replace('"t":9', '"t":10')


def text_capture(path: Path) -> Path:
    lines = [
        "configuration: {'BINANCE': {'channels': ['l2_book', 'trades']}}",
        f"{WS} <-> 1700000000.000000001",
        f"{WS} <- 1700000000.0000001: {SUB}",
        f"1700000000.123456789: {DEPTH}",
        f"{REST_URL} -> 1700000000.2: {BOOK}",
        f"1700000000.3000000009: {TRADE}",
        f"{WS} <-> 1700000001.5",
        f"{WS} <- 1700000001.6: {SUB}",
        f"1700000001.7: {TRADE_2}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def jsonl_capture(path: Path) -> Path:
    # Numbers with more digits than a float holds: they must survive to the nanosecond.
    rows = [
        '{"t":"header","ts":1700000000.0,"data":"BINANCE","conn":"a"}',
        f'{{"t":"connect","ts":1700000000.000000001,"data":"","conn":"a","url":"{WS}"}}',
        '{"t":"send","ts":1700000000.0000001,"conn":"a","data":' + orjson.dumps(SUB).decode() + "}",
        '{"t":"recv","ts":1700000000.123456789,"conn":"a","data":'
        + orjson.dumps(DEPTH).decode()
        + "}",
        f'{{"t":"http","ts":1700000000.2,"conn":"r","url":"{REST_URL}","data":'
        + orjson.dumps(BOOK).decode()
        + "}",
        '{"t":"recv","ts":1700000000.3000000009,"conn":"a","data":'
        + orjson.dumps(TRADE).decode()
        + "}",
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


EXPECTED_FIRST = [
    RecordedFrame(ts=1_700_000_000_000_000_100, dir="out", conn=0, raw=SUB),
    RecordedFrame(ts=1_700_000_000_123_456_789, dir="in", conn=0, raw=DEPTH),
    RecordedFrame(ts=1_700_000_000_200_000_000, dir="rest", conn=0, raw=BOOK, url=REST_URL),
    RecordedFrame(ts=1_700_000_000_300_000_000, dir="in", conn=0, raw=TRADE),
]


def test_text_capture_keeps_every_digit_and_each_connection(tmp_path: Path) -> None:
    stats = import_capture(
        text_capture(tmp_path / "BINANCE.ws.1.0"), tmp_path / "r.jsonl", plugin="binance"
    )
    frames = list(iter_frames(tmp_path / "r.jsonl"))
    assert frames[:4] == EXPECTED_FIRST  # ...0009 ns is below a nanosecond: cut, not rounded
    assert [f.conn for f in frames[4:]] == [1, 1]
    assert frames[4].ts == 1_700_000_001_600_000_000
    assert (stats.frames, stats.connections, stats.rest, stats.form) == (6, 2, 1, "text")
    header = read_header(tmp_path / "r.jsonl")
    assert (header.plugin, header.endpoint, header.created_ns) == (
        "binance",
        WS,
        1_700_000_000_000_000_001,
    )
    assert header.symbols == ("BTC-USDT",)
    assert header.channels == ("depth", "trade")


def test_jsonl_capture_parses_receipt_times_as_decimals(tmp_path: Path) -> None:
    stats = import_capture(
        jsonl_capture(tmp_path / "cap.jsonl"), tmp_path / "r.jsonl", plugin="binance"
    )
    frames = list(iter_frames(tmp_path / "r.jsonl"))
    rest = RecordedFrame(ts=1_700_000_000_200_000_000, dir="rest", conn=1, raw=BOOK, url=REST_URL)
    assert frames == [EXPECTED_FIRST[0], EXPECTED_FIRST[1], rest, EXPECTED_FIRST[3]]
    assert (stats.form, stats.rest) == ("jsonl", 1)


def test_an_imported_binance_capture_decodes_and_its_rest_book_parses(tmp_path: Path) -> None:
    import_capture(
        text_capture(tmp_path / "BINANCE.ws.1.0"), tmp_path / "r.jsonl", plugin="binance"
    )
    report = check_plugin(BinanceFeed(), tmp_path / "r.jsonl")
    report.raise_for_failures()
    assert (report.rest_books, report.decode_errors) == (1, 0)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("not a timestamp: {}", "bad receipt time"),
        ("1700000000.5 no separator", "expected '<ts>: <frame>'"),
    ],
)
def test_bad_text_lines_are_named_errors(tmp_path: Path, line: str, match: str) -> None:
    src = tmp_path / "bad.0"
    src.write_text(f"{WS} <-> 1700000000\n{line}\n")
    with pytest.raises(CaptureLineError, match=f"bad.0:2: {match}"):
        import_capture(src, tmp_path / "r.jsonl", plugin="binance")


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ('{"t":"recv","ts":"x","data":""}', "bad receipt time"),
        ('{"t":"what","ts":1}', "unknown line type"),
        ('{"t":"recv","ts":1,"data":5}', "field 'data' must be the raw text"),
        ('{"t":"http","ts":1,"data":"{}"}', "an http line needs its url"),
        ("{nope", "not JSON"),
    ],
)
def test_bad_jsonl_lines_are_named_errors(tmp_path: Path, row: str, match: str) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"t":"header","ts":1}\n' + row + "\n")
    with pytest.raises(CaptureLineError, match=f"bad.jsonl:2: {match}"):
        import_capture(src, tmp_path / "r.jsonl", plugin="binance")


@pytest.mark.skipif(not REFERENCE.exists(), reason="the shared reference capture is not here")
def test_cli_import_of_the_reference_capture_gives_the_committed_recording(tmp_path: Path) -> None:
    out = io.StringIO()
    dst = tmp_path / "ref.jsonl.gz"
    import sys

    real, sys.stdout = sys.stdout, out
    try:
        code = main(["import", str(REFERENCE), str(dst), "--plugin", "coinbase"])
    finally:
        sys.stdout = real
    assert code == 0
    assert "9949 frames (9946 received, 3 sent, 0 REST) over 1 connections" in out.getvalue()
    assert list(iter_frames(dst)) == list(iter_frames(COINBASE_REF))
    header = read_header(dst)
    assert header.rest_endpoint == "https://api.exchange.coinbase.com"
    assert header.channels == ("level2", "ticker", "matches")
