"""Hardening against a real redis-server: floods while unlocked, Redis
faults under the running service (killed, paused, loading, read-only, out of
memory), the service itself killed under load, and what it logs.

Each test prints the figures it measured (run with -s to see them)."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.client import HTTPException
from pathlib import Path
from typing import Any

import pytest

import cregistry.registration
from cregistry import services
from cregistry.config import Config
from cregistry.connections import connect
from cregistry.keys import Keys
from cregistry.passwords import pairing_id
from cregistry.registration import Outcome
from cregistry.server import redis_durability_warnings
from harness.processes import LOOPBACK, children_of, free_port, wait_for_port
from harness.redis_server import RedisProcess
from harness.service import HttpAnswer, ServiceProcess, http, running_service
from tests.integration.conftest import ADMIN_TOKEN

KEYS = Keys("cregistry")
FLOOD_ATTEMPTS = 100_000
MEGABYTE = 1024 * 1024
DEADLINE = 2.0  # a 503 within 2 seconds when Redis cannot answer


# -- helpers ----------------------------------------------------------------------
def domain_on(redis_process: RedisProcess, **settings: Any) -> services.Services:
    """The domain on the real Redis, as the CLI uses it."""
    return services.build(connect(redis_process.url, 5), Config(bcrypt_cost=4, **settings))


def answer(method: str, url: str, **kwargs: Any) -> HttpAnswer | None:
    """One HTTP request; None when the service gave no answer at all (it was killed)."""
    try:
        return http(method, url, timeout=5.0, **kwargs)
    except (OSError, HTTPException):
        return None


def connect_check(service: ServiceProcess, username: str, password: str, clientid: str = "client-1") -> HttpAnswer:
    return http(
        "POST",
        f"{service.broker}/mqtt/user",
        json_body={"username": username, "password": password, "clientid": clientid},
    )


def used_memory(redis_process: RedisProcess) -> int:
    client = redis_process.client()
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def is_gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped counts as exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


@pytest.fixture
def quiet_registry_log(caplog: pytest.LogCaptureFixture) -> None:
    # Over the cap every refused attempt logs a warning (see
    # test_a_flood_over_the_cap_does_not_flood_the_log); 100,000 of them would
    # only slow the flood tests down.
    caplog.set_level(logging.ERROR, logger="cregistry.registration")


# -- 2. floods while unlocked ---------------------------------------------------------
def test_flood_of_distinct_unknown_usernames_records_exactly_pending_max(
    redis_process: RedisProcess, hash_calls: list[str], quiet_registry_log: None
) -> None:
    domain = domain_on(redis_process)
    pending_max = domain.config.pending_max
    assert pending_max == 1000  # the default
    domain.lock.unlock(3600)
    memory_before = used_memory(redis_process)
    outcomes: collections.Counter[Outcome] = collections.Counter()
    started = time.monotonic()
    for n in range(FLOOD_ATTEMPTS):
        outcomes[
            domain.registration.record_attempt(f"flood-{n:06d}", "flood-password", f"client-{n}", "mqtt").outcome
        ] += 1
    seconds = time.monotonic() - started
    growth = used_memory(redis_process) - memory_before
    client = redis_process.client()
    keys = client.dbsize()
    client.close()
    print(
        f"\n[flood distinct] {FLOOD_ATTEMPTS} attempts in {seconds:.1f} s = {FLOOD_ATTEMPTS / seconds:.0f}/s;"
        f" recorded {outcomes[Outcome.RECORDED]}, bcrypt {len(hash_calls)}, keys {keys},"
        f" used_memory +{growth / MEGABYTE:.2f} MB"
    )
    assert outcomes == {Outcome.RECORDED: pending_max, Outcome.PENDING_CAP: FLOOD_ATTEMPTS - pending_max}
    assert domain.requests.count_requests() == pending_max
    assert len(hash_calls) == pending_max
    assert growth < 20 * MEGABYTE
    assert keys <= 3 * pending_max + 10
    # The first pending_max were recorded, nothing after them.
    assert {r.username for r in domain.requests.list_requests(0, 1000)} == {
        f"flood-{n:06d}" for n in range(pending_max)
    }


def test_flood_on_one_username_records_exactly_three(redis_process: RedisProcess, hash_calls: list[str]) -> None:
    domain = domain_on(redis_process)
    domain.lock.unlock(3600)
    memory_before = used_memory(redis_process)
    outcomes: collections.Counter[Outcome] = collections.Counter()
    started = time.monotonic()
    for n in range(FLOOD_ATTEMPTS):
        outcomes[domain.registration.record_attempt("one-device", f"password-{n:06d}", "client-1", "mqtt").outcome] += 1
    seconds = time.monotonic() - started
    growth = used_memory(redis_process) - memory_before
    print(
        f"\n[flood one username] {FLOOD_ATTEMPTS} attempts in {seconds:.1f} s = {FLOOD_ATTEMPTS / seconds:.0f}/s;"
        f" recorded {outcomes[Outcome.RECORDED]}, bcrypt {len(hash_calls)}, used_memory +{growth / 1024:.0f} KiB"
    )
    assert outcomes == {Outcome.RECORDED: 3, Outcome.PENDING_CAP: FLOOD_ATTEMPTS - 3}
    assert sorted(r.pairing_id for r in domain.requests.requests_for("one-device")) == sorted(
        pairing_id("one-device", f"password-{n:06d}") for n in range(3)
    )
    assert domain.requests.count_requests() == 3
    assert len(hash_calls) == 3
    assert growth < 20 * MEGABYTE


def test_caps_hold_under_concurrent_floods(
    redis_process: RedisProcess, hash_calls: list[str], quiet_registry_log: None
) -> None:
    """Four flooders with a registry (connection and bcrypt slots) each, as
    four worker processes would have: the per-username cap stays exact (its
    insert is watched); the global cap may be passed by at most one attempt
    per other flooder, which raced the last free place."""
    flooders, attempts = 4, 5_000
    domains = [domain_on(redis_process) for _ in range(flooders)]
    domains[0].lock.unlock(3600)
    outcomes: collections.Counter[Outcome] = collections.Counter()
    lock = threading.Lock()

    def flood(index: int, username: Callable[[int], str], password: Callable[[int], str]) -> None:
        domain = domains[index]
        for n in range(attempts):
            outcome = domain.registration.record_attempt(
                username(index * attempts + n), password(index * attempts + n), "c", "mqtt"
            )
            with lock:
                outcomes[outcome.outcome] += 1

    def run(username: Callable[[int], str], password: Callable[[int], str]) -> float:
        started = time.monotonic()
        threads = [threading.Thread(target=flood, args=(i, username, password)) for i in range(flooders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        return time.monotonic() - started

    seconds = run(lambda n: "shared-device", lambda n: f"password-{n:06d}")
    assert outcomes[Outcome.RECORDED] == 3 and len(domains[0].requests.requests_for("shared-device")) == 3
    # Hashing stops with the cap: only the attempts that raced the last places hashed in vain.
    assert 3 <= len(hash_calls) <= 3 + flooders
    one_name = dict(outcomes)
    outcomes.clear()
    hash_calls.clear()
    seconds += run(lambda n: f"crowd-{n:06d}", lambda n: "crowd-password")
    recorded = outcomes[Outcome.RECORDED]
    pending_max = domains[0].config.pending_max
    print(
        f"\n[concurrent floods] {flooders}x{attempts} on one username: {one_name};"
        f" {flooders}x{attempts} distinct: recorded {recorded} (cap {pending_max}), bcrypt {len(hash_calls)};"
        f" {2 * flooders * attempts / seconds:.0f} attempts/s"
    )
    # 3 of the pending_max places are taken by "shared-device".
    assert pending_max - 3 <= recorded <= pending_max - 3 + flooders - 1
    assert domains[0].requests.count_requests() == recorded + 3
    assert len(hash_calls) == recorded


class CountingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_flood_over_the_cap_does_not_flood_the_log(redis_process: RedisProcess) -> None:
    """Each refused attempt is the attacker's choice; a log line for each one
    lets a flood fill the operator's disk."""
    logger = logging.getLogger("cregistry")
    handler = CountingHandler()
    saved = (logger.level, logger.propagate)
    # The throttle is per process: an earlier test may have just used it up.
    cregistry.registration._cap_warning.last = None
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # counted here, not repeated in the test report
    try:
        domain = domain_on(redis_process, pending_max=10)
        domain.lock.unlock(3600)
        attempts = 10_000
        for n in range(attempts):
            domain.registration.record_attempt(f"noisy-{n:05d}", "noisy-password", "c", "mqtt")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    warnings = [r for r in handler.records if r.levelno >= logging.WARNING]
    print(f"\n[log flood] {attempts} attempts over a cap of 10 logged {len(warnings)} warnings")
    assert domain.requests.count_requests() == 10
    assert 1 <= len(warnings) <= 20, f"{len(warnings)} warnings, e.g. {warnings[0].getMessage()!r}"


