"""The routes go-auth's HTTP backend calls: CONNECT, superuser and ACL checks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import cregistry.connections
from cregistry import services
from cregistry.config import Config
from cregistry.lock import RegistryLock
from cregistry.passwords import pairing_id
from cregistry.pending import PendingRequests
from cregistry.users import UserStore
from cregistry.web import create_app

USERNAME = "sensor-1"
PASSWORD = "secret1"
CLIENT_ID = "client-1"

# How go-auth can send its parameters: (params mode, HTTP method).
SENDING_MODES = [
    ("json", "POST"),
    ("json", "PUT"),
    ("json", "GET"),
    ("form", "POST"),
    ("form", "PUT"),
    ("form", "GET"),
    ("query", "GET"),
]
MODE_IDS = [f"{mode}-{method}" for mode, method in SENDING_MODES]


def send(
    client: FlaskClient, path: str, params: dict[str, Any], mode: str = "json", method: str = "POST"
) -> TestResponse:
    if mode == "json":
        return client.open(path, method=method, json=params)
    # Forms and query strings carry text only.
    text = {name: str(value) for name, value in params.items()}
    if mode == "form":
        return client.open(path, method=method, data=text)
    return client.open(path, method=method, query_string=text)


def assert_answer(response: TestResponse, status: int) -> dict[str, Any]:
    """Every answer: the status, and a JSON body {"ok": bool, "error": str}."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict), response.get_data(as_text=True)
    assert isinstance(body.get("ok"), bool)
    assert isinstance(body.get("error"), str)
    assert body["ok"] is (status == 200)
    return body


def acl(client: FlaskClient, topic: str, acc: int, username: str = USERNAME, client_id: str = CLIENT_ID) -> int:
    response = send(client, "/mqtt/acl", {"username": username, "clientid": client_id, "topic": topic, "acc": acc})
    assert_answer(response, response.status_code)
    assert response.status_code in (200, 403)
    return response.status_code


def make_device(domain: services.Services, username: str = USERNAME, password: str = PASSWORD) -> str:
    """A device that registered itself and was approved (no permissions); it
    owns CLIENT_ID if it is USERNAME, else a client ID named after it."""
    was_locked = domain.lock.status().locked
    domain.lock.unlock()
    client_id = CLIENT_ID if username == USERNAME else f"{username}-client"
    domain.registration.record_attempt(username, password, client_id, "mqtt")
    domain.requests.approve(username)
    if was_locked:
        domain.lock.lock()
    return username


@pytest.fixture
def clock() -> Callable[[], float]:
    # The app reads the real time; the registry fixture must agree with it,
    # or requests it records look expired to the app (and the other way round).
    return time.time


@pytest.fixture
def device(domain: services.Services) -> str:
    return make_device(domain)


@pytest.fixture
def superuser(users: UserStore) -> str:
    users.add("admin-1", "admin-password", superuser=True)
    return "admin-1"


# -- /mqtt/user -----------------------------------------------------------------
@pytest.mark.parametrize(("mode", "method"), SENDING_MODES, ids=MODE_IDS)
def test_user_allow_and_deny(broker: FlaskClient, device: str, mode: str, method: str) -> None:
    good = {"username": USERNAME, "password": PASSWORD, "clientid": CLIENT_ID}
    body = assert_answer(send(broker, "/mqtt/user", good, mode, method), 200)
    assert body == {"ok": True, "error": ""}
    wrong = {**good, "password": "secret2"}
    assert_answer(send(broker, "/mqtt/user", wrong, mode, method), 403)
    unknown = {**good, "username": "sensor-2"}
    assert_answer(send(broker, "/mqtt/user", unknown, mode, method), 403)


def test_user_with_another_client_id_is_still_allowed(broker: FlaskClient, device: str) -> None:
    params = {"username": USERNAME, "password": PASSWORD, "clientid": "another"}
    assert_answer(send(broker, "/mqtt/user", params), 200)


