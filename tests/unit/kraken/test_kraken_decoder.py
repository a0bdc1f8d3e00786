"""Golden decode tests of the Kraken v2 decoder: Kraken's documented frame shapes in, WHOLE
results out, one or more per channel, plus depth truncation, precision and bad input."""

from __future__ import annotations

from decimal import Decimal as D

import orjson
from kraken_reference import checksum as reference_checksum
from ledgerflux_kraken import KrakenDecoder, KrakenFeed

from ledgerflux import codec
from ledgerflux.events import Book, Quote, Status, Ticker, Trade
from ledgerflux.plugin import BookChecksum, Decoded, DecodeError, Subscription

TS = 1_795_176_000_123_456_789
P = "kraken:BTC-USD"


def _subscribed(depth: int = 10) -> str:
    result = {"channel": "book", "depth": depth, "snapshot": True, "symbol": "BTC/USD"}
    reply = {
        "method": "subscribe",
        "result": result,
        "success": True,
        "time_in": "2023-10-06T17:35:55.440295Z",
        "time_out": "2023-10-06T17:35:55.440333Z",
    }
    return orjson.dumps(reply).decode()


def _level(price: str, qty: str) -> str:
    return f'{{"price":{price},"qty":{qty}}}'


def _book(kind: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]], csum: int) -> str:
    """A book push with the numbers written as Kraken writes them (bare, full precision)."""
    stamp = ',"timestamp":"2023-10-06T17:35:55.440295Z"' if kind == "update" else ""
    bid_text = ",".join(_level(p, q) for p, q in bids)
    ask_text = ",".join(_level(p, q) for p, q in asks)
    return (
        f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"BTC/USD","bids":[{bid_text}],'
        f'"asks":[{ask_text}],"checksum":{csum}{stamp}}}]}}'
    )


BIDS = [("45283.5", "0.10000000"), ("45283.4", "1.54582015"), ("45282.1", "0.10000000")]
ASKS = [("45285.2", "0.00100000"), ("45286.4", "1.54571953"), ("45286.6", "1.54571109")]


def test_subscribe_reply_names_the_pair_and_depth() -> None:
    decoder = KrakenDecoder()
    assert decoder.decode(_subscribed(25), TS) == Decoded(subscribed=("BTC-USD",))
    assert decoder.depths == {P: 25}


def test_book_snapshot_keeps_every_digit() -> None:
    frame = _book("snapshot", BIDS, ASKS, reference_checksum(ASKS, BIDS))
    decoded = KrakenDecoder().decode(frame, TS)
    assert decoded == Decoded(
        events=(
            Book(
                product=P,
                ts_event=TS,
                ts_ingest=TS,
                snapshot=True,
                bids=tuple((D(p), D(q)) for p, q in BIDS),
                asks=tuple((D(p), D(q)) for p, q in ASKS),
            ),
        ),
        checksums=(BookChecksum(P, reference_checksum(ASKS, BIDS)),),
        snapshot_products=(P,),
    )
    [book] = decoded.events
    assert isinstance(book, Book)
    assert [f"{q:f}" for _, q in book.bids] == ["0.10000000", "1.54582015", "0.10000000"]
    assert codec.decode(codec.encode(book)) == book


def test_numbers_with_fewer_digits_are_written_with_the_pairs_precision() -> None:
    """``0.1`` on the wire is ``0.10000000`` (BTC/USD: qty precision 8), the same value."""
    frame = _book("snapshot", [("45283.5", "0.1")], [("45285", "2")], 0)
    [book] = KrakenDecoder().decode(frame, TS).events
    assert isinstance(book, Book)
    assert [(f"{p:f}", f"{q:f}") for p, q in book.bids + book.asks] == [
        ("45283.5", "0.10000000"),
        ("45285.0", "2.00000000"),
    ]


