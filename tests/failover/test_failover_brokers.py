"""Several brokers and a Sentinel failover, the brokers' side: two
mosquittos with cregistry's plugin, one per `cregistry serve` instance, and
real MQTT clients.

- A change made through one service reaches the plugin of every broker within 2 s.
- While the primary is SIGKILLed, no CONNECT through either broker gets in with a
  wrong password or for an unknown user; after recovery (within 30 s, no
  restart) connects work on both brokers, and the change feed still carries
  changes made through either service to both brokers within 2 s.
- Changes acknowledged by the old primary alone (a writer with
  CREGISTRY_REDIS_MIN_REPLICAS=0, replication cut off) are lost by the
  failover; both plugins' positions name such a lost entry, so their next poll
  is a reset and they flush their caches: a read grant cached from the lost
  change stops delivering.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from cregistry import services
from cregistry.config import Config
from cregistry.keys import Keys
from harness.mosquitto import PluginMosquittoProcess
from harness.mqtt import MqttClient, raw_connect
from harness.sentinel import FailoverStack
from harness.service import ServiceProcess, http

from .conftest import ADMIN_TOKEN

CHANGE_BOUND = 2.0  # an operator's change reaches every broker within 2 s
RECOVERY_BOUND = 30.0  # both services work on the new primary within 30 s, without a restart
CONNACK_OK = b"\x20\x02\x00\x00"
RESET_NOTICE = "cregistry_auth: change feed reset"

Brokers = list[PluginMosquittoProcess]


def api(service: ServiceProcess, method: str, path: str, body: Any = None) -> int:
    return http(method, f"{service.api}{path}", json_body=body, token=ADMIN_TOKEN).status


def add_user(service: ServiceProcess, username: str, *permissions: tuple[str, str]) -> str:
    password = f"{username}-secret"
    assert api(service, "POST", "/api/users", {"username": username, "password": password}) == 201
    body = [{"topic": topic, "access": access} for topic, access in permissions]
    assert api(service, "PUT", f"/api/users/{username}/permissions", body) == 200
    return password


def change_once_replicas_confirm(service: ServiceProcess, method: str, path: str, body: Any = None) -> None:
    """An operator change after the failover. Sentinel reattaches the surviving
    replica to the new primary by a resync that may still be running; until
    it confirms, a change answers 503 (MIN_REPLICAS=1), as documented. Repeat
    it within the recovery bound, and fail with the answer. A 503 made the change on
    the primary all the same, so a repeated DELETE finds nothing left (404)."""
    started = time.monotonic()
    unconfirmed = False
    while True:
        answer = http(method, f"{service.api}{path}", json_body=body, token=ADMIN_TOKEN)
        if answer.status == 200 or (unconfirmed and method == "DELETE" and answer.status == 404):
            return
        assert answer.status == 503, (answer.status, answer.body)
        unconfirmed = True
        if time.monotonic() - started > RECOVERY_BOUND:
            pytest.fail(f"{method} {path} still {answer.status} after {RECOVERY_BOUND} s: {answer.body!r}")
        time.sleep(0.2)


def within(seconds: float, condition: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"not within {seconds} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


class Clients:
    """paho clients, closed at the end of the test."""

    def __init__(self) -> None:
        self.all: list[MqttClient] = []

    def connected(self, broker: PluginMosquittoProcess, username: str, password: str, client_id: str) -> MqttClient:
        client = MqttClient(broker.port, username, password, client_id)
        self.all.append(client)
        assert client.connect() == "Success", (username, broker.port)
        return client

    def close(self) -> None:
        for client in self.all:
            client.close()


@pytest.fixture
def clients() -> Any:
    made = Clients()
    yield made
    made.close()


def delivered(writer: MqttClient, reader: MqttClient, topic: str, payload: bytes, timeout: float) -> bool:
    writer.publish(topic, payload)
    while (message := reader.receive(timeout)) is not None:
        if message == (topic, payload):
            return True
    return False


def drain(client: MqttClient) -> None:
    while client.receive(0) is not None:
        pass


def test_a_change_through_one_service_reaches_every_broker_within_2_s(
    stack: FailoverStack, brokers: Brokers, clients: Clients
) -> None:
    service_a, service_b = stack.services
    add_user(service_a, "reader", ("feed/#", "read"))
    add_user(service_a, "writer", ("feed/#", "write"))
    add_user(service_a, "leaver", ("leave/%u/#", "readWrite"))
    readers, writers, leavers = [], [], []
    for n, broker in enumerate(brokers):
        readers.append(clients.connected(broker, "reader", "reader-secret", f"reader-{n}"))
        writers.append(clients.connected(broker, "writer", "writer-secret", f"writer-{n}"))
        leavers.append(clients.connected(broker, "leaver", "leaver-secret", f"leaver-{n}"))
        assert readers[n].subscribe("feed/#") == 1
        assert delivered(writers[n], readers[n], "feed/x", b"before", 5.0)

    # Revoked through service A: the subscription stops receiving on both brokers within 2 s.
    assert api(service_a, "PUT", "/api/users/reader/permissions", []) == 200
    revoked_at = time.monotonic()
    time.sleep(CHANGE_BOUND)
    for n in range(len(brokers)):
        drain(readers[n])
        assert not delivered(writers[n], readers[n], "feed/x", f"after-{n}".encode(), 1.0), n
        assert readers[n].subscribe("feed/#") == 0x80
        assert not readers[n].disconnected.is_set()  # a revoke drops answers, it kicks nobody
    print(f"revoke checked {time.monotonic() - revoked_at:.1f} s after it")

    # Deleted through service B: disconnected from both brokers within 2 s.
    assert api(service_b, "DELETE", "/api/users/leaver") == 200
    for leaver in leavers:
        assert leaver.disconnected.wait(CHANGE_BOUND), "still connected 2 s after the delete"
    for broker in brokers:
        assert raw_connect(broker.port, "leaver", "leaver-secret", "leaver-again")[0] != CONNACK_OK


KINDS = ("right", "wrong", "unknown", "cached")


class ConnectTraffic:
    """Raw CONNECTs through both brokers: the right password, wrong ones, unknown users."""

    def __init__(self, brokers: Brokers) -> None:
        self.brokers = brokers
        self.answers: list[tuple[str, int, bytes, float]] = []  # kind, broker, first bytes, when
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(len(KINDS) - 1)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _run(self, number: int) -> None:
        index = number
        while not self.stopping.is_set():
            index += len(self.threads)
            broker = (index // len(KINDS)) % len(self.brokers)
            kind = KINDS[index % len(KINDS)]
            username = f"ghost-{index}" if kind == "unknown" else "alice"
            password = "alice-secret" if kind in ("right", "cached") else f"wrong-{index}"
            # "cached": the client ID of a CONNECT the plugin has cached (its key includes the ID).
            client_id = "alice-cached" if kind == "cached" else f"t-{index}"
            try:
                answer, _seconds = raw_connect(self.brokers[broker].port, username, password, client_id, 5.0)
            except OSError:
                answer = b""
            with self.lock:
                self.answers.append((kind, broker, answer, time.monotonic()))
            time.sleep(0.02)


def test_failover_with_brokers(stack: FailoverStack, brokers: Brokers, clients: Clients) -> None:
    service_a, service_b = stack.services
    add_user(service_a, "alice", ("devices/%u/#", "readWrite"))
    add_user(service_b, "stale", ("devices/%u/#", "readWrite"))
    add_user(service_a, "pub", ("lost/#", "write"))
    add_user(service_b, "kickme")
    alices, stales, pubs, kickmes = [], [], [], []
    for n, broker in enumerate(brokers):
        alices.append(clients.connected(broker, "alice", "alice-secret", f"alice-{n}"))
        stales.append(clients.connected(broker, "stale", "stale-secret", f"stale-{n}"))
        pubs.append(clients.connected(broker, "pub", "pub-secret", f"pub-{n}"))
        kickmes.append(clients.connected(broker, "kickme", "kickme-secret", f"kickme-{n}"))

    # Changes that only the old primary acknowledges: replication cut off (the
    # replicas may not resync: PSYNC/SYNC refused), then a writer with
    # CREGISTRY_REDIS_MIN_REPLICAS=0 (Config's default) on the old primary.
    # A position before the lost entries, as a plugin that had not read them yet holds it.
    before_loss = http("GET", f"{service_a.broker}/mqtt/changes").json()["position"]
    old = stack.group.primary
    with old.client() as client:
        client.execute_command("ACL", "SETUSER", "default", "-psync", "-sync")
        client.execute_command("CLIENT", "KILL", "TYPE", "replica")
    with old.client() as connection:
        store = services.build(connection, Config(bcrypt_cost=4)).users
        store.grant("stale", "lost/#", "read", actor="test")
        store.delete("kickme", actor="test")
        lost_position = connection.xrevrange(Keys("cregistry").changes(), count=1)[0][0]
    # Both plugins read the lost entries: the delete kicked kickme on both brokers,
    # so each plugin's position names the lost delete entry.
    for kickme in kickmes:
        assert kickme.disconnected.wait(CHANGE_BOUND), "kickme still connected 2 s after the (lost) delete"
    for replica in stack.group.replicas:
        with replica.client() as client:
            assert client.xrange(Keys("cregistry").changes(), min=lost_position, max=lost_position) == []
    # Both plugins are past every earlier entry too (the users' creation): what
    # is cached from now on stays cached until a change names it. stale's read
    # grant on lost/x, from the lost change, is cached on both brokers; and so
    # are alice's answers (CONNECT with the client ID "alice-cached", ACL).
    for n, broker in enumerate(brokers):
        assert stales[n].subscribe("lost/#") == 1
        assert delivered(pubs[n], stales[n], "lost/x", b"granted", 5.0)
        assert alices[n].subscribe("devices/alice/#") == 1
        assert delivered(alices[n], alices[n], "devices/alice/x", b"before", 5.0)
        assert raw_connect(broker.port, "alice", "alice-secret", "alice-cached")[0] == CONNACK_OK

    traffic = ConnectTraffic(brokers)
    traffic.start()
    try:
        time.sleep(1)
        for broker in brokers:
            assert RESET_NOTICE not in broker.output()  # (the first poll's reset is not logged)
        killed_at = time.monotonic()
        old.kill()
        # No primary now: cached answers keep working. The service cannot grant
        # stale's read on lost/x (Redis is gone, or the new primary lacks the
        # grant), yet both brokers deliver it: that answer comes from the cache.
        for n in range(len(brokers)):
            assert delivered(pubs[n], stales[n], "lost/x", b"outage", 1.0), n
            assert delivered(alices[n], alices[n], "devices/alice/x", b"outage", 1.0), n
        for service in stack.services:
            body = {"username": "stale", "clientid": "stale-0", "topic": "lost/x", "acc": 1}
            assert http("POST", f"{service.broker}/mqtt/acl", json_body=body).status != 200
        recovered_at = None
        attempt = 0
        while recovered_at is None:
            assert time.monotonic() - killed_at < RECOVERY_BOUND, (
                f"no recovery within {RECOVERY_BOUND} s\n{stack.group.output()[-3000:]}"
            )
            if recovered(stack, brokers, attempt):
                recovered_at = time.monotonic()
            attempt += 1
            time.sleep(0.2)
        time.sleep(1)
    finally:
        traffic.stop()
    recovery = recovered_at - killed_at
    summary = collections.Counter(
        (kind, answer.hex() or "closed", "before" if at < killed_at else "outage" if at < recovered_at else "after")
        for kind, _b, answer, at in traffic.answers
    )
    print(f"recovered in {recovery:.1f} s; connects: {sorted(summary.items())}")
    # No wrong password and no unknown user ever got in, through either broker.
    assert not [a for a in traffic.answers if a[0] in ("wrong", "unknown") and a[2] == CONNACK_OK], summary
    # The right password: let in, or refused while cregistry cannot answer; after recovery, let in.
    right = [a for a in traffic.answers if a[0] in ("right", "cached")]
    assert all(a[2] in (CONNACK_OK, b"") for a in right), summary
    assert all(a[2] == CONNACK_OK for a in right if a[3] > recovered_at + 0.5), summary
    # The traffic ran through the outage on both brokers: uncached CONNECTs were
    # refused then (socket closed, no CONNACK), cached ones got in.
    outage = [a for a in traffic.answers if killed_at < a[3] < recovered_at]
    for broker in range(len(brokers)):
        assert any(a[1] == broker and a[0] == "right" and a[2] == b"" for a in outage), summary
        assert any(a[1] == broker and a[0] == "cached" and a[2] == CONNACK_OK for a in outage), summary

    # The new primary lacks the lost changes (the premise of the reset).
    new_port = stack.group.primary_port()
    assert new_port is not None and new_port != old.port
    with stack.group.node(new_port).client() as client:
        assert client.xrange(Keys("cregistry").changes(), min=lost_position, max=lost_position) == []
        assert client.exists(Keys("cregistry").user("kickme"))  # the delete is lost too
    # A plugin behind the lost entries may have cached answers from them (a check
    # answered by the old primary before the plugin polled): its position's entry
    # is on the new primary, yet the answer is a reset, the primary being another.
    entry = before_loss.partition("~")[0]
    with stack.group.node(new_port).client() as client:
        assert client.xrange(Keys("cregistry").changes(), min=entry, max=entry) != []
    for service in stack.services:
        page = http("GET", f"{service.broker}/mqtt/changes?after={before_loss}").json()
        assert page["reset"] is True and page["changes"] == [], page
        assert page["position"].partition("~")[0] == entry  # it continues from there: nothing later is skipped
    # Each plugin's next poll after recovery is a reset: it flushes the whole cache.
    for broker in brokers:
        within(CHANGE_BOUND, lambda broker=broker: RESET_NOTICE in broker.output(), f"reset on {broker.port}")
    # ... so stale's read grant from the lost change no longer delivers.
    for n in range(len(brokers)):
        drain(stales[n])
        assert not delivered(pubs[n], stales[n], "lost/x", b"after-reset", 1.0), n
        assert stales[n].subscribe("lost/#") == 0x80

    # The feed survives: a change through either service reaches both brokers within 2 s.
    change_once_replicas_confirm(service_b, "PUT", "/api/users/alice/permissions", [])
    for n in range(len(brokers)):
        within(CHANGE_BOUND, lambda n=n: alices[n].subscribe("devices/alice/#") == 0x80, f"revoke on broker {n}")
    change_once_replicas_confirm(service_a, "DELETE", "/api/users/stale")
    for stale in stales:
        assert stale.disconnected.wait(CHANGE_BOUND), "stale still connected 2 s after the delete"


def recovered(stack: FailoverStack, brokers: Brokers, attempt: int) -> bool:
    """A user added through each service now gets in through both brokers."""
    for number, service in enumerate(stack.services):
        username = f"probe-{attempt}-{number}"
        status = api(service, "POST", "/api/users", {"username": username, "password": "probe-secret"})
        if status != 201:
            return False
        for broker in brokers:
            if raw_connect(broker.port, username, "probe-secret", username, 5.0)[0] != CONNACK_OK:
                return False
    return True
