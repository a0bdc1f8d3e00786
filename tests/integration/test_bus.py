"""The JetStream bus against a real nats-server (embedded unless LEDGERFLUX_TEST_NATS_URL)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import trio
from nats.aio.msg import Msg as NatsMsg
from prometheus_client import REGISTRY

from ledgerflux.bus import (
    Bus,
    BusError,
    BusUnavailable,
    ConsumerConfigMismatch,
    InMsg,
    NoResponders,
    OutMsg,
    PubAck,
    PublishFailed,
    PublishFenced,
    PublishRefused,
    StreamConfigMismatch,
    StreamState,
    _in_msgs,
    open_bus,
)
from ledgerflux.config import NatsConfig
from ledgerflux.embedded.nats import EmbeddedNats
from ledgerflux.subjects import MD_STREAM, TICKS_STREAM

pytestmark = pytest.mark.nats

SUBJECT = "lf.md.test.BTC-USD"


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with open_bus(NatsConfig(), url=nats_url) as bus:
        with trio.fail_after(30):
            await bus.ensure_streams()
        yield bus


def _msgs(n: int, *, start: int = 0, subject: str = SUBJECT) -> list[OutMsg]:
    return [
        OutMsg(subject=subject, data=b'{"n":%d}' % i, msg_id=f"{subject}:{i}")
        for i in range(start, start + n)
    ]


async def _receive(channel: trio.MemoryReceiveChannel[list[InMsg]], n: int) -> list[InMsg]:
    out: list[InMsg] = []
    while len(out) < n:
        out.extend(await channel.receive())
    return out


async def _until_acked(bus: Bus, durable: str, pending: int = 0) -> None:
    """Acks are fire-and-forget: wait until the server has applied them."""
    for _ in range(500):
        if await bus.consumer_pending(MD_STREAM, durable) == pending:
            return
        await trio.sleep(0.01)
    left = await bus.consumer_pending(MD_STREAM, durable)
    raise AssertionError(f"{durable}: {left} pending, expected {pending}")


async def _loop_tasks(bus: Bus) -> int:
    """Tasks alive on the bus's asyncio loop, not counting the one asking."""

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return await bus._bridge.run(count)


# --------------------------------------------------------------------------- streams


async def test_ensure_streams_is_idempotent(bus: Bus) -> None:
    with trio.fail_after(30):
        await bus.ensure_streams()
        await bus.ensure_streams()
        assert await bus.stream_state(MD_STREAM) == StreamState(first_seq=0, last_seq=0, messages=0)
        assert (await bus.stream_state(TICKS_STREAM)).messages == 0


async def test_ensure_streams_refuses_a_different_config(bus: Bus, nats_url: str) -> None:
    with trio.fail_after(30):
        other = NatsConfig(md_max_age_s=60.0, md_max_bytes=1 << 20)
        async with open_bus(other, url=nats_url) as other_bus:
            with pytest.raises(StreamConfigMismatch, match="LF_MD") as info:
                await other_bus.ensure_streams()
        assert info.value.stream == MD_STREAM
        assert set(info.value.fields) == {"max_age_ns", "max_bytes"}
        assert info.value.fields["max_bytes"] == (4 << 30, 1 << 20)


# --------------------------------------------------------------------------- publish


async def test_publish_batch_acks_in_order_and_dedups_by_msg_id(bus: Bus) -> None:
    with trio.fail_after(30):
        msgs = _msgs(3)
        first = await bus.publish_batch(msgs)
        assert first == [PubAck(stream=MD_STREAM, seq=s, duplicate=False) for s in (1, 2, 3)]
        again = await bus.publish_batch(msgs)
        assert again == [PubAck(stream=MD_STREAM, seq=s, duplicate=True) for s in (1, 2, 3)]
        assert await bus.stream_state(MD_STREAM) == StreamState(1, 3, 3)
        assert await bus.publish_batch([]) == []


