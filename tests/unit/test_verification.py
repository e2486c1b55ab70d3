"""Checking a known user's password: the guessing limit, the verified token
and the bound on bcrypt work (cregistry/verification.py)."""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

import cregistry.cli
import cregistry.passwords
from cregistry import services
from cregistry.config import Config
from cregistry.errors import InvalidInput, PasswordChecksBusy
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.passwords import hash_password, pairing_id
from cregistry.pending import PendingRequests
from cregistry.registration import Outcome, Registration
from cregistry.users import UserStore
from cregistry.verification import HASHING_NICE, PasswordVerifier, Verdict, WorkLimits
from cregistry.web import create_app

from .conftest import ADMIN_TOKEN

KEYS = Keys("cregistry")
SECRET = "5e" * 32  # CREGISTRY_VERIFY_SECRET, shared by both apps as `serve` shares it
LIMIT = 5
DEVICE = "sensor-1"
PASSWORD = "device-secret-1"
WRONG = "not-the-password"
REGISTER = "/api/client-registry/register"


@pytest.fixture
def config() -> Config:
    return Config(bcrypt_cost=4, admin_token=ADMIN_TOKEN, failure_limit=LIMIT, verify_secret=SECRET)


@pytest.fixture
def clock() -> Callable[[], float]:
    # The apps read the real time; the domain fixtures must agree with them.
    return time.time


@pytest.fixture
def device(registration: Registration, lock: RegistryLock, requests: PendingRequests) -> str:
    """A device that registered itself and was approved; never verified since."""
    lock.unlock()
    registration.record_attempt(DEVICE, PASSWORD, "client-1", "mqtt")
    requests.approve(DEVICE)
    lock.lock()
    return DEVICE


def verifier_for(connection: fakeredis.FakeRedis, config: Config, **limits: Any) -> PasswordVerifier:
    return services.build(connection, config, limits=limits.get("limits")).verifier


def connect(broker: FlaskClient, username: str, password: str, client_id: str = "client-1") -> tuple[int, str]:
    response = broker.post("/mqtt/user", json={"username": username, "password": password, "clientid": client_id})
    body = response.get_json()
    assert body["ok"] is (response.status_code == 200)
    return response.status_code, body["error"]


def push_over_the_limit(verifier: PasswordVerifier, username: str = DEVICE) -> None:
    for attempt in range(LIMIT):
        assert verifier.verify(username, f"{WRONG}-{attempt}") is Verdict.REFUSED
    assert verifier.failures(username) == LIMIT


def expected_token(username: str, password: str, stored_hash: str, secret: str = SECRET) -> str:
    """`binding:proof`: which secret and stored hash, then the password's proof."""
    key = bytes.fromhex(secret)
    binding_key = hmac.new(key, b"cregistry token binding", hashlib.sha256).digest()
    binding = hmac.new(binding_key, f"{username}\0{stored_hash}".encode(), hashlib.sha256).hexdigest()[:32]
    proof = hmac.new(key, f"{username}\0{password}\0{stored_hash}".encode(), hashlib.sha256).hexdigest()
    return f"{binding}:{proof}"


def every_stored_text(connection: fakeredis.FakeRedis) -> list[str]:
    """Every key name, field and value in Redis, whatever the type."""
    texts: list[str] = []
    for key in connection.scan_iter("*"):
        texts.append(key)
        kind = connection.type(key)
        if kind == "string":
            texts.append(connection.get(key))
        elif kind == "hash":
            for field, value in connection.hgetall(key).items():
                texts += [field, value]
        elif kind == "set":
            texts += list(connection.smembers(key))
        elif kind == "zset":
            texts += [member for member, _score in connection.zrange(key, 0, -1, withscores=True)]
        elif kind == "list":
            texts += connection.lrange(key, 0, -1)
        elif kind == "stream":
            for _entry_id, fields in connection.xrange(key):
                for field, value in fields.items():
                    texts += [field, value]
        else:  # pragma: no cover - a new key type must be added here
            raise AssertionError(f"unexpected key type {kind} for {key}")
    return texts


# -- the guessing limit ---------------------------------------------------------
def test_defaults_are_100_failures_per_hour() -> None:
    assert (Config().failure_limit, Config().failure_window) == (100, 3600)
    configured = Config.from_env({"CREGISTRY_FAILURE_LIMIT": "7", "CREGISTRY_FAILURE_WINDOW": "60"})
    assert (configured.failure_limit, configured.failure_window) == (7, 60)


