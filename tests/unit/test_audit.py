"""What operators see: the audit trail (one entry per change, with who did
it), and output that devices cannot use against them (escaped control
characters and markup, no secrets in logs)."""

from __future__ import annotations

import getpass
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from click.testing import CliRunner, Result
from flask.testing import FlaskClient

import cregistry.cli
from cregistry import services
from cregistry.config import Config
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.passwords import pairing_id
from cregistry.pending import PendingRequests
from cregistry.users import UserStore
from cregistry.web import create_app

from .conftest import ADMIN_TOKEN

KEYS = Keys("cregistry")
OPS_TOKEN = "ops-token-0123456789"
CI_TOKEN = "ci-token-0123456789ab"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
NASTY_CLIENT_ID = "<script>alert(1)</script>\x1b[31mred\x1b[0m\rOVERWRITE\u202e\x9b2J"
# What must never reach the operator's terminal raw: ESC and CR, the C1 control
# CSI (U+009B, which terminals also read as ESC [), DEL and a bidi override.
TERMINAL_CONTROLS = ("\x1b", "\r", "\x9b", "\x7f", "\u202e")
NASTY_CONTEXT = {"note": "<img src=x onerror=alert(1)>", "esc": "\x1b[2J", "cr": "line\roverwritten", "amp": "a&b"}


@pytest.fixture
def clock() -> Callable[[], float]:
    # The apps read the real time; the domain fixtures must agree with them.
    return time.time


@pytest.fixture
def config() -> Config:
    return Config(bcrypt_cost=4, admin_token=ADMIN_TOKEN, admin_tokens=f"ops={OPS_TOKEN}, ci={CI_TOKEN}")


def cli(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cregistry.cli.cli, list(args))


def cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def audit_length(connection: fakeredis.FakeRedis) -> int:
    return int(connection.xlen(KEYS.audit()))


def newest(domain: services.Services) -> dict[str, Any]:
    return domain.audit.entries(1)[0]


def make_pending(domain: services.Services, username: str, password: str, client_id: str = "client-1") -> str:
    domain.lock.unlock(actor="setup")
    domain.registration.record_attempt(username, password, client_id, "mqtt")
    return f"{username}:{pairing_id(username, password)}"


# -- one entry per change, through the API ------------------------------------------
def test_every_api_change_writes_one_entry_with_its_actor(
    api: FlaskClient,
    auth: dict[str, str],
    users: UserStore,
    connection: fakeredis.FakeRedis,
    domain: services.Services,
) -> None:
    first = make_pending(domain, "sensor-1", "secret-one")
    second = make_pending(domain, "sensor-2", "secret-two")
    users.roles.grant("role-1", "a/#", "read", actor="setup")
    steps: list[tuple[str, str, dict[str, Any], str, str, dict[str, Any]]] = [
        ("POST", "/api/client-registry/unlock", {"seconds": 60}, "registry.unlock", "registry", {"seconds": 60}),
        ("POST", "/api/client-registry/lock", {}, "registry.lock", "registry", {}),
        (
            "POST",
            f"/api/client-registry/requests/{first}/approve",
            {},
            "request.approve",
            "sensor-1",
            {"pairingId": first.split(":")[1], "clientId": "client-1"},
        ),
        (
            "POST",
            f"/api/client-registry/requests/{second}/deny",
            {},
            "request.deny",
            "sensor-2",
            {"pairingId": second.split(":")[1], "clientId": "client-1"},
        ),
        ("POST", "/api/users", {"username": "backend", "password": "backend-secret"}, "user.add", "backend", {}),
        (
            "PUT",
            "/api/users/sensor-1/permissions",
            [{"topic": "devices/%u/#", "access": "readWrite"}],
            "user.permissions",
            "sensor-1",
            {"permissions": [{"topic": "devices/%u/#", "access": "readWrite"}]},
        ),
        ("PUT", "/api/users/sensor-1/roles", ["role-1"], "user.roles", "sensor-1", {"roles": ["role-1"]}),
        ("PUT", "/api/users/sensor-1/superuser", {"superuser": True}, "user.superuser", "sensor-1", {}),
        (
            "PUT",
            "/api/roles/role-2/permissions",
            [{"topic": "b/+", "access": "write"}],
            "role.permissions",
            "role-2",
            {},
        ),
        ("DELETE", "/api/roles/role-1", {}, "role.delete", "role-1", {}),
        ("DELETE", "/api/users/sensor-1/failures", {}, "user.failures.clear", "sensor-1", {}),
        ("DELETE", "/api/users/backend", {}, "user.delete", "backend", {}),
    ]
    for method, path, body, action, target, details in steps:
        length = audit_length(connection)
        kwargs: dict[str, Any] = {"json": body} if body != {} else {}
        response = api.open(path, method=method, headers=auth, **kwargs)
        assert response.status_code in (200, 201), (path, response.get_data(as_text=True))
        assert audit_length(connection) == length + 1, path
        entry = newest(domain)
        assert (entry["actor"], entry["action"], entry["target"]) == ("api:admin", action, target)
        assert details.items() <= entry["details"].items(), (action, entry["details"])
        assert ISO_UTC.fullmatch(entry["time"])


