"""The NATS JetStream bus (docs/architecture.md).

nats-py is asyncio-only. It runs on **one** asyncio event loop in a dedicated thread, and
everything else in LedgerFlux (Trio) talks to it through :class:`_Bridge`:

* A call crosses **once per batch**, never once per message: :meth:`Bus.publish_batch`
  publishes a whole batch inside one asyncio task, :meth:`PullConsumer.fetch` returns a
  batch, :meth:`Bus.ordered` hands over lists of messages.
* The pull path is batch-shaped on the asyncio side too (:class:`_PullSession`): one
  persistent inbox subscription per consumer, one ``CONSUMER.MSG.NEXT`` request per fetch,
  the replies collected by a plain callback (no asyncio task per message, unlike nats-py's
  own ``fetch``), and ``ack`` as all ``+ACK`` publishes followed by one flush.
* Trio cancellation is propagated: the asyncio task is cancelled and the Trio side waits
  (shielded, bounded) until it has really finished, so no asyncio work outlives its caller.
* Subscriptions cross the other way (:class:`_Handoff`): nats-py's callback appends and
  wakes Trio once for everything that arrives before Trio takes it, so a consumed message
  costs no asyncio task and no ``call_soon_threadsafe``.
* Backpressure both ways: Trio waits for the asyncio task of each crossing; the ordered
  consumer's pump blocks on a bounded Trio channel, so a slow Trio consumer stops taking,
  the hand-off fills up and blocks nats-py's callback, the subscription's queue is no
  longer drained, and JetStream flow control stops the server.

trio-asyncio is deliberately not used (3-5x slower and it patches asyncio process-wide).

One module per job: ``bridge`` (the Trio/asyncio crossing), ``provisioning`` (streams),
``publishing``, ``consumers`` (ordered and pull), ``direct`` (direct get, positions, the
checkpoint object store), ``requests`` (core request/reply), ``client`` (:func:`open_bus`,
:class:`Bus`), on ``core``, ``types`` and ``conversions``. The public names are re-exported here,
and so is every other name the single module had (settings, internals tests use).
"""

from __future__ import annotations