def test_requests_pagination_over_the_api_and_the_cli(
    service: ServiceProcess, redis_process: RedisProcess, cregistry: Callable[..., Any]
) -> None:
    domain = domain_on(redis_process)
    domain.lock.unlock(600)
    for n in range(160):
        assert (
            domain.registration.record_attempt(f"page-{n:03d}", "page-secret", f"c{n}", "mqtt").outcome
            is Outcome.RECORDED
        )
    url = f"{service.api}/api/client-registry/requests"
    everything = http("GET", f"{url}?limit=1000", token=ADMIN_TOKEN).json()
    assert (everything["total"], len(everything["requests"])) == (160, 160)
    names = [r["username"] for r in everything["requests"]]
    assert names == [f"page-{n:03d}" for n in range(160)]  # least recently seen first
    page = http("GET", f"{url}?limit=50&offset=100", token=ADMIN_TOKEN)
    assert page.status == 200
    body = page.json()
    assert (body["total"], body["offset"], body["limit"]) == (160, 100, 50)
    assert body["requests"] == everything["requests"][100:150]
    tail = http("GET", f"{url}?limit=50&offset=150", token=ADMIN_TOKEN).json()["requests"]
    assert [r["username"] for r in tail] == names[150:]
    assert http("GET", f"{url}?limit=50&offset=160", token=ADMIN_TOKEN).json()["requests"] == []
    for bad in ("limit=0", "limit=1001", "offset=-1", "limit=x", "offset=1.5"):
        assert http("GET", f"{url}?{bad}", token=ADMIN_TOKEN).status == 400, bad

    as_json = cregistry("requests", "--limit", "5", "--offset", "2", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert [r["username"] for r in json.loads(as_json.stdout)["requests"]] == names[2:7]
    text = cregistry("requests", "--limit", "5", "--offset", "2")
    lines = text.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "USERNAME", "PAIRING"]
    assert [line.split()[1] for line in lines[1:]] == names[2:7]
    assert cregistry("requests", "--limit", "0").returncode == 2
    assert cregistry("requests", "--offset", "-1").returncode == 2


