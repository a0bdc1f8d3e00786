"""A headless Chromium driven over the DevTools protocol (CDP), with nothing but
trio-websocket: enough to load the live page, read its DOM with ``Runtime.evaluate``, resize
the viewport and take screenshots."""

from __future__ import annotations

import base64
import contextlib
import itertools
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
POLL_S = 0.1


class CdpError(Exception):
    pass


class Page:
    """One browser tab."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self.ws.send_message(
            orjson.dumps({"id": call_id, "method": method, "params": params}).decode()
        )
        while True:
            reply = orjson.loads(await self.ws.get_message())
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """Poll until ``expression`` is truthy; return its value. The caller bounds the
        wait (``trio.fail_after``): nothing here is a timed assertion."""
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            await trio.sleep(POLL_S)

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for(f"location.href === {orjson.dumps(url).decode()}")
        await self.wait_for("document.readyState === 'complete'")

    async def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=2 if mobile else 1,
            mobile=mobile,
        )

    async def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            metrics = await self.call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            }
        shot = await self.call("Page.captureScreenshot", **params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return orjson.loads(reply.read())


@contextlib.asynccontextmanager
async def open_page(profile: Path, width: int = 1400, height: int = 900) -> AsyncIterator[Page]:
    """Start Chromium (headless, its own profile in ``profile``, DevTools on a free port)
    and yield its first tab; the browser is killed on exit."""
    assert CHROMIUM is not None
    profile.mkdir(parents=True, exist_ok=True)
    command = [
        CHROMIUM,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "about:blank",
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                trio.run_process,
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        )
        port_file = profile / "DevToolsActivePort"
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:  # noqa: ASYNC110
            await trio.sleep(POLL_S)
        port = int(port_file.read_text().splitlines()[0])
        targets: list[dict[str, Any]] = []
        while not targets:
            targets = [
                t
                for t in await trio.to_thread.run_sync(
                    _get_json, f"http://127.0.0.1:{port}/json/list"
                )
                if t.get("type") == "page"
            ]
            if not targets:
                await trio.sleep(POLL_S)
        async with open_websocket_url(
            targets[0]["webSocketDebuggerUrl"], max_message_size=256 * 1024 * 1024
        ) as ws:
            page = Page(ws)
            await page.viewport(width, height)
            yield page
        nursery.cancel_scope.cancel()
