"""``ledgerflux record``: raw exchange traffic into a recording (:mod:`ledgerflux.recording`).

Every frame sent (``out``) and received (``in``) is written verbatim with its time, and
right after subscribing the REST book of every symbol is fetched once and written as a
``rest`` entry, so that a replay can answer a resync. A lost connection is retried with the
same backoff as the ingestor; the next connection gets the next ``conn`` number.

File writes are synchronous: one buffered line per frame costs microseconds, far less
than a worker-thread round trip would.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from ledgerflux.config import Config
from ledgerflux.errors import LedgerfluxError
from ledgerflux.feeds.backoff import Backoff
from ledgerflux.feeds.registry import load_feed
from ledgerflux.feeds.runtime import (
    CONNECT_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    REST_TIMEOUT_S,
    credentials_for,
    rebase_url,
    subscription_for,
)
from ledgerflux.logging import describe_error
from ledgerflux.plugin import Credentials, FeedPlugin, PluginOptions, Subscription
from ledgerflux.recording import RecordedFrame, RecordingHeader, RecordingWriter
from ledgerflux.websocket import open_websocket_url

if TYPE_CHECKING:
    import httpx

__all__ = ["RecordError", "run_record"]

log = structlog.get_logger(__name__)


class RecordError(LedgerfluxError):
    """The configured feed cannot be recorded (the replay feed, for one)."""


async def run_record(
    config: Config,
    *,
    out: Path,
    duration_s: float | None,
    progress: bool = False,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Record ``config.ingest.feed`` into ``out`` for ``duration_s`` (None: until
    cancelled); returns the number of frames written. Ready once the first connection is
    subscribed. On cancellation the file is closed complete (a valid gzip stream).
    *progress* shows the frames and bytes written so far on stderr (tqdm)."""
    ingest = config.ingest
    plugin = load_feed(ingest.feed)
    if plugin.name == "replay":
        raise RecordError("the replay feed cannot be recorded; choose an exchange feed")
    subscription = subscription_for(plugin, ingest)
    credentials = credentials_for(plugin, ingest.feed, subscription)
    endpoint = ingest.endpoint or plugin.endpoint
    header = RecordingHeader(
        plugin=plugin.name,
        endpoint=endpoint,
        rest_endpoint=ingest.rest_endpoint or plugin.rest_endpoint,
        symbols=subscription.symbols,
        channels=subscription.channels,
        created_ns=time.time_ns(),
        native_symbols=native_symbols(plugin, subscription.symbols),
    )
    backoff = Backoff(ingest.backoff_initial_s, ingest.backoff_max_s)
    ready = [task_status]
    with (
        RecordingWriter(Path(out), header) as writer,
        trio.move_on_after(math.inf if duration_s is None else duration_s),
    ):
        import httpx  # here: importing the feeds package must not load an HTTP client

        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            if progress:
                nursery.start_soon(_show_progress, writer, Path(out))
            conn = 0
            while True:
                up_since = trio.current_time()
                try:
                    await _record_connection(
                        plugin,
                        subscription,
                        credentials,
                        endpoint,
                        ingest.rest_endpoint,
                        client,
                        writer,
                        conn,
                        ready,
                    )
                except (ConnectionClosed, HandshakeError, OSError, trio.TooSlowError) as exc:
                    log.warning("record.connection_ended", conn=conn, error=describe_error(exc))
                conn += 1
                await trio.sleep(backoff.next_delay(trio.current_time() - up_since))
    return writer.frames


PROGRESS_INTERVAL_S = 0.5


async def _show_progress(writer: RecordingWriter, out: Path) -> None:
    """A frame counter on stderr, refreshed every PROGRESS_INTERVAL_S until cancelled."""
    from tqdm import tqdm

    with tqdm(desc=out.name, unit="frame", file=sys.stderr) as bar:
        while True:
            bar.update(writer.frames - bar.n)
            await trio.sleep(PROGRESS_INTERVAL_S)


async def _record_connection(
    plugin: FeedPlugin,
    subscription: Subscription,
    credentials: Credentials | None,
    endpoint: str,
    rest_base: str | None,
    client: httpx.AsyncClient,
    writer: RecordingWriter,
    conn: int,
    ready: list[trio.TaskStatus[None]],
) -> None:
    async with open_websocket_url(
        endpoint, max_message_size=MAX_MESSAGE_BYTES, connect_timeout=CONNECT_TIMEOUT_S
    ) as ws:
        with trio.fail_after(plugin.subscribe_deadline_s):
            for text in plugin.subscribe_messages(subscription, credentials, time.time()):
                writer.write(RecordedFrame(ts=time.time_ns(), dir="out", conn=conn, raw=text))
                await ws.send_message(text)
        books_done = False
        while True:
            with trio.fail_after(plugin.stale_after_s):
                raw = await ws.get_message()
            text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
            writer.write(RecordedFrame(ts=time.time_ns(), dir="in", conn=conn, raw=text))
            if ready:
                ready.pop().started()
            if not books_done:
                books_done = True
                await _record_books(plugin, subscription, rest_base, client, writer, conn)


async def _record_books(
    plugin: FeedPlugin,
    subscription: Subscription,
    rest_base: str | None,
    client: httpx.AsyncClient,
    writer: RecordingWriter,
    conn: int,
) -> None:
    """One REST book per symbol, so that a replay can answer a resync."""
    import httpx

    for symbol in subscription.symbols:
        request = plugin.book_request(symbol)
        if request is None:
            return
        try:
            response = await client.get(
                rebase_url(request.url, plugin.rest_endpoint, rest_base),
                params=dict(request.params),
                headers=dict(request.headers),
                timeout=REST_TIMEOUT_S,
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("record.rest_book_failed", symbol=symbol, error=describe_error(exc))
            continue
        writer.write(
            RecordedFrame(
                ts=time.time_ns(),
                dir="rest",
                conn=conn,
                raw=response.text,
                url=str(response.request.url),
            )
        )


def native_symbols(plugin: FeedPlugin, symbols: tuple[str, ...]) -> dict[str, str]:
    """Canonical → native ids where the plugin's ``native_symbol`` changes them."""
    options = PluginOptions.of(plugin)
    found = {symbol: options.native(symbol) for symbol in symbols}
    return {canonical: native for canonical, native in found.items() if canonical != native}
