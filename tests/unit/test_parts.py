"""Book snapshots as parts: split to fit the bus, reassembled atomically (ledgerflux.parts)."""

from __future__ import annotations

from decimal import Decimal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerflux import codec
from ledgerflux.events import Book, PriceLevel
from ledgerflux.parts import (
    IncompleteParts,
    PartAssembler,
    PartsError,
    PartTooLarge,
    split_book,
)


def level(i: int) -> PriceLevel:
    return (Decimal(f"{60000 + i}.{i % 100:02d}"), Decimal(f"0.{i:08d}"))


def snapshot(n_bids: int, n_asks: int, **fields: object) -> Book:
    base: dict[str, object] = {
        "product": "coinbase:BTC-USD",
        "src_seq": 99,
        "ts_event": 1_700_000_000_000_000_000,
        "ts_ingest": 1_700_000_000_000_000_123,
        "snapshot": True,
        "bids": tuple(level(i) for i in range(n_bids)),
        "asks": tuple(level(100_000 + i) for i in range(n_asks)),
    }
    base.update(fields)
    return Book(**base)  # type: ignore[arg-type]


def assemble(parts: list[Book]) -> Book | None:
    assembler = PartAssembler()
    results = [assembler.add(part) for part in parts]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert assembler.pending == frozenset()
    return results[-1]


def test_a_book_that_fits_is_returned_as_is() -> None:
    book = snapshot(3, 3)
    assert split_book(book, 10_000) == [book]
    delta = attrs.evolve(book, snapshot=False)
    assert split_book(delta, 10_000) == [delta]


def test_fifty_thousand_levels_split_under_one_mebibyte() -> None:
    book = snapshot(25_000, 25_000, seq=7, epoch="E1")
    limit = 1024 * 1024 - 4096
    assert len(codec.encode(book)) > limit
    parts = split_book(book, limit)
    assert len(parts) >= 2
    for index, part in enumerate(parts):
        assert (part.part, part.parts) == (index, len(parts))
        assert len(codec.encode(part)) <= limit
        assert attrs.evolve(part, bids=(), asks=(), part=0, parts=1) == attrs.evolve(
            book, bids=(), asks=()
        )
    # Greedy filling: no part but the last could have taken the next part's first level.
    assert len(parts) <= len(codec.encode(book)) // (limit - 1000) + 1
    assert assemble(parts) == book


def test_parts_keep_the_level_order_across_sides() -> None:
    book = snapshot(7, 5)
    parts = split_book(book, len(codec.encode(attrs.evolve(book, bids=(), asks=()))) + 120)
    assert len(parts) > 3
    assert sum((p.bids for p in parts), ()) == book.bids
    assert sum((p.asks for p in parts), ()) == book.asks
    # Bids come first: once a part holds asks, no later part holds bids.
    first_ask = next(i for i, p in enumerate(parts) if p.asks)
    assert all(not p.bids for p in parts[first_ask + 1 :])


def test_a_level_larger_than_the_limit_is_named() -> None:
    book = snapshot(2, 0, bids=((Decimal("1." + "0" * 400), Decimal("1")),))
    with pytest.raises(PartTooLarge, match=r"bids\[0\] needs"):
        split_book(book, 300)


def test_an_envelope_larger_than_the_limit_is_named() -> None:
    book = snapshot(50, 50)
    with pytest.raises(PartTooLarge, match="envelope alone"):
        split_book(book, 100)


def test_a_change_is_never_parted() -> None:
    delta = snapshot(400, 0, snapshot=False)
    with pytest.raises(PartTooLarge, match="only snapshots"):
        split_book(delta, 2_000)


def test_a_part_is_not_split_again() -> None:
    part = split_book(snapshot(100, 100), 2_000)[0]
    with pytest.raises(PartsError, match="already part 0"):
        split_book(part, 2_000)


# --- the assembler ---------------------------------------------------------------------


def parts_of(book: Book, limit: int = 1_500) -> list[Book]:
    parts = split_book(book, limit)
    assert len(parts) >= 3
    return parts


def test_whole_books_pass_straight_through() -> None:
    assembler = PartAssembler()
    book = snapshot(3, 3)
    assert assembler.add(book) is book
    delta = attrs.evolve(book, snapshot=False)
    assert assembler.add(delta) is delta


def test_products_are_collected_independently() -> None:
    one = parts_of(snapshot(60, 60))
    other = parts_of(snapshot(60, 60, product="coinbase:ETH-USD"))
    assert len(one) == len(other)
    assembler = PartAssembler()
    results = []
    for a, b in zip(one, other, strict=True):
        results += [assembler.add(a), assembler.add(b)]
    assert results[-2:] == [snapshot(60, 60), snapshot(60, 60, product="coinbase:ETH-USD")]
    assert results[:-2] == [None] * (len(results) - 2)


