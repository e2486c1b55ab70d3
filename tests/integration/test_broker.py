"""The whole mission through a real Mosquitto with cregistry's own plugin
(mosquitto/mosquitto.conf, mosquitto/cregistry_auth.so): paho-mqtt clients
connect, subscribe and publish; the operator uses the CLI, the admin API or
the domain. Changes reach the broker through the change feed within 2 s;
nothing waits for a cache. The plugin's own answers to each
check are in test_plugin_checks.py; go-auth's variant is test_broker_go_auth.py."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator

import pytest

from cregistry import services
from cregistry.config import Config
from cregistry.users import UserStore
from harness.mosquitto import MosquittoProcess
from harness.mqtt import MqttClient, raw_connect
from harness.redis_server import RedisProcess
from harness.service import Freezer, ServiceProcess, http
from tests.integration.conftest import ADMIN_TOKEN

# Every change reaches every broker within 2 s; a CONNECT is refused
# within 2 s when cregistry cannot answer.
CHANGE_BOUND = 2.0
# How long a recovery (Redis or the service back) may take before the test gives up.
RECOVERY_WAIT = 15.0
NO_CONNACK = "no CONNACK"  # the plugin could not decide: mosquitto closes the socket


@pytest.fixture
def store(redis_process: RedisProcess) -> Iterator[UserStore]:
    """The domain on the test's Redis, for changes whose timing is measured
    (the CLI's start-up would blur it)."""
    connection = redis_process.client()
    yield services.build(connection, Config(bcrypt_cost=4)).users
    connection.close()


def connected(make: Callable[..., MqttClient], username: str, password: str, client_id: str) -> MqttClient:
    client = make(username, password, client_id)
    assert client.connect() == "Success"
    return client


def add_user(store: UserStore, username: str, *grants: tuple[str, str], superuser: bool = False) -> str:
    """A user with password "<username>-secret" and the given (pattern, access) grants."""
    store.add(username, f"{username}-secret", superuser=superuser, actor="test")
    for pattern, access in grants:
        store.grant(username, pattern, access, actor="test")
    return f"{username}-secret"


def within(seconds: float, condition: Callable[[], bool], interval: float = 0.05) -> float:
    """Seconds until `condition()` held, failing the test past `seconds`."""
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        if elapsed > seconds:
            pytest.fail(f"not within {seconds} s")
        time.sleep(interval)
    return time.monotonic() - started


def let_the_broker_apply_the_setup() -> None:
    """The setup's own changes reach the broker within CHANGE_BOUND and drop
    what it cached for those users meanwhile; a test that relies on cached
    answers caches them after that."""
    time.sleep(CHANGE_BOUND)


def disconnected_within(client: MqttClient, seconds: float) -> float:
    started = time.monotonic()
    assert client.disconnected.wait(seconds), f"still connected {seconds} s after the change"
    return time.monotonic() - started


def connect_until(make: Callable[..., MqttClient], expected: str, *args: str, within: float) -> str:
    """Reconnect (a fresh client each time, as a device would) until the CONNACK says `expected`."""
    deadline = time.monotonic() + within
    while True:
        answer = make(*args).connect()
        if answer == expected or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def requests_of(cregistry) -> list[dict]:  # type: ignore[no-untyped-def]
    result = cregistry("requests", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["requests"]


def pairing_id(username: str, password: str) -> str:
    return hashlib.sha256(f"{username}:{password}".encode()).hexdigest()[:6]


def wait_until_ready(service: ServiceProcess) -> None:
    def ready() -> bool:
        try:
            return http("GET", f"{service.broker}/readyz", timeout=1).status == 200
        except OSError:
            return False

    within(RECOVERY_WAIT, ready, interval=0.1)


# -- registration ------------------------------------------------------------------
def test_locked_registry_refuses_and_records_nothing(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    assert clients("locked-dev", "locked-secret", "locked-client").connect() == "Not authorized"
    assert requests_of(cregistry) == []


def test_unlocked_connect_is_recorded_and_the_very_next_connect_after_approval_gets_in(  # type: ignore[no-untyped-def]
    clients, cregistry
) -> None:
    cregistry("unlock")
    assert clients("boiler-3", "boiler-secret", "boiler-client").connect() == "Not authorized"
    [request] = requests_of(cregistry)
    assert (request["username"], request["clientId"], request["source"]) == ("boiler-3", "boiler-client", "mqtt")
    assert request["pairingId"] == pairing_id("boiler-3", "boiler-secret")
    # A second refused attempt: refusals are never cached, it reaches cregistry again.
    assert clients("boiler-3", "boiler-secret", "boiler-client").connect() == "Not authorized"
    assert requests_of(cregistry)[0]["attempts"] == 2

    assert cregistry("approve", "boiler-3", "--pairing-id", request["pairingId"]).returncode == 0
    assert clients("boiler-3", "boiler-secret", "boiler-client").connect() == "Success"


def test_wrong_password_is_refused_also_after_a_cached_success(clients, store) -> None:  # type: ignore[no-untyped-def]
    password = add_user(store, "valve-7")
    connected(clients, "valve-7", password, "valve-a")
    assert clients("valve-7", "not-the-secret", "valve-b").connect() == "Not authorized"
    assert clients("valve-7", password + "x", "valve-b").connect() == "Not authorized"
    assert clients("valve-7", password, "valve-c").connect() == "Success"
    assert clients("valve-7", "", "valve-d").connect() == "Not authorized"


def test_rest_registration_then_mqtt(clients, service: ServiceProcess, cregistry) -> None:  # type: ignore[no-untyped-def]
    register = f"{service.api}/api/client-registry/register"
    body = {"username": "gateway-5", "password": "gateway-generated-secret", "clientId": "gateway-5"}
    cregistry("unlock")
    assert http("POST", register, json_body=body).status == 202
    request_id = f"gateway-5:{pairing_id('gateway-5', 'gateway-generated-secret')}"
    approved = http("POST", f"{service.api}/api/client-registry/requests/{request_id}/approve", token=ADMIN_TOKEN)
    assert approved.status == 201
    assert http("POST", register, json_body=body).status == 201
    gateway = connected(clients, "gateway-5", "gateway-generated-secret", "gateway-5")
    assert gateway.subscribe("gateways/gateway-5/#") == 0x80

    permissions = [{"topic": "gateways/%u/#", "access": "readWrite"}]
    put = http("PUT", f"{service.api}/api/users/gateway-5/permissions", json_body=permissions, token=ADMIN_TOKEN)
    assert put.status == 200
    within(CHANGE_BOUND, lambda: gateway.subscribe("gateways/gateway-5/#") == 1)
    gateway.publish("gateways/gateway-5/up", b"hello")
    assert gateway.receive(5.0) == ("gateways/gateway-5/up", b"hello")


# -- subscriptions -------------------------------------------------------------------
def test_a_grant_reaches_an_open_connection_within_2_seconds(clients, store) -> None:  # type: ignore[no-untyped-def]
    add_user(store, "pump-1")
    writer_password = add_user(store, "pump-ctl", ("plant/#", "write"))
    subscriber = connected(clients, "pump-1", "pump-1-secret", "pump-sub")
    writer = connected(clients, "pump-ctl", writer_password, "pump-ctl")
    assert subscriber.subscribe("plant/pump-1/#") == 0x80  # SUBACK failure: no permission yet
    assert subscriber.subscribe("plant/pump-1/#") == 0x80  # and still none

    store.grant("pump-1", "plant/%u/#", "read", actor="test")
    within(CHANGE_BOUND, lambda: subscriber.subscribe("plant/pump-1/#") == 1)
    writer.publish("plant/pump-1/speed", b"1200 rpm")
    assert subscriber.receive(5.0) == ("plant/pump-1/speed", b"1200 rpm")


def test_wider_filters_are_refused(clients, store) -> None:  # type: ignore[no-untyped-def]
    password = add_user(store, "pump-2", ("plant/%u/#", "readWrite"))
    client = connected(clients, "pump-2", password, "pump-2")
    for wider in ("plant/#", "#", "plant/+/speed", "+/pump-2/#", "plant/pump-3/#"):
        assert client.subscribe(wider) == 0x80, wider
    assert client.subscribe("plant/pump-2/#") == 1
    assert client.subscribe("plant/pump-2/+") == 1


def test_dollar_topics_are_not_matched_by_wildcard_patterns(clients, store) -> None:  # type: ignore[no-untyped-def]
    password = add_user(store, "observer-1", ("#", "read"), ("+/broker/#", "read"))
    client = connected(clients, "observer-1", password, "observer-1")
    assert client.subscribe("#") == 1
    for dollar in ("$SYS/#", "$SYS/broker/uptime", "$SYS/broker/clients/connected"):
        assert client.subscribe(dollar) == 0x80, dollar


def test_unsubscribe_works(clients, store) -> None:  # type: ignore[no-untyped-def]
    password = add_user(store, "meter-1", ("meters/%u/#", "readWrite"))
    client = connected(clients, "meter-1", password, "meter-1")
    assert client.subscribe("meters/meter-1/#") == 1
    client.publish("meters/meter-1/kwh", b"1")
    assert client.receive(5.0) == ("meters/meter-1/kwh", b"1")
    client.unsubscribe("meters/meter-1/#")
    client.publish("meters/meter-1/kwh", b"2")
    assert client.receive(1.0) is None
    assert not client.disconnected.is_set()


# -- changes reach connected clients -----------------------------------------------------
def test_a_revoke_stops_a_connected_clients_publishes_within_2_seconds(clients, store) -> None:  # type: ignore[no-untyped-def]
    writer_password = add_user(store, "line-w", ("line/#", "write"))
    reader_password = add_user(store, "line-r", ("line/#", "read"))
    writer = connected(clients, "line-w", writer_password, "line-w")
    reader = connected(clients, "line-r", reader_password, "line-r")
    assert reader.subscribe("line/#") == 1
    writer.publish("line/1", b"before")
    assert reader.receive(5.0) == ("line/1", b"before")

    store.revoke("line-w", "line/#", actor="test")
    revoked_at = time.monotonic()
    sent_at: dict[bytes, float] = {}
    while time.monotonic() - revoked_at < CHANGE_BOUND + 1.5:
        payload = str(len(sent_at)).encode()
        sent_at[payload] = time.monotonic() - revoked_at
        writer.publish("line/1", payload)
        time.sleep(0.1)
    delivered = []
    while (message := reader.receive(0.5)) is not None:
        delivered.append(message[1])
    late = [(payload, round(sent_at[payload], 2)) for payload in delivered if sent_at[payload] > CHANGE_BOUND]
    assert late == [], f"delivered although published more than {CHANGE_BOUND} s after the revoke"
    assert not writer.disconnected.is_set()  # a revoke drops answers, it kicks nobody


def test_delete_disconnects_within_2_seconds_and_the_credentials_stop_working(  # type: ignore[no-untyped-def]
    clients, store
) -> None:
    password = add_user(store, "retired-1", ("r/#", "readWrite"))
    client = connected(clients, "retired-1", password, "retired-1")
    assert client.subscribe("r/#") == 1
    store.delete("retired-1", actor="test")
    disconnected_within(client, CHANGE_BOUND)
    assert clients("retired-1", password, "retired-2").connect() == "Not authorized"


def test_a_password_change_disconnects_within_2_seconds(clients, store, service: ServiceProcess) -> None:  # type: ignore[no-untyped-def]
    old = add_user(store, "rotated-1", ("p/#", "readWrite"))
    client = connected(clients, "rotated-1", old, "rotated-1")
    other = connected(clients, "rotated-1", old, "rotated-2")
    answer = http(
        "PUT", f"{service.api}/api/users/rotated-1/password", json_body={"password": "rotated-new"}, token=ADMIN_TOKEN
    )
    assert answer.status == 200
    disconnected_within(client, CHANGE_BOUND)
    assert other.disconnected.wait(0.5)  # every client of the user
    assert clients("rotated-1", old, "rotated-3").connect() == "Not authorized"
    assert clients("rotated-1", "rotated-new", "rotated-4").connect() == "Success"


def test_superuser_flag_takes_effect_on_an_open_connection(clients, store) -> None:  # type: ignore[no-untyped-def]
    password = add_user(store, "admin-7")
    client = connected(clients, "admin-7", password, "admin-7")
    assert client.subscribe("#") == 0x80
    store.set_superuser("admin-7", True, actor="test")
    within(CHANGE_BOUND, lambda: client.subscribe("#") == 1)
    assert client.subscribe("$SYS/broker/uptime") == 1  # superusers pass every check
    client.publish("anywhere/at/all", b"su")
    received = [client.receive(5.0) for _ in range(2)]  # and the retained $SYS message
    assert ("anywhere/at/all", b"su") in received
    store.set_superuser("admin-7", False, actor="test")
    within(CHANGE_BOUND, lambda: client.subscribe("elsewhere/#") == 0x80)


def test_a_role_change_reaches_its_members(clients, store) -> None:  # type: ignore[no-untyped-def]
    password = add_user(store, "member-1")
    store.roles.grant("fleet", "fleet/%u/#", "readWrite", actor="test")
    store.assign_role("member-1", "fleet", actor="test")
    client = connected(clients, "member-1", password, "member-1")
    assert client.subscribe("fleet/member-1/#") == 1
    assert client.subscribe("shared/#") == 0x80
    store.roles.grant("fleet", "shared/#", "read", actor="test")
    within(CHANGE_BOUND, lambda: client.subscribe("shared/#") == 1)


def test_a_cli_change_made_while_the_service_is_down_reaches_the_broker_once_it_is_back(  # type: ignore[no-untyped-def]
    clients, store, cregistry, service: ServiceProcess
) -> None:
    password = add_user(store, "offline-1", ("o/#", "readWrite"))
    client = connected(clients, "offline-1", password, "offline-1")
    assert client.subscribe("o/#") == 1
    service.stop()
    try:
        assert cregistry("user", "delete", "offline-1").returncode == 0
        assert not client.disconnected.is_set()  # nobody told the broker yet
    finally:
        service.start()
    wait_until_ready(service)
    disconnected_within(client, CHANGE_BOUND)
    assert clients("offline-1", password, "offline-2").connect() == "Not authorized"


# -- faults ------------------------------------------------------------------------------
def test_redis_down_grants_nothing_new_and_everything_recovers(  # type: ignore[no-untyped-def]
    clients, store, cregistry, redis_process: RedisProcess
) -> None:
    cached_password = add_user(store, "steady-1", ("steady/#", "readWrite"))
    fresh_password = add_user(store, "meter-9")
    cregistry("unlock")
    let_the_broker_apply_the_setup()
    cached = connected(clients, "steady-1", cached_password, "steady-1")
    assert cached.subscribe("steady/#") == 1
    cached.publish("steady/1", b"warm-up")  # caches its publish and delivery answers for steady/1
    assert cached.receive(5.0) == ("steady/1", b"warm-up")
    redis_process.stop()
    try:
        # Not cached: the plugin must ask, cregistry answers 503, the socket closes without CONNACK.
        assert clients("meter-9", fresh_password, "meter").connect() == NO_CONNACK
        assert clients("stranger-9", "stranger-secret", "stranger").connect() == NO_CONNACK
        cached.publish("steady/1", b"while Redis is down")
        assert cached.receive(5.0) == ("steady/1", b"while Redis is down")
    finally:
        redis_process.start()
    # No operator action: the next connect gets in, and the feed works again.
    assert connect_until(clients, "Success", "meter-9", fresh_password, "meter", within=RECOVERY_WAIT) == "Success"
    assert requests_of(cregistry) == []  # the stranger was never recorded
    store.delete("steady-1", actor="test")
    disconnected_within(cached, CHANGE_BOUND)


def test_a_stopped_service_refuses_connects_within_2_seconds_and_cached_clients_keep_publishing(  # type: ignore[no-untyped-def]
    clients, store, service: ServiceProcess, mosquitto: MosquittoProcess, freezer: Freezer
) -> None:
    writer_password = add_user(store, "frozen-w", ("frozen/#", "write"))
    reader_password = add_user(store, "frozen-r", ("frozen/#", "read"))
    newcomer_password = add_user(store, "frozen-new")
    let_the_broker_apply_the_setup()
    writer = connected(clients, "frozen-w", writer_password, "frozen-w")
    reader = connected(clients, "frozen-r", reader_password, "frozen-r")
    assert reader.subscribe("frozen/#") == 1
    writer.publish("frozen/1", b"warm-up")  # caches the writer's and the reader's answers
    assert reader.receive(5.0) == ("frozen/1", b"warm-up")

    freezer.freeze()
    try:
        answer, elapsed = raw_connect(mosquitto.port, "frozen-new", newcomer_password, "frozen-new")
        assert answer == b"", f"answered {answer!r}"  # closed without CONNACK: the plugin could not decide
        assert elapsed < CHANGE_BOUND, f"refused after {elapsed:.2f} s"
        assert clients("frozen-new", newcomer_password, "frozen-new").connect() == NO_CONNACK
        for n in range(3):
            writer.publish("frozen/1", f"cached {n}".encode())
        assert [reader.receive(5.0) for _ in range(3)] == [("frozen/1", f"cached {n}".encode()) for n in range(3)]
    finally:
        freezer.thaw()
    wait_until_ready(service)
    assert clients("frozen-new", newcomer_password, "frozen-new").connect() == "Success"
    store.delete("frozen-w", actor="test")
    disconnected_within(writer, CHANGE_BOUND)