from ledgerflux.bus.bridge import _Bridge as _Bridge
from ledgerflux.bus.bridge import _Handoff as _Handoff
from ledgerflux.bus.client import _CONNECT_BACKOFF_MAX_S as _CONNECT_BACKOFF_MAX_S
from ledgerflux.bus.client import _RECONNECT_WAIT_S as _RECONNECT_WAIT_S
from ledgerflux.bus.client import (
    Bus,
    connect_budget_s,
    open_bus,
)
from ledgerflux.bus.client import _connect_backoff_s as _connect_backoff_s
from ledgerflux.bus.client import _connect_error as _connect_error
from ledgerflux.bus.consumers import (
    PullConsumer,
)
from ledgerflux.bus.consumers import _Consuming as _Consuming
from ledgerflux.bus.consumers import _PullRequest as _PullRequest
from ledgerflux.bus.consumers import _PullSession as _PullSession
from ledgerflux.bus.consumers import _unsubscribe as _unsubscribe
from ledgerflux.bus.conversions import _direct_msg as _direct_msg
from ledgerflux.bus.conversions import _in_msg as _in_msg
from ledgerflux.bus.conversions import _in_msgs as _in_msgs
from ledgerflux.bus.conversions import _new_object as _new_object
from ledgerflux.bus.conversions import _ns as _ns
from ledgerflux.bus.conversions import _set_data as _set_data
from ledgerflux.bus.conversions import _set_headers as _set_headers
from ledgerflux.bus.conversions import _set_num_delivered as _set_num_delivered
from ledgerflux.bus.conversions import _set_raw as _set_raw
from ledgerflux.bus.conversions import _set_stream_seq as _set_stream_seq
from ledgerflux.bus.conversions import _set_subject as _set_subject
from ledgerflux.bus.core import _BusCore as _BusCore
from ledgerflux.bus.direct import _Direct as _Direct
from ledgerflux.bus.provisioning import _consumer_diff as _consumer_diff
from ledgerflux.bus.provisioning import _Provisioning as _Provisioning
from ledgerflux.bus.provisioning import _stream_diff as _stream_diff
from ledgerflux.bus.publishing import _NO_RESPONDERS as _NO_RESPONDERS
from ledgerflux.bus.publishing import PUBLISH_ATTEMPT_TIMEOUT_S as PUBLISH_ATTEMPT_TIMEOUT_S
from ledgerflux.bus.publishing import PUBLISH_RETRY_BUDGET_S as PUBLISH_RETRY_BUDGET_S
from ledgerflux.bus.publishing import _Attempt as _Attempt
from ledgerflux.bus.publishing import _client_refusal as _client_refusal
from ledgerflux.bus.publishing import _pub_outcome as _pub_outcome
from ledgerflux.bus.publishing import _Publisher as _Publisher
from ledgerflux.bus.publishing import _Publishing as _Publishing
from ledgerflux.bus.publishing import _wire_size as _wire_size
from ledgerflux.bus.requests import _Requests as _Requests
from ledgerflux.bus.types import _ERR_INSUFFICIENT_RESOURCES as _ERR_INSUFFICIENT_RESOURCES
from ledgerflux.bus.types import _ERR_NO_PEERS as _ERR_NO_PEERS
from ledgerflux.bus.types import _ERR_REPLICAS_NOT_CLUSTERED as _ERR_REPLICAS_NOT_CLUSTERED
from ledgerflux.bus.types import _ERR_STREAM_NAME_IN_USE as _ERR_STREAM_NAME_IN_USE
from ledgerflux.bus.types import _ERR_SUBJECT_WRITE_IN_FLIGHT as _ERR_SUBJECT_WRITE_IN_FLIGHT
from ledgerflux.bus.types import _ERR_WRONG_LAST_SEQUENCE as _ERR_WRONG_LAST_SEQUENCE
from ledgerflux.bus.types import _HDR_EXPECTED_LAST_SUBJECT_SEQ as _HDR_EXPECTED_LAST_SUBJECT_SEQ
from ledgerflux.bus.types import _HDR_MSG_ID as _HDR_MSG_ID
from ledgerflux.bus.types import _NO_HEADERS as _NO_HEADERS
from ledgerflux.bus.types import _REPLICA_ERRORS as _REPLICA_ERRORS
from ledgerflux.bus.types import _USERINFO as _USERINFO
from ledgerflux.bus.types import ACK_FLUSH_TIMEOUT_S as ACK_FLUSH_TIMEOUT_S
from ledgerflux.bus.types import BUS_ERRORS as BUS_ERRORS
from ledgerflux.bus.types import CANCEL_GRACE_S as CANCEL_GRACE_S
from ledgerflux.bus.types import CHECKPOINT_BUCKET as CHECKPOINT_BUCKET
from ledgerflux.bus.types import CLOSE_TIMEOUT_S as CLOSE_TIMEOUT_S
from ledgerflux.bus.types import CROSSING_BATCH as CROSSING_BATCH
from ledgerflux.bus.types import DEFAULT_MAX_PAYLOAD as DEFAULT_MAX_PAYLOAD
from ledgerflux.bus.types import DUPLICATE_WINDOW_S as DUPLICATE_WINDOW_S
from ledgerflux.bus.types import HANDOFF_BATCHES as HANDOFF_BATCHES
from ledgerflux.bus.types import MIN_PULL_EXPIRES_S as MIN_PULL_EXPIRES_S
from ledgerflux.bus.types import ORDERED_IDLE_HEARTBEAT_S as ORDERED_IDLE_HEARTBEAT_S
from ledgerflux.bus.types import PUBLISH_FAILURES as PUBLISH_FAILURES
from ledgerflux.bus.types import PUBLISHES as PUBLISHES
from ledgerflux.bus.types import RECONNECTS as RECONNECTS
from ledgerflux.bus.types import REQUEST_BUFFER as REQUEST_BUFFER
from ledgerflux.bus.types import (
    BusError,
    BusUnavailable,
    ConsumerConfigMismatch,
    CoreMsg,
    InMsg,
    NoResponders,
    OutMsg,
    PubAck,
    Publisher,
    PublishFailed,
    PublishFenced,
    PublishRefused,
    StreamConfigMismatch,
    StreamReplicasUnavailable,
    StreamState,
)
from ledgerflux.bus.types import RefusalReason as RefusalReason

__all__ = [
    "Bus",
    "BusError",
    "BusUnavailable",
    "ConsumerConfigMismatch",
    "CoreMsg",
    "InMsg",
    "NoResponders",
    "OutMsg",
    "PubAck",
    "PublishFailed",
    "PublishFenced",
    "PublishRefused",
    "Publisher",
    "PullConsumer",
    "StreamConfigMismatch",
    "StreamReplicasUnavailable",
    "StreamState",
    "connect_budget_s",
    "open_bus",
]
