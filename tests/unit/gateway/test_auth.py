"""Gateway authentication in memory: API keys, signed expiring tokens, rotation, skew."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import subprocess

import pytest

from ledgerflux.config import ConfigError, GatewayConfig
from ledgerflux.gateway.app import authenticator_for, raise_fd_limit
from ledgerflux.gateway.auth import (
    ANONYMOUS,
    Authenticator,
    AuthError,
    Principal,
    mint_token,
    parse_api_keys,
)

OLD = "k2025:0123456789abcdef0123"
NEW = "k2026:fedcba9876543210fedc"
NOW = 1_800_000_000.0


def auth(**kwargs: object) -> Authenticator:
    return Authenticator(parse_api_keys(f"{OLD}\n{NEW}"), **kwargs)  # type: ignore[arg-type]


def refused(authenticator: Authenticator, credential: str | None, now: float = NOW) -> str:
    with pytest.raises(AuthError) as info:
        authenticator.authenticate(credential, now)
    return info.value.reason


def test_parse_api_keys_accepts_commas_lines_and_comments() -> None:
    assert parse_api_keys(f"# rotated 2026-01\n{OLD}, {NEW}\n") == {
        "k2025": b"0123456789abcdef0123",
        "k2026": b"fedcba9876543210fedc",
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("nocolon", "expected '<key id>:<secret>'"),
        ("bad.id:0123456789abcdef", "expected '<key id>:<secret>'"),
        ("k:short", "at least 16"),
        (f"{OLD},{OLD}", "listed twice"),
    ],
)
def test_parse_api_keys_names_the_bad_entry_never_the_secret(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        parse_api_keys(text)
    assert "0123456789abcdef" not in str(info.value)


def test_anonymous_is_configurable() -> None:
    assert auth().authenticate(None, NOW) == ANONYMOUS
    assert auth().authenticate("", NOW) == ANONYMOUS
    assert refused(auth(anonymous=False), None) == "credentials required"


def test_api_keys_of_every_active_key_are_accepted() -> None:
    assert auth().authenticate(OLD, NOW) == Principal("api_key", "k2025")
    assert auth().authenticate(NEW, NOW) == Principal("api_key", "k2026")
    assert refused(auth(), "k2026:0123456789abcdef0123") == "invalid API key"
    assert refused(auth(), "nobody:0123456789abcdef0123") == "invalid API key"
    assert refused(auth(), "k2026") == "invalid API key"
    # A credential presented is checked even when anonymous access is on.
    assert refused(auth(anonymous=True), "k2026:wrong") == "invalid API key"


def test_tokens_carry_key_expiry_and_products() -> None:
    token = mint_token("k2026", "fedcba9876543210fedc", int(NOW) + 60, ["coinbase:BTC-USD"])
    principal = auth().authenticate(token, NOW)
    assert principal == Principal("token", "k2026", frozenset({"coinbase:BTC-USD"}), int(NOW) + 60)
    assert principal.allows("coinbase:BTC-USD")
    assert not principal.allows("coinbase:ETH-USD")
    every = auth().authenticate(mint_token("k2025", OLD.split(":")[1], int(NOW) + 60), NOW)
    assert every.products is None
    assert every.allows("coinbase:ETH-USD")


def test_token_expiry_is_bounded_by_the_skew_allowance() -> None:
    token = mint_token("k2026", "fedcba9876543210fedc", int(NOW))
    assert auth(max_skew_s=30.0).authenticate(token, NOW + 30).kind == "token"
    assert refused(auth(max_skew_s=30.0), token, NOW + 31) == "token expired"
    assert refused(auth(max_skew_s=0.0), token, NOW + 1) == "token expired"


def test_tokens_too_long_lived_are_refused() -> None:
    token = mint_token("k2026", "fedcba9876543210fedc", int(NOW) + 3600)
    assert refused(auth(max_ttl_s=600.0), token).startswith("token lifetime exceeds")
    assert auth(max_ttl_s=7200.0).authenticate(token, NOW).kind == "token"


def test_tampered_and_foreign_tokens_are_refused() -> None:
    token = mint_token("k2026", "fedcba9876543210fedc", int(NOW) + 60, ["coinbase:BTC-USD"])
    payload, _, signature = token.rpartition(".")
    widened = payload.replace("coinbase:BTC-USD", "") + "." + signature
    assert refused(auth(), widened) == "bad token signature"
    later = payload.replace(str(int(NOW) + 60), str(int(NOW) + 6000)) + "." + signature
    assert refused(auth(), later) == "bad token signature"
    assert refused(auth(), payload + "." + signature.upper()) == "bad token signature"
    foreign = mint_token("k2026", "another-secret-of-16", int(NOW) + 60)
    assert refused(auth(), foreign) == "bad token signature"
    assert refused(auth(), mint_token("gone", "0123456789abcdef", int(NOW))) == (
        "token of an unknown key"
    )
    assert refused(auth(), "lf1.k2026.soon..ab") == "malformed token"
    assert refused(auth(), "lf1.k2026") == "malformed token"
    assert refused(auth(), "lf1." + "x" * 9000) == "credential too long"


def test_the_signature_is_plain_hmac_sha256_hex_of_the_payload() -> None:
    # What the shell recipe in docs/protocol.md computes with openssl.
    token = mint_token("k2026", "fedcba9876543210fedc", 1_800_000_060, ["coinbase:BTC-USD"])
    payload = "lf1.k2026.1800000060.coinbase:BTC-USD"
    digest = hmac.new(b"fedcba9876543210fedc", payload.encode(), hashlib.sha256).hexdigest()
    assert token == f"{payload}.{digest}"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_documented_openssl_recipe_mints_the_same_token() -> None:
    script = (
        "KEY_ID=k2026 SECRET=fedcba9876543210fedc EXPIRES=1800000060 PRODUCTS=coinbase:BTC-USD; "
        'PAYLOAD="lf1.$KEY_ID.$EXPIRES.$PRODUCTS"; '
        'SIG=$(printf %s "$PAYLOAD" | openssl dgst -sha256 -hmac "$SECRET" | sed "s/^.* //"); '
        'echo "$PAYLOAD.$SIG"'
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == mint_token(
        "k2026", "fedcba9876543210fedc", 1_800_000_060, ["coinbase:BTC-USD"]
    )


def test_gateway_config_builds_the_authenticator_or_names_the_problem() -> None:
    built = authenticator_for(GatewayConfig(anonymous=False, api_keys=NEW))
    assert built.authenticate(NEW, NOW).key_id == "k2026"
    with pytest.raises(ConfigError, match="no client could connect"):
        authenticator_for(GatewayConfig(anonymous=False))
    with pytest.raises(ConfigError, match=r"gateway\.api_keys: API key 'k'"):
        authenticator_for(GatewayConfig(api_keys="k:short"))


def test_fd_limit_is_raised_and_an_impossible_max_clients_is_a_clear_error() -> None:
    import resource

    soft = raise_fd_limit(100)
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        assert soft == hard
        with pytest.raises(ConfigError, match="do not fit RLIMIT_NOFILE"):
            raise_fd_limit(hard)