def test_unknown_user_while_unlocked_is_refused_and_recorded(
    broker: FlaskClient, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    params = {"username": "sensor-9", "password": "device-made", "clientid": "c-9"}
    body = assert_answer(send(broker, "/mqtt/user", params), 403)
    assert pairing_id("sensor-9", "device-made") in body["error"]
    [request] = requests.list_requests()
    assert (request.username, request.client_id, request.source) == ("sensor-9", "c-9", "mqtt")
    assert request.pairing_id == pairing_id("sensor-9", "device-made")
    assert_answer(send(broker, "/mqtt/user", params), 403)
    assert requests.list_requests()[0].attempts == 2


def test_unknown_user_while_locked_is_refused_and_not_recorded(
    broker: FlaskClient, connection: fakeredis.FakeRedis
) -> None:
    params = {"username": "sensor-9", "password": "device-made", "clientid": "c-9"}
    assert_answer(send(broker, "/mqtt/user", params), 403)
    assert connection.keys("*") == []


def test_pending_user_becomes_allowed_after_approval(
    broker: FlaskClient, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    params = {"username": "sensor-9", "password": "device-made", "clientid": "c-9"}
    assert_answer(send(broker, "/mqtt/user", params), 403)
    requests.approve("sensor-9")
    lock.lock()
    assert_answer(send(broker, "/mqtt/user", params), 200)


# -- /mqtt/superuser ------------------------------------------------------------
@pytest.mark.parametrize(("mode", "method"), SENDING_MODES, ids=MODE_IDS)
def test_superuser_allow_and_deny(broker: FlaskClient, device: str, superuser: str, mode: str, method: str) -> None:
    assert_answer(send(broker, "/mqtt/superuser", {"username": superuser}, mode, method), 200)
    assert_answer(send(broker, "/mqtt/superuser", {"username": device}, mode, method), 403)
    assert_answer(send(broker, "/mqtt/superuser", {"username": "nobody"}, mode, method), 403)


def test_superuser_flag_can_be_switched(broker: FlaskClient, device: str, users: UserStore) -> None:
    users.set_superuser(device, True)
    assert_answer(send(broker, "/mqtt/superuser", {"username": device}), 200)
    users.set_superuser(device, False)
    assert_answer(send(broker, "/mqtt/superuser", {"username": device}), 403)


# -- /mqtt/acl ------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "method"), SENDING_MODES, ids=MODE_IDS)
def test_acl_allow_and_deny(broker: FlaskClient, device: str, users: UserStore, mode: str, method: str) -> None:
    users.grant(device, "devices/%u/#", "readWrite")
    allowed = {"username": device, "clientid": CLIENT_ID, "topic": f"devices/{device}/t", "acc": 2}
    body = assert_answer(send(broker, "/mqtt/acl", allowed, mode, method), 200)
    assert body == {"ok": True, "error": ""}
    denied = {**allowed, "topic": "devices/other/t"}
    assert_answer(send(broker, "/mqtt/acl", denied, mode, method), 403)


def test_fresh_approved_user_is_denied_everything(broker: FlaskClient, device: str) -> None:
    for topic in ("a", f"devices/{device}/t", f"{device}", "$SYS/x"):
        for acc in (1, 2, 3, 4):
            assert acl(broker, topic, acc) == 403, (topic, acc)
    for topic_filter in ("#", "+", f"devices/{device}/#"):
        assert acl(broker, topic_filter, 4) == 403


def test_unknown_user_is_denied(broker: FlaskClient) -> None:
    assert acl(broker, "a", 1, username="nobody") == 403


def test_superuser_passes_every_valid_acl_check(broker: FlaskClient, superuser: str) -> None:
    for topic in ("a", "devices/x/t", "$SYS/broker/uptime", "/"):
        for acc in (1, 2, 3, 4):
            assert acl(broker, topic, acc, username=superuser) == 200, (topic, acc)
    for topic_filter in ("#", "+/+", "$SYS/#", "a/+/#"):
        assert acl(broker, topic_filter, 4, username=superuser) == 200, topic_filter


def test_device_permission_on_its_own_subtree(broker: FlaskClient, device: str, users: UserStore) -> None:
    users.grant(device, "devices/%u/#", "readWrite")
    assert acl(broker, f"devices/{device}/t", 2) == 200
    assert acl(broker, f"devices/{device}/a/b/c", 2) == 200
    assert acl(broker, f"devices/{device}", 2) == 200  # '#' includes the parent
    assert acl(broker, f"devices/{device}/t", 1) == 200
    assert acl(broker, f"devices/{device}/t", 3) == 200
    assert acl(broker, "devices/other/t", 2) == 403
    assert acl(broker, "devices/other/t", 1) == 403
    assert acl(broker, f"devices/{device}x/t", 2) == 403
    # Publishing to a topic with a wildcard is never allowed.
    assert acl(broker, f"devices/{device}/+", 2) == 403
    assert acl(broker, f"devices/{device}/#", 2) == 403
    assert acl(broker, "devices/+/t", 2) == 403
    # Subscriptions: only filters whose every topic is readable.
    assert acl(broker, f"devices/{device}/#", 4) == 200
    assert acl(broker, f"devices/{device}/+/x", 4) == 200
    assert acl(broker, f"devices/{device}", 4) == 200
    assert acl(broker, "devices/#", 4) == 403
    assert acl(broker, "devices/+/t", 4) == 403
    assert acl(broker, "#", 4) == 403
    assert acl(broker, "+/+/+", 4) == 403
    # Invalid filters are refused, not mis-parsed.
    assert acl(broker, f"devices/{device}/#/x", 4) == 403
    assert acl(broker, f"devices/{device}/a+", 4) == 403


def test_read_only_permission(broker: FlaskClient, device: str, users: UserStore) -> None:
    users.grant(device, "telemetry/#", "read")
    assert acl(broker, "telemetry/a", 1) == 200
    assert acl(broker, "telemetry/#", 4) == 200
    assert acl(broker, "telemetry/a", 2) == 403
    assert acl(broker, "telemetry/a", 3) == 403


def test_write_only_permission(broker: FlaskClient, device: str, users: UserStore) -> None:
    users.grant(device, "commands/#", "write")
    assert acl(broker, "commands/a", 2) == 200
    assert acl(broker, "commands/a", 1) == 403
    assert acl(broker, "commands/#", 4) == 403
    assert acl(broker, "commands/a", 3) == 403


def test_read_and_write_from_two_permissions(broker: FlaskClient, device: str, users: UserStore) -> None:
    users.grant(device, "shared/#", "read")
    users.grant(device, "shared/+/in", "write")
    assert acl(broker, "shared/x/in", 3) == 200
    assert acl(broker, "shared/x/out", 3) == 403


def test_subscription_covered_by_a_union_of_permissions(broker: FlaskClient, device: str, users: UserStore) -> None:
    users.grant(device, "a", "read")
    assert acl(broker, "a/#", 4) == 403
    users.grant(device, "a/+/#", "readWrite")
    assert acl(broker, "a/#", 4) == 200


def test_wildcard_first_permission_does_not_reach_dollar_topics(
    broker: FlaskClient, device: str, users: UserStore
) -> None:
    users.grant(device, "#", "readWrite")
    assert acl(broker, "a/b", 2) == 200
    assert acl(broker, "#", 4) == 200
    assert acl(broker, "$SYS/broker/uptime", 1) == 403
    assert acl(broker, "$SYS/#", 4) == 403
    users.grant(device, "$SYS/#", "read")
    assert acl(broker, "$SYS/broker/uptime", 1) == 200
    assert acl(broker, "$SYS/#", 4) == 200


def test_client_id_placeholder(broker: FlaskClient, device: str, users: UserStore) -> None:
    users.grant(device, "clients/%c/#", "readWrite")
    assert acl(broker, "clients/c1/x", 2, client_id="c1") == 200
    assert acl(broker, "clients/c1/#", 4, client_id="c1") == 200
    assert acl(broker, "clients/c2/x", 2, client_id="c1") == 403
    # A client id that would widen the pattern makes it not apply at all.
    assert acl(broker, "clients/x", 2, client_id="+") == 403
    assert acl(broker, "clients/a/b", 2, client_id="a/b") == 403
    assert acl(broker, "clients/anything/x", 4, client_id="#") == 403
    assert acl(broker, "clients//x", 2, client_id="") == 403


def test_permissions_through_a_role(broker: FlaskClient, users: UserStore, domain: services.Services) -> None:
    first = make_device(domain, "sensor-1", "secret1")
    second = make_device(domain, "sensor-2", "secret2")
    users.roles.grant("devices", "devices/%u/#", "readWrite")
    users.assign_role(first, "devices")
    assert acl(broker, "devices/sensor-1/t", 2, username=first) == 200
    assert acl(broker, "devices/sensor-1/#", 4, username=first) == 200
    assert acl(broker, "devices/sensor-2/t", 2, username=first) == 403
    assert acl(broker, "devices/sensor-2/t", 2, username=second) == 403
    users.assign_role(second, "devices")
    assert acl(broker, "devices/sensor-2/t", 2, username=second) == 200
    users.unassign_role(first, "devices")
    assert acl(broker, "devices/sensor-1/t", 2, username=first) == 403


def test_revoked_permission_and_deleted_user_are_denied(broker: FlaskClient, device: str, users: UserStore) -> None:
    users.grant(device, "a/#", "readWrite")
    assert acl(broker, "a/b", 2) == 200
    users.revoke(device, "a/#")
    assert acl(broker, "a/b", 2) == 403
    users.grant(device, "a/#", "readWrite")
    users.delete(device)
    assert acl(broker, "a/b", 2) == 403
    assert_answer(send(broker, "/mqtt/user", {"username": device, "password": PASSWORD, "clientid": CLIENT_ID}), 403)


# -- "unknown_user": the plugin's plugin_opt_unknown_users defer (SPEC §11) ----
def connect(broker: FlaskClient, username: str, password: str, client_id: str = CLIENT_ID) -> dict[str, Any]:
    response = send(broker, "/mqtt/user", {"username": username, "password": password, "clientid": client_id})
    return assert_answer(response, response.status_code)


def test_refusals_of_a_known_user_are_not_marked_unknown(broker: FlaskClient, device: str) -> None:
    assert "unknown_user" not in connect(broker, USERNAME, PASSWORD)
    wrong = connect(broker, USERNAME, "secret2")
    assert wrong["ok"] is False
    assert "unknown_user" not in wrong
    # a password the format refuses may still belong to a user: not marked either
    too_long = connect(broker, USERNAME, "x" * 73)
    assert too_long["ok"] is False
    assert "unknown_user" not in too_long


def test_refusals_of_an_unknown_user_are_marked_and_still_recorded(
    broker: FlaskClient, lock: RegistryLock, requests: PendingRequests
) -> None:
    locked = connect(broker, "svc-account", "from-a-password-file")
    assert (locked["ok"], locked.get("unknown_user")) == (False, True)
    lock.unlock()
    recorded = connect(broker, "svc-account", "from-a-password-file")
    repeated = connect(broker, "svc-account", "from-a-password-file")
    assert (recorded["ok"], recorded.get("unknown_user")) == (False, True)
    assert (repeated["ok"], repeated.get("unknown_user")) == (False, True)
    [request] = requests.list_requests()
    assert (request.username, request.attempts) == ("svc-account", 2)
    # no user of the registry can have a name the rules refuse
    invalid = connect(broker, "svc/account", "from-a-password-file")
    assert (invalid["ok"], invalid.get("unknown_user")) == (False, True)


def test_acl_answers_mark_only_users_the_registry_does_not_have(
    broker: FlaskClient, device: str, users: UserStore
) -> None:
    users.grant(device, "a/#", "readWrite")
    for username, topic, acc, status, unknown in [
        (USERNAME, "a/b", 2, 200, None),
        (USERNAME, "b", 2, 403, None),
        ("svc-account", "a/b", 2, 403, True),
        ("svc/account", "a/b", 2, 403, True),
    ]:
        params = {"username": username, "clientid": CLIENT_ID, "topic": topic, "acc": acc}
        body = assert_answer(send(broker, "/mqtt/acl", params), status)
        assert body.get("unknown_user") is unknown, (username, topic, body)


# -- malformed input ------------------------------------------------------------
MALFORMED_PARAMS = [
    ("/mqtt/user", {"password": PASSWORD, "clientid": CLIENT_ID}),
    ("/mqtt/user", {"username": USERNAME, "clientid": CLIENT_ID}),
    ("/mqtt/user", {"username": USERNAME, "password": PASSWORD}),
    ("/mqtt/user", {"username": 17, "password": PASSWORD, "clientid": CLIENT_ID}),
    ("/mqtt/user", {"username": [USERNAME], "password": PASSWORD, "clientid": CLIENT_ID}),
    ("/mqtt/user", {"username": USERNAME, "password": None, "clientid": CLIENT_ID}),
    ("/mqtt/user", {"username": USERNAME, "password": {"p": 1}, "clientid": CLIENT_ID}),
    ("/mqtt/user", {"username": USERNAME, "password": PASSWORD, "clientid": 5}),
    ("/mqtt/user", {"username": USERNAME, "password": "€" * 25, "clientid": CLIENT_ID}),
    ("/mqtt/user", {"username": USERNAME, "password": "secret\x001", "clientid": CLIENT_ID}),
    ("/mqtt/user", {"username": USERNAME, "password": "\ud800secret", "clientid": CLIENT_ID}),
    ("/mqtt/superuser", {}),
    ("/mqtt/superuser", {"username": 5}),
    ("/mqtt/superuser", {"username": None}),
    ("/mqtt/superuser", {"username": "admin/1"}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a"}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a", "acc": "x"}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a", "acc": 5}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a", "acc": 0}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a", "acc": -1}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a", "acc": True}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a", "acc": 1.5}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a", "acc": None}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a", "acc": [1]}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a", "acc": "1.0"}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "acc": 1}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": 5, "acc": 1}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "", "acc": 1}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a/+", "acc": 2}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "a\x00b", "acc": 1}),
    ("/mqtt/acl", {"username": "admin-1", "clientid": "c", "topic": "\ud800", "acc": 1}),
    ("/mqtt/acl", {"username": "admin-1", "topic": "a", "acc": 1}),
    ("/mqtt/acl", {"username": 5, "clientid": "c", "topic": "a", "acc": 1}),
]