# -- 3. Redis faults under the running service -------------------------------------------
STEADY_PASSWORD = "steady-device-secret"
FRESH_PASSWORD = "fresh-operator-secret"
WAITING_PASSWORD = "waiting-device-secret"


@dataclasses.dataclass(frozen=True)
class Probe:
    name: str
    status: int | None
    seconds: float


def prepare_fleet(service: ServiceProcess, redis_process: RedisProcess) -> str:
    """A verified device, an operator-made user never verified since, and a
    pending request; returns the pending request's id."""
    domain = domain_on(redis_process)
    domain.lock.unlock(3600)
    domain.registration.record_attempt("steady", STEADY_PASSWORD, "steady-client", "mqtt")
    domain.requests.approve("steady")
    domain.users.grant("steady", "devices/%u/#", "readWrite")
    domain.users.add("fresh", FRESH_PASSWORD)
    domain.registration.record_attempt("waiting", WAITING_PASSWORD, "waiting-client", "mqtt")
    assert connect_check(service, "steady", STEADY_PASSWORD).status == 200  # leaves the verified token
    assert domain.redis.exists(KEYS.user_verified("steady")) == 1
    assert domain.redis.exists(KEYS.user_verified("fresh")) == 0
    return f"waiting:{pairing_id('waiting', WAITING_PASSWORD)}"


def run_probes(service: ServiceProcess, waiting_id: str, tag: str, approve: bool = True) -> list[Probe]:
    """go-auth's three checks, readiness and (unless told not to) an approval, all at once."""
    broker = f"{service.broker}/mqtt"

    def user(username: str, password: str) -> Callable[[], HttpAnswer | None]:
        return lambda: answer(
            "POST", f"{broker}/user", json_body={"username": username, "password": password, "clientid": "c"}
        )

    calls: list[tuple[str, Callable[[], HttpAnswer | None]]] = [
        *(("unknown", user(f"stranger-{tag}-{n}", "stranger-secret")) for n in range(3)),
        *(("wrong", user("steady", f"wrong-secret-{n}")) for n in range(3)),
        ("wrong", user("fresh", "wrong-secret")),
        ("right-verified", user("steady", STEADY_PASSWORD)),
        ("right-unverified", user("fresh", FRESH_PASSWORD)),
        (
            "acl",
            lambda: answer(
                "POST",
                f"{broker}/acl",
                json_body={"username": "steady", "clientid": "c", "topic": "devices/steady/t", "acc": 2},
            ),
        ),
        ("superuser", lambda: answer("POST", f"{broker}/superuser", json_body={"username": "steady"})),
        ("readyz", lambda: answer("GET", f"{service.broker}/readyz")),
        (
            "approve",
            lambda: answer(
                "POST", f"{service.api}/api/client-registry/requests/{waiting_id}/approve", token=ADMIN_TOKEN
            ),
        ),
    ]

    if not approve:
        calls = [call for call in calls if call[0] != "approve"]

    def timed(item: tuple[str, Callable[[], HttpAnswer | None]]) -> Probe:
        started = time.monotonic()
        result = item[1]()
        return Probe(item[0], None if result is None else result.status, time.monotonic() - started)

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(timed, calls))


UNAVAILABLE = {
    name: {503}
    for name in ("unknown", "wrong", "right-verified", "right-unverified", "acl", "superuser", "readyz", "approve")
}
WRITES_REFUSED = {
    "unknown": {403, 503},
    "wrong": {403, 503},
    # Reads still work: a verified token may grant; bcrypt alone cannot write its token.
    "right-verified": {200, 503},
    "right-unverified": {200, 503},
    "acl": {200},
    "superuser": {403},
    "readyz": {200},
    "approve": {503},
}
HEALTHY = {
    "unknown": {403},
    "wrong": {403},
    "right-verified": {200},
    "right-unverified": {200},
    "acl": {200},
    "superuser": {403},
    "readyz": {200},
    "approve": {201},
}


@contextlib.contextmanager
def redis_killed(redis_process: RedisProcess) -> Iterator[None]:
    assert redis_process.process is not None
    redis_process.process.kill()  # SIGKILL: no shutdown, no final fsync
    redis_process.process.wait()
    try:
        yield
    finally:
        redis_process.start()  # same port, data from the append-only file


@contextlib.contextmanager
def redis_paused(redis_process: RedisProcess) -> Iterator[None]:
    client = redis_process.client()
    client.execute_command("CLIENT", "PAUSE", "3000", "ALL")
    try:
        yield
    finally:
        client.execute_command("CLIENT", "UNPAUSE")  # waits for the pause itself to end
        client.close()


@contextlib.contextmanager
def redis_read_only(redis_process: RedisProcess) -> Iterator[None]:
    client = redis_process.client()
    # A replica of a master that does not exist: it keeps its data and refuses writes.
    client.execute_command("REPLICAOF", LOOPBACK, str(free_port()))
    try:
        yield
    finally:
        client.execute_command("REPLICAOF", "NO", "ONE")
        client.close()


