"""Reconnect backoff and REST rate limiting: small objects whose shape tests can pin."""

from __future__ import annotations

import random

import trio

__all__ = ["Backoff", "TokenBucket"]


class Backoff:
    """Capped exponential backoff with full jitter.

    The n-th consecutive failure waits ``uniform(0, min(max_s, initial_s * 2**n))``. Full
    jitter spreads many clients that lost the same exchange at once, so they do not come
    back in lockstep. A connection that stayed up for ``healthy_after_s`` resets the count:
    an exchange that drops us once an hour should not be treated like one that is down.
    """

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        *,
        healthy_after_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.healthy_after_s = max_s if healthy_after_s is None else healthy_after_s
        self.failures = 0
        self._rng = rng or random.Random()

    @property
    def ceiling_s(self) -> float:
        """The upper bound of the next delay."""
        # min() before the power would overflow float for very long outages.
        exponent = min(self.failures, 64)
        return min(self.max_s, self.initial_s * 2.0**exponent)

    def next_delay(self, up_for_s: float = 0.0) -> float:
        """The delay before the next attempt, given how long the last one stayed up."""
        if up_for_s >= self.healthy_after_s:
            self.failures = 0
        delay = self._rng.uniform(0.0, self.ceiling_s)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class TokenBucket:
    """At most ``rate_per_s`` acquisitions per second on average, bursts up to ``burst``.

    Used for REST book requests: exchanges ban clients that exceed their public rate limit,
    and a gap storm across many products must not turn into a request storm.
    """

    def __init__(self, rate_per_s: float, burst: float = 1.0) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
        self.rate_per_s = rate_per_s
        self.burst = max(burst, 1.0)
        self._tokens = self.burst
        self._stamp: float | None = None

    async def acquire(self, cost: float = 1.0) -> None:
        """Wait for ``cost`` tokens (a request's weight; a cost above ``burst`` waits for a
        full bucket and leaves it in debt, so the average rate still holds). Cancellation
        while waiting consumes nothing."""
        now = trio.current_time()
        if self._stamp is None:
            self._stamp = now
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now
        need = min(cost, self.burst)
        if self._tokens < need:
            await trio.sleep((need - self._tokens) / self.rate_per_s)
            now = trio.current_time()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_per_s)
            self._stamp = now
        self._tokens -= cost