@pytest.mark.parametrize(("path", "params"), MALFORMED_PARAMS)
def test_malformed_params_are_refused_never_500(
    broker: FlaskClient, superuser: str, device: str, path: str, params: dict[str, Any]
) -> None:
    # The user behind these requests is a superuser and the device exists, so
    # only the malformed field can be the reason for the refusal.
    response = send(broker, path, params)
    assert response.status_code in (400, 403)
    assert_answer(response, response.status_code)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"username": "admin-1",', "application/json"),
        (b'["admin-1", "c", "a", 1]', "application/json"),
        (b'"admin-1"', "application/json"),
        (b"17", "application/json"),
        (b"null", "application/json"),
        (b"", "application/json"),
        (b"\xff\xfe\xfd", "application/json"),
        (b'{"username": "admin-1"', "text/plain"),
        (b"\xff\xfe\xfd", "application/x-www-form-urlencoded"),
        (b"username=%ff%fe&clientid=c&topic=a&acc=1", "application/x-www-form-urlencoded"),
        (b"[" * 50_000, "application/json"),
        (b'{"username": ' + b"[" * 50_000, "application/json"),
        (b'{"username": ' + b"[" * 50_000, "text/plain"),
    ],
    ids=lambda value: repr(value)[:40],
)
@pytest.mark.parametrize("path", ["/mqtt/user", "/mqtt/superuser", "/mqtt/acl"])
def test_malformed_bodies_are_refused_never_5xx(
    broker: FlaskClient, superuser: str, path: str, body: bytes, content_type: str
) -> None:
    response = broker.post(path, data=body, content_type=content_type)
    assert response.status_code in (400, 403)
    assert_answer(response, response.status_code)