def test_failures_are_counted_per_username_in_a_window(
    connection: fakeredis.FakeRedis, config: Config, device: str, users: UserStore
) -> None:
    users.add("sensor-2", "other-secret")
    verifier = verifier_for(connection, config)
    assert verifier.verify(DEVICE, WRONG) is Verdict.REFUSED
    assert verifier.failures(DEVICE) == 1
    assert connection.ttl(KEYS.user_failures(DEVICE)) == config.failure_window
    # The window runs from the first failure: later failures do not extend it.
    connection.expire(KEYS.user_failures(DEVICE), 100)
    assert verifier.verify(DEVICE, WRONG) is Verdict.REFUSED
    assert verifier.failures(DEVICE) == 2
    assert 0 < connection.ttl(KEYS.user_failures(DEVICE)) <= 100
    # Another username has its own count; a right password does not count.
    assert verifier.failures("sensor-2") == 0
    assert verifier.verify("sensor-2", "other-secret") is Verdict.ACCEPTED
    assert verifier.failures("sensor-2") == 0
    # When the window ends, the count starts again.
    connection.delete(KEYS.user_failures(DEVICE))
    assert verifier.verify(DEVICE, WRONG) is Verdict.REFUSED
    assert verifier.failures(DEVICE) == 1


def test_unknown_users_are_not_counted(connection: fakeredis.FakeRedis, config: Config) -> None:
    verifier = verifier_for(connection, config)
    for _ in range(LIMIT + 1):
        assert verifier.verify("nobody-here", WRONG) is Verdict.UNKNOWN_USER
    assert connection.keys("*") == []


def test_over_the_limit_every_attempt_is_refused_without_bcrypt(
    connection: fakeredis.FakeRedis, config: Config, device: str, verify_calls: list[str]
) -> None:
    verifier = verifier_for(connection, config)
    push_over_the_limit(verifier)
    assert len(verify_calls) == LIMIT
    verify_calls.clear()
    for _ in range(50):
        assert verifier.verify(DEVICE, WRONG) is Verdict.LIMITED
    # Even the right password: this device never connected, so there is no token.
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.LIMITED
    assert verify_calls == []
    # Refusals over the limit are not counted again (the window does not grow).
    assert verifier.failures(DEVICE) == LIMIT


def test_concurrent_guessing_costs_at_most_limit_plus_concurrency_bcrypt_checks(
    connection: fakeredis.FakeRedis, config: Config, device: str, verify_calls: list[str]
) -> None:
    verifier = verifier_for(connection, config)
    threads_count, attempts_each = 8, 10
    verdicts: list[Verdict] = []
    lock = threading.Lock()

    def guess(thread: int) -> None:
        for attempt in range(attempts_each):
            verdict = verifier.verify(DEVICE, f"guess-{thread}-{attempt}")
            with lock:
                verdicts.append(verdict)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(verdicts) == threads_count * attempts_each
    assert Verdict.ACCEPTED not in verdicts
    assert verdicts.count(Verdict.LIMITED) >= threads_count * attempts_each - (LIMIT + threads_count)
    assert LIMIT <= len(verify_calls) <= LIMIT + threads_count - 1


def test_a_verified_device_keeps_connecting_while_its_username_is_over_the_limit(
    broker: FlaskClient, device: str, verify_calls: list[str], connection: fakeredis.FakeRedis, config: Config
) -> None:
    assert connect(broker, DEVICE, PASSWORD) == (200, "")
    assert verify_calls == [PASSWORD]
    assert connection.exists(KEYS.user_verified(DEVICE))
    push_over_the_limit(verifier_for(connection, config))
    verify_calls.clear()
    for _ in range(3):
        assert connect(broker, DEVICE, PASSWORD) == (200, "")
    # A guess under any client ID but the device's own (those have a count of their own, see below).
    status, reason = connect(broker, DEVICE, WRONG, client_id="guesser")
    assert (status, reason) == (403, Verdict.LIMITED.value)
    assert verify_calls == []  # neither the device nor the guess cost bcrypt


