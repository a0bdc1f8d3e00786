"""Properties of the Kraken plugin: its checksum agrees with the independent one written
from Kraken's documentation, and books built from the decoded events stay the exchange's
book at the subscribed depth through any sequence of changes, levels pushed out of the
depth included (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kraken_reference import checksum as reference_checksum
from ledgerflux_kraken import KrakenDecoder, KrakenFeed, kraken_checksum, kraken_checksum_text
from ledgerflux_kraken.decoder import _parse_rfc3339

from ledgerflux.book import OrderBook
from ledgerflux.events import Book

PRICE_PLACES, QTY_PLACES = 1, 8  # BTC/USD


def test_documented_formatting() -> None:
    """Kraken's guide: price 45285.2 → 452852, qty 0.00100000 → 100000."""
    text = kraken_checksum_text([], [(Decimal("45285.2"), Decimal("0.00100000"))])
    assert text == "452852100000"
    assert kraken_checksum(
        [], [(Decimal("45285.2"), Decimal("0.001"))], 1, 8
    ) == reference_checksum([("45285.2", "0.00100000")], [])


levels = st.lists(
    st.tuples(st.integers(1, 10**7), st.integers(1, 10**10)), max_size=25, unique_by=lambda t: t[0]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(levels, levels)
def test_checksum_agrees_with_the_documentation(
    raw_bids: list[tuple[int, int]], raw_asks: list[tuple[int, int]]
) -> None:
    def side(raw: list[tuple[int, int]], descending: bool) -> list[tuple[str, str]]:
        # The strings a pair with precisions (1, 8) shows, built from integers.
        out = [(f"{p // 10}.{p % 10}", f"{q // 10**8}.{q % 10**8:08d}") for p, q in raw]
        return sorted(out, key=lambda level: Decimal(level[0]), reverse=descending)

    bids, asks = side(raw_bids, True), side(raw_asks, False)
    want = reference_checksum(asks, bids)
    as_decimals = [[(Decimal(p), Decimal(q)) for p, q in s] for s in (bids, asks)]
    assert KrakenFeed().book_checksum(*as_decimals) == want
    # With the precisions given, the decimals' own digits do not matter.
    normalized = [[(p.normalize(), q.normalize()) for p, q in s] for s in as_decimals]
    assert kraken_checksum(*normalized, PRICE_PLACES, QTY_PLACES) == want


def _num(value: Decimal, places: int) -> str:
    return f"{value.quantize(Decimal(1).scaleb(-places)):f}"


prices = st.integers(1, 300).map(lambda i: Decimal(1000 + i).scaleb(-1))
qtys = st.sampled_from([Decimal(0), Decimal(0), Decimal("0.5"), Decimal("1.25"), Decimal("3")])
steps = st.lists(st.lists(st.tuples(prices, qtys), min_size=1, max_size=5), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([3, 10, 25]), st.lists(st.tuples(prices, qtys.filter(bool)), max_size=60), steps
)
def test_books_stay_the_exchange_book_at_the_subscribed_depth(
    depth: int, initial: list[tuple[Decimal, Decimal]], changes: list[list[tuple[Decimal, Decimal]]]
) -> None:
    """The exchange keeps a deep book (bids below 115.0, asks from 115.0) and shows the
    subscriber its best ``depth`` levels, the way Kraken does: an update names the levels
    whose size changed inside that view, a removal inside it, and a level that comes into
    view; never a level pushed out of it. The decoded events, applied in order, are the
    exchange's view after every push, and every checksum reported is the independent one
    of that view."""
    full: dict[str, dict[Decimal, Decimal]] = {"bids": {}, "asks": {}}

    def side_of(price: Decimal) -> str:
        return "bids" if price < 115 else "asks"

    for price, qty in initial:
        full[side_of(price)][price] = qty

    def view() -> dict[str, dict[Decimal, Decimal]]:
        bids = sorted(full["bids"].items(), reverse=True)[:depth]
        asks = sorted(full["asks"].items())[:depth]
        return {"bids": dict(bids), "asks": dict(asks)}

    def text(levels: list[tuple[Decimal, Decimal]]) -> str:
        return ",".join(
            f'{{"price":{_num(p, PRICE_PLACES)},"qty":{_num(q, QTY_PLACES)}}}' for p, q in levels
        )

    def frame(
        kind: str, bids: list[tuple[Decimal, Decimal]], asks: list[tuple[Decimal, Decimal]]
    ) -> str:
        shown = view()
        ordered_bids = sorted(shown["bids"].items(), reverse=True)
        ordered_asks = sorted(shown["asks"].items())
        csum = reference_checksum(
            [(_num(p, 1), _num(q, 8)) for p, q in ordered_asks],
            [(_num(p, 1), _num(q, 8)) for p, q in ordered_bids],
        )
        stamp = ',"timestamp":"2023-10-06T17:35:55.440295Z"' if kind == "update" else ""
        return (
            f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"BTC/USD",'
            f'"bids":[{text(bids)}],"asks":[{text(asks)}],"checksum":{csum}{stamp}}}]}}'
        )

    decoder = KrakenDecoder()
    decoder.depths["kraken:BTC-USD"] = depth
    mine = OrderBook("kraken:BTC-USD")

    def deliver(raw: str) -> None:
        decoded = decoder.decode(raw, 1)
        assert decoded.errors == ()
        for event in decoded.events:
            assert isinstance(event, Book)
            mine.apply(event)
        shown = view()
        assert mine.bids() == sorted(shown["bids"].items(), reverse=True)
        assert mine.asks() == sorted(shown["asks"].items())
        for check in decoded.checksums:
            assert kraken_checksum(mine.bids(), mine.asks()) == check.value

    shown = view()
    deliver(
        frame(
            "snapshot", sorted(shown["bids"].items(), reverse=True), sorted(shown["asks"].items())
        )
    )
    for step in changes:
        before = view()
        for price, qty in step:
            name = side_of(price)
            if qty == 0:
                full[name].pop(price, None)
            else:
                full[name][price] = qty
        after = view()
        sent: dict[str, list[tuple[Decimal, Decimal]]] = {"bids": [], "asks": []}
        for name in ("bids", "asks"):
            for price, qty in after[name].items():
                if before[name].get(price) != qty:
                    sent[name].append((price, qty))
            for price in before[name]:
                # Out of view: removed (sent as qty 0), or pushed out (still in the
                # exchange's book, and Kraken says nothing).
                if price not in after[name] and price not in full[name]:
                    sent[name].append((price, Decimal(0)))
        if sent["bids"] or sent["asks"]:
            deliver(frame("update", sent["bids"], sent["asks"]))


@given(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)),
    st.integers(0, 999),
    st.integers(0, 9),
)
def test_timestamps_are_exact_nanoseconds(moment: datetime, extra_ns: int, digits: int) -> None:
    """Kraken's RFC 3339 times (any number of fraction digits up to 9) to integer ns,
    against the standard library's reading of the same wall time."""
    whole = moment.replace(microsecond=0, tzinfo=UTC)
    fraction = f"{moment.microsecond:06d}{extra_ns:03d}"[:digits]
    text = whole.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + "Z"
    want = int(whole.timestamp()) * 1_000_000_000 + int(fraction.ljust(9, "0") or "0")
    assert _parse_rfc3339(text) == want
