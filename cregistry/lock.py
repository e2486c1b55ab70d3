"""The registry's lock: while the unlock key exists (a Redis string with a
TTL), unknown devices that ask become pending requests; without it the
registry is locked. Unlocking and locking are audited operator changes."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline

from cregistry import names
from cregistry.audit import UNNAMED_ACTOR, AuditLog
from cregistry.config import MAX_UNLOCK_SECONDS, Config
from cregistry.keys import Keys
from cregistry.transactions import run_watched

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LockState:
    """`locked` while new requests are refused (no unlock key, 0 s
    left); otherwise the seconds until the registry locks again."""

    locked: bool
    seconds_left: int

    def to_dict(self) -> dict[str, Any]:
        return {"locked": self.locked, "secondsLeft": self.seconds_left}


@dataclasses.dataclass(eq=False)
class RegistryLock:
    """The unlock key. Takes its connection and collaborators explicitly."""

    redis: redis.Redis
    config: Config
    clock: Callable[[], float] = time.time
    _: dataclasses.KW_ONLY
    keys: Keys
    audit: AuditLog

    def status(self) -> LockState:
        milliseconds = self.redis.pttl(self.keys.unlock())
        if milliseconds is None or milliseconds < 0:
            return LockState(locked=True, seconds_left=0)
        return LockState(locked=False, seconds_left=math.ceil(milliseconds / 1000))

    def unlock(self, seconds: object = None, *, actor: str = UNNAMED_ACTOR) -> LockState:
        """Open the registry for `seconds` (default CREGISTRY_UNLOCK_SECONDS, at most an hour)."""
        if seconds is None:
            seconds = self.config.unlock_seconds
        seconds = names.validate_int_within(seconds, "seconds", 1, MAX_UNLOCK_SECONDS)

        def open_registry(pipe: Pipeline) -> None:
            pipe.multi()
            pipe.set(self.keys.unlock(), repr(self.clock()), ex=seconds)
            self.audit.add(pipe, actor, "registry.unlock", "registry", seconds=seconds)

        run_watched(self.redis, [], open_registry)
        log.info("registry unlocked for %d s by %s", seconds, actor)
        return self.status()

    def lock(self, *, actor: str = UNNAMED_ACTOR) -> LockState:
        def close_registry(pipe: Pipeline) -> None:
            pipe.multi()
            pipe.delete(self.keys.unlock())
            self.audit.add(pipe, actor, "registry.lock", "registry")

        run_watched(self.redis, [], close_registry)
        log.info("registry locked by %s", actor)
        return self.status()