async def test_direct_get_returns_whole_messages(bus: Bus) -> None:
    with trio.fail_after(30):
        await bus.publish_batch(_msgs(2) + _msgs(1, start=7, subject="lf.md.test.ETH-USD"))
        expected_last = InMsg(
            subject=SUBJECT,
            data=b'{"n":1}',
            stream_seq=2,
            headers={"Nats-Msg-Id": f"{SUBJECT}:1"},
        )
        assert await bus.last_for_subject(MD_STREAM, SUBJECT) == expected_last
        assert await bus.get_msg(MD_STREAM, 3) == InMsg(
            subject="lf.md.test.ETH-USD",
            data=b'{"n":7}',
            stream_seq=3,
            headers={"Nats-Msg-Id": "lf.md.test.ETH-USD:7"},
        )
        assert await bus.get_msg(MD_STREAM, 99) is None
        assert await bus.last_for_subject(MD_STREAM, "lf.md.test.NONE") is None


async def test_publish_without_msg_id_gets_one(bus: Bus) -> None:
    with trio.fail_after(30):
        results = await bus.publish_batch([OutMsg(subject=SUBJECT, data=b"x")] * 2)
        assert results == [
            PubAck(stream=MD_STREAM, seq=1, duplicate=False),
            PubAck(stream=MD_STREAM, seq=2, duplicate=False),
        ]


async def test_wrong_last_subject_sequence_is_fenced(bus: Bus) -> None:
    with trio.fail_after(30):
        other = "lf.md.test.OTHER"
        await bus.publish_batch(_msgs(1, subject=other))  # seq 1, on another subject
        first = OutMsg(subject=SUBJECT, data=b"a", msg_id="a", expected_last_subject_seq=0)
        assert await bus.publish_batch([first]) == [PubAck(MD_STREAM, 2, False)]
        # A second writer that still believes the subject is empty is fenced off...
        stale = OutMsg(subject=SUBJECT, data=b"b", msg_id="b", expected_last_subject_seq=0)
        [result] = await bus.publish_batch([stale])
        assert isinstance(result, PublishFenced)
        assert result.subject == SUBJECT
        # ...while the owner, who knows the last sequence, goes on.
        good = OutMsg(subject=SUBJECT, data=b"c", msg_id="c", expected_last_subject_seq=2)
        assert await bus.publish_batch([good]) == [PubAck(MD_STREAM, 3, False)]


