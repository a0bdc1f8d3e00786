"""ledgerflux.client's message handling in memory: what the loop sees for parts, replays,
resets, snapshots and replies (the socket side is tested in tests/integration)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from ledgerflux.client import Client, _Subscription

P = "coinbase:BTC-USD"


def event(seq: int, epoch: str = "e1", **extra: Any) -> dict[str, Any]:
    return {"type": "trade", "product": P, "seq": seq, "epoch": epoch, **extra}


def part(seq: int, index: int, parts: int, bids: list[Any]) -> dict[str, Any]:
    return {
        "type": "book",
        "product": P,
        "seq": seq,
        "epoch": "e1",
        "snapshot": True,
        "bids": bids,
        "asks": [],
        "part": index,
        "parts": parts,
    }


async def handled(client: Client, *messages: dict[str, Any]) -> list[dict[str, Any]]:
    for message in messages:
        await client._handle(message)
    out = []
    while True:
        try:
            out.append(client._receive.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_replays_at_or_below_what_was_queued_are_dropped_and_a_new_epoch_passes() -> None:
    client = Client(["ws://x/ws"])
    got = await handled(client, event(1), event(2), event(2), event(1), event(3))
    assert [m["seq"] for m in got] == [1, 2, 3]
    # A new epoch starts a new seq space: its seq 1 is not a replay.
    assert await handled(client, event(1, "e2"), event(2, "e2")) == [event(1, "e2"), event(2, "e2")]


async def test_book_parts_are_merged_into_one_message() -> None:
    client = Client(["ws://x/ws"])
    got = await handled(
        client,
        part(5, 0, 3, [["3", "1"]]),
        part(5, 1, 3, [["2", "1"]]),
        part(5, 2, 3, [["1", "1"]]),
    )
    assert got == [
        {
            "type": "book",
            "product": P,
            "seq": 5,
            "epoch": "e1",
            "snapshot": True,
            "bids": [["3", "1"], ["2", "1"], ["1", "1"]],
            "asks": [],
        }
    ]


@pytest.mark.parametrize(
    "broken",
    [
        [part(5, 0, 3, []), part(5, 2, 3, [])],  # a part skipped
        [part(5, 0, 3, []), part(6, 1, 3, [])],  # another seq
        [part(5, 0, 3, []), part(5, 1, 2, [])],  # another count
        [part(5, 1, 3, [])],  # no part 0
    ],
)
async def test_an_incomplete_collection_is_never_shown(broken: list[dict[str, Any]]) -> None:
    client = Client(["ws://x/ws"])
    assert await handled(client, *broken, part(5, 2, 3, [])) == []
    # The next complete snapshot is shown.
    whole = await handled(client, part(7, 0, 2, [["1", "1"]]), part(7, 1, 2, [["2", "2"]]))
    assert [(m["seq"], m["bids"]) for m in whole] == [(7, [["1", "1"], ["2", "2"]])]


async def test_snapshot_parts_merge_and_a_reset_restarts_the_product() -> None:
    client = Client(["ws://x/ws"])
    head = {"type": "snapshot", "product": P, "seq": 9, "epoch": "e1", "parts": 2}
    got = await handled(
        client,
        event(20),
        {**head, "part": 0, "book": {"state": "live", "bids": [["2", "1"]], "asks": []}},
        {**head, "part": 1, "book": {"state": "live", "bids": [], "asks": [["3", "1"]]}},
        event(10),
    )
    assert got[1] == {
        "type": "snapshot",
        "product": P,
        "seq": 9,
        "epoch": "e1",
        "book": {"state": "live", "bids": [["2", "1"]], "asks": [["3", "1"]]},
    }
    # The snapshot at 9 restarted the product: seq 10 follows it, though 20 came before.
    assert [m["seq"] for m in got] == [20, 9, 10]
    reset = {"type": "status", "product": P, "seq": 4, "epoch": "e1", "status": "reset"}
    assert await handled(client, reset, event(5)) == [reset, event(5)]


async def test_replies_resolve_subscriptions_and_the_resume_point_follows_the_queue() -> None:
    client = Client(["ws://x/ws"])
    sent: list[str] = []

    class FakeSocket:
        async def send_message(self, text: str) -> None:
            sent.append(text)

    sub = _Subscription((P,), {"snapshot": False})
    client._subscriptions.append(sub)  # what subscribe() does before sending
    await client._send_subscription(FakeSocket(), sub)  # type: ignore[arg-type]
    live_from = {P: {"seq": 41, "epoch": "e1"}}
    await handled(client, {"type": "subscribed", "id": sub.request_id, "live_from": live_from})
    assert sub.acked.is_set()
    assert sub.error is None
    await handled(client, event(42), event(43))
    await client._send_subscription(FakeSocket(), sub)  # type: ignore[arg-type]
    again = orjson.loads(sent[-1])
    assert again["from_seq"] == {P: 44}
    assert again["epoch"] == {P: "e1"}
    assert again["batch"] is True
