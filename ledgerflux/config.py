"""Typed, frozen configuration (docs/configuration.md).

One config class per daemon, grouped under :class:`Config`. :func:`load_config` builds it
from a TOML file, then ``LEDGERFLUX_*`` environment variables, then CLI flags (later wins);
:func:`dump_config` prints the effective configuration with secrets masked.

Daemon code reads attributes of these classes only; it never looks keys up by string.
This module stays cheap to import: the loader imports ``tomllib``, ``cattrs`` and
``difflib`` only when it runs. Every key, default and environment name is listed in
``docs/configuration.md``.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from ledgerflux.errors import EXIT_CONFIG, LedgerfluxError

__all__ = [
    "ArchiveConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "Flag",
    "GatewayConfig",
    "IngestConfig",
    "NatsConfig",
    "NormalizeConfig",
    "SnapshotConfig",
    "config_keys",
    "dump_config",
    "env_name",
    "load_config",
    "mask_secret",
]


@attrs.frozen
class NatsConfig:
    url: str | None = None
    """``nats://host:port[,nats://...]``; None starts an embedded nats-server."""
    replicas: int = 1
    ticks_max_age_s: float = 3600.0
    md_max_age_s: float = 86400.0
    dlq_max_age_s: float = 7 * 86400.0
    ticks_max_bytes: int = 1 << 30
    md_max_bytes: int = 4 << 30
    dlq_max_bytes: int = 1 << 30
    connect_timeout_s: float = 2.0
    connect_attempts: int = 3
    """At start: 3 attempts of 2 s (plus pauses) is a clear error within 10 s when NATS is
    unreachable; once connected, reconnects never give up."""


@attrs.frozen
class DatabaseConfig:
    url: str | None = attrs.field(default=None, repr=False)
    """libpq URL (a secret: it may hold a password); None starts an embedded PostgreSQL."""
    history_retention_days: int = 7
    """Whole UTC days of history kept before today; older day partitions are dropped."""
    retention_interval_s: float = 3600.0
    """How often the snapshotter applies the retention (and once at its start)."""
    connect_timeout_s: float = 5.0
    connect_attempts: int = 5


@attrs.frozen
class ArchiveConfig:
    s3_endpoint: str | None = None
    """S3/MinIO endpoint URL; None archives to ``local_dir`` with the same key layout."""
    bucket: str = "ledgerflux"
    prefix: str = "archive"
    region: str = "us-east-1"
    access_key_id: str | None = attrs.field(default=None, repr=False)
    secret_access_key: str | None = attrs.field(default=None, repr=False)
    local_dir: str | None = None
    """Defaults to ``<data_dir>/archive``."""
    batch_max_events: int = 5000
    batch_max_age_s: float = 60.0
    state_snapshot_interval_s: float = 300.0


@attrs.frozen
class IngestConfig:
    feed: str = "replay"
    """Entry-point name in ``ledgerflux.feeds``."""
    symbols: tuple[str, ...] = ("BTC-USD",)
    channels: tuple[str, ...] = ()
    """Empty: the plugin's default channels."""
    endpoint: str | None = None
    rest_endpoint: str | None = None
    replay_path: str | None = None
    replay_speed: float = 0.0
    """0 = as fast as possible; 1 = original timing; 10 = ten times faster."""
    replay_loop: bool = False
    max_buffer_frames: int = 10_000
    publish_batch: int = 256
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


@attrs.frozen
class NormalizeConfig:
    shards: int = 2
    shard: int | None = None
    """Which shard this process owns; None = all shards (``ledgerflux up``)."""
    batch: int = 256
    checkpoint_interval_s: float = 5.0
    """How often a shard writes its whole state (books included) to the checkpoint bucket;
    a restart replays at most this much of LF_MD on top of it."""


@attrs.frozen
class SnapshotConfig:
    batch: int = 1000
    flush_interval_s: float = 0.2


