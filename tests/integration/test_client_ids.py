"""Client IDs owned by users (SPEC §4) through the real service, and through a
real Mosquitto with cregistry's plugin: another device cannot take over a
device's session by wearing its client ID, and giving a client ID to a user
disconnects whoever else wears it within 2 s (the change feed)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cregistry import services
from cregistry.config import Config
from harness.mosquitto import MosquittoProcess
from harness.mqtt import MqttClient, mqtt_clients
from harness.redis_server import RedisProcess
from harness.service import ServiceProcess, http, running_service
from tests.integration.conftest import ADMIN_TOKEN, finish_broker, start_plugin_broker

CHANGE_BOUND = 2.0  # every change reaches every broker within 2 s
STAYS_CONNECTED = 2.0  # how long a client must stay connected to count as "not taken over"
OWNER, OWNER_CLIENT = "device-a", "a-1"
OTHER, OTHER_CLIENT = "device-b", "b-1"


def secret(username: str) -> str:
    return f"{username}-secret"


@pytest.fixture
def domain(redis_process: RedisProcess) -> Iterator[services.Services]:
    connection = redis_process.client()
    yield services.build(connection, Config(bcrypt_cost=4))
    connection.close()


def register_by_mqtt(domain: services.Services, make: Callable[..., MqttClient], username: str, client_id: str) -> None:
    """The real path: a CONNECT while unlocked records the request, the operator approves it."""
    domain.lock.unlock(actor="test")
    assert make(username, secret(username), client_id).connect() == "Not authorized"
    domain.requests.approve(username, actor="test")
    domain.users.grant(username, "clients/%c/#", "readWrite", actor="test")


def connected(make: Callable[..., MqttClient], username: str, client_id: str) -> MqttClient:
    client = make(username, secret(username), client_id)
    assert client.connect() == "Success"
    return client


def two_devices(domain: services.Services, make: Callable[..., MqttClient]) -> None:
    register_by_mqtt(domain, make, OWNER, OWNER_CLIENT)
    register_by_mqtt(domain, make, OTHER, OTHER_CLIENT)
    time.sleep(CHANGE_BOUND)  # the setup's changes reach the broker before anything is cached


# -- the real service ----------------------------------------------------------------
def test_client_ids_through_the_admin_api_and_registration(service: ServiceProcess, domain: services.Services) -> None:
    domain.lock.unlock(actor="test")
    body = {"username": OWNER, "password": secret(OWNER), "clientId": OWNER_CLIENT}
    assert http("POST", f"{service.api}/api/client-registry/register", json_body=body).status == 202
    domain.requests.approve(OWNER, actor="test")
    shown = http("GET", f"{service.api}/api/users/{OWNER}", token=ADMIN_TOKEN)
    assert shown.json()["clientIds"] == [OWNER_CLIENT]
    # A registration wearing A's client ID is refused and records nothing, on both routes.
    rogue = {"username": "rogue-1", "password": "rogue-secret", "clientId": OWNER_CLIENT}
    refused = http("POST", f"{service.api}/api/client-registry/register", json_body=rogue)
    assert (refused.status, refused.json()["status"]) == (409, "conflict")
    mqtt = {"username": "rogue-2", "password": "rogue-secret", "clientid": OWNER_CLIENT}
    assert http("POST", f"{service.broker}/mqtt/user", json_body=mqtt).status == 403
    assert domain.requests.list_requests() == []
    # PUT replaces them; bad input is a 400 naming the problem, another's a 409, nobody a 404.
    url = f"{service.api}/api/users/{OWNER}/client-ids"
    answer = http("PUT", url, json_body=[OWNER_CLIENT, "a-2"], token=ADMIN_TOKEN)
    assert (answer.status, answer.json()["clientIds"]) == (200, [OWNER_CLIENT, "a-2"])
    bad = http("PUT", url, json_body=["a/#"], token=ADMIN_TOKEN)
    assert bad.status == 400 and "'+' or '#'" in bad.json()["error"]
    domain.users.add(OTHER, secret(OTHER), actor="test")
    taken = http("PUT", f"{service.api}/api/users/{OTHER}/client-ids", json_body=["a-2"], token=ADMIN_TOKEN)
    assert taken.status == 409 and OWNER in taken.json()["error"]
    assert http("PUT", f"{service.api}/api/users/nobody-1/client-ids", json_body=[], token=ADMIN_TOKEN).status == 404
    assert domain.users.get(OWNER).client_ids == (OWNER_CLIENT, "a-2")
    put = domain.audit.entries(2)[1]  # newest first: the user.add, then the PUT
    assert (put["action"], put["actor"]) == ("user.client-ids", "api:admin")


# -- through Mosquitto with the plugin ---------------------------------------------------
def test_a_device_cannot_take_over_another_devices_session(clients, domain: services.Services) -> None:  # type: ignore[no-untyped-def]
    two_devices(domain, clients)
    owner = connected(clients, OWNER, OWNER_CLIENT)
    assert owner.subscribe(f"clients/{OWNER_CLIENT}/#") == 1
    # B's right password with A's client ID: refused as not authorised, also once B's own connect is cached.
    assert clients(OTHER, secret(OTHER), OWNER_CLIENT).connect() == "Not authorized"
    other = connected(clients, OTHER, OTHER_CLIENT)
    assert clients(OTHER, secret(OTHER), OWNER_CLIENT).connect() == "Not authorized"
    assert not owner.disconnected.wait(STAYS_CONNECTED), "A's session was taken over"
    # B does not get A's %c namespace: its %c is its own client ID.
    assert other.subscribe(f"clients/{OWNER_CLIENT}/#") == 0x80
    other.publish(f"clients/{OWNER_CLIENT}/cmd", b"from B")
    owner.publish(f"clients/{OWNER_CLIENT}/state", b"from A")
    assert owner.receive(5) == (f"clients/{OWNER_CLIENT}/state", b"from A")  # A's namespace still works
    assert owner.receive(0.5) is None  # and B's publish never reached it


def test_giving_a_client_id_disconnects_another_user_wearing_it_within_2_seconds(  # type: ignore[no-untyped-def]
    clients, domain: services.Services
) -> None:
    two_devices(domain, clients)
    # B with a client ID nobody owns: allowed under "owned", and cached by the plugin.
    connected(clients, OTHER, "spare-1").close()
    other = connected(clients, OTHER, "spare-1")  # answered from the plugin's cached grant
    owner = connected(clients, OWNER, OWNER_CLIENT)
    domain.users.set_client_ids(OWNER, [OWNER_CLIENT, "spare-1"], actor="test")
    assert other.disconnected.wait(CHANGE_BOUND), f"B still wears A's client ID {CHANGE_BOUND} s after the change"
    assert clients(OTHER, secret(OTHER), "spare-1").connect() == "Not authorized"
    assert not owner.disconnected.is_set()  # A's own session on its other client ID is untouched


@pytest.mark.broker
def test_with_policy_any_client_ids_bind_nothing(
    redis_process: RedisProcess, domain: services.Services, cregistry_plugin: Path
) -> None:
    with running_service(redis_process.url, ADMIN_TOKEN, {"CREGISTRY_CLIENT_ID_POLICY": "any"}) as own:
        broker: MosquittoProcess = start_plugin_broker(own, cregistry_plugin)
        try:
            with mqtt_clients(broker.port) as make:
                two_devices(domain, make)
                owner = connected(make, OWNER, OWNER_CLIENT)
                connected(make, OTHER, OWNER_CLIENT)  # the behaviour before client IDs had owners
                assert owner.disconnected.wait(5), "Mosquitto's session takeover did not happen"
        finally:
            finish_broker(broker)
