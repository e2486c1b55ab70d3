"""The whole mission through a real Mosquitto with the real go-auth plugin
(mosquitto/mosquitto-go-auth.conf): paho-mqtt clients connect, subscribe and
publish; the operator uses the CLI. go-auth caches grants and denials, so
changes show after its cache time. Skips, with the reason, where go-auth
cannot be built; cregistry's own plugin is in test_broker.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from harness.mosquitto import MosquittoProcess
from harness.mqtt import MqttClient, mqtt_clients
from harness.redis_server import RedisProcess
from harness.service import ServiceProcess, http
from tests.integration.conftest import ADMIN_TOKEN, BROKER_CACHE_SECONDS

# go-auth caches grants and denials for BROKER_CACHE_SECONDS; a change made
# by the operator shows within that time, plus a margin for a slow machine.
CACHE_WAIT = BROKER_CACHE_SECONDS + 3


@pytest.fixture
def clients(go_auth_mosquitto: MosquittoProcess) -> Iterator[Callable[..., MqttClient]]:
    with mqtt_clients(go_auth_mosquitto.port) as make:
        yield make


def connect_until(make: Callable[..., MqttClient], expected: str, *args: str, within: float = CACHE_WAIT) -> str:
    """Reconnect (a fresh client each time, as a device would) until the
    CONNACK says `expected` or time runs out; returns the last answer."""
    deadline = time.monotonic() + within
    while True:
        answer = make(*args).connect()
        if answer == expected or time.monotonic() > deadline:
            return answer
        time.sleep(0.3)


def requests_of(cregistry) -> list[dict]:  # type: ignore[no-untyped-def]
    return json.loads(cregistry("requests", "--json").stdout)["requests"]


def test_locked_registry_refuses_and_records_nothing(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    assert clients("locked-dev", "locked-secret", "locked-client").connect() == "Not authorized"
    assert requests_of(cregistry) == []


def test_unlocked_connect_is_recorded_then_approved(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    cregistry("unlock")
    assert clients("boiler-3", "boiler-secret", "boiler-client").connect() == "Not authorized"
    [request] = requests_of(cregistry)
    assert (request["username"], request["clientId"], request["source"]) == ("boiler-3", "boiler-client", "mqtt")
    assert request["pairingId"] == _pairing_id("boiler-3", "boiler-secret")

    assert cregistry("approve", "boiler-3", "--pairing-id", request["pairingId"]).returncode == 0
    assert connect_until(clients, "Success", "boiler-3", "boiler-secret", "boiler-client") == "Success"
    assert clients("boiler-3", "not-the-secret", "boiler-client").connect() == "Not authorized"


def test_subscribe_and_publish_need_permissions(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    cregistry("user", "add", "pump-1", "--password-stdin", stdin="pump-secret\n")
    subscriber = clients("pump-1", "pump-secret", "pump-sub")
    assert subscriber.connect() == "Success"
    assert subscriber.subscribe("plant/pump-1/#") == 0x80  # SUBACK failure

    publisher = clients("pump-1", "pump-secret", "pump-pub")
    assert publisher.connect() == "Success"
    publisher.publish("plant/pump-1/speed", b"denied", qos=0)
    assert subscriber.receive(1.0) is None

    cregistry("grant", "pump-1", "plant/%u/#", "readWrite")
    time.sleep(BROKER_CACHE_SECONDS + 0.5)  # the denials above are cached
    subscriber = clients("pump-1", "pump-secret", "pump-sub-2")
    assert subscriber.connect() == "Success"
    assert subscriber.subscribe("plant/pump-1/#") == 1
    publisher.publish("plant/pump-1/speed", b"1200 rpm")
    assert subscriber.receive(5.0) == ("plant/pump-1/speed", b"1200 rpm")


def test_role_gives_each_device_its_own_subtree(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    cregistry("role", "grant", "device", "devices/%u/#", "readWrite")
    for name in ("dev-a", "dev-b"):
        cregistry("user", "add", name, "--password-stdin", stdin=f"{name}-secret\n")
        cregistry("role", "assign", name, "device")
    a = clients("dev-a", "dev-a-secret", "dev-a")
    b = clients("dev-b", "dev-b-secret", "dev-b")
    assert a.connect() == "Success" and b.connect() == "Success"
    assert a.subscribe("devices/dev-a/#") == 1
    assert a.subscribe("devices/dev-b/#") == 0x80
    assert a.subscribe("devices/#") == 0x80
    b.publish("devices/dev-b/state", b"from b")  # b may publish in its own subtree...
    b.publish("devices/dev-a/state", b"b intrudes")  # ...but not in a's
    assert a.receive(1.5) is None
    a.publish("devices/dev-a/state", b"from a")
    assert a.receive(5.0) == ("devices/dev-a/state", b"from a")


def test_denied_and_deleted_devices_are_refused(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    cregistry("unlock")
    assert clients("rogue-1", "rogue-secret", "rogue").connect() == "Not authorized"
    assert cregistry("deny", "rogue-1").returncode == 0
    time.sleep(BROKER_CACHE_SECONDS + 0.5)
    assert clients("rogue-1", "rogue-secret", "rogue").connect() == "Not authorized"
    assert requests_of(cregistry) == []

    cregistry("user", "add", "retired-1", "--password-stdin", stdin="retired-secret\n")
    assert clients("retired-1", "retired-secret", "retired").connect() == "Success"
    assert cregistry("user", "delete", "retired-1").returncode == 0
    assert connect_until(clients, "Not authorized", "retired-1", "retired-secret", "retired") == "Not authorized"


def test_redis_down_grants_nothing_and_recovers(  # type: ignore[no-untyped-def]
    clients, cregistry, redis_process: RedisProcess
) -> None:
    cregistry("user", "add", "meter-9", "--password-stdin", stdin="meter-secret\n")
    redis_process.stop()
    try:
        # Not cached yet, so go-auth must ask cregistry, which answers 503.
        assert clients("meter-9", "meter-secret", "meter").connect() != "Success"
        assert clients("stranger-9", "stranger-secret", "stranger").connect() != "Success"
    finally:
        redis_process.start()
    assert connect_until(clients, "Success", "meter-9", "meter-secret", "meter") == "Success"
    assert requests_of(cregistry) == []


def test_rest_registration_then_mqtt(clients, cregistry, service: ServiceProcess) -> None:  # type: ignore[no-untyped-def]
    register = f"{service.api}/api/client-registry/register"
    body = {"username": "gateway-5", "password": "gateway-generated-secret", "clientId": "gateway-5"}
    cregistry("unlock")
    assert http("POST", register, json_body=body).status == 202
    approved = http(
        "POST",
        f"{service.api}/api/client-registry/requests/gateway-5:"
        f"{_pairing_id('gateway-5', 'gateway-generated-secret')}/approve",
        token=ADMIN_TOKEN,
    )
    assert approved.status == 201
    assert http("POST", register, json_body=body).status == 201
    assert clients("gateway-5", "gateway-generated-secret", "gateway-5").connect() == "Success"


def _pairing_id(username: str, password: str) -> str:
    import hashlib

    return hashlib.sha256(f"{username}:{password}".encode()).hexdigest()[:6]