@attrs.frozen
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    ring_size: int = 10_000
    """Recent events kept per product for exact backfill (older ones come from PostgreSQL)."""
    send_queue: int = 100_000
    """Live events queued per client at most (bounds the per-event overhead)."""
    send_queue_bytes: int = 8 * 1024 * 1024
    """Bytes of live events queued per client at most (the memory bound)."""
    slow_consumer_after_s: float = 30.0
    """A client whose oldest queued live event waited longer than this is too far behind:
    4001 (or conflation, when it asked for it)."""
    max_clients: int = 10_000
    max_message_bytes: int = 64 * 1024
    max_subscriptions: int = 100
    requests_per_s: float = 20.0
    requests_burst: int = 40
    anonymous: bool = True
    """Connections without credentials are served (the local demo); false requires an API
    key or a token (the production examples)."""
    api_keys: str | None = attrs.field(default=None, repr=False)
    """``id:secret`` pairs (a secret: from the environment or ``gateway.api_keys_file``);
    several at once for rotation. They sign tokens and are API keys themselves."""
    token_max_skew_s: float = 30.0
    """A token is accepted this long past its expiry (clock skew between minter and us)."""
    token_max_ttl_s: float = 7 * 86400.0
    """Tokens expiring further ahead than this are refused."""
    allowed_origins: tuple[str, ...] = ()
    """Browser ``Origin`` values allowed on /ws (``https://host[:port]``); empty: any.
    Clients that send no ``Origin`` (not browsers) are not affected."""
    max_clients_per_ip: int = 1000
    """Concurrent connections from one client address; more are refused with HTTP 429."""
    known_products_only: bool = False
    """Subscribe only to products the gateway has seen on LF_MD (``unknown_product``)."""


@attrs.frozen
class Config:
    data_dir: str = "./.ledgerflux"
    log_level: str = "info"
    log_format: str = "console"
    drain_timeout_s: float = 10.0
    health_host: str = "127.0.0.1"
    health_port: int = 0
    """Per-process /healthz, /readyz, /metrics for daemons other than the gateway (which
    serves them on its own port). 0 picks a free port."""
    nats: NatsConfig = NatsConfig()
    database: DatabaseConfig = DatabaseConfig()
    archive: ArchiveConfig = ArchiveConfig()
    ingest: IngestConfig = IngestConfig()
    normalize: NormalizeConfig = NormalizeConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    gateway: GatewayConfig = GatewayConfig()


# --- loading ------------------------------------------------------------------------------

ENV_PREFIX = "LEDGERFLUX_"
CONFIG_ENV = "LEDGERFLUX_CONFIG"
"""Names the TOML file when ``load_config`` is given no path."""

_ENV_ALIASES: Mapping[str, str] = {
    "LEDGERFLUX_NATS_URL": "nats.url",
    "LEDGERFLUX_DATABASE_URL": "database.url",
    "LEDGERFLUX_DATABASE_URL_FILE": "database.url_file",
    "LEDGERFLUX_S3_ENDPOINT": "archive.s3_endpoint",
}
"""Short names for the keys an operator sets most (the nested form works for them too)."""

_ENV_IGNORED = (
    CONFIG_ENV,
    "LEDGERFLUX_TEST_",
    "LEDGERFLUX_BENCH_",
    "LEDGERFLUX_CHAOS_",
    "LEDGERFLUX_REGEN_GOLDEN",
)
"""Environment names that are not configuration keys (test fixtures, benchmarks, the chaos
suite and the golden-file tests read them); any other unknown ``LEDGERFLUX_*`` name is an
error, so a typo cannot go unseen."""

_SECRETS = (
    "database.url",
    "archive.access_key_id",
    "archive.secret_access_key",
    "gateway.api_keys",
)
"""Read only from the environment, flags or a ``<key>_file``; masked by ``dump_config``."""

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_LOG_FORMATS = ("console", "json")
_PORT_KEYS = ("health_port", "gateway.port")
_ZERO_OK = ("normalize.shard", "ingest.replay_speed", "gateway.token_max_skew_s")
"""Numeric keys for which 0 is meaningful; every other number must be positive."""


class ConfigError(LedgerfluxError):
    """A bad configuration value; the message names the key, the value and its source."""

    exit_code = EXIT_CONFIG


@attrs.frozen
class Flag:
    """An override value that came from a command-line flag, so errors can name the flag."""

    value: object
    flag: str


@attrs.frozen
class _Value:
    raw: object
    source: str
    """Where the value came from, as an error message shows it: ``env LEDGERFLUX_X``."""


def env_name(key: str) -> str:
    """The environment name of a dotted key: ``gateway.port`` -> ``LEDGERFLUX_GATEWAY__PORT``."""
    return ENV_PREFIX + key.upper().replace(".", "__")


def config_keys() -> dict[str, Any]:
    """Every dotted key of :class:`Config` mapped to its (resolved) type."""
    return dict(_config_keys())


@functools.cache
def _config_keys() -> Mapping[str, Any]:
    import typing

    def walk(cls: type, prefix: str) -> Iterator[tuple[str, Any]]:
        hints = typing.get_type_hints(cls)
        for field in attrs.fields(cls):
            typ = hints[field.name]
            if attrs.has(typ):
                yield from walk(typ, f"{prefix}{field.name}.")
            else:
                yield f"{prefix}{field.name}", typ

    return dict(walk(Config, ""))


