"""The Trio/asyncio crossing: :class:`_Bridge` (one asyncio loop in a thread; Trio
calls into it) and :class:`_Handoff` (a subscription's messages pushed to Trio)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any, TypeVar

import structlog
import trio
from nats.aio.msg import Msg as NatsMsg

from ledgerflux.bus.types import CANCEL_GRACE_S, BusError

log = structlog.get_logger("ledgerflux.bus")

T = TypeVar("T")


class _Bridge:
    """One asyncio event loop in a dedicated thread, and the Trio→asyncio crossing.

    Calls into the loop are queued and run by one ``call_soon_threadsafe`` callback: a call
    made while an earlier one still waits for the loop rides on the same wake-up (one
    write to asyncio's self-pipe), and the queue keeps their order.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=f"{name}-asyncio", daemon=True)
        self._stopping = False
        self._lock = threading.Lock()
        self._calls: list[Callable[[], None]] = []

    def _submit(self, call: Callable[[], None]) -> None:
        """Run *call* on the loop, after every call submitted before it."""
        with self._lock:
            self._calls.append(call)
            if len(self._calls) > 1:
                return  # a wake-up is already on its way
        self.loop.call_soon_threadsafe(self._run_calls)

    def _run_calls(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for call in calls:
            call()

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Whatever nats-py left running is cancelled and awaited, so the loop closes clean.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def stop(self) -> None:
        """Stop the loop and join the thread (in a worker thread, so Trio keeps running)."""
        if self._stopping:
            return
        self._stopping = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)

    async def run(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn()`` as a task on the asyncio loop and return its result.

        On Trio cancellation the asyncio task is cancelled and this waits (shielded, at most
        CANCEL_GRACE_S) for it to finish before re-raising, so no asyncio work is left behind.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        holder: list[asyncio.Task[T]] = []

        def wake(_: object) -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        def start() -> None:
            task = self.loop.create_task(fn())
            holder.append(task)
            task.add_done_callback(wake)

        def cancel() -> None:
            if holder:
                holder[0].cancel()

        # A call after stop() would be queued on a loop that never runs it again.
        if self._stopping:
            raise BusError("the bus is closed")
        self._submit(start)
        try:
            await done.wait()
        except BaseException:
            # FIFO: this cancel runs after start(), so the task exists by then.
            self._submit(cancel)
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_GRACE_S) as scope:
                await done.wait()
            if scope.cancelled_caught:
                log.warning("bus.cancel_grace_exceeded")
            raise
        task = holder[0]
        if task.cancelled():
            raise BusError("the bus was closed during the call")
        return task.result()


class _Handoff:
    """The crossing of a subscription's messages, pushed from asyncio to Trio.

    nats-py's message callback (:meth:`put`, asyncio thread) only appends the raw message;
    the Trio side (:meth:`take`) swaps the whole list out. The asyncio side wakes Trio
    (``run_sync_soon``) only for the first message after a take: every message that
    arrives before Trio gets round to taking rides on that one wake-up, so a crossing
    carries what arrived during the Trio loop turn, and no call goes the other way (no
    asyncio task, no ``call_soon_threadsafe``) unless the producer was blocked.
    The conversion to :class:`InMsg` happens on the Trio side: the asyncio thread is where
    an ordered consumer's throughput is decided (nats-py parses every message there).
    Policy: block. When ``limit`` messages wait, the callback awaits; nats-py's delivery
    task stops, flow-control replies stop, and the server stops sending.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self._items: list[NatsMsg] = []
        self._limit = limit
        self._loop = loop
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._readable = trio.Event()
        self._wake_sent = False
        self._blocked = False
        self._writable = asyncio.Event()

    async def put(self, msg: NatsMsg) -> None:
        """asyncio side: append *msg*, waiting while ``limit`` messages wait."""
        while True:
            with self._lock:
                if len(self._items) < self._limit:
                    self._items.append(msg)
                    wake = None if self._wake_sent else self._readable
                    self._wake_sent = True
                    break
                self._blocked = True
                self._writable.clear()
            await self._writable.wait()
        if wake is not None:
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(wake.set)

    async def take(self) -> list[NatsMsg]:
        """Trio side: everything waiting (one crossing for all of it)."""
        while True:
            with self._lock:
                if self._items:
                    items, self._items = self._items, []
                    self._wake_sent = False
                    unblock, self._blocked = self._blocked, False
                    break
                self._wake_sent = False
                self._readable = readable = trio.Event()
            await readable.wait()
        if unblock:
            self._loop.call_soon_threadsafe(self._writable.set)
        return items
