"""The gateway's public surface is deliberate (STYLE 1)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import ledgerflux.gateway
import ledgerflux.gateway.protocol


def test_gateway_public_names_are_pinned() -> None:
    assert sorted(ledgerflux.gateway.__all__) == [
        "GatewayInfo",
        "Hub",
        "ProtocolError",
        "Session",
        "create_app",
        "parse_request",
        "serve_gateway",
    ]
    for name in ledgerflux.gateway.__all__:
        assert getattr(ledgerflux.gateway, name) is not None


def test_close_codes_match_docs_protocol_md() -> None:
    p = ledgerflux.gateway.protocol
    codes = (
        p.CLOSE_DRAIN,
        p.CLOSE_POLICY,
        p.CLOSE_TOO_BIG,
        p.CLOSE_TRY_AGAIN,
        p.CLOSE_SLOW_CONSUMER,
        p.CLOSE_RATE_LIMITED,
    )
    assert codes == (1001, 1008, 1009, 1013, 4001, 4029)
    doc = (Path(__file__).parents[3] / "docs" / "protocol.md").read_text()
    for code in codes:
        assert f"| {code} |" in doc
    for error in get_args(p.ErrorCode):
        assert f"| `{error}` |" in doc


def test_client_public_names_are_pinned() -> None:
    import ledgerflux.client
    import ledgerflux.gateway.auth

    assert sorted(ledgerflux.client.__all__) == [
        "Client",
        "ClientError",
        "Message",
        "TokenSource",
        "open_client",
    ]
    assert sorted(ledgerflux.gateway.auth.__all__) == [
        "ANONYMOUS",
        "AuthError",
        "Authenticator",
        "Principal",
        "TOKEN_PREFIX",
        "mint_token",
        "parse_api_keys",
    ]
