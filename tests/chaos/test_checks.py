"""The chaos suite's invariant checks on small hand-made inputs: each finds what it must
and nothing on a clean input."""

from __future__ import annotations

from typing import Any

import orjson

from ledgerflux import codec
from ledgerflux.events import Book, Event, Trade
from ledgerflux.state import ProductState
from ledgerflux.testing.chaos_checks import (
    Finding,
    HistoryChecker,
    HistoryRecord,
    LatestChecker,
    LatestRecord,
    MdChecker,
    MdMessage,
    SubscriberLedger,
    assemble,
    check_history,
    check_latest,
    check_md_sequence,
    parse_md,
)

P = "coinbase:BTC-USD"
Q = "coinbase:ETH-USD"


def trade(seq: int, epoch: str = "e1", product: str = P, price: str = "100") -> dict[str, Any]:
    return {
        "type": "trade", "product": product, "seq": seq, "epoch": epoch, "src_seq": None,
        "ts_event": 1, "ts_ingest": 2, "price": price, "size": "1", "side": "buy",
        "trade_id": None,
    }  # fmt: skip


def status(seq: int, kind: str, epoch: str = "e1") -> dict[str, Any]:
    return {
        "type": "status", "product": P, "seq": seq, "epoch": epoch, "src_seq": None,
        "ts_event": 1, "ts_ingest": 2, "status": kind, "reason": "",
    }  # fmt: skip


def book_part(seq: int, part: int, parts: int, bids: list[list[str]]) -> dict[str, Any]:
    return {
        "type": "book", "product": P, "seq": seq, "epoch": "e1", "src_seq": 7,
        "ts_event": 1, "ts_ingest": 2, "snapshot": True, "bids": bids, "asks": [],
        "part": part, "parts": parts,
    }  # fmt: skip


def messages(*wires: dict[str, Any]) -> list[MdMessage]:
    return [MdMessage(n, w) for n, w in enumerate(wires, start=1)]


def kinds(findings: list[Finding]) -> list[tuple[str, int]]:
    return [(f.kind, f.count) for f in findings]


def test_parse_md_reads_an_event_and_names_garbage() -> None:
    assert parse_md(3, orjson.dumps(trade(1))) == MdMessage(3, trade(1))
    bad = parse_md(4, b"{not json")
    assert isinstance(bad, Finding)
    assert (bad.kind, bad.key) == ("state", "md-unreadable:4")


def test_contiguous_epochs_are_clean() -> None:
    events, broken = assemble(
        messages(trade(1), trade(2), trade(1, "e2"), trade(3), trade(2, "e2"))
    )
    assert broken == []
    assert check_md_sequence(events) == []


def test_hole_duplicate_and_late_epoch_start_are_found() -> None:
    events, _ = assemble(messages(trade(1), trade(2), trade(2), trade(5), trade(3, "e2")))
    assert kinds(check_md_sequence(events)) == [("duplicated", 1), ("hole", 2), ("hole", 2)]


def test_a_jump_announced_by_a_status_is_explained() -> None:
    events, _ = assemble(messages(trade(1), status(4, "gap")))
    assert kinds(check_md_sequence(events)) == [("explained", 2)]


def test_parts_of_one_snapshot_are_one_event_with_every_level_in_order() -> None:
    msgs = messages(
        trade(1),
        book_part(2, 0, 3, [["1", "1"]]),
        trade(1, product=Q),  # another product's message in between is fine
        book_part(2, 1, 3, [["2", "1"]]),
        book_part(2, 2, 3, [["3", "1"]]),
        trade(3),
    )
    events, broken = assemble(msgs)
    assert broken == []
    assert [(e.product, e.seq, e.stream_seq) for e in events] == [
        (P, 1, 1), (Q, 1, 3), (P, 2, 5), (P, 3, 6)
    ]  # fmt: skip
    whole = events[2].wire
    assert "part" not in whole
    assert "parts" not in whole
    assert whole["bids"] == [["1", "1"], ["2", "1"], ["3", "1"]]
    assert check_md_sequence(events) == []