def test_a_skipped_part_drops_the_collection() -> None:
    parts = parts_of(snapshot(60, 60))
    assembler = PartAssembler()
    assert assembler.add(parts[0]) is None
    with pytest.raises(IncompleteParts, match="part 2 while expecting part 1") as caught:
        assembler.add(parts[2])
    assert (caught.value.discarded, caught.value.result) == (1, None)
    assert assembler.pending == frozenset()
    # Nothing half-built comes out afterwards: the rest of that snapshot is refused too.
    with pytest.raises(IncompleteParts, match="without the parts before it"):
        assembler.add(parts[3] if len(parts) > 3 else parts[-1])


def test_a_new_snapshot_restarts_the_collection() -> None:
    old = parts_of(snapshot(60, 60, src_seq=1))
    new = parts_of(snapshot(60, 60, src_seq=2))
    assembler = PartAssembler()
    assembler.add(old[0])
    assembler.add(old[1])
    with pytest.raises(IncompleteParts, match="expecting part 2") as caught:
        assembler.add(new[0])
    assert caught.value.discarded == 2
    assert assembler.pending == {"coinbase:BTC-USD"}
    results = [assembler.add(p) for p in new[1:]]
    assert results[-1] == snapshot(60, 60, src_seq=2)


def test_a_part_of_another_seq_or_count_is_refused() -> None:
    parts = parts_of(snapshot(60, 60, seq=5, epoch="E"))
    for intruder, message in [
        (attrs.evolve(parts[1], seq=6), "seq E/6 while collecting E/5"),
        (attrs.evolve(parts[1], parts=parts[1].parts + 1), "parts="),
        (attrs.evolve(parts[1], ts_event=1), "another snapshot"),
    ]:
        assembler = PartAssembler()
        assembler.add(parts[0])
        with pytest.raises(IncompleteParts, match=message):
            assembler.add(intruder)


def test_a_whole_book_in_the_middle_is_returned_with_the_error() -> None:
    parts = parts_of(snapshot(60, 60))
    assembler = PartAssembler()
    assembler.add(parts[0])
    delta = snapshot(1, 0, snapshot=False)
    with pytest.raises(IncompleteParts, match="a whole book") as caught:
        assembler.add(delta)
    assert caught.value.result is delta
    assert assembler.pending == frozenset()


def test_discard_drops_a_partial_snapshot() -> None:
    parts = parts_of(snapshot(60, 60))
    assembler = PartAssembler()
    assembler.add(parts[0])
    assembler.add(parts[1])
    assert assembler.discard("coinbase:BTC-USD") == 2
    assert assembler.discard("coinbase:BTC-USD") == 0


def test_invalid_part_fields_are_refused() -> None:
    with pytest.raises(PartsError, match="only a snapshot"):
        PartAssembler().add(snapshot(1, 1, snapshot=False, part=0, parts=2))


# --- properties ------------------------------------------------------------------------

prices = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1e9"), places=8)
sides = st.lists(st.tuples(prices, prices), max_size=80).map(tuple)


@settings(max_examples=200)
@given(bids=sides, asks=sides, limit=st.integers(min_value=300, max_value=4_000))
def test_split_then_assemble_is_the_original(
    bids: tuple[PriceLevel, ...], asks: tuple[PriceLevel, ...], limit: int
) -> None:
    book = snapshot(0, 0, bids=bids, asks=asks, seq=3, epoch="E")
    parts = split_book(book, limit)
    for part in parts:
        assert len(codec.encode(part)) <= limit
        # Every part survives the wire unchanged, part fields included.
        assert codec.decode(codec.encode(part)) == part
    assert assemble(parts) == book


@settings(max_examples=100)
@given(
    bids=sides.filter(lambda s: len(s) > 20),
    data=st.data(),
)
def test_any_broken_sequence_is_detected(bids: tuple[PriceLevel, ...], data: st.DataObject) -> None:
    """Remove, repeat or swap parts: the assembler never returns a book that is not the
    original, and it reports the break."""
    book = snapshot(0, 0, bids=bids)
    parts = split_book(book, 600)
    if len(parts) < 2:
        return
    broken = list(parts)
    action = data.draw(st.sampled_from(["drop", "repeat", "swap"]))
    i = data.draw(st.integers(min_value=0, max_value=len(parts) - 2))
    if action == "drop":
        del broken[i]
    elif action == "repeat":
        broken.insert(i + 1, broken[i])
    else:
        broken[i], broken[i + 1] = broken[i + 1], broken[i]
    assembler = PartAssembler()
    outputs: list[Book] = []
    errors = 0
    for part in broken:
        try:
            result = assembler.add(part)
        except IncompleteParts as exc:
            errors += 1
            result = exc.result
        if result is not None:
            outputs.append(result)
    assert errors >= 1
    assert all(out == book for out in outputs)
    assert not outputs or action == "repeat"