@contextlib.contextmanager
def redis_out_of_memory(redis_process: RedisProcess) -> Iterator[None]:
    client = redis_process.client()
    policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        yield
    finally:
        client.config_set("maxmemory", 0)
        client.config_set("maxmemory-policy", policy)
        client.close()


FAULTS: dict[str, tuple[Callable[[RedisProcess], contextlib.AbstractContextManager[None]], dict[str, set[int]]]] = {
    "killed": (redis_killed, UNAVAILABLE),
    "paused": (redis_paused, UNAVAILABLE),
    "read-only": (redis_read_only, WRITES_REFUSED),
    "out-of-memory": (redis_out_of_memory, WRITES_REFUSED),
}


def wait_until_recovered(service: ServiceProcess, timeout: float = 15.0) -> tuple[float, int]:
    """Seconds until the verified device connects again, and the refusals on the way."""
    started = time.monotonic()
    failures = 0
    while time.monotonic() - started < timeout:
        result = answer(
            "POST",
            f"{service.broker}/mqtt/user",
            json_body={"username": "steady", "password": STEADY_PASSWORD, "clientid": "c"},
        )
        if result is not None and result.status == 200:
            return time.monotonic() - started, failures
        failures += 1
        time.sleep(0.1)
    raise AssertionError(f"the service did not recover within {timeout} s")


def assert_probes(probes: list[Probe], expected: dict[str, set[int]], fault: str) -> None:
    for probe in probes:
        assert probe.status in expected[probe.name], (fault, probe)
        assert probe.seconds < DEADLINE, (fault, probe)
        if probe.name in ("unknown", "wrong"):
            assert probe.status != 200, (fault, probe)  # never a bad credential


def print_probes(fault: str, probes: list[Probe]) -> None:
    by_name: dict[str, list[Probe]] = collections.defaultdict(list)
    for probe in probes:
        by_name[probe.name].append(probe)
    summary = ", ".join(
        f"{name} {sorted({p.status for p in group}, key=str)} max {max(p.seconds for p in group):.2f}s"
        for name, group in by_name.items()
    )
    print(f"\n[fault {fault}] {summary}")


def assert_nothing_half_written(
    service: ServiceProcess, redis_process: RedisProcess, waiting_id: str, tag: str, strangers_answered: bool = False
) -> None:
    """`strangers_answered`: some stranger probe got a real answer (403) after
    the fault ended, so its request was rightly recorded."""
    listed = http("GET", f"{service.api}/api/client-registry/requests", token=ADMIN_TOKEN).json()["requests"]
    assert waiting_id in [r["id"] for r in listed]
    if not strangers_answered:
        assert not [r for r in listed if r["username"].startswith(f"stranger-{tag}-")]
    assert http("GET", f"{service.api}/api/users/waiting", token=ADMIN_TOKEN).status == 404
    client = redis_process.client()
    try:
        if not strangers_answered:
            assert client.keys(f"*stranger-{tag}-*") == []
        assert client.exists(KEYS.user("waiting")) == 0
        assert client.sismember(KEYS.users(), "waiting") == 0
    finally:
        client.close()
    entries = http("GET", f"{service.api}/api/audit?limit=1000", token=ADMIN_TOKEN).json()["entries"]
    assert [e for e in entries if e["action"] == "request.approve" and e["target"] == "waiting"] == []


@pytest.mark.parametrize("fault", list(FAULTS))
def test_redis_fault_answers_503_in_time_never_grants_and_recovers(
    fault: str, service: ServiceProcess, redis_process: RedisProcess, cregistry: Callable[..., Any]
) -> None:
    make_fault, expected = FAULTS[fault]
    waiting_id = prepare_fleet(service, redis_process)
    service_pid = service.process.pid if service.process else None
    with make_fault(redis_process):
        probes = run_probes(service, waiting_id, tag="during")
        if fault != "paused":  # the CLI under a pause: test_operator_fixes.py
            approved = cregistry("approve", "waiting")
            assert approved.returncode == 6, (approved.stdout, approved.stderr)
            assert approved.stderr.startswith("Error: cannot reach Redis") and "Traceback" not in approved.stderr
    print_probes(fault, probes)
    assert_probes(probes, expected, fault)

    recovery_seconds, failures = wait_until_recovered(service)
    print(f"[fault {fault}] recovered {recovery_seconds:.2f} s after the fault ended ({failures} refusals on the way)")
    assert service.process is not None and service.process.poll() is None
    assert service.process.pid == service_pid  # the same service, never restarted
    assert_nothing_half_written(service, redis_process, waiting_id, tag="during")
    after = run_probes(service, waiting_id, tag="after")
    assert_probes(after, HEALTHY, f"{fault} (after)")


def acl_check(service: ServiceProcess, username: str, topic: str, acc: int = 2) -> HttpAnswer | None:
    return answer(
        "POST",
        f"{service.broker}/mqtt/acl",
        json_body={"username": username, "clientid": "c", "topic": topic, "acc": acc},
    )


