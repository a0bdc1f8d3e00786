"""The grown plugin API in memory: update-id chains, the initial REST book with buffered
diffs, book checksums (mismatch → gap + resync, a checksum that never matches → backed
off), planned-reconnect overlap, instruments and canonical symbols."""

from __future__ import annotations

from decimal import Decimal
from functools import partial

import httpx
import pytest
import trio

from ledgerflux import codec
from ledgerflux.events import Book, Event, Status, Trade
from ledgerflux.feeds import runtime
from ledgerflux.feeds import session as session_module
from ledgerflux.feeds.backoff import Backoff
from ledgerflux.feeds.runtime import check_symbols
from ledgerflux.feeds.sequence import SequenceTracker, SeqVerdict
from ledgerflux.feeds.session import (
    CHECKSUM_BACKOFF_S,
    CHECKSUM_FREE_RESYNCS,
    FeedSession,
    PublishQueue,
)
from ledgerflux.plugin import (
    Instrument,
    PluginOptions,
    RestRequest,
    SeqMark,
    SequenceModel,
    Subscription,
)
from ledgerflux.symbols import BadSymbol, canonical_symbol, split_native, split_symbol

from .chaintoy import TS, ChainToyFeed, ChecksumToyFeed, depth, rest_book, toy_checksum, trade

BTC, ETH = "chain:BTC-USDT", "chain:ETH-USDT"


def make_session(plugin: ChainToyFeed) -> FeedSession:
    session = FeedSession(
        plugin,
        Subscription(("BTC-USDT", "ETH-USDT"), ("depth", "trade")),
        PublishQueue(1000),
        feed=plugin.name,
        shards=1,
        max_buffer_frames=1000,
    )
    session.on_connect()
    return session


def published(session: FeedSession) -> list[Event]:
    """What reached the ticks subjects, without the ``online`` statuses of the first frame."""
    msgs = [m for f in session.queue.take(len(session.queue)) for m in f.msgs]
    events = [
        e for m in msgs if m.subject.startswith("lf.ticks.") for e in codec.decode_many(m.data)
    ]
    return [e for e in events if not (isinstance(e, Status) and e.status == "online")]


def feed(session: FeedSession, *frames: str) -> None:
    for index, frame in enumerate(frames):
        session.on_frame(frame, TS + 1000 + index)


def summary(events: list[Event]) -> list[tuple[str, str, object]]:
    out: list[tuple[str, str, object]] = []
    for e in events:
        if isinstance(e, Status):
            out.append((e.product, e.status, e.reason))
        elif isinstance(e, Book):
            out.append((e.product, "snapshot" if e.snapshot else "diff", e.src_seq))
        else:
            out.append((e.product, e.TYPE, e.src_seq))
    return out


# -- the chain tracker ----------------------------------------------------------------------


def test_chain_verdicts_follow_the_table() -> None:
    tracker = SequenceTracker(SequenceModel.UPDATE_ID_CHAIN)
    ok, dup, gap = SeqVerdict.OK, SeqVerdict.DUPLICATE, SeqVerdict.GAP
    assert tracker.check(SeqMark("p", 10, first=5)) is ok  # baseline
    assert tracker.check(SeqMark("p", 15, first=11)) is ok  # first == last + 1
    assert tracker.check(SeqMark("p", 15, first=12)) is dup  # nothing new
    assert tracker.check(SeqMark("p", 20, first=17)) is gap  # 16 missing
    assert tracker.check(SeqMark("p", 25, first=20)) is gap  # overlap is not the chain
    tracker.set("p", 100)  # a REST book at lastUpdateId 100
    assert tracker.check(SeqMark("p", 100, first=90)) is dup  # u <= lastUpdateId: dropped
    assert tracker.check(SeqMark("p", 105, first=95)) is ok  # straddles 101
    assert tracker.check(SeqMark("p", 110, first=105)) is gap  # then strict again
    tracker.set("q", 100)
    assert tracker.check(SeqMark("q", 110, first=102)) is gap  # the book is too old


def test_chain_keys_are_independent_and_survive_a_new_connection() -> None:
    tracker = SequenceTracker(SequenceModel.UPDATE_ID_CHAIN)
    tracker.check(SeqMark("a", 1))
    tracker.check(SeqMark("b", 7))
    tracker.new_connection()
    assert tracker.check(SeqMark("a", 2)) is SeqVerdict.OK
    assert tracker.check(SeqMark("b", 9, first=9)) is SeqVerdict.GAP


