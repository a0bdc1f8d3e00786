"""nats-py messages to :class:`InMsg`."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import structlog
from nats.aio.msg import Msg as NatsMsg

from ledgerflux._slots import new_instance, slot_setter
from ledgerflux.bus.types import (
    _HDR_EXPECTED_LAST_SUBJECT_SEQ,
    _HDR_MSG_ID,
    _NO_HEADERS,
    BUS_ERRORS,
    BusError,
    InMsg,
)
from ledgerflux.logging import describe_error

log = structlog.get_logger("ledgerflux.bus")


# InMsg's slot descriptors: ``_in_msg`` fills a new instance through them. It runs once
# per consumed message, and this is about twice as fast as the attrs ``__init__`` (which
# goes through ``object.__setattr__`` once per field because the class is frozen). The
# result is an ordinary InMsg: equality, repr and immutability are the class's own.
_new_object = new_instance


_set_subject = slot_setter(InMsg, "subject")


_set_data = slot_setter(InMsg, "data")


_set_stream_seq = slot_setter(InMsg, "stream_seq")


_set_headers = slot_setter(InMsg, "headers")


_set_num_delivered = slot_setter(InMsg, "num_delivered")


_set_raw = slot_setter(InMsg, "_raw")


assert {a.name for a in attrs.fields(InMsg)} == {
    "subject",
    "data",
    "stream_seq",
    "headers",
    "num_delivered",
    "_raw",
}, "InMsg changed: update _in_msg"


def _in_msg(msg: NatsMsg) -> InMsg:
    # v1: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
    # v2 adds <domain>.<account hash> after $JS.ACK (and may end with a random token).
    # Parsed by hand: this runs once per consumed message.
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        delivered, stream_seq = tokens[4], tokens[5]
    elif len(tokens) >= 11:
        delivered, stream_seq = tokens[6], tokens[7]
    else:
        raise BusError(f"not a JetStream message reply subject: {msg.reply!r}")
    out: InMsg = _new_object(InMsg)
    _set_subject(out, msg.subject)
    _set_data(out, msg.data)
    _set_stream_seq(out, int(stream_seq))
    # nats-py builds a fresh dict per message (or None): kept as is, never copied.
    _set_headers(out, msg.headers or _NO_HEADERS)
    _set_num_delivered(out, int(delivered))
    _set_raw(out, msg)
    return out


def _in_msgs(raws: Sequence[NatsMsg], *, what: str) -> list[InMsg]:
    """Convert deliveries; one that is not a JetStream delivery is counted and dropped."""
    try:
        return [_in_msg(raw) for raw in raws]
    except (BusError, ValueError):
        pass  # rare: redone one by one, to keep the good ones
    out: list[InMsg] = []
    for raw in raws:
        try:
            out.append(_in_msg(raw))
        except (BusError, ValueError) as exc:
            BUS_ERRORS.labels(kind="bad_reply").inc()
            log.warning("bus.bad_delivery", consumer=what, error=describe_error(exc))
    return out


def _direct_msg(msg: NatsMsg) -> InMsg | None:
    headers = msg.headers or {}
    status = headers.get("Status")
    if status == "404":
        return None
    if status is not None:
        raise BusError(f"direct get failed: {status} {headers.get('Description', '')}".strip())
    user_headers = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
    for key in (_HDR_MSG_ID, _HDR_EXPECTED_LAST_SUBJECT_SEQ):
        if key in headers:
            user_headers[key] = headers[key]
    return InMsg(
        subject=headers["Nats-Subject"],
        data=msg.data,
        stream_seq=int(headers["Nats-Sequence"]),
        headers=user_headers,
    )


def _ns(seconds: float | None) -> int:
    return round((seconds or 0.0) * 1e9)
