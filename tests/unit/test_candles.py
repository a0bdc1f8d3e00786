"""ledgerflux.candles in memory: exact merges in any order, the live candles the gateway
sends (open updates, then the closed one), user times."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerflux.candles import (
    INTERVAL_NS,
    Candle,
    LiveCandles,
    candle_json,
    candle_of,
    fold,
    merge,
    minute_of,
    parse_time,
)
from ledgerflux.events import Trade

PRODUCT = "coinbase:BTC-USD"
M0 = 1_764_600_000 * 1_000_000_000 - (1_764_600_000 * 1_000_000_000) % INTERVAL_NS


def trade(seq: int, ts: int, price: str, size: str = "1", epoch: str = "e1") -> Trade:
    return Trade(
        product=PRODUCT,
        seq=seq,
        epoch=epoch,
        ts_event=ts,
        ts_ingest=ts,
        price=Decimal(price),
        size=Decimal(size),
        side="buy",
    )


def test_a_minute_of_trades_is_one_exact_candle() -> None:
    trades = [
        trade(1, M0 + 5, "100.10", "0.1"),
        trade(2, M0 + 1, "99.90", "0.2"),  # earlier exchange time: it opens the minute
        trade(3, M0 + 9, "101.00", "0.30"),
        trade(4, M0 + 9, "100.55", "0.4"),  # same time, later seq: it closes the minute
    ]
    (candle,) = fold((t, i + 1) for i, t in enumerate(trades)).values()
    assert candle == Candle(
        product=PRODUCT,
        start=M0,
        open=Decimal("99.90"),
        high=Decimal("101.00"),
        low=Decimal("99.90"),
        close=Decimal("100.55"),
        volume=Decimal("1.00"),
        trades=4,
        first=(M0 + 1, "e1", 2),
        last=(M0 + 9, "e1", 4),
        stream_seq=4,
    )
    assert candle_json(candle, closed=False) == {
        "type": "candle",
        "product": PRODUCT,
        "start": M0,
        "end": M0 + INTERVAL_NS,
        "open": "99.90",
        "high": "101.00",
        "low": "99.90",
        "close": "100.55",
        "volume": "1.00",
        "trades": 4,
        "closed": False,
    }


def test_volume_never_rounds() -> None:
    tiny = trade(1, M0, "1", "0." + "0" * 40 + "1")
    big = trade(2, M0, "1", "1" + "0" * 30)
    candle = merge(candle_of(tiny), candle_of(big))
    assert candle.volume == Decimal("1" + "0" * 30 + "." + "0" * 40 + "1")


def test_merge_refuses_other_minutes() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        merge(candle_of(trade(1, M0, "1")), candle_of(trade(2, M0 + INTERVAL_NS, "1")))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a loaded machine
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3 * INTERVAL_NS),
            st.decimals(min_value=1, max_value=10**6, places=8, allow_nan=False),
        ),
        min_size=1,
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_merging_in_any_order_and_grouping_gives_the_same_candles(
    ticks: list[tuple[int, Decimal]], rng: random.Random
) -> None:
    trades = [(trade(i + 1, M0 + ts, str(p), str(p / 7)), i + 1) for i, (ts, p) in enumerate(ticks)]
    whole = fold(trades)
    shuffled = trades[:]
    rng.shuffle(shuffled)
    cut = rng.randint(0, len(shuffled))
    parts = [fold(shuffled[:cut]), fold(shuffled[cut:])]
    merged: dict[tuple[str, int], Candle] = {}
    for part in parts:
        for key, candle in part.items():
            merged[key] = candle if key not in merged else merge(merged[key], candle)
    assert merged == whole


def test_live_candles_update_the_open_minute_then_close_it() -> None:
    live = LiveCandles()
    [(first, closed)] = live.add(trade(1, M0 + 1, "10"), 1)
    assert (first.close, closed) == (Decimal("10"), False)
    [(second, closed)] = live.add(trade(2, M0 + 2, "12"), 2)
    assert (second.high, second.trades, closed) == (Decimal("12"), 2, False)
    out = live.add(trade(3, M0 + INTERVAL_NS, "11"), 3)
    assert out == [(second, True), (candle_of(trade(3, M0 + INTERVAL_NS, "11"), 3), False)]
    # A late trade of the closed minute revises it, still closed.
    [(revised, closed)] = live.add(trade(4, M0 + 3, "9"), 4)
    assert (revised.low, revised.trades, closed) == (Decimal("9"), 3, True)
    assert live.open_candle(PRODUCT) == candle_of(trade(3, M0 + INTERVAL_NS, "11"), 3)


def test_live_candles_skip_trades_a_seeded_candle_already_holds() -> None:
    live = LiveCandles()
    stored = fold([(trade(1, M0 + 1, "10"), 7), (trade(2, M0 + 2, "11"), 9)])[(PRODUCT, M0)]
    live.seed(stored)
    assert live.add(trade(2, M0 + 2, "11"), 9) == []  # read again after the seed
    [(candle, _)] = live.add(trade(3, M0 + 3, "12"), 10)
    assert candle.trades == 3


def test_close_due_closes_a_quiet_minute_and_late_trades_revise_it() -> None:
    live = LiveCandles()
    live.add(trade(1, M0 + 1, "10"), 1)
    assert live.close_due(M0 + INTERVAL_NS, grace_ns=2) == []
    [closed] = live.close_due(M0 + INTERVAL_NS + 2, grace_ns=2)
    assert closed.start == M0
    assert live.open_candle(PRODUCT) is None
    [(revised, is_closed)] = live.add(trade(2, M0 + 5, "10"), 2)
    assert (revised.trades, is_closed) == (2, True)


def test_a_trade_older_than_every_kept_minute_is_counted_not_shown() -> None:
    live = LiveCandles()
    live.add(trade(1, M0 + 10 * INTERVAL_NS, "10"), 1)
    assert live.add(trade(2, M0, "10"), 2) == []
    assert live.late_dropped == 1


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1764630000", 1_764_630_000 * 10**9),
        ("1764630000.5", 1_764_630_000_500_000_000),
        ("2025-12-01T23:00:00Z", 1_764_630_000 * 10**9),
        ("2025-12-01T23:00:00", 1_764_630_000 * 10**9),
        ("2025-12-02T00:00:00.25+01:00", 1_764_630_000_250_000_000),
    ],
)
def test_parse_time(text: str, ns: int) -> None:
    assert parse_time(text) == ns


@pytest.mark.parametrize("text", ["yesterday", "", "nan", "2025-13-01"])
def test_parse_time_refuses_what_is_not_a_time(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        parse_time(text)


def test_minute_of_floors_before_1970() -> None:
    assert minute_of(-1) == -INTERVAL_NS
    assert minute_of(INTERVAL_NS + 1) == INTERVAL_NS