def test_cli_clear_failures_lifts_the_limit(
    runner: CliRunner, connection: fakeredis.FakeRedis, config: Config, device: str, verify_calls: list[str]
) -> None:
    verifier = verifier_for(connection, config)
    push_over_the_limit(verifier)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.LIMITED
    result = runner.invoke(cregistry.cli.cli, ["user", "clear-failures", DEVICE])
    assert (result.exit_code, result.stdout) == (0, f"{DEVICE}: cleared {LIMIT} failed attempts\n"), result.output
    assert not connection.exists(KEYS.user_failures(DEVICE))
    verify_calls.clear()
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    assert verify_calls == [PASSWORD]
    again = runner.invoke(cregistry.cli.cli, ["user", "clear-failures", DEVICE, "--json"])
    assert again.exit_code == 0 and again.stdout.startswith("{")
    assert '"cleared": 0' in again.stdout
    invalid = runner.invoke(cregistry.cli.cli, ["user", "clear-failures", "a/b"])
    assert invalid.exit_code == 2 and invalid.stderr.startswith("Error: username must be")


def test_api_clear_failures_lifts_the_limit(
    api: FlaskClient,
    broker: FlaskClient,
    auth: dict[str, str],
    connection: fakeredis.FakeRedis,
    config: Config,
    device: str,
) -> None:
    push_over_the_limit(verifier_for(connection, config))
    # Under a client ID the user does not own (its own ignores the username's count).
    assert connect(broker, DEVICE, PASSWORD, client_id="elsewhere") == (403, Verdict.LIMITED.value)
    assert api.delete(f"/api/users/{DEVICE}/failures").status_code == 401
    assert connection.get(KEYS.user_failures(DEVICE)) == str(LIMIT)
    response = api.delete(f"/api/users/{DEVICE}/failures", headers=auth)
    assert (response.status_code, response.get_json()) == (200, {"username": DEVICE, "cleared": LIMIT})
    assert connect(broker, DEVICE, PASSWORD, client_id="elsewhere") == (200, "")
    assert api.delete("/api/users/a%2Bb/failures", headers=auth).status_code == 400


