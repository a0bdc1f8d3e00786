"""Logging setup: structlog for LedgerFlux's own events, with the standard library's
``logging`` (libraries: hypercorn, nats, boto3) routed through the same renderer, so one
process writes one format to stderr: readable ``console`` lines or ``json`` lines (orjson)
for a log shipper."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import orjson
import structlog

__all__ = [
    "RateLimitedLog",
    "bind_daemon",
    "bind_process",
    "configure_logging",
    "describe_error",
]

LogFormat = Literal["console", "json"]


def _orjson_dumps(obj: Any, **_: Any) -> str:
    # default=str: an unexpected object in an event (a Path, a Decimal) is rendered, not
    # an exception in the middle of logging.
    return orjson.dumps(obj, default=str).decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the write, so a replaced stderr
    (test capture, a daemonizing wrapper) never leaves the handler on a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


_CHATTY_LIBRARIES = ("pgserver", "hypercorn.error", "botocore", "urllib3")


def configure_logging(level: str = "info", fmt: LogFormat | str = "console") -> None:
    """Route structlog and stdlib logging to stderr at *level* in format *fmt*.

    Safe to call again (the last call wins): it replaces the root handler it installed.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("console", "json"):
        raise ValueError(f"unknown log format {fmt!r}; expected 'console' or 'json'")

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_process_context,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.set_name("ledgerflux")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "ledgerflux"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # Libraries that narrate every step at INFO (pgserver prints whole initdb transcripts):
    # their warnings and errors still come through.
    for chatty in _CHATTY_LIBRARIES:
        logging.getLogger(chatty).setLevel(max(numeric, logging.WARNING))


_PROCESS_CONTEXT: dict[str, Any] = {}
"""Fields for lines logged outside any bound context: the asyncio thread of the bus
bridge (nats-py's callbacks), library threads. Set by :func:`bind_process`."""


def _add_process_context(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in _PROCESS_CONTEXT.items():
        event.setdefault(key, value)
    return event


def bind_process(daemon: str, shard: int | None = None) -> None:
    """The process's own ``daemon`` and ``shard``: every line carries them unless a task
    bound its own (:func:`bind_daemon`, the stages of ``ledgerflux up``)."""
    _PROCESS_CONTEXT.update(daemon=daemon, shard=shard)


@contextlib.contextmanager
def bind_daemon(daemon: str, shard: int | None = None) -> Iterator[None]:
    """Every line logged inside (in this task and the tasks it starts: Trio copies the
    context into each new task) carries ``daemon`` and ``shard`` (None outside a
    normalizer shard)."""
    with structlog.contextvars.bound_contextvars(daemon=daemon, shard=shard):
        yield


class RateLimitedLog:
    """At most one line per key every ``interval_s``; the lines held back in between are
    counted and reported as ``suppressed=N`` on the next line that goes out.

    For events that can repeat once per message (``snapshot.seq_gap`` during a retention
    purge): the first one is logged at once, a storm becomes one line per interval.
    """

    def __init__(
        self,
        logger: Any,
        interval_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: str, event: str, *, key: str | None = None, **fields: Any) -> bool:
        """Log *event* at *level* unless its key (default: the event name) was logged
        less than ``interval_s`` ago; True when the line went out."""
        key = event if key is None else key
        now = self.clock()
        if now < self._next.get(key, float("-inf")):
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._next[key] = now + self.interval_s
        held = self._held.pop(key, 0)
        if held:
            fields["suppressed"] = held
        getattr(self.logger, level)(event, **fields)
        return True


def describe_error(exc: BaseException) -> str:
    """``"TimeoutError: no answer"``: an exception as a log field, never its Python repr
    (``TimeoutError('no answer')``) and never empty (``str()`` of many exceptions is)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
