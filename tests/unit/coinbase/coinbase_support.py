"""Helpers shared by the Coinbase plugin tests (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from ledgerflux import codec
from ledgerflux.plugin import Decoded

REPO = Path(__file__).parents[3]
GOLDEN = REPO / "tests" / "golden" / "coinbase"
CAPTURE = REPO.parent / "shared" / "reference" / "coinbase-exchange-feed-2021.capture"
"""The reference capture lives next to the checkout, not in it (see the report)."""


def decoded_to_json(decoded: Decoded) -> dict[str, Any]:
    """A whole :class:`Decoded` as plain JSON: events in their canonical wire form."""
    return {
        "events": [orjson.loads(codec.encode(event)) for event in decoded.events],
        "errors": [
            {"reason": e.reason, "detail": e.detail, "product": e.product} for e in decoded.errors
        ],
        "marks": [
            {"key": m.key, "value": m.value, "carries_state": m.carries_state}
            for m in decoded.marks
        ],
        "heartbeat": decoded.heartbeat,
        "subscribed": None if decoded.subscribed is None else list(decoded.subscribed),
        "snapshot_products": list(decoded.snapshot_products),
    }


def json_paths(
    value: Any, prefix: tuple[Any, ...] = (), *, items: int = 5
) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (the first ``items`` elements of each list)."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += json_paths(item, (*prefix, key), items=items)
    elif isinstance(value, list):
        for index, item in enumerate(value[:items]):
            out += json_paths(item, (*prefix, index), items=items)
    return out


def mutate(frame: Any, path: tuple[Any, ...], new: Any, delete: bool) -> Any:
    """A copy of ``frame`` with the value at ``path`` replaced by ``new`` (or deleted)."""
    if not path:
        return new
    copy = json.loads(json.dumps(frame))
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return copy