def _sections() -> frozenset[str]:
    return frozenset(key.partition(".")[0] for key in _config_keys() if "." in key)


def load_config(
    *,
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Build the effective :class:`Config`: defaults < TOML file < environment < overrides.

    The file is *path*, else the one named by ``LEDGERFLUX_CONFIG``, else none. *env*
    defaults to ``os.environ``. *overrides* maps dotted keys (``"gateway.port"``) to values,
    optionally wrapped in :class:`Flag` to name the command-line flag they came from.
    Strings from the environment and flags are converted to the key's type (int, float,
    bool, comma-separated tuple; an empty string unsets an optional key).

    Raises :class:`ConfigError` naming the key, the bad value and its source for an
    unknown key, a value of the wrong type or range, contradictory values, or a secret
    written in the file.
    """
    env = os.environ if env is None else env
    keys = _config_keys()
    merged: dict[str, _Value] = {}
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    if path is not None:
        merged.update(_from_file(path, keys))
    merged.update(_from_env(env, keys))
    merged.update(_from_overrides(overrides or {}, keys))

    values = {key: _convert(key, keys[key], value) for key, value in merged.items()}
    for key, value in values.items():
        _check(key, value, merged[key])
    config = _structure(values)
    _check_together(config, merged)
    return config


def _source_of(merged: Mapping[str, _Value], key: str) -> str:
    value = merged.get(key)
    return value.source if value is not None else "default"


def _unknown(key: str, source: str, keys: Mapping[str, Any]) -> ConfigError:
    import difflib

    known = [*keys, *(f"{secret}_file" for secret in _SECRETS)]
    hint = ""
    if source.startswith("env "):
        names = [env_name(k) for k in known] + list(_ENV_ALIASES)
        close = difflib.get_close_matches(env_name(key), names, n=1)
    else:
        close = difflib.get_close_matches(key, known, n=1)
    if close:
        hint = f"; did you mean {close[0]!r}?"
    return ConfigError(f"{key}: unknown configuration key (from {source}){hint}")


def _from_file(path: Path, keys: Mapping[str, Any]) -> dict[str, _Value]:
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None

    sections = _sections()
    out: dict[str, _Value] = {}

    def where(key: str) -> str:
        line = _toml_line(text, key)
        return f"{path} line {line}" if line else str(path)

    def visit(table: Mapping[str, Any], prefix: str) -> None:
        for name, raw in table.items():
            key = prefix + name
            if not prefix and name in sections:
                if not isinstance(raw, dict):
                    raise ConfigError(
                        f"{key}: expected a table [{key}], got {raw!r} (from {where(key)})"
                    )
                visit(raw, f"{key}.")
            elif key in keys or key.removesuffix("_file") in _SECRETS:
                out[key] = _Value(raw, where(key))
            else:
                raise _unknown(key, where(key), keys)

    visit(data, "")
    for secret in _SECRETS:
        value = out.get(secret)
        if value is None or (secret == "database.url" and not _has_password(str(value.raw))):
            continue  # a database URL without a password (peer auth, .pgpass) is not secret
        raise ConfigError(
            f"{secret}: secrets are not read from the config file (from {value.source}); "
            f"set env {env_name(secret)} or point {secret}_file at a file holding it"
        )
    return _resolve_files(out)


def _toml_line(text: str, key: str) -> int | None:
    """The 1-based line that sets dotted *key* in TOML *text* (tomllib keeps no positions)."""
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"\s*\[\s*([^\[\]]+?)\s*\]", line)
        if header:
            table = header.group(1).replace('"', "").replace(" ", "")
            continue
        assignment = re.match(r"\s*([A-Za-z0-9_.\-\" ]+?)\s*=", line)
        if assignment:
            name = assignment.group(1).replace('"', "").replace(" ", "")
            if (f"{table}.{name}" if table else name) == key:
                return number
    return None


def _from_env(env: Mapping[str, str], keys: Mapping[str, Any]) -> dict[str, _Value]:
    out: dict[str, _Value] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name.startswith(_ENV_IGNORED):
            continue
        key = _ENV_ALIASES.get(name)
        if key is None:
            key = name.removeprefix(ENV_PREFIX).lower().replace("__", ".")
        source = f"env {name}"
        if key not in keys and key.removesuffix("_file") not in _SECRETS:
            raise _unknown(key, source, keys)
        previous = out.get(key)
        if previous is not None and previous.raw != env[name]:
            raise ConfigError(
                f"{key}: {previous.source} and {source} disagree; set only one of them"
            )
        out[key] = _Value(env[name], source)
    return _resolve_files(out)


def _from_overrides(overrides: Mapping[str, object], keys: Mapping[str, Any]) -> dict[str, _Value]:
    out: dict[str, _Value] = {}
    for key, raw in overrides.items():
        if isinstance(raw, Flag):
            value = _Value(raw.value, raw.flag)
        else:
            value = _Value(raw, f"override {key}")
        if key not in keys and key.removesuffix("_file") not in _SECRETS:
            raise _unknown(key, value.source, keys)
        out[key] = value
    return _resolve_files(out)


def _resolve_files(layer: dict[str, _Value]) -> dict[str, _Value]:
    """Replace each ``<secret>_file`` key of one layer by the secret read from that file."""
    for secret in _SECRETS:
        pointer = layer.pop(f"{secret}_file", None)
        if pointer is None:
            continue
        if secret in layer:
            raise ConfigError(
                f"{secret}: set both directly ({layer[secret].source}) and through "
                f"{secret}_file ({pointer.source}); set only one of them"
            )
        if not isinstance(pointer.raw, str | os.PathLike):
            raise ConfigError(
                f"{secret}_file: expected a file path, got {pointer.raw!r} (from {pointer.source})"
            )
        try:
            secret_text = Path(pointer.raw).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{secret}_file: cannot read {os.fspath(pointer.raw)!r}: {exc.strerror} "
                f"(from {pointer.source})"
            ) from None
        layer[secret] = _Value(secret_text, f"{secret}_file ({pointer.source})")
    return layer


# --- conversion and validation -------------------------------------------------------------


def _expected(key: str, typ: Any) -> str:
    """What *key* accepts, in words; the same phrase serves type and range errors."""
    base, _ = _unwrap(typ)
    if key in _PORT_KEYS:
        return "an integer between 0 and 65535"
    if key == "log_level":
        return "one of " + ", ".join(map(repr, _LOG_LEVELS))
    if key == "log_format":
        return "one of " + ", ".join(map(repr, _LOG_FORMATS))
    if key == "nats.replicas":
        return "an integer between 1 and 5"
    if base is bool:
        return "a boolean (true/false)"
    if base is int:
        return "an integer >= 0" if key in _ZERO_OK else "an integer >= 1"
    if base is float:
        return "a number >= 0" if key in _ZERO_OK else "a number > 0"
    if base is tuple:
        return "a list of non-empty strings (comma-separated in env and flags)"
    return "a non-empty string"


def _unwrap(typ: Any) -> tuple[type, bool]:
    """``int | None`` -> ``(int, True)``; ``tuple[str, ...]`` -> ``(tuple, False)``."""
    import typing

    args = typing.get_args(typ)
    origin = typing.get_origin(typ)
    if origin is tuple:
        return tuple, False
    if args and type(None) in args:
        (inner,) = (a for a in args if a is not type(None))
        return inner, True
    return typ, False


def _bad(key: str, typ: Any, value: _Value) -> ConfigError:
    return ConfigError(
        f"{key}: expected {_expected(key, typ)}, got {value.raw!r} (from {value.source})"
    )


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _convert(key: str, typ: Any, value: _Value) -> object:
    """Turn a raw value (native TOML, or a string from env/flags) into the key's type."""
    base, optional = _unwrap(typ)
    raw = value.raw
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if optional and (raw is None or raw == ""):
        return None
    text = raw.strip() if isinstance(raw, str) else None
    try:
        if base is bool:
            if isinstance(raw, bool):
                return raw
            if text is not None and text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
        elif base is int:
            if isinstance(raw, int) and not isinstance(raw, bool):
                return raw
            if text is not None:
                return int(text)
        elif base is float:
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                number = float(raw)
            elif text is not None:
                number = float(text)
            else:
                raise _bad(key, typ, value)
            if math.isfinite(number):
                return number
        elif base is tuple:
            items: list[object]
            if isinstance(raw, str):
                items = [part.strip() for part in raw.split(",") if part.strip()]
            elif isinstance(raw, list | tuple):
                items = list(raw)
            else:
                raise _bad(key, typ, value)
            if all(isinstance(item, str) and item for item in items):
                return tuple(items)
        elif base is str and isinstance(raw, str):
            return raw
    except ValueError:
        pass
    raise _bad(key, typ, value)


