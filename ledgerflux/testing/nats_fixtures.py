"""pytest fixtures for a real nats-server with JetStream (loaded by the root conftest).

* ``nats_server``: an embedded server in the test's ``tmp_path`` (an :class:`EmbeddedNats`,
  so a test can ``restart()`` or ``kill()`` it).
* ``nats_url``: ``LEDGERFLUX_TEST_NATS_URL`` if set (the LedgerFlux streams are deleted
  first, so tests stay independent), else the URL of an embedded server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ledgerflux.bus import CHECKPOINT_BUCKET, open_bus
from ledgerflux.config import NatsConfig
from ledgerflux.embedded.nats import EmbeddedNats, open_nats_server
from ledgerflux.subjects import DLQ_STREAM, MD_STREAM, TICKS_STREAM

__all__ = ["nats_server", "nats_url"]

NATS_URL_ENV = "LEDGERFLUX_TEST_NATS_URL"


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with open_nats_server(tmp_path) as server:
        yield server


@pytest.fixture
async def nats_url(tmp_path: Path) -> AsyncIterator[str]:
    external = os.environ.get(NATS_URL_ENV)
    if external:
        with trio.fail_after(30):
            async with open_bus(NatsConfig(connect_attempts=2), url=external) as bus:
                # The checkpoint bucket too: a checkpoint of deleted streams is stale.
                for stream in (TICKS_STREAM, MD_STREAM, DLQ_STREAM, f"OBJ_{CHECKPOINT_BUCKET}"):
                    await bus.delete_stream(stream)
        yield external
        return
    async with open_nats_server(tmp_path) as server:
        yield server.url
