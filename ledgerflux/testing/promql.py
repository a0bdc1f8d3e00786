"""What the dashboards and alert rules ask Prometheus, for the tests that hold them to the
metrics the daemons really export.

PromQL is parsed by ``promtool`` itself (Debian's ``prometheus`` package), never by a
home-made parser: :func:`check_expressions` writes the expressions as recording rules and
runs ``promtool check rules`` on them. Metric names are picked out of the expressions by
their ``ledgerflux_`` prefix (every metric the project exports has it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ALERT_RULES",
    "DASHBOARDS",
    "GRAFANA_VARIABLES",
    "alert_expressions",
    "check_expressions",
    "dashboard_expressions",
    "exported_names",
    "metric_names",
    "promtool",
]

ROOT = Path(__file__).resolve().parents[2]
ALERT_RULES = ROOT / "alerts" / "ledgerflux.rules.yml"
ALERT_TESTS = ROOT / "alerts" / "tests" / "ledgerflux.test.yml"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))

GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$product": ".*",
    "$instance": ".*",
}
"""What Grafana substitutes before a query reaches Prometheus (test values)."""

_NAME = re.compile(r"\bledgerflux_[a-zA-Z0-9_]+")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


def promtool() -> str | None:
    """The ``promtool`` binary on PATH, or None."""
    return shutil.which("promtool")


def alert_expressions(path: Path = ALERT_RULES) -> dict[str, str]:
    """``{alert or record name: expr}`` of a rules file."""
    doc = yaml.safe_load(path.read_text())
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in doc["groups"]
        for rule in group["rules"]
    }


def dashboard_expressions(paths: Iterable[Path] = DASHBOARDS) -> dict[str, str]:
    """``{"<dashboard uid>/<panel id><refId>": expr}`` with Grafana's variables replaced."""
    out: dict[str, str] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        for panel in _panels(doc["panels"]):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                out[f"{doc['uid']}/{panel['id']}{target['refId']}"] = expr
    return out


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        inner = panel.get("panels")
        if isinstance(inner, list):
            yield from _panels(inner)


def metric_names(expr: str) -> set[str]:
    """The ``ledgerflux_*`` series names an expression selects."""
    return set(_NAME.findall(expr))


def exported_names(metrics_text: str) -> set[str]:
    """Every series name a ``/metrics`` page can carry, from its ``# TYPE`` lines (so a
    labelled counter that has not counted yet still counts as exported)."""
    names: set[str] = set()
    for line in metrics_text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, family, kind = line.split(" ", 3)
        base = family.removesuffix("_total") if kind == "counter" else family
        names.update(base + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


def check_expressions(exprs: dict[str, str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on *exprs* written as recording rules (parses each one)."""
    tool = promtool()
    if tool is None:
        raise RuntimeError("promtool is not installed")
    rules = [
        {"record": "check:" + re.sub(r"[^a-zA-Z0-9_]", "_", name), "expr": expr}
        for name, expr in exprs.items()
    ]
    path = workdir / "expressions.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    return subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
