"""The chaos suite's invariants, sans-IO: plain records in, :class:`Finding` s out.

The pipeline's promises, as checked after every chaos round:

* **LF_MD is contiguous** per (product, epoch): seq 1, 2, 3, ... with no hole and no
  duplicate (:func:`check_md_sequence`). A hole directly followed by a ``status`` event
  (``gap``, ``reset``) is explained, not a hole. A book snapshot sent as parts (several
  messages sharing one ``seq``, with ``part``/``parts``) is ONE event once all its parts
  arrived in order (:func:`assemble`); a broken part sequence is a hole
  (``incomplete_parts``): half a book must never pass for a whole one.
* **md_history holds every LF_MD event exactly once** (:func:`check_history`): every event
  at or below the snapshotter's committed stream position is stored, with the same payload,
  once.
* **md_latest equals the state rebuilt from md_history** (:func:`check_latest`), with the
  same :class:`~ledgerflux.state.ProductState` every consumer uses.
* **A resuming subscriber sees no hole and no duplicate** (:class:`SubscriberLedger`, fed
  with what a WebSocket client of the gateway received across reconnects).

Records are wire-form JSON objects (``dict``), not decoded events, so that a check never
depends on the code under test to read what it checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs
import orjson

from ledgerflux import codec
from ledgerflux.codec import CodecError
from ledgerflux.state import ProductState, StateError

__all__ = [
    "Finding",
    "FindingKind",
    "HistoryChecker",
    "HistoryRecord",
    "LatestChecker",
    "LatestRecord",
    "MdChecker",
    "MdEvent",
    "MdMessage",
    "SubscriberLedger",
    "assemble",
    "check_history",
    "check_latest",
    "check_md_sequence",
    "parse_md",
]

FindingKind = Literal["lost", "duplicated", "hole", "explained", "state", "crash"]
"""``state``: md_latest/md_history disagree, a stall, a gateway error; ``crash``: a daemon
exited by itself or not cleanly on a signal; ``explained``: a jump announced by a status."""
EXPLAINING_STATUSES = frozenset({"gap", "reset"})
"""A ``status`` event of these kinds may follow a jump in ``seq``: it says why."""


@attrs.frozen
class Finding:
    """One broken promise (or an explained jump). ``key`` identifies it, so a check that
    runs again after the next round reports only what is new."""

    kind: FindingKind
    key: str
    count: int
    """How many events it concerns (a hole of 3 seqs counts 3)."""
    detail: str


@attrs.frozen
class MdMessage:
    """One message read from LF_MD: its stream position and its JSON object."""

    stream_seq: int
    wire: Mapping[str, Any]

    @property
    def product(self) -> str:
        return str(self.wire.get("product"))

    @property
    def epoch(self) -> str:
        return str(self.wire.get("epoch"))

    @property
    def seq(self) -> int:
        seq = self.wire.get("seq")
        return seq if isinstance(seq, int) else 0

    @property
    def part(self) -> int:
        part = self.wire.get("part", 0)
        return part if isinstance(part, int) else 0

    @property
    def parts(self) -> int:
        parts = self.wire.get("parts", 1)
        return parts if isinstance(parts, int) else 1


def parse_md(stream_seq: int, data: bytes) -> MdMessage | Finding:
    """An LF_MD message, or a ``state`` finding when it is not a JSON event object."""
    try:
        wire = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return Finding("state", f"md-unreadable:{stream_seq}", 1, f"LF_MD #{stream_seq}: {exc}")
    if not isinstance(wire, dict) or not isinstance(wire.get("seq"), int):
        return Finding(
            "state", f"md-unreadable:{stream_seq}", 1, f"LF_MD #{stream_seq}: not an event"
        )
    return MdMessage(stream_seq, wire)


@attrs.frozen
class MdEvent:
    """One LF_MD event: a message, or the parts of one snapshot put together. ``stream_seq``
    is the stream position of its last message (where a consumer has all of it)."""

    product: str
    epoch: str
    seq: int
    stream_seq: int
    wire: Mapping[str, Any]

    @property
    def key(self) -> str:
        return f"{self.product} epoch={self.epoch} seq={self.seq}"


def _whole(parts: Sequence[MdMessage]) -> dict[str, Any]:
    first = dict(parts[0].wire)
    first.pop("part", None)
    first.pop("parts", None)
    first["bids"] = [level for p in parts for level in p.wire.get("bids", ())]
    first["asks"] = [level for p in parts for level in p.wire.get("asks", ())]
    return first


def assemble(messages: Iterable[MdMessage]) -> tuple[list[MdEvent], list[Finding]]:
    """Events in stream order; parted snapshots collected per product, as every consumer
    must. A part that does not continue its product's collection (wrong index, another
    seq or parts count, or an ordinary event in the middle) drops the collection: a
    ``hole`` finding (``incomplete_parts``). A collection still open at the end is left out
    (its remaining parts may still be on their way)."""
    return _assemble(messages, {})


def _assemble(
    messages: Iterable[MdMessage], open_parts: dict[str, list[MdMessage]]
) -> tuple[list[MdEvent], list[Finding]]:
    events: list[MdEvent] = []
    findings: list[Finding] = []

    def broken(product: str, why: str) -> None:
        pending = open_parts.pop(product)
        head = pending[0]
        findings.append(
            Finding(
                "hole",
                f"incomplete-parts:{head.product}:{head.epoch}:{head.seq}:{head.stream_seq}",
                1,
                f"LF_MD {head.product} epoch={head.epoch} seq={head.seq}: incomplete_parts "
                f"({len(pending)} of {head.parts} parts from #{head.stream_seq}, then {why})",
            )
        )

    for msg in messages:
        product = msg.product
        pending = open_parts.get(product)
        if msg.parts <= 1:
            if pending is not None:
                broken(product, f"an ordinary event at #{msg.stream_seq}")
            events.append(MdEvent(product, msg.epoch, msg.seq, msg.stream_seq, msg.wire))
            continue
        if pending is not None:
            head = pending[0]
            continues = (msg.epoch, msg.seq, msg.parts) == (
                head.epoch,
                head.seq,
                head.parts,
            ) and msg.part == len(pending)
            if continues:
                pending.append(msg)
            else:
                broken(product, f"part {msg.part}/{msg.parts} seq={msg.seq} at #{msg.stream_seq}")
                pending = None
        if pending is None:
            if msg.part != 0:
                findings.append(
                    Finding(
                        "hole",
                        f"incomplete-parts:{product}:{msg.epoch}:{msg.seq}:{msg.stream_seq}",
                        1,
                        f"LF_MD {product} epoch={msg.epoch} seq={msg.seq}: incomplete_parts "
                        f"(part {msg.part}/{msg.parts} at #{msg.stream_seq} without part 0)",
                    )
                )
                continue
            pending = open_parts[product] = [msg]
        if len(pending) == msg.parts:
            del open_parts[product]
            events.append(MdEvent(product, msg.epoch, msg.seq, msg.stream_seq, _whole(pending)))
    return events, findings


def _is_explaining_status(wire: Mapping[str, Any]) -> bool:
    return wire.get("type") == "status" and wire.get("status") in EXPLAINING_STATUSES


def check_md_sequence(events: Iterable[MdEvent]) -> list[Finding]:
    """Per (product, epoch), in stream order: seq starts at 1 and goes up by one."""
    return _check_sequence(events, {})


def _check_sequence(events: Iterable[MdEvent], last: dict[tuple[str, str], int]) -> list[Finding]:
    findings: list[Finding] = []
    for event in events:
        where = (event.product, event.epoch)
        prev = last.get(where, 0)
        if event.seq <= prev:
            findings.append(
                Finding(
                    "duplicated",
                    f"md-dup:{event.key}:{event.stream_seq}",
                    1,
                    f"LF_MD {event.key} again at #{event.stream_seq} (after seq {prev})",
                )
            )
            continue
        if event.seq > prev + 1:
            missing = event.seq - prev - 1
            kind: FindingKind = "explained" if _is_explaining_status(event.wire) else "hole"
            findings.append(
                Finding(
                    kind,
                    f"md-hole:{event.product}:{event.epoch}:{prev}",
                    missing,
                    f"LF_MD {event.product} epoch={event.epoch}: seq {prev} -> {event.seq} "
                    f"at #{event.stream_seq} ({missing} missing)",
                )
            )
        last[where] = event.seq
    return findings


class MdChecker:
    """:func:`assemble` and :func:`check_md_sequence` over a stream read piece by piece:
    feed each new stretch of LF_MD, in stream order, to :meth:`add`."""

    def __init__(self) -> None:
        self._open_parts: dict[str, list[MdMessage]] = {}
        self._last: dict[tuple[str, str], int] = {}
        self.events = 0

    def add(self, messages: Iterable[MdMessage]) -> tuple[list[MdEvent], list[Finding]]:
        events, findings = _assemble(messages, self._open_parts)
        findings += _check_sequence(events, self._last)
        self.events += len(events)
        return events, findings


@attrs.frozen
class HistoryRecord:
    """One ``md_history`` row."""

    product: str
    epoch: str
    seq: int
    stream_seq: int
    payload: Mapping[str, Any]

    @property
    def key(self) -> str:
        return f"{self.product} epoch={self.epoch} seq={self.seq}"


@attrs.frozen
class LatestRecord:
    """One ``md_latest`` row."""

    product: str
    epoch: str
    seq: int
    stream_seq: int
    state: Mapping[str, Any]


def check_history(
    events: Iterable[MdEvent],
    history: Iterable[HistoryRecord],
    persisted: Mapping[str, int],
) -> list[Finding]:
    """Every LF_MD event of a product at or below ``persisted[product]`` (the stream
    position md_latest says the snapshotter committed) is in md_history once, with its
    payload; a row that matches no LF_MD event is a ``state`` finding."""
    checker = HistoryChecker()
    checker.add_events(events)
    return checker.check(history, persisted)


HISTORY_WINDOW_MARGIN = 1000
"""Stream positions read again below the oldest event still due (parts of one snapshot
are stored at one of their positions)."""


class HistoryChecker:
    """:func:`check_history` piece by piece: :meth:`add_events` as LF_MD is read, then
    :meth:`check` with the md_history rows from :attr:`fetch_from` on. Events not yet
    committed (beyond ``persisted``) wait for the next check."""

    def __init__(self) -> None:
        self._due: list[MdEvent] = []
        self._keys: set[str] = set()
        self._max_stream_seq = 0

    def add_events(self, events: Iterable[MdEvent]) -> None:
        for event in events:
            self._due.append(event)
            self._keys.add(event.key)
            self._max_stream_seq = max(self._max_stream_seq, event.stream_seq)

    @property
    def fetch_from(self) -> int:
        """The lowest md_history ``stream_seq`` the next :meth:`check` needs."""
        low = min((e.stream_seq for e in self._due), default=self._max_stream_seq + 1)
        return max(1, low - HISTORY_WINDOW_MARGIN)

    def check(
        self, history: Iterable[HistoryRecord], persisted: Mapping[str, int]
    ) -> list[Finding]:
        findings: list[Finding] = []
        rows: dict[str, HistoryRecord] = {}
        for row in history:
            if row.key in rows:
                findings.append(
                    Finding(
                        "duplicated", f"history-dup:{row.key}", 1, f"md_history {row.key} twice"
                    )
                )
            rows[row.key] = row
        waiting: list[MdEvent] = []
        for event in self._due:
            if event.stream_seq > persisted.get(event.product, 0):
                waiting.append(event)
                continue
            stored = rows.get(event.key)
            if stored is None:
                findings.append(
                    Finding(
                        "lost",
                        f"history-lost:{event.key}",
                        1,
                        f"md_history lacks {event.key} (LF_MD #{event.stream_seq}, committed "
                        f"position {persisted.get(event.product, 0)})",
                    )
                )
            elif dict(stored.payload) != dict(event.wire):
                findings.append(
                    Finding(
                        "state",
                        f"history-payload:{event.key}",
                        1,
                        f"md_history {event.key} differs from LF_MD #{event.stream_seq}",
                    )
                )
        self._due = waiting
        for key, row in rows.items():
            if key not in self._keys:
                findings.append(
                    Finding(
                        "state",
                        f"history-phantom:{key}",
                        1,
                        f"md_history {key} (stream #{row.stream_seq}) is no LF_MD event",
                    )
                )
        return findings


def check_latest(latest: Iterable[LatestRecord], history: Iterable[HistoryRecord]) -> list[Finding]:
    """Each md_latest row equals the state rebuilt by applying its epoch's history rows
    1..seq in order (``strict_book=False``, as consumers of LF_MD apply them)."""
    return LatestChecker().check(latest, history)


class LatestChecker:
    """:func:`check_latest` piece by piece: each :meth:`check` gets md_latest and the
    md_history rows read since the previous one (overlaps are fine); the rebuilt state of
    each product is kept and moved forward. An epoch whose history cannot be applied is
    reported once and no longer rebuilt."""

    def __init__(self) -> None:
        self._states: dict[str, ProductState] = {}
        self._rows: dict[tuple[str, str], dict[int, HistoryRecord]] = {}
        self._broken: set[tuple[str, str]] = set()

    def check(
        self, latest: Iterable[LatestRecord], history: Iterable[HistoryRecord]
    ) -> list[Finding]:
        for row in history:
            self._rows.setdefault((row.product, row.epoch), {})[row.seq] = row
        findings: list[Finding] = []
        for state_row in latest:
            finding = self._check_one(state_row)
            if finding is not None:
                findings.append(finding)
        return findings

    def _check_one(self, state_row: LatestRecord) -> Finding | None:
        product, epoch = state_row.product, state_row.epoch
        where = f"{product} epoch={epoch} seq={state_row.seq}"
        # Keys name the product and epoch, not the seq: a disagreement that persists while
        # md_latest moves on is one finding, charged to the round that revealed it.
        epoch_key = f"{product} epoch={epoch}"
        if (product, epoch) in self._broken:
            return None
        rebuilt = self._states.get(product)
        if rebuilt is None or rebuilt.epoch != epoch:
            rebuilt = self._states[product] = ProductState(product)
        rows = self._rows.get((product, epoch), {})
        try:
            for seq in sorted(s for s in rows if rebuilt.seq < s <= state_row.seq):
                rebuilt.apply(codec.from_wire(dict(rows.pop(seq).payload)), strict_book=False)
        except (StateError, CodecError) as exc:
            self._broken.add((product, epoch))
            return Finding("state", f"latest-rebuild:{epoch_key}", 1, f"md_latest {where}: {exc}")
        for seq in [s for s in rows if s <= rebuilt.seq]:
            del rows[seq]
        if rebuilt.seq != state_row.seq:
            return Finding(
                "state",
                f"latest-seq:{epoch_key}",
                1,
                f"md_latest {where}, history reaches only seq {rebuilt.seq}",
            )
        if rebuilt.to_json() != dict(state_row.state):
            return Finding(
                "state",
                f"latest-differs:{epoch_key}",
                1,
                f"md_latest {where} differs from the state rebuilt from md_history",
            )
        return None


@attrs.define
class _Position:
    epoch: str
    seq: int
    parts: tuple[int, int, int] | None = None
    """An open parted snapshot: (seq, next part, parts)."""
    reset: bool = False
    """A ``reset`` status came: the next snapshot may jump."""


@attrs.define
class SubscriberLedger:
    """What one subscriber received, across reconnects, checked as it arrives.

    Feed it every message (:meth:`on_message`); after a reconnect, subscribe with
    :meth:`resume_request`. Findings: a ``hole`` where ``seq`` jumps without a ``status``
    that says why, ``duplicated`` where it goes back or repeats. A parted snapshot's parts
    share one ``seq`` and count as one event.
    """

    events: int = 0
    findings: list[Finding] = attrs.field(factory=list)
    positions: dict[str, _Position] = attrs.field(factory=dict)
    connection: int = 0
    """Incremented by the caller at each (re)connection; part of the finding keys."""

    def resume_request(self, products: Sequence[str], request_id: int) -> dict[str, Any]:
        """A ``subscribe`` that continues where this subscriber stopped: ``from_seq`` and
        ``epoch`` for the products it has seen, a snapshot for the others."""
        known = [p for p in products if p in self.positions]
        request: dict[str, Any] = {"op": "subscribe", "id": request_id, "products": list(products)}
        if known:
            request["from_seq"] = {p: self.positions[p].seq + 1 for p in known}
            request["epoch"] = {p: self.positions[p].epoch for p in known}
            for p in known:
                self.positions[p].parts = None
        else:
            request["snapshot"] = True
        return request

    def _finding(self, kind: FindingKind, product: str, count: int, detail: str) -> None:
        key = f"sub:{self.connection}:{product}:{len(self.findings)}"
        self.findings.append(Finding(kind, key, count, f"subscriber {product}: {detail}"))

    def on_message(self, msg: Mapping[str, Any]) -> None:
        kind = msg.get("type")
        product = msg.get("product")
        if not isinstance(product, str):
            return
        if kind == "snapshot":
            self._on_snapshot(product, msg)
        elif kind in ("trade", "quote", "ticker", "book", "status"):
            self._on_event(product, msg)

    def _on_snapshot(self, product: str, msg: Mapping[str, Any]) -> None:
        epoch, seq = str(msg.get("epoch", "")), int(msg.get("seq", 0))
        pos = self.positions.get(product)
        if pos is None or pos.reset or pos.epoch != epoch:
            self.positions[product] = _Position(epoch, seq)
            return
        if seq > pos.seq:
            self._finding("hole", product, seq - pos.seq, f"snapshot jumps {pos.seq} -> {seq}")
        elif seq < pos.seq:
            self._finding("duplicated", product, pos.seq - seq, f"snapshot back {pos.seq}->{seq}")
        self.positions[product] = _Position(epoch, seq)

    def _on_event(self, product: str, msg: Mapping[str, Any]) -> None:
        epoch, seq = str(msg.get("epoch", "")), int(msg.get("seq", 0))
        part, parts = int(msg.get("part", 0)), int(msg.get("parts", 1))
        pos = self.positions.get(product)
        explains = _is_explaining_status(msg)
        is_reset = msg.get("type") == "status" and msg.get("status") == "reset"
        if is_reset and pos is not None and pos.epoch == epoch and seq != pos.seq + 1:
            # The gateway's own reset (the asked seq is gone): a fresh snapshot follows.
            pos.reset = True
            if seq > pos.seq:
                self._finding("explained", product, seq - pos.seq, f"reset at {seq}")
            return
        if pos is None or (pos.epoch != epoch and pos.epoch != ""):
            if pos is not None and seq != 1 and not explains:
                self._finding("hole", product, seq - 1, f"new epoch {epoch} starts at {seq}")
            pos = self.positions[product] = _Position(epoch, seq - 1)
        elif pos.epoch == "":
            pos.epoch = epoch
        if parts > 1 and part > 0:
            if pos.parts == (seq, part, parts):
                pos.parts = (seq, part + 1, parts) if part + 1 < parts else None
            else:
                self._finding("hole", product, 1, f"part {part}/{parts} of seq {seq} alone")
            return
        if pos.parts is not None:
            self._finding("hole", product, 1, f"parts of seq {pos.parts[0]} left incomplete")
            pos.parts = None
        if seq <= pos.seq:
            self._finding("duplicated", product, 1, f"seq {seq} after {pos.seq}")
            return
        if seq > pos.seq + 1:
            kind: FindingKind = "explained" if explains else "hole"
            self._finding(kind, product, seq - pos.seq - 1, f"seq {pos.seq} -> {seq}")
        pos.seq = seq
        pos.reset = is_reset
        if parts > 1:
            pos.parts = (seq, 1, parts)
        self.events += 1