def test_clear_failures_of_an_unknown_user_is_not_found_and_changes_nothing(
    runner: CliRunner, api: FlaskClient, auth: dict[str, str], connection: fakeredis.FakeRedis
) -> None:
    result = runner.invoke(cregistry.cli.cli, ["user", "clear-failures", "nobody"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, "", "Error: no user 'nobody'\n")
    response = api.delete("/api/users/nobody/failures", headers=auth)
    assert (response.status_code, response.get_json()) == (404, {"ok": False, "error": "no user 'nobody'"})
    assert connection.keys("*") == []  # not even an audit entry


def test_rest_register_shares_the_limit_and_answers_429_limited(
    api: FlaskClient, device: str, verify_calls: list[str], connection: fakeredis.FakeRedis
) -> None:
    # 201 or 409 tells a password right from wrong: guesses through REST count too.
    for attempt in range(LIMIT):
        response = api.post(REGISTER, json={"username": DEVICE, "password": f"{WRONG}-{attempt}"})
        assert response.status_code == 409
    assert connection.get(KEYS.user_failures(DEVICE)) == str(LIMIT)
    verify_calls.clear()
    for password in (WRONG, PASSWORD):
        response = api.post(REGISTER, json={"username": DEVICE, "password": password})
        assert response.status_code == 429
        body = response.get_json()
        assert (body["ok"], body["status"]) == (False, "limited")
    assert verify_calls == []


def test_rest_register_still_grants_a_verified_device_over_the_limit(
    api: FlaskClient, broker: FlaskClient, device: str, connection: fakeredis.FakeRedis, config: Config
) -> None:
    assert connect(broker, DEVICE, PASSWORD) == (200, "")  # leaves the verified token
    push_over_the_limit(verifier_for(connection, config))
    response = api.post(REGISTER, json={"username": DEVICE, "password": PASSWORD})
    assert response.status_code == 201
    assert response.get_json() == {"status": "granted", "username": DEVICE, "pairingId": pairing_id(DEVICE, PASSWORD)}
    assert api.post(REGISTER, json={"username": DEVICE, "password": WRONG}).status_code == 429


def test_register_meets_the_guessing_limit_in_the_domain(registration: Registration, device: str) -> None:
    push_over_the_limit(registration.verifier)
    assert registration.attempt(DEVICE, PASSWORD, None, "rest").outcome is Outcome.TOO_MANY_FAILURES


# -- the verified token ----------------------------------------------------------
def test_the_token_is_an_hmac_of_user_password_and_hash_with_a_ttl(
    connection: fakeredis.FakeRedis, config: Config, device: str, users: UserStore
) -> None:
    verifier = verifier_for(connection, config)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    stored_hash = users.password_hash(DEVICE)
    assert stored_hash is not None
    token = connection.get(KEYS.user_verified(DEVICE))
    assert token == expected_token(DEVICE, PASSWORD, stored_hash)
    assert 0 < connection.ttl(KEYS.user_verified(DEVICE)) <= config.verified_ttl
    # Without the secret the token is useless: it is no plain digest of the password.
    for plain in (PASSWORD, f"{DEVICE}:{PASSWORD}", f"{DEVICE}\0{PASSWORD}\0{stored_hash}"):
        assert token != hashlib.sha256(plain.encode()).hexdigest()


def test_a_token_made_under_another_secret_is_not_accepted(
    connection: fakeredis.FakeRedis, config: Config, device: str, verify_calls: list[str]
) -> None:
    other = Config(bcrypt_cost=4, failure_limit=LIMIT, verify_secret="a1" * 32)
    assert verifier_for(connection, other).verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    verify_calls.clear()
    verifier = verifier_for(connection, config)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    assert verify_calls == [PASSWORD]  # bcrypt, not the foreign token
    # A verifier without a configured secret makes its own random one.
    unnamed = verifier_for(connection, Config(bcrypt_cost=4))
    assert len(unnamed.secret) == 32 and unnamed.secret != bytes.fromhex(SECRET)


def test_the_token_is_the_fast_path_and_a_wrong_password_never_matches_it(
    connection: fakeredis.FakeRedis, config: Config, device: str, verify_calls: list[str]
) -> None:
    verifier = verifier_for(connection, config)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    verify_calls.clear()
    for _ in range(5):
        assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    assert verify_calls == []
    # The token proves the one password bcrypt accepts: any other is refused, and counted, without bcrypt.
    assert verifier.verify(DEVICE, WRONG) is Verdict.REFUSED
    assert verify_calls == [] and verifier.failures(DEVICE) == 1
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED


def test_a_token_written_before_bindings_still_accepts_but_refuses_nothing_without_bcrypt(
    connection: fakeredis.FakeRedis, config: Config, device: str, users: UserStore, verify_calls: list[str]
) -> None:
    """An upgrade keeps devices on the fast path: a token of the old format,
    the proof alone, still accepts its password; it names no hash, so it
    cannot prove another password wrong, and bcrypt decides those."""
    stored_hash = users.password_hash(DEVICE)
    assert stored_hash is not None
    proof = expected_token(DEVICE, PASSWORD, stored_hash).partition(":")[2]
    connection.set(KEYS.user_verified(DEVICE), proof, ex=config.verified_ttl)
    verifier = verifier_for(connection, config)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    assert verify_calls == []
    assert verifier.verify(DEVICE, WRONG) is Verdict.REFUSED
    assert verify_calls == [WRONG]


def test_a_token_binds_only_under_its_own_secret_and_hash(
    connection: fakeredis.FakeRedis, config: Config, device: str, users: UserStore, verify_calls: list[str]
) -> None:
    """A token made under another secret (the service restarted without
    CREGISTRY_VERIFY_SECRET) or for another stored hash proves nothing: the
    right password still passes, by bcrypt, instead of being refused."""
    stored_hash = users.password_hash(DEVICE)
    assert stored_hash is not None
    verifier = verifier_for(connection, config)
    for foreign in (
        expected_token(DEVICE, "older-password", stored_hash, secret="a1" * 32),
        expected_token(DEVICE, "older-password", hash_password("older-password", 4)),
    ):
        connection.set(KEYS.user_verified(DEVICE), foreign, ex=config.verified_ttl)
        verify_calls.clear()
        assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
        assert verify_calls == [PASSWORD]


def test_deleting_the_user_invalidates_the_token(
    connection: fakeredis.FakeRedis, config: Config, device: str, users: UserStore, verify_calls: list[str]
) -> None:
    verifier = verifier_for(connection, config)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    verifier.verify(DEVICE, WRONG)
    users.delete(DEVICE)
    assert connection.keys(f"*{{{DEVICE}}}*") == []  # token and failure count are gone with the user
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.UNKNOWN_USER
    # Re-created with the same password: a fresh bcrypt check, not the old token.
    users.add(DEVICE, PASSWORD)
    verify_calls.clear()
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    assert verify_calls == [PASSWORD]


def test_a_changed_stored_hash_invalidates_the_token(
    connection: fakeredis.FakeRedis, config: Config, device: str, verify_calls: list[str]
) -> None:
    verifier = verifier_for(connection, config)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    old_token = connection.get(KEYS.user_verified(DEVICE))
    connection.hset(KEYS.user(DEVICE), "passwordHash", hash_password("replacement-secret", 4))
    verify_calls.clear()
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.REFUSED
    assert verify_calls == [PASSWORD]
    assert verifier.verify(DEVICE, "replacement-secret") is Verdict.ACCEPTED
    assert connection.get(KEYS.user_verified(DEVICE)) != old_token
    # The same password hashed again (new salt) also needs a new bcrypt check.
    connection.hset(KEYS.user(DEVICE), "passwordHash", hash_password("replacement-secret", 4))
    verify_calls.clear()
    assert verifier.verify(DEVICE, "replacement-secret") is Verdict.ACCEPTED
    assert verify_calls == ["replacement-secret"]


def test_a_token_copied_to_another_user_grants_nothing(
    connection: fakeredis.FakeRedis, config: Config, device: str, users: UserStore
) -> None:
    users.add("sensor-2", "other-secret")
    verifier = verifier_for(connection, config)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    connection.set(KEYS.user_verified("sensor-2"), connection.get(KEYS.user_verified(DEVICE)))
    assert verifier.verify("sensor-2", PASSWORD) is Verdict.REFUSED


def test_a_verify_racing_a_delete_leaves_no_token_that_a_recreated_user_accepts(
    connection: fakeredis.FakeRedis,
    config: Config,
    device: str,
    users: UserStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verifier = verifier_for(connection, config)
    original = cregistry.passwords.verify_password
    calls: list[str] = []

    def delete_during_bcrypt(password: str, password_hash: str) -> bool:
        calls.append(password)
        if len(calls) == 1:
            users.delete(DEVICE)
        return original(password, password_hash)

    monkeypatch.setattr(cregistry.passwords, "verify_password", delete_during_bcrypt)
    verifier.verify(DEVICE, PASSWORD)  # decided on the hash it read before the delete
    users.add(DEVICE, PASSWORD)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    assert calls == [PASSWORD, PASSWORD]  # the re-created user got a bcrypt check
    assert verifier.verify(DEVICE, WRONG) is Verdict.REFUSED


def test_nothing_in_redis_holds_a_plaintext_password(
    api: FlaskClient,
    broker: FlaskClient,
    auth: dict[str, str],
    connection: fakeredis.FakeRedis,
) -> None:
    passwords = {"sensor-7": "plain-device-7", "sensor-8": "plain-device-8", "sensor-9": "plain-device-9"}
    assert api.post("/api/client-registry/unlock", headers=auth).status_code == 200
    assert connect(broker, "sensor-7", passwords["sensor-7"], "sensor-7")[0] == 403
    assert api.post(REGISTER, json={"username": "sensor-8", "password": passwords["sensor-8"]}).status_code == 202
    assert connect(broker, "sensor-9", passwords["sensor-9"], "sensor-9")[0] == 403
    for username in ("sensor-7", "sensor-8"):
        request_id = f"{username}:{pairing_id(username, passwords[username])}"
        assert api.post(f"/api/client-registry/requests/{request_id}/approve", headers=auth).status_code == 201
    added = api.post("/api/users", json={"username": "backend", "password": "plain-operator-1"}, headers=auth)
    assert added.status_code == 201
    passwords["backend"] = "plain-operator-1"
    assert connect(broker, "sensor-7", passwords["sensor-7"], "sensor-7")[0] == 200
    assert api.post(REGISTER, json={"username": "sensor-8", "password": passwords["sensor-8"]}).status_code == 201
    assert connect(broker, "backend", passwords["backend"], "backend")[0] == 200
    for attempt in range(LIMIT + 1):
        assert connect(broker, "sensor-8", f"plain-guess-{attempt}")[0] == 403
    assert connection.exists(KEYS.user_verified("sensor-7"), KEYS.user_failures("sensor-8")) == 2
    secrets = [*passwords.values(), *(f"plain-guess-{n}" for n in range(LIMIT + 1))]
    digests = [hashlib.sha256(s.encode()).hexdigest() for s in secrets]
    digests += [hashlib.sha256(f"{u}:{p}".encode()).hexdigest() for u, p in passwords.items()]
    stored = every_stored_text(connection)
    assert len(stored) > 30
    for text in stored:
        for secret in secrets + digests:
            assert secret not in text, (secret, text)


# -- bcrypt work for registrations -------------------------------------------------
def test_busy_registration_slots_refuse_new_attempts_without_bcrypt(
    connection: fakeredis.FakeRedis,
    config: Config,
    device: str,
    hash_calls: list[str],
    verify_calls: list[str],
) -> None:
    limits = WorkLimits(config)
    domain = services.build(connection, config, limits=limits)
    lock, registration = domain.lock, domain.registration
    lock.unlock()
    assert registration.record_attempt("waiting-1", "waiting-secret", "c", "mqtt").outcome is Outcome.RECORDED
    hash_calls.clear()
    keys_before = sorted(connection.keys("*"))
    assert limits.registration_slots.acquire(blocking=False)  # another registration is hashing
    try:
        assert registration.record_attempt("newcomer", "newcomer-secret", "c", "mqtt").outcome is Outcome.BUSY
        assert hash_calls == []
        assert sorted(connection.keys("*")) == keys_before
        # A request already recorded needs no hashing and is still counted.
        assert registration.record_attempt("waiting-1", "waiting-secret", "c", "mqtt").outcome is Outcome.REPEATED
        # Known devices use their own slots.
        assert domain.verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
        assert verify_calls == [PASSWORD]
    finally:
        limits.registration_slots.release()
    assert registration.record_attempt("newcomer", "newcomer-secret", "c", "mqtt").outcome is Outcome.RECORDED
    assert hash_calls == ["newcomer-secret"]


def test_busy_registration_slots_through_the_routes(
    connection: fakeredis.FakeRedis,
    config: Config,
    registration: Registration,
    device: str,
    hash_calls: list[str],
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    limits = WorkLimits(config)
    broker = create_app(config, listener="broker", connection=connection, limits=limits).test_client()
    api = create_app(config, listener="api", connection=connection, limits=limits).test_client()
    lock.unlock()
    hash_calls.clear()
    assert limits.registration_slots.acquire(blocking=False)
    try:
        status, reason = connect(broker, "newcomer", "newcomer-secret", "newcomer-1")
        assert status == 403 and "not recorded" in reason
        response = api.post(REGISTER, json={"username": "newcomer", "password": "newcomer-secret"})
        assert (response.status_code, response.get_json()["status"]) == (429, "limited")
        assert connect(broker, DEVICE, PASSWORD) == (200, "")
    finally:
        limits.registration_slots.release()
    assert hash_calls == []
    assert requests.list_requests() == []
    assert registration.attempt("newcomer", "newcomer-secret", None, "rest").outcome is Outcome.RECORDED


def test_an_attempt_racing_an_approval_records_no_request_for_the_new_user(
    monkeypatch: pytest.MonkeyPatch,
    registration: Registration,
    lock: RegistryLock,
    requests: PendingRequests,
    domain: services.Services,
) -> None:
    """An attempt that found the username unknown hashes for a while; if the
    operator approves another candidate of that username meanwhile, the user
    exists when the attempt writes, and it must not leave a request behind
    (approving one request removes the others for that username)."""
    lock.unlock()
    registration.record_attempt("twin", "first-secret", "c", "mqtt")
    original = cregistry.passwords.hash_password

    def approve_meanwhile(password: str, cost: int) -> str:
        requests.approve("twin", pairing_id("twin", "first-secret"))
        return original(password, cost)

    monkeypatch.setattr(cregistry.passwords, "hash_password", approve_meanwhile)
    outcome = registration.record_attempt("twin", "second-secret", "c", "mqtt").outcome
    assert domain.users.exists("twin")
    assert outcome is not Outcome.RECORDED
    assert requests.requests_for("twin") == []
    assert requests.list_requests() == []


def thread_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="only Linux gives each thread its own nice value")
def test_bcrypt_runs_at_the_lowest_cpu_priority_and_the_caller_keeps_its_own(
    monkeypatch: pytest.MonkeyPatch, connection: fakeredis.FakeRedis, config: Config, device: str
) -> None:
    """A guess's bcrypt and a registration's never take the CPU from the
    broker: they run on threads at HASHING_NICE, for a CONNECT's password
    check and for a new request's hash."""
    seen: list[tuple[str, int, str]] = []
    verify, hash_ = cregistry.passwords.verify_password, cregistry.passwords.hash_password

    def verify_seen(password: str, password_hash: str) -> bool:
        seen.append(("verify", thread_priority(), threading.current_thread().name))
        return verify(password, password_hash)

    def hash_seen(password: str, cost: int) -> str:
        seen.append(("hash", thread_priority(), threading.current_thread().name))
        return hash_(password, cost)

    monkeypatch.setattr(cregistry.passwords, "verify_password", verify_seen)
    monkeypatch.setattr(cregistry.passwords, "hash_password", hash_seen)
    caller = thread_priority()
    domain = services.build(connection, config, limits=WorkLimits(config))
    assert domain.verifier.verify(DEVICE, WRONG, "client-1") is Verdict.REFUSED
    domain.lock.unlock()
    assert domain.registration.record_attempt("newcomer", "first-secret", "c", "mqtt").outcome is Outcome.RECORDED
    assert [kind for kind, _, _ in seen] == ["verify", "hash"]
    assert {(priority, name.startswith("bcrypt")) for _, priority, name in seen} == {(HASHING_NICE, True)}
    assert thread_priority() == caller


@pytest.fixture
def saturated_verify_slots(config: Config) -> Iterator[WorkLimits]:
    """Every bcrypt slot taken, as under a storm of first connects."""
    limits = WorkLimits(config)
    for _ in range(config.bcrypt_concurrency):
        assert limits.verify_slots.acquire(blocking=False)
    yield limits
    for _ in range(config.bcrypt_concurrency):
        limits.verify_slots.release()


def test_saturated_bcrypt_slots_answer_503_in_time_but_tokens_still_pass(
    connection: fakeredis.FakeRedis, config: Config, device: str, saturated_verify_slots: WorkLimits
) -> None:
    verifier_for(connection, config).verify(DEVICE, PASSWORD)  # the device connected before
    broker = create_app(config, listener="broker", connection=connection, limits=saturated_verify_slots).test_client()
    assert connect(broker, DEVICE, PASSWORD) == (200, "")
    connection.delete(KEYS.user_verified(DEVICE))  # lapsed: now a wrong password needs bcrypt
    started = time.monotonic()
    response = broker.post("/mqtt/user", json={"username": DEVICE, "password": WRONG, "clientid": "c"})
    assert response.status_code == 503 and response.get_json()["ok"] is False
    assert time.monotonic() - started < 2.0


def test_verify_refuses_invalid_names_for_clear_failures(connection: fakeredis.FakeRedis, config: Config) -> None:
    with pytest.raises(InvalidInput):
        verifier_for(connection, config).clear_failures("bad name")
    assert connection.keys("*") == []


def test_a_password_check_gives_up_on_a_bcrypt_slot_after_its_budget(
    connection: fakeredis.FakeRedis, config: Config, device: str
) -> None:
    """Every slot held: the check raises PasswordChecksBusy (a 503) after the
    slot timeout instead of holding its thread until a slot frees."""
    limits = WorkLimits(config, slot_timeout=0.05)
    for _ in range(config.bcrypt_concurrency):
        assert limits.verify_slots.acquire(blocking=False)
    verifier = services.build(connection, config, limits=limits).verifier
    outcome: list[BaseException | Verdict] = []

    def check() -> None:
        try:
            outcome.append(verifier.verify(DEVICE, WRONG))
        except PasswordChecksBusy as error:
            outcome.append(error)

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(30)  # a wait without a timeout never ends here: the slots are never released
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], PasswordChecksBusy)
    assert "CREGISTRY_BCRYPT_CONCURRENCY" in str(outcome[0])
    assert verifier.failures(DEVICE) == 0  # nothing decided, nothing counted
    for _ in range(config.bcrypt_concurrency):
        limits.verify_slots.release()
    assert verifier.verify(DEVICE, WRONG) is Verdict.REFUSED  # with a slot free the check runs


