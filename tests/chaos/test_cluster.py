"""The chaos suite's 3-node JetStream cluster: R3 streams survive a node's kill -9."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ledgerflux.bus import OutMsg, PubAck, open_bus
from ledgerflux.config import NatsConfig
from ledgerflux.subjects import MD_STREAM
from ledgerflux.testing.cluster import open_nats_cluster

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def test_r3_stream_keeps_every_acked_message_through_a_node_kill(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with open_nats_cluster(tmp_path / "cluster") as cluster:
            assert len(cluster.url.split(",")) == 3
            async with open_bus(NatsConfig(replicas=3), url=cluster.url) as bus:
                await bus.ensure_streams()

                async def publish(first: int) -> None:
                    msgs = [
                        OutMsg(subject="lf.md.x.Y", data=b"%d" % n, msg_id=f"m{n}")
                        for n in range(first, first + 10)
                    ]
                    results = await bus.publish_batch(msgs)
                    assert all(isinstance(r, PubAck) for r in results), results

                await publish(0)
                await cluster.kill(0)
                await publish(10)
                await cluster.restart(0)
                await publish(20)
                state = await bus.stream_state(MD_STREAM)
                assert (state.first_seq, state.last_seq, state.messages) == (1, 30, 30)
                got = [await bus.get_msg(MD_STREAM, seq) for seq in range(1, 31)]
                assert [m.data if m else None for m in got] == [b"%d" % n for n in range(30)]
