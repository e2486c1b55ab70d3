"""Optimistic Redis transactions (WATCH, then MULTI/EXEC) with one retry policy.

redis-py reports two different things as WatchError: a watched key that
changed (retry: someone else was quicker) and a connection that died while
watching (do not retry: Redis is down or still loading, and retrying would
spin for as long as that lasts). The second becomes StorageUnavailable, as
does a transaction that keeps conflicting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis

from cregistry.errors import StorageUnavailable

T = TypeVar("T")
MAX_ATTEMPTS = 10


def run_watched(connection: redis.Redis, keys: Iterable[str], body: Callable[[Any], T]) -> T:
    """WATCH `keys`, run `body(pipe)`, and EXEC if it called pipe.multi().

    `body` reads with the pipeline in immediate mode, decides (raising a
    domain error or returning early without multi() is fine), then queues
    its writes after pipe.multi(). Its return value is returned once the
    writes are committed.
    """
    keys = list(keys)
    with connection.pipeline() as pipe:
        for _ in range(MAX_ATTEMPTS):
            try:
                pipe.watch(*keys)
                result = body(pipe)
                if pipe.explicit_transaction:
                    pipe.execute()
                return result
            except redis.WatchError as error:
                if _connection_lost(error):
                    raise StorageUnavailable(
                        "cannot reach Redis: the connection went away during a change; nothing was changed"
                    ) from error
                pipe.reset()
    raise StorageUnavailable(f"a change kept conflicting with others ({MAX_ATTEMPTS} tries); nothing was changed")


def _connection_lost(error: redis.WatchError) -> bool:
    cause = error.__cause__ or error.__context__
    return isinstance(cause, redis.ConnectionError | redis.TimeoutError) or "occurred while watching" in str(error)
