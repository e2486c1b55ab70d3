"""cregistry's own Mosquitto plugin (mosquitto/cregistry_auth.so, `make plugin`)
in a real mosquitto in front of the real `cregistry serve`: the CONNECT and ACL
checks, its cache, and what a device sees when cregistry cannot answer."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import (
    CREGISTRY_PLUGIN_SO,
    MosquittoProcess,
    MqttClient,
    PluginMosquittoProcess,
    ServiceProcess,
    free_port,
    http,
)

pytestmark = pytest.mark.broker


def plugin_conf(port: int, plugin: Path, service: ServiceProcess) -> str:
    return "\n".join(
        [
            "per_listener_settings false",
            f"listener {port} 127.0.0.1",
            "allow_anonymous false",
            f"plugin {plugin}",
            f"plugin_opt_url {service.broker}",
            "log_dest stderr",  # unbuffered: the tests read the log while mosquitto runs
            "log_type error",
            "log_type warning",
            "log_type notice",
            "persistence false",
            "",
        ]
    )


@pytest.fixture(scope="module")
def plugin_broker(service: ServiceProcess) -> Iterator[MosquittoProcess]:
    problem = None
    if not CREGISTRY_PLUGIN_SO.exists():
        problem = f"cregistry's plugin is not built ({CREGISTRY_PLUGIN_SO}): run `make plugin`"
    if problem:
        if os.environ.get("CREGISTRY_REQUIRE_BROKER") == "1" or os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    port = free_port()
    broker = PluginMosquittoProcess(plugin_conf(port, CREGISTRY_PLUGIN_SO, service), port, CREGISTRY_PLUGIN_SO)
    try:
        broker.start()
    except (RuntimeError, TimeoutError) as error:
        raise AssertionError(f"mosquitto did not start with the plugin:\n{broker.output()}") from error
    yield broker
    broker.stop()
    report = broker.sanitizer_report()
    broker.cleanup()
    assert report == "", f"the sanitizers found errors in the plugin:\n{report}"


@pytest.fixture
def clients(plugin_broker: MosquittoProcess) -> Iterator[Callable[..., MqttClient]]:
    made: list[MqttClient] = []

    def make(username: str | None, password: str | None, client_id: str) -> MqttClient:
        client = MqttClient(plugin_broker.port, username, password, client_id)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _service_pids(service: ServiceProcess) -> list[int]:
    assert service.process is not None
    pid = service.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(child) for child in children.read_text().split())]


class Freezer:
    """freeze() stops `cregistry serve` and its workers (SIGSTOP): connections
    hang, as on a dead host; thaw() lets them run again (also after the test)."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self.frozen: list[int] = []

    def freeze(self) -> None:
        for pid in _service_pids(self.service):
            os.kill(pid, signal.SIGSTOP)
            self.frozen.append(pid)

    def thaw(self) -> None:
        while self.frozen:
            os.kill(self.frozen.pop(), signal.SIGCONT)


@pytest.fixture
def freezer(service: ServiceProcess) -> Iterator[Freezer]:
    freezer = Freezer(service)
    yield freezer
    freezer.thaw()