def test_broken_part_sequences_are_holes_and_never_a_whole_book() -> None:
    msgs = messages(
        book_part(1, 0, 3, [["1", "1"]]),
        book_part(1, 2, 3, [["3", "1"]]),  # part 1 missing
        book_part(2, 1, 2, [["2", "1"]]),  # no part 0
        book_part(3, 0, 2, [["1", "1"]]),
        trade(4),  # an ordinary event before part 1
    )
    events, broken = assemble(msgs)
    # seq 1: the collection and the stray part 2; seq 2: part 1 alone; seq 3: cut short.
    assert [f.kind for f in broken] == ["hole"] * 4
    assert all("incomplete_parts" in f.detail for f in broken)
    assert [e.seq for e in events] == [4]


def test_history_lost_duplicated_changed_and_phantom_rows() -> None:
    events, _ = assemble(messages(trade(1), trade(2), trade(3), trade(4)))

    def row(wire: dict[str, Any], stream_seq: int) -> HistoryRecord:
        return HistoryRecord(P, wire["epoch"], wire["seq"], stream_seq, wire)

    rows = [row(trade(1), 1), row(trade(1), 1), row(trade(3, price="999"), 3), row(trade(9), 9)]
    found = check_history(events, rows, persisted={P: 3})
    assert sorted((f.kind, f.key) for f in found) == [
        ("duplicated", f"history-dup:{P} epoch=e1 seq=1"),
        ("lost", f"history-lost:{P} epoch=e1 seq=2"),
        ("state", f"history-payload:{P} epoch=e1 seq=3"),
        ("state", f"history-phantom:{P} epoch=e1 seq=9"),
    ]
    # Seq 4 is beyond the committed position: not yet due, so not lost.
    clean = [row(trade(n), n) for n in (1, 2, 3)]
    assert check_history(events, clean, persisted={P: 3}) == []


def history_of(*events: Event) -> list[HistoryRecord]:
    return [HistoryRecord(e.product, e.epoch, e.seq, e.seq, codec.to_wire(e)) for e in events]


def test_latest_equals_the_rebuilt_state_or_is_a_finding() -> None:
    b1 = Book(
        product=P, seq=1, epoch="e1", ts_event=1, ts_ingest=1, snapshot=True,
        bids=((codec.Decimal("10"), codec.Decimal("1")),),
        asks=((codec.Decimal("11"), codec.Decimal("2")),),
    )  # fmt: skip
    t2 = codec.from_wire(trade(2))
    assert isinstance(t2, Trade)
    history = history_of(b1, t2)
    good = ProductState(P)
    good.apply(b1)
    good.apply(t2)
    latest = LatestRecord(P, "e1", 2, 2, good.to_json())
    assert check_latest([latest], history) == []

    stale = ProductState(P)
    stale.apply(b1)
    wrong = LatestRecord(P, "e1", 2, 2, stale.to_json() | {"seq": 2})
    assert [f.key for f in check_latest([wrong], history)] == [f"latest-differs:{P} epoch=e1"]
    ahead = LatestRecord(P, "e1", 3, 3, good.to_json())
    assert [f.key for f in check_latest([ahead], history)] == [f"latest-seq:{P} epoch=e1"]
    gapped = [*history_of(b1), HistoryRecord(P, "e1", 3, 3, trade(3))]
    assert [f.kind for f in check_latest([LatestRecord(P, "e1", 3, 3, {})], gapped)] == ["state"]


def snapshot(seq: int, epoch: str = "e1") -> dict[str, Any]:
    return {"type": "snapshot", "product": P, "seq": seq, "epoch": epoch}


