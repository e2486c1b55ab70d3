"""CREGISTRY_REDIS_URL in its Sentinel form and CREGISTRY_REDIS_MIN_REPLICAS."""

from __future__ import annotations

import pytest
import redis.sentinel
from click.testing import CliRunner

import cregistry.cli
from cregistry.config import Config
from cregistry.connections import Client, SentinelTarget, connect, parse_sentinel_url
from cregistry.errors import ConfigError
from cregistry.transactions import replica_wait_seconds


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (
            "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0",
            SentinelTarget((("127.0.0.1", 26379), ("127.0.0.1", 26380)), "mymaster", 0),
        ),
        ("redis+sentinel://sentinel-a/cregistry", SentinelTarget((("sentinel-a", 26379),), "cregistry", 0)),
        (
            "redis+sentinel://[::1]:26381,s2:1/main/3",
            SentinelTarget((("::1", 26381), ("s2", 1)), "main", 3),
        ),
        (
            "redis+sentinel://:s3cret@127.0.0.1:26379/mymaster",
            SentinelTarget((("127.0.0.1", 26379),), "mymaster", 0, None, "s3cret"),
        ),
        (
            "redis+sentinel://svc:s3cret@127.0.0.1:26379/mymaster/1",
            SentinelTarget((("127.0.0.1", 26379),), "mymaster", 1, "svc", "s3cret"),
        ),
    ],
)
def test_sentinel_urls_name_the_sentinels_service_and_db(url: str, target: SentinelTarget) -> None:
    assert parse_sentinel_url(url) == target
    assert Config(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel:///mymaster/0", "needs at least one sentinel HOST:PORT"),
        ("redis+sentinel://", "needs at least one sentinel HOST:PORT"),
        ("redis+sentinel://127.0.0.1:26379", "needs the service name"),
        ("redis+sentinel://127.0.0.1:26379/", "needs the service name"),
        ("redis+sentinel://127.0.0.1:26379//0", "needs the service name"),
        ("redis+sentinel://127.0.0.1:notaport/mymaster", "bad port in sentinel address '127.0.0.1:notaport'"),
        ("redis+sentinel://127.0.0.1:0/mymaster", "bad port"),
        ("redis+sentinel://127.0.0.1:65536/mymaster", "bad port"),
        ("redis+sentinel://127.0.0.1:26379,/mymaster", "without a host"),
        ("redis+sentinel://:26379/mymaster", "without a host"),
        ("redis+sentinel://::1:26379/mymaster", "write IPv6 addresses as [::1]:26379"),
        ("redis+sentinel://[::1/mymaster", "bad sentinel address"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/x", "the database must be a number"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/-1", "the database must be a number"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/0/extra", "expected .../SERVICE_NAME[/DB]"),
        ("redis+sentinel://127.0.0.1:26379/my master", "spaces or control characters"),
        ("redis+sentinel://127.0.0.1:26379/mymaster?ssl=1", "takes no ?options"),
        ("redis+sentinel://user@127.0.0.1:26379/mymaster", "credentials in a redis+sentinel:// URL"),
        ("sentinel://127.0.0.1:26379/mymaster", "must start with one of"),
        ("redis://127.0.0.1:notaport/0", "is not usable"),
    ],
)
def test_bad_urls_are_refused_in_one_line_naming_the_variable(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as refused:
        connect(url, timeout=1.0)  # before it connects to anything
    message = str(refused.value)
    assert message.startswith("CREGISTRY_REDIS_URL")
    assert complaint in message
    assert "\n" not in message


def test_min_replicas_defaults_to_0_and_is_range_checked() -> None:
    assert Config.from_env({}).redis_min_replicas == 0
    assert Config.from_env({"CREGISTRY_REDIS_MIN_REPLICAS": "1"}).redis_min_replicas == 1
    refusals = (("-1", "must be an integer from 0 to 100"), ("101", "must be an integer"), ("one", "must be a number"))
    for raw, complaint in refusals:
        with pytest.raises(ConfigError, match=f"^CREGISTRY_REDIS_MIN_REPLICAS {complaint}"):
            Config.from_env({"CREGISTRY_REDIS_MIN_REPLICAS": raw})


def test_a_sentinel_url_gives_a_client_of_the_named_master_that_fails_fast() -> None:
    # Nothing listens on these ports: connect() must not touch the network.
    client = connect("redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/2", 0.2, min_replicas=1)
    assert isinstance(client, Client)
    assert client.min_replicas == 1
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["socket_timeout"] == 0.2
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["port"]) for s in sentinels] == [1, 2]
    with pytest.raises(redis.sentinel.MasterNotFoundError):
        client.ping()
    client.close()


def test_a_plain_url_gives_a_client_too() -> None:
    client = connect("redis://127.0.0.1:1/0", 0.2)
    assert isinstance(client, Client)
    assert client.min_replicas == 0
    client.close()


@pytest.mark.parametrize("args", [["status"], ["unlock"], ["serve"]])
def test_the_cli_refuses_a_bad_sentinel_url_with_exit_2(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREGISTRY_REDIS_URL", "redis+sentinel://127.0.0.1:26379")
    result = CliRunner().invoke(cregistry.cli.cli, args)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "Error: CREGISTRY_REDIS_URL: a redis+sentinel:// URL needs the service name: .../SERVICE_NAME[/DB]\n"
    )


def test_the_cli_says_when_no_master_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREGISTRY_REDIS_URL", "redis+sentinel://127.0.0.1:1/mymaster")
    result = CliRunner().invoke(cregistry.cli.cli, ["status"])
    assert result.exit_code == 6, result.output
    assert result.stderr == "Error: cannot reach Redis (MasterNotFoundError) at CREGISTRY_REDIS_URL\n"


def test_the_replica_wait_ends_before_the_socket_timeout() -> None:
    # WAIT answers when its time is up; that answer must beat the socket timeout.
    assert replica_wait_seconds(0.5) == 0.4
    assert replica_wait_seconds(5.0) == 1.0
    assert replica_wait_seconds(None) == 1.0
