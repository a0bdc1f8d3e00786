"""Book snapshots too large for one bus message, as a sequence of parts (sans-IO).

The bus refuses a message larger than the server's ``max_payload`` (1 MiB by default). A
deep L2 snapshot can be larger than that (Coinbase BTC-USD: about 46,000 levels, 1.1 MB),
so it travels as ``parts`` books, ``part`` = 0 .. ``parts - 1``:

* every part carries the snapshot's envelope unchanged: product, seq, epoch, src_seq,
  ts_event, ts_ingest and ``snapshot: true``;
* each carries a slice of the levels, bids then asks in the original order, so that
  concatenating the parts' bids and asks in part order gives the whole snapshot;
* the parts are published consecutively on the product's subject and share the
  snapshot's one public ``seq``: the snapshot is one event, the parts are its transport.

A consumer applies a parted snapshot atomically with :class:`PartAssembler`: it collects
part 0 .. K-1 in order and only the last part yields the whole book. A part that does not
continue the collection drops it, and the caller counts that as ``incomplete_parts``.
Nobody ever sees half a book as a whole one.

:func:`split_book` makes the parts. It sizes each level from its wire text once (a level is
``["<price>","<size>"]``) instead of encoding candidate parts over and over, so 50,000
levels split in one pass.
"""

from __future__ import annotations

import copy

import attrs

from ledgerflux import codec
from ledgerflux.events import Book, Event, PriceLevel, parts_problem

__all__ = [
    "IncompleteParts",
    "PartAssembler",
    "PartTooLarge",
    "PartsError",
    "StreamParts",
    "split_book",
]


class PartsError(ValueError):
    """A book that cannot be split, or parts that do not make a whole snapshot."""


class PartTooLarge(PartsError):
    """The book cannot be split into parts that each fit: one level (with the envelope)
    is larger than the limit on its own, or the book is a change (only snapshots are
    parted: the parts of a change would be separate changes with one exchange sequence)."""


class IncompleteParts(PartsError):
    """A part that does not continue the product's collection; the partial collection
    was dropped (``discarded`` parts) before this part was taken.

    ``result`` is what :meth:`PartAssembler.add` returns for the book that broke the
    sequence once the old collection is gone: that book itself when it is a whole one,
    else None (a new part 0 starts a new collection; any other part is dropped too)."""

    def __init__(self, product: str, detail: str, *, discarded: int, result: Event | None):
        super().__init__(f"incomplete_parts for {product}: {detail}")
        self.product = product
        self.detail = detail
        self.discarded = discarded
        self.result = result


_LEVEL_OVERHEAD = len(b'["",""],')
"""Bytes a level adds to the encoded book besides its two decimal texts (the trailing
comma is counted for every level: at most two bytes too many per part)."""


def split_book(book: Book, max_bytes: int) -> list[Book]:
    """``book`` as parts whose encoding (:func:`ledgerflux.codec.encode`) is each at most
    ``max_bytes`` long; ``[book]`` itself when it already fits.

    Parts are filled greedily in level order, so their count is close to the minimum.
    Raises :class:`PartTooLarge` when that is impossible (a change, or a level too large
    on its own) and :class:`PartsError` for a book that is already a part."""
    if book.parts != 1:
        raise PartsError(f"{book.product}: book is already part {book.part} of {book.parts}")
    wire = codec.to_wire(book)
    bid_sizes = [len(p) + len(s) + _LEVEL_OVERHEAD for p, s in wire["bids"]]
    ask_sizes = [len(p) + len(s) + _LEVEL_OVERHEAD for p, s in wire["asks"]]
    # The exact encoding is counted only when it might fit: one encode of the whole book.
    estimate = sum(bid_sizes) + sum(ask_sizes)
    if estimate <= max_bytes and len(codec.encode(book)) <= max_bytes:
        return [book]
    if not book.snapshot:
        raise PartTooLarge(
            f"{book.product}: a book change of {len(book.bids) + len(book.asks)} levels "
            f"does not fit {max_bytes} bytes and only snapshots travel in parts"
        )
    levels = len(book.bids) + len(book.asks)
    widest = 10 ** len(str(max(levels, 1))) - 1  # part and parts never exceed this
    envelope = len(codec.encode(attrs.evolve(book, bids=(), asks=(), part=0, parts=widest)))
    envelope += len(str(widest))  # "part" written as wide as "parts"
    budget = max_bytes - envelope
    if budget <= 0:
        raise PartTooLarge(
            f"{book.product}: the part envelope alone needs {envelope} bytes, "
            f"more than the limit of {max_bytes}"
        )
    # Cut points over the levels, bids first then asks: part i holds levels cuts[i]..cuts[i+1].
    cuts = [0]
    used = 0
    for index, size in enumerate(bid_sizes + ask_sizes):
        if size > budget:
            side, at = (
                ("bids", index) if index < len(bid_sizes) else ("asks", index - len(bid_sizes))
            )
            raise PartTooLarge(
                f"{book.product}: {side}[{at}] needs {size} bytes with the envelope's "
                f"{envelope}, more than the limit of {max_bytes}"
            )
        if used + size > budget:
            cuts.append(index)
            used = 0
        used += size
    cuts.append(levels)
    count = len(cuts) - 1
    nbids = len(book.bids)
    parts: list[Book] = []
    for part in range(count):
        start, stop = cuts[part], cuts[part + 1]
        parts.append(
            attrs.evolve(
                book,
                bids=book.bids[min(start, nbids) : min(stop, nbids)],
                asks=book.asks[max(start - nbids, 0) : max(stop - nbids, 0)],
                part=part,
                parts=count,
            )
        )
    return parts


