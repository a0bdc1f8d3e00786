"""Checks that run before any server starts, so that a typo fails in milliseconds.

An unknown feed, a port that is taken or cannot be bound, or a split-mode daemon with no
server URL would otherwise surface only after an embedded nats-server and PostgreSQL were
started (seconds, and a data dir touched) or after a NATS connect. Each check raises a named
:class:`~ledgerflux.errors.LedgerfluxError` that says what to change.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable

from ledgerflux.config import Config
from ledgerflux.errors import LedgerfluxError
from ledgerflux.health import PortInUse

__all__ = [
    "CannotListen",
    "MissingServerUrl",
    "check_feed",
    "check_port",
    "check_urls",
    "preflight",
]


class CannotListen(LedgerfluxError):
    """The address to listen on cannot be bound (bad host, privileged port)."""


class MissingServerUrl(LedgerfluxError):
    """A split-mode daemon was started without the URL of a server it needs.

    Embedded servers belong to ``ledgerflux up`` (or an explicit ``--embedded``): a daemon
    that silently started its own private PostgreSQL would split the stream across two
    databases."""


def check_feed(name: str) -> None:
    """Raise :class:`~ledgerflux.feeds.registry.UnknownFeed` (listing the installed ones)
    unless a feed plugin named *name* is installed. Does not import the plugin."""
    from ledgerflux.feeds.registry import UnknownFeed, available_feeds

    feeds = available_feeds()
    if name not in feeds:
        raise UnknownFeed(name, list(feeds))


def check_port(host: str, port: int, key: str) -> None:
    """Bind *host*:*port* once and let it go: :class:`PortInUse` or :class:`CannotListen`
    naming the address and the config key. Port 0 (any free port) always passes."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise CannotListen(f"cannot listen on {host}:{port} ({key}): {exc}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            # As trio.open_tcp_listeners does: a port in TIME_WAIT is free, a listening one not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(
                        f"cannot listen on {host}:{port} ({key}): address already in use"
                    ) from None
                raise CannotListen(
                    f"cannot listen on {host}:{port} ({key}): {exc.strerror or exc}"
                ) from None


def check_urls(config: Config, daemon: str, *, need: Iterable[str]) -> None:
    """Raise :class:`MissingServerUrl` for each server in *need* (``nats``, ``database``)
    that has no configured URL."""
    hints = {
        "nats": ("NATS", "nats.url", "--nats-url or LEDGERFLUX_NATS_URL", config.nats.url),
        "database": (
            "PostgreSQL",
            "database.url",
            "--database-url, LEDGERFLUX_DATABASE_URL or LEDGERFLUX_DATABASE_URL_FILE",
            config.database.url,
        ),
    }
    missing = [hints[what] for what in need if hints[what][3] is None]
    if missing:
        what = " and ".join(f"{server} ({key}: set {how})" for server, key, how, _ in missing)
        raise MissingServerUrl(
            f"{daemon} needs the URL of {what}. Split-mode daemons never start embedded "
            f"servers on their own: run 'ledgerflux up' for everything in one process, or "
            f"pass --embedded to start private embedded servers in the data dir"
        )


def preflight(config: Config, *, feed: bool, gateway: bool) -> None:
    """The checks of a process that runs the ingestor (*feed*) and/or the gateway."""
    if feed:
        check_feed(config.ingest.feed)
    if gateway:
        check_port(config.gateway.host, config.gateway.port, "gateway.port")