def test_acc_as_form_text(broker: FlaskClient, device: str, users: UserStore) -> None:
    users.grant(device, "a/#", "read")
    for acc in ("1", "4"):
        params = {"username": device, "clientid": CLIENT_ID, "topic": "a/b", "acc": acc}
        assert_answer(broker.post("/mqtt/acl", data=params), 200)
    params = {"username": device, "clientid": CLIENT_ID, "topic": "a/b", "acc": "2"}
    assert_answer(broker.post("/mqtt/acl", data=params), 403)


def test_other_methods_and_routes_answer_json(broker: FlaskClient) -> None:
    response = broker.delete("/mqtt/user")
    assert_answer(response, 405)
    assert_answer(broker.post("/mqtt/nothing", json={}), 404)


@pytest.mark.parametrize("path", ["/mqtt/user", "/mqtt/superuser", "/mqtt/acl"])
@pytest.mark.parametrize("method", ["DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"])
def test_a_check_path_with_another_method_is_405_with_allow(broker: FlaskClient, method: str, path: str) -> None:
    """Answered in front of Flask, as the checks are (HEAD and OPTIONS too,
    which Flask would have added to a rule of its own)."""
    response = broker.open(path, method=method, json={"username": "a"})
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST, PUT"
    if method != "HEAD":
        assert response.get_json() == {"ok": False, "error": "The method is not allowed for the requested URL."}


