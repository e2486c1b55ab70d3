"""Redis connections, configured by one URL (redis://, rediss://, unix://)."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cregistry.errors import ConfigError

SCHEMES = ("redis://", "rediss://", "unix://")


def connect(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast instead of retrying.

    redis-py retries failed commands by default; on the broker path a retry
    only makes go-auth (and with it the whole broker) wait longer before the
    503 it will get anyway, so every command gets one try within `timeout`.
    """
    if not url.startswith(SCHEMES):
        raise ConfigError(f"CREGISTRY_REDIS_URL must start with one of {', '.join(SCHEMES)}")
    try:
        return redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
    except ValueError as error:
        raise ConfigError(f"CREGISTRY_REDIS_URL is not usable: {error}") from None


def configuration_problem(error: redis.RedisError) -> str | None:
    """What about a Redis error no retry can fix, or None.

    A URL naming a database the server does not have, or credentials it
    refuses, fails on every connection: that is a configuration error
    (CLI exit 2, `serve` refuses to start), not an unreachable Redis.
    """
    if isinstance(error, redis.AuthenticationError):
        return f"CREGISTRY_REDIS_URL: Redis refuses the credentials ({error})"
    if isinstance(error, redis.ResponseError) and "DB index is out of range" in str(error):
        return f"CREGISTRY_REDIS_URL names a database this Redis does not have ({error})"
    return None
