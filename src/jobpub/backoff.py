"""Capped exponential backoff with jitter, for reconnect loops."""

from __future__ import annotations

import random


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
