"""CREGISTRY_* settings: defaults, parsing, refusals, and the key prefix."""

from __future__ import annotations

import fakeredis
import pytest

from cregistry import services
from cregistry.config import Config, parse_listen
from cregistry.errors import ConfigError

from .conftest import FakeClock, acl


def test_defaults() -> None:
    config = Config.from_env({})
    assert config.redis_url is None
    assert config.key_prefix == "cregistry"
    assert config.admin_token is None
    assert config.unlock_seconds == 300
    assert config.bcrypt_cost == 10
    assert config.pending_ttl == 24 * 3600
    assert config.pending_max == 1000
    assert config.pending_per_username == 3
    assert config.password_min_length == 5
    assert config.password_require == ()
    assert config.api_listen == "0.0.0.0:8080"
    assert config.broker_listen == "127.0.0.1:8081"
    assert Config() == config


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREGISTRY_BCRYPT_COST", "12")
    monkeypatch.setenv("CREGISTRY_REDIS_URL", "redis://localhost:6379/2")
    config = Config.from_env()
    assert config.bcrypt_cost == 12
    assert config.redis_url == "redis://localhost:6379/2"


def test_from_env_parses_every_kind_of_value() -> None:
    config = Config.from_env(
        {
            "CREGISTRY_REDIS_URL": "unix:///run/redis.sock",
            "CREGISTRY_KEY_PREFIX": "fleet-1",
            "CREGISTRY_ADMIN_TOKEN": "s3cret-token-of-24-chars",
            "CREGISTRY_UNLOCK_SECONDS": "600",
            "CREGISTRY_BCRYPT_COST": "12",
            "CREGISTRY_PENDING_TTL": "3600",
            "CREGISTRY_PENDING_MAX": "50",
            "CREGISTRY_PENDING_PER_USERNAME": "5",
            "CREGISTRY_PASSWORD_MIN_LENGTH": "12",
            "CREGISTRY_PASSWORD_REQUIRE": "upper,digit",
            "CREGISTRY_API_LISTEN": "127.0.0.1:9000",
            "CREGISTRY_BROKER_LISTEN": "[::1]:9001",
            "CREGISTRY_REDIS_TIMEOUT": "0.25",
        }
    )
    assert config.redis_url == "unix:///run/redis.sock"
    assert config.key_prefix == "fleet-1"
    assert config.admin_token == "s3cret-token-of-24-chars"
    assert config.unlock_seconds == 600
    assert config.bcrypt_cost == 12
    assert config.pending_ttl == 3600
    assert config.pending_max == 50
    assert config.pending_per_username == 5
    assert config.password_min_length == 12
    assert config.password_require == ("upper", "digit")
    assert config.api_listen == "127.0.0.1:9000"
    assert config.broker_listen == "[::1]:9001"
    assert config.redis_timeout == 0.25


def test_password_require_tolerates_spaces_and_empty_parts() -> None:
    config = Config.from_env({"CREGISTRY_PASSWORD_REQUIRE": " lower , symbol ,"})
    assert config.password_require == ("lower", "symbol")


def test_empty_values_mean_the_default() -> None:
    config = Config.from_env({"CREGISTRY_BCRYPT_COST": "", "CREGISTRY_KEY_PREFIX": ""})
    assert (config.bcrypt_cost, config.key_prefix) == (10, "cregistry")


def test_unrelated_variables_are_ignored() -> None:
    config = Config.from_env({"BCRYPT_COST": "5", "CREGISTRY_UNKNOWN": "x", "cregistry_bcrypt_cost": "5"})
    assert config.bcrypt_cost == 10


