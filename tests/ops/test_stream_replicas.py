"""Streams asking for more replicas than the NATS deployment has fail with a message an
operator can act on (the k8s base asks for R3 streams; a single dev node cannot hold them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ledgerflux.bus import StreamReplicasUnavailable, open_bus
from ledgerflux.config import NatsConfig
from ledgerflux.embedded.nats import EmbeddedNats
from ledgerflux.testing.cluster import open_nats_cluster

pytestmark = pytest.mark.nats


async def test_replicas_above_a_single_server_name_the_setting(nats_server: EmbeddedNats) -> None:
    with trio.fail_after(30):
        async with open_bus(NatsConfig(replicas=3), url=nats_server.url) as bus:
            with pytest.raises(StreamReplicasUnavailable) as caught:
                await bus.ensure_streams()
    message = str(caught.value)
    assert "LF_TICKS" in message
    assert "nats.replicas = 3" in message
    assert "not clustered" in message
    assert "ServerError()" not in message


@pytest.mark.slow  # three nats-servers electing a meta leader
async def test_replicas_above_the_cluster_size_name_the_setting(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with (
            open_nats_cluster(tmp_path, size=3) as cluster,
            open_bus(NatsConfig(replicas=5), url=cluster.url) as bus,
        ):
            with pytest.raises(StreamReplicasUnavailable) as caught:
                await bus.ensure_streams()
    message = str(caught.value)
    assert "nats.replicas = 5" in message
    assert "too few JetStream servers" in message
