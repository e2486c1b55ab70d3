"""How long the agent waits before it tries again."""

from __future__ import annotations

import random as random_module
from collections.abc import Callable


class Backoff:
    """Exponential backoff with full jitter: the n-th delay is uniform in
    [0, min(maximum, initial * 2**n)], so a fleet that lost its broker at the
    same moment does not come back at the same moment."""

    def __init__(
        self, initial: float = 1.0, maximum: float = 60.0, random: Callable[[], float] = random_module.random
    ) -> None:
        self.initial = min(initial, maximum)
        self.maximum = maximum
        self.random = random
        self.attempts = 0

    def ceiling(self) -> float:
        # min() before the power would overflow: 2**1100 is not a float.
        return min(self.maximum, self.initial * 2 ** min(self.attempts, 64))

    def next_delay(self) -> float:
        delay = self.random() * self.ceiling()
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