@pytest.mark.parametrize(("token", "actor"), [(ADMIN_TOKEN, "api:admin"), (OPS_TOKEN, "api:ops"), (CI_TOKEN, "api:ci")])
def test_named_admin_tokens_are_the_actor(api: FlaskClient, token: str, actor: str, domain: services.Services) -> None:
    response = api.post("/api/client-registry/unlock", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    entry = newest(domain)
    assert (entry["actor"], entry["action"]) == (actor, "registry.unlock")


def test_named_tokens_from_the_environment(connection: fakeredis.FakeRedis, domain: services.Services) -> None:
    config = Config.from_env({"CREGISTRY_ADMIN_TOKENS": f"ops={OPS_TOKEN}", "CREGISTRY_BCRYPT_COST": "4"})
    client = create_app(config, listener="api", connection=connection).test_client()
    assert client.post("/api/client-registry/lock", headers={"Authorization": f"Bearer {OPS_TOKEN}"}).status_code == 200
    assert newest(domain)["actor"] == "api:ops"
    # A name is no token.
    assert client.post("/api/client-registry/lock", headers={"Authorization": "Bearer ops"}).status_code == 401


# -- one entry per change, through the CLI ------------------------------------------
def test_every_cli_change_writes_one_entry_with_its_actor(
    runner: CliRunner, connection: fakeredis.FakeRedis, domain: services.Services
) -> None:
    first = make_pending(domain, "sensor-1", "secret-one").split(":")[1]
    second = make_pending(domain, "sensor-2", "secret-two").split(":")[1]
    steps: list[tuple[list[str], str, str, dict[str, Any]]] = [
        (["unlock", "--seconds", "90"], "registry.unlock", "registry", {"seconds": 90}),
        (["lock"], "registry.lock", "registry", {}),
        (["approve", "sensor-1"], "request.approve", "sensor-1", {"pairingId": first}),
        (["deny", "sensor-2", "--pairing-id", second], "request.deny", "sensor-2", {"pairingId": second}),
        (["user", "add", "backend", "--password-stdin"], "user.add", "backend", {"superuser": False}),
        (["user", "superuser", "backend", "on"], "user.superuser", "backend", {"superuser": True}),
        (["grant", "sensor-1", "devices/%u/#", "readWrite"], "user.grant", "sensor-1", {"topic": "devices/%u/#"}),
        (["revoke", "sensor-1", "devices/%u/#"], "user.revoke", "sensor-1", {"topic": "devices/%u/#"}),
        (["role", "grant", "role-1", "a/#", "read"], "role.grant", "role-1", {"topic": "a/#", "access": "read"}),
        (["role", "assign", "sensor-1", "role-1"], "user.role.assign", "sensor-1", {"role": "role-1"}),
        (["role", "unassign", "sensor-1", "role-1"], "user.role.unassign", "sensor-1", {"role": "role-1"}),
        (["role", "revoke", "role-1", "a/#"], "role.revoke", "role-1", {"topic": "a/#"}),
        (["role", "delete", "role-1"], "role.delete", "role-1", {}),
        (["user", "clear-failures", "sensor-1"], "user.failures.clear", "sensor-1", {}),
        (["user", "delete", "backend"], "user.delete", "backend", {}),
    ]
    for args, action, target, details in steps:
        length = audit_length(connection)
        result = runner.invoke(cregistry.cli.cli, args, input="backend-secret\n")
        assert result.exit_code == 0, (args, result.output)
        assert audit_length(connection) == length + 1, args
        entry = newest(domain)
        assert (entry["actor"], entry["action"], entry["target"]) == (cli_actor(), action, target)
        assert details.items() <= entry["details"].items(), (action, entry["details"])


def test_cli_actor_without_a_passwd_entry(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, domain: services.Services
) -> None:
    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found")

    monkeypatch.setattr(getpass, "getuser", no_user)
    assert cli(runner, "unlock").exit_code == 0
    assert re.fullmatch(r"cli:uid-\d+", newest(domain)["actor"])


# -- failed changes write nothing ---------------------------------------------------
def test_failed_api_changes_write_no_entry(
    api: FlaskClient, auth: dict[str, str], users: UserStore, connection: fakeredis.FakeRedis
) -> None:
    users.add("backend", "backend-secret", actor="setup")
    length = audit_length(connection)
    failures = [
        ("POST", "/api/client-registry/requests/sensor-1:abcdef/approve", None, 404),
        ("POST", "/api/client-registry/requests/sensor-1:abcdef/deny", None, 404),
        ("POST", "/api/client-registry/requests/not-an-id/approve", None, 404),
        ("POST", "/api/client-registry/unlock", {"seconds": 0}, 400),
        ("POST", "/api/users", {"username": "backend", "password": "another-secret"}, 409),
        ("POST", "/api/users", {"username": "shorty", "password": "x"}, 400),
        ("DELETE", "/api/users/nobody-here", None, 404),
        ("PUT", "/api/users/nobody-here/permissions", [], 404),
        ("PUT", "/api/users/backend/permissions", [{"topic": "a/#/b", "access": "read"}], 400),
        ("PUT", "/api/users/backend/roles", ["no-such-role"], 404),
        ("PUT", "/api/users/backend/superuser", {"superuser": "yes"}, 400),
        ("DELETE", "/api/roles/no-such-role", None, 404),
        ("DELETE", "/api/users/bad%20name/failures", None, 400),
    ]
    for method, path, body, status in failures:
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        response = api.open(path, method=method, headers=auth, **kwargs)
        assert response.status_code == status, (path, response.get_data(as_text=True))
        assert audit_length(connection) == length, path
    # Without the token nothing happens, and nothing is written.
    assert api.post("/api/client-registry/unlock").status_code == 401
    assert audit_length(connection) == length


def test_failed_cli_changes_write_no_entry(
    runner: CliRunner,
    users: UserStore,
    connection: fakeredis.FakeRedis,
    domain: services.Services,
    requests: PendingRequests,
) -> None:
    users.add("backend", "backend-secret", actor="setup")
    make_pending(domain, "twin", "secret-one")
    make_pending(domain, "twin", "secret-two")
    length = audit_length(connection)
    failures = [
        (["approve", "sensor-1"], 3),
        (["deny", "sensor-1"], 3),
        (["approve", "twin"], 4),  # ambiguous: two candidates
        (["approve", "backend"], 4),  # the user exists
        (["grant", "nobody-here", "a/#", "read"], 3),
        (["revoke", "backend", "a/#"], 3),
        (["grant", "backend", "a/#/b", "read"], 2),
        (["user", "delete", "nobody-here"], 3),
        (["user", "superuser", "nobody-here", "on"], 3),
        (["role", "revoke", "no-such-role", "a/#"], 3),
        (["role", "assign", "backend", "no-such-role"], 3),
        (["role", "unassign", "backend", "no-such-role"], 3),
        (["role", "delete", "no-such-role"], 3),
        (["unlock", "--seconds", "0"], 2),
    ]
    for args, exit_code in failures:
        result = cli(runner, *args)
        assert result.exit_code == exit_code, (args, result.output)
        assert audit_length(connection) == length, args
    assert len(requests.requests_for("twin")) == 2


# -- reading the trail ------------------------------------------------------------
def test_cli_and_api_show_the_newest_first(
    runner: CliRunner, api: FlaskClient, auth: dict[str, str], lock: RegistryLock
) -> None:
    for seconds in (10, 20, 30, 40):
        lock.unlock(seconds, actor="ops")
    result = cli(runner, "audit", "--json", "--limit", "3")
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)["entries"]
    assert [e["details"]["seconds"] for e in entries] == [40, 30, 20]
    assert [e["actor"] for e in entries] == ["ops"] * 3
    assert entries == sorted(entries, key=lambda e: tuple(map(int, e["id"].split("-"))), reverse=True)
    response = api.get("/api/audit?limit=2", headers=auth)
    assert [e["details"]["seconds"] for e in response.get_json()["entries"]] == [40, 30]
    everything = api.get("/api/audit", headers=auth).get_json()["entries"]
    assert [e["details"]["seconds"] for e in everything] == [40, 30, 20, 10]
    text = cli(runner, "audit").stdout.splitlines()
    assert text[0].split() == ["TIME", "ACTOR", "ACTION", "TARGET", "DETAILS"]
    assert [line.split()[1:4] for line in text[1:]] == [["ops", "registry.unlock", "registry"]] * 4
    for bad in ("0", "1001", "x", "-1"):
        assert api.get(f"/api/audit?limit={bad}", headers=auth).status_code == 400, bad
    assert cli(runner, "audit", "--limit", "0").exit_code == 2


