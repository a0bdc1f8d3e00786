"""The plugin declarations, subscribe messages, signatures and REST book handling."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import entry_points

import ledgerflux_coinbase
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledgerflux_coinbase import CoinbaseAdvancedFeed, CoinbaseExchangeFeed, parse_iso_ns

from ledgerflux.events import Book
from ledgerflux.plugin import (
    BookSnapshot,
    Credentials,
    FeedDecoder,
    FeedPlugin,
    RestRequest,
    ResyncMode,
    SequenceModel,
    Subscription,
)

TS = 1_700_000_000_000_000_000


def test_public_surface() -> None:
    assert sorted(ledgerflux_coinbase.__all__) == [
        "AdvancedDecoder",
        "CaptureFormatError",
        "CaptureFrame",
        "CoinbaseAdvancedFeed",
        "CoinbaseExchangeFeed",
        "ExchangeDecoder",
        "parse_capture_line",
        "parse_iso_ns",
        "read_capture",
        "sign_subscribe",
    ]


@pytest.mark.parametrize(
    ("name", "cls"),
    [("coinbase", CoinbaseExchangeFeed), ("coinbase-advanced", CoinbaseAdvancedFeed)],
)
def test_entry_points(name: str, cls: type) -> None:
    (ep,) = entry_points(group="ledgerflux.feeds", name=name)
    assert ep.load() is cls
    plugin: FeedPlugin = cls()
    assert plugin.name == name
    assert plugin.exchange == "coinbase"
    assert isinstance(plugin.new_decoder(), FeedDecoder)
    assert set(plugin.default_channels) <= set(plugin.channels)
    assert plugin.channels[: len(plugin.default_channels)] == plugin.default_channels
    assert plugin.needs_credentials <= set(plugin.channels)
    assert plugin.stale_after_s > 1.0  # both send heartbeats once a second
    assert plugin.subscribe_deadline_s == 5.0


def test_exchange_declarations() -> None:
    feed = CoinbaseExchangeFeed()
    assert feed.endpoint == "wss://ws-feed.exchange.coinbase.com"
    assert feed.rest_endpoint == "https://api.exchange.coinbase.com"
    assert feed.sequence_model is SequenceModel.PER_PRODUCT
    assert feed.resync_mode is ResyncMode.REST
    assert feed.needs_credentials == {"level2", "full"}
    assert feed.rest_rate_limit_per_s == 10.0


def test_advanced_declarations() -> None:
    feed = CoinbaseAdvancedFeed()
    assert feed.endpoint == "wss://advanced-trade-ws.coinbase.com"
    assert feed.rest_endpoint == "https://api.coinbase.com/api/v3/brokerage"
    assert feed.sequence_model is SequenceModel.PER_CONNECTION
    assert feed.resync_mode is ResyncMode.RESUBSCRIBE
    assert feed.needs_credentials == frozenset()


def test_exchange_public_subscribe() -> None:
    sub = Subscription(symbols=("BTC-USD", "ETH-USD"), channels=("level2_batch", "heartbeat"))
    frames = CoinbaseExchangeFeed().subscribe_messages(sub, None, 1_700_000_000.5)
    assert [orjson.loads(f) for f in frames] == [
        {
            "type": "subscribe",
            "product_ids": ["BTC-USD", "ETH-USD"],
            "channels": ["level2_batch", "heartbeat"],
        }
    ]


def test_exchange_signed_subscribe() -> None:
    secret = base64.b64encode(b"0123456789abcdef").decode()
    creds = Credentials(key="k3y", secret=secret, passphrase="pass")
    sub = Subscription(symbols=("BTC-USD",), channels=("full", "heartbeat"))
    (frame,) = CoinbaseExchangeFeed().subscribe_messages(sub, creds, 1_700_000_000.9)
    message = orjson.loads(frame)
    expected = base64.b64encode(
        hmac.new(b"0123456789abcdef", b"1700000000GET/users/self/verify", hashlib.sha256).digest()
    ).decode()
    assert message == {
        "type": "subscribe",
        "product_ids": ["BTC-USD"],
        "channels": ["full", "heartbeat"],
        "signature": expected,
        "key": "k3y",
        "passphrase": "pass",
        "timestamp": "1700000000",
    }


def test_exchange_subscribe_refuses_what_it_cannot_do() -> None:
    feed = CoinbaseExchangeFeed()
    with pytest.raises(ValueError, match="need API credentials"):
        feed.subscribe_messages(Subscription(("BTC-USD",), ("level2",)), None, 0.0)
    with pytest.raises(ValueError, match="unknown channel"):
        feed.subscribe_messages(Subscription(("BTC-USD",), ("level3",)), None, 0.0)
    bad = Credentials(key="k", secret="not base64!", passphrase="p")
    with pytest.raises(ValueError, match="base64"):
        feed.subscribe_messages(Subscription(("BTC-USD",), ("full",)), bad, 0.0)


def test_advanced_subscribe_one_channel_per_message() -> None:
    sub = Subscription(symbols=("BTC-USD",), channels=("level2", "market_trades", "heartbeats"))
    frames = CoinbaseAdvancedFeed().subscribe_messages(sub, None, 0.0)
    assert [orjson.loads(f) for f in frames] == [
        {"type": "subscribe", "channel": "level2", "product_ids": ["BTC-USD"]},
        {"type": "subscribe", "channel": "market_trades", "product_ids": ["BTC-USD"]},
        {"type": "subscribe", "channel": "heartbeats"},
    ]
    with pytest.raises(ValueError, match="unknown channel"):
        CoinbaseAdvancedFeed().subscribe_messages(Subscription(("X",), ("user",)), None, 0.0)


def test_exchange_rest_book() -> None:
    feed = CoinbaseExchangeFeed()
    assert feed.book_request("BTC-USD") == RestRequest(
        url="https://api.exchange.coinbase.com/products/BTC-USD/book", params={"level": "2"}
    )
    body = (
        b'{"bids":[["29000.01","0.5",3],["29000.00","1.25",1]],"asks":[["29000.02","2",4]],'
        b'"sequence":3512345678,"auction_mode":false,"auction":null,'
        b'"time":"2023-07-01T00:00:00.123456Z"}'
    )
    assert feed.parse_book("BTC-USD", body, TS) == BookSnapshot(
        book=Book(
            product="coinbase:BTC-USD",
            ts_event=1_688_169_600_123_456_000,
            ts_ingest=TS,
            snapshot=True,
            bids=(
                (Decimal("29000.01"), Decimal("0.5")),
                (Decimal("29000.00"), Decimal("1.25")),
            ),
            asks=((Decimal("29000.02"), Decimal("2")),),
        ),
        src_seq=3_512_345_678,
    )


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502</html>",
        b"[]",
        b'{"bids":[],"asks":[]}',
        b'{"bids":[["1"]],"asks":[],"sequence":1}',
        b'{"bids":[],"asks":[["x","1"]],"sequence":1}',
    ],
)
def test_exchange_rest_book_errors(body: bytes) -> None:
    with pytest.raises(ValueError, match="coinbase REST book for BTC-USD"):
        CoinbaseExchangeFeed().parse_book("BTC-USD", body, TS)


def test_advanced_rest_book() -> None:
    feed = CoinbaseAdvancedFeed()
    assert feed.book_request("ETH-USD") == RestRequest(
        url="https://api.coinbase.com/api/v3/brokerage/market/product_book",
        params={"product_id": "ETH-USD", "limit": "1000"},
    )
    body = (
        b'{"pricebook":{"product_id":"ETH-USD","bids":[{"price":"1850.1","size":"2.5"}],'
        b'"asks":[{"price":"1850.2","size":"0.1"}],"time":"2023-07-01T00:00:00.5Z"},'
        b'"last":"1850.15","mid_market":"1850.15","spread_bps":"0.5","spread_absolute":"0.1"}'
    )
    assert feed.parse_book("ETH-USD", body, TS) == BookSnapshot(
        book=Book(
            product="coinbase:ETH-USD",
            ts_event=1_688_169_600_500_000_000,
            ts_ingest=TS,
            snapshot=True,
            bids=((Decimal("1850.1"), Decimal("2.5")),),
            asks=((Decimal("1850.2"), Decimal("0.1")),),
        ),
        src_seq=0,
    )
    with pytest.raises(ValueError, match="coinbase-advanced REST book"):
        feed.parse_book("ETH-USD", b'{"pricebook":{"bids":[{"price":"1"}],"asks":[]}}', TS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-02-09T20:32:50.714964855Z", 1_675_974_770_714_964_855),
        ("2021-04-17T16:43:37.075687Z", 1_618_677_817_075_687_000),
        ("2019-08-14T20:42:27.265Z", 1_565_815_347_265_000_000),
        ("1970-01-01T00:00:00Z", 0),
        ("2024-02-29T23:59:59.999999999Z", 1_709_251_199_999_999_999),
        ("2023-02-09T21:32:50.1+01:00", 1_675_974_770_100_000_000),
        ("2023-02-09 20:32:50.714964855Z", 1_675_974_770_714_964_855),
    ],
)
def test_parse_iso_ns(text: str, expected: int) -> None:
    assert parse_iso_ns(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2023-02-09",
        "2023-02-09T20:32:50",
        "2023-02-30T00:00:00Z",
        "2023-02-09T24:00:00Z",
        "2023-02-09T20:32:50.Z",
        "2023-02-09T20:32:50.1234567891Z",
        "2023-02-09T20:32:50+0100",
        "2023-02-09T20:32:5\u0660Z",  # an Arabic-Indic digit zero
        "2023-02-09T20:32:50.714964855Z trailing",
    ],
)
def test_parse_iso_ns_rejects(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the input, any is fine
        parse_iso_ns(text)


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)))
def test_parse_iso_ns_agrees_with_datetime(moment: datetime) -> None:
    aware = moment.replace(tzinfo=UTC)
    text = aware.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    expected = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    assert parse_iso_ns(text) == expected
