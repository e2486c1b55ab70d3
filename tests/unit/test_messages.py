"""Error messages that say what is wrong: one rule, one message;
nothing changes on bad input."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient

import cregistry.cli
from cregistry.connections import configuration_problem


@pytest.mark.parametrize("value", ["abc", "0", "1001", "-1", "1.5", "²", ""])
def test_requests_limit_has_one_message_for_every_wrong_value(
    api: FlaskClient, auth: dict[str, str], value: str
) -> None:
    response = api.get(f"/api/client-registry/requests?limit={value}", headers=auth)
    assert (response.status_code, response.get_json()) == (
        400,
        {"ok": False, "error": "limit must be an integer from 1 to 1000"},
    )


@pytest.mark.parametrize("value", ["abc", "-1", "1e3", "1000000001"])
def test_requests_offset_has_one_message_for_every_wrong_value(
    api: FlaskClient, auth: dict[str, str], value: str
) -> None:
    response = api.get(f"/api/client-registry/requests?offset={value}", headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"] == "offset must be an integer from 0 to 1000000000"


@pytest.mark.parametrize("value", ["abc", "0", "1001"])
def test_audit_limit_has_one_message_for_every_wrong_value(api: FlaskClient, auth: dict[str, str], value: str) -> None:
    response = api.get(f"/api/audit?limit={value}", headers=auth)
    assert (response.status_code, response.get_json()["error"]) == (400, "limit must be an integer from 1 to 1000")


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("POST", "/api/users", "the body must be a JSON object"),
        ("PUT", "/api/users/sensor-1/superuser", "the body must be a JSON object"),
        ("PUT", "/api/users/sensor-1/permissions", 'permissions must be a JSON list of {"topic": ..., "access": ...}'),
        ("PUT", "/api/users/sensor-1/roles", "roles must be a JSON list of role names"),
        ("POST", "/api/client-registry/register", "the body must be a JSON object"),
    ],
)
def test_a_null_body_is_json_but_not_what_the_route_wants(
    api: FlaskClient,
    auth: dict[str, str],
    connection: fakeredis.FakeRedis,
    users: Any,
    method: str,
    path: str,
    message: str,
) -> None:
    users.add("sensor-1", "secret1")
    before = {key: connection.dump(key) for key in connection.keys("*")}
    response = api.open(path, method=method, data=b"null", content_type="application/json", headers=auth)
    assert (response.status_code, response.get_json()) == (400, {"ok": False, "error": message})
    assert {key: connection.dump(key) for key in connection.keys("*")} == before


def test_a_body_that_is_not_json_still_says_so(api: FlaskClient, auth: dict[str, str]) -> None:
    response = api.post("/api/users", data=b"{username", content_type="application/json", headers=auth)
    assert (response.status_code, response.get_json()["error"]) == (400, "the body must be JSON")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"username": "backend"}, "password is missing"),
        ({"username": "backend", "password": None}, "password is missing"),
        ({"password": "secret1"}, "username is missing"),
        ({"username": "backend", "password": 12345}, "password must be a string"),
    ],
)
def test_a_missing_field_is_called_missing(
    api: FlaskClient, auth: dict[str, str], connection: fakeredis.FakeRedis, body: dict[str, Any], message: str
) -> None:
    response = api.post("/api/users", json=body, headers=auth)
    assert (response.status_code, response.get_json()) == (400, {"ok": False, "error": message})
    assert connection.keys("*") == []


def test_register_without_a_password_says_it_is_missing(api: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    response = api.post("/api/client-registry/register", json={"username": "sensor-1"})
    assert (response.status_code, response.get_json()["error"]) == (400, "password is missing")
    assert connection.keys("*") == []


# -- Redis configuration errors are configuration errors -------------------------------
class RefusingRedis:
    """Every command fails the way a real Redis fails for this URL."""

    def __init__(self, error: redis.RedisError) -> None:
        self.error = error

    def __getattr__(self, _name: str) -> Any:
        def fail(*_args: Any, **_kwargs: Any) -> Any:
            raise self.error

        return fail


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            redis.ResponseError("DB index is out of range"),
            "Error: CREGISTRY_REDIS_URL names a database this Redis does not have (DB index is out of range)",
        ),
        (
            redis.AuthenticationError("invalid username-password pair or user is disabled."),
            "Error: CREGISTRY_REDIS_URL: Redis refuses the credentials"
            " (invalid username-password pair or user is disabled.)",
        ),
    ],
)
def test_cli_reports_a_database_redis_does_not_have_as_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, error: redis.RedisError, line: str
) -> None:
    monkeypatch.setenv("CREGISTRY_REDIS_URL", "redis://127.0.0.1:6379/99")
    result = CliRunner().invoke(
        cregistry.cli.cli, ["status"], obj=lambda _url, _timeout, **_kwargs: RefusingRedis(error)
    )
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", line + "\n")


@pytest.mark.parametrize(
    "error", [redis.ConnectionError("refused"), redis.TimeoutError("slow"), redis.ResponseError("LOADING")]
)
def test_an_unreachable_redis_is_not_a_configuration_error(error: redis.RedisError) -> None:
    assert configuration_problem(error) is None


def test_the_cli_gives_redis_the_services_bound(monkeypatch: pytest.MonkeyPatch, redis_server: Any) -> None:
    """A stalled Redis costs an operator 1.5 s per operation, not 5 (the real pause: tests/integration)."""
    timeouts: list[float] = []

    def recording_connect(_url: str, timeout: float, **_kwargs: Any) -> fakeredis.FakeRedis:
        timeouts.append(timeout)
        return fakeredis.FakeRedis(server=redis_server, decode_responses=True)

    monkeypatch.setenv("CREGISTRY_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("CREGISTRY_REDIS_TIMEOUT", "10")
    assert CliRunner().invoke(cregistry.cli.cli, ["status"], obj=recording_connect).exit_code == 0
    assert timeouts == [1.5]


# -- the statuses docs/api.md lists for the admin API ---------------------------------
def test_the_api_answers_401_405_and_413_as_documented(api: FlaskClient, auth: dict[str, str]) -> None:
    unauthorized = api.get("/api/users")
    assert (unauthorized.status_code, unauthorized.headers["WWW-Authenticate"]) == (401, "Bearer")
    assert unauthorized.get_json()["ok"] is False
    wrong_method = api.patch("/api/client-registry/lock", headers=auth)
    allowed = {method.strip() for method in wrong_method.headers["Allow"].split(",")}
    assert (wrong_method.status_code, allowed) == (405, {"OPTIONS", "POST"})
    assert wrong_method.get_json()["ok"] is False
    limit = 256 * 1024
    too_big = api.post("/api/users", data=b" " * (limit + 1), content_type="application/json", headers=auth)
    assert (too_big.status_code, too_big.get_json()["ok"]) == (413, False)
    just_fits = api.post("/api/users", data=b" " * limit, content_type="application/json", headers=auth)
    assert just_fits.status_code == 400  # read, and refused for what it is: not JSON
