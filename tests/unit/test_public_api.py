"""The public surface is deliberate (STYLE 1): adding or removing a name is a visible change."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ledgerflux
import ledgerflux.plugin

PUBLIC = [
    "Book",
    "CodecError",
    "Config",
    "ConfigError",
    "EVENT_TYPES",
    "Event",
    "LedgerfluxError",
    "OrderBook",
    "ProductState",
    "Quote",
    "Status",
    "Ticker",
    "Trade",
    "load_config",
    "open_archive",
    "open_bus",
    "open_store",
    "serve_daemon",
    "serve_gateway",
    "serve_ingest",
    "serve_normalize",
    "serve_snapshot",
    "serve_up",
]

PLUGIN_API = [
    "BookChecksum",
    "BookSnapshot",
    "Credentials",
    "DecodeError",
    "Decoded",
    "FeedDecoder",
    "FeedPlugin",
    "Instrument",
    "PluginOptions",
    "RestRequest",
    "ResyncMode",
    "SeqMark",
    "SequenceModel",
    "Subscription",
]


def test_public_names_are_pinned() -> None:
    assert sorted(ledgerflux.__all__) == sorted(PUBLIC)


def test_every_public_name_resolves_to_its_own_object() -> None:
    for name in PUBLIC:
        value = getattr(ledgerflux, name)
        assert getattr(value, "__name__", name) == name or name in ("Event", "EVENT_TYPES")


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = ledgerflux.NoSuchThing  # type: ignore[attr-defined]


def test_lazy_table_matches_all() -> None:
    assert sorted(ledgerflux._EXPORTS) == sorted(ledgerflux.__all__)


def test_plugin_api_is_pinned() -> None:
    assert sorted(ledgerflux.plugin.__all__) == sorted(PLUGIN_API)


def test_importing_the_package_does_not_load_the_heavy_stack() -> None:
    code = (
        "import sys, ledgerflux, ledgerflux.plugin, ledgerflux.events;"
        "heavy = {'nats', 'psycopg', 'quart', 'hypercorn', 'boto3'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
