"""The registration flow: lock state, pending requests, approve and deny."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
import redis

import cregistry.passwords
from cregistry import services
from cregistry.authorizer import Authorizer, ConnectRequest, Decision, connect_request
from cregistry.config import Config
from cregistry.errors import (
    AmbiguousRequest,
    InvalidInput,
    RequestNotFound,
    UsernameTaken,
)
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.passwords import pairing_id
from cregistry.pending import PendingRequest, PendingRequests
from cregistry.registration import Attempt, Outcome, Registration
from cregistry.users import UserStore

from .conftest import FakeClock, acl

KEYS = Keys("cregistry")


def stored_request(connection: fakeredis.FakeRedis, username: str, password: str) -> dict[str, str]:
    return connection.hgetall(KEYS.request(username, pairing_id(username, password)))


def register(
    registration: Registration, username: Any, password: Any, client_id: Any = None, context: Any = None
) -> Attempt:
    """What POST /api/client-registry/register asks of the flow."""
    return registration.attempt(username, password, client_id, "rest", context)


# -- lock state -----------------------------------------------------------------
def test_locked_by_default(connection: fakeredis.FakeRedis, lock: RegistryLock) -> None:
    state = lock.status()
    assert (state.locked, state.seconds_left) == (True, 0)
    assert connection.keys("*") == []


def test_unlock_default_is_300_seconds_as_a_key_with_ttl(connection: fakeredis.FakeRedis, lock: RegistryLock) -> None:
    state = lock.unlock()
    assert (state.locked, state.seconds_left) == (False, 300)
    assert connection.ttl(KEYS.unlock()) == 300
    assert lock.status().to_dict() == {"locked": False, "secondsLeft": 300}


@pytest.mark.parametrize("seconds", [1, 60, 3600])
def test_unlock_custom_seconds(connection: fakeredis.FakeRedis, seconds: int, lock: RegistryLock) -> None:
    assert lock.unlock(seconds).seconds_left == seconds
    assert connection.ttl(KEYS.unlock()) == seconds


def test_unlock_default_follows_config(connection: fakeredis.FakeRedis, clock: FakeClock) -> None:
    lock = services.build(connection, Config(bcrypt_cost=4, unlock_seconds=42), clock=clock).lock
    assert lock.unlock().seconds_left == 42


@pytest.mark.parametrize("seconds", [0, -1, 3601, True, False, "10", 10.0, [10]])
def test_unlock_refuses_bad_seconds_and_stays_locked(seconds: Any, lock: RegistryLock) -> None:
    with pytest.raises(InvalidInput):
        lock.unlock(seconds)
    assert lock.status().locked is True


def test_unlock_refusal_keeps_an_existing_unlock(lock: RegistryLock) -> None:
    lock.unlock(100)
    with pytest.raises(InvalidInput):
        lock.unlock(0)
    assert lock.status().seconds_left == 100


def test_lock_deletes_the_key(connection: fakeredis.FakeRedis, lock: RegistryLock) -> None:
    lock.unlock()
    state = lock.lock()
    assert (state.locked, state.seconds_left) == (True, 0)
    assert not connection.exists(KEYS.unlock())


# -- attempts -------------------------------------------------------------------
def test_unknown_user_while_locked_records_nothing(
    authorizer: Authorizer, connection: fakeredis.FakeRedis, hash_calls: list[str]
) -> None:
    decision = authorizer.check_user(ConnectRequest("sensor-1", "secret1", "c1"))
    assert decision.allowed is False
    assert connection.keys("*") == []
    assert hash_calls == []


def test_unknown_user_while_unlocked_records_a_request(
    authorizer: Authorizer,
    connection: fakeredis.FakeRedis,
    clock: FakeClock,
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    lock.unlock()
    decision = authorizer.check_user(ConnectRequest("sensor-1", "secret1", "client-1"))
    assert decision.allowed is False
    [request] = requests.list_requests()
    assert request.username == "sensor-1"
    assert request.pairing_id == pairing_id("sensor-1", "secret1")
    assert request.client_id == "client-1"
    assert request.source == "mqtt"
    assert request.attempts == 1
    assert request.first_seen == request.last_seen == clock.now
    assert cregistry.passwords.verify_password("secret1", request.password_hash)
    assert connection.ttl(KEYS.request("sensor-1", request.pairing_id)) == 24 * 3600


def test_record_attempt_returns_the_pairing_id(registration: Registration, lock: RegistryLock) -> None:
    lock.unlock()
    assert registration.record_attempt("sensor-1", "secret1", "c1", "mqtt") == Attempt(Outcome.RECORDED, "e2d3f8")
    assert registration.record_attempt("sensor-1", "secret1", "c1", "mqtt") == Attempt(Outcome.REPEATED, "e2d3f8")


def test_repeated_attempt_counts_and_never_changes_hash_or_client_id(
    connection: fakeredis.FakeRedis,
    clock: FakeClock,
    hash_calls: list[str],
    registration: Registration,
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "first-client", "mqtt")
    before = stored_request(connection, "sensor-1", "secret1")
    first_seen = clock.now
    clock.advance(30)
    assert registration.record_attempt("sensor-1", "secret1", "other-client", "rest").outcome is Outcome.REPEATED
    clock.advance(30)
    registration.record_attempt("sensor-1", "secret1", "third-client", "mqtt")
    after = stored_request(connection, "sensor-1", "secret1")
    assert after["passwordHash"] == before["passwordHash"]
    assert after["clientId"] == "first-client"
    assert after["source"] == "mqtt"
    [request] = requests.list_requests()
    assert request.attempts == 3
    assert request.first_seen == first_seen
    assert request.last_seen == first_seen + 60
    assert len(hash_calls) == 1  # a repeat costs no bcrypt work


def test_same_username_other_password_is_a_separate_request(
    registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "c1", "mqtt")
    assert registration.record_attempt("sensor-1", "secret2", "c2", "mqtt").outcome is Outcome.RECORDED
    found = requests.requests_for("sensor-1")
    assert sorted(r.pairing_id for r in found) == sorted([pairing_id("sensor-1", p) for p in ("secret1", "secret2")])
    assert all(r.attempts == 1 for r in found)


def test_at_most_three_requests_per_username(
    hash_calls: list[str], registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    for password in ("secret1", "secret2", "secret3"):
        assert registration.record_attempt("sensor-1", password, "c", "mqtt").outcome is Outcome.RECORDED
    hash_calls.clear()
    assert registration.record_attempt("sensor-1", "secret4", "c", "mqtt").outcome is Outcome.PENDING_CAP
    assert hash_calls == []
    assert len(requests.requests_for("sensor-1")) == 3
    assert pairing_id("sensor-1", "secret4") not in {r.pairing_id for r in requests.list_requests()}
    # The three recorded ones still count their attempts.
    assert registration.record_attempt("sensor-1", "secret2", "c", "mqtt").outcome is Outcome.REPEATED
    # Another username is not affected.
    assert registration.record_attempt("sensor-2", "secret1", "c", "mqtt").outcome is Outcome.RECORDED


def test_global_cap_records_nothing_and_costs_no_bcrypt(
    connection: fakeredis.FakeRedis, clock: FakeClock, hash_calls: list[str]
) -> None:
    domain = services.build(connection, Config(bcrypt_cost=4, pending_max=2), clock=clock)
    lock, requests, registration = domain.lock, domain.requests, domain.registration
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "c", "mqtt")
    registration.record_attempt("sensor-2", "secret1", "c", "mqtt")
    assert len(hash_calls) == 2
    keys_before = set(connection.keys("*"))
    assert registration.record_attempt("sensor-3", "secret1", "c", "mqtt").outcome is Outcome.PENDING_CAP
    assert len(hash_calls) == 2
    assert set(connection.keys("*")) == keys_before
    assert [r.username for r in requests.list_requests()] == ["sensor-1", "sensor-2"]
    # Under the cap, existing requests still count attempts.
    assert registration.record_attempt("sensor-1", "secret1", "c", "mqtt").outcome is Outcome.REPEATED


def test_register_over_the_cap_is_refused(connection: fakeredis.FakeRedis, clock: FakeClock) -> None:
    domain = services.build(connection, Config(bcrypt_cost=4, pending_max=1), clock=clock)
    domain.lock.unlock()
    assert register(domain.registration, "sensor-1", "secret1").outcome is Outcome.RECORDED
    assert register(domain.registration, "sensor-2", "secret1").outcome is Outcome.PENDING_CAP


def test_refused_attempts_record_nothing(
    authorizer: Authorizer, connection: fakeredis.FakeRedis, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    before = set(connection.keys("*"))
    for username, password in [("ab", "secret1"), ("sensor/1", "secret1"), ("sensor-1", "abc"), ("sensor-1", "€" * 25)]:
        request = connect_request(username, password, "c")  # as the broker route parses it
        decision = request if isinstance(request, Decision) else authorizer.check_user(request)
        assert decision.allowed is False
    assert set(connection.keys("*")) == before
    assert requests.list_requests() == []


# -- expiry ---------------------------------------------------------------------
def test_pending_request_expires_and_stops_counting(connection: fakeredis.FakeRedis, clock: FakeClock) -> None:
    domain = services.build(connection, Config(bcrypt_cost=4, pending_ttl=1, pending_max=1), clock=clock)
    lock, requests, registration = domain.lock, domain.requests, domain.registration
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "c", "mqtt")
    assert registration.record_attempt("sensor-2", "secret1", "c", "mqtt").outcome is Outcome.PENDING_CAP
    time.sleep(1.1)  # fakeredis expires keys in real time
    clock.advance(1.1)
    assert requests.list_requests() == []
    assert requests.requests_for("sensor-1") == []
    with pytest.raises(RequestNotFound):
        requests.approve("sensor-1")
    # The cap no longer counts the expired request.
    assert registration.record_attempt("sensor-2", "secret1", "c", "mqtt").outcome is Outcome.RECORDED
    assert [r.username for r in requests.list_requests()] == ["sensor-2"]


def test_repeated_attempt_renews_the_ttl(
    connection: fakeredis.FakeRedis, registration: Registration, lock: RegistryLock
) -> None:
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "c", "mqtt")
    key = KEYS.request("sensor-1", pairing_id("sensor-1", "secret1"))
    connection.expire(key, 10)
    registration.record_attempt("sensor-1", "secret1", "c", "mqtt")
    assert connection.ttl(key) == 24 * 3600


# -- approve --------------------------------------------------------------------
def test_approve_creates_the_user_with_exactly_the_stored_hash_and_no_permissions(
    users: UserStore,
    connection: fakeredis.FakeRedis,
    authorizer: Authorizer,
    registration: Registration,
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "client-1", "mqtt")
    request_hash = stored_request(connection, "sensor-1", "secret1")["passwordHash"]
    user = requests.approve("sensor-1")
    assert connection.hget(KEYS.user("sensor-1"), "passwordHash") == request_hash
    assert user.username == "sensor-1"
    assert user.permissions == () and user.roles == ()
    assert user.superuser is False
    assert user.client_id == "client-1"
    assert user.pairing_id == pairing_id("sensor-1", "secret1")
    assert not connection.exists(KEYS.user_permissions("sensor-1"))
    assert requests.list_requests() == []
    assert authorizer.check_user(ConnectRequest("sensor-1", "secret1", "client-1")).allowed
    assert not authorizer.check_user(ConnectRequest("sensor-1", "secret2", "client-1")).allowed
    for acc in (1, 2, 3, 4):
        assert not authorizer.check_acl(acl("sensor-1", "client-1", "a", acc)).allowed


def test_approve_with_pairing_id_removes_every_other_candidate(
    connection: fakeredis.FakeRedis, registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    for password in ("secret1", "secret2", "secret3"):
        registration.record_attempt("sensor-1", password, "c", "mqtt")
    registration.record_attempt("sensor-2", "secret1", "c", "mqtt")
    chosen_hash = stored_request(connection, "sensor-1", "secret2")["passwordHash"]
    requests.approve("sensor-1", pairing_id("sensor-1", "secret2"))
    assert connection.hget(KEYS.user("sensor-1"), "passwordHash") == chosen_hash
    assert requests.requests_for("sensor-1") == []
    assert connection.keys(KEYS.request("sensor-1", "*")) == []
    assert not connection.exists(KEYS.user_requests("sensor-1"))
    assert [r.id for r in requests.list_requests()] == [f"sensor-2:{pairing_id('sensor-2', 'secret1')}"]


def test_approve_with_several_candidates_needs_a_pairing_id(
    users: UserStore, registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "c", "mqtt")
    registration.record_attempt("sensor-1", "secret2", "c", "mqtt")
    with pytest.raises(AmbiguousRequest):
        requests.approve("sensor-1")
    assert not users.exists("sensor-1")
    assert len(requests.requests_for("sensor-1")) == 2


def test_approve_missing_request(registration: Registration, lock: RegistryLock, requests: PendingRequests) -> None:
    with pytest.raises(RequestNotFound):
        requests.approve("sensor-1")
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "c", "mqtt")
    with pytest.raises(RequestNotFound):
        requests.approve("sensor-1", pairing_id("sensor-1", "other"))
    with pytest.raises(InvalidInput):
        requests.approve("sensor-1", "XYZ")


def test_approve_when_the_user_exists(
    users: UserStore,
    connection: fakeredis.FakeRedis,
    registration: Registration,
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "c", "mqtt")
    users.add("sensor-1", "operator-password")
    operator_hash = users.password_hash("sensor-1")
    with pytest.raises(UsernameTaken):
        requests.approve("sensor-1")
    assert users.password_hash("sensor-1") == operator_hash


def race(
    redis_server: fakeredis.FakeServer,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
    actions: list[Callable[[services.Services], Any]],
) -> list[Any]:
    """Run each action in its own thread on its own objects and client; return
    what each returned or raised. Each thread's first MULTI waits until every
    thread got there, so all of them have read the state before any writes:
    the worst case for a check-then-write, which WATCH must make safe."""
    barrier = threading.Barrier(len(actions), timeout=10)
    racing = threading.local()
    original_multi = redis.client.Pipeline.multi

    def multi_after_everyone_read(self: redis.client.Pipeline) -> None:
        if getattr(racing, "first_multi", False):
            racing.first_multi = False
            barrier.wait()
        original_multi(self)

    monkeypatch.setattr(redis.client.Pipeline, "multi", multi_after_everyone_read)
    results: list[Any] = [None] * len(actions)

    def run(index: int, action: Callable[[services.Services], Any]) -> None:
        racing.first_multi = True
        client = fakeredis.FakeRedis(server=redis_server, decode_responses=True)
        try:
            results[index] = action(services.build(client, config))
        except Exception as error:  # collected and checked by the test
            results[index] = error
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(i, action)) for i, action in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)
    return results


def attempting(username: str, password: str, domain: services.Services) -> Outcome:
    return domain.registration.record_attempt(username, password, "c", "mqtt").outcome


def approving(username: str, pairing: str) -> Callable[[services.Services], Any]:
    return lambda domain: domain.requests.approve(username, pairing)


@pytest.mark.parametrize("same_candidate", [True, False], ids=["same-candidate", "different-candidates"])
def test_concurrent_approvals_have_exactly_one_winner(
    connection: fakeredis.FakeRedis,
    redis_server: fakeredis.FakeServer,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
    same_candidate: bool,
    registration: Registration,
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    lock.unlock()
    passwords = ["secret1", "secret2", "secret3"]
    for password in passwords:
        registration.record_attempt("sensor-1", password, "c", "mqtt")
    candidate_hashes = {stored_request(connection, "sensor-1", p)["passwordHash"] for p in passwords}
    pairings = [pairing_id("sensor-1", p) for p in passwords]
    if same_candidate:
        actions = [approving("sensor-1", pairings[0]) for _ in range(4)]
    else:
        actions = [approving("sensor-1", p) for p in pairings]

    results = race(redis_server, config, monkeypatch, actions)

    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1, results
    assert all(isinstance(e, UsernameTaken | RequestNotFound) for e in losers), losers
    assert connection.hget(KEYS.user("sensor-1"), "passwordHash") in candidate_hashes
    if same_candidate:
        assert winners[0].pairing_id == pairings[0]
    assert connection.hget(KEYS.user("sensor-1"), "pairingId") == winners[0].pairing_id
    assert requests.requests_for("sensor-1") == []
    assert connection.smembers(KEYS.users()) == {"sensor-1"}


def test_concurrent_attempts_respect_the_per_username_cap(
    redis_server: fakeredis.FakeServer,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    lock.unlock()
    passwords = [f"secret{i}" for i in range(5)]
    actions = [functools.partial(attempting, "sensor-1", password) for password in passwords]
    results = race(redis_server, config, monkeypatch, actions)
    assert sorted(r.value for r in results) == ["pending cap", "pending cap", "recorded", "recorded", "recorded"], (
        results
    )
    assert len(requests.requests_for("sensor-1")) == 3


# -- deny -----------------------------------------------------------------------
def test_deny_removes_the_request_and_refuses_the_same_credentials(
    authorizer: Authorizer,
    hash_calls: list[str],
    registration: Registration,
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "c", "mqtt")
    denied = requests.deny("sensor-1")
    assert denied.pairing_id == pairing_id("sensor-1", "secret1")
    assert requests.list_requests() == []
    hash_calls.clear()
    assert registration.record_attempt("sensor-1", "secret1", "c", "mqtt").outcome is Outcome.DENIED
    assert authorizer.check_user(ConnectRequest("sensor-1", "secret1", "c")).allowed is False
    assert register(registration, "sensor-1", "secret1").outcome is Outcome.DENIED
    assert requests.list_requests() == []
    assert hash_calls == []
    # Other credentials for the same username are a new request.
    assert registration.record_attempt("sensor-1", "secret2", "c", "mqtt").outcome is Outcome.RECORDED


def test_deny_missing_and_ambiguous(registration: Registration, lock: RegistryLock, requests: PendingRequests) -> None:
    with pytest.raises(RequestNotFound):
        requests.deny("sensor-1")
    lock.unlock()
    registration.record_attempt("sensor-1", "secret1", "c", "mqtt")
    registration.record_attempt("sensor-1", "secret2", "c", "mqtt")
    with pytest.raises(AmbiguousRequest):
        requests.deny("sensor-1")
    requests.deny("sensor-1", pairing_id("sensor-1", "secret2"))
    assert [r.pairing_id for r in requests.requests_for("sensor-1")] == [pairing_id("sensor-1", "secret1")]
    with pytest.raises(RequestNotFound):
        requests.deny("sensor-1", pairing_id("sensor-1", "secret2"))


# -- REST registration ----------------------------------------------------------
@pytest.mark.parametrize(
    "arguments",
    [
        {"username": "ab", "password": "secret1"},
        {"username": "sensor/1", "password": "secret1"},
        {"username": None, "password": "secret1"},
        {"username": 17, "password": "secret1"},
        {"username": "sensor-1", "password": None},
        {"username": "sensor-1", "password": "€" * 25},
        {"username": "sensor-1", "password": "secret\x001"},
        {"username": "sensor-1", "password": "\ud800secret"},
        {"username": "sensor-1", "password": "secret1", "client_id": 5},
        {"username": "sensor-1", "password": "secret1", "client_id": "a\x00b"},
        {"username": "sensor-1", "password": "secret1", "context": "text"},
        {"username": "sensor-1", "password": "secret1", "context": ["a"]},
        {"username": "sensor-1", "password": "secret1", "context": {"blob": "x" * 4096}},
    ],
)
def test_register_invalid_input_records_nothing(
    registration: Registration,
    connection: fakeredis.FakeRedis,
    arguments: dict[str, Any],
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    lock.unlock()
    before = set(connection.keys("*"))
    with pytest.raises(InvalidInput):
        register(registration, **arguments)
    assert set(connection.keys("*")) == before
    assert requests.list_requests() == []


def test_register_weak_password_records_nothing(
    registration: Registration, connection: fakeredis.FakeRedis, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    before = set(connection.keys("*"))
    attempt = register(registration, "sensor-1", "abcd")
    assert (attempt.outcome, attempt.detail) == (Outcome.WEAK_PASSWORD, "password must be at least 5 characters")
    assert set(connection.keys("*")) == before
    assert requests.list_requests() == []


def test_register_context_of_4_kib_is_accepted(
    registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    context = {"blob": "x" * (4096 - len('{"blob": ""}'))}
    assert len(json.dumps(context).encode()) == 4096
    assert register(registration, "sensor-1", "secret1", context=context).outcome is Outcome.RECORDED
    assert requests.list_requests()[0].context == context


def test_register_when_locked(registration: Registration, connection: fakeredis.FakeRedis) -> None:
    assert register(registration, "sensor-1", "secret1").outcome is Outcome.LOCKED
    assert connection.keys("*") == []


def test_register_pending_while_unlocked(
    registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    pairing = pairing_id("sensor-1", "secret1")
    assert register(registration, "sensor-1", "secret1", "client-1", {"model": "x1"}) == Attempt(
        Outcome.RECORDED, pairing
    )
    [request] = requests.list_requests()
    assert (request.source, request.client_id, request.context) == ("rest", "client-1", {"model": "x1"})
    assert register(registration, "sensor-1", "secret1") == Attempt(Outcome.REPEATED, pairing)
    assert requests.list_requests()[0].attempts == 2


def test_register_pending_while_locked_when_the_request_exists(
    registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    register(registration, "sensor-1", "secret1")
    lock.lock()
    assert register(registration, "sensor-1", "secret1") == Attempt(Outcome.REPEATED, pairing_id("sensor-1", "secret1"))
    assert requests.list_requests()[0].attempts == 2
    assert register(registration, "sensor-1", "secret2").outcome is Outcome.LOCKED


def test_register_granted_and_conflict_for_an_existing_user(
    registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    register(registration, "sensor-1", "secret1")
    requests.approve("sensor-1")
    lock.lock()
    assert register(registration, "sensor-1", "secret1") == Attempt(Outcome.ACCEPTED, pairing_id("sensor-1", "secret1"))
    assert register(registration, "sensor-1", "secret2").outcome is Outcome.WRONG_PASSWORD
    lock.unlock()
    assert register(registration, "sensor-1", "secret2").outcome is Outcome.WRONG_PASSWORD
    assert requests.list_requests() == []


def test_existing_user_still_granted_after_the_policy_is_tightened(
    registration: Registration,
    connection: fakeredis.FakeRedis,
    clock: FakeClock,
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    lock.unlock()
    register(registration, "sensor-1", "abcde")
    requests.approve("sensor-1")
    strict = Config(bcrypt_cost=4, password_min_length=12, password_require=("upper", "digit"))
    tightened = services.build(connection, strict, clock=clock)
    assert register(tightened.registration, "sensor-1", "abcde").outcome is Outcome.ACCEPTED
    assert tightened.authorizer.check_user(ConnectRequest("sensor-1", "abcde", "c")).allowed
    assert register(tightened.registration, "sensor-2", "abcde").outcome is Outcome.WEAK_PASSWORD


# -- what operators see ---------------------------------------------------------
def test_to_dict_never_shows_the_password_or_the_hash(
    connection: fakeredis.FakeRedis, registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    register(registration, "sensor-1", "secret-password", "c1", {"note": "n"})
    [request] = requests.list_requests()
    request_hash = request.password_hash
    request_text = json.dumps(request.to_dict())
    assert "secret-password" not in request_text
    assert request_hash not in request_text
    assert "secret-password" not in repr(request) and request_hash not in repr(request)
    assert set(request.to_dict()) == {
        "id",
        "username",
        "pairingId",
        "clientId",
        "source",
        "firstSeen",
        "lastSeen",
        "attempts",
        "context",
        "contested",
        "refusedAttempts",
        "certificateRequest",
    }
    user = requests.approve("sensor-1")
    user_text = json.dumps(user.to_dict())
    assert "secret-password" not in user_text
    assert connection.hget(KEYS.user("sensor-1"), "passwordHash") not in user_text
    assert request_hash not in repr(user)


def test_pending_request_dict_values(
    clock: FakeClock, registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    register(registration, "sensor-1", "secret1", "c1", {"a": [1, 2]})
    clock.advance(61)
    register(registration, "sensor-1", "secret1", "c1")
    [request] = requests.list_requests()
    assert isinstance(request, PendingRequest)
    assert request.to_dict() == {
        "id": "sensor-1:e2d3f8",
        "username": "sensor-1",
        "pairingId": "e2d3f8",
        "clientId": "c1",
        "source": "rest",
        "firstSeen": "2027-01-15T08:00:00Z",
        "lastSeen": "2027-01-15T08:01:01Z",
        "attempts": 2,
        "context": {"a": [1, 2]},
        "contested": False,
        "refusedAttempts": 0,
        "certificateRequest": None,
    }


def test_each_listener_answers_every_outcome() -> None:
    """One table per listener, and neither leaves an outcome without an answer."""
    from cregistry.authorizer import REFUSALS
    from cregistry.web.api_routes import REGISTRATION_ANSWERS

    assert set(REFUSALS) == set(Outcome) - {Outcome.ACCEPTED}
    assert set(REGISTRATION_ANSWERS) == set(Outcome)


# Which CONNECT refusals say the registry has no such user (plugin_opt_unknown_users defer, SPEC §11).
UNKNOWN_USER_MARKS = {
    Outcome.WRONG_PASSWORD: False,
    Outcome.TOO_MANY_FAILURES: False,
    Outcome.APPROVED_MEANWHILE: False,
    Outcome.CLIENT_ID_REFUSED: False,  # a registry user's own client ID is never deferred
    Outcome.WEAK_PASSWORD: True,
    Outcome.DENIED: True,
    Outcome.LOCKED: True,
    Outcome.PENDING_CAP: True,
    Outcome.BUSY: True,
    Outcome.RECORDED: True,
    Outcome.REPEATED: True,
}


def test_every_refused_outcome_says_whether_the_user_is_unknown(
    authorizer: Authorizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(UNKNOWN_USER_MARKS) == set(Outcome) - {Outcome.ACCEPTED}
    for outcome, unknown in UNKNOWN_USER_MARKS.items():
        monkeypatch.setattr(authorizer.registration, "attempt_valid", lambda *_a, o=outcome, **_k: Attempt(o, "abcdef"))
        decision = authorizer.check_user(ConnectRequest("sensor-1", "secret1", "c"))
        assert (decision.allowed, decision.unknown_user) == (False, unknown), outcome
