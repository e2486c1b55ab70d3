"""cregistry's own Mosquitto plugin (mosquitto/cregistry_auth.so, `make plugin`)
in a real mosquitto in front of the real `cregistry serve`: the CONNECT and ACL
checks, its cache, and what a device sees when cregistry cannot answer."""

from __future__ import annotations

import json
import time

import pytest

from harness import mqtt
from harness.mosquitto import MosquittoProcess
from harness.service import ServiceProcess, http

pytestmark = pytest.mark.broker


def raw_connect(port: int, username: str, password: str, client_id: str) -> tuple[str, float]:
    """mqtt.raw_connect's answer told as "closed" (the broker closed the
    socket without a CONNACK) or "connack <code>", and its seconds."""
    answer, seconds = mqtt.raw_connect(port, username, password, client_id)
    return (f"connack {answer[3]}" if answer else "closed"), seconds


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
    # Workers answer a CONNECT from memory only with the user's own client IDs (docs/threat-model.md).
    cregistry("user", "client-ids", "cached-1", *(f"cached-client-{turn}" for turn in range(4)))
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
    mosquitto: MosquittoProcess, clients, cregistry, freezer
) -> None:
    add_user(cregistry, "valve-1", "valve-secret")
    add_user(cregistry, "valve-2", "valve-secret")
    cregistry("grant", "valve-1", "site/%u/#", "readWrite")
    # The setup's changes reach the broker within 2 s and drop what it cached
    # for those users meanwhile: the answers this test relies on are cached after that.
    time.sleep(2.0)
    valve = clients("valve-1", "valve-secret", "valve-client")
    assert valve.connect() == "Success"
    assert valve.subscribe("site/valve-1/#") == 1
    valve.publish("site/valve-1/open", b"1")
    assert valve.receive(5) == ("site/valve-1/open", b"1")  # publish and delivery answers now cached

    freezer.freeze()
    answer, seconds = raw_connect(mosquitto.port, "valve-2", "valve-secret", "valve-2-client")
    assert answer == "closed"  # no CONNACK: the device treats it as an outage, not as refused
    assert seconds < 2.0
    # a wrong password is never accepted, however the service is doing
    assert clients("valve-1", "wrong", "valve-client-3").connect() == "no CONNACK"

    valve.publish("site/valve-1/open", b"2")
    assert valve.receive(5) == ("site/valve-1/open", b"2")
    assert clients("valve-1", "valve-secret", "valve-client").connect() == "Success"  # cached CONNECT
    for attempt in range(3):  # more devices arriving: each refused as fast, none waits for the others
        answer, seconds = raw_connect(mosquitto.port, "valve-2", "valve-secret", f"valve-2-client-{attempt}")
        assert (answer, seconds < 2.0) == ("closed", True)

    freezer.thaw()
    deadline = time.monotonic() + 10
    while (answer := raw_connect(mosquitto.port, "valve-2", "valve-secret", "valve-2-client")[0]) != "connack 0":
        assert answer == "closed" and time.monotonic() < deadline
        time.sleep(0.2)
