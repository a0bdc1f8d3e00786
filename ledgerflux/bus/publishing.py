"""Pipelined JetStream publishing: :meth:`Bus.publish_batch` and its asyncio side."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import suppress

import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg as NatsMsg
from nats.nuid import NUID

from ledgerflux.bus.core import _BusCore
from ledgerflux.bus.types import (
    _ERR_SUBJECT_WRITE_IN_FLIGHT,
    _ERR_WRONG_LAST_SEQUENCE,
    _HDR_EXPECTED_LAST_SUBJECT_SEQ,
    _HDR_MSG_ID,
    _NO_HEADERS,
    CROSSING_BATCH,
    PUBLISH_FAILURES,
    PUBLISHES,
    BusError,
    OutMsg,
    PubAck,
    PublishFailed,
    PublishFenced,
    PublishRefused,
    RefusalReason,
)

log = structlog.get_logger("ledgerflux.bus")


PUBLISH_RETRY_BUDGET_S = 10.0
"""How long a publish keeps retrying timeouts / no-responders before PublishFailed."""


PUBLISH_ATTEMPT_TIMEOUT_S = 2.0


class _Attempt:
    """The messages of one publish attempt that still wait for their ack."""

    __slots__ = ("answered", "replies", "unanswered")

    def __init__(self) -> None:
        self.replies: dict[int, NatsMsg] = {}
        """Batch index -> the server's reply (a PubAck, an error or a status message)."""
        self.unanswered = 0
        self.answered = asyncio.Event()
        """Set whenever ``unanswered`` drops to zero."""


