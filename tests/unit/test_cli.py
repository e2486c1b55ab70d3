"""The `cregistry` CLI through CliRunner: exact output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import fakeredis
import pytest
import redis
from click.testing import CliRunner, Result

import cregistry.cli
import cregistry.cli.prompts
import cregistry.connections
from cregistry import services
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.passwords import pairing_id, verify_password
from cregistry.pending import PendingRequests
from cregistry.registration import Registration
from cregistry.users import UserStore

KEYS = Keys("cregistry")
# The `clock` fixture starts here; what the CLI shows for it.
FAKE_NOW_TEXT = "2027-01-15T08:00:00Z"


def run(runner: CliRunner, *args: str, **kwargs: Any) -> Result:
    return runner.invoke(cregistry.cli.cli, list(args), **kwargs)


def assert_ok(result: Result, stdout: str) -> None:
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert result.stdout == stdout


def assert_one_line_error(result: Result, exit_code: int) -> str:
    """Errors: one line on stderr starting "Error:", nothing on stdout, no traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def assert_usage_error(result: Result) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Usage: ")
    assert "Error: " in result.stderr


@pytest.fixture
def pending(registration: Registration, lock: RegistryLock) -> None:
    """Two pending requests, recorded at the fake clock's time."""
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "client-1", "mqtt")
    registration.record_attempt("sensor-2", "secret2", "c2", "rest", {"model": "x1"})
    lock.lock()


# -- lock state -----------------------------------------------------------------
def test_status_unlock_lock(runner: CliRunner, connection: fakeredis.FakeRedis) -> None:
    assert_ok(run(runner, "status"), "locked\n")
    assert_ok(run(runner, "unlock"), "unlocked, 300 s left\n")
    assert connection.ttl(KEYS.unlock()) == 300
    assert_ok(run(runner, "status"), "unlocked, 300 s left\n")
    assert_ok(run(runner, "lock"), "locked\n")
    assert not connection.exists(KEYS.unlock())
    assert_ok(run(runner, "unlock", "--seconds", "60"), "unlocked, 60 s left\n")
    assert connection.ttl(KEYS.unlock()) == 60