@attrs.define
class _Collection:
    first: Book
    bids: list[PriceLevel]
    asks: list[PriceLevel]
    received: int = 1

    def continues(self, book: Book) -> str | None:
        """Why ``book`` is not the next part of this collection, or None if it is."""
        first = self.first
        if book.parts != first.parts:
            return f"parts={book.parts} while collecting {first.parts} parts"
        if book.part != self.received:
            return f"part {book.part} while expecting part {self.received} of {first.parts}"
        if (book.seq, book.epoch) != (first.seq, first.epoch):
            return f"seq {book.epoch}/{book.seq} while collecting {first.epoch}/{first.seq}"
        if (book.src_seq, book.ts_event, book.ts_ingest) != (
            first.src_seq,
            first.ts_event,
            first.ts_ingest,
        ):
            return f"part {book.part} belongs to another snapshot (src_seq {book.src_seq})"
        return None


class PartAssembler:
    """Reassembles parted snapshots, per product, for one consumer of one stream.

    Feed it every book of the stream in order with :meth:`add`. Memory: one partial
    snapshot per product at most (the levels received so far)."""

    def __init__(self) -> None:
        self._collecting: dict[str, _Collection] = {}

    @property
    def pending(self) -> frozenset[str]:
        """Products with a partial snapshot collected so far."""
        return frozenset(self._collecting)

    def add(self, book: Book) -> Book | None:
        """The whole book once ``book`` completes one (a whole book comes straight back),
        else None while parts are still missing.

        Raises :class:`IncompleteParts` when ``book`` does not continue the product's
        collection (another snapshot's part, a skipped or repeated index, a whole book in
        the middle of the parts, a part with nothing collected before it). The partial
        collection is dropped first; ``exc.result`` holds what ``book`` itself gives."""
        problem = parts_problem(book)
        if problem is not None:
            raise PartsError(f"{book.product}: {problem}")
        collection = self._collecting.get(book.product)
        if collection is not None:
            why = "a whole book" if book.parts == 1 else collection.continues(book)
            if why is None:
                collection.bids.extend(book.bids)
                collection.asks.extend(book.asks)
                collection.received += 1
                if collection.received < book.parts:
                    return None
                del self._collecting[book.product]
                return attrs.evolve(
                    collection.first,
                    bids=tuple(collection.bids),
                    asks=tuple(collection.asks),
                    part=0,
                    parts=1,
                )
            del self._collecting[book.product]
            raise IncompleteParts(
                book.product,
                f"{why}; dropped {collection.received} of {collection.first.parts} parts",
                discarded=collection.received,
                result=self._start(book),
            )
        if book.parts == 1:
            return book
        if book.part != 0:
            raise IncompleteParts(
                book.product,
                f"part {book.part} of {book.parts} without the parts before it",
                discarded=0,
                result=None,
            )
        return self._start(book)

    def discard(self, product: str) -> int:
        """Drop ``product``'s partial snapshot (an event that is not one of its parts
        arrived, or the consumer restarts the product); returns how many parts it held."""
        collection = self._collecting.pop(product, None)
        return 0 if collection is None else collection.received

    def _start(self, book: Book) -> Book | None:
        if book.parts == 1:
            return book
        if book.part != 0:
            return None
        self._collecting[book.product] = _Collection(book, list(book.bids), list(book.asks))
        return None


class StreamParts:
    """:class:`PartAssembler` for a consumer that reads a stream in order and commits a
    position (the snapshotter, the normalizer's restore): every event goes through
    :meth:`add`, parted snapshots come out whole, and :meth:`first_held_stream_seq` tells
    how far the consumer may commit (never past the first part of a snapshot still being
    collected, so a restart reads all of its parts again)."""

    def __init__(self) -> None:
        self._assembler = PartAssembler()
        self._first: dict[str, int] = {}

    def add(self, event: Event, stream_seq: int) -> Event | None:
        """``event`` (whole snapshots assembled), or None while parts are missing.

        Raises :class:`IncompleteParts` (its ``result`` is what to apply instead) when the
        event breaks a collection, and :class:`PartsError` for a malformed part."""
        product = event.product
        if not isinstance(event, Book):
            if product in self._first:
                del self._first[product]
                discarded = self._assembler.discard(product)
                raise IncompleteParts(
                    product,
                    f"a {event.TYPE} event in the middle of a parted snapshot",
                    discarded=discarded,
                    result=event,
                )
            return event
        try:
            whole = self._assembler.add(event)
        except IncompleteParts:
            self._first.pop(product, None)
            if product in self._assembler.pending:
                self._first[product] = stream_seq  # the breaking book started a new one
            raise
        if whole is None:
            self._first.setdefault(product, stream_seq)
        else:
            self._first.pop(product, None)
        return whole

    def first_held_stream_seq(self) -> int | None:
        """Stream seq of the earliest first part still waiting for the rest, or None."""
        return min(self._first.values(), default=None)

    def copy(self) -> StreamParts:
        """An independent copy (to roll back when a batch could not be committed)."""
        return copy.deepcopy(self)
