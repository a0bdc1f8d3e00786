"""A gateway port that is already taken is a named error, before anything else starts."""

from __future__ import annotations

import socket

import pytest

from ledgerflux.gateway.app import _check_bind
from ledgerflux.health import PortInUse


def test_taken_port_is_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port} is already in use"):
            _check_bind("127.0.0.1", port)


def test_free_port_is_released_after_the_check() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _check_bind("127.0.0.1", port)
    with socket.socket() as again:  # the check left nothing bound
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
