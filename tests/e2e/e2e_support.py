"""Helpers for the end-to-end tests: a WebSocket subscriber that checks the contract."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ledgerflux import codec
from ledgerflux.events import Event, Status

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recordings" / "demo.jsonl.gz"
PRODUCT = "coinbase:BTC-USD"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class Subscriber:
    """Collects one product's snapshot and events from the gateway until it drains."""

    snapshot: dict[str, object] | None = None
    events: list[Event] = attrs.field(factory=list)
    drained: trio.Event = attrs.field(factory=trio.Event)

    async def run(
        self, ws: WebSocketConnection, product: str, *, enough: trio.Event, want: int
    ) -> None:
        request = {"op": "subscribe", "id": 1, "products": [product], "snapshot": True}
        await ws.send_message(orjson.dumps(request).decode())
        try:
            while True:
                frame = orjson.loads(await ws.get_message())
                for msg in frame if isinstance(frame, list) else [frame]:
                    kind = msg.get("type")
                    if kind == "snapshot" and msg.get("product") == product:
                        self.snapshot = msg
                    elif kind == "drain":
                        self.drained.set()
                    elif kind == "error":
                        raise AssertionError(f"gateway error: {msg}")
                    elif kind in ("trade", "quote", "ticker", "book", "status"):
                        assert msg["product"] == product
                        self.events.append(codec.from_wire(msg))
                if len(self.events) >= want:
                    enough.set()
        except ConnectionClosed as exc:
            if not self.drained.is_set():
                raise AssertionError(f"closed before drain: {exc.reason}") from None

    def check_contiguous(self) -> None:
        """Events follow the snapshot's seq with no hole and no duplicate. The epoch changes
        only where the contract allows it: a new seq space starting at 1, announced by a
        ``reset`` status, or the product's very first epoch after an empty snapshot."""
        assert self.snapshot is not None, "no snapshot received"
        seq = int(str(self.snapshot["seq"]))
        epoch = self.snapshot["epoch"]
        assert self.events, "no live events received"
        for event in self.events:
            if event.epoch != epoch:
                announced = isinstance(event, Status) and event.status == "reset"
                why = f"epoch changed {epoch!r} -> {event.epoch!r} at seq {event.seq}: {event}"
                assert event.seq == 1, why
                assert announced or epoch == "", why
                epoch, seq = event.epoch, 0
            assert event.seq == seq + 1, f"hole or duplicate after seq {seq}: got {event.seq}"
            seq = event.seq


KEEP_REPLAYED_HISTORY_DAYS = "36500"
"""History retention follows event time, and the bundled recordings are older than the
default 7 days: a snapshotter (re)started on them would drop their history at once. Tests
that check that PostgreSQL holds every event keep it."""


def ledgerflux_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERFLUX_")}
    env["LEDGERFLUX_DATABASE__HISTORY_RETENTION_DAYS"] = KEEP_REPLAYED_HISTORY_DAYS
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    return env
