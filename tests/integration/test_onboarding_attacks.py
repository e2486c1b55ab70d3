"""Issue 21's attacks on onboarding, made against the real `cregistry serve`
and redis-server the way someone on the device network would make them:
a colliding pairing ID, a denial aimed at the attacker, squatting a
username, flooding the pending cap, and a retry racing a denial (SPEC §2)."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from harness.redis_server import RedisProcess
from harness.service import HttpAnswer, ServiceProcess, http, running_service
from tests.integration.conftest import ADMIN_TOKEN

DEVICE = "sensor-1"


def pairing_id(username: str, password: str) -> str:
    return hashlib.sha256(f"{username}:{password}".encode()).hexdigest()[:6]


def colliding_passwords(username: str) -> tuple[str, str]:
    """Two passwords with the same 24-bit pairing ID for `username`, found
    fresh each run. A pair of any two takes some 5000 hashes (the birthday
    bound); the attacker's search for one given device's ID, 2**24, is a few
    seconds of one core. Either way the pairing ID cannot name a device."""
    seen: dict[str, str] = {}
    for n in itertools.count():
        password = f"pw-{n:08d}"
        pid = pairing_id(username, password)
        if pid in seen:
            return seen[pid], password
        seen[pid] = password
    raise AssertionError("unreachable")


def register(service: ServiceProcess, username: str, password: str, client_id: str = "") -> HttpAnswer:
    """The device-facing REST route (SPEC §5)."""
    body = {"username": username, "password": password, "clientId": client_id or username}
    return http("POST", f"{service.api}/api/client-registry/register", json_body=body)


def mqtt_connect(service: ServiceProcess, username: str, password: str, client_id: str) -> HttpAnswer:
    """A CONNECT as the broker asks it (go-auth's /mqtt/user)."""
    body = {"username": username, "password": password, "clientid": client_id}
    return http("POST", f"{service.broker}/mqtt/user", json_body=body)


def admin(service: ServiceProcess, method: str, path: str, body: object = None) -> HttpAnswer:
    return http(method, f"{service.api}/api/{path}", token=ADMIN_TOKEN, json_body=body)


def pending(service: ServiceProcess) -> list[dict[str, object]]:
    answer = admin(service, "GET", "client-registry/requests")
    assert answer.status == 200
    return answer.json()["requests"]  # type: ignore[no-any-return]


def unlock(service: ServiceProcess, seconds: int = 300) -> None:
    assert admin(service, "POST", "client-registry/unlock", {"seconds": seconds}).status == 200


def test_a_colliding_pairing_id_does_not_hijack_the_approval(service: ServiceProcess) -> None:
    device_password, attacker_password = colliding_passwords(DEVICE)
    unlock(service)
    # The attacker saw the device's pairing ID and registers first, over MQTT.
    assert mqtt_connect(service, DEVICE, attacker_password, "evil").status == 403
    assert register(service, DEVICE, device_password, "dev").json() == {
        "status": "pending",
        "pairingId": pairing_id(DEVICE, device_password),
    }
    listed = {r["clientId"]: r for r in pending(service)}
    # Two candidates (once the attacker's attempt counted as the device's), both marked.
    assert set(listed) == {"evil", "dev"}
    assert listed["evil"]["pairingId"] == listed["dev"]["pairingId"] == pairing_id(DEVICE, device_password)
    assert listed["evil"]["contested"] is True and listed["dev"]["contested"] is True

    # Contested: approved only with force; without it 409 and nothing changes.
    refused = admin(service, "POST", f"client-registry/requests/{listed['dev']['id']}/approve")
    assert refused.status == 409 and "contested" in refused.json()["error"]
    assert len(pending(service)) == 2
    assert admin(service, "GET", f"users/{DEVICE}").status == 404
    approved = admin(service, "POST", f"client-registry/requests/{listed['dev']['id']}/approve", {"force": True})
    assert approved.status == 201 and approved.json()["clientId"] == "dev"

    # The user has the device's password, never the attacker's.
    assert mqtt_connect(service, DEVICE, device_password, "dev").status == 200
    assert register(service, DEVICE, device_password, "dev").status == 201
    assert mqtt_connect(service, DEVICE, attacker_password, "evil").status == 403
    assert register(service, DEVICE, attacker_password, "evil").status == 409
    assert pending(service) == []


def test_denying_the_attackers_candidate_does_not_shut_out_the_device(service: ServiceProcess) -> None:
    device_password, attacker_password = colliding_passwords(DEVICE)
    unlock(service)
    assert register(service, DEVICE, attacker_password, "evil").status == 202
    assert register(service, DEVICE, device_password, "dev").status == 202
    attacker = next(r for r in pending(service) if r["clientId"] == "evil")
    assert admin(service, "POST", f"client-registry/requests/{attacker['id']}/deny").status == 200

    # The denial holds the attacker's exact credentials, not the shared pairing ID.
    assert register(service, DEVICE, attacker_password, "evil").status == 403
    assert mqtt_connect(service, DEVICE, attacker_password, "evil").status == 403
    assert register(service, DEVICE, device_password, "dev").status == 202
    [device] = pending(service)
    assert device["clientId"] == "dev" and device["contested"] is False and device["attempts"] == 2
    assert admin(service, "POST", f"client-registry/requests/{device['id']}/approve").status == 201
    assert mqtt_connect(service, DEVICE, device_password, "dev").status == 200
    assert len(pending(service)) == 0


def test_a_squatted_username_shows_its_refused_attempts_and_deny_all_frees_it(
    service: ServiceProcess, cregistry
) -> None:  # type: ignore[no-untyped-def]
    unlock(service)
    junk = [f"junk-{n}-secret" for n in range(3)]
    for password in junk:
        assert mqtt_connect(service, DEVICE, password, "squatter").status == 403
    assert len(pending(service)) == 3
    # The real device is kept out, over REST and over MQTT: those refusals are counted and shown.
    assert register(service, DEVICE, "device-secret", "dev").status == 429
    assert mqtt_connect(service, DEVICE, "device-secret", "dev").status == 403
    listed = pending(service)
    assert len(listed) == 3 and all(r["refusedAttempts"] == 2 for r in listed)
    table = cregistry("requests")
    assert table.returncode == 0
    assert f"{DEVICE}: 2 more attempts refused over the per-username cap" in table.stdout
    assert f"cregistry deny {DEVICE} --all" in table.stdout

    denied = cregistry("deny", DEVICE, "--all")
    assert denied.returncode == 0, denied.stderr
    assert pending(service) == []
    # The squatter's retries are denials now: they retake no slot.
    for password in junk:
        assert mqtt_connect(service, DEVICE, password, "squatter").status == 403
        assert register(service, DEVICE, password, "squatter").status == 403
    assert pending(service) == []
    assert register(service, DEVICE, "device-secret", "dev").status == 202
    [device] = pending(service)
    assert device["clientId"] == "dev" and device["refusedAttempts"] == 0
    assert cregistry("approve", DEVICE).returncode == 0
    assert mqtt_connect(service, DEVICE, "device-secret", "dev").status == 200


def test_a_retry_racing_a_denial_never_brings_the_request_back(service: ServiceProcess) -> None:
    """The device polls from several threads while the operator denies: once
    the deny has answered, no attempt in flight may record the request again."""
    unlock(service)
    for round_number in range(8):
        username = f"racer-{round_number}"
        password = f"racer-secret-{round_number}"
        assert register(service, username, password).status == 202
        stop = threading.Event()
        statuses: list[int] = []

        def poll(username: str, password: str, stop: threading.Event, statuses: list[int]) -> None:
            while not stop.is_set():
                statuses.append(register(service, username, password).status)

        pollers = [threading.Thread(target=poll, args=(username, password, stop, statuses)) for _ in range(4)]
        for poller in pollers:
            poller.start()
        try:
            time.sleep(0.05)
            assert (
                admin(
                    service, "POST", f"client-registry/requests/{username}:{pairing_id(username, password)}/deny"
                ).status
                == 200
            )
            time.sleep(0.2)
        finally:
            stop.set()
            for poller in pollers:
                poller.join()
        assert 403 in statuses and set(statuses) <= {202, 403, 429}, statuses  # 429: busy, the device backs off
        assert [r["id"] for r in pending(service) if r["username"] == username] == []
        assert register(service, username, password).status == 403


def test_an_attacker_polling_in_a_tight_loop_cannot_stall_the_operator(service: ServiceProcess) -> None:
    """Threads repeat the attacker's colliding attempt as fast as the service
    answers (over REST and MQTT) while the operator denies it and approves the
    device, for several devices: counted attempts never make the operator's
    transactions conflict until they give up (once 503 nearly every round)."""
    unlock(service)
    for round_number in range(5):
        username = f"sensor-{round_number}"
        device_password, attacker_password = colliding_passwords(username)
        # Client IDs of their own each round: an approved device owns its client ID.
        evil, dev = f"evil-{round_number}", f"dev-{round_number}"
        assert register(service, username, attacker_password, evil).status == 202
        assert register(service, username, device_password, dev).status == 202
        by_client = {r["clientId"]: r["id"] for r in pending(service)}
        stop = threading.Event()
        statuses: list[int] = []

        def hammer(attempt: Callable[[], HttpAnswer], stop: threading.Event, statuses: list[int]) -> None:
            while not stop.is_set():
                statuses.append(attempt().status)

        attempts = [
            functools.partial(register, service, username, attacker_password, evil),
            functools.partial(mqtt_connect, service, username, attacker_password, evil),
        ]
        attackers = [threading.Thread(target=hammer, args=(attempts[n % 2], stop, statuses)) for n in range(6)]
        for attacker in attackers:
            attacker.start()
        try:
            time.sleep(0.1)
            assert admin(service, "POST", f"client-registry/requests/{by_client[evil]}/deny").status == 200
            assert admin(service, "POST", f"client-registry/requests/{by_client[dev]}/approve").status == 201
        finally:
            stop.set()
            for attacker in attackers:
                attacker.join()
        assert statuses and set(statuses) <= {202, 403, 409, 429}, statuses  # 409: approved meanwhile
        assert mqtt_connect(service, username, device_password, dev).status == 200
        assert pending(service) == []


# -- floods: a service with a small pending cap and a short pending TTL --------
FLOOD_CAP = 20
FLOOD_TTL = 5


@pytest.fixture(scope="module")
def flooded_service(redis_process: RedisProcess) -> Iterator[ServiceProcess]:
    env = {"CREGISTRY_PENDING_MAX": str(FLOOD_CAP), "CREGISTRY_PENDING_TTL": str(FLOOD_TTL)}
    with running_service(redis_process.url, ADMIN_TOKEN, env) as service:
        yield service


def flood(service: ServiceProcess) -> Callable[[], None]:
    """Fill the pending cap with junk usernames; returns one more round of the same attempts."""

    def attack() -> None:
        for n in range(FLOOD_CAP):
            assert mqtt_connect(service, f"junk-{n}", "junk-secret", f"junk-{n}").status == 403

    attack()
    assert len(pending(service)) == FLOOD_CAP
    return attack


def test_a_flood_of_the_pending_cap_is_purged_at_once(flooded_service: ServiceProcess, cregistry) -> None:  # type: ignore[no-untyped-def]
    unlock(flooded_service)
    flood(flooded_service)
    assert register(flooded_service, DEVICE, "device-secret").status == 429
    purged = admin(flooded_service, "DELETE", "client-registry/requests")
    assert purged.status == 200 and purged.json() == {"removed": FLOOD_CAP}
    assert pending(flooded_service) == []
    assert register(flooded_service, DEVICE, "device-secret").status == 202
    assert [r["username"] for r in pending(flooded_service)] == [DEVICE]
    # The CLI's purge, as an operator scripts it; the audit trail names both.
    assert cregistry("requests", "purge", "--yes").returncode == 0
    assert pending(flooded_service) == []
    entries = admin(flooded_service, "GET", "audit").json()["entries"]
    assert [e["action"] for e in entries if e["action"] == "request.purge"] == ["request.purge", "request.purge"]


def test_attempts_while_locked_never_keep_a_flood_alive(flooded_service: ServiceProcess) -> None:
    """A flood made in one unlock window, repeated while locked, still expires
    with the pending TTL: the cap frees itself without an operator."""
    unlock(flooded_service)
    attack = flood(flooded_service)
    assert admin(flooded_service, "POST", "client-registry/lock").status == 200
    deadline = time.monotonic() + FLOOD_TTL + 15
    while pending(flooded_service) and time.monotonic() < deadline:
        attack()  # counted, but never renewing the requests' life
        time.sleep(0.2)
    assert pending(flooded_service) == []
    unlock(flooded_service)
    assert register(flooded_service, DEVICE, "device-secret").status == 202


def test_purge_needs_the_admin_token(flooded_service: ServiceProcess) -> None:
    unlock(flooded_service)
    assert register(flooded_service, DEVICE, "device-secret").status == 202
    url = f"{flooded_service.api}/api/client-registry/requests"
    assert http("DELETE", url).status == 401
    assert http("DELETE", url, token="wrong").status == 401
    assert len(pending(flooded_service)) == 1
    assert json.loads(admin(flooded_service, "DELETE", "client-registry/requests").body) == {"removed": 1}


# -- no lockout by guessing ------------------------------------------------------
GUESS_LIMIT = 10


def test_guessing_never_keeps_a_working_device_out_across_a_restart(redis_process: RedisProcess, cregistry) -> None:  # type: ignore[no-untyped-def]
    """A service without CREGISTRY_VERIFY_SECRET: a restart voids every
    verified token. The guesser, over MQTT and REST under client IDs of its
    own, gets the limit's guesses and no more; the device, on its own client
    ID, still connects after the restart (on 3f09872 it was refused as 'too
    many failed attempts' until the window ended)."""
    env = {"CREGISTRY_FAILURE_LIMIT": str(GUESS_LIMIT), "CREGISTRY_WORKERS": "1"}
    with running_service(redis_process.url, ADMIN_TOKEN, env) as service:
        assert "CREGISTRY_VERIFY_SECRET" not in service.env
        unlock(service)
        assert register(service, DEVICE, "device-secret", "dev").status == 202
        assert cregistry("approve", DEVICE).returncode == 0
        assert mqtt_connect(service, DEVICE, "device-secret", "dev").status == 200  # a token now

        guesses = [mqtt_connect(service, DEVICE, f"guess-{n}", f"guesser-{n % 5}") for n in range(3 * GUESS_LIMIT)]
        guesses += [register(service, DEVICE, f"guess-rest-{n}", "guesser-rest") for n in range(GUESS_LIMIT)]
        reasons = [answer.json()["error"] for answer in guesses[: 3 * GUESS_LIMIT]]
        assert reasons.count("wrong password") == GUESS_LIMIT
        assert reasons.count("too many failed attempts") == 2 * GUESS_LIMIT
        assert {answer.status for answer in guesses[3 * GUESS_LIMIT :]} == {429}  # REST: limited too
        assert mqtt_connect(service, DEVICE, "device-secret", "dev").status == 200  # the token

        service.stop()
        service.start()  # a new random secret: the token is void
        assert mqtt_connect(service, DEVICE, "device-secret", "dev").status == 200  # bcrypt, its own client ID
        assert register(service, DEVICE, "device-secret", "dev").status == 201
        # The guesser is still limited: no more guesses, no bcrypt.
        answer = mqtt_connect(service, DEVICE, "guess-after-restart", "guesser-1")
        assert answer.status == 403 and answer.json()["error"] == "too many failed attempts"


# -- through a real Mosquitto with cregistry's plugin (the broker tier) ----------
def test_a_colliding_pairing_id_over_mqtt_does_not_hijack_the_approval(clients, cregistry) -> None:  # type: ignore[no-untyped-def]
    device_password, attacker_password = colliding_passwords(DEVICE)
    assert cregistry("unlock").returncode == 0
    assert clients(DEVICE, attacker_password, "evil").connect() == "Not authorized"
    assert clients(DEVICE, device_password, "dev").connect() == "Not authorized"
    listed = {r["clientId"]: r for r in json.loads(cregistry("requests", "--json").stdout)["requests"]}
    assert set(listed) == {"evil", "dev"} and all(r["contested"] for r in listed.values())

    refused = cregistry("approve", DEVICE, "--request", listed["dev"]["id"])
    assert refused.returncode != 0 and "contested" in refused.stderr
    assert cregistry("approve", DEVICE, "--request", listed["dev"]["id"], "--force").returncode == 0
    assert clients(DEVICE, device_password, "dev").connect() == "Success"
    assert clients(DEVICE, attacker_password, "evil").connect() == "Not authorized"
    assert clients(DEVICE, device_password, "dev").connect() == "Success"  # and from the plugin's cache
