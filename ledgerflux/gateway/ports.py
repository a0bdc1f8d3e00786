"""What the gateway needs from its neighbours, as structural types.

The gateway codes against these protocols, not against the concrete classes, so that the
real :mod:`ledgerflux.bus`, :mod:`ledgerflux.store` and :mod:`ledgerflux.state` and the small
fakes in the tests are interchangeable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

import trio

from ledgerflux.candles import Candle
from ledgerflux.events import Event

__all__ = [
    "BusLike",
    "CandleStoreLike",
    "InMsgLike",
    "ProductStateLike",
    "ReadinessLike",
    "StateFactory",
    "StateRowLike",
    "StoreLike",
    "StreamStateLike",
]


class InMsgLike(Protocol):
    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def stream_seq(self) -> int: ...


class StreamStateLike(Protocol):
    @property
    def first_seq(self) -> int: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def messages(self) -> int: ...


class BusLike(Protocol):
    def ordered(
        self,
        stream: str,
        filter_subject: str,
        *,
        start_seq: int | None = None,
        max_batch: int = 512,
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[list[Any]]]: ...

    async def stream_state(self, stream: str) -> Any: ...


class StateRowLike(Protocol):
    @property
    def product(self) -> str: ...
    @property
    def stream_seq(self) -> int | None: ...
    @property
    def state(self) -> Mapping[str, Any]: ...


class StoreLike(Protocol):
    async def latest_states(self, products: Sequence[str] | None = None) -> Sequence[Any]: ...

    async def history(
        self, product: str, epoch: str, from_seq: int, to_seq: int | None = None, limit: int = ...
    ) -> Sequence[Event]: ...


@runtime_checkable
class CandleStoreLike(Protocol):
    """A store that also keeps candles (:class:`ledgerflux.store.Store` does). Optional:
    with any other store the gateway's live candles start empty and ``/api/candles``
    answers 503."""

    async def candles(
        self, product: str, start_ns: int, end_ns: int, limit: int = ...
    ) -> Sequence[Candle]: ...

    async def latest_candles(self, products: Sequence[str] | None = None) -> Sequence[Candle]: ...


class ProductStateLike(Protocol):
    """:class:`ledgerflux.state.ProductState` as the gateway uses it."""

    @property
    def seq(self) -> int: ...
    @property
    def epoch(self) -> str: ...
    def apply(self, event: Event, *, strict_book: bool = ...) -> None: ...
    def to_json(self) -> dict[str, Any]: ...


class StateFactory(Protocol):
    def __call__(self, product: str) -> ProductStateLike: ...

    def from_json(self, doc: dict[str, Any], /) -> ProductStateLike: ...


class ReadinessLike(Protocol):
    """:class:`ledgerflux.health.Readiness`: the process-wide readiness (the caller sets it
    ready once every daemon it runs has started; the gateway marks it draining)."""

    def set_ready(self) -> None: ...
    def set_draining(self) -> None: ...
    @property
    def is_ready(self) -> bool: ...