def test_the_trail_is_capped(connection: fakeredis.FakeRedis, domain: services.Services) -> None:
    config = Config(bcrypt_cost=4, audit_max=100)
    lock = services.build(connection, config).lock
    for _ in range(5 * config.audit_max):
        lock.unlock(60, actor="ops")
    length = audit_length(connection)
    # Approximate trimming (whole stream nodes) may keep somewhat more than the cap.
    assert config.audit_max <= length < 2 * config.audit_max, length
    assert len(domain.audit.entries(1000)) == length


def test_audit_max_has_a_floor() -> None:
    with pytest.raises(Exception, match="AUDIT_MAX"):
        Config(audit_max=10)


# -- output devices cannot use against operators ------------------------------------
def _nasty_pending(api: FlaskClient, broker: FlaskClient, auth: dict[str, str]) -> None:
    assert api.post("/api/client-registry/unlock", headers=auth).status_code == 200
    params = {"username": "sensor-1", "password": "secret-one", "clientid": NASTY_CLIENT_ID}
    assert broker.post("/mqtt/user", json=params).status_code == 403
    body = {"username": "sensor-2", "password": "secret-two", "clientId": NASTY_CLIENT_ID, "context": NASTY_CONTEXT}
    assert api.post("/api/client-registry/register", json=body).status_code == 202


