"""A token bucket: this replica's share of the fleet-wide rate limit (JOBPUB_RATE_LIMIT).

Synchronous and clock-injected, so it is tested without waiting; the relay asks it how
many rows it may claim and waits out `delay()` when the answer is none.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# A claim takes at most a tenth of a second of the rate, so messages leave in bursts
# that short rather than one row each time a token comes.
CLAIM_SECONDS = 0.1
# The bucket saves up to a quarter of a second of the rate. More than one claim's worth:
# with exactly one, every wait that overran (a timer late on a loaded machine, a claim
# loop busy with a slot) lost what came in meanwhile, and 10,000 rows at 1,000/s took
# 11.4 s instead of 10 (bench rate, 4 replicas). After an idle spell a backlog starts
# with this much at once: 10,000 rows at 1,000/s then take 9.75 s.
BURST_SECONDS = 0.25
# Refills are sums of float products: 99.99999999 tokens are 100.
_ROUNDING = 1e-9


class TokenBucket:
    """`rate` tokens a second, up to `rate * BURST_SECONDS` saved (at least one)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rate = rate
        self._tokens = self.capacity
        self._updated = clock()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return max(1.0, self._rate * BURST_SECONDS)

    def set_rate(self, rate: float) -> None:
        """A new share (the fleet grew or shrank); tokens saved so far are kept, capped."""
        self._refill()
        self._rate = rate
        self._tokens = min(self._tokens, self.capacity)

    def take(self, wanted: int) -> int:
        """`wanted` tokens, or a claim's worth if less, once there; 0 until then."""
        self._refill()
        granted = self._claim_size(wanted)
        if self._tokens + _ROUNDING < granted:
            return 0
        self._tokens = max(0.0, self._tokens - granted)
        return granted

    def give_back(self, unused: int) -> None:
        """Tokens taken for rows a claim did not find."""
        self._tokens = min(self.capacity, self._tokens + unused)

    def delay(self, wanted: int) -> float:
        """Seconds until `take(wanted)` grants tokens."""
        self._refill()
        return max(0.0, (self._claim_size(wanted) - self._tokens) / self._rate)

    def _claim_size(self, wanted: int) -> int:
        return max(1, min(wanted, int(self._rate * CLAIM_SECONDS + _ROUNDING)))

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