# -- no lockout by guessing (issue 21, item 5) -----------------------------------
def test_a_token_match_renews_the_token_at_most_once_per_step(
    connection: fakeredis.FakeRedis, config: Config, device: str
) -> None:
    verifier = verifier_for(connection, config)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    key = KEYS.user_verified(DEVICE)
    connection.expire(key, config.verified_ttl - 10)  # matched 10 s ago: no write now
    assert verifier.verify_by_token(DEVICE, PASSWORD)
    assert verifier.verify(DEVICE, PASSWORD) is Verdict.ACCEPTED
    assert connection.ttl(key) <= config.verified_ttl - 10
    for check in (lambda: verifier.verify_by_token(DEVICE, PASSWORD), lambda: verifier.verify(DEVICE, PASSWORD)):
        connection.expire(key, 60)  # about to lapse: a match keeps it for another verified TTL
        assert check()
        assert connection.ttl(key) > config.verified_ttl - 10
    # A wrong password renews nothing.
    connection.expire(key, 60)
    assert verifier.verify_by_token(DEVICE, WRONG) is False
    assert connection.ttl(key) <= 60


def test_guessing_under_other_client_ids_never_keeps_the_device_out(
    connection: fakeredis.FakeRedis, config: Config, device: str, verify_calls: list[str]
) -> None:
    """The token lapsed, or the service restarted without VERIFY_SECRET (a
    verifier with another secret): the guesser fills the username's count,
    which the device's own client ID ignores. Both sides measured."""
    guesser = verifier_for(connection, config)
    verdicts = [guesser.verify(DEVICE, f"guess-{n}", f"guesser-{n % 7}") for n in range(300)]
    assert verdicts.count(Verdict.REFUSED) == LIMIT and verdicts.count(Verdict.LIMITED) == 300 - LIMIT
    assert len(verify_calls) == LIMIT  # the guesser's bcrypt work and guesses: the limit, no more
    assert guesser.verify(DEVICE, PASSWORD, "guesser-1") is Verdict.LIMITED  # even the right one, elsewhere
    restarted = verifier_for(connection, Config(bcrypt_cost=4, failure_limit=LIMIT, verify_secret="a1" * 32))
    # The client ID of its approved request is the device's own.
    assert restarted.verify(DEVICE, PASSWORD, "client-1") is Verdict.ACCEPTED
    assert restarted.verify(DEVICE, PASSWORD, "") is Verdict.ACCEPTED  # the token it just got
    assert connection.sismember(KEYS.user_known_clients(DEVICE), "client-1")