def raw_connect(port: int, username: str, password: str, client_id: str) -> tuple[str, float]:
    """One MQTT 3.1.1 CONNECT on a plain socket: ("closed", s) when the broker
    closes it without a CONNACK, else ("connack <code>", s), with the seconds
    from sending the packet to that answer."""

    def field(text: str) -> bytes:
        data = text.encode()
        return struct.pack("!H", len(data)) + data

    header = field("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30)  # 3.1.1, clean, username + password
    body = header + field(client_id) + field(username) + field(password)
    packet = bytes([0x10, len(body)]) + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(packet)
        answer = sock.recv(4)
        seconds = time.monotonic() - started
    if not answer:
        return "closed", seconds
    return f"connack {answer[3]}", seconds


def add_user(cregistry, name: str, password: str) -> None:  # type: ignore[no-untyped-def]
    result = cregistry("user", "add", name, "--password-stdin", stdin=f"{password}\n")
    assert result.returncode == 0, result.stderr


def requests_of(cregistry) -> list[str]:  # type: ignore[no-untyped-def]
    return [request["username"] for request in json.loads(cregistry("requests", "--json").stdout)["requests"]]


def test_known_user_connects_and_unknown_or_wrong_password_is_refused(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    add_user(cregistry, "meter-1", "meter-secret")
    assert clients("meter-1", "meter-secret", "meter-client").connect() == "Success"
    assert clients("meter-1", "not-the-secret", "meter-client-2").connect() == "Not authorized"
    assert clients("nobody", "whatever", "nobody-client").connect() == "Not authorized"
    assert clients(None, None, "anonymous-client").connect() == "Not authorized"


def test_wrong_password_after_a_cached_success_is_refused(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    add_user(cregistry, "meter-2", "meter-secret")
    assert clients("meter-2", "meter-secret", "meter-2-client").connect() == "Success"
    assert clients("meter-2", "meter-secret", "meter-2-client").connect() == "Success"  # from the cache
    assert clients("meter-2", "meter-secret-", "meter-2-client").connect() == "Not authorized"
    assert clients("meter-2", "", "meter-2-client").connect() == "Not authorized"


@pytest.mark.parametrize(("username", "client_id"), [("dev+1", "dev-client"), ("dev#", "dev-client"), ("dev", "c+#")])
def test_wildcards_in_username_or_client_id_are_refused_without_asking(  # type: ignore[no-untyped-def]
    clients, cregistry, username: str, client_id: str
) -> None:
    cregistry("unlock")  # an unknown user asking would be recorded as a request
    assert clients(username, "some-secret", client_id).connect() == "Not authorized"
    assert requests_of(cregistry) == []


def test_refused_connect_is_not_cached_so_the_approved_device_gets_in(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    assert clients("late-1", "late-secret", "late-client").connect() == "Not authorized"
    add_user(cregistry, "late-1", "late-secret")
    assert clients("late-1", "late-secret", "late-client").connect() == "Success"


def _answered_without_redis(service: ServiceProcess) -> dict[str, float]:
    text = http("GET", f"{service.broker}/metrics").body.decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("cregistry_checks_without_redis_total{"):
            labels, _, value = line.partition("} ")
            counts[labels.split('route="')[1].rstrip('"')] = float(value)
    return counts


def test_workers_answer_the_plugin_from_their_caches(clients, cregistry, service) -> None:  # type: ignore[no-untyped-def]
    """The plugin sends its change feed position with every check, so a worker
    whose follower covers it answers without Redis; the answers stay exact."""
    add_user(cregistry, "cached-1", "cached-secret")
    cregistry("grant", "cached-1", "c/%u/#", "readWrite")
    time.sleep(1.2)  # the plugin reads the feed every 500 ms, the workers every 100 ms
    before = _answered_without_redis(service)
    for turn in range(4):
        client = clients("cached-1", "cached-secret", f"cached-client-{turn}")  # a new id: the plugin asks again
        assert client.connect() == "Success"
        assert client.subscribe(f"c/cached-1/{turn}") == 1
        assert client.subscribe(f"d/{turn}") == 0x80
        client.close()
    after = _answered_without_redis(service)
    assert after.get("user", 0) - before.get("user", 0) >= 2, (before, after)
    assert after.get("acl", 0) - before.get("acl", 0) >= 4, (before, after)
    cregistry("revoke", "cached-1", "c/%u/#")
    time.sleep(1.0)
    client = clients("cached-1", "cached-secret", "cached-client-last")
    assert client.connect() == "Success"
    assert client.subscribe("c/cached-1/0") == 0x80  # the revocation, though both caches held the grant


def test_acl_follows_grants(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    add_user(cregistry, "pump-1", "pump-secret")
    add_user(cregistry, "watcher", "watcher-secret")
    cregistry("grant", "pump-1", "plant/%u/#", "readWrite")
    cregistry("grant", "watcher", "plant/#", "read")

    pump = clients("pump-1", "pump-secret", "pump-client")
    assert pump.connect() == "Success"
    assert pump.subscribe("plant/pump-1/#") == 1
    assert pump.subscribe("plant/other/#") == 0x80
    watcher = clients("watcher", "watcher-secret", "watcher-client")
    assert watcher.connect() == "Success"
    assert watcher.subscribe("plant/#") == 1

    pump.publish("plant/pump-1/speed", b"40")
    assert pump.receive(5) == ("plant/pump-1/speed", b"40")
    assert watcher.receive(5) == ("plant/pump-1/speed", b"40")

    # watcher may read but not write: its publish is dropped by the broker
    watcher.publish("plant/pump-1/speed", b"forged")
    pump.publish("plant/pump-1/speed", b"41")
    assert pump.receive(5) == ("plant/pump-1/speed", b"41")


def test_service_stopped_refuses_new_connects_within_2s_and_cached_clients_keep_working(  # type: ignore[no-untyped-def]
    plugin_broker, clients, cregistry, freezer
) -> None:
    add_user(cregistry, "valve-1", "valve-secret")
    add_user(cregistry, "valve-2", "valve-secret")
    cregistry("grant", "valve-1", "site/%u/#", "readWrite")
    valve = clients("valve-1", "valve-secret", "valve-client")
    assert valve.connect() == "Success"
    assert valve.subscribe("site/valve-1/#") == 1
    valve.publish("site/valve-1/open", b"1")
    assert valve.receive(5) == ("site/valve-1/open", b"1")  # publish and delivery answers now cached

    freezer.freeze()
    answer, seconds = raw_connect(plugin_broker.port, "valve-2", "valve-secret", "valve-2-client")
    assert answer == "closed"  # no CONNACK: the device treats it as an outage, not as refused
    assert seconds < 2.0
    # a wrong password is never accepted, however the service is doing
    assert clients("valve-1", "wrong", "valve-client-3").connect() == "no CONNACK"

    valve.publish("site/valve-1/open", b"2")
    assert valve.receive(5) == ("site/valve-1/open", b"2")
    assert clients("valve-1", "valve-secret", "valve-client").connect() == "Success"  # cached CONNECT
    for attempt in range(3):  # more devices arriving: each refused as fast, none waits for the others
        answer, seconds = raw_connect(plugin_broker.port, "valve-2", "valve-secret", f"valve-2-client-{attempt}")
        assert (answer, seconds < 2.0) == ("closed", True)

    freezer.thaw()
    deadline = time.monotonic() + 10
    while (answer := raw_connect(plugin_broker.port, "valve-2", "valve-secret", "valve-2-client")[0]) != "connack 0":
        assert answer == "closed" and time.monotonic() < deadline
        time.sleep(0.2)