async def test_publish_to_a_subject_without_stream_fails_after_retries(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The retry budget runs on the asyncio loop's real clock: shorten it for the test.
    monkeypatch.setattr("ledgerflux.bus.publishing.PUBLISH_RETRY_BUDGET_S", 0.3)
    with trio.fail_after(30):
        [result] = await bus.publish_batch([OutMsg(subject="lf.nostream.x", data=b"")])
        assert isinstance(result, PublishRefused)
        assert (result.subject, result.reason) == ("lf.nostream.x", "no_stream")
        assert "lf.nostream.x" in str(result)


async def test_no_responders_without_jetstream_answering_stays_retryable(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the JetStream API does not answer (a server restarting) a publish nobody
    answered is a plain, retryable PublishFailed, never a refusal."""
    monkeypatch.setattr("ledgerflux.bus.publishing.PUBLISH_RETRY_BUDGET_S", 0.3)

    async def no_answer(self: object, subjects: set[str]) -> set[str]:
        return set()

    monkeypatch.setattr("ledgerflux.bus._Publisher._subjects_without_stream", no_answer)
    with trio.fail_after(30):
        [result] = await bus.publish_batch([OutMsg(subject="lf.nostream.x", data=b"")])
        assert isinstance(result, PublishFailed)
        assert not isinstance(result, PublishRefused)


async def test_max_payload_is_the_servers(bus: Bus) -> None:
    assert bus.max_payload == 1024 * 1024  # nats-server's default, read from its INFO


async def test_a_message_over_max_payload_is_refused_at_once(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Too large is permanent: refused before it is sent (the server would close the
    connection), with subject and size; the messages around it are published and the
    connection stays up."""
    monkeypatch.setattr("ledgerflux.bus.publishing.PUBLISH_RETRY_BUDGET_S", 60.0)
    limit = bus.max_payload
    with trio.fail_after(20):
        huge = OutMsg(subject=SUBJECT, data=b"x" * (limit + 1), msg_id="huge")
        # The payload alone fits; with its Nats-Msg-Id header it does not.
        edge = OutMsg(subject=SUBJECT, data=b"y" * (limit - 8), msg_id="edge")
        first, refused, over, last = await bus.publish_batch(
            [*_msgs(1), huge, edge, *_msgs(1, start=1)]
        )
        assert first == PubAck(MD_STREAM, 1, False)
        assert last == PubAck(MD_STREAM, 2, False)
        for result in (refused, over):
            assert isinstance(result, PublishRefused)
            assert result.reason == "too_large"
            assert result.subject == SUBJECT
            assert result.size > limit
        assert bus.reconnects == 0
        assert await bus.publish_batch(_msgs(1, start=2)) == [PubAck(MD_STREAM, 3, False)]


# --------------------------------------------------------------------------- pull


async def test_pull_fetch_ack_and_nak_redelivers(bus: Bus) -> None:
    with trio.fail_after(30):
        await bus.publish_batch(_msgs(5))
        async with bus.pull(MD_STREAM, "test-pull", "lf.md.>", batch=10) as consumer:
            first = await consumer.fetch(timeout_s=2)
            assert [m.stream_seq for m in first] == [1, 2, 3, 4, 5]
            assert first[0] == InMsg(
                subject=SUBJECT,
                data=b'{"n":0}',
                stream_seq=1,
                headers={"Nats-Msg-Id": f"{SUBJECT}:0"},
                num_delivered=1,
            )
            await consumer.ack(first[:3])
            await consumer.nak(first[3:])
            again: list[InMsg] = []
            while len(again) < 2:
                again += await consumer.fetch(timeout_s=2)
            assert [(m.stream_seq, m.num_delivered) for m in again] == [(4, 2), (5, 2)]
            await consumer.ack(again)
            assert await consumer.fetch(timeout_s=0.2) == []
        await _until_acked(bus, "test-pull")
        assert await bus.consumer_pending(MD_STREAM, "missing") == 0


async def test_pull_consumer_is_durable_and_idempotent(bus: Bus) -> None:
    with trio.fail_after(30):
        await bus.publish_batch(_msgs(4))
        async with bus.pull(MD_STREAM, "test-durable", "lf.md.>", batch=2) as consumer:
            batch = await consumer.fetch(timeout_s=2)
            assert [m.stream_seq for m in batch] == [1, 2]
            await consumer.ack(batch)
        await _until_acked(bus, "test-durable", pending=2)
        async with bus.pull(MD_STREAM, "test-durable", "lf.md.>", batch=2) as consumer:
            assert [m.stream_seq for m in await consumer.fetch(timeout_s=2)] == [3, 4]
        with pytest.raises(BusError, match="filter"):
            async with bus.pull(MD_STREAM, "test-durable", "lf.md.other.>"):
                pass


def _bus_errors(kind: str) -> float:
    return REGISTRY.get_sample_value("ledgerflux_bus_errors_total", {"kind": kind}) or 0.0


async def test_existing_consumer_with_another_config_is_a_mismatch(bus: Bus) -> None:
    with trio.fail_after(30):
        async with bus.pull(MD_STREAM, "test-config", "lf.md.>", ack_wait_s=30.0):
            pass
        # The same config again is accepted...
        async with bus.pull(MD_STREAM, "test-config", "lf.md.>", ack_wait_s=30.0) as consumer:
            await bus.publish_batch(_msgs(1))
            assert [m.stream_seq for m in await consumer.fetch(timeout_s=5)] == [1]
        # ...another ack wait or max ack pending is refused, naming every difference.
        with pytest.raises(ConsumerConfigMismatch, match="test-config") as info:
            async with bus.pull(
                MD_STREAM, "test-config", "lf.md.>", ack_wait_s=5.0, max_ack_pending=10
            ):
                pass
        assert (info.value.stream, info.value.durable) == (MD_STREAM, "test-config")
        assert info.value.fields == {
            "ack_wait_ns": (30_000_000_000, 5_000_000_000),
            "max_ack_pending": (10_000, 10),
        }
        with pytest.raises(ConsumerConfigMismatch) as info:
            async with bus.pull(MD_STREAM, "test-config", SUBJECT):
                pass
        assert info.value.fields == {"filter_subject": ("lf.md.>", SUBJECT)}


async def test_fetch_returns_what_is_there_without_waiting_to_fill_the_batch(bus: Bus) -> None:
    with trio.fail_after(30):
        await bus.publish_batch(_msgs(3))
        async with bus.pull(MD_STREAM, "test-partial", "lf.md.>", batch=100) as consumer:
            # A fetch that waited for a full batch would only return after 60 s.
            got = await consumer.fetch(timeout_s=60)
            assert [m.stream_seq for m in got] == [1, 2, 3]
            await consumer.ack(got)

            async def publish_later() -> None:
                await trio.sleep(0.1)
                await bus.publish_batch(_msgs(2, start=3))

            got = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_later)
                while len(got) < 2:  # the two may come in one fetch or in two
                    got += await consumer.fetch(timeout_s=60)
            assert [(m.stream_seq, m.num_delivered) for m in got] == [(4, 1), (5, 1)]
            await consumer.ack(got)
        await _until_acked(bus, "test-partial")


async def test_a_full_batch_ends_the_request(bus: Bus) -> None:
    with trio.fail_after(30):
        await bus.publish_batch(_msgs(7))
        async with bus.pull(MD_STREAM, "test-full", "lf.md.>", batch=3) as consumer:
            batches = [await consumer.fetch(timeout_s=60) for _ in range(3)]
            assert [[m.stream_seq for m in b] for b in batches] == [[1, 2, 3], [4, 5, 6], [7]]
            await consumer.ack([m for b in batches for m in b])
            assert await consumer.fetch(timeout_s=0.2) == []
        await _until_acked(bus, "test-full")


async def test_messages_for_a_cancelled_fetch_are_not_redelivered_later(bus: Bus) -> None:
    with trio.fail_after(30):
        async with bus.pull(MD_STREAM, "test-late", "lf.md.>", ack_wait_s=60.0) as consumer:
            with trio.move_on_after(0.2):
                await consumer.fetch(timeout_s=30)
            # The abandoned request is still open on the server and takes these messages.
            await bus.publish_batch(_msgs(2))
            got: list[InMsg] = []
            while len(got) < 2:
                got += await consumer.fetch(timeout_s=5)
            assert [(m.stream_seq, m.num_delivered) for m in got] == [(1, 1), (2, 1)]
            await consumer.ack(got)
        await _until_acked(bus, "test-late")


async def test_nak_with_delay_redelivers(bus: Bus) -> None:
    with trio.fail_after(30):
        await bus.publish_batch(_msgs(1))
        async with bus.pull(MD_STREAM, "test-nak-delay", "lf.md.>") as consumer:
            [first] = await consumer.fetch(timeout_s=5)
            await consumer.nak([first], delay_s=0.2)
            again: list[InMsg] = []
            while not again:
                again = await consumer.fetch(timeout_s=2)
            assert [(m.stream_seq, m.num_delivered) for m in again] == [(1, 2)]
            await consumer.ack(again)
        await _until_acked(bus, "test-nak-delay")


async def test_deleted_consumer_is_an_empty_fetch_not_an_error(bus: Bus) -> None:
    with trio.fail_after(30):
        refused = _bus_errors("pull_status")

        async def delete() -> None:
            await trio.sleep(0.2)
            await bus._bridge.run(lambda: bus._jsctx.delete_consumer(MD_STREAM, "test-deleted"))

        async with (
            bus.pull(MD_STREAM, "test-deleted", "lf.md.>") as consumer,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(delete)
            # The server ends the waiting request with "409 Consumer Deleted".
            assert await consumer.fetch(timeout_s=2) == []
        assert _bus_errors("pull_status") == refused + 1


async def test_a_delivery_that_is_not_from_jetstream_is_counted_and_dropped(bus: Bus) -> None:
    with trio.fail_after(30):
        dropped = _bus_errors("bad_reply")
        async with bus.pull(MD_STREAM, "test-bad", "lf.md.>") as consumer:
            inbox = f"{consumer._session._inbox}.0"

            async def inject() -> None:
                await bus._client.publish(inbox, b"junk", reply="not.a.js.ack")
                await bus._client.flush()

            await bus._bridge.run(inject)
            await bus.publish_batch(_msgs(1))
            got: list[InMsg] = []
            while not got:
                got = await consumer.fetch(timeout_s=2)
            assert [m.stream_seq for m in got] == [1]
            await consumer.ack(got)
        assert _bus_errors("bad_reply") == dropped + 1


# --------------------------------------------------------------------------- ordered


async def test_ordered_from_start_seq_then_live(bus: Bus) -> None:
    with trio.fail_after(30):
        await bus.publish_batch(_msgs(10))
        async with bus.ordered(MD_STREAM, "lf.md.>", start_seq=4) as channel:
            got = await _receive(channel, 7)
            assert [m.stream_seq for m in got] == list(range(4, 11))
            assert got[0].data == b'{"n":3}'
            await bus.publish_batch(_msgs(2, start=10))
            live = await _receive(channel, 2)
            assert [m.stream_seq for m in live] == [11, 12]


async def test_ordered_without_start_seq_sees_only_new_messages(bus: Bus) -> None:
    with trio.fail_after(30):
        await bus.publish_batch(_msgs(3))
        async with bus.ordered(MD_STREAM, SUBJECT) as channel:
            await bus.publish_batch(_msgs(1, start=3))
            [only] = await _receive(channel, 1)
            assert only.stream_seq == 4


async def test_slow_ordered_consumer_is_bounded_by_the_channel(bus: Bus) -> None:
    with trio.fail_after(60):
        total = 3000
        for start in range(0, total, 500):
            await bus.publish_batch(_msgs(500, start=start))
        async with bus.ordered(
            MD_STREAM, "lf.md.>", start_seq=1, max_batch=10, buffer_batches=2
        ) as channel:
            # Nobody reads: the pump fills the channel, then blocks in send().
            stats = channel.statistics()
            while stats.tasks_waiting_send == 0:
                await trio.sleep(0.01)
                stats = channel.statistics()
            await trio.sleep(0.3)  # time for an unbounded design to overrun
            stats = channel.statistics()
            assert stats.current_buffer_used == 2
            assert stats.tasks_waiting_send == 1
            got = await _receive(channel, total)
            assert [m.stream_seq for m in got] == list(range(1, total + 1))
            assert all(len(m.data) > 0 for m in got)


# --------------------------------------------------------------------------- cancellation


async def test_cancelling_a_crossing_cancels_the_asyncio_task(bus: Bus) -> None:
    events: list[str] = []

    async def forever() -> None:
        events.append("started")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    with trio.fail_after(10):
        with trio.move_on_after(0.2):
            await bus._bridge.run(forever)
        # The Trio call returned only after the asyncio task had finished.
        assert events == ["started", "cancelled"]


async def test_cancelled_fetch_returns_promptly(bus: Bus) -> None:
    with trio.fail_after(10):
        baseline = await _loop_tasks(bus)
        async with bus.pull(MD_STREAM, "test-cancel", "lf.md.>") as consumer:
            with trio.move_on_after(0.2) as scope:
                await consumer.fetch(timeout_s=60)
            assert scope.cancelled_caught
            await bus.publish_batch(_msgs(1))
            assert [m.stream_seq for m in await consumer.fetch(timeout_s=5)] == [1]
        assert await _loop_tasks(bus) <= baseline


async def test_cancelled_publish_returns_promptly(bus: Bus) -> None:
    with trio.fail_after(10):
        baseline = await _loop_tasks(bus)
        with trio.move_on_after(0.2) as scope:
            # No stream on this subject: the publish would retry for the whole budget.
            await bus.publish_batch([OutMsg(subject="lf.nostream.y", data=b"")] * 5)
        assert scope.cancelled_caught
        assert await _loop_tasks(bus) <= baseline


# --------------------------------------------------------------------------- failures


@pytest.mark.slow
async def test_server_restart_while_publishing_loses_nothing_acked(
    nats_server: EmbeddedNats,
) -> None:
    total, batch = 2000, 50
    acked: dict[str, int] = {}
    quarter_acked = trio.Event()
    with trio.fail_after(120):
        async with open_bus(NatsConfig(), url=nats_server.url) as bus:
            await bus.ensure_streams()

            async def publisher() -> None:
                pending = _msgs(total)
                while pending:
                    chunk, pending = pending[:batch], pending[batch:]
                    results = await bus.publish_batch(chunk)
                    for msg, result in zip(chunk, results, strict=True):
                        if isinstance(result, PubAck):
                            assert msg.msg_id is not None
                            acked[msg.msg_id] = result.seq
                            if len(acked) >= total // 4:
                                quarter_acked.set()
                        else:
                            assert isinstance(result, PublishFailed), result
                            pending.append(msg)  # what an ingestor does: publish again

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher)
                await quarter_acked.wait()
                await nats_server.restart()

            assert len(acked) == total
            assert bus.reconnects >= 1
            state = await bus.stream_state(MD_STREAM)
            stored: list[str] = []
            for seq in range(state.first_seq, state.last_seq + 1):
                msg = await bus.get_msg(MD_STREAM, seq)
                assert msg is not None
                stored.append(msg.headers["Nats-Msg-Id"])
    assert sorted(stored) == sorted(acked)  # every acked message, exactly once
    assert {acked[msg_id] for msg_id in stored} <= set(range(1, state.last_seq + 1))


async def test_closed_port_is_bus_unavailable_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"nats://127.0.0.1:{port}"
    with trio.fail_after(30), pytest.raises(BusUnavailable, match=f"127.0.0.1:{port}"):
        async with open_bus(NatsConfig(connect_attempts=2, connect_timeout_s=1), url=url):
            pass


@pytest.mark.slow
async def test_ordered_and_pull_consumers_survive_a_server_restart(
    nats_server: EmbeddedNats,
) -> None:
    with trio.fail_after(120):
        async with open_bus(NatsConfig(), url=nats_server.url) as bus:
            await bus.ensure_streams()
            await bus.publish_batch(_msgs(5))
            async with (
                bus.ordered(MD_STREAM, "lf.md.>", start_seq=1) as channel,
                bus.pull(MD_STREAM, "test-restart", "lf.md.>", batch=100) as consumer,
            ):
                assert [m.stream_seq for m in await _receive(channel, 5)] == [1, 2, 3, 4, 5]
                first = await consumer.fetch(timeout_s=5)
                assert [m.stream_seq for m in first] == [1, 2, 3, 4, 5]
                await consumer.ack(first)
                await _until_acked(bus, "test-restart")

                await nats_server.restart()
                results = await bus.publish_batch(_msgs(5, start=5))
                assert all(isinstance(r, PubAck) for r in results), results

                # The ordered consumer is recreated from the last delivered sequence...
                assert [m.stream_seq for m in await _receive(channel, 5)] == [6, 7, 8, 9, 10]
                # ...and the durable pull consumer is still there: no loss, no redelivery.
                got: list[InMsg] = []
                while len(got) < 5:
                    got += await consumer.fetch(timeout_s=1)
                assert [(m.stream_seq, m.num_delivered) for m in got] == [
                    (6, 1),
                    (7, 1),
                    (8, 1),
                    (9, 1),
                    (10, 1),
                ]
                await consumer.ack(got)
            await _until_acked(bus, "test-restart")


async def test_bus_unavailable_does_not_reveal_credentials() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"nats://lf:hunter2@127.0.0.1:{port}"
    with trio.fail_after(30), pytest.raises(BusUnavailable) as info:
        async with open_bus(NatsConfig(connect_attempts=1, connect_timeout_s=1), url=url):
            pass
    assert f"nats://***@127.0.0.1:{port}" in str(info.value)
    assert "hunter2" not in str(info.value)


async def test_a_closed_bus_raises_instead_of_hanging(nats_url: str) -> None:
    with trio.fail_after(30):
        async with open_bus(NatsConfig(), url=nats_url) as closed:
            pass
        with pytest.raises(BusError, match="closed"):
            await closed.publish_batch(_msgs(1))


# --------------------------------------------------------------------------- pipelining


async def test_a_pipelined_batch_is_stored_in_batch_order(bus: Bus) -> None:
    with trio.fail_after(30):
        other = "lf.md.test.ETH-USD"
        msgs = [
            m
            for i in range(300)
            for m in (_msgs(1, start=i)[0], _msgs(1, start=i, subject=other)[0])
        ]
        results = await bus.publish_batch(msgs)
        assert results == [PubAck(MD_STREAM, seq, False) for seq in range(1, 601)]
        assert (await bus.get_msg(MD_STREAM, 599)) == InMsg(
            subject=SUBJECT,
            data=b'{"n":299}',
            stream_seq=599,
            headers={"Nats-Msg-Id": f"{SUBJECT}:299"},
        )


async def test_a_refused_message_fails_at_once_and_the_rest_is_published(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long budget: a refused message that was retried would make the test time out.
    monkeypatch.setattr("ledgerflux.bus.publishing.PUBLISH_RETRY_BUDGET_S", 60.0)
    with trio.fail_after(10):
        bad = OutMsg(subject="lf.md.test.not valid", data=b"x", msg_id="bad")
        stale = OutMsg(subject=SUBJECT, data=b"y", msg_id="stale", expected_last_subject_seq=7)
        first, refused, fenced, last = await bus.publish_batch(
            [*_msgs(1), bad, stale, *_msgs(1, start=1)]
        )
        assert first == PubAck(MD_STREAM, 1, False)
        assert isinstance(refused, PublishRefused)
        assert refused.reason == "bad_subject"
        assert "not valid" in str(refused)
        assert isinstance(fenced, PublishFenced)
        assert last == PubAck(MD_STREAM, 2, False)


async def test_a_publish_waits_for_the_stream_to_appear(nats_url: str) -> None:
    """No responders (no stream yet, as while a server restarts) is retried with the same
    msg id until the stream exists."""
    with trio.fail_after(30):
        async with open_bus(NatsConfig(), url=nats_url) as bus:
            results: list[PubAck | BusError] = []

            async def publish() -> None:
                results.extend(await bus.publish_batch(_msgs(3)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                await trio.sleep(0.3)
                await bus.ensure_streams()
            assert results == [PubAck(MD_STREAM, seq, False) for seq in (1, 2, 3)]
            assert await bus.stream_state(MD_STREAM) == StreamState(1, 3, 3)


async def test_ordered_batches_respect_max_batch(bus: Bus) -> None:
    with trio.fail_after(30):
        await bus.publish_batch(_msgs(1000))
        seqs: list[int] = []
        async with bus.ordered(MD_STREAM, "lf.md.>", start_seq=1, max_batch=64) as channel:
            while len(seqs) < 1000:
                batch = await channel.receive()
                assert 1 <= len(batch) <= 64
                seqs.extend(m.stream_seq for m in batch)
        assert seqs == list(range(1, 1001))


def test_a_delivery_that_is_not_from_jetstream_is_dropped_from_an_ordered_batch() -> None:
    good = NatsMsg(
        _client=None,  # type: ignore[arg-type]
        subject=SUBJECT,
        reply=f"$JS.ACK.{MD_STREAM}.c1.2.41.7.1763600000000000000.0",
        data=b"ok",
        headers=None,
    )
    bad = NatsMsg(_client=None, subject=SUBJECT, reply="not.a.js.ack", data=b"x")  # type: ignore[arg-type]
    dropped = _bus_errors("bad_reply")
    [only] = _in_msgs([good, bad], what="test")
    assert only == InMsg(subject=SUBJECT, data=b"ok", stream_seq=41, headers={}, num_delivered=2)
    assert _bus_errors("bad_reply") == dropped + 1


# --------------------------------------------------------------------------- core request/reply


async def test_core_requests_cross_in_batches_and_get_their_replies(bus: Bus) -> None:
    with trio.fail_after(20):
        async with bus.subscribe(["lf.ctl.test.a", "lf.ctl.test.b"]) as requests:
            answers: dict[str, bytes] = {}

            async def ask(subject: str, body: bytes) -> None:
                answers[subject] = await bus.request(subject, body, timeout_s=5)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "lf.ctl.test.a", b"1")
                nursery.start_soon(ask, "lf.ctl.test.b", b"2")
                seen = 0
                async for batch in requests:
                    await bus.respond([(m.reply, m.subject.encode() + m.data) for m in batch])
                    seen += len(batch)
                    if seen == 2:
                        break
        assert answers == {"lf.ctl.test.a": b"lf.ctl.test.a1", "lf.ctl.test.b": b"lf.ctl.test.b2"}
        # Unsubscribed on exit: nobody listens any more, and the server says so at once.
        with pytest.raises(NoResponders, match=r"lf\.ctl\.test\.a"):
            await bus.request("lf.ctl.test.a", b"", timeout_s=5)