def test_unlock_default_follows_the_environment(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREGISTRY_UNLOCK_SECONDS", "120")
    assert_ok(run(runner, "unlock"), "unlocked, 120 s left\n")


@pytest.mark.parametrize(
    "args",
    [["--json", "status"], ["status", "--json"]],
    ids=["before", "after"],
)
def test_json_before_or_after_the_command(runner: CliRunner, args: list[str]) -> None:
    result = run(runner, *args)
    assert (result.exit_code, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {"locked": True, "secondsLeft": 0}


def test_json_for_unlock_and_lock(runner: CliRunner) -> None:
    assert json.loads(run(runner, "unlock", "--seconds", "90", "--json").stdout) == {"locked": False, "secondsLeft": 90}
    assert json.loads(run(runner, "--json", "lock").stdout) == {"locked": True, "secondsLeft": 0}


@pytest.mark.parametrize("seconds", ["0", "3601", "-1"])
def test_unlock_out_of_range(runner: CliRunner, seconds: str, lock: RegistryLock) -> None:
    line = assert_one_line_error(run(runner, "unlock", "--seconds", seconds), 2)
    assert line == "Error: seconds must be an integer from 1 to 3600"
    assert lock.status().locked is True


def test_unlock_not_a_number(runner: CliRunner, lock: RegistryLock) -> None:
    assert_usage_error(run(runner, "unlock", "--seconds", "ten"))
    assert lock.status().locked is True


# -- requests -------------------------------------------------------------------
def test_requests_empty(runner: CliRunner) -> None:
    assert_ok(run(runner, "requests"), "no pending requests\n")
    assert json.loads(run(runner, "requests", "--json").stdout) == {
        "requests": [],
        "total": 0,
        "offset": 0,
        "limit": 1000,
    }


def test_requests_offset_past_the_end_says_how_many_there_are(runner: CliRunner, pending: None) -> None:
    assert_ok(run(runner, "requests", "--offset", "100"), "offset 100 is past the end: 2 pending requests\n")
    assert_ok(run(runner, "requests", "--offset", "2"), "offset 2 is past the end: 2 pending requests\n")
    page = json.loads(run(runner, "requests", "--offset", "1", "--limit", "5", "--json").stdout)
    assert ([r["username"] for r in page["requests"]], page["total"], page["offset"], page["limit"]) == (
        ["sensor-2"],
        2,
        1,
        5,
    )


def test_requests_table(runner: CliRunner, pending: None) -> None:
    header = "ID               USERNAME  PAIRING ID  CLIENT ID  SOURCE  ATTEMPTS  FIRST SEEN            LAST SEEN"
    row_1 = f"sensor-1:e2d3f8  sensor-1  e2d3f8      client-1   mqtt    1         {FAKE_NOW_TEXT}  {FAKE_NOW_TEXT}"
    pairing_2 = pairing_id("sensor-2", "secret2")
    id_2 = f"sensor-2:{pairing_2}"
    row_2 = f"{id_2}  sensor-2  {pairing_2}      c2         rest    1         {FAKE_NOW_TEXT}  {FAKE_NOW_TEXT}"
    assert_ok(run(runner, "requests"), f"{header}\n{row_1}\n{row_2}\n")


def test_requests_json(runner: CliRunner, pending: None) -> None:
    result = run(runner, "--json", "requests")
    assert result.exit_code == 0
    items = json.loads(result.stdout)["requests"]
    assert [item["id"] for item in items] == [
        f"sensor-1:{pairing_id('sensor-1', 'secret1')}",
        f"sensor-2:{pairing_id('sensor-2', 'secret2')}",
    ]
    assert items[1]["context"] == {"model": "x1"}
    assert set(items[0]) == {
        "id",
        "username",
        "pairingId",
        "clientId",
        "source",
        "firstSeen",
        "lastSeen",
        "attempts",
        "context",
        "contested",
        "refusedAttempts",
        "certificateRequest",
    }


def test_requests_escape_control_characters_of_client_ids(
    runner: CliRunner, registration: Registration, lock: RegistryLock
) -> None:
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "evil\x1b[2J\r", "mqtt")
    result = run(runner, "requests")
    assert result.exit_code == 0
    assert "\x1b" not in result.stdout and "\r" not in result.stdout
    assert "evil\\x1b[2J\\r" in result.stdout


# -- approve / deny -------------------------------------------------------------
def test_approve(runner: CliRunner, connection: fakeredis.FakeRedis, pending: None, requests: PendingRequests) -> None:
    request_hash = requests.requests_for("sensor-1")[0].password_hash
    result = run(runner, "approve", "sensor-1")
    assert_ok(
        result,
        "approved sensor-1 (pairing ID e2d3f8); it has no permissions yet:"
        " grant some with `cregistry grant sensor-1 PATTERN ACCESS`\n",
    )
    assert connection.hget(KEYS.user("sensor-1"), "passwordHash") == request_hash
    assert request_hash not in result.output
    assert [r.username for r in requests.list_requests()] == ["sensor-2"]
    assert_one_line_error(run(runner, "approve", "sensor-1"), 4)


def test_approve_json(runner: CliRunner, pending: None) -> None:
    result = run(runner, "approve", "sensor-1", "--json")
    assert result.exit_code == 0
    user = json.loads(result.stdout)
    assert (user["username"], user["pairingId"], user["permissions"]) == ("sensor-1", "e2d3f8", [])
    assert "passwordHash" not in result.stdout


def test_approve_with_several_candidates_needs_the_pairing_id(
    runner: CliRunner, users: UserStore, registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "c", "mqtt")
    registration.record_attempt("sensor-1", "secret2", "c", "mqtt")
    assert_one_line_error(run(runner, "approve", "sensor-1"), 4)
    assert not users.exists("sensor-1")
    chosen = pairing_id("sensor-1", "secret2")
    result = run(runner, "approve", "sensor-1", "--pairing-id", chosen)
    assert result.exit_code == 0
    assert result.stdout.startswith(f"approved sensor-1 (pairing ID {chosen});")
    assert verify_password("secret2", users.password_hash("sensor-1"))
    assert requests.requests_for("sensor-1") == []


def test_approve_unknown(runner: CliRunner, pending: None) -> None:
    assert assert_one_line_error(run(runner, "approve", "nobody"), 3) == "Error: no pending request for 'nobody'"
    assert_one_line_error(run(runner, "approve", "sensor-1", "--pairing-id", "abcdef"), 3)


def test_approve_invalid_input(runner: CliRunner, pending: None) -> None:
    assert_one_line_error(run(runner, "approve", "a/b"), 2)
    assert_one_line_error(run(runner, "approve", "sensor-1", "--pairing-id", "XYZ"), 2)


def test_deny(runner: CliRunner, pending: None, requests: PendingRequests) -> None:
    assert_ok(run(runner, "deny", "sensor-1"), "denied sensor-1 (pairing ID e2d3f8)\n")
    assert [r.username for r in requests.list_requests()] == ["sensor-2"]
    assert_one_line_error(run(runner, "deny", "sensor-1"), 3)
    result = run(runner, "deny", "sensor-2", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["denied"]["username"] == "sensor-2"


# -- users ----------------------------------------------------------------------
def test_users(runner: CliRunner, users: UserStore, pending: None, requests: PendingRequests) -> None:
    assert_ok(run(runner, "users"), "no users\n")
    requests.approve("sensor-1")
    users.add("backend", "backend-password", superuser=True)
    users.grant("sensor-1", "devices/%u/#", "readWrite")
    users.roles.grant("devices", "a/#", "read")
    users.assign_role("sensor-1", "devices")
    expected = (
        "USERNAME  SUPERUSER  ROLES    PERMISSIONS  CREATED               LAST CONNECT (CLIENT ID)\n"
        f"backend   yes        -        0            {FAKE_NOW_TEXT}  never\n"
        f"sensor-1  no         devices  1            {FAKE_NOW_TEXT}  never\n"
    )
    assert_ok(run(runner, "users"), expected)
    listed = json.loads(run(runner, "users", "--json").stdout)["users"]
    assert [u["username"] for u in listed] == ["backend", "sensor-1"]


def test_user_show(runner: CliRunner, users: UserStore, pending: None, requests: PendingRequests) -> None:
    requests.approve("sensor-1")
    users.grant("sensor-1", "devices/%u/#", "readWrite")
    users.grant("sensor-1", "cmd/+", "read")
    expected = (
        "username:     sensor-1\n"
        f"created:      {FAKE_NOW_TEXT}\n"
        "source:       mqtt\n"
        "client id:    client-1\n"
        "client IDs:   client-1\n"
        "pairing ID:   e2d3f8\n"
        "superuser:    no\n"
        "last connect: never\n"
        "roles:        -\n"
        "permissions:\n"
        "  read       cmd/+\n"
        "  readWrite  devices/%u/#\n"
    )
    assert_ok(run(runner, "user", "show", "sensor-1"), expected)
    assert json.loads(run(runner, "user", "show", "sensor-1", "--json").stdout)["clientId"] == "client-1"
    assert_one_line_error(run(runner, "user", "show", "nobody"), 3)


def test_user_client_ids(runner: CliRunner, users: UserStore, pending: None, requests: PendingRequests) -> None:
    requests.approve("sensor-1")
    assert_ok(run(runner, "user", "client-ids", "sensor-1"), "client-1\n")
    assert_ok(run(runner, "user", "client-ids", "sensor-1", "client-1", "spare\x1b[2J"), "client-1\nspare\\x1b[2J\n")
    assert users.get("sensor-1").client_ids == ("client-1", "spare\x1b[2J")
    shown = json.loads(run(runner, "user", "client-ids", "sensor-1", "--json").stdout)
    assert shown == {"username": "sensor-1", "clientIds": ["client-1", "spare\x1b[2J"]}
    users.add("backend", "backend-password")
    assert_one_line_error(run(runner, "user", "client-ids", "backend", "client-1"), 4)  # sensor-1's: refused
    assert_one_line_error(run(runner, "user", "client-ids", "backend", "a+b"), 2)
    assert_one_line_error(run(runner, "user", "client-ids", "nobody", "x"), 3)
    assert users.get("backend").client_ids == ()
    assert_ok(run(runner, "user", "client-ids", "sensor-1", "--none"), "sensor-1: no client IDs\n")
    assert users.get("sensor-1").client_ids == ()


def test_user_add_delete(runner: CliRunner, users: UserStore) -> None:
    result = run(runner, "user", "add", "backend", "--password-stdin", input="backend-password\n")
    assert_ok(result, "added backend\n")
    assert verify_password("backend-password", users.password_hash("backend"))
    assert users.get("backend").superuser is False
    assert_one_line_error(run(runner, "user", "add", "backend", "--password-stdin", input="other-password\n"), 4)
    assert verify_password("backend-password", users.password_hash("backend"))
    assert_ok(run(runner, "user", "delete", "backend"), "deleted backend\n")
    assert not users.exists("backend")
    assert_one_line_error(run(runner, "user", "delete", "backend"), 3)


def test_user_add_prompt_with_two_different_passwords_is_bad_input(
    runner: CliRunner, users: UserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cregistry.cli.prompts, "terminal_available", lambda: True)
    result = run(runner, "user", "add", "prompted", input="prompt-password\nother-password\n")
    assert (result.exit_code, result.stderr) == (2, "Error: the two passwords differ; nothing was changed\n")
    assert not users.exists("prompted")


def test_user_add_without_a_terminal_is_bad_input(runner: CliRunner, users: UserStore) -> None:
    """The real getpass, in a process with no controlling terminal and stdin from /dev/null."""
    result = subprocess.run(
        [sys.executable, "-m", "cregistry", "user", "add", "prompted"],
        env={**os.environ, "CREGISTRY_REDIS_URL": "redis://127.0.0.1:1/0"},  # never reached
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "Error: no terminal to ask for the password on: give it with --password-stdin (or --password)\n"
    )


def test_user_add_with_password_option_and_prompt(
    runner: CliRunner, users: UserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cregistry.cli.prompts, "terminal_available", lambda: True)
    assert_ok(run(runner, "user", "add", "backend", "--password", "option-password"), "added backend\n")
    assert verify_password("option-password", users.password_hash("backend"))
    result = run(runner, "user", "add", "prompted", input="prompt-password\nprompt-password\n")
    assert result.exit_code == 0, result.output
    assert verify_password("prompt-password", users.password_hash("prompted"))
    both = run(runner, "user", "add", "other", "--password", "x-password", "--password-stdin", input="y\n")
    assert both.exit_code == 2 and not users.exists("other")


def test_user_add_superuser_json(runner: CliRunner, users: UserStore) -> None:
    result = run(runner, "user", "add", "admin-1", "--superuser", "--password-stdin", "--json", input="admin-pass\n")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["superuser"] is True
    assert users.get("admin-1").superuser is True


@pytest.mark.parametrize(
    ("username", "password"),
    [("ab", "backend-password"), ("back end", "backend-password"), ("backend", "abcd"), ("backend", "€" * 25)],
)
def test_user_add_invalid(runner: CliRunner, users: UserStore, username: str, password: str) -> None:
    assert_one_line_error(run(runner, "user", "add", username, "--password-stdin", input=password + "\n"), 2)
    assert users.list_users() == []


# -- permissions ----------------------------------------------------------------
@pytest.fixture
def sensor(users: UserStore) -> str:
    users.add("sensor-1", "secret1")
    return "sensor-1"


def test_grant_and_revoke(runner: CliRunner, users: UserStore, sensor: str) -> None:
    assert_ok(run(runner, "grant", sensor, "devices/%u/#", "readWrite"), "granted sensor-1 readWrite on devices/%u/#\n")
    assert [p.to_dict() for p in users.get(sensor).permissions] == [{"topic": "devices/%u/#", "access": "readWrite"}]
    assert_ok(run(runner, "revoke", sensor, "devices/%u/#"), "revoked sensor-1's permission on devices/%u/#\n")
    assert users.get(sensor).permissions == ()
    assert_one_line_error(run(runner, "revoke", sensor, "devices/%u/#"), 3)


def test_a_second_grant_on_a_pattern_replaces_and_says_what_changed(
    runner: CliRunner, users: UserStore, sensor: str, domain: services.Services
) -> None:
    assert_ok(run(runner, "grant", sensor, "a/+/c", "read"), "granted sensor-1 read on a/+/c\n")
    assert_ok(run(runner, "grant", sensor, "a/+/c", "write"), "granted sensor-1 write on a/+/c (read → write)\n")
    assert [p.to_dict() for p in users.get(sensor).permissions] == [{"topic": "a/+/c", "access": "write"}]
    entry = domain.audit.entries(1)[0]
    assert (entry["action"], entry["details"]) == (
        "user.grant",
        {"topic": "a/+/c", "access": "write", "previous": "read"},
    )
    assert_ok(run(runner, "grant", sensor, "a/+/c", "write"), "granted sensor-1 write on a/+/c (unchanged)\n")


def test_a_second_role_grant_replaces_and_says_what_changed(
    runner: CliRunner, users: UserStore, domain: services.Services
) -> None:
    assert_ok(run(runner, "role", "grant", "devices", "a/#", "readWrite"), "role devices: granted readWrite on a/#\n")
    assert_ok(
        run(runner, "role", "grant", "devices", "a/#", "read"),
        "role devices: granted read on a/# (readWrite → read)\n",
    )
    assert [p.to_dict() for p in users.roles.get("devices").permissions] == [{"topic": "a/#", "access": "read"}]
    assert domain.audit.entries(1)[0]["details"]["previous"] == "readWrite"


def test_grant_invalid_access_is_a_usage_error(runner: CliRunner, users: UserStore, sensor: str) -> None:
    assert_usage_error(run(runner, "grant", sensor, "a/#", "rw"))
    assert users.get(sensor).permissions == ()


@pytest.mark.parametrize("pattern", ["a/#/b", "a+", "a/%x", ""])
def test_grant_invalid_pattern(runner: CliRunner, users: UserStore, sensor: str, pattern: str) -> None:
    assert_one_line_error(run(runner, "grant", sensor, pattern, "read"), 2)
    assert users.get(sensor).permissions == ()


def test_grant_to_unknown_user(runner: CliRunner, users: UserStore) -> None:
    assert_one_line_error(run(runner, "grant", "nobody", "a/#", "read"), 3)
    assert not users.exists("nobody")


# -- roles ----------------------------------------------------------------------
def test_role_grant_assign_show(runner: CliRunner, users: UserStore, sensor: str) -> None:
    assert_ok(
        run(runner, "role", "grant", "devices", "devices/%u/#", "readWrite"),
        "role devices: granted readWrite on devices/%u/#\n",
    )
    assert_ok(run(runner, "role", "assign", sensor, "devices"), "sensor-1 has role devices\n")
    expected = "role:    devices\nmembers: sensor-1\npermissions:\n  readWrite  devices/%u/#\n"
    assert_ok(run(runner, "role", "show", "devices"), expected)
    assert users.get(sensor).roles == ("devices",)
    assert_one_line_error(run(runner, "role", "assign", sensor, "nothing"), 3)
    assert_one_line_error(run(runner, "role", "show", "nothing"), 3)
    assert_usage_error(run(runner, "role", "grant", "devices", "a", "all"))


# -- failures -------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["unlock"],
        ["requests"],
        ["approve", "sensor-1"],
        ["users"],
        ["grant", "sensor-1", "a/#", "read"],
        ["--json", "status"],
    ],
)
def test_redis_unreachable(runner: CliRunner, args: list[str]) -> None:
    def unreachable(_url: str, _timeout: float, **_options: Any) -> redis.Redis:
        return cregistry.connections.connect("redis://127.0.0.1:1/0", 0.2)

    line = assert_one_line_error(run(runner, *args, obj=unreachable), 6)
    assert "Redis" in line
    assert "Traceback" not in line


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CREGISTRY_UNLOCK_SECONDS", "abc"), ("CREGISTRY_BCRYPT_COST", "99"), ("CREGISTRY_KEY_PREFIX", "a:b")],
)
def test_bad_setting_is_one_line_naming_the_variable(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    line = assert_one_line_error(run(runner, "status"), 2)
    assert variable in line


def test_output_never_shows_a_password_or_hash(
    runner: CliRunner, users: UserStore, pending: None, requests: PendingRequests
) -> None:
    outputs = []
    for json_flag in ([], ["--json"]):
        outputs.append(run(runner, "requests", *json_flag).output)
    hashes = [r.password_hash for r in requests.list_requests()]
    outputs.append(run(runner, "approve", "sensor-1").output)
    outputs.append(run(runner, "deny", "sensor-2", "--json").output)
    outputs.append(run(runner, "user", "add", "backend", "--password-stdin", input="backend-password\n").output)
    hashes += [users.password_hash("sensor-1"), users.password_hash("backend")]
    for json_flag in ([], ["--json"]):
        outputs.append(run(runner, "users", *json_flag).output)
        for name in ("sensor-1", "backend"):
            outputs.append(run(runner, "user", "show", name, *json_flag).output)
    outputs.append(run(runner, "grant", "sensor-1", "a/#", "read", "--json").output)
    for json_flag in ([], ["--json"]):
        outputs.append(run(runner, "audit", *json_flag).output)
    outputs.append(run(runner, "user", "add", "backend", "--password-stdin", input="backend-password\n").output)
    text = "\n".join(outputs)
    assert "sensor-1" in text  # the outputs are real
    for secret in ["secret1", "secret2", "backend-password", *hashes]:
        assert secret not in text
    assert "$2b$" not in text and "passwordHash" not in text


def test_serve_refuses_a_short_admin_token(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREGISTRY_ADMIN_TOKEN", "short")
    line = assert_one_line_error(run(runner, "serve"), 2)
    assert line == "Error: CREGISTRY_ADMIN_TOKEN must be at least 16 characters"
