"""Are a plugin's trade sides the aggressor's? Checked against the book at that moment.

A taker buy lifts the ask, a taker sell hits the bid. :func:`check_trade_sides` replays a
recording through the plugin's decoder, keeps each product's L2 book from the decoded
``Book`` events (and, for an update-id chain, from the recorded REST books), and compares
every ``Trade`` with the best bid and ask just before it:

* ``consistent``: a buy at or above the best ask, a sell at or below the best bid;
* ``contradicted``: a buy at or below the best bid, a sell at or above the best ask (the
  mark of a feed that reports the *maker's* side, e.g. Coinbase's ``side`` fields);
* ``inside``: strictly between (the book already showed the level consumed);
* ``unchecked``: no live book with both sides at that moment.

The same check works for every plugin: it needs only the decoder and the recording.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import attrs

from ledgerflux.book import BookError, BookState, OrderBook
from ledgerflux.events import Book, Trade
from ledgerflux.plugin import FeedDecoder, FeedPlugin, SequenceModel
from ledgerflux.recording import iter_frames, read_header

__all__ = ["TradeSideReport", "check_trade_sides"]


@attrs.define
class TradeSideReport:
    consistent: int = 0
    contradicted: int = 0
    inside: int = 0
    unchecked: int = 0
    examples: list[str] = attrs.Factory(list)
    """Up to ten contradicted trades, described."""
    by_product: Counter[str] = attrs.Factory(Counter)
    """Checked trades per product."""

    @property
    def checked(self) -> int:
        return self.consistent + self.contradicted + self.inside


def check_trade_sides(plugin: FeedPlugin, recording: Path) -> TradeSideReport:
    """Classify every trade of ``recording`` against the book of that moment (see the
    module doc). Frames the decoder rejects are skipped; a book change that cannot be
    applied leaves that product unchecked until its next snapshot."""
    header = read_header(recording)
    report = TradeSideReport()
    books: dict[str, OrderBook] = {}
    ids: dict[str, int] = {}
    chain = plugin.sequence_model is SequenceModel.UPDATE_ID_CHAIN
    decoder: FeedDecoder = plugin.new_decoder()
    conn: int | None = None
    for frame in iter_frames(recording):
        if frame.dir == "rest":
            _seed(plugin, header.symbols, frame.url or "", frame.raw, books, ids, chain=chain)
            continue
        if frame.dir != "in":
            continue
        if conn is not None and frame.conn != conn:
            decoder = plugin.new_decoder()
        conn = frame.conn
        decoded = decoder.decode(frame.raw, frame.ts)
        stale = {
            m.key
            for m in decoded.marks
            if chain and m.key is not None and m.value <= ids.get(m.key, -1)
        }
        for mark in decoded.marks:
            if mark.key is None or not (
                chain or plugin.sequence_model is SequenceModel.PER_PRODUCT
            ):
                continue
            last = ids.get(mark.key)
            first = mark.value if mark.first is None else mark.first
            if last is not None and first > last + 1 and mark.key in books:
                books[mark.key].mark_gap()  # changes were lost: unchecked until a book
            ids[mark.key] = max(last if last is not None else -1, mark.value)
        for event in decoded.events:
            if isinstance(event, Book):
                if event.product in stale:
                    continue
                book = books.setdefault(event.product, OrderBook(event.product))
                if event.snapshot and event.part == 0:
                    book.reset()
                try:
                    book.apply(event)
                except BookError:
                    book.mark_gap()
            elif isinstance(event, Trade):
                _classify(event, books.get(event.product), report)
    return report


def _seed(
    plugin: FeedPlugin,
    symbols: tuple[str, ...],
    url: str,
    body: str,
    books: dict[str, OrderBook],
    ids: dict[str, int],
    *,
    chain: bool,
) -> None:
    """A recorded REST book: the book of its product when the stream has no snapshot (a
    chain) or the product's book is not live (after a gap)."""
    for symbol in symbols:
        request = plugin.book_request(symbol)
        if request is None or not _same_request(url, request.url, request.params):
            continue
        try:
            snapshot = plugin.parse_book(symbol, body.encode(), 0)
        except ValueError:
            return
        product = snapshot.book.product
        book = books.setdefault(product, OrderBook(product))
        if not chain and book.state is BookState.LIVE:
            return
        book.reset()
        book.apply(snapshot.book)
        ids[product] = snapshot.src_seq
        return


def _same_request(url: str, want: str, params: object) -> bool:
    from urllib.parse import parse_qsl, urlsplit

    got, expected = urlsplit(url), urlsplit(want)
    query = dict(parse_qsl(got.query))
    wanted = {**dict(parse_qsl(expected.query)), **dict(params)}  # type: ignore[call-overload]
    return got.path.endswith(expected.path) and all(query.get(k) == v for k, v in wanted.items())


def _classify(trade: Trade, book: OrderBook | None, report: TradeSideReport) -> None:
    bid = book.best_bid() if book is not None and book.state is BookState.LIVE else None
    ask = book.best_ask() if book is not None and book.state is BookState.LIVE else None
    if bid is None or ask is None:
        report.unchecked += 1
        return
    report.by_product[trade.product] += 1
    price = trade.price
    if trade.side == "buy":
        good, bad = price >= ask[0], price <= bid[0]
    else:
        good, bad = price <= bid[0], price >= ask[0]
    if good:
        report.consistent += 1
    elif bad:
        report.contradicted += 1
        if len(report.examples) < 10:
            report.examples.append(
                f"{trade.product} {trade.side} {trade.size} @ {price} with bid {bid[0]} / "
                f"ask {ask[0]} (trade {trade.trade_id})"
            )
    else:
        report.inside += 1
