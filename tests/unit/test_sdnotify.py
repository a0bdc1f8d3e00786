"""sd_notify: datagrams reach a plain-path and an abstract AF_UNIX socket; watchdog pacing."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from ledgerflux.sdnotify import NOTIFY_ERRORS, Notifier, serve_watchdog


@pytest.fixture
def plain_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield path, sock


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"ledgerflux-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield "@" + name, sock


@pytest.mark.parametrize("which", ["plain_socket", "abstract_socket"])
def test_states_arrive(which: str, request: pytest.FixtureRequest) -> None:
    address, sock = request.getfixturevalue(which)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    try:
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.status("replaying\nrecording.jsonl")
        assert notifier.watchdog()
        assert notifier.stopping()
        received = [sock.recv(4096) for _ in range(4)]
    finally:
        notifier.close()
    assert received == [
        b"READY=1",
        b"STATUS=replaying recording.jsonl",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready()
    assert notifier.stopping()
    assert notifier.watchdog()
    assert notifier.watchdog_interval_s is None


def test_a_vanished_socket_is_counted_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    before = NOTIFY_ERRORS._value.get()
    try:
        assert notifier.ready() is False
    finally:
        notifier.close()
    assert NOTIFY_ERRORS._value.get() == before + 1


def test_watchdog_interval_from_env() -> None:
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(mine).watchdog_interval_s == 30.0
    assert Notifier.from_env({"WATCHDOG_USEC": "2000000"}).watchdog_interval_s == 2.0
    # Another process is the one being watched: do not ping for it.
    other = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval_s is None


async def test_watchdog_pings_at_half_the_interval(
    plain_socket: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    address, sock = plain_socket
    sock.setblocking(False)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "10000000"})
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_watchdog, notifier)
            # Pings at t = 0, 5, 10, 15, 20 s; stop just after the fifth.
            await trio.sleep(21)
            nursery.cancel_scope.cancel()
    finally:
        notifier.close()
    pings = []
    while True:
        try:
            pings.append(sock.recv(64))
        except BlockingIOError:
            break
    assert pings == [b"WATCHDOG=1"] * 5


async def test_watchdog_returns_when_not_watched() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_watchdog, Notifier.from_env({}))
