"""The ingestor: feed plugins' runtime, the replay feed and the recorder.

See docs/architecture.md and docs/plugins.md.

Public surface; the modules behind it:

* :mod:`~ledgerflux.feeds.registry` — installed plugins (entry-point group ``ledgerflux.feeds``);
* :mod:`~ledgerflux.feeds.session` — the sans-IO-style core after "frame + ts_ingest";
* :mod:`~ledgerflux.feeds.sequence` — exchange-sequence verdicts;
* :mod:`~ledgerflux.feeds.backoff` — reconnect backoff and REST rate limiting;
* :mod:`~ledgerflux.feeds.runtime` — the live WebSocket source, publishing;
* :mod:`~ledgerflux.feeds.ingest` — ``serve_ingest``, the daemon (a live feed or a replay);
* :mod:`~ledgerflux.feeds.replay` / :mod:`~ledgerflux.feeds.record` — recordings in and out;
* :mod:`~ledgerflux.feeds.metrics` — Prometheus metrics.
"""

from ledgerflux.feeds.backoff import Backoff, TokenBucket
from ledgerflux.feeds.ingest import serve_ingest
from ledgerflux.feeds.record import RecordError, run_record
from ledgerflux.feeds.registry import FeedLoadError, UnknownFeed, available_feeds, load_feed
from ledgerflux.feeds.replay import ReplayError, ReplayFeed, resolve_replay_path, run_replay
from ledgerflux.feeds.runtime import (
    MissingCredentials,
    credentials_from_env,
    run_feed,
    run_session,
)
from ledgerflux.feeds.sequence import SequenceTracker, SeqVerdict
from ledgerflux.feeds.session import FeedSession, PublishQueue, SessionStats

__all__ = [
    "Backoff",
    "FeedLoadError",
    "FeedSession",
    "MissingCredentials",
    "PublishQueue",
    "RecordError",
    "ReplayError",
    "ReplayFeed",
    "SeqVerdict",
    "SequenceTracker",
    "SessionStats",
    "TokenBucket",
    "UnknownFeed",
    "available_feeds",
    "credentials_from_env",
    "load_feed",
    "resolve_replay_path",
    "run_feed",
    "run_record",
    "run_replay",
    "run_session",
    "serve_ingest",
]