def test_a_cached_permission_is_not_granted_while_redis_is_paused(
    service: ServiceProcess, redis_process: RedisProcess
) -> None:
    """ACL checks run without the deadline's thread hop and their worker
    caches permission sets (permission_cache.py): a paused Redis must still
    answer 503 within 2 s, and the cached set must not answer instead."""
    domain = domain_on(redis_process)
    domain.users.add("cached-dev", "cached-secret")
    domain.users.grant("cached-dev", "cached/#", "readWrite")
    # Every worker may answer; a few checks warm the caches of those that do.
    for _ in range(6):
        warm = acl_check(service, "cached-dev", "cached/t")
        assert warm is not None and warm.status == 200
    with redis_paused(redis_process):
        probes = []
        for _ in range(3):
            started = time.monotonic()
            result = acl_check(service, "cached-dev", "cached/t")
            probes.append((None if result is None else result.status, time.monotonic() - started))
    print(f"\n[paused, cached ACL] {probes}")
    for status, seconds in probes:
        assert status == 503, probes
        assert seconds < DEADLINE, probes
    recovered = acl_check(service, "cached-dev", "cached/t")
    assert recovered is not None and recovered.status == 200


def test_a_revocation_takes_effect_at_the_next_acl_check(service: ServiceProcess, redis_process: RedisProcess) -> None:
    """The per-worker cache is validated by the change feed on every check,
    so a revocation (the user's own or a role's) is never answered from it."""
    domain = domain_on(redis_process)
    domain.users.add("revoked-dev", "revoked-secret")
    domain.users.grant("revoked-dev", "own/#", "readWrite")
    domain.roles.set_permissions("revoked-role", [{"topic": "role/#", "access": "readWrite"}])
    domain.users.assign_role("revoked-dev", "revoked-role")
    for _ in range(6):
        for topic in ("own/t", "role/t"):
            allowed = acl_check(service, "revoked-dev", topic)
            assert allowed is not None and allowed.status == 200, topic
    domain.users.revoke("revoked-dev", "own/#")
    domain.roles.revoke("revoked-role", "role/#")
    for _ in range(6):
        for topic in ("own/t", "role/t"):
            refused = acl_check(service, "revoked-dev", topic)
            assert refused is not None and refused.status == 403, topic


def test_redis_loading_its_data_answers_503_and_never_grants(
    service: ServiceProcess, redis_process: RedisProcess
) -> None:
    waiting_id = prepare_fleet(service, redis_process)
    client = redis_process.client()
    # A million keys: replaying them takes Redis about a second after a
    # restart, during which it answers most commands with -LOADING.
    fill = "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('SET', 'filler:' .. i, 'x') end"
    for start in range(0, 1_000_000, 20_000):
        client.eval(fill, 0, start, start + 19_999)
    client.close()
    redis_process.stop()
    starter = threading.Thread(target=redis_process.start)  # returns once loading is over
    starter.start()
    batches: list[list[Probe]] = []
    bracketed: list[list[Probe]] = []
    approval: list[Probe] = []

    def approve_waiting() -> None:
        started = time.monotonic()
        result = answer("POST", f"{service.api}/api/client-registry/requests/{waiting_id}/approve", token=ADMIN_TOKEN)
        approval.append(Probe("approve", None if result is None else result.status, time.monotonic() - started))

    # The admin API has no deadline of its own: its approval runs on the side.
    approver = threading.Thread(target=approve_waiting)
    loading_seconds = 0.0
    try:
        deadline = time.monotonic() + 30
        wait_for_port(redis_process.port, timeout=10)
        with socket.create_connection((LOOPBACK, redis_process.port), timeout=5) as raw:
            started = time.monotonic()
            while time.monotonic() < deadline:
                if not _loading(raw):
                    break
                if approver.ident is None:
                    approver.start()
                probes = run_probes(service, waiting_id, tag="loading", approve=False)
                batches.append(probes)
                if _loading(raw):  # still loading after the batch: all of it ran during loading
                    bracketed.append(probes)
            loading_seconds = time.monotonic() - started
    finally:
        starter.join(30)
        if approver.ident is not None:
            approver.join(30)
    try:
        stats = redis_process.client()
        connections = stats.info("stats")["total_connections_received"]
        stats.close()
        print(
            f"\n[fault loading] loading lasted {loading_seconds:.2f} s; {len(batches)} probe batches,"
            f" {len(bracketed)} entirely while loading; statuses"
            f" {sorted({p.status for b in bracketed for p in b}, key=str)},"
            f" max {max((p.seconds for b in bracketed for p in b), default=0):.3f} s;"
            f" an approval sent while loading: {approval};"
            f" connections Redis accepted since its restart: {connections}"
        )
        assert bracketed, "no probe ran while Redis was loading"
        for probes in bracketed:
            assert_probes(probes, UNAVAILABLE, "loading")
        for probes in batches:
            assert not [p for p in probes if p.name in ("unknown", "wrong") and p.status == 200]
        wait_until_recovered(service)
        # The approval either failed and left the request, or happened whole.
        [approved] = approval
        assert approved.status in (201, 503)
        users = http("GET", f"{service.api}/api/users/waiting", token=ADMIN_TOKEN).status
        listed = http("GET", f"{service.api}/api/client-registry/requests", token=ADMIN_TOKEN).json()["requests"]
        pending = waiting_id in [r["id"] for r in listed]
        assert (users, pending) == ((200, False) if approved.status == 201 else (404, True))
        if approved.status == 503:
            # The last batch may run after loading ended: a stranger answered
            # 403 then was rightly recorded; one answered 503 must not be.
            answered = any(p.status == 403 for b in batches for p in b if p.name == "unknown")
            assert_nothing_half_written(service, redis_process, waiting_id, tag="loading", strangers_answered=answered)
        assert_probes(run_probes(service, waiting_id, tag="after", approve=False), HEALTHY, "loading (after)")
    finally:
        # Later restarts should not replay a million keys again.
        client = redis_process.client()
        client.flushall()
        _rewrite_aof(client)
        client.close()