def _check(key: str, value: object, source: _Value) -> None:
    """Range and choice checks of one key on its converted value."""
    keys = _config_keys()
    ok = True
    if value is None or isinstance(value, bool):
        pass
    elif key in _PORT_KEYS:
        ok = isinstance(value, int) and 0 <= value <= 65535
    elif key == "log_level":
        ok = value in _LOG_LEVELS
    elif key == "log_format":
        ok = value in _LOG_FORMATS
    elif key == "nats.replicas":
        ok = isinstance(value, int) and 1 <= value <= 5
    elif isinstance(value, int | float):
        ok = value >= 0 if key in _ZERO_OK else value > 0
    elif isinstance(value, str):
        ok = value != ""
    if not ok:
        raise _bad(key, keys[key], source)
    if isinstance(value, str):
        _check_url(key, value, source)


_URL_SCHEMES: Mapping[str, tuple[str, ...]] = {
    "nats.url": ("nats", "tls", "ws", "wss"),
    "database.url": ("postgresql", "postgres"),
    "archive.s3_endpoint": ("http", "https"),
}


def _check_url(key: str, value: str, source: _Value) -> None:
    schemes = _URL_SCHEMES.get(key)
    if schemes is None:
        return
    if key == "database.url" and "://" not in value and "=" in value:
        return  # libpq keyword form: "host=... dbname=..."
    for part in value.split(",") if key == "nats.url" else [value]:
        scheme, sep, rest = part.strip().partition("://")
        if not sep or scheme not in schemes or not rest:
            shown = mask_secret(key, value)
            raise ConfigError(
                f"{key}: expected a URL starting with "
                + " or ".join(f"{s}://" for s in schemes)
                + f", got {shown!r} (from {source.source})"
            )