# -- listeners ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/client-registry"),
        ("POST", "/api/client-registry/unlock"),
        ("POST", "/api/client-registry/register"),
        ("GET", "/api/users"),
        ("GET", "/api/client-registry/requests"),
    ],
)
def test_api_routes_do_not_exist_on_the_broker_listener(
    broker: FlaskClient, auth: dict[str, str], method: str, path: str, lock: RegistryLock
) -> None:
    response = broker.open(path, method=method, headers=auth, json={"username": "sensor-1", "password": "secret1"})
    assert response.status_code == 404
    assert lock.status().locked is True


@pytest.mark.parametrize("path", ["/mqtt/user", "/mqtt/superuser", "/mqtt/acl"])
def test_broker_routes_do_not_exist_on_the_api_listener(
    api: FlaskClient, auth: dict[str, str], device: str, path: str
) -> None:
    params = {"username": USERNAME, "password": PASSWORD, "clientid": CLIENT_ID, "topic": "a", "acc": 1}
    for headers in ({}, auth):
        for method in ("POST", "GET", "PUT"):
            assert api.open(path, method=method, json=params, headers=headers).status_code == 404


# -- Redis unreachable, stalled or slow -----------------------------------------
BROKER_CALLS = [
    ("/mqtt/user", {"username": USERNAME, "password": PASSWORD, "clientid": CLIENT_ID}),
    ("/mqtt/superuser", {"username": USERNAME}),
    ("/mqtt/acl", {"username": USERNAME, "clientid": CLIENT_ID, "topic": "a/b", "acc": 1}),
    ("/mqtt/acl", {"username": USERNAME, "clientid": CLIENT_ID, "topic": "a/#", "acc": 4}),
]


