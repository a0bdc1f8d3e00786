"""Streams: create (idempotently), compare, delete, inspect."""

from __future__ import annotations

from functools import partial

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.js import api

from ledgerflux.bus.conversions import _ns
from ledgerflux.bus.core import _BusCore
from ledgerflux.bus.types import (
    _ERR_STREAM_NAME_IN_USE,
    _REPLICA_ERRORS,
    DUPLICATE_WINDOW_S,
    StreamConfigMismatch,
    StreamReplicasUnavailable,
    StreamState,
)
from ledgerflux.subjects import DLQ_STREAM, MD_STREAM, TICKS_STREAM

log = structlog.get_logger("ledgerflux.bus")


def _stream_diff(
    have: api.StreamConfig, want: api.StreamConfig
) -> dict[str, tuple[object, object]]:
    diffs: dict[str, tuple[object, object]] = {}
    pairs: list[tuple[str, object, object]] = [
        ("subjects", sorted(have.subjects or []), sorted(want.subjects or [])),
        ("retention", have.retention, want.retention),
        ("replicas", have.num_replicas or 1, want.num_replicas or 1),
        ("max_age_ns", _ns(have.max_age), _ns(want.max_age)),
        ("max_bytes", have.max_bytes, want.max_bytes),
    ]
    for field, h, w in pairs:
        if h != w:
            diffs[field] = (h, w)
    return diffs


def _consumer_diff(
    have: api.ConsumerConfig, want: api.ConsumerConfig
) -> dict[str, tuple[object, object]]:
    # Servers >= 2.10 may report a single filter in ``filter_subjects``.
    have_filter = have.filter_subject
    if have_filter is None and have.filter_subjects and len(have.filter_subjects) == 1:
        have_filter = have.filter_subjects[0]
    diffs: dict[str, tuple[object, object]] = {}
    pairs: list[tuple[str, object, object]] = [
        ("filter_subject", have_filter, want.filter_subject),
        ("ack_policy", have.ack_policy, want.ack_policy),
        ("deliver_policy", have.deliver_policy, want.deliver_policy),
        ("ack_wait_ns", _ns(have.ack_wait), _ns(want.ack_wait)),
        ("max_ack_pending", have.max_ack_pending, want.max_ack_pending),
    ]
    for field, h, w in pairs:
        if h != w:
            diffs[field] = (h, w)
    return diffs


class _Provisioning(_BusCore):
    """The :class:`Bus` methods of its streams."""

    def _wanted_streams(self) -> list[api.StreamConfig]:
        c = self._config
        specs = [
            (TICKS_STREAM, "lf.ticks.>", c.ticks_max_age_s, c.ticks_max_bytes),
            (MD_STREAM, "lf.md.>", c.md_max_age_s, c.md_max_bytes),
            (DLQ_STREAM, "lf.dlq.>", c.dlq_max_age_s, c.dlq_max_bytes),
        ]
        return [
            api.StreamConfig(
                name=name,
                subjects=[subject],
                retention=api.RetentionPolicy.LIMITS,
                max_age=max_age,
                max_bytes=max_bytes,
                storage=api.StorageType.FILE,
                num_replicas=c.replicas,
                duplicate_window=DUPLICATE_WINDOW_S,
                allow_direct=True,
                discard=api.DiscardPolicy.OLD,
            )
            for name, subject, max_age, max_bytes in specs
        ]

    async def ensure_streams(self) -> None:
        """Create LF_TICKS, LF_MD and LF_DLQ if missing; accept them if equal.

        Raises :class:`StreamConfigMismatch` if an existing stream differs in subjects,
        retention, replicas, max_age or max_bytes (never changes it silently).
        Cancellation cancels the pending JetStream API requests.
        """
        for want in self._wanted_streams():
            have = await self._api(f"ensure stream {want.name}", partial(self._ensure_stream, want))
            mismatch = _stream_diff(have, want)
            if mismatch:
                raise StreamConfigMismatch(want.name or "", mismatch)

    async def _ensure_stream(self, want: api.StreamConfig) -> api.StreamConfig:
        js = self._jsctx
        assert want.name is not None
        try:
            return (await js.stream_info(want.name)).config
        except nats.js.errors.NotFoundError:
            pass
        try:
            info = await js.add_stream(want)
            log.info("bus.stream_created", stream=want.name)
            return info.config
        except nats.js.errors.APIError as exc:
            if exc.err_code in _REPLICA_ERRORS:
                raise StreamReplicasUnavailable(
                    want.name,
                    want.num_replicas or 1,
                    _REPLICA_ERRORS[exc.err_code],
                    exc.description or f"error {exc.err_code}",
                ) from exc
            # Another process created it between our two requests: compare with theirs.
            if exc.err_code != _ERR_STREAM_NAME_IN_USE:
                raise
            return (await js.stream_info(want.name)).config

    async def delete_stream(self, stream: str) -> bool:
        """Delete a stream (tests and admin tools); False if it did not exist."""

        async def delete() -> bool:
            try:
                return bool(await self._jsctx.delete_stream(stream))
            except nats.js.errors.NotFoundError:
                return False

        return await self._api(f"delete stream {stream}", delete)

    async def stream_state(self, stream: str) -> StreamState:
        """First/last sequence and message count of ``stream``."""
        info = await self._api(f"stream info {stream}", lambda: self._jsctx.stream_info(stream))
        state = info.state
        return StreamState(
            first_seq=state.first_seq, last_seq=state.last_seq, messages=state.messages
        )

    async def consumer_pending(self, stream: str, durable: str) -> int:
        """Messages not yet acked by ``durable`` (pending + ack pending); 0 if it is missing."""

        async def pending() -> int:
            try:
                info = await self._jsctx.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                return 0
            return (info.num_pending or 0) + (info.num_ack_pending or 0)

        return await self._api(f"consumer info {stream}/{durable}", pending)
