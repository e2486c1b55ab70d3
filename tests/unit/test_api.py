"""The public listener: device registration and the admin API."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import cregistry.connections
from cregistry import services
from cregistry.config import Config
from cregistry.errors import ConfigError
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.passwords import pairing_id
from cregistry.pending import PendingRequests
from cregistry.registration import Registration
from cregistry.users import UserStore
from cregistry.web import create_app

from .conftest import ADMIN_TOKEN

KEYS = Keys("cregistry")
REGISTER = "/api/client-registry/register"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
REQUEST_KEYS = {
    "contested",
    "refusedAttempts",
    "id",
    "username",
    "pairingId",
    "clientId",
    "source",
    "firstSeen",
    "lastSeen",
    "attempts",
    "context",
    "certificateRequest",
}
PENDING_ID = f"sensor-1:{pairing_id('sensor-1', 'secret1')}"

# Admin routes: the lock, requests, users and their permissions, roles and the audit trail.
ADMIN_ROUTES = [
    ("GET", "/api/client-registry"),
    ("POST", "/api/client-registry/unlock"),
    ("POST", "/api/client-registry/lock"),
    ("GET", "/api/client-registry/requests"),
    ("POST", f"/api/client-registry/requests/{PENDING_ID}/approve"),
    ("POST", f"/api/client-registry/requests/{PENDING_ID}/deny"),
    ("GET", "/api/users"),
    ("GET", "/api/users/sensor-2"),
    ("DELETE", "/api/users/sensor-2"),
    ("PUT", "/api/users/sensor-2/permissions"),
    ("POST", "/api/users"),
    ("PUT", "/api/users/sensor-2/roles"),
    ("PUT", "/api/users/sensor-2/superuser"),
    ("GET", "/api/roles"),
    ("GET", "/api/roles/role-1"),
    ("PUT", "/api/roles/role-1/permissions"),
    ("DELETE", "/api/roles/role-1"),
    ("GET", "/api/audit"),
]
BAD_AUTHORIZATION = {
    "missing": {},
    "wrong-token": {"Authorization": "Bearer wrong-token"},
    "token-prefix": {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    "token-longer": {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    "empty-token": {"Authorization": "Bearer "},
    "scheme-only": {"Authorization": "Bearer"},
    "basic-scheme": {"Authorization": f"Basic {ADMIN_TOKEN}"},
    "token-scheme": {"Authorization": f"Token {ADMIN_TOKEN}"},
    "no-scheme": {"Authorization": ADMIN_TOKEN},
    "other-header": {"X-Admin-Token": ADMIN_TOKEN},
}


@pytest.fixture
def clock() -> Callable[[], float]:
    # The app reads the real time; the registry fixture must agree with it.
    return time.time


def snapshot(connection: fakeredis.FakeRedis) -> dict[str, Any]:
    """Every key and its value, to show that a refused call changed nothing."""
    state: dict[str, Any] = {}
    for key in connection.keys("*"):
        kind = connection.type(key)
        if kind == "hash":
            state[key] = connection.hgetall(key)
        elif kind == "set":
            state[key] = connection.smembers(key)
        elif kind == "zset":
            state[key] = connection.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            state[key] = connection.xrange(key)
        elif kind == "list":
            state[key] = connection.lrange(key, 0, -1)
        else:
            state[key] = connection.get(key)
    return state


def assert_error(response: TestResponse, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["ok"] is False
    assert isinstance(body["error"], str) and body["error"]
    return body


def register(api: FlaskClient, **body: Any) -> TestResponse:
    return api.post(REGISTER, json=body)


@pytest.fixture
def pending(registration: Registration, lock: RegistryLock) -> str:
    """A pending request for sensor-1 (password secret1); returns its id."""
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "client-1", "mqtt")
    lock.lock()
    return PENDING_ID


# -- authentication -------------------------------------------------------------
@pytest.mark.parametrize("headers", BAD_AUTHORIZATION.values(), ids=BAD_AUTHORIZATION.keys())
@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_need_the_bearer_token(
    api: FlaskClient,
    users: UserStore,
    connection: fakeredis.FakeRedis,
    pending: str,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    users.add("sensor-2", "secret2")
    users.roles.grant("role-1", "a/#", "read")
    before = snapshot(connection)
    body = [{"topic": "a", "access": "read"}] if path.endswith(("permissions", "roles")) else {"seconds": 60}
    response = api.open(path, method=method, headers=headers, json=body)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # Nothing changed but the address's count of wrong tokens, which a presented token adds to.
    after = snapshot(connection)
    counted = after.pop(KEYS.admin_token_failures("127.0.0.1"), None)
    assert after == before
    presented = headers.get("Authorization", "").partition(" ")[2].strip()
    assert counted == ("1" if presented else None)


def test_wrong_admin_tokens_are_limited_per_address(
    api: FlaskClient, config: Config, connection: fakeredis.FakeRedis
) -> None:
    """Guessing the admin token through the API stops at the console's sign-in
    limit: then even the right token is refused with 429 and Retry-After (the
    answer must not tell a guess that happens to be right), and a success in
    between does not reset the count."""
    wrong = {"Authorization": "Bearer wrong-token"}
    right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for attempt in range(config.console_signin_limit):
        assert_error(api.get("/api/users", headers=wrong), 401)
        if attempt == 0:
            assert api.get("/api/users", headers=right).status_code == 200
    before = snapshot(connection)
    for headers in (wrong, right, {}):
        response = api.get("/api/users", headers=headers)
        body = assert_error(response, 429)
        assert "too many wrong admin tokens" in body["error"]
        assert 0 < int(response.headers["Retry-After"]) <= config.console_signin_window
    assert snapshot(connection) == before
    # Another address is not affected.
    assert api.get("/api/users", headers=right, environ_base={"REMOTE_ADDR": "192.0.2.9"}).status_code == 200


def test_every_admin_route_of_the_app_needs_the_token(api: FlaskClient, users: UserStore, pending: str) -> None:
    """Routes ADMIN_ROUTES does not list are covered too: all but registration, the
    health probes and the web console (session sign-in, test_console.py) are
    admin routes."""
    users.add("sensor-2", "secret2")
    values = {"username": "sensor-2", "role": "role-1", "request_id": pending, "name": "line-3"}
    checked = 0
    for rule in api.application.url_map.iter_rules():
        if rule.endpoint in ("static", "registration.register") or rule.endpoint.startswith(
            ("health.", "console", "openapi.")
        ):
            continue
        assert rule.rule.startswith("/api/"), rule.rule
        path = rule.rule
        for name, value in values.items():
            path = path.replace(f"<{name}>", value)
        assert "<" not in path, rule.rule
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            assert_error(api.open(path, method=method, json={}), 401)
            checked += 1
    assert checked >= len(ADMIN_ROUTES)
    assert users.exists("sensor-2")


def test_the_right_token_is_accepted_with_any_scheme_case(api: FlaskClient) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = api.get("/api/client-registry", headers={"Authorization": f"{scheme} {ADMIN_TOKEN}"})
        assert response.status_code == 200


@pytest.mark.parametrize("token", [None, ""])
def test_no_default_token(connection: fakeredis.FakeRedis, token: str | None) -> None:
    with pytest.raises(ConfigError):
        create_app(Config(bcrypt_cost=4, admin_token=token), listener="api", connection=connection)


def test_registration_needs_no_token(api: FlaskClient) -> None:
    assert register(api, username="sensor-1", password="secret1").status_code == 423


# -- lock state -----------------------------------------------------------------
def test_status_unlock_lock(api: FlaskClient, auth: dict[str, str], connection: fakeredis.FakeRedis) -> None:
    response = api.get("/api/client-registry", headers=auth)
    assert (response.status_code, response.get_json()) == (200, {"locked": True, "secondsLeft": 0})
    response = api.post("/api/client-registry/unlock", json={"seconds": 60}, headers=auth)
    assert (response.status_code, response.get_json()) == (200, {"locked": False, "secondsLeft": 60})
    assert connection.ttl(KEYS.unlock()) == 60
    assert api.get("/api/client-registry", headers=auth).get_json() == {"locked": False, "secondsLeft": 60}
    response = api.post("/api/client-registry/lock", headers=auth)
    assert (response.status_code, response.get_json()) == (200, {"locked": True, "secondsLeft": 0})
    assert not connection.exists(KEYS.unlock())


@pytest.mark.parametrize("body", [None, {}, {"seconds": None}], ids=["no-body", "empty-object", "null-seconds"])
def test_unlock_default_300(api: FlaskClient, auth: dict[str, str], body: Any) -> None:
    response = api.post("/api/client-registry/unlock", json=body, headers=auth)
    assert response.get_json() == {"locked": False, "secondsLeft": 300}


@pytest.mark.parametrize(
    "body",
    [
        {"seconds": 0},
        {"seconds": -5},
        {"seconds": 3601},
        {"seconds": "60"},
        {"seconds": True},
        {"seconds": 60.5},
        {"seconds": [60]},
        [60],
        "60",
    ],
)
def test_unlock_invalid_seconds_changes_nothing(api: FlaskClient, auth: dict[str, str], body: Any) -> None:
    assert_error(api.post("/api/client-registry/unlock", json=body, headers=auth), 400)
    assert api.get("/api/client-registry", headers=auth).get_json() == {"locked": True, "secondsLeft": 0}
    api.post("/api/client-registry/unlock", json={"seconds": 100}, headers=auth)
    assert_error(api.post("/api/client-registry/unlock", json=body, headers=auth), 400)
    assert api.get("/api/client-registry", headers=auth).get_json() == {"locked": False, "secondsLeft": 100}


def test_unlock_with_invalid_json_body(api: FlaskClient, auth: dict[str, str]) -> None:
    response = api.post("/api/client-registry/unlock", data=b"{seconds", content_type="application/json", headers=auth)
    assert_error(response, 400)
    assert api.get("/api/client-registry", headers=auth).get_json()["locked"] is True


# -- requests -------------------------------------------------------------------
def test_requests_list(
    api: FlaskClient, auth: dict[str, str], registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    assert api.get("/api/client-registry/requests", headers=auth).get_json()["requests"] == []
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "client-1", "mqtt")
    register(api, username="sensor-2", password="secret2", clientId="c2", context={"model": "x1"})
    response = api.get("/api/client-registry/requests", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    items = {item["username"]: item for item in body["requests"]}
    assert set(items) == {"sensor-1", "sensor-2"}
    for item in items.values():
        assert set(item) == REQUEST_KEYS
        assert ISO_UTC.fullmatch(item["firstSeen"]) and ISO_UTC.fullmatch(item["lastSeen"])
        assert item["attempts"] == 1
    assert items["sensor-1"]["id"] == PENDING_ID
    assert items["sensor-1"]["pairingId"] == pairing_id("sensor-1", "secret1")
    assert (items["sensor-1"]["clientId"], items["sensor-1"]["source"]) == ("client-1", "mqtt")
    assert items["sensor-1"]["context"] is None
    assert items["sensor-2"]["id"] == f"sensor-2:{pairing_id('sensor-2', 'secret2')}"
    assert (items["sensor-2"]["clientId"], items["sensor-2"]["source"]) == ("c2", "rest")
    assert items["sensor-2"]["context"] == {"model": "x1"}
    text = response.get_data(as_text=True)
    for request in requests.list_requests():
        assert request.password_hash not in text
    assert "secret1" not in text and "secret2" not in text


def test_approve(
    api: FlaskClient, auth: dict[str, str], connection: fakeredis.FakeRedis, pending: str, requests: PendingRequests
) -> None:
    request_hash = requests.list_requests()[0].password_hash
    response = api.post(f"/api/client-registry/requests/{pending}/approve", headers=auth)
    assert response.status_code == 201
    user = response.get_json()
    assert user["username"] == "sensor-1"
    assert user["permissions"] == [] and user["roles"] == [] and user["superuser"] is False
    assert user["pairingId"] == pairing_id("sensor-1", "secret1")
    assert connection.hget(KEYS.user("sensor-1"), "passwordHash") == request_hash
    responses = [
        response,
        api.get("/api/users", headers=auth),
        api.get("/api/users/sensor-1", headers=auth),
        api.get("/api/client-registry/requests", headers=auth),
        api.get("/api/audit", headers=auth),
    ]
    for each in responses:
        text = each.get_data(as_text=True)
        assert request_hash not in text
        assert "secret1" not in text
        assert "passwordHash" not in text
    # The request is gone and the username taken: the username wins.
    assert_error(api.post(f"/api/client-registry/requests/{pending}/approve", headers=auth), 409)


def test_approve_removes_the_other_candidates(
    api: FlaskClient, auth: dict[str, str], registration: Registration, lock: RegistryLock
) -> None:
    lock.unlock()
    for password in ("secret1", "secret2"):
        registration.record_attempt("sensor-1", password, "c", "mqtt")
    other = f"sensor-1:{pairing_id('sensor-1', 'secret2')}"
    assert api.post(f"/api/client-registry/requests/{PENDING_ID}/approve", headers=auth).status_code == 201
    assert api.get("/api/client-registry/requests", headers=auth).get_json()["requests"] == []
    assert api.post(f"/api/client-registry/requests/{other}/approve", headers=auth).status_code == 409


def test_approve_when_the_username_was_taken_meanwhile(
    api: FlaskClient, auth: dict[str, str], users: UserStore, pending: str
) -> None:
    users.add("sensor-1", "operator-made")
    operator_hash = users.password_hash("sensor-1")
    assert_error(api.post(f"/api/client-registry/requests/{pending}/approve", headers=auth), 409)
    assert users.password_hash("sensor-1") == operator_hash


@pytest.mark.parametrize(
    "request_id",
    [
        f"sensor-1:{pairing_id('sensor-1', 'other')}",
        "sensor-9:abcdef",
        "sensor-1",
        "sensor-1:",
        "sensor-1:ABCDEF",
        "sensor-1:abcdefg",
        "garbage",
        "s:abcdef",
        ":abcdef",
    ],
)
@pytest.mark.parametrize("action", ["approve", "deny"])
def test_approve_or_deny_of_a_missing_request(
    api: FlaskClient, auth: dict[str, str], pending: str, request_id: str, action: str, requests: PendingRequests
) -> None:
    assert_error(api.post(f"/api/client-registry/requests/{request_id}/{action}", headers=auth), 404)
    assert [r.id for r in requests.list_requests()] == [pending]


def test_deny(api: FlaskClient, auth: dict[str, str], pending: str) -> None:
    response = api.post(f"/api/client-registry/requests/{pending}/deny", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"denied"}
    assert set(body["denied"]) == REQUEST_KEYS
    assert body["denied"]["id"] == pending
    assert api.get("/api/client-registry/requests", headers=auth).get_json()["requests"] == []
    assert_error(api.post(f"/api/client-registry/requests/{pending}/deny", headers=auth), 404)
    assert_error(api.post(f"/api/client-registry/requests/{pending}/approve", headers=auth), 404)


# -- users ----------------------------------------------------------------------
def test_users_list_show_delete(
    api: FlaskClient, auth: dict[str, str], users: UserStore, pending: str, requests: PendingRequests
) -> None:
    assert api.get("/api/users", headers=auth).get_json()["users"] == []
    requests.approve("sensor-1")
    users.add("backend", "backend-password", superuser=True)
    listing = api.get("/api/users", headers=auth)
    assert listing.status_code == 200
    assert [u["username"] for u in listing.get_json()["users"]] == ["backend", "sensor-1"]
    shown = api.get("/api/users/sensor-1", headers=auth)
    assert shown.status_code == 200
    assert shown.get_json()["username"] == "sensor-1"
    assert shown.get_json()["clientId"] == "client-1"
    for response in (listing, shown):
        text = response.get_data(as_text=True)
        for name in ("sensor-1", "backend"):
            assert users.password_hash(name) not in text
        assert "backend-password" not in text and "secret1" not in text
    response = api.delete("/api/users/sensor-1", headers=auth)
    assert (response.status_code, response.get_json()) == (200, {"deleted": "sensor-1"})
    assert_error(api.get("/api/users/sensor-1", headers=auth), 404)
    assert_error(api.delete("/api/users/sensor-1", headers=auth), 404)
    assert [u["username"] for u in api.get("/api/users", headers=auth).get_json()["users"]] == ["backend"]


def test_show_and_delete_with_an_invalid_username(api: FlaskClient, auth: dict[str, str]) -> None:
    assert_error(api.get("/api/users/ab", headers=auth), 400)
    assert_error(api.delete("/api/users/ab", headers=auth), 400)
    assert_error(api.put("/api/users/ab/permissions", json=[], headers=auth), 400)


@pytest.fixture
def user(users: UserStore) -> str:
    users.add("sensor-1", "secret1")
    return "sensor-1"


def test_put_permissions_replaces_them(api: FlaskClient, auth: dict[str, str], user: str) -> None:
    path = f"/api/users/{user}/permissions"
    first = [{"topic": "devices/%u/#", "access": "readWrite"}, {"topic": "cmd/+", "access": "read"}]
    response = api.put(path, json=first, headers=auth)
    assert response.status_code == 200
    assert sorted(response.get_json()["permissions"], key=lambda p: p["topic"]) == sorted(
        first, key=lambda p: p["topic"]
    )
    second = [{"topic": "other", "access": "write"}]
    assert api.put(path, json=second, headers=auth).get_json()["permissions"] == second
    assert api.get(f"/api/users/{user}", headers=auth).get_json()["permissions"] == second
    assert api.put(path, json=[], headers=auth).get_json()["permissions"] == []


@pytest.mark.parametrize(
    "body",
    [
        [{"topic": "a", "access": "rw"}],
        [{"topic": "a", "access": "READ"}],
        [{"topic": "a", "access": None}],
        [{"topic": "a/#/b", "access": "read"}],
        [{"topic": "a+", "access": "read"}],
        [{"topic": "", "access": "read"}],
        [{"topic": "a/%x", "access": "read"}],
        [{"topic": 5, "access": "read"}],
        [{"topic": "a"}],
        [{"access": "read"}],
        [{"topic": "a", "access": "read", "extra": 1}],
        [{"topic": "ok", "access": "read"}, {"topic": "a/#/b", "access": "read"}],
        [{"topic": "a", "access": "read"}, {"topic": "a", "access": "write"}],
        ["a"],
        [None],
        {"topic": "a", "access": "read"},
        "a",
        5,
        None,
    ],
)
def test_put_permissions_refuses_bad_lists_and_changes_nothing(
    api: FlaskClient, auth: dict[str, str], user: str, body: Any
) -> None:
    path = f"/api/users/{user}/permissions"
    kept = [{"topic": "kept/#", "access": "read"}]
    api.put(path, json=kept, headers=auth)
    assert_error(api.put(path, data=json.dumps(body), content_type="application/json", headers=auth), 400)
    assert api.get(f"/api/users/{user}", headers=auth).get_json()["permissions"] == kept


def test_put_permissions_for_an_unknown_user(api: FlaskClient, auth: dict[str, str], users: UserStore) -> None:
    assert_error(api.put("/api/users/nobody/permissions", json=[], headers=auth), 404)
    assert not users.exists("nobody")


# -- REST registration ----------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        {"username": "ab", "password": "secret1"},
        {"username": "sensor/1", "password": "secret1"},
        {"username": "sensor-1%u", "password": "secret1"},
        {"username": 17, "password": "secret1"},
        {"password": "secret1"},
        {"username": "sensor-1"},
        {"username": "sensor-1", "password": "abcd"},
        {"username": "sensor-1", "password": "€" * 25},
        {"username": "sensor-1", "password": "secret\u00001"},
        {"username": "sensor-1", "password": 12345},
        {"username": "sensor-1", "password": "secret1", "clientId": 5},
        {"username": "sensor-1", "password": "secret1", "context": "text"},
        {"username": "sensor-1", "password": "secret1", "context": ["a"]},
        {"username": "sensor-1", "password": "secret1", "context": 5},
        {"username": "sensor-1", "password": "secret1", "context": {"blob": "x" * 4100}},
        ["sensor-1", "secret1"],
        "sensor-1",
    ],
)
def test_register_invalid_input_is_400_and_records_nothing(
    api: FlaskClient, connection: fakeredis.FakeRedis, body: Any, lock: RegistryLock
) -> None:
    lock.unlock()
    before = snapshot(connection)
    response = api.post(REGISTER, data=json.dumps(body), content_type="application/json")
    assert_error(response, 400)
    assert snapshot(connection) == before


def test_register_with_lone_surrogate_is_400(api: FlaskClient, lock: RegistryLock, requests: PendingRequests) -> None:
    lock.unlock()
    raw = '{"username": "sensor-1", "password": "\\ud800secret"}'
    assert_error(api.post(REGISTER, data=raw, content_type="application/json"), 400)
    assert requests.list_requests() == []


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_register_context_that_is_not_json_is_400(
    api: FlaskClient, constant: str, lock: RegistryLock, requests: PendingRequests
) -> None:
    """NaN and Infinity are not JSON (RFC 8259); stored, they would make the
    requests listing itself invalid JSON for the operator's tools."""
    lock.unlock()
    raw = '{"username": "sensor-1", "password": "secret1", "context": {"x": ' + constant + "}}"
    assert_error(api.post(REGISTER, data=raw, content_type="application/json"), 400)
    assert requests.list_requests() == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_register_takes_json_only_as_application_json(
    api: FlaskClient, connection: fakeredis.FakeRedis, lock: RegistryLock, content_type: str | None
) -> None:
    """A web page can post text/plain (a CORS "simple request") to any origin:
    a page a device's browser opens must not be able to record registrations."""
    lock.unlock()
    before = snapshot(connection)
    raw = json.dumps({"username": "sensor-1", "password": "secret1"})
    response = api.post(REGISTER, data=raw, content_type=content_type)
    assert assert_error(response, 400)["error"] == "the body must be JSON sent as Content-Type: application/json"
    assert snapshot(connection) == before
    # the same body as application/json (with a charset too) is a registration attempt
    assert api.post(REGISTER, data=raw, content_type="application/json; charset=utf-8").status_code == 202


