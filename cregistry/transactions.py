"""Optimistic Redis transactions (WATCH, then MULTI/EXEC) with one retry
policy, server-side scripts (the other atomic step: ServerScript), and the
one place where an operator change waits for replicas.

redis-py reports two different things as WatchError: a watched key that
changed (retry: someone else was quicker) and a connection that died while
watching (do not retry: Redis is down or still loading, and retrying would
spin for as long as that lasts). The second becomes StorageUnavailable, as
does a transaction that keeps conflicting.

With CREGISTRY_REDIS_MIN_REPLICAS=n, a durable change is followed by
`WAIT n timeout` on the connection that ran its EXEC (WAIT counts the
replicas that have this client's last write), so an acknowledged approval
survives a Sentinel failover. Inside MULTI, WAIT would not block, hence
after EXEC, in the same round of the same connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis
import redis.client

from cregistry.connections import Client
from cregistry.errors import ReplicasUnconfirmed, StorageUnavailable

T = TypeVar("T")
MAX_ATTEMPTS = 10
# How long a change waits for its replicas at most. WAIT answers when its
# time is up, and that answer must arrive before the connection's socket
# timeout (CREGISTRY_REDIS_TIMEOUT in the service; cli/context.py's
# CLI_REDIS_TIMEOUT in the CLI), so the wait is also at most 80 % of that.
# Admin changes are not under the broker checks' budget (budget.py), but an
# operator's click still answers within about 2 s.
REPLICA_WAIT_SECONDS = 1.0
SOCKET_SHARE = 0.8


def run_watched(connection: redis.Redis, keys: Iterable[str], body: Callable[[Any], T], *, durable: bool = True) -> T:
    """WATCH `keys`, run `body(pipe)`, and EXEC if it called pipe.multi().

    `body` reads with the pipeline in immediate mode, decides (raising a
    domain error or returning early without multi() is fine), then queues
    its writes after pipe.multi(). Its return value is returned once the
    writes are committed (and, when `durable`, confirmed by
    CREGISTRY_REDIS_MIN_REPLICAS replicas). With no `keys` nothing is
    watched and `body` must call pipe.multi() before anything else.

    durable=False is for what devices cause (pending requests), which a
    failover may lose without harm: the device simply asks again.
    """
    keys = list(keys)
    replicas = connection.min_replicas if durable and isinstance(connection, Client) else 0
    pipe = _ReplicatedPipeline(connection, replicas) if replicas else connection.pipeline()
    with pipe:
        for _ in range(MAX_ATTEMPTS):
            try:
                if keys:
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


class ServerScript:
    """A Lua script that Redis runs as one atomic step, in one round trip:
    sent by its digest, and whole only when Redis does not have it (its
    script cache is empty after a restart or SCRIPT FLUSH)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def run(self, connection: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return connection.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return connection.eval(self.source, len(keys), *keys, *args)


def _connection_lost(error: redis.WatchError) -> bool:
    cause = error.__cause__ or error.__context__
    return isinstance(cause, redis.ConnectionError | redis.TimeoutError) or "occurred while watching" in str(error)


class _ReplicatedPipeline(redis.client.Pipeline):
    """A transaction pipeline that sends WAIT right after its EXEC, on the
    same connection (redis-py gives that connection back to the pool when
    execute() returns, so waiting afterwards could ask the wrong client)."""

    def __init__(self, client: redis.Redis, replicas: int) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, True, None)
        self.replicas = replicas

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: Any) -> Any:
        results = super()._execute_transaction(connection, commands, raise_on_error)
        seconds = replica_wait_seconds(getattr(connection, "socket_timeout", None))
        try:
            connection.send_command("WAIT", self.replicas, max(1, int(seconds * 1000)))
            confirmed = int(connection.read_response())
        except redis.RedisError as error:
            connection.disconnect()  # its answer is unknown; never reuse it
            raise _unconfirmed(self.replicas, None, seconds) from error
        if confirmed < self.replicas:
            raise _unconfirmed(self.replicas, confirmed, seconds)
        return results


def replica_wait_seconds(socket_timeout: float | None) -> float:
    """The WAIT timeout for a connection with this socket timeout."""
    if not socket_timeout:
        return REPLICA_WAIT_SECONDS
    return min(REPLICA_WAIT_SECONDS, SOCKET_SHARE * socket_timeout)


def _unconfirmed(required: int, confirmed: int | None, seconds: float) -> ReplicasUnconfirmed:
    got = "the replicas' answer was lost" if confirmed is None else f"only {confirmed} replica(s) confirmed it"
    return ReplicasUnconfirmed(
        f"the change was made on the Redis primary, but {got} within {seconds:g} s"
        f" (CREGISTRY_REDIS_MIN_REPLICAS={required}): a failover may still lose it; check, and repeat it if missing"
    )
