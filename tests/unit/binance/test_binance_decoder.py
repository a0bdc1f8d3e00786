"""Binance decoder, golden: Binance's documented message examples (web-socket-streams and
rest-api, field for field) in their combined-stream wrapper, and the WHOLE decoded result."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from ledgerflux_binance import BinanceFeed
from ledgerflux_binance.feed import depth_weight

from ledgerflux import codec
from ledgerflux.events import Book, Quote, Ticker, Trade
from ledgerflux.plugin import (
    BookSnapshot,
    Decoded,
    DecodeError,
    Instrument,
    RestRequest,
    SeqMark,
    Subscription,
)
from ledgerflux.testing import check_plugin

TS = 1_795_176_000_123_456_789
D = Decimal
RECORDINGS = Path(__file__).resolve().parents[3] / "recordings" / "binance"


def wrap(stream: str, data: dict[str, object]) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def decode(frame: bytes | str) -> Decoded:
    return BinanceFeed().new_decoder().decode(frame, TS)


TRADE = {
    "e": "trade", "E": 1672515782136, "s": "BNBBTC", "t": 12345, "p": "0.001", "q": "100",
    "b": 88, "a": 50, "T": 1672515782136, "m": True, "M": True,
}  # fmt: skip
AGG_TRADE = {
    "e": "aggTrade", "E": 1672515782136, "s": "BNBBTC", "a": 12345, "p": "0.001", "q": "100",
    "f": 100, "l": 105, "T": 1672515782136, "m": False, "M": True,
}  # fmt: skip
DEPTH = {
    "e": "depthUpdate", "E": 1672515782136, "s": "BNBBTC", "U": 157, "u": 160,
    "b": [["0.0024", "10"]], "a": [["0.0026", "100"]],
}  # fmt: skip
BOOK_TICKER = {
    "u": 400900217, "s": "BNBUSDT", "b": "25.35190000", "B": "31.21000000",
    "a": "25.36520000", "A": "40.66000000",
}  # fmt: skip
TICKER = {
    "e": "24hrTicker", "E": 1672515782136, "s": "BNBBTC", "p": "0.0015", "P": "250.00",
    "w": "0.0018", "x": "0.0009", "c": "0.0025", "Q": "10", "b": "0.0024", "B": "10",
    "a": "0.0026", "A": "100", "o": "0.0010", "h": "0.0025", "l": "0.0010", "v": "10000",
    "q": "18", "O": 0, "C": 86400000, "F": 0, "L": 18150, "n": 18151,
}  # fmt: skip
KLINE = {
    "e": "kline", "E": 1672515782136, "s": "BNBBTC",
    "k": {
        "t": 1672515780000, "T": 1672515839999, "s": "BNBBTC", "i": "1m", "f": 100, "L": 200,
        "o": "0.0010", "c": "0.0020", "h": "0.0025", "l": "0.0015", "v": "1000", "n": 100,
        "x": False, "q": "1.0000", "V": "500", "Q": "0.500", "B": "123456",
    },
}  # fmt: skip
E_NS = 1672515782136 * 1_000_000


def test_trade_m_true_is_a_taker_sell() -> None:
    assert decode(wrap("bnbbtc@trade", TRADE)) == Decoded(
        events=(
            Trade(
                product="binance:BNB-BTC",
                src_seq=12345,
                ts_event=E_NS,
                ts_ingest=TS,
                price=D("0.001"),
                size=D("100"),
                side="sell",
                trade_id="12345",
            ),
        )
    )


def test_agg_trade_m_false_is_a_taker_buy() -> None:
    assert decode(wrap("bnbbtc@aggTrade", AGG_TRADE)) == Decoded(
        events=(
            Trade(
                product="binance:BNB-BTC",
                ts_event=E_NS,
                ts_ingest=TS,
                price=D("0.001"),
                size=D("100"),
                side="buy",
                trade_id="a12345",
            ),
        )
    )


def test_depth_update_is_a_book_change_with_its_update_id_range() -> None:
    product = "binance:BNB-BTC"
    assert decode(wrap("bnbbtc@depth@100ms", DEPTH)) == Decoded(
        events=(
            Book(
                product=product,
                src_seq=160,
                ts_event=E_NS,
                ts_ingest=TS,
                snapshot=False,
                bids=((D("0.0024"), D("10")),),
                asks=((D("0.0026"), D("100")),),
            ),
        ),
        marks=(SeqMark(product, 160, first=157),),
    )


def test_book_ticker_is_a_quote_stamped_at_receipt() -> None:
    assert decode(wrap("bnbusdt@bookTicker", BOOK_TICKER)) == Decoded(
        events=(
            Quote(
                product="binance:BNB-USDT",
                src_seq=400900217,
                ts_event=TS,
                ts_ingest=TS,
                bid_price=D("25.35190000"),
                bid_size=D("31.21000000"),
                ask_price=D("25.36520000"),
                ask_size=D("40.66000000"),
            ),
        )
    )


def test_24h_ticker() -> None:
    assert decode(wrap("bnbbtc@ticker", TICKER)) == Decoded(
        events=(
            Ticker(
                product="binance:BNB-BTC",
                ts_event=E_NS,
                ts_ingest=TS,
                price=D("0.0025"),
                open_24h=D("0.0010"),
                high_24h=D("0.0025"),
                low_24h=D("0.0010"),
                volume_24h=D("10000"),
                best_bid=D("0.0024"),
                best_ask=D("0.0026"),
            ),
        )
    )


def test_kline_is_validated_but_makes_no_event() -> None:
    assert decode(wrap("bnbbtc@kline_1m", KLINE)) == Decoded(heartbeat=True)
    broken = {**KLINE, "k": {**KLINE["k"], "o": 1.5}}  # type: ignore[dict-item]
    raw = wrap("bnbbtc@kline_1m", broken)
    assert decode(raw) == Decoded(
        errors=(
            DecodeError(
                "invalid_field",
                "field 'k.o': expected a decimal string, got 1.5",
                raw,
                "binance:BNB-BTC",
            ),
        )
    )


def test_replies_and_error_frames() -> None:
    assert decode('{"result":null,"id":1}') == Decoded(subscribed=())
    assert decode('{"result":["btcusdt@trade"],"id":3}') == Decoded(heartbeat=True)
    raw = b'{"code": 2, "msg": "Invalid request: too many parameters"}'
    assert decode(raw) == Decoded(
        errors=(
            DecodeError(
                "exchange_error", "code 2: Invalid request: too many parameters", raw, None
            ),
        )
    )
    raw = b'{"error":{"code":-1003,"msg":"Too many requests"},"id":4}'
    assert decode(raw).errors[0].reason == "exchange_error"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"{", "malformed_json"),
        (b"[1]", "invalid_field"),
        (wrap("x@trade", {**TRADE, "s": "X"}), "unknown_symbol"),
        (wrap("bnbbtc@x", {**TRADE, "e": "x"}), "unknown_type"),
        (wrap("bnbbtc@trade", {**TRADE, "p": "NaN"}), "invalid_field"),
        (wrap("bnbbtc@trade", {**TRADE, "m": "yes"}), "invalid_field"),
        (wrap("bnbbtc@depth@100ms", {**DEPTH, "U": 161}), "invalid_field"),
        (wrap("bnbbtc@depth@100ms", {**DEPTH, "b": [["1"]]}), "invalid_field"),
        (wrap("bnbbtc@trade", {k: v for k, v in TRADE.items() if k != "T"}), "invalid_field"),
    ],
)
def test_bad_input_is_a_named_error_never_an_exception(frame: bytes, reason: str) -> None:
    decoded = decode(frame)
    assert decoded.events == ()
    assert [e.reason for e in decoded.errors] == [reason]
    assert decoded.errors[0].raw == frame


def test_every_event_round_trips_the_codec() -> None:
    frames = [
        wrap("bnbbtc@trade", TRADE),
        wrap("bnbbtc@aggTrade", AGG_TRADE),
        wrap("bnbbtc@depth@100ms", DEPTH),
        wrap("bnbusdt@bookTicker", BOOK_TICKER),
        wrap("bnbbtc@ticker", TICKER),
    ]
    for frame in frames:
        for event in decode(frame).events:
            assert codec.decode(codec.encode(event)) == event


# -- the plugin: subscribe, REST, instruments ------------------------------------------


def test_subscribe_is_one_combined_stream_message_in_native_ids() -> None:
    feed = BinanceFeed()
    subscription = Subscription(("BTC-USDT", "ETH-BTC"), ("depth", "trade"))
    (message,) = feed.subscribe_messages(subscription, None, 0.0)
    assert orjson.loads(message) == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@depth@100ms", "btcusdt@trade", "ethbtc@depth@100ms", "ethbtc@trade"],
        "id": 1,
    }
    assert orjson.loads(feed.ping_message(0.0)) == {"method": "LIST_SUBSCRIPTIONS", "id": 2}


def test_rest_depth_book_is_the_documented_request_and_reply() -> None:
    feed = BinanceFeed()
    request = feed.book_request("BNB-BTC")
    assert request == RestRequest(
        url="https://api.binance.com/api/v3/depth", params={"symbol": "BNBBTC", "limit": "5000"}
    )
    assert request is not None
    assert feed.rest_weight(request) == 250
    assert [depth_weight(n) for n in (100, 500, 1000, 5000)] == [5, 25, 50, 250]
    body = (
        b'{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],'
        b'"asks":[["4.00000200","12.00000000"]]}'
    )
    assert feed.parse_book("BNB-BTC", body, TS) == BookSnapshot(
        book=Book(
            product="binance:BNB-BTC",
            src_seq=1027024,
            ts_event=TS,
            ts_ingest=TS,
            snapshot=True,
            bids=((D("4.00000000"), D("431.00000000")),),
            asks=((D("4.00000200"), D("12.00000000")),),
        ),
        src_seq=1027024,
    )
    for bad in (b"{", b"[]", b'{"lastUpdateId":"1","bids":[],"asks":[]}', b'{"lastUpdateId":1}'):
        with pytest.raises(ValueError, match="depth BNB-BTC"):
            feed.parse_book("BNB-BTC", bad, TS)


def test_instruments_come_from_exchange_info_and_name_the_decoder_symbols() -> None:
    feed = BinanceFeed()
    body = orjson.dumps(
        {
            "symbols": [
                {
                    "symbol": "1000SATSUSDT",
                    "status": "TRADING",
                    "baseAsset": "1000SATS",
                    "quoteAsset": "USDT",
                    "filters": [
                        {"filterType": "PRICE_FILTER", "tickSize": "0.00000001"},
                        {"filterType": "LOT_SIZE", "stepSize": "1.00000000"},
                    ],
                },
                {"symbol": "LUNAUSDT", "status": "BREAK", "baseAsset": "LUNA"}
                | {"quoteAsset": "USDT"},
            ]
        }
    )
    instruments = feed.parse_instruments(body)
    assert instruments == [
        Instrument(
            native="1000SATSUSDT",
            base="1000SATS",
            quote="USDT",
            tick_size=D("0.00000001"),
            lot_size=D("1.00000000"),
            status="TRADING",
            trading=True,
        ),
        Instrument(native="LUNAUSDT", base="LUNA", quote="USDT", status="BREAK", trading=False),
    ]
    feed.use_instruments(instruments)
    assert feed.native_symbol("1000SATS-USDT") == "1000SATSUSDT"
    trade = wrap("1000satsusdt@trade", {**TRADE, "s": "1000SATSUSDT"})
    assert feed.new_decoder().decode(trade, TS).events[0].product == "binance:1000SATS-USDT"


# -- conformance on the recordings ----------------------------------------------------


@pytest.mark.parametrize("name", ["binance-channels", "binance-deep"])
def test_conformance_on_the_recordings(name: str) -> None:
    report = check_plugin(BinanceFeed(), RECORDINGS / f"{name}.jsonl.gz")
    report.raise_for_failures()
    assert report.decode_errors == 0
    assert report.duplicates == 0
    assert report.gaps == (1 if name == "binance-channels" else 0)  # the ETH-USDT break
    assert report.rest_books == (5 if name == "binance-channels" else 1)


def test_the_recordings_are_regenerated_byte_for_byte(tmp_path: Path) -> None:
    from ledgerflux.testing.synth_binance import write_all

    for path in write_all(tmp_path):
        committed = RECORDINGS / path.name
        assert path.read_bytes() == committed.read_bytes(), path.name


def test_a_handover_drops_the_repeated_quote_stamped_at_receipt() -> None:
    from ledgerflux.feeds.session import FeedSession, PublishQueue

    feed = BinanceFeed()
    session = FeedSession(
        feed,
        Subscription(("BNB-USDT",), ("bookTicker",)),
        PublishQueue(100),
        feed="binance",
        shards=1,
        max_buffer_frames=100,
    )
    session.on_connect()
    frame = wrap("bnbusdt@bookTicker", BOOK_TICKER)
    successor = session.begin_handover()
    session.on_frame(frame, TS)  # the old socket, during the overlap
    session.on_frame(frame, TS + 5, decoder=successor)  # the same update on the new socket
    later = wrap("bnbusdt@bookTicker", {**BOOK_TICKER, "u": 400900218})
    session.on_frame(later, TS + 6, decoder=successor)
    session.end_handover(successor)
    quotes = [
        e
        for f in session.queue.take(100)
        for m in f.msgs
        for e in codec.decode_many(m.data)
        if isinstance(e, Quote)
    ]
    assert [q.src_seq for q in quotes] == [400900217, 400900218]
    assert session.stats.duplicates == 1
