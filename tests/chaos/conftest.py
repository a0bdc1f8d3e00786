"""The chaos suite runs only when asked for: ``pytest -m chaos`` (CI's short form) or
``just chaos`` (the full run). A plain ``pytest`` deselects the ``chaos`` tests, so the
main test run never runs them twice."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    chaos = [item for item in items if item.get_closest_marker("chaos") is not None]
    if chaos:
        config.hook.pytest_deselected(items=chaos)
        items[:] = [item for item in items if item.get_closest_marker("chaos") is None]