def test_update_that_pushes_a_level_out_of_the_depth_removes_it() -> None:
    """Depth 3: an insert of a better bid pushes the worst one out; Kraken sends no delete
    for it, the decoder adds one, so every consumer's book is Kraken's."""
    decoder = KrakenDecoder()
    decoder.decode(_subscribed(3), TS)
    decoder.decode(_book("snapshot", BIDS, ASKS, 0), TS)
    after_bids = [("45284.0", "0.50000000"), *BIDS[:2]]
    frame = _book("update", [("45284.0", "0.50000000")], [], reference_checksum(ASKS, after_bids))
    decoded = decoder.decode(frame, TS + 1)
    assert decoded == Decoded(
        events=(
            Book(
                product=P,
                ts_event=1_696_613_755_440_295_000,
                ts_ingest=TS + 1,
                snapshot=False,
                bids=((D("45284.0"), D("0.50000000")), (D("45282.1"), D(0))),
                asks=(),
            ),
        ),
        checksums=(BookChecksum(P, reference_checksum(ASKS, after_bids)),),
    )
    assert decoder.books[P].bids() == [(D(p), D(q)) for p, q in after_bids]


def test_update_before_snapshot_is_named() -> None:
    frame = _book("update", [("1.0", "1")], [], 0)
    assert KrakenDecoder().decode(frame, TS) == Decoded(
        errors=(DecodeError("no_snapshot", f"{P}: update before any snapshot", frame.encode(), P),)
    )


def test_trade_side_is_the_taker_side() -> None:
    frame = (
        '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"sell",'
        '"price":45283.5,"qty":0.00100000,"ord_type":"market","trade_id":4665906,'
        '"timestamp":"2023-09-25T07:49:37.708706Z"}]}'
    )
    decoded = KrakenDecoder().decode(frame, TS)
    assert decoded == Decoded(
        events=(
            Trade(
                product=P,
                src_seq=4665906,
                ts_event=1_695_628_177_708_706_000,
                ts_ingest=TS,
                price=D("45283.5"),
                size=D("0.00100000"),
                side="sell",
                trade_id="4665906",
            ),
        )
    )


def test_ticker_gives_a_ticker_and_a_quote() -> None:
    frame = (
        '{"channel":"ticker","type":"snapshot","data":[{"symbol":"BTC/USD","bid":45283.5,'
        '"bid_qty":0.10000000,"ask":45285.2,"ask_qty":0.00100000,"last":45283.4,'
        '"volume":1234.56789012,"vwap":45000.1,"low":44000.0,"high":46000.0,"change":-116.6,'
        '"change_pct":-0.26}]}'
    )
    assert KrakenDecoder().decode(frame, TS) == Decoded(
        events=(
            Ticker(
                product=P,
                ts_event=TS,
                ts_ingest=TS,
                price=D("45283.4"),
                open_24h=D("45400.0"),
                high_24h=D("46000.0"),
                low_24h=D("44000.0"),
                volume_24h=D("1234.56789012"),
                best_bid=D("45283.5"),
                best_ask=D("45285.2"),
            ),
            Quote(
                product=P,
                ts_event=TS,
                ts_ingest=TS,
                bid_price=D("45283.5"),
                bid_size=D("0.10000000"),
                ask_price=D("45285.2"),
                ask_size=D("0.00100000"),
            ),
        )
    )


def test_ohlc_is_validated_without_an_event() -> None:
    frame = (
        '{"channel":"ohlc","type":"update","timestamp":"2023-10-04T16:26:30.524394914Z",'
        '"data":[{"symbol":"BTC/USD","open":0.5624,"high":0.5628,"low":0.5622,"close":0.5627,'
        '"trades":12,"volume":30927.68066226,"vwap":0.5626,'
        '"interval_begin":"2023-10-04T16:25:00.000000000Z","interval":1,'
        '"timestamp":"2023-10-04T16:26:00.000000Z"}]}'
    )
    assert KrakenDecoder().decode(frame, TS) == Decoded(heartbeat=True)
    broken = frame.replace('"open":0.5624', '"open":"a lot"')
    assert [e.reason for e in KrakenDecoder().decode(broken, TS).errors] == ["invalid_field"]


