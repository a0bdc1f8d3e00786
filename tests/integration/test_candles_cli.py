"""``ledgerflux candles PRODUCT --since T`` and ``ledgerflux candles rebuild`` as a real
process against the real PostgreSQL (marker ``postgres``)."""

from __future__ import annotations

import os
import sys

import orjson
import psycopg
import pytest
import trio

from ledgerflux.candles import INTERVAL_NS, candle_json, fold
from ledgerflux.events import Trade
from ledgerflux.store import HistoryRow, open_store
from tests.integration.test_candles_store import CONFIG, market

pytestmark = pytest.mark.postgres


async def ledgerflux(database_url: str, *argv: str) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "ledgerflux", *argv],
        env={**os.environ, "LEDGERFLUX_DATABASE_URL": database_url},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_candles_prints_stored_candles_and_rebuild_restores_them(database_url: str) -> None:
    history: list[HistoryRow] = market(seed=9)
    trades = [(row.event, row.stream_seq) for row in history if isinstance(row.event, Trade)]
    every = sorted(
        (c for c in fold(trades).values() if c.product == "coinbase:ETH-USD"),
        key=lambda c: c.start,
    )
    with trio.fail_after(90):
        async with open_store(CONFIG, url=database_url) as store:
            await store.write_batch(history, [])
        since = str(every[1].start // 10**9)
        until = f"{every[3].start // 10**9 + 1}"  # exclusive: minutes 1..3
        result = await ledgerflux(
            database_url, "candles", "coinbase:ETH-USD", "--since", since, "--until", until
        )
        assert result.returncode == 0, result.stderr.decode()
        printed = [orjson.loads(line) for line in result.stdout.splitlines()]
        assert printed == [candle_json(c, closed=True) for c in every[1:4]]

        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE md_candles SET trades = 0, volume = 0")  # damage them
        result = await ledgerflux(database_url, "candles", "rebuild")
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().startswith(f"rebuilt {len(fold(trades))} candles")
        result = await ledgerflux(
            database_url, "candles", "coinbase:ETH-USD", "--since", "0", "--until",
            str((every[-1].start + INTERVAL_NS) // 10**9),
        )  # fmt: skip
        printed = [orjson.loads(line) for line in result.stdout.splitlines()]
        assert printed == [candle_json(c, closed=True) for c in every]


async def test_candles_refuses_a_bad_time(database_url: str) -> None:
    with trio.fail_after(60):
        result = await ledgerflux(database_url, "candles", "coinbase:ETH-USD", "--since", "soon")
    assert result.returncode != 0
    assert "not a time: 'soon'" in result.stderr.decode()
