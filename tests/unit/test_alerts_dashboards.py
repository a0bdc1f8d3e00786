"""The alert rules and dashboards, checked offline by promtool (Debian's ``prometheus``).

Whether the metrics they name exist is checked against the daemons' real ``/metrics`` in
tests/integration/test_observability.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from ledgerflux.testing.promql import (
    ALERT_RULES,
    ALERT_TESTS,
    DASHBOARDS,
    alert_expressions,
    check_expressions,
    dashboard_expressions,
    metric_names,
    promtool,
)

ROOT = Path(__file__).resolve().parents[2]
needs_promtool = pytest.mark.skipif(
    promtool() is None,
    reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)",
)

ALERTS = (
    "LedgerfluxFeedStale",
    "LedgerfluxProductStale",
    "LedgerfluxGapStorm",
    "LedgerfluxReconnectStorm",
    "LedgerfluxConsumerLag",
    "LedgerfluxNormalizerLag",
    "LedgerfluxSnapshotLag",
    "LedgerfluxStoreFailing",
    "LedgerfluxDLQGrowth",
    "LedgerfluxSlowConsumers",
    "LedgerfluxGatewayHoles",
    "LedgerfluxRetentionFailing",
    "LedgerfluxDiskLow",
    "LedgerfluxDiskFillingUp",
)


def test_the_rules_are_the_documented_alerts() -> None:
    assert tuple(alert_expressions()) == ALERTS


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    doc = yaml.safe_load(ALERT_TESTS.read_text())
    fired = {
        case["alertname"]
        for test in doc["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert fired == set(ALERTS)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [str(promtool()), "check", "rules", str(ALERT_RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = subprocess.run(
        [str(promtool()), "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_a_wrong_expectation_fails_the_promtool_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one expected value changed does."""
    text = ALERT_TESTS.read_text().replace("10 sequence gaps", "11 sequence gaps")
    text = text.replace("../ledgerflux.rules.yml", str(ALERT_RULES))
    mutated = tmp_path / "mutated.test.yml"
    mutated.write_text(text)
    result = subprocess.run(
        [str(promtool()), "test", "rules", str(mutated)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "11 sequence gaps" in result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    exprs = dashboard_expressions()
    result = check_expressions(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


@needs_promtool
def test_a_broken_query_is_caught_by_the_parse_check(tmp_path: Path) -> None:
    result = check_expressions({"broken": "sum by (product (ledgerflux_market_spread)"}, tmp_path)
    assert result.returncode != 0


def test_the_dashboards_cover_market_data_and_system_health() -> None:
    exprs = dashboard_expressions()
    names = set().union(*(metric_names(e) for e in exprs.values()))
    market = {
        "ledgerflux_market_trade_price",
        "ledgerflux_market_spread",
        "ledgerflux_market_depth_size",
        "ledgerflux_market_volume_24h",
    }
    health = {
        "ledgerflux_ingest_frames_total",
        "ledgerflux_normalize_lag_seconds",
        "ledgerflux_ingest_gaps_total",
        "ledgerflux_ingest_resyncs_total",
        "ledgerflux_ingest_reconnects_total",
        "ledgerflux_consumer_pending_messages",
        "ledgerflux_gateway_clients",
        "ledgerflux_gateway_slow_consumers_total",
        "ledgerflux_normalize_rejects_total",
        "ledgerflux_disk_free_bytes",
    }
    assert market | health <= names


def test_each_dashboard_uses_the_datasource_variable_and_unique_panel_ids() -> None:
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        ids = [panel["id"] for panel in doc["panels"]]
        assert len(ids) == len(set(ids)), path.name
        variables = [v["name"] for v in doc["templating"]["list"]]
        assert "datasource" in variables, path.name
        for panel in doc["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", (path.name, panel["title"])


def test_the_provisioning_file_names_a_dashboard_folder() -> None:
    doc = yaml.safe_load((ROOT / "dashboards" / "provisioning" / "dashboards.yml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