def assert_no_raw_control_characters(text: str, characters: tuple[str, ...] = TERMINAL_CONTROLS) -> None:
    for character in characters:
        assert character not in text, (character, text)


def test_cli_shows_device_supplied_text_escaped(
    runner: CliRunner, api: FlaskClient, broker: FlaskClient, auth: dict[str, str]
) -> None:
    _nasty_pending(api, broker, auth)
    listing = cli(runner, "requests")
    assert listing.exit_code == 0
    assert_no_raw_control_characters(listing.output)
    assert "\\x1b[31mred" in listing.output and "\\r" in listing.output
    as_json = cli(runner, "requests", "--json")
    assert_no_raw_control_characters(as_json.output, ("\x1b", "\r"))  # JSON escapes C0 controls
    decoded = json.loads(as_json.stdout)["requests"]
    assert {r["clientId"] for r in decoded} == {NASTY_CLIENT_ID}  # escaped, not lost
    assert [r["context"] for r in decoded if r["username"] == "sensor-2"] == [NASTY_CONTEXT]
    assert cli(runner, "approve", "sensor-1").exit_code == 0
    shown = cli(runner, "user", "show", "sensor-1")
    assert shown.exit_code == 0
    assert_no_raw_control_characters(shown.output)
    assert "client id:    <script>alert(1)</script>\\x1b[31mred" in shown.output
    assert cli(runner, "grant", "sensor-1", "a/\x1b[2J/#", "read").exit_code == 0
    for args in (["user", "show", "sensor-1"], ["audit"], ["users"], ["revoke", "sensor-1", "a/\x1b[2J/#"]):
        result = cli(runner, *args)
        assert result.exit_code == 0, args
        assert_no_raw_control_characters(result.output)
    missing = cli(runner, "revoke", "sensor-1", "b/\x1b[2J\r")
    assert missing.exit_code == 3
    assert_no_raw_control_characters(missing.output)