def _structure(values: Mapping[str, object]) -> Config:
    import cattrs

    nested: dict[str, Any] = {}
    for key, value in values.items():
        section, dot, name = key.partition(".")
        if dot:
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    try:
        return cattrs.Converter().structure(nested, Config)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:  # pragma: no cover
        # Values were converted and checked key by key above; reaching this is a bug here.
        raise ConfigError(f"configuration could not be built: {exc!r}") from exc


def _check_together(config: Config, merged: Mapping[str, _Value]) -> None:
    """Checks that involve more than one key; the message names both and their sources."""
    normalize, ingest = config.normalize, config.ingest
    if normalize.shard is not None and normalize.shard >= normalize.shards:
        raise ConfigError(
            f"normalize.shard: expected an integer below normalize.shards "
            f"({normalize.shards}, from {_source_of(merged, 'normalize.shards')}), "
            f"got {normalize.shard} (from {_source_of(merged, 'normalize.shard')})"
        )
    if ingest.backoff_initial_s > ingest.backoff_max_s:
        raise ConfigError(
            f"ingest.backoff_initial_s: expected at most ingest.backoff_max_s "
            f"({ingest.backoff_max_s}, from {_source_of(merged, 'ingest.backoff_max_s')}), "
            f"got {ingest.backoff_initial_s} "
            f"(from {_source_of(merged, 'ingest.backoff_initial_s')})"
        )


# --- dumping -------------------------------------------------------------------------------


def _has_password(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        if urlsplit(url).password:
            return True
    except ValueError:
        pass
    return re.search(r"password\s*=", url, re.IGNORECASE) is not None


def mask_secret(key: str, value: str) -> str:
    """*value* of *key* safe to print: URL passwords become ``***``
    (``postgresql://u:***@h/db``); other secrets are replaced whole."""
    if key not in _SECRETS and key not in _URL_SCHEMES:
        return value
    if key in ("archive.access_key_id", "archive.secret_access_key", "gateway.api_keys"):
        return "***"
    masked = re.sub(r"(password\s*=\s*)[^&\s]+", r"\1***", value, flags=re.IGNORECASE)
    # userinfo of a URL: scheme://user:password@host -> scheme://user:***@host
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", masked)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", escaped)
    return f'"{escaped}"'


def dump_config(config: Config, *, masked: bool = True) -> str:
    """The effective configuration as TOML text; with *masked*, secrets show as ``***``.

    Unset optional keys are written as comments (TOML has no null). The masked text loads
    back with :func:`load_config`; unmasked secrets do not, by design (secrets stay out of
    config files).
    """
    lines: list[str] = []

    def emit(obj: Any, prefix: str) -> None:
        for field in attrs.fields(type(obj)):
            value = getattr(obj, field.name)
            if attrs.has(type(value)):
                continue
            key = prefix + field.name
            if value is None:
                lines.append(f"# {field.name} = (unset)")
                continue
            if masked and isinstance(value, str):
                value = mask_secret(key, value)
            lines.append(f"{field.name} = {_toml_value(value)}")

    emit(config, "")
    for field in attrs.fields(Config):
        section = getattr(config, field.name)
        if attrs.has(type(section)):
            lines.extend(["", f"[{field.name}]"])
            emit(section, f"{field.name}.")
    return "\n".join(lines) + "\n"
