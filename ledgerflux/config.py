"""Typed, frozen configuration (DESIGN §10).

One config class per daemon, grouped under :class:`Config`. Loaded by cattrs from a TOML
file, then ``LEDGERFLUX_*`` environment variables, then CLI flags (later wins).

Daemon code reads attributes of these classes only; it never looks keys up by string.
"""

from __future__ import annotations

import attrs

__all__ = [
    "ArchiveConfig",
    "Config",
    "DatabaseConfig",
    "GatewayConfig",
    "IngestConfig",
    "NatsConfig",
    "NormalizeConfig",
    "SnapshotConfig",
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
    connect_timeout_s: float = 5.0
    connect_attempts: int = 5


@attrs.frozen
class DatabaseConfig:
    url: str | None = attrs.field(default=None, repr=False)
    """libpq URL (a secret: it may hold a password); None starts an embedded PostgreSQL."""
    history_retention_days: int = 7
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
    send_queue: int = 1000
    """Events queued per client before the slow-consumer policy applies."""
    max_clients: int = 10_000
    max_message_bytes: int = 64 * 1024
    max_subscriptions: int = 100
    requests_per_s: float = 20.0
    requests_burst: int = 40


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
