"""Refusals per client address in a fixed window: console sign-ins and
enrollment tokens. In Redis, so that every worker and instance counts together;
over the limit the caller refuses without looking at what was sent, so
guessing stops there."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import redis


@dataclasses.dataclass(frozen=True)
class AddressLimit:
    redis: redis.Redis
    _: dataclasses.KW_ONLY
    key: Callable[[str], str]  # the counter's key for an address (keys.py)
    limit: int
    window: int  # seconds

    def seconds_blocked(self, address: str) -> int:
        """0 while the address is under the limit, else the seconds until its window ends."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.key(address))
        pipe.pttl(self.key(address))
        count, milliseconds = pipe.execute()
        if int(count or 0) < self.limit:
            return 0
        return max(1, math.ceil((milliseconds or 0) / 1000))

    def blocked(self, address: str) -> bool:
        return self.seconds_blocked(address) > 0

    def failed(self, address: str) -> None:
        key = self.key(address)
        pipe = self.redis.pipeline()
        # The window starts with the first refusal and is not extended by later ones.
        pipe.set(key, 0, ex=self.window, nx=True)
        pipe.incr(key)
        pipe.execute()

    def clear(self, address: str) -> None:
        self.redis.delete(self.key(address))