def broker_on(url: str, config: Config) -> FlaskClient:
    connection = cregistry.connections.connect(url, 0.5)
    return create_app(config, listener="broker", connection=connection).test_client()


@pytest.fixture
def stalled_redis_url() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    listener.close()
    for connection in accepted:
        connection.close()


@pytest.mark.parametrize(("path", "params"), BROKER_CALLS)
def test_redis_unreachable_answers_503_quickly(config: Config, path: str, params: dict[str, Any]) -> None:
    client = broker_on("redis://127.0.0.1:1/0", config)
    started = time.monotonic()
    response = send(client, path, params)
    assert time.monotonic() - started < 2
    assert_answer(response, 503)


@pytest.mark.parametrize(("path", "params"), BROKER_CALLS)
def test_redis_stalled_answers_503_within_2_seconds(
    config: Config, stalled_redis_url: str, path: str, params: dict[str, Any]
) -> None:
    client = broker_on(stalled_redis_url, config)
    started = time.monotonic()
    response = send(client, path, params)
    assert time.monotonic() - started < 2
    assert_answer(response, 503)


SLOW_REDIS_DELAY = 0.3  # each reply comes late, but within the 0.5 s socket timeout


class SlowRedis:
    """fakeredis's TCP server behind a proxy that holds back every request by
    `delay` seconds (0 until a test sets it)."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.server = fakeredis.TcpFakeServer(("127.0.0.1", 0), server_type="redis")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.proxy = socket.socket()
        self.proxy.bind(("127.0.0.1", 0))
        self.proxy.listen(16)
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()
        self.url = f"redis://127.0.0.1:{self.proxy.getsockname()[1]}/0"
        # A direct client on the same data, for setting up a test at full speed.
        self.fast = cregistry.connections.connect(f"redis://127.0.0.1:{self.server.server_address[1]}/0", 2)

    def _accept(self) -> None:
        while True:
            try:
                client_side = self.proxy.accept()[0]
            except OSError:
                return
            server_side = socket.create_connection(self.server.server_address)
            self.sockets += [client_side, server_side]
            threading.Thread(target=self._pump, args=(client_side, server_side, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server_side, client_side, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, delayed: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                if delayed:
                    time.sleep(self.delay)
                target.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.fast.close()
        self.proxy.close()
        for each in self.sockets:
            each.close()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_redis() -> Iterator[SlowRedis]:
    slow = SlowRedis()
    yield slow
    slow.close()


def test_slow_redis_still_answers_within_2_seconds(config: Config, slow_redis: SlowRedis) -> None:
    """When Redis is slow the answer comes within 2 seconds (go-auth's
    http_timeout); a per-command socket timeout alone does not bound a check
    that makes many round trips."""
    lock = services.build(slow_redis.fast, config).lock
    lock.unlock()  # so the unknown user's attempt is recorded: the longest path
    client = broker_on(slow_redis.url, config)
    # Open the pooled connection at full speed: its handshake is not part of a check.
    assert_answer(send(client, "/mqtt/superuser", {"username": "nobody"}), 403)
    slow_redis.delay = SLOW_REDIS_DELAY
    started = time.monotonic()
    response = send(client, "/mqtt/user", {"username": "sensor-9", "password": "device-made", "clientid": "c-9"})
    elapsed = time.monotonic() - started
    assert response.status_code in (403, 503)
    assert_answer(response, response.status_code)
    assert elapsed < 2, f"answered after {elapsed:.1f} s"