def _loading(raw: socket.socket) -> bool:
    raw.sendall(b"PING\r\n")
    reply = raw.recv(1024)
    if reply.startswith(b"+PONG"):
        return False
    assert reply.startswith(b"-LOADING"), reply
    return True


def _rewrite_aof(client: Any) -> None:
    deadline = time.monotonic() + 30
    with contextlib.suppress(Exception):  # "already in progress" is fine too
        client.bgrewriteaof()
    while time.monotonic() < deadline:
        persistence = client.info("persistence")
        if not persistence["aof_rewrite_in_progress"] and not persistence["aof_rewrite_scheduled"]:
            return
        time.sleep(0.05)
    raise AssertionError("the AOF rewrite did not finish")


# -- 3. the service itself killed under load -----------------------------------------------
@dataclasses.dataclass(frozen=True)
class Check:
    kind: str  # "known", "candidate", "stranger"
    username: str
    password: str
    status: int | None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_service_killed_under_load_never_grants_a_wrong_password_nor_half_approves(
    sig: signal.Signals, redis_process: RedisProcess
) -> None:
    with running_service(redis_process.url, ADMIN_TOKEN) as own:
        _killed_under_load(own, redis_process, sig)


def _killed_under_load(own: ServiceProcess, redis_process: RedisProcess, sig: signal.Signals) -> None:
    domain = domain_on(redis_process)
    known = {f"known-{n}": f"known-secret-{n}" for n in range(4)}
    for username, password in known.items():
        domain.users.add(username, password)
    domain.lock.unlock(3600)
    candidates = {f"cand-{n:03d}": [f"cand-{n:03d}-secret-{k}" for k in range(3)] for n in range(200)}
    stored: dict[str, dict[str, str]] = {}
    for username, passwords in candidates.items():
        for password in passwords:
            assert (
                domain.registration.record_attempt(username, password, f"client-{username}", "mqtt").outcome
                is Outcome.RECORDED
            )
        stored[username] = {
            pairing_id(username, p): domain.redis.hget(KEYS.request(username, pairing_id(username, p)), "passwordHash")
            for p in passwords
        }
    # Locked, as an operator approving a batch has it: an attempt racing an
    # approval can otherwise record a fresh request for the new user (see
    # test_verification.py::test_an_attempt_racing_an_approval_records_no_request_for_the_new_user).
    domain.lock.lock()
    request_ids = [f"{u}:{pairing_id(u, p)}" for u, ps in candidates.items() for p in ps]
    strangers = {f"stranger-{n}": f"stranger-secret-{n}" for n in range(5)}

    stop = threading.Event()
    checks: list[Check] = []
    approvals: list[tuple[str, int | None]] = []
    lock = threading.Lock()

    def checker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            roll = rng.random()
            if roll < 0.3:
                username = rng.choice(list(known))
                kind, password = "known", rng.choice([known[username], f"guess-{rng.randrange(10**6)}"])
            elif roll < 0.9:
                username = rng.choice(list(candidates))
                kind, password = "candidate", rng.choice(candidates[username] + [f"guess-{rng.randrange(10**6)}"])
            else:
                username = rng.choice(list(strangers))
                kind, password = "stranger", strangers[username]
            result = answer(
                "POST",
                f"{own.broker}/mqtt/user",
                json_body={"username": username, "password": password, "clientid": f"client-{username}"},
            )
            with lock:
                checks.append(Check(kind, username, password, None if result is None else result.status))

    def approver(seed: int) -> None:
        order = request_ids * 2  # every request twice, so approvals race each other
        random.Random(seed).shuffle(order)
        for request_id in order:
            if stop.is_set():
                return
            result = answer("POST", f"{own.api}/api/client-registry/requests/{request_id}/approve", token=ADMIN_TOKEN)
            with lock:
                approvals.append((request_id, None if result is None else result.status))

    threads = [threading.Thread(target=checker, args=(n,)) for n in range(6)]
    threads += [threading.Thread(target=approver, args=(100 + n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        # Kill once the load is well under way: approvals are still running.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(approvals) < 120 or len(checks) < 600):
            time.sleep(0.02)
        assert own.process is not None
        workers = children_of(own.process.pid)
        killed_at = (len(approvals), len(checks))
        if sig == signal.SIGKILL:
            # The whole service at once, as the OOM killer or `docker kill` does it.
            for pid in [own.process.pid, *workers]:
                os.kill(pid, signal.SIGKILL)
        else:
            own.process.send_signal(signal.SIGTERM)
        own.process.wait(20)
        time.sleep(0.3)  # let the clients see the closed sockets
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    gone_deadline = time.monotonic() + 10
    while time.monotonic() < gone_deadline and not all(is_gone(pid) for pid in workers):
        time.sleep(0.05)
    assert workers and all(is_gone(pid) for pid in workers), workers
    if sig == signal.SIGTERM:
        assert own.process.returncode == 0, own.output()[-2000:]

    # Redis as the kill left it: every username fully approved or fully pending.
    client = redis_process.client()
    half_done = []
    approved_pairing: dict[str, str] = {}
    for username, hashes in stored.items():
        user = client.hgetall(KEYS.user(username))
        remaining = client.smembers(KEYS.user_requests(username))
        requests = {pid: client.hget(KEYS.request(username, pid), "passwordHash") for pid in hashes}
        indexed = {pid: client.zscore(KEYS.pending_index(), f"{username}:{pid}") is not None for pid in hashes}
        listed = client.sismember(KEYS.users(), username)
        if user:
            whole = (
                hashes.get(user.get("pairingId", "")) == user.get("passwordHash")
                and not remaining
                and not any(requests.values())
                and not any(indexed.values())
                and listed
            )
            approved_pairing[username] = user.get("pairingId", "")
        else:
            whole = remaining == set(hashes) and requests == hashes and all(indexed.values()) and not listed
        if not whole:
            half_done.append(username)
    approve_entries = [
        e for e in domain.audit.entries(1000) if e["action"] == "request.approve" and e["target"].startswith("cand-")
    ]
    client.close()

    wrong_grants = []
    for check in checks:
        if check.status != 200:
            continue
        if check.kind == "known" and check.password != known[check.username]:
            wrong_grants.append(check)
        elif check.kind == "candidate" and approved_pairing.get(check.username) != pairing_id(
            check.username, check.password
        ):
            wrong_grants.append(check)
        elif check.kind == "stranger":
            wrong_grants.append(check)
    won: collections.Counter[str] = collections.Counter(
        request_id.split(":")[0] for request_id, status in approvals if status == 201
    )
    statuses = collections.Counter(str(c.status) for c in checks)
    answered = sum(1 for c in checks if c.status is not None)
    print(
        f"\n[kill {sig.name}] killed after {killed_at[0]} approvals and {killed_at[1]} checks;"
        f" checks sent {len(checks)} ({answered} answered) {dict(statuses)}, approvals sent {len(approvals)}"
        f" {dict(collections.Counter(str(s) for _, s in approvals))};"
        f" users created {len(approved_pairing)}/{len(candidates)};"
        f" wrong-password 200s {len(wrong_grants)}; half-done approvals {len(half_done)}"
    )
    assert wrong_grants == []
    assert half_done == []
    assert 0 < len(approved_pairing) < len(candidates)  # the kill landed in the middle of the approvals
    assert max(won.values()) == 1  # never two winners for one username
    assert set(won) <= set(approved_pairing)
    assert len(approve_entries) == len(approved_pairing)  # one audit entry per approval, none without one
    assert sum(1 for c in checks if c.kind == "known" and c.status == 200) > 0

    # Started again on the same Redis, the approved devices connect and nothing else does.
    own.start()
    for username in sorted(approved_pairing)[:10]:
        password = next(p for p in candidates[username] if pairing_id(username, p) == approved_pairing[username])
        assert connect_check(own, username, password).status == 200
        others = [p for p in candidates[username] if p != password]
        assert connect_check(own, username, others[0]).status == 403


# -- startup warnings about the Redis configuration ------------------------------------
def test_durability_warnings_on_a_real_redis(redis_process: RedisProcess) -> None:
    client = redis_process.client()
    connection = connect(redis_process.url, 5)
    assert redis_durability_warnings(connection) == []  # AOF on, noeviction: as the harness runs it
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
        [warning] = redis_durability_warnings(connection)
        assert "allkeys-lru" in warning and "evict" in warning
        client.config_set("maxmemory-policy", "volatile-lru")
        assert redis_durability_warnings(connection) == []
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("appendonly", "no")  # and `save ""`: no persistence at all
        [warning] = redis_durability_warnings(connection)
        assert "neither an append-only file nor RDB snapshots" in warning
        client.config_set("save", "3600 1")
        assert redis_durability_warnings(connection) == []
        client.config_set("save", "")
        client.config_set("maxmemory-policy", "allkeys-lfu")
        assert len(redis_durability_warnings(connection)) == 2

        # `serve` logs them at start-up, and still starts.
        client.config_set("appendonly", "yes")
        _rewrite_aof(client)
        client.config_set("maxmemory-policy", "allkeys-lru")
        with running_service(redis_process.url, ADMIN_TOKEN) as own:
            deadline = time.monotonic() + 10
            while "maxmemory-policy is allkeys-lru" not in own.output() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "WARNING" in own.output() and "maxmemory-policy is allkeys-lru" in own.output()
            assert http("GET", f"{own.broker}/readyz").status == 200
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("save", "")
        if client.config_get("appendonly")["appendonly"] != "yes":
            client.config_set("appendonly", "yes")
        _rewrite_aof(client)
        assert int(client.info("persistence")["aof_enabled"]) == 1
        client.close()


# -- 4. the audit trail on a real Redis ---------------------------------------------------
def test_audit_trail_stays_capped_on_a_real_redis(redis_process: RedisProcess) -> None:
    domain = domain_on(redis_process, audit_max=100)
    for _ in range(500):
        domain.lock.unlock(60, actor="ops")
    client = redis_process.client()
    length = client.xlen(KEYS.audit())
    client.close()
    print(f"\n[audit cap] 500 changes with CREGISTRY_AUDIT_MAX=100 leave {length} entries")
    assert 100 <= length < 200


# -- 6. nothing secret in the service's log -----------------------------------------------
def _drive_a_logged_flow(service: ServiceProcess, redis_process: RedisProcess, prefix: str) -> list[str]:
    """Registration, approval, connects, guessing and operator changes over
    HTTP; returns every secret that went through."""
    api = f"{service.api}/api"
    secrets = {f"{prefix}-dev-1": "log-secret-mqtt-1", f"{prefix}-dev-2": "log-secret-rest-2"}
    assert http("POST", f"{api}/client-registry/unlock", token=ADMIN_TOKEN).status == 200
    assert connect_check(service, f"{prefix}-dev-1", secrets[f"{prefix}-dev-1"]).status == 403
    body = {"username": f"{prefix}-dev-2", "password": secrets[f"{prefix}-dev-2"], "clientId": "c"}
    assert http("POST", f"{api}/client-registry/register", json_body=body).status == 202
    for username, password in secrets.items():
        request_id = f"{username}:{pairing_id(username, password)}"
        assert http("POST", f"{api}/client-registry/requests/{request_id}/approve", token=ADMIN_TOKEN).status == 201
    operator_password = "log-secret-operator-3"
    added = http(
        "POST", f"{api}/users", json_body={"username": f"{prefix}-op", "password": operator_password}, token=ADMIN_TOKEN
    )
    assert added.status == 201
    assert connect_check(service, f"{prefix}-dev-1", secrets[f"{prefix}-dev-1"]).status == 200
    for n in range(101):  # past the default limit, which logs a warning; from a client ID nobody owns
        assert connect_check(service, f"{prefix}-dev-2", f"log-guess-{n}", "guesser").status == 403
    query = f"username={prefix}-dev-1&password=log-secret-query-4&clientid=c"
    assert http("GET", f"{service.broker}/mqtt/user?{query}").status == 403
    assert http("GET", f"{api}/users", token="log-wrong-token-5").status == 401
    client = redis_process.client()
    hashes = [client.hget(KEYS.user(name), "passwordHash") for name in [*secrets, f"{prefix}-op"]]
    tokens = [client.get(KEYS.user_verified(f"{prefix}-dev-1"))]
    client.close()
    assert all(hashes) and all(tokens)
    return [
        *secrets.values(),
        operator_password,
        "log-secret-query-4",
        "log-wrong-token-5",
        *(f"log-guess-{n}" for n in range(101)),
        *hashes,
        *tokens,
        ADMIN_TOKEN,
    ]


def _assert_log_has_no_secrets(service: ServiceProcess, secrets: list[str], prefix: str) -> None:
    deadline = time.monotonic() + 5
    marker = f"registration approved: user {prefix}-dev-2"
    while marker not in service.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    output = service.output()
    assert marker in output  # the flow was logged at all
    assert f"user {prefix}-dev-2 reached 100 failed password checks" in output
    leaked = [secret for secret in secrets if secret in output]
    print(f"\n[log] {len(output.splitlines())} lines checked for {len(secrets)} secrets: {len(leaked)} found")
    assert leaked == []


def test_service_log_shows_no_password_hash_or_token(service: ServiceProcess, redis_process: RedisProcess) -> None:
    secrets = _drive_a_logged_flow(service, redis_process, "logcheck")
    _assert_log_has_no_secrets(service, secrets, "logcheck")


def test_debug_log_shows_no_password_hash_or_token(redis_process: RedisProcess) -> None:
    with running_service(redis_process.url, ADMIN_TOKEN, {"CREGISTRY_LOG_LEVEL": "DEBUG"}) as own:
        secrets = _drive_a_logged_flow(own, redis_process, "debugcheck")
        _assert_log_has_no_secrets(own, secrets, "debugcheck")


# -- 1. the verified token across a restart ------------------------------------------------
def test_a_verified_device_stays_connected_over_the_limit_across_a_restart(redis_process: RedisProcess) -> None:
    """With CREGISTRY_VERIFY_SECRET the token outlives the process; without
    it (a random secret per start) the figure is printed for the report."""
    outcomes = {}
    for label, extra in (("fixed secret", {"CREGISTRY_VERIFY_SECRET": "7f" * 32}), ("random secret", {})):
        client = redis_process.client()
        client.flushall()
        client.close()
        domain = domain_on(redis_process)
        domain.lock.unlock(60)
        domain.registration.record_attempt("restart-dev", "restart-secret", "c", "mqtt")
        domain.requests.approve("restart-dev")
        with running_service(redis_process.url, ADMIN_TOKEN, {"CREGISTRY_FAILURE_LIMIT": "3", **extra}) as own:
            assert connect_check(own, "restart-dev", "restart-secret").status == 200
            for n in range(4):
                assert connect_check(own, "restart-dev", f"guess-{n}").status == 403
            assert connect_check(own, "restart-dev", "restart-secret").status == 200
            own.stop()
            own.start()
            outcomes[label] = connect_check(own, "restart-dev", "restart-secret").status
            assert connect_check(own, "restart-dev", "guess-9").status == 403
    print(f"\n[restart] verified device over the limit after a service restart: {outcomes}")
    assert outcomes["fixed secret"] == 200
