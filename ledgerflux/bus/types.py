"""Messages, acks, errors and the bus's settings and metrics."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal, Protocol

import attrs
import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg as NatsMsg
from prometheus_client import Counter, Histogram

from ledgerflux.errors import LedgerfluxError

PUBLISHES = Counter("ledgerflux_bus_publishes", "Messages acked by JetStream", ["stream"])


PUBLISH_FAILURES = Counter(
    "ledgerflux_bus_publish_failures", "Messages not acked (fenced or failed)", ["reason"]
)


RECONNECTS = Counter("ledgerflux_bus_reconnects", "NATS reconnections")


BUS_ERRORS = Counter("ledgerflux_bus_errors", "Errors reported by nats-py", ["kind"])


CROSSING_BATCH = Histogram(
    "ledgerflux_bus_crossing_batch_size",
    "Messages per Trio/asyncio crossing",
    ["op"],
    buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 4096),
)


DUPLICATE_WINDOW_S = 120.0
"""Nats-Msg-Id dedup window of every stream: a retried publish within it is a no-op."""


CANCEL_GRACE_S = 5.0
"""Bound on waiting for a cancelled asyncio task to finish (it normally takes microseconds)."""


CLOSE_TIMEOUT_S = 5.0


CHECKPOINT_BUCKET = "LF_CHECKPOINTS"
"""JetStream object-store bucket holding daemon checkpoints (see :meth:`Bus.put_checkpoint`)."""


HANDOFF_BATCHES = 8
"""Batches an ordered consumer's asyncio side may hold while Trio is busy: enough to keep
nats-py delivering during a crossing, small enough to bound memory. A crossing takes all
of them at once. A full hand-off stalls nats-py's callback, which also delays the
JetStream flow-control replies and so idles the server: it should only fill up when the
Trio side really is slower."""


REQUEST_BUFFER = 256
"""Core NATS requests a :meth:`Bus.subscribe` hand-off holds while Trio is busy."""


ORDERED_IDLE_HEARTBEAT_S = 2.0
"""Ordered consumers are recreated after two missed heartbeats (e.g. server restart)."""


ACK_FLUSH_TIMEOUT_S = 2
"""Bound on the PING/PONG that ends an ack/nak crossing (an int: nats-py's flush takes one)."""


MIN_PULL_EXPIRES_S = 0.001
"""Shortest pull request lifetime sent to the server (a zero ``expires`` means "forever")."""


_ERR_WRONG_LAST_SEQUENCE = 10071


_ERR_SUBJECT_WRITE_IN_FLIGHT = 10164
"""``wrong last sequence`` without a number: not compared (see :func:`_pub_outcome`)."""


_ERR_STREAM_NAME_IN_USE = 10058


_ERR_NO_PEERS = 10005


_ERR_INSUFFICIENT_RESOURCES = 10023


_ERR_REPLICAS_NOT_CLUSTERED = 10074


_REPLICA_ERRORS = {
    _ERR_REPLICAS_NOT_CLUSTERED: "the server is not clustered",
    _ERR_NO_PEERS: "the cluster has too few JetStream servers for them",
    _ERR_INSUFFICIENT_RESOURCES: "the cluster lacks the resources for them",
}
"""JetStream's refusals of a stream's replica count, as an operator reads them."""


_HDR_MSG_ID = "Nats-Msg-Id"


_USERINFO = re.compile(r"//[^/@,]*@")


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


_HDR_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"


DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default ``max_payload``; the real value comes from the server's INFO."""


@attrs.frozen
class OutMsg:
    subject: str
    data: bytes
    msg_id: str | None = None
    """Sent as ``Nats-Msg-Id``: the server drops a duplicate within the dedup window."""
    expected_last_subject_seq: int | None = None
    """Sent as ``Nats-Expected-Last-Subject-Sequence``: fences a single writer per subject."""
    headers: Mapping[str, str] | None = None
    """Extra headers stored with the message (e.g. the normalizer's input position)."""


@attrs.frozen
class InMsg:
    subject: str
    data: bytes
    stream_seq: int
    headers: Mapping[str, str]
    num_delivered: int = 1
    _raw: NatsMsg | None = attrs.field(default=None, eq=False, repr=False, alias="raw")
    """The nats-py message, kept to ack/nak it; None for messages read by direct get."""

    @property
    def num_pending(self) -> int | None:
        """Messages the consumer still had to deliver after this one (JetStream delivery
        metadata; None for a direct get). Parsed on demand: ask once per batch."""
        if self._raw is None or not self._raw.reply:
            return None
        try:
            return int(self._raw.metadata.num_pending)
        except (nats.errors.Error, ValueError, IndexError, TypeError):
            return None


@attrs.frozen
class CoreMsg:
    """A core NATS message (control traffic such as resync requests, not JetStream)."""

    subject: str
    data: bytes
    reply: str = ""
    """Where the answer goes ("" when the sender expects none); see :meth:`Bus.respond`."""


@attrs.frozen
class PubAck:
    stream: str
    seq: int
    duplicate: bool


@attrs.frozen
class StreamState:
    first_seq: int
    last_seq: int
    messages: int


class BusError(LedgerfluxError):
    """Base of every error raised or returned by the bus."""


class BusUnavailable(BusError):
    """Could not connect after the configured attempts."""


class StreamConfigMismatch(BusError):
    """An existing stream's config differs from the one LedgerFlux would create."""

    def __init__(self, stream: str, fields: Mapping[str, tuple[object, object]]) -> None:
        self.stream = stream
        self.fields = dict(fields)
        diffs = "; ".join(f"{k}: server has {h!r}, expected {w!r}" for k, (h, w) in fields.items())
        super().__init__(f"stream {stream} exists with a different config ({diffs})")


class StreamReplicasUnavailable(BusError):
    """A stream asks for more replicas (``nats.replicas``) than the NATS deployment can hold:
    a single server, or a cluster with fewer JetStream peers than replicas."""

    def __init__(self, stream: str, replicas: int, why: str, server_says: str) -> None:
        self.stream = stream
        self.replicas = replicas
        super().__init__(
            f"cannot create stream {stream} with nats.replicas = {replicas}: {why} "
            f"(server: {server_says}). Set nats.replicas (LEDGERFLUX_NATS__REPLICAS) to at most "
            "the number of JetStream servers: 1 for a single server, 3 for a 3-node cluster"
        )


class ConsumerConfigMismatch(BusError):
    """An existing durable consumer's config differs from the one :meth:`Bus.pull` asks for.

    Never changed silently (docs/architecture.md), even where NATS could update it in place: a
    different filter or ack wait on a durable that another process may be using is an
    operator's decision. Delete the consumer (it restarts from the stream's first message)
    or make the configuration match.
    """

    def __init__(
        self, stream: str, durable: str, fields: Mapping[str, tuple[object, object]]
    ) -> None:
        self.stream = stream
        self.durable = durable
        self.fields = dict(fields)
        diffs = "; ".join(f"{k}: server has {h!r}, expected {w!r}" for k, (h, w) in fields.items())
        super().__init__(f"consumer {durable} on {stream} exists with a different config ({diffs})")


class NoResponders(BusError):
    """A core NATS request that no subscriber listens to (the server says so at once)."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__(f"nobody listens to {subject}")


class PublishFenced(BusError):
    """Another writer moved the subject on: the expected last subject sequence was wrong."""

    def __init__(self, subject: str, detail: str) -> None:
        self.subject = subject
        super().__init__(f"publish to {subject} fenced: {detail}")


class PublishFailed(BusError):
    """No ack after the retry budget, or the server refused the message."""


RefusalReason = Literal["too_large", "bad_subject", "bad_header", "no_stream", "rejected"]


class PublishRefused(PublishFailed):
    """A publish that can never succeed as it is: retrying it is pointless.

    ``reason``: ``too_large`` (subject, headers and payload exceed the server's
    ``max_payload``), ``bad_subject`` / ``bad_header`` (refused by the client before
    sending), ``no_stream`` (no stream listens to the subject: nobody answered for the whole
    retry budget *and* the JetStream API confirms that no stream has the subject), or
    ``rejected`` (JetStream answered with an error, e.g. the stream's own size limit)."""

    def __init__(self, subject: str, size: int, reason: RefusalReason, detail: str) -> None:
        self.subject = subject
        self.size = size
        self.reason: RefusalReason = reason
        self.detail = detail
        super().__init__(f"publish to {subject} ({size} bytes) refused, {reason}: {detail}")


class Publisher(Protocol):
    """What the ingestor and the normalizer need from the bus (tests use in-memory fakes)."""

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]: ...