def test_cli_json_output_escapes_every_terminal_control(
    runner: CliRunner, api: FlaskClient, broker: FlaskClient, auth: dict[str, str]
) -> None:
    """JSON escapes only U+0000-U+001F; C1 controls and bidi overrides from a
    device must not reach a terminal raw through `--json` either."""
    _nasty_pending(api, broker, auth)
    assert cli(runner, "approve", "sensor-1").exit_code == 0
    for args in (["requests", "--json"], ["user", "show", "sensor-1", "--json"], ["audit", "--json"]):
        result = cli(runner, *args)
        assert result.exit_code == 0, args
        assert_no_raw_control_characters(result.output)
        json.loads(result.stdout)  # still valid JSON


def test_api_output_has_no_raw_markup(api: FlaskClient, broker: FlaskClient, auth: dict[str, str]) -> None:
    _nasty_pending(api, broker, auth)
    request_id = f"sensor-1:{pairing_id('sensor-1', 'secret-one')}"
    answers = [
        api.get("/api/client-registry/requests", headers=auth),
        api.post(f"/api/client-registry/requests/{request_id}/approve", headers=auth),
        api.get("/api/users/sensor-1", headers=auth),
        api.get("/api/users", headers=auth),
        api.post(f"/api/client-registry/requests/sensor-2:{pairing_id('sensor-2', 'secret-two')}/deny", headers=auth),
        api.get("/api/audit", headers=auth),
        api.post("/api/client-registry/requests/%3Cscript%3E:abcdef/approve", headers=auth),
        api.put("/api/users/sensor-1/permissions", json=[{"topic": "<b>/#", "access": "read"}], headers=auth),
    ]
    for response in answers:
        raw = response.get_data()
        assert response.status_code < 500
        for character in (b"<", b">", b"\x1b", b"\r"):
            assert character not in raw, (response.request.path, raw[:200])
    listed = answers[0].get_json()["requests"]
    assert {r["clientId"] for r in listed} == {NASTY_CLIENT_ID}
    assert [r["context"] for r in listed if r["username"] == "sensor-2"] == [NASTY_CONTEXT]
    assert answers[2].get_json()["clientId"] == NASTY_CLIENT_ID
    assert answers[6].status_code == 404
    assert answers[7].get_json()["permissions"] == [{"topic": "<b>/#", "access": "read"}]


def test_logs_show_no_password_hash_or_token(
    api: FlaskClient,
    broker: FlaskClient,
    auth: dict[str, str],
    connection: fakeredis.FakeRedis,
    caplog: pytest.LogCaptureFixture,
    requests: PendingRequests,
    domain: services.Services,
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = ["device-secret-1", "device-secret-2", "operator-secret-3", "wrong-secret-4"]
    _nasty_pending(api, broker, auth)
    assert api.post("/api/client-registry/register", json={"username": "dev-1", "password": secrets[0]}).status_code
    broker.post("/mqtt/user", json={"username": "dev-2", "password": secrets[1], "clientid": "c"})
    hashes = [r.password_hash for r in requests.list_requests()]
    for username, password in (("dev-1", secrets[0]), ("dev-2", secrets[1])):
        api.post(f"/api/client-registry/requests/{username}:{pairing_id(username, password)}/approve", headers=auth)
    api.post("/api/users", json={"username": "backend", "password": secrets[2]}, headers=auth)
    hashes += [str(domain.users.password_hash(name)) for name in ("dev-1", "dev-2", "backend")]
    # Not "c": that client ID is dev-2's own since its approval.
    assert broker.post("/mqtt/user", json={"username": "dev-1", "password": secrets[0], "clientid": "c1"}).status_code
    for _ in range(Config().failure_limit + 1):  # up to the warning about the limit
        broker.post("/mqtt/user", json={"username": "dev-2", "password": secrets[3], "clientid": "c"})
    api.delete("/api/users/dev-2/failures", headers=auth)
    tokens = [connection.get(KEYS.user_verified("dev-1")), ADMIN_TOKEN, OPS_TOKEN, CI_TOKEN]
    api.get("/api/users", headers={"Authorization": "Bearer wrong-token-guess"})
    logged = "\n".join([caplog.text, *(r.getMessage() for r in caplog.records)])
    assert "registration approved: user dev-1" in logged  # the flow was logged at all
    assert "dev-2 reached 100 failed password checks" in logged
    assert len(hashes) == 7 and all(h.startswith("$2") for h in hashes) and tokens[0]
    for secret in [*secrets, *hashes, *tokens, "wrong-token-guess"]:
        assert secret not in logged, secret