def test_register_locked(api: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    response = register(api, username="sensor-1", password="secret1")
    body = assert_error(response, 423)
    assert body["status"] == "locked"
    assert connection.keys("*") == []


def test_register_pending_then_granted(
    api: FlaskClient, auth: dict[str, str], lock: RegistryLock, requests: PendingRequests, domain: services.Services
) -> None:
    lock.unlock()
    expected_pairing = pairing_id("sensor-1", "secret1")
    response = register(api, username="sensor-1", password="secret1", clientId="c1", context={"fw": "1.2"})
    assert (response.status_code, response.get_json()) == (202, {"status": "pending", "pairingId": expected_pairing})
    lock.lock()
    # The device polls by repeating the request; locking does not hide it.
    response = register(api, username="sensor-1", password="secret1")
    assert (response.status_code, response.get_json()) == (202, {"status": "pending", "pairingId": expected_pairing})
    assert requests.list_requests()[0].attempts == 2
    api.post(f"/api/client-registry/requests/sensor-1:{expected_pairing}/approve", headers=auth)
    response = register(api, username="sensor-1", password="secret1")
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "granted"
    assert body["pairingId"] == expected_pairing
    text = response.get_data(as_text=True)
    assert "secret1" not in text and domain.users.password_hash("sensor-1") not in text


def test_register_conflict(api: FlaskClient, users: UserStore, lock: RegistryLock, requests: PendingRequests) -> None:
    users.add("sensor-1", "secret1")
    lock.unlock()
    body = assert_error(register(api, username="sensor-1", password="secret2"), 409)
    assert body["status"] == "conflict"
    assert requests.list_requests() == []


def test_register_denied(api: FlaskClient, auth: dict[str, str], lock: RegistryLock, requests: PendingRequests) -> None:
    lock.unlock()
    register(api, username="sensor-1", password="secret1")
    assert api.post(f"/api/client-registry/requests/{PENDING_ID}/deny", headers=auth).status_code == 200
    body = assert_error(register(api, username="sensor-1", password="secret1"), 403)
    assert body["status"] == "denied"
    assert requests.list_requests() == []


def test_register_at_the_cap(connection: fakeredis.FakeRedis) -> None:
    config = Config(bcrypt_cost=4, admin_token=ADMIN_TOKEN, pending_max=1)
    client = create_app(config, listener="api", connection=connection).test_client()
    domain = services.build(connection, config)
    domain.lock.unlock()
    assert register(client, username="sensor-1", password="secret1").status_code == 202
    body = assert_error(register(client, username="sensor-2", password="secret1"), 429)
    assert body["status"] == "limited"
    assert [r.username for r in domain.requests.list_requests()] == ["sensor-1"]


# -- junk -----------------------------------------------------------------------
def junk_bodies() -> list[tuple[str, bytes, str | None]]:
    rng = random.Random(5)
    bodies = [(f"random-{i}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))), None) for i in range(5)]
    bodies += [
        ("random-as-json", os.urandom(300), "application/json"),
        ("invalid-utf8-json", b'{"username": "\xff\xfe", "password": "secret1"}', "application/json"),
        ("invalid-utf8", b"\xc3\x28\xa0\xa1", "application/json"),
        ("truncated", b'{"username": "sensor-1", "password": ', "application/json"),
        ("nul-bytes", b"\x00" * 100, "application/json"),
        ("form", b"username=sensor-1&password=secret1", "application/x-www-form-urlencoded"),
        ("deep-array", b"[" * 50_000, "application/json"),
        ("deep-object", b'{"context": ' + b'{"a": ' * 20_000, "application/json"),
        ("deep-context", b'{"username": "sensor-1", "password": "secret1", "context": ' + b"[" * 50_000, None),
    ]
    return bodies


JUNK = junk_bodies()
JUNK_TARGETS = [
    ("POST", REGISTER),
    ("POST", "/api/client-registry/unlock"),
    ("PUT", "/api/users/sensor-1/permissions"),
    ("POST", "/api/users"),
    ("PUT", "/api/roles/role-1/permissions"),
]


@pytest.mark.parametrize(("name", "body", "content_type"), JUNK, ids=[j[0] for j in JUNK])
@pytest.mark.parametrize(("method", "path"), JUNK_TARGETS)
def test_junk_bodies_are_never_5xx(
    api: FlaskClient,
    auth: dict[str, str],
    user: str,
    method: str,
    path: str,
    name: str,
    body: bytes,
    content_type: str | None,
    lock: RegistryLock,
) -> None:
    lock.unlock()
    response = api.open(path, method=method, data=body, content_type=content_type, headers=auth)
    assert_error(response, 400)


@pytest.mark.parametrize(("method", "path"), JUNK_TARGETS)
def test_huge_bodies_are_refused(api: FlaskClient, auth: dict[str, str], method: str, path: str) -> None:
    body = json.dumps({"username": "sensor-1", "password": "secret1", "context": {"x": "y" * 300_000}})
    response = api.open(path, method=method, data=body, content_type="application/json", headers=auth)
    assert response.status_code in (400, 413)
    assert response.get_json()["ok"] is False


# -- Redis unavailable ----------------------------------------------------------
def test_redis_down_is_503_not_500(config: Config, auth: dict[str, str]) -> None:
    connection = cregistry.connections.connect("redis://127.0.0.1:1/0", 0.5)
    client = create_app(config, listener="api", connection=connection).test_client()
    assert_error(register(client, username="sensor-1", password="secret1"), 503)
    assert_error(client.get("/api/client-registry", headers=auth), 503)
    assert_error(client.get("/api/users", headers=auth), 503)


# -- logs -----------------------------------------------------------------------
def test_logs_never_show_a_password_or_hash(
    api: FlaskClient,
    broker: FlaskClient,
    auth: dict[str, str],
    connection: fakeredis.FakeRedis,
    caplog: pytest.LogCaptureFixture,
    requests: PendingRequests,
) -> None:
    caplog.set_level(logging.DEBUG)
    api.post("/api/client-registry/unlock", headers=auth)
    register(api, username="sensor-1", password="device-secret-1")
    broker.post("/mqtt/user", json={"username": "sensor-2", "password": "device-secret-2", "clientid": "c"})
    hashes = [r.password_hash for r in requests.list_requests()]
    api.post(
        f"/api/client-registry/requests/sensor-1:{pairing_id('sensor-1', 'device-secret-1')}/approve", headers=auth
    )
    api.post(f"/api/client-registry/requests/sensor-2:{pairing_id('sensor-2', 'device-secret-2')}/deny", headers=auth)
    broker.post("/mqtt/user", json={"username": "sensor-1", "password": "device-secret-1", "clientid": "c"})
    broker.post("/mqtt/user", json={"username": "sensor-1", "password": "wrong-secret-3", "clientid": "c"})
    # A corrupt stored hash is reported, without the hash.
    connection.hset(KEYS.user("sensor-1"), "passwordHash", "corrupt-hash-value")
    assert (
        broker.post(
            "/mqtt/user", json={"username": "sensor-1", "password": "device-secret-1", "clientid": "c"}
        ).status_code
        == 403
    )
    assert len(hashes) == 2 and caplog.records  # something was logged
    for secret in ["device-secret-1", "device-secret-2", "wrong-secret-3", "corrupt-hash-value", *hashes]:
        assert secret not in caplog.text


@pytest.mark.parametrize("value", ["²", "٣", "-1", "1.0", " 1", "", "1&offset=2&limit=2"])
@pytest.mark.parametrize(
    "path", ["/api/client-registry/requests?offset=", "/api/client-registry/requests?limit=", "/api/audit?limit="]
)
def test_query_numbers_are_ascii_digits(api: FlaskClient, path: str, value: str) -> None:
    """A 500 before: "²".isdigit() is true and int("²") fails (found while writing the fuzz tier).
    A parameter given twice was read once (found by the fuzz tier)."""
    assert_error(
        api.get(path + urllib.parse.quote(value, safe="&="), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}), 400
    )
