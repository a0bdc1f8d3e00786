"""The archive, on a local folder and on a real S3 socket (moto server mode)."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from ledgerflux.archive import (
    Archive,
    ArchiveError,
    LocalArchive,
    S3Archive,
    events_key,
    open_archive,
    parse_events_key,
)
from ledgerflux.codec import decode
from ledgerflux.config import ArchiveConfig
from ledgerflux.events import Book, Event, Trade
from ledgerflux.store import StateRow

DAY_NS = 86_400 * 1_000_000_000
T0 = 1_763_600_000_000_000_000  # 2025-11-20 UTC


def trades(product: str, first_seq: int, n: int, ts: int, epoch: str = "e-1") -> list[Event]:
    return [
        Trade(
            product=product,
            seq=seq,
            epoch=epoch,
            src_seq=seq + 10,
            ts_event=ts + seq,
            ts_ingest=ts + seq + 3,
            price=Decimal("91234.123456789012345678901"),
            size=Decimal("1E-8"),
            side="sell",
        )
        for seq in range(first_seq, first_seq + n)
    ]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
async def archive(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Archive]:
    if request.param == "local":
        yield open_archive(ArchiveConfig(), tmp_path)
    else:
        endpoint: str = request.getfixturevalue("s3_endpoint")
        # A fresh bucket per test: the S3Archive creates it on first use.
        bucket = f"lf-{tmp_path.name.lower().replace('_', '-')[:40]}"
        config = ArchiveConfig(
            s3_endpoint=endpoint,
            bucket=bucket,
            access_key_id="testing",
            secret_access_key="testing",
        )
        yield open_archive(config, tmp_path)


def test_open_archive_picks_the_backend(tmp_path: Path) -> None:
    local = open_archive(ArchiveConfig(), tmp_path)
    assert isinstance(local, LocalArchive)
    assert local.root == tmp_path / "archive"
    elsewhere = open_archive(ArchiveConfig(local_dir=str(tmp_path / "x")), tmp_path)
    assert isinstance(elsewhere, LocalArchive)
    assert elsewhere.root == tmp_path / "x"
    s3 = open_archive(ArchiveConfig(s3_endpoint="http://127.0.0.1:9", bucket="b"), tmp_path)
    assert isinstance(s3, S3Archive)


def test_events_key_layout() -> None:
    events = trades("coinbase:BTC-USD", 7, 3, T0, epoch="2025:a/b")
    key = events_key("archive", events)
    assert key == (
        "archive/events/coinbase/BTC-USD/2025/11/20/"
        f"{T0 + 7:019d}-{T0 + 9:019d}-2025_a_b-7.jsonl.gz"
    )
    parsed = parse_events_key(key)
    assert parsed is not None
    assert (parsed.first_ts, parsed.last_ts, parsed.epoch, parsed.first_seq) == (
        T0 + 7,
        T0 + 9,
        "2025_a_b",
        7,
    )
    with pytest.raises(ValueError, match="one product"):
        events_key("archive", events + trades("coinbase:ETH-USD", 1, 1, T0))


async def test_events_round_trip_and_keys_sort_by_time(archive: Archive) -> None:
    btc = "coinbase:BTC-USD"
    eth = "coinbase:ETH-USD"
    # Written out of time order, across a day boundary and a month boundary.
    batches = [
        (btc, trades(btc, 201, 50, T0 + 11 * DAY_NS)),
        (btc, trades(btc, 1, 100, T0)),
        (eth, trades(eth, 1, 10, T0 + 5)),
        (btc, trades(btc, 101, 100, T0 + DAY_NS)),
    ]
    with trio.fail_after(30):
        keys = {}
        for product, events in batches:
            keys[events[0].seq, product] = await archive.put_events(product, events)
        for product, events in batches:
            assert await archive.read_events(keys[events[0].seq, product]) == events

        btc_keys = await archive.list_keys(btc)
        assert btc_keys == [keys[1, btc], keys[101, btc], keys[201, btc]]
        assert btc_keys == sorted(btc_keys)
        assert await archive.list_keys() == [
            keys[1, btc],
            keys[1, eth],
            keys[101, btc],
            keys[201, btc],
        ]
        # Time windows select the batches whose ts_event range overlaps.
        assert await archive.list_keys(btc, start_ns=T0 + 50, end_ns=T0 + DAY_NS + 101) == [
            keys[1, btc],
            keys[101, btc],
        ]
        assert await archive.list_keys(btc, start_ns=T0 + 2 * DAY_NS) == [keys[201, btc]]
        assert await archive.list_keys(eth, end_ns=T0) == []

        # Re-archiving a batch is idempotent: same key, same content.
        again = await archive.put_events(btc, batches[1][1])
        assert again == keys[1, btc]
        assert len(await archive.list_keys(btc)) == 3


async def test_state_snapshots_round_trip(archive: Archive) -> None:
    states = [
        StateRow(
            product="coinbase:BTC-USD",
            epoch="e1",
            seq=42,
            ts_event=T0,
            stream_seq=420,
            state={"bids": [["100.10", "2"]], "last": {"price": "100.15"}},
        )
    ]
    with trio.fail_after(30):
        first = await archive.put_state_snapshot(T0, states)
        second = await archive.put_state_snapshot(T0 + DAY_NS, [])
        assert first == f"archive/state/2025/11/20/{T0:019d}.json.gz"
        assert await archive.list_state_keys() == [first, second]
        assert await archive.list_state_keys(start_ns=T0 + 1) == [second]
        assert await archive.read_state_snapshot(first) == (T0, states)
        assert await archive.read_state_snapshot(second) == (T0 + DAY_NS, [])
        with pytest.raises(ArchiveError, match="no archive object"):
            await archive.read_events("archive/events/x/y/2025/01/01/missing.jsonl.gz")


async def test_objects_are_gzip_json_lines_of_wire_events(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path, prefix="p")
    book = Book(
        product="coinbase:BTC-USD",
        seq=1,
        epoch="e",
        ts_event=T0,
        ts_ingest=T0 + 1,
        snapshot=True,
        bids=((Decimal("1.10"), Decimal("2")),),
    )
    with trio.fail_after(10):
        key = await archive.put_events("coinbase:BTC-USD", [book])
    lines = gzip.decompress((tmp_path / key).read_bytes()).splitlines()
    assert [decode(line) for line in lines] == [book]
    assert b'"1.10"' in lines[0]


async def test_a_corrupt_object_is_a_named_error(tmp_path: Path) -> None:
    archive = LocalArchive(tmp_path)
    with trio.fail_after(10):
        key = await archive.put_events("coinbase:BTC-USD", trades("coinbase:BTC-USD", 1, 2, T0))
        (tmp_path / key).write_bytes(gzip.compress(b'{"type": "trade", "price": 1.5}\n'))
        with pytest.raises(ArchiveError, match=key):
            await archive.read_events(key)


@pytest.mark.s3
async def test_replay_from_an_s3_archive_reads_the_range_in_time_order(
    s3_endpoint: str, tmp_path: Path
) -> None:
    """``ledgerflux replay --from-archive s3://BUCKET/PREFIX`` as an operator runs it: a
    separate process, the endpoint and keys from the environment, batches of two products
    merged into one ts_event order and cut to ``--start``/``--end``."""
    import os
    import sys

    import attrs

    bucket = "lf-replay"
    config = ArchiveConfig(
        s3_endpoint=s3_endpoint,
        bucket=bucket,
        prefix="prod",
        access_key_id="testing",
        secret_access_key="testing",
    )
    archive = open_archive(config, tmp_path)
    base = 1_700_000_000_000_000_000
    # Interleaved in time: BTC at even offsets, ETH at odd ones.
    btc = [
        attrs.evolve(e, ts_event=base + 2 * e.seq) for e in trades("coinbase:BTC-USD", 1, 6, base)
    ]
    eth = [
        attrs.evolve(e, ts_event=base + 2 * e.seq + 1)
        for e in trades("coinbase:ETH-USD", 1, 6, base)
    ]
    for batch in (btc[:3], btc[3:], eth[:4], eth[4:]):
        await archive.put_events(batch[0].product, batch)
    everything = sorted([*btc, *eth], key=lambda e: e.ts_event)
    start, end = everything[2].ts_event, everything[9].ts_event
    env = {
        **os.environ,
        "LEDGERFLUX_ARCHIVE__S3_ENDPOINT": s3_endpoint,
        "LEDGERFLUX_ARCHIVE__ACCESS_KEY_ID": "testing",
        "LEDGERFLUX_ARCHIVE__SECRET_ACCESS_KEY": "testing",
    }
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "ledgerflux",
            "--data-dir",
            str(tmp_path / "data"),
            "replay",
            "--from-archive",
            f"s3://{bucket}/prod",
            "--start",
            str(start),
            "--end",
            str(end),
        ],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert [decode(line) for line in result.stdout.splitlines()] == everything[2:10]
