"""Password rotation: `PUT /api/users/<name>/password` and
`cregistry user passwd`: the password rules of registration, the old password refused at once,
audited without secrets, and a feed entry that kicks the user's clients."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from click.testing import CliRunner, Result
from flask.testing import FlaskClient

import cregistry.cli
import cregistry.cli.prompts
from cregistry import services
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.passwords import verify_password
from cregistry.pending import PendingRequests
from cregistry.registration import Registration
from cregistry.users import UserStore

KEYS = Keys("cregistry")
OLD = "old-secret"
NEW = "new-secret-2"


@pytest.fixture
def clock() -> Callable[[], float]:
    return time.time


@pytest.fixture
def sensor(broker: FlaskClient, registration: Registration, lock: RegistryLock, requests: PendingRequests) -> str:
    """An approved device that connected once, so its verified token is in Redis."""
    lock.unlock()
    registration.record_attempt("sensor-1", OLD, "client-1", "mqtt")
    requests.approve("sensor-1")
    assert connect(broker, OLD) == 200
    return "sensor-1"


def connect(broker: FlaskClient, password: str, username: str = "sensor-1") -> int:
    body = {"username": username, "password": password, "clientid": "client-1"}
    return broker.post("/mqtt/user", json=body).status_code


def put_password(api: FlaskClient, auth: dict[str, str], body: Any, username: str = "sensor-1") -> Any:
    return api.put(f"/api/users/{username}/password", json=body, headers=auth)


def secrets_of(connection: fakeredis.FakeRedis) -> dict[str, Any]:
    """Everything a failed change must leave as it was."""
    return {
        "user": connection.hgetall(KEYS.user("sensor-1")),
        "verified": connection.get(KEYS.user_verified("sensor-1")),
        "audit": connection.xlen(KEYS.audit()),
        "changes": connection.xlen(KEYS.changes()),
    }


# -- the admin API ------------------------------------------------------------------
def test_api_changes_the_password_everywhere(
    api: FlaskClient,
    auth: dict[str, str],
    broker: FlaskClient,
    sensor: str,
    connection: fakeredis.FakeRedis,
    domain: services.Services,
) -> None:
    position = domain.audit.changes.read(None).position
    response = put_password(api, auth, {"password": NEW})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["username"] == "sensor-1" and body["pairingId"] is None  # it described the old password
    assert "passwordHash" not in json.dumps(body) and NEW not in json.dumps(body)
    assert connection.get(KEYS.user_verified("sensor-1")) is None
    assert connect(broker, OLD) == 403
    assert connect(broker, NEW) == 200
    [entry] = domain.audit.entries(1)
    assert (entry["actor"], entry["action"], entry["target"], entry["details"]) == (
        "api:admin", "user.password", "sensor-1", {},
    )  # fmt: skip
    stored_hash = connection.hget(KEYS.user("sensor-1"), "passwordHash")
    assert stored_hash.startswith("$2b$04$")  # the configured cost
    trail = json.dumps(connection.xrange(KEYS.audit()))
    assert NEW not in trail and stored_hash not in trail
    assert list(domain.audit.changes.read(position).changes) == [{"user": "sensor-1", "kick": True}]


def test_api_unknown_user_is_404_and_costs_no_bcrypt(
    api: FlaskClient, auth: dict[str, str], hash_calls: list[str], connection: fakeredis.FakeRedis
) -> None:
    response = put_password(api, auth, {"password": NEW}, username="nobody-here")
    assert response.status_code == 404
    assert response.get_json()["ok"] is False
    assert hash_calls == []
    assert connection.xlen(KEYS.audit()) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"password": "abcd"},  # policy: at least 5 characters
        {"password": "x" * 73},  # over bcrypt's 72 bytes
        {"password": "é" * 37},  # 74 bytes in UTF-8
        {"password": "nul\x00byte-secret"},
        {"password": 12345678},
        {"password": None},
        {},
        {"password": NEW, "superuser": True},
        [NEW],
        NEW,
    ],
)
def test_api_bad_input_is_400_and_changes_nothing(
    api: FlaskClient, auth: dict[str, str], broker: FlaskClient, sensor: str, connection: fakeredis.FakeRedis,
    body: Any,
) -> None:  # fmt: skip
    before = secrets_of(connection)
    response = put_password(api, auth, body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["ok"] is False
    assert secrets_of(connection) == before
    assert connect(broker, OLD) == 200


def test_api_body_that_is_not_json_is_400(api: FlaskClient, auth: dict[str, str], sensor: str) -> None:
    response = api.put("/api/users/sensor-1/password", data=b"new-secret", headers=auth)
    assert response.status_code == 400


def test_api_needs_the_token(api: FlaskClient, sensor: str, connection: fakeredis.FakeRedis) -> None:
    before = secrets_of(connection)
    assert api.put("/api/users/sensor-1/password", json={"password": NEW}).status_code == 401
    assert secrets_of(connection) == before


def test_api_password_policy_classes(connection: fakeredis.FakeRedis, sensor: str) -> None:
    from cregistry.config import Config
    from cregistry.web import create_app

    strict = Config(bcrypt_cost=4, admin_token="strict-token-0123456", password_require=("digit", "upper"))
    api = create_app(strict, listener="api", connection=connection).test_client()
    auth = {"Authorization": "Bearer strict-token-0123456"}
    assert put_password(api, auth, {"password": "no-digits-here"}).status_code == 400
    assert put_password(api, auth, {"password": "Has-digit-9"}).status_code == 200


# -- the CLI ------------------------------------------------------------------------
def run(runner: CliRunner, *args: str, **kwargs: Any) -> Result:
    return runner.invoke(cregistry.cli.cli, ["user", "passwd", *args], **kwargs)


def assert_one_line_error(result: Result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ")
    return line


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cregistry.cli.prompts, "terminal_available", lambda: True)


def test_cli_password_stdin(runner: CliRunner, users: UserStore, broker: FlaskClient, sensor: str) -> None:
    result = run(runner, "sensor-1", "--password-stdin", input=NEW + "\n")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "sensor-1: password changed\n", "")
    assert verify_password(NEW, users.password_hash("sensor-1"))
    assert connect(broker, OLD) == 403 and connect(broker, NEW) == 200
    entry = users.audit.entries(1)[0]
    assert (entry["action"], entry["actor"].startswith("cli:"), entry["details"]) == ("user.password", True, {})


def test_cli_json(runner: CliRunner, users: UserStore, sensor: str) -> None:
    result = run(runner, "sensor-1", "--password-stdin", "--json", input=NEW + "\n")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["username"] == "sensor-1"
    assert NEW not in result.stdout


def test_cli_prompts_twice_on_a_terminal(runner: CliRunner, users: UserStore, sensor: str, terminal: None) -> None:
    result = run(runner, "sensor-1", input=f"{NEW}\n{NEW}\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("password") >= 1 and NEW not in result.output
    assert verify_password(NEW, users.password_hash("sensor-1"))


def test_cli_prompt_mismatch_changes_nothing(
    runner: CliRunner, users: UserStore, sensor: str, terminal: None, connection: fakeredis.FakeRedis
) -> None:
    before = secrets_of(connection)
    result = run(runner, "sensor-1", input=f"{NEW}\nsomething-else\n")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {cregistry.cli.prompts.MISMATCH}\n"
    assert secrets_of(connection) == before


def test_cli_without_a_terminal_says_use_password_stdin(
    runner: CliRunner, sensor: str, connection: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cregistry.cli.prompts, "terminal_available", lambda: False)
    before = secrets_of(connection)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no GetPassWarning
        result = run(runner, "sensor-1", input=f"{NEW}\n{NEW}\n")
    assert assert_one_line_error(result, 2) == f"Error: {cregistry.cli.prompts.NO_TERMINAL}"
    assert secrets_of(connection) == before


@pytest.mark.parametrize("password", ["abcd", "", "x" * 73, "é" * 37, "nul\x00byte-secret"])
def test_cli_bad_password_is_one_line_exit_2(
    runner: CliRunner, sensor: str, connection: fakeredis.FakeRedis, password: str
) -> None:
    before = secrets_of(connection)
    line = assert_one_line_error(run(runner, "sensor-1", "--password-stdin", input=password + "\n"), 2)
    assert "password" in line
    assert secrets_of(connection) == before


def test_cli_unknown_and_invalid_users(runner: CliRunner, hash_calls: list[str]) -> None:
    assert assert_one_line_error(run(runner, "nobody-here", "--password-stdin", input=NEW + "\n"), 3) == (
        "Error: no user 'nobody-here'"
    )
    assert "username" in assert_one_line_error(run(runner, "no/slash", "--password-stdin", input=NEW + "\n"), 2)
    assert hash_calls == []
