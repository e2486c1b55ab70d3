"""A production line through a real Mosquitto with cregistry's plugin:
devices registered by one enrollment token connect at once and get their
roles' permissions; one the operator deletes is disconnected and stays out."""

from __future__ import annotations

import time
from pathlib import Path

from harness.service import ServiceProcess, http
from tests.integration.conftest import ADMIN_TOKEN
from tests.integration.test_broker import CHANGE_BOUND, connected, disconnected_within
from tests.integration.test_device import Device

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


def test_the_production_line_walk_through_with_the_device_agent(  # type: ignore[no-untyped-def]
    clients, mosquitto, service: ServiceProcess, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """docs/enrollment.md, step by step: a role, `enrollment create`, the token
    in a file, ten `cregistry device run --enrollment-token-file`, all connected."""
    api = service.api
    role = [{"topic": "line3/%u/#", "access": "readWrite"}]
    assert http("PUT", f"{api}/api/roles/line3/permissions", json_body=role, token=ADMIN_TOKEN).status == 200
    created = http(
        "POST", f"{api}/api/enrollments", token=ADMIN_TOKEN,
        json_body={"name": "line-3", "usernamePattern": "line3-*", "roles": ["line3"], "maxUses": DEVICES},
    )  # fmt: skip
    token = created.json()["token"]
    token_file = tmp_path / "enrollment-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    watcher_password = "watcher-secret-1"
    assert http("POST", f"{api}/api/users", token=ADMIN_TOKEN,
                json_body={"username": "watcher", "password": watcher_password}).status == 201  # fmt: skip
    permissions = [{"topic": "line3/#", "access": "read"}]
    assert http("PUT", f"{api}/api/users/watcher/permissions", json_body=permissions, token=ADMIN_TOKEN).status == 200
    watcher = connected(clients, "watcher", watcher_password, "watcher")
    assert watcher.subscribe("line3/+/heartbeat") == 1

    agents = []
    try:
        for n in range(DEVICES):
            agents.append(Device(tmp_path, "--host", "127.0.0.1", "--port", str(mosquitto.port),
                                 "--credentials", str(tmp_path / f"line3-{n:02d}.json"), "--username", f"line3-{n:02d}",
                                 "--register-url", api, "--enrollment-token-file", str(token_file),
                                 "--publish", "line3/%u/heartbeat", "--publish-interval", "1"))  # fmt: skip
        for agent in agents:
            agent.wait_for("connected", timeout=90)
        heard = set()
        deadline = time.monotonic() + 30
        while len(heard) < DEVICES and time.monotonic() < deadline:
            message = watcher.receive(1.0)
            if message is not None:
                heard.add(message[0].split("/")[1])
        assert heard == {f"line3-{n:02d}" for n in range(DEVICES)}
        listed = http("GET", f"{api}/api/enrollments", token=ADMIN_TOKEN).json()["enrollments"]
        assert listed[0]["usesLeft"] == 0
        for agent in agents:
            assert token not in agent.stdout() and token not in agent.stderr()
    finally:
        for agent in agents:
            agent.kill()