def test_keyword_overrides_win() -> None:
    config = Config.from_env({"CREGISTRY_BCRYPT_COST": "12"}, bcrypt_cost=4)
    assert config.bcrypt_cost == 4


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CREGISTRY_UNLOCK_SECONDS", "abc"),
        ("CREGISTRY_UNLOCK_SECONDS", "0"),
        ("CREGISTRY_UNLOCK_SECONDS", "3601"),
        ("CREGISTRY_UNLOCK_SECONDS", "1.5"),
        ("CREGISTRY_BCRYPT_COST", "3"),
        ("CREGISTRY_BCRYPT_COST", "32"),
        ("CREGISTRY_BCRYPT_COST", "ten"),
        ("CREGISTRY_PENDING_TTL", "0"),
        ("CREGISTRY_PENDING_TTL", "-5"),
        ("CREGISTRY_PENDING_MAX", "-1"),
        ("CREGISTRY_PENDING_MAX", "many"),
        ("CREGISTRY_PENDING_PER_USERNAME", "0"),
        ("CREGISTRY_PASSWORD_MIN_LENGTH", "0"),
        ("CREGISTRY_PASSWORD_MIN_LENGTH", "73"),
        ("CREGISTRY_PASSWORD_REQUIRE", "upper,emoji"),
        ("CREGISTRY_PASSWORD_REQUIRE", "UPPER"),
        ("CREGISTRY_KEY_PREFIX", "a:b"),
        ("CREGISTRY_KEY_PREFIX", "a{b}"),
        ("CREGISTRY_KEY_PREFIX", "a b"),
        ("CREGISTRY_API_LISTEN", "8080"),
        ("CREGISTRY_API_LISTEN", "0.0.0.0:http"),
        ("CREGISTRY_API_LISTEN", "0.0.0.0:0"),
        ("CREGISTRY_API_LISTEN", "0.0.0.0:65536"),
        ("CREGISTRY_BROKER_LISTEN", ":8081"),
        ("CREGISTRY_REDIS_TIMEOUT", "fast"),
        ("CREGISTRY_REDIS_TIMEOUT", "0"),
        ("CREGISTRY_REDIS_TIMEOUT", "nan"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        Config.from_env({variable: value})
    assert variable in str(error.value)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"CREGISTRY_ADMIN_TOKEN": "short"}, "CREGISTRY_ADMIN_TOKEN must be at least 16 characters"),
        ({"CREGISTRY_ADMIN_TOKEN": "x" * 15}, "CREGISTRY_ADMIN_TOKEN must be at least 16 characters"),
        (
            {"CREGISTRY_ADMIN_TOKENS": "ops=short"},
            "CREGISTRY_ADMIN_TOKENS must be NAME=TOKEN,... with tokens of 16 characters or more",
        ),
    ],
)
def test_one_length_rule_for_every_admin_token(variables: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Config.from_env(variables)
    assert str(error.value) == message


def test_an_admin_token_of_16_characters_is_enough() -> None:
    token = "x" * 16
    config = Config.from_env({"CREGISTRY_ADMIN_TOKEN": token, "CREGISTRY_ADMIN_TOKENS": f"ops={token}"})
    assert config.named_admin_tokens() == {"admin": token, "ops": token}


def test_same_port_for_both_listeners_is_refused_naming_both_variables() -> None:
    with pytest.raises(ConfigError) as error:
        Config.from_env({"CREGISTRY_API_LISTEN": "0.0.0.0:8081"})
    assert "CREGISTRY_API_LISTEN" in str(error.value)
    assert "CREGISTRY_BROKER_LISTEN" in str(error.value)


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_listen("[::1]:8081") == ("::1", 8081)
    with pytest.raises(ConfigError):
        parse_listen("localhost")
    for port in ("\u00b2", "\u0663\u0663"):  # digits to str.isdigit(), not to a port: a ConfigError, not a ValueError
        with pytest.raises(ConfigError, match="must look like HOST:PORT"):
            parse_listen(f"127.0.0.1:{port}")


# -- key prefix -----------------------------------------------------------------
def test_every_key_starts_with_the_configured_prefix(connection: fakeredis.FakeRedis, clock: FakeClock) -> None:
    config = Config(bcrypt_cost=4, key_prefix="other")
    domain = services.build(connection, config, clock=clock)
    lock, requests, registration, users = domain.lock, domain.requests, domain.registration, domain.users
    lock.unlock()
    for password in ("secret1", "secret2"):
        registration.record_attempt("sensor-1", password, "c", "mqtt")
    registration.record_attempt("sensor-2", "secret1", "c", "mqtt")
    registration.record_attempt("sensor-3", "secret1", "c", "rest", {"a": 1})
    requests.deny("sensor-3")
    requests.approve("sensor-1", requests.requests_for("sensor-1")[0].pairing_id)
    users.add("backend", "backend-password", superuser=True)
    users.grant("sensor-1", "devices/%u/#", "readWrite")
    users.roles.grant("devices", "a/#", "read")
    users.assign_role("sensor-1", "devices")
    assert domain.authorizer.check_acl(acl("sensor-1", "c", "devices/sensor-1/x", 2)).allowed
    keys = connection.keys("*")
    assert len(keys) >= 10
    assert all(key.startswith("other:") for key in keys), keys
    # The default prefix sees none of it.
    default = services.build(connection, Config(bcrypt_cost=4), clock=clock)
    assert default.lock.status().locked is True
    assert default.requests.list_requests() == []
    assert default.users.list_users() == []


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"CREGISTRY_ADMIN_TOKEN": "x" * 16, "CREGISTRY_ADMIN_TOKENS": f"admin={'y' * 16}"},
            "CREGISTRY_ADMIN_TOKENS names 'admin' twice (the name of CREGISTRY_ADMIN_TOKEN)",
        ),
        ({"CREGISTRY_ADMIN_TOKENS": f"ops={'x' * 16},ops={'y' * 16}"}, "CREGISTRY_ADMIN_TOKENS names 'ops' twice"),
    ],
)
def test_an_admin_token_name_given_twice_is_refused_not_replaced(variables: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Config.from_env(variables)
    assert str(error.value) == message


def test_admin_tokens_may_name_admin_when_admin_token_is_not_set() -> None:
    config = Config.from_env({"CREGISTRY_ADMIN_TOKENS": f"admin={'y' * 16}"})
    assert dict(config.named_admin_tokens()) == {"admin": "y" * 16}
