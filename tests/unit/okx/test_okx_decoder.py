"""Golden decode tests of the OKX decoder: OKX's documented frame shapes in, WHOLE results
out (every event, error and flag), one or more per channel, plus the book-integrity rules
(seqId chain as chain positions, checksums reported for the runtime) and bad input."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import orjson
from ledgerflux_okx import OkxCandlesFeed, OkxDecoder, OkxFeed
from okx_reference import checksum as reference_checksum

from ledgerflux import codec
from ledgerflux.book import OrderBook
from ledgerflux.events import Book, Quote, Status, Ticker, Trade
from ledgerflux.plugin import BookChecksum, Decoded, DecodeError, SeqMark, Subscription

TS = 1_795_176_000_123_456_789
P = "okx:BTC-USDT"


def _books(action: str, push: dict[str, Any], inst: str = "BTC-USDT") -> str:
    """A books push whose checksum OKX would send for ``book`` (filled in by the caller)."""
    return orjson.dumps(
        {"arg": {"channel": "books", "instId": inst}, "action": action, "data": [push]}
    ).decode()


SNAP_BIDS = [["8476.97", "256", "0", "12"], ["8475.55", "101", "0", "1"]]
SNAP_ASKS = [["8476.98", "415", "0", "13"], ["8477", "7", "0", "2"], ["8478.5", "0.0100", "0", "1"]]


def _snapshot(inst: str = "BTC-USDT", seq: int = 123456) -> str:
    return _books(
        "snapshot",
        {
            "asks": SNAP_ASKS,
            "bids": SNAP_BIDS,
            "ts": "1597026383085",
            "checksum": reference_checksum(SNAP_BIDS, SNAP_ASKS),
            "prevSeqId": -1,
            "seqId": seq,
        },
        inst,
    )


# The book after the update below, for its checksum.
AFTER_BIDS = [["8476.97", "300", "0", "13"], ["8475.55", "101", "0", "1"]]
AFTER_ASKS = [["8477", "7", "0", "2"], ["8478.5", "0.0100", "0", "1"]]


def _update(prev: int = 123456, seq: int = 123460, csum: int | None = None) -> str:
    return _books(
        "update",
        {
            "asks": [["8476.98", "0", "0", "0"]],
            "bids": [["8476.97", "300", "0", "13"]],
            "ts": "1597026383137",
            "checksum": reference_checksum(AFTER_BIDS, AFTER_ASKS) if csum is None else csum,
            "prevSeqId": prev,
            "seqId": seq,
        },
    )


def _round_trips(decoded: Decoded) -> None:
    for event in decoded.events:
        assert codec.decode(codec.encode(event)) == event


def test_books_snapshot() -> None:
    decoded = OkxDecoder().decode(_snapshot(), TS)
    assert decoded == Decoded(
        events=(
            Book(
                product=P,
                src_seq=123456,
                ts_event=1_597_026_383_085_000_000,
                ts_ingest=TS,
                snapshot=True,
                bids=((D("8476.97"), D("256")), (D("8475.55"), D("101"))),
                asks=((D("8476.98"), D("415")), (D("8477"), D("7")), (D("8478.5"), D("0.0100"))),
            ),
        ),
        marks=(SeqMark(P, 1),),
        checksums=(BookChecksum(P, reference_checksum(SNAP_BIDS, SNAP_ASKS)),),
        snapshot_products=(P,),
    )
    _round_trips(decoded)


def test_books_update_continues_the_chain() -> None:
    decoder = OkxDecoder()
    decoder.decode(_snapshot(), TS)
    decoded = decoder.decode(_update(), TS + 1)
    assert decoded == Decoded(
        events=(
            Book(
                product=P,
                src_seq=123460,
                ts_event=1_597_026_383_137_000_000,
                ts_ingest=TS + 1,
                snapshot=False,
                bids=((D("8476.97"), D("300")),),
                asks=((D("8476.98"), D("0")),),
            ),
        ),
        marks=(SeqMark(P, 2),),
        checksums=(BookChecksum(P, reference_checksum(AFTER_BIDS, AFTER_ASKS)),),
    )


def test_the_plugin_checksum_of_the_book_after_the_update_is_okx_s() -> None:
    book = OrderBook(P)
    decoder = OkxDecoder()
    for frame in (_snapshot(), _update()):
        decoded = decoder.decode(frame, TS)
        for event in decoded.events:
            assert isinstance(event, Book)
            book.apply(event)
        [check] = decoded.checksums
        assert OkxFeed().book_checksum(book.bids(), book.asks()) == check.value


def test_keepalive_push_repeats_the_position_without_state() -> None:
    decoder = OkxDecoder()
    decoder.decode(_snapshot(), TS)
    keepalive = _books(
        "update",
        {
            "asks": [],
            "bids": [],
            "ts": "1597026443085",
            "checksum": reference_checksum(SNAP_BIDS, SNAP_ASKS),
            "prevSeqId": 123456,
            "seqId": 123456,
        },
    )
    assert decoder.decode(keepalive, TS + 1) == Decoded(marks=(SeqMark(P, 1, carries_state=False),))
    assert decoder.decode(_update(prev=123456), TS + 2).marks == (SeqMark(P, 2),)


def test_sequence_reset_keeps_the_chain() -> None:
    """After maintenance OKX may restart seqId lower; prevSeqId still names the last one."""
    decoder = OkxDecoder()
    decoder.decode(_snapshot(), TS)
    decoded = decoder.decode(_update(prev=123456, seq=5), TS + 1)
    assert decoded.marks == (SeqMark(P, 2),)
    assert [e.src_seq for e in decoded.events] == [5]
    assert decoder.last_seq[P] == 5


def test_duplicate_push_repeats_the_position() -> None:
    decoder = OkxDecoder()
    decoder.decode(_snapshot(), TS)
    update = _update()
    assert decoder.decode(update, TS + 1).marks == (SeqMark(P, 2),)
    assert decoder.decode(update, TS + 2).marks == (SeqMark(P, 2),)  # the runtime drops it
    assert decoder.duplicates == 1


def test_chain_break_skips_a_position_for_that_product_only() -> None:
    decoder = OkxDecoder()
    decoder.decode(_snapshot(), TS)
    decoder.decode(_snapshot("ETH-USDT", seq=900), TS)
    lost = _update(prev=123458, seq=123460)  # a push between 123456 and 123458 was lost
    assert decoder.decode(lost, TS + 1).marks == (SeqMark(P, 3),)
    assert decoder.breaks == 1
    # The chain goes on from the break; the other product is untouched,
    assert decoder.decode(_update(prev=123460, seq=123461), TS + 2).marks == (SeqMark(P, 4),)
    eth = _books(
        "update",
        {"asks": [], "bids": [], "ts": "1", "checksum": 0, "prevSeqId": 900, "seqId": 900},
        "ETH-USDT",
    )
    assert decoder.decode(eth, TS + 3).marks == (SeqMark("okx:ETH-USDT", 1, False),)
    # and a new snapshot is the next baseline.
    assert decoder.decode(_snapshot(seq=123470), TS + 4).marks == (SeqMark(P, 5),)


def test_update_before_snapshot_is_named() -> None:
    update = _update()
    assert OkxDecoder().decode(update, TS) == Decoded(
        errors=(
            DecodeError(
                "no_snapshot", f"{P}: update (seqId 123460) before any snapshot", update.encode(), P
            ),
        )
    )


def test_trades_side_is_the_taker_side() -> None:
    frame = (
        '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
        '"tradeId":"130639474","px":"42219.9","sz":"0.12060306","side":"buy",'
        '"ts":"1630048897897","count":"3"}]}'
    )
    decoded = OkxDecoder().decode(frame, TS)
    assert decoded == Decoded(
        events=(
            Trade(
                product=P,
                src_seq=130639474,
                ts_event=1_630_048_897_897_000_000,
                ts_ingest=TS,
                price=D("42219.9"),
                size=D("0.12060306"),
                side="buy",
                trade_id="130639474",
            ),
        )
    )
    _round_trips(decoded)


def test_tickers_give_a_ticker_and_a_quote() -> None:
    frame = (
        '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instType":"SPOT",'
        '"instId":"BTC-USDT","last":"9999.99","lastSz":"0.1","askPx":"9999.99","askSz":"11",'
        '"bidPx":"8888.88","bidSz":"5","open24h":"9000","high24h":"10000","low24h":"8888.88",'
        '"volCcy24h":"2222","vol24h":"2222","sodUtc0":"2222","sodUtc8":"2222",'
        '"ts":"1597026383085"}]}'
    )
    decoded = OkxDecoder().decode(frame, TS)
    ts_event = 1_597_026_383_085_000_000
    assert decoded == Decoded(
        events=(
            Ticker(
                product=P,
                ts_event=ts_event,
                ts_ingest=TS,
                price=D("9999.99"),
                open_24h=D("9000"),
                high_24h=D("10000"),
                low_24h=D("8888.88"),
                volume_24h=D("2222"),
                best_bid=D("8888.88"),
                best_ask=D("9999.99"),
            ),
            Quote(
                product=P,
                ts_event=ts_event,
                ts_ingest=TS,
                bid_price=D("8888.88"),
                bid_size=D("5"),
                ask_price=D("9999.99"),
                ask_size=D("11"),
            ),
        )
    )
    _round_trips(decoded)


def test_bbo_tbt_is_a_quote() -> None:
    frame = (
        '{"arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"data":[{"asks":[["111.06","55154",'
        '"0","2"]],"bids":[["111.05","57745","0","2"]],"ts":"1670324386802","seqId":363996337}]}'
    )
    assert OkxDecoder().decode(frame, TS) == Decoded(
        events=(
            Quote(
                product=P,
                src_seq=363996337,
                ts_event=1_670_324_386_802_000_000,
                ts_ingest=TS,
                bid_price=D("111.05"),
                bid_size=D("57745"),
                ask_price=D("111.06"),
                ask_size=D("55154"),
            ),
        )
    )


def test_candle1m_is_validated_without_an_event() -> None:
    frame = (
        '{"arg":{"channel":"candle1m","instId":"BTC-USDT"},"data":[["1597026383085",'
        '"8533.02","8553.74","8527.17","8548.26","45247","529.5858061","529.58","0"]]}'
    )
    assert OkxDecoder().decode(frame, TS) == Decoded(heartbeat=True)
    broken = frame.replace('"8553.74"', "8553.74")
    assert [e.reason for e in OkxDecoder().decode(broken, TS).errors] == ["invalid_field"]


def test_replies_pong_and_notices() -> None:
    decoder = OkxDecoder()
    subscribed = (
        '{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a4d3ae55"}'
    )
    assert decoder.decode(subscribed, TS) == Decoded(subscribed=("BTC-USDT",))
    assert decoder.decode("pong", TS) == Decoded(heartbeat=True)
    assert decoder.decode(b"pong", TS) == Decoded(heartbeat=True)
    notice = (
        '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a '
        'service upgrade.","connId":"a4d3ae55"}'
    )
    assert decoder.decode(notice, TS) == Decoded(
        errors=(
            DecodeError(
                "exchange_notice",
                "OKX notice 64008: The connection will soon be closed for a service upgrade.",
                notice.encode(),
            ),
        )
    )


def test_unknown_symbol_is_a_named_status_and_dlq_entry() -> None:
    frame = (
        '{"event":"error","code":"60018","msg":"Wrong URL or channel:books,instId:FOO-USDT '
        "doesn't exist. Please use the correct URL, channel and parameters referring to API "
        'document.","connId":"a4d3ae55"}'
    )
    message = orjson.loads(frame)["msg"]
    assert OkxDecoder().decode(frame, TS) == Decoded(
        events=(
            Status(
                product="okx:FOO-USDT",
                ts_event=TS,
                ts_ingest=TS,
                status="offline",
                reason=f"unknown_symbol: {message}",
            ),
        ),
        errors=(
            DecodeError(
                "unknown_symbol", f"OKX error 60018: {message}", frame.encode(), "okx:FOO-USDT"
            ),
        ),
    )


def test_other_exchange_errors() -> None:
    frame = (
        '{"event":"error","code":"60012","msg":"Invalid request: {\\"op\\": '
        '\\"subscribe\\"}","connId":"a4d3ae55"}'
    )
    decoded = OkxDecoder().decode(frame, TS)
    assert decoded == Decoded(
        errors=(
            DecodeError(
                "exchange_error",
                'OKX error 60012: Invalid request: {"op": "subscribe"}',
                frame.encode(),
            ),
        )
    )


def test_bad_input_is_named() -> None:
    decoder = OkxDecoder()
    cases = {
        "{": "malformed_json",
        "[1]": "invalid_field",
        '{"arg":{"channel":"nope","instId":"BTC-USDT"},"data":[]}': "unknown_type",
        '{"arg":{"channel":"trades","instId":"BTC-USDT-SWAP"},"data":[]}': "invalid_field",
        '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"px":"1"}]}': "missing_field",
        '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
        '"tradeId":"1","px":1.5,"sz":"1","side":"buy","ts":"1"}]}': "invalid_field",
        '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
        '"tradeId":"1","px":"1","sz":"1","side":"up","ts":"1"}]}': "invalid_field",
        '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"x","data":[]}': "invalid_field",
        '{"event":"login"}': "unknown_type",
    }
    for frame, reason in cases.items():
        decoded = decoder.decode(frame, TS)
        assert [e.reason for e in decoded.errors] == [reason], frame
        assert decoded.events == ()


def test_subscribe_messages() -> None:
    feed = OkxFeed()
    sub = Subscription(symbols=("BTC-USDT", "ETH-USDT"), channels=("books", "trades"))
    [message] = feed.subscribe_messages(sub, None, 0.0)
    assert orjson.loads(message) == {
        "op": "subscribe",
        "args": [
            {"channel": "books", "instId": "BTC-USDT"},
            {"channel": "books", "instId": "ETH-USDT"},
            {"channel": "trades", "instId": "BTC-USDT"},
            {"channel": "trades", "instId": "ETH-USDT"},
        ],
    }
    assert [orjson.loads(m) for m in feed.resubscribe_messages("BTC-USDT")] == [
        {"op": "unsubscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
        {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
    ]
    assert OkxCandlesFeed.endpoint.endswith("/ws/v5/business")
    assert OkxFeed.endpoint.endswith("/ws/v5/public")
