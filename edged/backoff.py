"""Waits between reconnection attempts, shared by cameras and the broker connection."""

from __future__ import annotations

import random

from edged.config import Backoff


class Retry:
    """Exponential backoff with jitter: `min` doubling to `max`, each wait within ±20 %.

    Jitter keeps cameras (and a fleet of edge boxes) that lost the same network or broker from
    hammering it back in lockstep.
    """

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._next = backoff.min

    def next_wait(self) -> float:
        wait = self._next
        self._next = min(self._next * 2, self._backoff.max)
        return wait * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self._backoff.min
