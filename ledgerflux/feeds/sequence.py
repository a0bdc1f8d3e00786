"""Exchange-sequence tracking (sans-IO): is this frame new, a duplicate, or past a hole?

The plugin declares its :class:`~ledgerflux.plugin.SequenceModel` and reports every sequence
number a frame carries as a :class:`~ledgerflux.plugin.SeqMark`. The tracker keeps the last
value per key (the canonical product for ``PER_PRODUCT``, ``None`` for ``PER_CONNECTION``)
and classifies each mark:

=================================  ==============  ==========================================
mark (``last`` = last value seen)   verdict         the runtime then...
=================================  ==============  ==========================================
first mark for its key              ``OK``          publishes (it is the baseline)
``value == last + 1``               ``OK``          publishes
``value <= last``                   ``DUPLICATE``   drops the key's events, counts them
``value > last + 1``                ``GAP``         emits ``gap`` status, resyncs the key
non-state mark, ``value == last``   ``OK``          (a heartbeat repeating the last number)
non-state mark, ``value > last``    ``GAP``         the heartbeat proves messages were missed
=================================  ==============  ==========================================

A ``GAP`` moves ``last`` to the new value, so the messages that follow are judged against it.

``UPDATE_ID_CHAIN`` (per product; a mark covers update ids ``first..value``):

=======================================  ==============  ====================================
mark                                      verdict         why
=======================================  ==============  ====================================
first mark for its key                    ``OK``          the baseline
``value <= last``                         ``DUPLICATE``   already applied (or older)
after :meth:`SequenceTracker.set` (a      ``OK``          the first diff applied straddles
REST book at ``last``): ``first <=                        the book's ``lastUpdateId + 1``
last + 1``
otherwise ``first == last + 1``           ``OK``          strict continuity
otherwise                                 ``GAP``         a hole (or an overlap: not the chain)
=======================================  ==============  ====================================

With ``detect_gaps=False`` a jump forward is ``OK``: duplicates and out-of-order frames are
still caught. That is for subscriptions that see only some of a counter's numbers (Coinbase
``matches``/``ticker`` without the ``full`` channel), where a jump is not a lost message.
"""

from __future__ import annotations

import enum

from ledgerflux.plugin import SeqMark, SequenceModel

__all__ = ["SeqVerdict", "SequenceTracker"]


class SeqVerdict(enum.Enum):
    OK = "ok"
    DUPLICATE = "duplicate"
    GAP = "gap"


class SequenceTracker:
    """The last sequence value per key, and the verdict on each new mark."""

    def __init__(self, model: SequenceModel, *, detect_gaps: bool = True) -> None:
        self.model = model
        self.detect_gaps = detect_gaps
        self._last: dict[str | None, int] = {}
        self._straddle: set[str | None] = set()
        """Chain keys whose baseline is a REST book: the next diff may straddle it."""

    def new_connection(self) -> None:
        """A new connection: a per-connection counter restarts, per-product ones go on."""
        if self.model is SequenceModel.PER_CONNECTION:
            self._last.clear()

    def last(self, key: str | None) -> int | None:
        return self._last.get(key)

    def set(self, key: str | None, value: int) -> None:
        """Adopt ``value`` as the baseline (after a resync: the REST book's sequence)."""
        self._last[key] = value
        if self.model is SequenceModel.UPDATE_ID_CHAIN:
            self._straddle.add(key)

    def forget(self, key: str | None) -> None:
        """No baseline for ``key``: its next mark is accepted as one (after a snapshot)."""
        self._last.pop(key, None)
        self._straddle.discard(key)

    def check(self, mark: SeqMark) -> SeqVerdict:
        """Classify ``mark`` and advance the baseline (never backwards)."""
        if self.model is SequenceModel.NONE:
            return SeqVerdict.OK
        if self.model is SequenceModel.UPDATE_ID_CHAIN:
            return self._check_chain(mark)
        key = mark.key if self.model is SequenceModel.PER_PRODUCT else None
        last = self._last.get(key)
        if last is None:
            self._last[key] = mark.value
            return SeqVerdict.OK
        if mark.carries_state:
            if mark.value <= last:
                return SeqVerdict.DUPLICATE
            self._last[key] = mark.value
            contiguous = mark.value == last + 1
        else:
            if mark.value < last:
                return SeqVerdict.DUPLICATE
            self._last[key] = mark.value
            contiguous = mark.value == last
        return SeqVerdict.OK if contiguous or not self.detect_gaps else SeqVerdict.GAP

    def _check_chain(self, mark: SeqMark) -> SeqVerdict:
        key = mark.key
        last = self._last.get(key)
        first = mark.value if mark.first is None else mark.first
        if last is None:
            self._last[key] = mark.value
            return SeqVerdict.OK
        if mark.value <= last:
            return SeqVerdict.DUPLICATE
        self._last[key] = mark.value
        if key in self._straddle:
            self._straddle.discard(key)
            joined = first <= last + 1
        else:
            joined = first == last + 1
        return SeqVerdict.OK if joined or not self.detect_gaps else SeqVerdict.GAP
