"""Gateway authentication, sans-IO: API keys and HMAC-signed expiring tokens.

An operator configures API keys, each a key id and a secret (``gateway.api_keys``, from
the environment or a file; several at once, so that a key can be rotated: add the new
one, move clients over, remove the old one). A client proves it holds one of them in one
of two ways:

* the **API key** itself, ``<key id>:<secret>``, in an ``Authorization: Bearer`` header
  (server-side clients; never in a URL);
* a **token** minted with a key's secret (browsers, short-lived credentials handed to
  someone else), in the header or in the ``token`` query parameter::

      lf1.<key id>.<expires: Unix seconds>.<products: comma-separated, or empty>.<signature>

  where ``signature`` is the lowercase hex HMAC-SHA256, under the key's secret, of
  everything before the last dot. An empty product list allows every product.

Plain functions and frozen objects only: the caller passes the clock (``now``), so every
rule is tested in memory. Secrets and signatures are compared with
:func:`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Final, Literal, TypeAlias

import attrs

from ledgerflux.gateway.protocol import valid_product

__all__ = [
    "ANONYMOUS",
    "TOKEN_PREFIX",
    "AuthError",
    "Authenticator",
    "Principal",
    "mint_token",
    "parse_api_keys",
]

TOKEN_PREFIX: Final = "lf1"
"""Version tag of the token format; a future format gets another prefix."""
MIN_SECRET_CHARS: Final = 16
_KEY_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_SIGNATURE: Final = re.compile(r"[0-9a-f]{64}", re.ASCII)
MAX_CREDENTIAL_CHARS: Final = 8192
"""A presented credential longer than this is refused unread."""

Kind: TypeAlias = Literal["anonymous", "api_key", "token"]


class AuthError(Exception):
    """A refused credential: ``reason`` is safe to log and to send back (no secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class Principal:
    """Who a connection is: anonymous, an API key, or a token of a key."""

    kind: Kind
    key_id: str | None = None
    products: frozenset[str] | None = None
    """The products a token allows; None: every product."""
    expires: int | None = None
    """A token's expiry (Unix seconds)."""

    def allows(self, product: str) -> bool:
        return self.products is None or product in self.products


ANONYMOUS: Final = Principal("anonymous")
_NO_KEY: Final = b"\0" * MIN_SECRET_CHARS


def parse_api_keys(text: str) -> dict[str, bytes]:
    """``id:secret`` pairs separated by commas, spaces or new lines (``#`` starts a
    comment line) -> ``{key id: secret}``. Raises ValueError naming the bad entry (by its
    position and key id, never its secret)."""
    keys: dict[str, bytes] = {}
    entries = [
        entry
        for line in text.splitlines()
        if not line.lstrip().startswith("#")
        for entry in re.split(r"[,\s]+", line)
        if entry
    ]
    for index, entry in enumerate(entries, 1):
        key_id, sep, secret = entry.partition(":")
        if not sep or _KEY_ID.fullmatch(key_id) is None:
            raise ValueError(
                f"API key #{index}: expected '<key id>:<secret>' with a key id of "
                "[A-Za-z0-9_-] (1-64 characters)"
            )
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"API key {key_id!r}: the secret must be at least {MIN_SECRET_CHARS} characters"
            )
        if key_id in keys:
            raise ValueError(f"API key {key_id!r} is listed twice")
        keys[key_id] = secret.encode()
    return keys


def _sign(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def mint_token(key_id: str, secret: str | bytes, expires: int, products: Iterable[str] = ()) -> str:
    """A token for ``key_id`` valid until ``expires`` (Unix seconds), for ``products``
    (every product when empty). The same as the shell recipe in docs/protocol.md."""
    if _KEY_ID.fullmatch(key_id) is None:
        raise ValueError(f"bad key id {key_id!r}")
    listed = list(products)
    for product in listed:
        if not valid_product(product):
            raise ValueError(f"bad product {product!r}")
    payload = f"{TOKEN_PREFIX}.{key_id}.{int(expires)}.{','.join(listed)}"
    raw = secret.encode() if isinstance(secret, str) else secret
    return f"{payload}.{_sign(raw, payload)}"


@attrs.frozen
class Authenticator:
    """The gateway's credential check (``gateway.anonymous``, ``gateway.api_keys``,
    ``gateway.token_max_skew_s``, ``gateway.token_max_ttl_s``)."""

    keys: Mapping[str, bytes] = attrs.field(factory=dict, repr=False)
    anonymous: bool = True
    """Connections without a credential are allowed (the local demo); a credential that
    is presented is always checked."""
    max_skew_s: float = 30.0
    """A token is still accepted this long after its expiry (clocks differ)."""
    max_ttl_s: float = 7 * 86400.0
    """A token expiring further in the future than this is refused (a leaked token must
    not be good for years)."""

    def authenticate(self, credential: str | None, now: float) -> Principal:
        """The connection's principal for ``credential`` (a token, ``id:secret``, or None)
        at ``now`` (Unix seconds). Raises :class:`AuthError`."""
        if not credential:
            if self.anonymous:
                return ANONYMOUS
            raise AuthError("credentials required")
        if len(credential) > MAX_CREDENTIAL_CHARS:
            raise AuthError("credential too long")
        if credential.startswith(TOKEN_PREFIX + "."):
            return self._token(credential, now)
        return self._api_key(credential)

    def _api_key(self, credential: str) -> Principal:
        key_id, sep, secret = credential.partition(":")
        known = self.keys.get(key_id) if sep else None
        # Compare even for an unknown key id, so that timing does not tell ids apart.
        matches = hmac.compare_digest(secret.encode(), known if known is not None else _NO_KEY)
        if known is None or not matches:
            raise AuthError("invalid API key")
        return Principal("api_key", key_id)

    def _token(self, token: str, now: float) -> Principal:
        fields = token.split(".")
        if len(fields) != 5:
            raise AuthError("malformed token")
        _, key_id, expires_text, products_text, signature = fields
        if not expires_text.isascii() or not expires_text.isdigit() or len(expires_text) > 12:
            raise AuthError("malformed token")
        secret = self.keys.get(key_id)
        if secret is None:
            raise AuthError("token of an unknown key")
        expected = _sign(secret, token.rpartition(".")[0])
        if _SIGNATURE.fullmatch(signature) is None or not hmac.compare_digest(signature, expected):
            raise AuthError("bad token signature")
        expires = int(expires_text)
        if now > expires + self.max_skew_s:
            raise AuthError("token expired")
        if expires > now + self.max_ttl_s + self.max_skew_s:
            raise AuthError("token lifetime exceeds gateway.token_max_ttl_s")
        products = frozenset(products_text.split(",")) if products_text else None
        if products is not None and not all(valid_product(p) for p in products):
            raise AuthError("malformed token")
        return Principal("token", key_id, products, expires)