def test_guessing_under_the_devices_own_client_id_leaves_it_a_try_per_interval(
    connection: fakeredis.FakeRedis, config: Config, device: str, verify_calls: list[str]
) -> None:
    """Whoever wears the device's client ID fills that ID's own count; over
    it, one bcrypt try per failure_window / failure_limit seconds is left,
    which the device takes when the guesser has not."""
    verifier = verifier_for(connection, config)
    verdicts = [verifier.verify(DEVICE, f"guess-{n}", "client-1") for n in range(200)]
    # LIMIT guesses, then the interval's one try, then nothing more.
    assert verdicts.count(Verdict.REFUSED) == LIMIT + 1 and verdicts.count(Verdict.LIMITED) == 200 - LIMIT - 1
    assert len(verify_calls) == LIMIT + 1
    assert 0 < connection.ttl(KEYS.user_limited_try(DEVICE, "client-1")) <= config.failure_window // LIMIT
    assert verifier.verify(DEVICE, PASSWORD, "client-1") is Verdict.LIMITED  # the guesser took this interval's try
    connection.delete(KEYS.user_limited_try(DEVICE, "client-1"))  # the interval is over
    assert verifier.verify(DEVICE, PASSWORD, "client-1") is Verdict.ACCEPTED
    # Other client IDs are still limited by the username's count.
    assert verifier.verify(DEVICE, f"{WRONG}-x", "guesser") is Verdict.LIMITED


def test_a_password_change_forgets_the_client_ids_that_proved_the_old_one(
    connection: fakeredis.FakeRedis, config: Config, device: str, users: UserStore
) -> None:
    verifier = verifier_for(connection, config)
    assert verifier.verify(DEVICE, PASSWORD, "laptop") is Verdict.ACCEPTED
    assert connection.sismember(KEYS.user_known_clients(DEVICE), "laptop")
    users.set_password(DEVICE, "a-new-secret-1")
    assert not connection.exists(KEYS.user_known_clients(DEVICE))
    users.delete(DEVICE)
    assert [key for key in connection.keys(f"*{{{DEVICE}}}*")] == []