# -- the initial REST book and resync of a chain -------------------------------------------


def test_chain_feed_fetches_the_rest_book_first_and_applies_the_buffered_diffs() -> None:
    session = make_session(ChainToyFeed())
    assert session.resyncing() == {BTC, ETH}
    feed(
        session,
        depth("BTC-USDT", 95, 99, bids=[("99", "1")]),  # older than the REST book
        trade("BTC-USDT", 7),  # trades number in their own space: never filtered
        depth("BTC-USDT", 100, 103, asks=[("101", "2")]),  # straddles 101: first applied
        depth("BTC-USDT", 104, 104, bids=[("100", "3")]),
    )
    plugin = ChainToyFeed()
    book = plugin.parse_book("BTC-USDT", rest_book(100, [["100", "1"]], [["101", "1"]]), TS)
    session.on_rest_book(BTC, book)
    feed(session, depth("BTC-USDT", 105, 106, bids=[("100", "0")]))
    got = summary(published(session))
    assert got == [
        (BTC, "stale", "initial book: REST snapshot"),
        (ETH, "stale", "initial book: REST snapshot"),
        (BTC, "resync", "rest book at 100"),
        (BTC, "snapshot", 100),
        (BTC, "trade", 7),
        (BTC, "diff", 103),
        (BTC, "diff", 104),
        (BTC, "diff", 106),
    ]
    assert session.resyncing() == {ETH}  # ETH keeps waiting; BTC flows


def test_a_stale_rest_book_is_fetched_again_and_the_buffer_kept() -> None:
    session = make_session(ChainToyFeed())
    feed(session, depth("BTC-USDT", 110, 112), depth("BTC-USDT", 113, 115))
    plugin = ChainToyFeed()
    session.on_rest_book(BTC, plugin.parse_book("BTC-USDT", rest_book(100, [], []), TS))
    got = summary(published(session))
    assert got[-1] == (BTC, "gap", "rest book older than live stream")
    assert BTC in session.resyncing()
    session.on_rest_book(BTC, plugin.parse_book("BTC-USDT", rest_book(111, [], []), TS))
    tail = summary(published(session))
    assert tail == [
        (BTC, "resync", "rest book at 111"),
        (BTC, "snapshot", 111),
        (BTC, "diff", 112),
        (BTC, "diff", 115),
    ]


def test_a_break_in_the_chain_resyncs_that_product_while_the_other_flows() -> None:
    session = make_session(ChainToyFeed())
    plugin = ChainToyFeed()
    for symbol, product in (("BTC-USDT", BTC), ("ETH-USDT", ETH)):
        session.on_rest_book(product, plugin.parse_book(symbol, rest_book(10, [], []), TS))
    published(session)
    feed(
        session,
        depth("BTC-USDT", 11, 12),
        depth("BTC-USDT", 14, 15),  # 13 lost
        depth("ETH-USDT", 11, 20),
        depth("BTC-USDT", 16, 16),
    )
    assert summary(published(session)) == [
        (BTC, "diff", 12),
        (BTC, "gap", "sequence gap before 15"),
        (ETH, "diff", 20),
    ]
    assert session.resyncing() == {BTC}


# -- checksums ---------------------------------------------------------------------------


def _checked_session() -> tuple[FeedSession, ChecksumToyFeed]:
    plugin = ChecksumToyFeed()
    session = make_session(plugin)
    for symbol, product in (("BTC-USDT", BTC), ("ETH-USDT", ETH)):
        body = rest_book(10, [["100", "1"], ["99", "1"]], [["101", "1"], ["102", "1"]])
        session.on_rest_book(product, plugin.parse_book(symbol, body, TS))
    published(session)
    return session, plugin


