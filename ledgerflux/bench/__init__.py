"""Benchmarks: ``ledgerflux bench NAME [--json]`` (docs/development.md).

Each module has ``main(argv) -> int``, measures this project's path next to a baseline in
the same run, prints human-readable lines, and with ``--json`` ends with the one-line
summary :func:`print_summary` writes.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

import orjson

__all__ = ["machine", "print_summary"]


def machine() -> str:
    """Where the figures were measured, in one line."""
    return f"{platform.platform()} / {os.cpu_count()} cpus / python {platform.python_version()}"


def print_summary(
    bench: str,
    *,
    metrics: Mapping[str, float | None],
    baseline: Mapping[str, float | None],
    ratio: Mapping[str, float | None],
) -> None:
    """The last line of ``--json`` output: ``{"bench", "metrics", "baseline", "ratio",
    "machine"}`` so that figures can be compared run to run."""
    summary = {
        "bench": bench,
        "metrics": dict(metrics),
        "baseline": dict(baseline),
        "ratio": dict(ratio),
        "machine": machine(),
    }
    print(orjson.dumps(summary).decode(), flush=True)