class _Publisher:
    """asyncio side of :meth:`Bus.publish_batch`: pipelined JetStream publishes.

    One reply inbox subscription per connection (``<inbox>.*``); each publish is a plain
    ``PUB`` with its own reply subject ``<inbox>.<n>``, and ``_on_reply`` files the answer
    under the attempt and batch index that sent it. A batch writes all its messages, then
    waits once for all acks: no request, no future and no task per message (nats-py's
    ``js.publish`` is one request round trip each). nats-py's ``publish_async`` works the
    same way but has no timeout per message, so an ack lost in a server restart would
    wait forever; here an attempt ends after PUBLISH_ATTEMPT_TIMEOUT_S and what is still
    unanswered is sent again.

    Memory: bounded by the caller's batch. Replies for an attempt given up on find no
    entry in ``_waiting`` and are dropped (their retry has its own reply subject).
    """

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._prefix_len = len(self._prefix)
        self._sent = 0
        self._waiting: dict[str, tuple[_Attempt, int]] = {}
        self._nuid = NUID()

    async def start(self) -> None:
        await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: NatsMsg) -> None:
        entry = self._waiting.pop(msg.subject[self._prefix_len :], None)
        if entry is None:
            return  # the late answer of an attempt given up on
        attempt, index = entry
        attempt.replies[index] = msg
        attempt.unanswered -= 1
        if attempt.unanswered == 0:
            attempt.answered.set()

    async def publish(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        """See :meth:`Bus.publish_batch`: attempts until every message has an answer."""
        headers: list[dict[str, str]] = []
        for msg in msgs:
            # Built once: every attempt of a message carries the same msg id.
            h = {_HDR_MSG_ID: msg.msg_id or self._nuid.next().decode()}
            if msg.headers:
                h.update(msg.headers)
            if msg.expected_last_subject_seq is not None:
                h[_HDR_EXPECTED_LAST_SUBJECT_SEQ] = str(msg.expected_last_subject_seq)
            headers.append(h)
        results: list[PubAck | BusError | None] = [None] * len(msgs)
        todo = list(range(len(msgs)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_RETRY_BUDGET_S
        delay = 0.05
        while True:
            problems: dict[int, str] = {}  # why a message of this attempt is retried
            wait_s = max(0.05, min(PUBLISH_ATTEMPT_TIMEOUT_S, deadline - loop.time()))
            replies = await self._attempt(msgs, headers, todo, wait_s, results, problems)
            retry: list[int] = []
            for i in todo:
                if results[i] is not None:
                    continue  # refused while sending
                reply = replies.get(i)
                if reply is None:
                    problems.setdefault(i, f"no ack within {wait_s:g} s")
                    retry.append(i)
                    continue
                outcome = _pub_outcome(msgs[i].subject, reply, _wire_size(msgs[i], headers[i]))
                if isinstance(outcome, str):
                    problems[i] = outcome
                    retry.append(i)
                else:
                    results[i] = outcome
            if not retry:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                streamless = await self._subjects_without_stream(
                    {msgs[i].subject for i in retry if problems[i] == _NO_RESPONDERS}
                )
                for i in retry:
                    msg = msgs[i]
                    if msg.subject in streamless:
                        PUBLISH_FAILURES.labels(reason="no_stream").inc()
                        results[i] = PublishRefused(
                            msg.subject,
                            _wire_size(msg, headers[i]),
                            "no_stream",
                            f"no stream listens to the subject (no answer for "
                            f"{PUBLISH_RETRY_BUDGET_S:g} s, and the JetStream API lists none)",
                        )
                        continue
                    PUBLISH_FAILURES.labels(reason="timeout").inc()
                    results[i] = PublishFailed(
                        f"publish to {msg.subject} not acked within "
                        f"{PUBLISH_RETRY_BUDGET_S:g} s: {problems[i]}"
                    )
                break
            todo = retry
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)
        done: list[PubAck | BusError] = []
        for r in results:
            assert r is not None  # every message ends acked, fenced, refused or failed
            done.append(r)
        return done

    async def _subjects_without_stream(self, subjects: set[str]) -> set[str]:
        """Those of ``subjects`` that the JetStream API says no stream listens to. A
        subject whose answer does not come (no JetStream: a server restarting, a cluster
        without a meta leader) is not in the result: it stays retryable."""
        out: set[str] = set()
        for subject in sorted(subjects):
            try:
                reply = await self._nc.request(
                    "$JS.API.STREAM.NAMES",
                    orjson.dumps({"subject": subject}),
                    timeout=PUBLISH_ATTEMPT_TIMEOUT_S,
                )
                answer = orjson.loads(reply.data)
            except (nats.errors.Error, TimeoutError, orjson.JSONDecodeError):
                continue
            if isinstance(answer, dict) and "error" not in answer and answer.get("total") == 0:
                out.add(subject)
        return out

    async def _attempt(
        self,
        msgs: Sequence[OutMsg],
        headers: list[dict[str, str]],
        todo: list[int],
        wait_s: float,
        results: list[PubAck | BusError | None],
        problems: dict[int, str],
    ) -> dict[int, NatsMsg]:
        """Send ``todo`` (in order) and wait up to ``wait_s`` for their replies.

        Fills ``results`` for messages that cannot be sent at all (closed connection,
        invalid subject or header, too big) and ``problems`` for those to retry.
        """
        nc = self._nc
        attempt = _Attempt()
        tokens: list[str] = []
        max_payload = nc.max_payload
        try:
            for n, i in enumerate(todo):
                msg = msgs[i]
                # nats-py checks only the payload against max_payload; the server counts
                # the headers too, and answers a larger message by closing the connection.
                size = _wire_size(msg, headers[i])
                if size > max_payload:
                    PUBLISH_FAILURES.labels(reason="too_large").inc()
                    results[i] = PublishRefused(
                        msg.subject,
                        size,
                        "too_large",
                        f"headers and payload exceed the server's max_payload of {max_payload}",
                    )
                    continue
                self._sent += 1
                token = str(self._sent)
                # Registered before the write: publish() may yield (flushing a full
                # buffer), and the ack may be read before it returns.
                tokens.append(token)
                self._waiting[token] = (attempt, i)
                attempt.unanswered += 1
                try:
                    await nc.publish(
                        msg.subject, msg.data, reply=self._prefix + token, headers=headers[i]
                    )
                except (nats.errors.Error, OSError) as exc:
                    if self._waiting.pop(token, None) is not None:
                        attempt.unanswered -= 1
                    if isinstance(exc, nats.errors.ConnectionClosedError):
                        for j in todo[n:]:
                            PUBLISH_FAILURES.labels(reason="closed").inc()
                            results[j] = PublishFailed(
                                f"publish to {msgs[j].subject}: connection closed"
                            )
                        break
                    reason = _client_refusal(exc)
                    if reason is not None:
                        PUBLISH_FAILURES.labels(reason=reason).inc()
                        results[i] = PublishRefused(msg.subject, size, reason, repr(exc))
                        continue
                    # Reconnecting with a full buffer, draining: the rest waits for a retry
                    # (stopping here keeps the batch order for what was sent).
                    for j in todo[n:]:
                        problems[j] = repr(exc)
                    break
            if attempt.unanswered > 0:
                # ``answered`` may have been set while a write yielded, then unanswered
                # grew again: only the state now counts.
                attempt.answered.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(attempt.answered.wait(), wait_s)
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
        return attempt.replies


_NO_RESPONDERS = "no responders: no stream on the subject (yet), e.g. a server restarting"


def _client_refusal(exc: BaseException) -> RefusalReason | None:
    """The refusal reason of an error nats-py raises before sending, if it is permanent."""
    if isinstance(exc, nats.errors.MaxPayloadError):
        return "too_large"
    if isinstance(exc, nats.errors.BadSubjectError):
        return "bad_subject"
    if isinstance(exc, nats.errors.BadHeaderError):
        return "bad_header"
    return None


def _wire_size(msg: OutMsg, headers: Mapping[str, str]) -> int:
    """Bytes the server counts against ``max_payload``: payload plus the header block
    (``NATS/1.0\r\n``, one ``key: value\r\n`` per header, ``\r\n``)."""
    header_bytes = 12 + sum(len(k) + len(v) + 4 for k, v in headers.items())
    return len(msg.data) + header_bytes


def _pub_outcome(subject: str, reply: NatsMsg, size: int) -> PubAck | BusError | str:
    """What a publish reply means: an ack, a final error, or (a str) why to retry."""
    headers = reply.headers or _NO_HEADERS
    status = headers.get("Status")
    if status == "503":
        return _NO_RESPONDERS
    if status is not None:
        return f"status {status} {headers.get('Description', '')}".strip()
    try:
        resp = orjson.loads(reply.data)
        error = resp.get("error")
        if error is None:
            return PubAck(
                stream=resp["stream"], seq=resp["seq"], duplicate=bool(resp.get("duplicate", False))
            )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
        PUBLISH_FAILURES.labels(reason="bad_ack").inc()
        return PublishFailed(f"publish to {subject}: unreadable ack {reply.data[:200]!r}: {exc!r}")
    if error.get("err_code") == _ERR_WRONG_LAST_SEQUENCE:
        PUBLISH_FAILURES.labels(reason="fenced").inc()
        return PublishFenced(subject, str(error.get("description", "")))
    if error.get("err_code") == _ERR_SUBJECT_WRITE_IN_FLIGHT:
        # A clustered stream refuses a fenced publish WITHOUT comparing while another
        # write to the subject is in flight, often the writer's own previous message whose
        # mark the leader has not cleared yet: it decides nothing, so ask again.
        return "another write to the subject is in flight (10164)"
    if error.get("code") == 503:
        return f"JetStream unavailable: {error}"
    PUBLISH_FAILURES.labels(reason="rejected").inc()
    return PublishRefused(subject, size, "rejected", str(error))


class _Publishing(_BusCore):
    """The :class:`Bus` methods of its publishing."""

    async def publish_batch(self, msgs: Sequence[OutMsg]) -> list[PubAck | BusError]:
        """Publish ``msgs`` pipelined in one crossing; one result per message, in order.

        All messages are written, then all acks awaited (one shared reply inbox, see
        :class:`_Publisher`), so a batch costs about one round trip, not one per message.
        On the first attempt the messages reach the server in batch order, so messages for
        one subject are stored in the order given (the normalizer's fencing relies on it).

        Timeouts, no-responders and JetStream 503s (a server restarting, a leader election)
        are retried with the same ``Nats-Msg-Id`` (a message without one gets a fresh id,
        so retries are always deduplicated) for up to PUBLISH_RETRY_BUDGET_S, then
        :class:`PublishFailed`. A retry resends every message still unanswered, again in
        batch order among themselves; a retried message is stored after any later message
        of the batch that was accepted at the first attempt, so per-subject order holds
        only for messages that did not need a retry. A fenced message
        (``expected_last_subject_seq`` wrong) is never retried:
        :class:`PublishFenced`. A message that can never be stored (larger than
        :attr:`max_payload`, a bad subject or header, a JetStream error) is
        :class:`PublishRefused` at once, without being retried; so is one that nobody
        answered for the whole budget when the JetStream API says no stream has its
        subject (``no_stream``; while a server restarts the API does not answer, and the
        message stays a plain :class:`PublishFailed`). Results are returned, not raised.

        On cancellation the asyncio side stops at once (no task is left behind): some
        messages may already be stored; publishing them again with the same msg ids is safe.
        """
        if not msgs:
            return []
        CROSSING_BATCH.labels(op="publish").observe(len(msgs))
        publisher = self._publisher_or_raise
        results = await self._bridge.run(lambda: publisher.publish(msgs))
        acked: dict[str, int] = {}
        for r in results:
            if isinstance(r, PubAck):
                acked[r.stream] = acked.get(r.stream, 0) + 1
        for stream, count in acked.items():
            PUBLISHES.labels(stream=stream).inc(count)
        failed = len(results) - sum(acked.values())
        if failed:
            log.warning("bus.publish_errors", failed=failed, total=len(results))
            for r in results:
                if isinstance(r, PublishRefused):
                    log.warning(
                        "bus.publish_refused",
                        subject=r.subject,
                        size=r.size,
                        reason=r.reason,
                        detail=r.detail,
                    )
        return results
