"""Authentication and connection limits over real WebSockets (Hypercorn on port 0): every
refusal is its documented HTTP status or close code, and counted on /metrics."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected

from ledgerflux.client import ClientError, _open_websocket, open_client
from ledgerflux.gateway.auth import mint_token
from ledgerflux.testing.websocket import open_websocket_url
from tests.integration.test_gateway import receive, request, running_gateway
from tests.unit.gateway.fakes import PRODUCT, FakeBus, mixed

KEYS = "k2025:0123456789abcdef0123,k2026:fedcba9876543210fedc"
NEW_SECRET = "fedcba9876543210fedc"


async def rejected(
    url: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[object, str]:
    """The HTTP status and body of a refused handshake, through the client's connection
    helper (it closes the socket; 401/403 are ClientError, 429 stays retryable)."""
    with pytest.raises((ConnectionRejected, ClientError)) as info:
        async with _open_websocket(url, extra_headers or [], 10.0, None):
            pass
    exc = info.value
    if isinstance(exc, ClientError):
        return exc.code, str(exc).split(f"HTTP {exc.code} ", 1)[1]
    return exc.status_code, (exc.body or b"").decode().strip()


async def metric(base: str, name: str) -> float:
    async with httpx.AsyncClient() as http:
        body = (await http.get(base + "/metrics")).text
    for line in body.splitlines():
        if line.startswith(f"ledgerflux_gateway_{name}_total "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} on /metrics")


async def test_without_anonymous_access_keys_and_tokens_are_required() -> None:
    with trio.fail_after(30):
        bus = FakeBus()
        bus.publish(mixed(1))
        async with running_gateway(bus, anonymous=False, api_keys=KEYS) as gw:
            url = gw.info.ws_url
            status, body = await rejected(url)
            assert (status, body) == (401, "credentials required")
            wrong = [(b"Authorization", b"Bearer k2026:0123456789abcdef0123")]
            assert await rejected(url, extra_headers=wrong) == (401, "invalid API key")
            # API keys are not accepted in the URL.
            assert (await rejected(url + "?token=k2026:" + NEW_SECRET))[0] == 401
            expired = mint_token("k2026", NEW_SECRET, int(time.time()) - 3600)
            assert await rejected(f"{url}?token={expired}") == (401, "token expired")
            assert await metric(gw.info.url, "auth_refused") == 4

            # Both active keys work (rotation): the API key in the header...
            for key in KEYS.split(","):
                headers = [(b"Authorization", f"Bearer {key}".encode())]
                async with open_websocket_url(url, extra_headers=headers) as ws:
                    await request(ws, op="subscribe", id=1, products=[PRODUCT], snapshot=True)
                    subscribed, snapshot = await receive(ws, 2)
                    assert subscribed["type"] == "subscribed"
                    assert (snapshot["type"], snapshot["seq"]) == ("snapshot", 1)
            # ... and a token in the query, limited to its products.
            token = mint_token("k2026", NEW_SECRET, int(time.time()) + 600, [PRODUCT])
            async with open_websocket_url(f"{url}?token={token}") as ws:
                await request(ws, op="subscribe", id=2, products=["coinbase:ETH-USD"])
                (error,) = await receive(ws, 1)
                assert error == {
                    "type": "error",
                    "id": 2,
                    "code": "forbidden_product",
                    "message": "the token does not allow 'coinbase:ETH-USD'",
                }
                await request(ws, op="subscribe", id=3, products=[PRODUCT])
                assert (await receive(ws, 1))[0]["type"] == "subscribed"
            assert await metric(gw.info.url, "forbidden_products") == 1

            # ledgerflux.client: a refused handshake and a refused subscription are errors.
            with pytest.raises(ClientError, match="HTTP 401 invalid API key"):
                async with open_client(url, token="k2026:0123456789abcdef0123"):
                    pass
            async with open_client(url, token=lambda: token) as client:
                with pytest.raises(ClientError, match="forbidden_product"):
                    await client.subscribe(["coinbase:ETH-USD"])
                await client.subscribe([PRODUCT], snapshot=True)
                assert (await client.receive())["seq"] == 1


async def test_a_token_connection_is_closed_4003_when_the_token_expires() -> None:
    with trio.fail_after(30):
        async with running_gateway(api_keys=KEYS, token_max_skew_s=0.0) as gw:
            token = mint_token("k2026", NEW_SECRET, int(time.time()) + 2)
            async with open_websocket_url(f"{gw.info.ws_url}?token={token}") as ws:
                await request(ws, op="ping", id=1)
                assert await receive(ws, 1) == [{"type": "pong", "id": 1}]
                code = None
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed as exc:
                    code = exc.reason.code
                assert code == 4003
            assert await metric(gw.info.url, "tokens_expired") == 1


async def test_origin_allow_list_and_per_ip_cap() -> None:
    with trio.fail_after(30):
        allowed = ("https://md.example.com",)
        async with running_gateway(allowed_origins=allowed, max_clients_per_ip=2) as gw:
            url = gw.info.ws_url
            evil = [(b"Origin", b"https://evil.example.com")]
            assert await rejected(url, extra_headers=evil) == (403, "origin not allowed")
            good = [(b"Origin", b"https://md.example.com")]
            async with open_websocket_url(url, extra_headers=good), open_websocket_url(url) as ws:
                # Two from 127.0.0.1 (one browser, one not): the third is refused.
                assert await rejected(url) == (429, "too many connections from this address")
                await request(ws, op="ping", id=1)
                assert await receive(ws, 1) == [{"type": "pong", "id": 1}]
            # The slots are given back when clients leave.
            async with open_websocket_url(url) as ws:
                await request(ws, op="ping", id=2)
                assert orjson.loads(await ws.get_message()) == {"type": "pong", "id": 2}
            assert await metric(gw.info.url, "origin_refused") == 1
            assert await metric(gw.info.url, "ip_limited") == 1


async def test_known_products_only_refuses_products_never_seen() -> None:
    with trio.fail_after(30):
        bus = FakeBus()
        bus.publish(mixed(1))
        async with (
            running_gateway(bus, known_products_only=True) as gw,
            open_websocket_url(gw.info.ws_url) as ws,
        ):
            await request(ws, op="subscribe", id=1, products=["coinbase:DOGE-USD"])
            (error,) = await receive(ws, 1)
            assert (error["code"], error["id"]) == ("unknown_product", 1)
            await request(ws, op="subscribe", id=2, products=[PRODUCT])
            assert (await receive(ws, 1))[0]["type"] == "subscribed"


async def test_a_reload_rotates_keys_and_turns_anonymous_access_off() -> None:
    """``ctl gateway reload`` applies access settings to connections opened afterwards:
    the new key works, the old one and anonymous clients are refused, the secret is not
    echoed in the reply, and a key set that would lock everyone out is refused whole."""
    from ledgerflux.config import Config, ConfigError, GatewayConfig
    from ledgerflux.control import ControlContext
    from ledgerflux.gateway import serve_gateway
    from tests.unit.gateway.fakes import FakeStore

    old_key, new_key = KEYS.split(",")
    bus = FakeBus()
    bus.publish(mixed(1))
    context = ControlContext()
    config = Config(gateway=GatewayConfig(port=0, api_keys=old_key), drain_timeout_s=5.0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            info = await nursery.start(
                lambda task_status: serve_gateway(
                    config, bus=bus, store=FakeStore(), control=context, task_status=task_status
                )
            )
            async with open_websocket_url(info.ws_url) as ws:  # anonymous, before
                await request(ws, op="subscribe", id=1, products=[PRODUCT])
                assert (await receive(ws, 1))[0]["type"] == "subscribed"
            reload = context.reloaders["gateway"]
            locked_out = Config(gateway=GatewayConfig(port=0, anonymous=False))
            with pytest.raises(ConfigError, match="no client could connect"):
                reload(locked_out)
            rotated = Config(gateway=GatewayConfig(port=0, anonymous=False, api_keys=new_key))
            assert reload(rotated) == {"gateway.anonymous": False, "gateway.api_keys": "changed"}
            assert await rejected(info.ws_url) == (401, "credentials required")
            old = [(b"Authorization", f"Bearer {old_key}".encode())]
            assert await rejected(info.ws_url, extra_headers=old) == (401, "invalid API key")
            new = [(b"Authorization", f"Bearer {new_key}".encode())]
            async with open_websocket_url(info.ws_url, extra_headers=new) as ws:
                await request(ws, op="subscribe", id=2, products=[PRODUCT])
                assert (await receive(ws, 1))[0]["type"] == "subscribed"
            assert reload(rotated) == {}
            nursery.cancel_scope.cancel()
