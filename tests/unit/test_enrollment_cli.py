"""`cregistry enrollment ...` through CliRunner: exact output and exit codes."""

from __future__ import annotations

import functools
import getpass
import json

import pytest
from click.testing import CliRunner, Result

import cregistry.cli
import cregistry.enrollments
from cregistry import services
from cregistry.users import UserStore

from .conftest import FakeClock

SECRET_HEX = "ab" * 32
TOKEN = "T" * 43
NOW = "2027-01-15T08:00:00Z"
IN_A_DAY = "2027-01-16T08:00:00Z"


@pytest.fixture
def cli(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, clock: FakeClock, users: UserStore) -> CliRunner:
    """The CLI on the fake clock, with a known token and the service's secret."""
    monkeypatch.setenv("CREGISTRY_VERIFY_SECRET", SECRET_HEX)
    monkeypatch.setattr(services, "build", functools.partial(services.build, clock=clock))
    monkeypatch.setattr(cregistry.enrollments.secrets, "token_urlsafe", lambda _n: TOKEN)
    monkeypatch.setattr(getpass, "getuser", lambda: "ops")
    users.roles.grant("sensors", "sensors/%u/#", "readWrite")
    return runner


def run(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cregistry.cli.cli, list(args))


def test_create_prints_the_token_once(cli: CliRunner) -> None:
    result = run(
        cli, "enrollment", "create", "line-3", "--pattern", "line3-*", "--role", "sensors", "--max-uses", "500"
    )
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        f"created enrollment line-3: usernames line3-*, roles sensors, 500 uses, expires {IN_A_DAY}\n"
        f"token (shown only now; give it to the devices): {TOKEN}\n"
    )
    listed = run(cli, "enrollment", "list")
    assert listed.exit_code == 0
    assert listed.stdout == (
        "NAME    PATTERN  ROLES    USES LEFT  EXPIRES               CREATED BY  DELETED USERS\n"
        f"line-3  line3-*  sensors  500/500    {IN_A_DAY}  cli:ops     -\n"
    )
    assert TOKEN not in listed.stdout


def test_create_json(cli: CliRunner) -> None:
    result = run(cli, "enrollment", "create", "line-3", "--pattern", "line3-??", "--expires", "60", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["token"] == TOKEN
    assert {k: data[k] for k in ("name", "usernamePattern", "roles", "maxUses", "usesLeft", "createdAt")} == {
        "name": "line-3",
        "usernamePattern": "line3-??",
        "roles": [],
        "maxUses": 1,
        "usesLeft": 1,
        "createdAt": NOW,
    }
    assert json.loads(run(cli, "enrollment", "list", "--json").stdout)["enrollments"][0]["expiresAt"] == (
        "2027-01-15T08:01:00Z"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "ghost"], "Error: roles: no role 'ghost' (create it first, e.g. `cregistry role grant`)\n"),
        (["--max-uses", "0"], "Error: maxUses must be an integer from 1 to 100000\n"),
        (["--expires", "59"], "Error: expiresIn must be an integer from 60 to 31536000\n"),
    ],
)
def test_create_refuses_bad_input(cli: CliRunner, args: list[str], message: str) -> None:
    result = run(cli, "enrollment", "create", "line-3", "--pattern", "line3-*", *args)
    assert (result.exit_code, result.stderr) == (2, message)
    assert run(cli, "enrollment", "list").stdout == "no enrollments\n"


def test_create_needs_the_verify_secret(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREGISTRY_VERIFY_SECRET")
    result = run(cli, "enrollment", "create", "line-3", "--pattern", "line3-*")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: CREGISTRY_VERIFY_SECRET is not set: set it to the service's value")
    assert TOKEN not in result.output


def test_a_taken_name_is_a_conflict(cli: CliRunner) -> None:
    run(cli, "enrollment", "create", "line-3", "--pattern", "line3-*")
    result = run(cli, "enrollment", "create", "line-3", "--pattern", "x*")
    assert (result.exit_code, result.stderr) == (4, "Error: enrollment 'line-3' exists already\n")


def test_delete(cli: CliRunner) -> None:
    run(cli, "enrollment", "create", "line-3", "--pattern", "line3-*")
    assert run(cli, "enrollment", "delete", "line-3").stdout == "revoked enrollment line-3\n"
    missing = run(cli, "enrollment", "delete", "line-3")
    assert (missing.exit_code, missing.stderr) == (3, "Error: no enrollment 'line-3'\n")
    assert run(cli, "enrollment", "list").stdout == "no enrollments\n"


def test_forget_a_deleted_user(cli: CliRunner, domain: services.Services, users: UserStore) -> None:
    token = domain.enrollments.create("line-3", "line3-*", [], 5, 3600).token
    domain.enrollments.register(token, "line3-001", "secret-1", "", "192.0.2.1")
    users.delete("line3-001")
    assert run(cli, "enrollment", "list").stdout.rstrip().endswith("line3-001")
    result = run(cli, "enrollment", "forget", "line-3", "line3-001")
    assert (result.exit_code, result.stdout) == (0, "enrollment line-3: line3-001 may register again\n")
    again = run(cli, "enrollment", "forget", "line-3", "line3-001")
    assert (again.exit_code, again.stderr) == (3, "Error: enrollment 'line-3' remembers no deleted user 'line3-001'\n")
