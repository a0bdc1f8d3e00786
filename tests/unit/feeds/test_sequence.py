import pytest

from ledgerflux.feeds.sequence import SequenceTracker, SeqVerdict
from ledgerflux.plugin import SeqMark, SequenceModel

OK, DUP, GAP = SeqVerdict.OK, SeqVerdict.DUPLICATE, SeqVerdict.GAP


@pytest.mark.parametrize(
    ("marks", "verdicts"),
    [
        # (key, value, carries_state)
        ([("a", 5, True)], [OK]),
        ([("a", 5, True), ("a", 6, True), ("a", 7, True)], [OK, OK, OK]),
        ([("a", 5, True), ("a", 5, True)], [OK, DUP]),
        ([("a", 5, True), ("a", 4, True)], [OK, DUP]),
        ([("a", 5, True), ("a", 8, True), ("a", 9, True)], [OK, GAP, OK]),
        ([("a", 5, True), ("a", 5, False)], [OK, OK]),  # heartbeat repeats the last
        ([("a", 5, True), ("a", 6, False)], [OK, GAP]),  # heartbeat proves a miss
        ([("a", 5, True), ("a", 4, False)], [OK, DUP]),
        ([("a", 5, True), ("b", 100, True), ("a", 6, True)], [OK, OK, OK]),
        ([("a", 5, True), ("b", 100, True), ("b", 102, True)], [OK, OK, GAP]),
    ],
)
def test_per_product(marks: list[tuple[str, int, bool]], verdicts: list[SeqVerdict]) -> None:
    tracker = SequenceTracker(SequenceModel.PER_PRODUCT)
    got = [tracker.check(SeqMark(k, v, s)) for k, v, s in marks]
    assert got == verdicts


def test_per_connection_counter_is_shared_and_reset_on_new_connection() -> None:
    tracker = SequenceTracker(SequenceModel.PER_CONNECTION)
    assert tracker.check(SeqMark(None, 1)) is OK
    assert tracker.check(SeqMark(None, 2)) is OK
    assert tracker.check(SeqMark(None, 4)) is GAP
    tracker.new_connection()
    assert tracker.check(SeqMark(None, 1)) is OK  # a new connection starts over


def test_per_product_survives_reconnect_and_set_forget() -> None:
    tracker = SequenceTracker(SequenceModel.PER_PRODUCT)
    tracker.check(SeqMark("a", 10))
    tracker.new_connection()
    assert tracker.check(SeqMark("a", 12)) is GAP
    tracker.set("a", 20)
    assert tracker.check(SeqMark("a", 20)) is DUP
    assert tracker.check(SeqMark("a", 21)) is OK
    tracker.forget("a")
    assert tracker.check(SeqMark("a", 3)) is OK


def test_none_model_never_judges() -> None:
    tracker = SequenceTracker(SequenceModel.NONE)
    assert [tracker.check(SeqMark("a", v)) for v in (5, 5, 1, 9)] == [OK, OK, OK, OK]
