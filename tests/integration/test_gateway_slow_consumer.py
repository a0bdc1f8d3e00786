"""The slow-consumer policy over real WebSockets (Hypercorn on port 0, in-memory LF_MD):
a backlog burst that a reading client works through never closes it; a client that does
not read is closed with 4001, its queue bounded, and the close logged with its fields."""

from __future__ import annotations

import httpx
import orjson
import structlog
import trio

from ledgerflux.codec import encode
from ledgerflux.testing.websocket import open_websocket_url
from tests.integration.test_gateway import read_until_closed, receive, request, running_gateway
from tests.unit.gateway.fakes import PRODUCT, FakeBus, mixed, trade

BURST = 20_000


async def test_a_reading_client_absorbs_a_restart_backlog_burst() -> None:
    # The issue: after a normalizer restart the backlog arrives as one burst, far faster
    # than a client reads. It used to overflow a 1000-event queue and close with 4001.
    with trio.fail_after(120):
        bus = FakeBus()
        async with running_gateway(bus, slow_consumer_after_s=120.0) as gw:
            async with open_websocket_url(gw.info.ws_url) as ws:
                await request(ws, op="subscribe", id=1, products=[PRODUCT], batch=True)
                await receive(ws, 1)
                for seq in range(1, BURST + 1):
                    bus.publish(mixed(seq))
                seqs: list[int] = []
                while len(seqs) < BURST:
                    frame = orjson.loads(await ws.get_message())
                    messages = frame if isinstance(frame, list) else [frame]
                    seqs.extend(m["seq"] for m in messages)
                    await trio.sleep(0.002)  # steady, slower than the burst arrives
                assert seqs == list(range(1, BURST + 1))
                await request(ws, op="ping", id=2)
                assert await receive(ws, 1) == [{"type": "pong", "id": 2}]
            async with httpx.AsyncClient(base_url=gw.info.url) as http:
                metrics = (await http.get("/metrics")).text
            assert "ledgerflux_gateway_slow_consumers_total 0.0" in metrics


async def test_a_client_that_does_not_read_is_closed_4001_with_bounded_memory() -> None:
    queue_bytes = 64 * 1024
    with trio.fail_after(60), structlog.testing.capture_logs() as logs:
        bus = FakeBus()
        async with (
            running_gateway(bus, send_queue_bytes=queue_bytes) as gw,
            open_websocket_url(gw.info.ws_url, message_queue_size=0) as ws,
            httpx.AsyncClient(base_url=gw.info.url) as http,
        ):
            await request(ws, op="subscribe", id=1, products=[PRODUCT], channels=["trades"])
            await receive(ws, 1)
            # Big events, gently (each step is well under the bound, so a reading client
            # keeps up): they fill the socket buffers, then the queue's byte bound.
            seq = 0
            while not any(e["event"] == "slow consumer closed" for e in logs):
                for _ in range(20):
                    seq += 1
                    bus.publish(trade(seq, trade_id="x" * 2000))
                await trio.sleep(0.01)
                assert seq < 1_000_000, "never closed"
            metrics = (await http.get("/metrics")).text
            assert "ledgerflux_gateway_slow_consumers_total 1.0" in metrics
            assert "ledgerflux_gateway_clients 0.0" in metrics  # detached, queue dropped
            # Now read: what arrived is an exact prefix, then the 4001 close.
            messages, code = await read_until_closed(ws)
            assert code == 4001
            received = [m["seq"] for m in messages]
            assert received == list(range(1, len(received) + 1))
            assert len(received) < seq
    (line,) = [e for e in logs if e["event"] == "slow consumer closed"]
    assert line["code"] == 4001
    assert line["client"].startswith("127.0.0.1:")
    assert line["product"] == PRODUCT
    assert line["products"] == [PRODUCT]
    assert line["why"] == f"more than {queue_bytes} bytes queued"
    assert 0 < line["queued_bytes"] <= queue_bytes + 2100
    size = len(encode(trade(1, trade_id="x" * 2000)))  # within a few digits of every one
    assert abs(line["queued_bytes"] - line["queued_events"] * size) < line["queued_events"] * 20
