"""The WebSocket gateway (docs/protocol.md): snapshots, live events, exact backfill, drain.

Public surface: :func:`serve_gateway`, :class:`GatewayInfo`, :func:`create_app`, the hub
and the sans-IO protocol (:mod:`ledgerflux.gateway.protocol`). The wire protocol is
documented in ``docs/protocol.md``.
"""

from ledgerflux.gateway.app import GatewayInfo, create_app, serve_gateway
from ledgerflux.gateway.hub import Hub, Session
from ledgerflux.gateway.protocol import ProtocolError, parse_request

__all__ = [
    "GatewayInfo",
    "Hub",
    "ProtocolError",
    "Session",
    "create_app",
    "parse_request",
    "serve_gateway",
]
