"""Plugin discovery, credentials and the ingest daemon's choice of feed."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ledgerflux.config import Config, IngestConfig
from ledgerflux.events import Status
from ledgerflux.feeds import (
    MissingCredentials,
    UnknownFeed,
    available_feeds,
    credentials_from_env,
    load_feed,
    serve_ingest,
)
from ledgerflux.feeds.runtime import credentials_for, rebase_url, subscription_for
from ledgerflux.plugin import Subscription

from .toy import FakePublisher

EXAMPLE = Path(__file__).resolve().parents[3] / "recordings" / "example" / "example.jsonl"


def test_installed_feeds_include_replay_and_the_workspace_plugins() -> None:
    feeds = available_feeds()
    assert {"replay", "example", "coinbase"} <= set(feeds)
    assert list(feeds) == sorted(feeds)
    assert load_feed("example").name == "example"


def test_unknown_feed_names_what_is_installed() -> None:
    with pytest.raises(UnknownFeed, match=r"unknown feed 'nope'; installed feeds: .*replay"):
        load_feed("nope")


def test_credentials_come_from_the_environment_only_when_needed() -> None:
    env = {"LEDGERFLUX_COINBASE_API_KEY": "key-1", "LEDGERFLUX_COINBASE_API_SECRET": "sec-2"}
    creds = credentials_from_env("coinbase", env)
    assert (creds.key, creds.secret, creds.passphrase) == ("key-1", "sec-2", "")
    assert "key-1" not in repr(creds)
    with pytest.raises(MissingCredentials, match="LEDGERFLUX_COINBASE_ADVANCED_API_KEY"):
        credentials_from_env("coinbase-advanced", {})
    example = load_feed("example")
    assert credentials_for(example, "example", Subscription(("X",), ("trades",))) is None


def test_subscription_defaults_to_the_plugins_channels() -> None:
    example = load_feed("example")
    sub = subscription_for(example, IngestConfig(feed="example", symbols=("BTC-USD",)))
    assert sub == Subscription(("BTC-USD",), example.default_channels)


def test_rest_endpoint_override_keeps_path_and_query() -> None:
    url = "https://api.example.com/products/BTC-USD/book?level=2"
    assert (
        rebase_url(url, "https://api.example.com", "http://127.0.0.1:5000")
        == "http://127.0.0.1:5000/products/BTC-USD/book?level=2"
    )
    assert rebase_url(url, "https://api.example.com", None) == url


async def test_serve_ingest_runs_the_replay_feed() -> None:
    config = Config(ingest=IngestConfig(feed="replay", replay_path=str(EXAMPLE)))
    publisher = FakePublisher()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_ingest(config, bus=publisher, task_status=task_status)
            )
    statuses = [e for e in publisher.events() if isinstance(e, Status)]
    assert statuses[0].status == "reset"
    assert statuses[-1].status == "offline"
    assert len(publisher.events()) > len(statuses)
