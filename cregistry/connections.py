"""Redis connections, configured by one URL: redis://, rediss://, unix://, or
redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from cregistry.config import REDIS_URL, env_name
from cregistry.errors import ConfigError
from cregistry.names import decimal

SENTINEL_SCHEME = "redis+sentinel://"
SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)
DEFAULT_SENTINEL_PORT = 26379
URL_NAME = env_name(REDIS_URL)


class Client(redis.Redis):
    """A redis.Redis that knows how many replicas must confirm an operator
    change before it is acknowledged (CREGISTRY_REDIS_MIN_REPLICAS; see
    transactions.py, the one place that waits for them)."""

    min_replicas: int = 0


@dataclasses.dataclass(frozen=True)
class SentinelTarget:
    """What a redis+sentinel:// URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def check_url(url: str) -> None:
    """Refuse a CREGISTRY_REDIS_URL cregistry cannot use, in one line that names it."""
    if not url.startswith(SCHEMES):
        raise ConfigError(f"{URL_NAME} must start with one of {', '.join(SCHEMES)}")
    if url.startswith(SENTINEL_SCHEME):
        parse_sentinel_url(url)
        return
    try:
        redis.ConnectionPool.from_url(url)  # parses only; connects to nothing
    except ValueError as error:
        raise ConfigError(f"{URL_NAME} is not usable: {error}") from None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE_NAME[/DB]

    The password (if any) is the one of the Redis servers; the sentinels are
    asked without one.
    """
    rest = url[len(SENTINEL_SCHEME) :]
    if "?" in rest or "#" in rest:
        raise ConfigError(f"{URL_NAME}: a redis+sentinel:// URL takes no ?options or #fragment")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user_text, has_password, password_text = userinfo.partition(":")
        if not has_password or not password_text:
            raise ConfigError(f"{URL_NAME}: credentials in a redis+sentinel:// URL are [USER]:PASSWORD@")
        username, password = user_text or None, password_text
    if not netloc:
        raise ConfigError(f"{URL_NAME}: a redis+sentinel:// URL needs at least one sentinel HOST:PORT")
    sentinels = tuple(_sentinel_address(item) for item in netloc.split(","))
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise ConfigError(f"{URL_NAME}: a redis+sentinel:// URL needs the service name: .../SERVICE_NAME[/DB]")
    if len(parts) > 2:
        raise ConfigError(f"{URL_NAME}: expected .../SERVICE_NAME[/DB] after the sentinels, got /{path}")
    service_name = parts[0]
    if any(not c.isprintable() or c.isspace() for c in service_name):
        raise ConfigError(f"{URL_NAME}: the service name {service_name!r} holds spaces or control characters")
    db = 0
    if len(parts) == 2:
        number = decimal(parts[1])
        if number is None or number > 1_000_000:
            raise ConfigError(f"{URL_NAME}: the database must be a number (0, 1, ...), got {parts[1]!r}")
        db = number
    return SentinelTarget(sentinels, service_name, db, username, password)


def _sentinel_address(item: str) -> tuple[str, int]:
    text = item.strip()
    if text.startswith("["):  # [::1]:26379
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ConfigError(f"{URL_NAME}: bad sentinel address {item!r}")
        port_text = port_text[1:]
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise ConfigError(f"{URL_NAME}: bad sentinel address {item!r} (write IPv6 addresses as [::1]:26379)")
    if not host:
        raise ConfigError(f"{URL_NAME}: a sentinel address without a host: {item!r}")
    if port_text == "":
        return host, DEFAULT_SENTINEL_PORT
    port = decimal(port_text)
    if port is None or not 0 < port < 65536:
        raise ConfigError(f"{URL_NAME}: bad port in sentinel address {item!r}")
    return host, port


def connect(url: str, timeout: float, *, min_replicas: int = 0) -> Client:
    """A client that fails fast instead of retrying.

    redis-py retries failed commands by default; on the broker path a retry
    only makes go-auth (and with it the whole broker) wait longer before the
    503 it will get anyway, so every command gets one try within `timeout`.
    Through Sentinel, every new connection asks the sentinels where the
    primary is, so after a failover the next command finds the new one.
    """
    check_url(url)
    fail_fast: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    client: Client
    if url.startswith(SENTINEL_SCHEME):
        target = parse_sentinel_url(url)
        sentinel = redis.sentinel.Sentinel(
            list(target.sentinels),
            sentinel_kwargs={key: value for key, value in fail_fast.items() if key != "health_check_interval"},
        )
        client = sentinel.master_for(
            target.service_name,
            redis_class=Client,
            db=target.db,
            username=target.username,
            password=target.password,
            decode_responses=True,
            **fail_fast,
        )
    else:
        try:
            client = cast(Client, Client.from_url(url, decode_responses=True, **fail_fast))
        except ValueError as error:
            raise ConfigError(f"{URL_NAME} is not usable: {error}") from None
    client.min_replicas = min_replicas
    return client


def configuration_problem(error: redis.RedisError) -> str | None:
    """What about a Redis error no retry can fix, or None.

    A URL naming a database the server does not have, or credentials it
    refuses, fails on every connection: that is a configuration error
    (CLI exit 2, `serve` refuses to start), not an unreachable Redis.
    """
    if isinstance(error, redis.AuthenticationError):
        return f"{URL_NAME}: Redis refuses the credentials ({error})"
    if isinstance(error, redis.ResponseError) and "DB index is out of range" in str(error):
        return f"{URL_NAME} names a database this Redis does not have ({error})"
    return None
