"""What a JetStream publish reply means to the bus: ack, fenced, refused, or retry."""

from __future__ import annotations

import orjson
from nats.aio.msg import Msg

from ledgerflux.bus import PubAck, PublishFenced, PublishRefused, _pub_outcome


def reply(body: dict[str, object]) -> Msg:
    return Msg(_client=None, subject="_INBOX.x.1", reply="", data=orjson.dumps(body))  # type: ignore[arg-type]


def error(code: int, err_code: int, description: str) -> Msg:
    return reply({"error": {"code": code, "err_code": err_code, "description": description}})


def test_an_ack() -> None:
    assert _pub_outcome("lf.md.x.y", reply({"stream": "LF_MD", "seq": 7}), 10) == PubAck(
        "LF_MD", 7, duplicate=False
    )


def test_a_compared_fence_mismatch_is_fenced() -> None:
    outcome = _pub_outcome("lf.md.x.y", error(400, 10071, "wrong last sequence: 41"), 10)
    assert isinstance(outcome, PublishFenced)


def test_a_fence_not_compared_because_a_write_is_in_flight_is_retried() -> None:
    # A clustered stream answers 10164 without comparing: it decides nothing.
    outcome = _pub_outcome("lf.md.x.y", error(400, 10164, "wrong last sequence"), 10)
    assert isinstance(outcome, str)
    assert "in flight" in outcome


def test_another_jetstream_error_is_refused_for_good() -> None:
    outcome = _pub_outcome("lf.md.x.y", error(400, 10054, "maximum messages exceeded"), 10)
    assert isinstance(outcome, PublishRefused)
