"""A production line through a real Mosquitto with cregistry's plugin:
devices registered by one enrollment token connect at once and get their
roles' permissions; one the operator deletes is disconnected and stays out."""

from __future__ import annotations

import time

from tests.harness import ServiceProcess, http
from tests.integration.conftest import ADMIN_TOKEN
from tests.integration.test_broker import CHANGE_BOUND, connected, disconnected_within

DEVICES = 10


def test_ten_enrolled_devices_connect_with_their_roles_permissions(clients, service: ServiceProcess) -> None:  # type: ignore[no-untyped-def]
    api = service.api
    role = http(
        "PUT", f"{api}/api/roles/line3/permissions", token=ADMIN_TOKEN,
        json_body=[{"topic": "line3/%u/#", "access": "readWrite"}, {"topic": "line3/config", "access": "read"}],
    )  # fmt: skip
    assert role.status == 200
    created = http(
        "POST", f"{api}/api/enrollments", token=ADMIN_TOKEN,
        json_body={"name": "line-3", "usernamePattern": "line3-??", "roles": ["line3"], "maxUses": DEVICES,
                   "expiresIn": 3600},
    )  # fmt: skip
    assert created.status == 201
    token = created.json()["token"]

    devices = {}
    for n in range(DEVICES):
        name = f"line3-{n:02d}"
        body = {"username": name, "password": f"{name}-own-secret", "clientId": name, "enrollment": token}
        for _ in range(50):  # 429 while another registration holds the bcrypt slot: retry, as the agent does
            answer = http("POST", f"{api}/api/client-registry/register", json_body=body)
            if answer.status != 429:
                break
            time.sleep(0.1)
        assert answer.status == 201, answer.body
        devices[name] = connected(clients, name, f"{name}-own-secret", name)

    for name, client in devices.items():
        assert client.subscribe(f"line3/{name}/#") == 1
        assert client.subscribe("line3/config") == 1
        assert client.subscribe("line3/line3-99/#") == 0x80  # another device's topics
        assert client.subscribe("other/#") == 0x80
    first = devices["line3-00"]
    first.publish("line3/line3-00/temperature", b"21.5")
    assert first.receive(5.0) == ("line3/line3-00/temperature", b"21.5")

    # An eleventh device finds the token used up; a wrong-pattern one, the same answer.
    for name in ("line3-10", "line4-00"):
        body = {"username": name, "password": "any-secret-1", "enrollment": token}
        assert http("POST", f"{api}/api/client-registry/register", json_body=body).status == 403
        assert connected_refused(clients, name)

    # Deleted by the operator: disconnected within 2 s, and it cannot come back through the token.
    assert http("DELETE", f"{api}/api/users/line3-05", token=ADMIN_TOKEN).status == 200
    assert disconnected_within(devices["line3-05"], CHANGE_BOUND + 1) <= CHANGE_BOUND + 1
    body = {"username": "line3-05", "password": "line3-05-own-secret", "clientId": "line3-05", "enrollment": token}
    assert http("POST", f"{api}/api/client-registry/register", json_body=body).status == 403
    assert connected_refused(clients, "line3-05", "line3-05-own-secret")


def connected_refused(clients, username: str, password: str = "any-secret-1") -> bool:  # type: ignore[no-untyped-def]
    return clients(username, password, username).connect() == "Not authorized"