def _cs(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    return toy_checksum(
        [(Decimal(p), Decimal(s)) for p, s in bids], [(Decimal(p), Decimal(s)) for p, s in asks]
    )


def test_a_matching_checksum_passes_and_levels_beyond_the_depth_fall_out() -> None:
    session, _ = _checked_session()
    # 98 goes in at depth 3 (three bids now); then 100 is deleted: if 97 (pushed out of the
    # depth-3 book when 98 came) were kept, it would appear in the top 2 and mismatch.
    feed(session, depth("BTC-USDT", 11, 11, bids=[("97", "5")]))
    feed(session, depth("BTC-USDT", 12, 12, bids=[("98.5", "1")]))
    want = _cs([("99", "1"), ("98.5", "1")], [("101", "1"), ("102", "1")])
    feed(session, depth("BTC-USDT", 13, 13, bids=[("100", "0")], cs=want))
    assert session.stats.checksum_mismatches == 0
    assert all(not isinstance(e, Status) for e in published(session))


def test_a_checksum_mismatch_is_a_gap_and_a_resync_of_that_product_only() -> None:
    session, _ = _checked_session()
    feed(session, depth("BTC-USDT", 11, 11, bids=[("100", "2")], cs=12345))
    feed(session, depth("ETH-USDT", 11, 11, bids=[("100", "2")]))
    got = summary(published(session))
    assert got[-2][:2] == (BTC, "gap")
    assert str(got[-2][2]).startswith("checksum mismatch: exchange 12345, book ")
    assert got[-1] == (ETH, "diff", 11)
    assert session.resyncing() == {BTC}
    assert session.stats.checksum_mismatches == 1


def test_a_checksum_that_never_matches_is_backed_off_not_a_resync_storm() -> None:
    session, plugin = _checked_session()
    body = rest_book(20, [["100", "1"]], [["101", "1"]])
    last = 10
    for _ in range(CHECKSUM_FREE_RESYNCS + 3):
        last += 1
        feed(session, depth("BTC-USDT", last, last, cs=-1))
        if BTC in session.resyncing():
            session.on_rest_book(BTC, plugin.parse_book("BTC-USDT", body, TS))
            last = 20
    got = summary(published(session))
    gaps = [g for g in got if g[1] == "gap"]
    held = [g for g in got if g[1] == "stale"]
    assert len(gaps) == CHECKSUM_FREE_RESYNCS
    assert len(held) == 1
    assert str(held[0][2]).startswith("checksum_backoff: ")
    assert session.stats.checksum_backoffs == 1
    assert BTC in session.checksum_held()
    feed(session, depth("ETH-USDT", 11, 11))  # the other product is untouched
    assert summary(published(session)) == [(ETH, "diff", 11)]


# -- planned reconnect overlap -------------------------------------------------------------


def test_a_handover_drops_what_the_old_connection_already_delivered() -> None:
    session = make_session(ChainToyFeed())
    plugin = ChainToyFeed()
    session.on_rest_book(BTC, plugin.parse_book("BTC-USDT", rest_book(10, [], []), TS))
    published(session)
    successor = session.begin_handover()
    feed(session, depth("BTC-USDT", 11, 12), trade("BTC-USDT", 5))  # the old connection
    for index, frame in enumerate(
        [depth("BTC-USDT", 11, 12), trade("BTC-USDT", 5), trade("BTC-USDT", 6)]
    ):
        session.on_frame(frame, TS + 5000 + index, decoder=successor)
    session.end_handover(successor)
    feed(session, depth("BTC-USDT", 13, 13))
    assert summary(published(session)) == [
        (BTC, "diff", 12),
        (BTC, "trade", 5),
        (BTC, "trade", 6),
        (BTC, "diff", 13),
    ]
    assert session.decoder is successor


# -- instruments and symbols ------------------------------------------------------------


def test_unknown_and_halted_symbols_are_left_out_with_a_named_reason() -> None:
    instruments = [
        Instrument(native="BTCUSDT", base="BTC", quote="USDT", tick_size=Decimal("0.01")),
        Instrument(native="LUNAUSDT", base="LUNA", quote="USDT", status="BREAK", trading=False),
    ]
    subscription = Subscription(("BTC-USDT", "BTC-USD", "LUNA-USDT"), ("depth",))
    kept, left_out = check_symbols(subscription, instruments)
    assert kept == Subscription(("BTC-USDT",), ("depth",))
    assert left_out == {
        "BTC-USD": "unknown_symbol: not among the exchange's instruments",
        "LUNA-USDT": "not_trading: BREAK",
    }


def test_report_unavailable_is_an_offline_status_and_a_dlq_entry() -> None:
    session = make_session(ChainToyFeed())
    session.queue.take(len(session.queue))
    session.report_unavailable("DOGE-USDT", "unknown_symbol: not listed")
    msgs = [m for f in session.queue.take(10) for m in f.msgs]
    assert [m.subject for m in msgs] == ["lf.ticks.0.chain.DOGE-USDT", "lf.dlq.chain.DOGE-USDT"]
    (status,) = codec.decode_many(msgs[0].data)
    assert isinstance(status, Status)
    assert (status.status, status.reason) == ("offline", "unknown_symbol: not listed")


def test_canonical_symbols_never_merge_usdt_into_usd() -> None:
    assert canonical_symbol("btc", "usdt") == "BTC-USDT"
    assert canonical_symbol("BTC", "USD") != canonical_symbol("BTC", "USDT")
    assert split_symbol("ETH-BTC") == ("ETH", "BTC")
    assert split_native("BTCUSDT", ("USD", "USDT", "BTC")) == ("BTC", "USDT")
    assert split_native("USDT", ("USDT",)) is None
    assert Instrument(native="XBT/USD", base="BTC", quote="USD").symbol == "BTC-USD"
    with pytest.raises(BadSymbol):
        split_symbol("BTCUSDT")
    with pytest.raises(BadSymbol):
        canonical_symbol("BTC", "US-D")


def test_plugin_options_default_to_the_old_behaviour() -> None:
    from ledgerflux_example_feed import ExampleFeed

    assert PluginOptions.of(ExampleFeed()) == PluginOptions()
    options = PluginOptions.of(ChecksumToyFeed())
    assert options.rest_book_channels == {"depth"}
    assert options.book_depth == 3
    assert options.book_checksum is not None
    assert options.wants_rest_book(Subscription(("X-Y",), ("depth",)))
    assert not options.wants_rest_book(Subscription(("X-Y",), ("trade",)))


def test_events_of_the_toy_are_canonical() -> None:
    (event,) = ChainToyFeed().new_decoder().decode(trade("BTC-USDT", 3), TS).events
    assert event == Trade(
        product=BTC,
        src_seq=3,
        ts_event=TS + 3,
        ts_ingest=TS,
        price=Decimal("100"),
        size=Decimal("1"),
        side="buy",
        trade_id="3",
    )


# -- REST rate limits and checksum holds over (virtual) time ---------------------------


class _RateLimitedFetcher:
    """Answers 429 (Retry-After: 3) once, then the book; notes when each call came."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def fetch(self, request: RestRequest) -> bytes:
        self.calls.append(trio.current_time())
        if len(self.calls) == 1:
            req = httpx.Request("GET", request.url)
            response = httpx.Response(429, headers={"Retry-After": "3"}, request=req)
            raise httpx.HTTPStatusError("429", request=req, response=response)
        return rest_book(10, [["100", "1"]], [["101", "1"]])


async def test_a_429_waits_as_told_and_says_rate_limited(autojump_clock: trio.abc.Clock) -> None:
    session = make_session(ChainToyFeed())
    fetcher = _RateLimitedFetcher()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(
                    runtime._resync_loop,
                    session,
                    fetcher,
                    rate_per_s=100.0,
                    backoff=Backoff(0.01, 0.02),
                )
            )
            await session.wait_rest_resyncs()
            nursery.cancel_scope.cancel()
    assert len(fetcher.calls) == 3  # BTC refused, BTC again, ETH
    assert fetcher.calls[1] - fetcher.calls[0] >= 3.0
    stale = [s for s in summary(published(session)) if s[1] == "stale" and "rate" in str(s[2])]
    assert stale == [
        (BTC, "stale", "resync failed, retrying: rate_limited: HTTP 429, retry after 3s")
    ]


def test_a_held_checksum_is_resynced_once_its_hold_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    session, plugin = _checked_session()
    now = [1000.0]
    monkeypatch.setattr(session_module.time, "monotonic", lambda: now[0])
    body = rest_book(20, [["100", "1"]], [["101", "1"]])
    last = 10
    for _ in range(CHECKSUM_FREE_RESYNCS + 1):
        last += 1
        feed(session, depth("BTC-USDT", last, last, cs=-1))
        if BTC in session.resyncing():
            session.on_rest_book(BTC, plugin.parse_book("BTC-USDT", body, TS))
            last = 20
    assert BTC in session.checksum_held()
    published(session)
    session.release_checksum_holds()
    assert BTC not in session.resyncing()  # not yet: the hold lasts 5 s
    now[0] += CHECKSUM_BACKOFF_S
    session.release_checksum_holds()
    assert summary(published(session)) == [(BTC, "gap", "checksum back-off ended: resync")]
    assert BTC in session.resyncing()