def test_instrument_channel_sets_the_precisions() -> None:
    frame = (
        '{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[{"symbol":'
        '"SOL/EUR","base":"SOL","quote":"EUR","status":"online","qty_precision":6,'
        '"qty_increment":0.000001,"price_precision":3,"cost_precision":5,"marginable":false,'
        '"has_index":true,"cost_min":0.5,"tick_size":0.001,"price_increment":0.001,'
        '"qty_min":0.02}]}}'
    )
    decoder = KrakenDecoder()
    assert decoder.decode(frame, TS) == Decoded(heartbeat=True)
    assert decoder.precisions["kraken:SOL-EUR"] == (3, 6)


def test_heartbeat_status_and_pong() -> None:
    decoder = KrakenDecoder()
    for frame in (
        '{"channel":"heartbeat"}',
        '{"channel":"status","type":"update","data":[{"version":"2.0.0","system":"online",'
        '"api_version":"v2","connection_id":12393906104898154338}]}',
        '{"method":"pong","req_id":101,"time_in":"2023-09-24T14:10:23.799685Z",'
        '"time_out":"2023-09-24T14:10:23.799703Z"}',
    ):
        assert decoder.decode(frame, TS) == Decoded(heartbeat=True), frame


def test_unknown_pair_is_a_named_status_and_dlq_entry() -> None:
    frame = (
        '{"error":"Currency pair not supported","method":"subscribe","success":false,'
        '"symbol":"FOO/USD","time_in":"2023-10-06T17:35:55.440295Z",'
        '"time_out":"2023-10-06T17:35:55.440333Z"}'
    )
    assert KrakenDecoder().decode(frame, TS) == Decoded(
        events=(
            Status(
                product="kraken:FOO-USD",
                ts_event=TS,
                ts_ingest=TS,
                status="offline",
                reason="unknown_symbol: Currency pair not supported",
            ),
        ),
        errors=(
            DecodeError(
                "unknown_symbol",
                "Kraken subscribe failed: Currency pair not supported",
                frame.encode(),
                "kraken:FOO-USD",
            ),
        ),
    )


def test_other_errors_and_bad_input_are_named() -> None:
    decoder = KrakenDecoder()
    cases = {
        '{"error":"Exceeded msg rate","method":"subscribe","success":false}': "exchange_error",
        "{": "malformed_json",
        '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":'
        '[{"price":NaN,"qty":1}],"asks":[]}]}': "malformed_json",
        "[1]": "invalid_field",
        '{"channel":"nope"}': "unknown_type",
        '{"method":"nope"}': "unknown_type",
        '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD"}]}': "missing_field",
        '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"up",'
        '"price":1.0,"qty":1.0,"trade_id":1,"timestamp":"2023-09-25T07:49:37.708706Z"}]}': (
            "invalid_field"
        ),
        '{"channel":"book","type":"snapshot","data":[{"symbol":"BTCUSD","bids":[],"asks":[]}]}': (
            "invalid_field"
        ),
    }
    for frame, reason in cases.items():
        decoded = decoder.decode(frame, TS)
        assert [e.reason for e in decoded.errors] == [reason], frame


def test_subscribe_messages_one_channel_each() -> None:
    feed = KrakenFeed()
    sub = Subscription(symbols=("BTC-USD", "ETH-USD"), channels=("book-100", "trade", "ohlc"))
    assert [orjson.loads(m) for m in feed.subscribe_messages(sub, None, 0.0)] == [
        {
            "method": "subscribe",
            "params": {
                "channel": "book",
                "symbol": ["BTC/USD", "ETH/USD"],
                "depth": 100,
                "snapshot": True,
            },
            "req_id": 1,
        },
        {
            "method": "subscribe",
            "params": {"channel": "trade", "symbol": ["BTC/USD", "ETH/USD"]},
            "req_id": 2,
        },
        {
            "method": "subscribe",
            "params": {
                "channel": "ohlc",
                "symbol": ["BTC/USD", "ETH/USD"],
                "interval": 1,
                "snapshot": False,
            },
            "req_id": 3,
        },
    ]
    assert [orjson.loads(m) for m in feed.resubscribe_messages("BTC-USD")] == [
        {
            "method": "unsubscribe",
            "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10},
        },
        {
            "method": "subscribe",
            "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10, "snapshot": True},
        },
    ]
    assert orjson.loads(feed.ping_message(1700000000.5)) == {"method": "ping", "req_id": 1700000000}