def test_subscriber_resumes_without_hole_or_duplicate() -> None:
    ledger = SubscriberLedger()
    first = ledger.resume_request([P], 1)
    assert first["snapshot"] is True
    assert "from_seq" not in first
    for msg in (snapshot(5), trade(6), trade(7)):
        ledger.on_message(msg)
    again = ledger.resume_request([P], 2)
    assert again["from_seq"] == {P: 8}
    assert again["epoch"] == {P: "e1"}
    for msg in (trade(8), trade(9), status(1, "reset", "e2"), trade(2, "e2")):
        ledger.on_message(msg)
    assert ledger.findings == []
    assert ledger.events == 6


def test_subscriber_hole_duplicate_and_gateway_reset() -> None:
    ledger = SubscriberLedger()
    for msg in (snapshot(5), trade(6), trade(6), trade(9)):
        ledger.on_message(msg)
    assert kinds(ledger.findings) == [("duplicated", 1), ("hole", 2)]
    ledger.findings.clear()
    # The gateway's reset (the asked seq is gone) then a fresh snapshot: explained.
    for msg in (status(20, "reset"), snapshot(20), trade(21)):
        ledger.on_message(msg)
    assert kinds(ledger.findings) == [("explained", 11)]
    ledger.findings.clear()
    # A silent jump by a snapshot is a hole.
    ledger.on_message(snapshot(30))
    assert kinds(ledger.findings) == [("hole", 9)]


def test_subscriber_counts_a_parted_snapshot_once() -> None:
    ledger = SubscriberLedger()
    for msg in (snapshot(1), book_part(2, 0, 2, []), book_part(2, 1, 2, []), trade(3)):
        ledger.on_message(msg)
    assert ledger.findings == []
    assert ledger.events == 2
    for msg in (book_part(4, 0, 2, []), trade(5)):
        ledger.on_message(msg)
    assert kinds(ledger.findings) == [("hole", 1)]


def test_md_checker_reads_the_stream_piece_by_piece() -> None:
    msgs = messages(trade(1), book_part(2, 0, 2, [["1", "1"]]), book_part(2, 1, 2, []), trade(4))
    checker = MdChecker()
    first, found = checker.add(msgs[:2])  # the snapshot's second part is not read yet
    assert ([e.seq for e in first], found) == ([1], [])
    rest, found = checker.add(msgs[2:])
    assert [e.seq for e in rest] == [2, 4]
    assert kinds(found) == [("hole", 1)]
    assert checker.events == 3


def test_history_checker_waits_for_the_commit_then_finds_the_loss() -> None:
    events, _ = assemble(messages(trade(1), trade(2), trade(3)))
    checker = HistoryChecker()
    checker.add_events(events)
    assert checker.fetch_from == 1
    row1 = HistoryRecord(P, "e1", 1, 1, trade(1))
    assert checker.check([row1], persisted={P: 1}) == []  # 2 and 3 not committed yet
    row3 = HistoryRecord(P, "e1", 3, 3, trade(3))
    found = checker.check([row1, row3], persisted={P: 3})
    assert [(f.kind, f.key) for f in found] == [("lost", f"history-lost:{P} epoch=e1 seq=2")]
    assert checker.check([row3], persisted={P: 3}) == []  # nothing due any more


def test_latest_checker_moves_the_rebuilt_state_forward() -> None:
    t1, t2 = codec.from_wire(trade(1)), codec.from_wire(trade(2, price="101"))
    state = ProductState(P)
    state.apply(t1)
    checker = LatestChecker()
    assert checker.check([LatestRecord(P, "e1", 1, 1, state.to_json())], history_of(t1)) == []
    state.apply(t2)
    # Only the new row comes with the second check.
    assert checker.check([LatestRecord(P, "e1", 2, 2, state.to_json())], history_of(t2)) == []
    found = checker.check([LatestRecord(P, "e1", 2, 2, {"wrong": True})], [])
    assert [f.key for f in found] == [f"latest-differs:{P} epoch=e1"]
