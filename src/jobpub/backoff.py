"""Capped exponential backoff with jitter, for reconnect loops."""

from __future__ import annotations

import random

# The longest wait between reconnect attempts. A replica is ready again at most this
# long after its broker or database returns; an attempt every 2 s costs them nothing.
RECONNECT_MAX_S = 2.0


class Backoff:
    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._maximum = maximum
        self._attempt = 0

    def next(self) -> float:
        """The next delay: doubling from `initial`, capped, with up to 50% jitter off."""
        ceiling = min(self._maximum, self._initial * 2.0**self._attempt)
        self._attempt += 1
        # Jitter keeps a fleet of replicas from reconnecting in lockstep; not cryptographic.
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311

    def reset(self) -> None:
        self._attempt = 0
