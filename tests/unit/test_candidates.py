"""Candidates by exact credentials (SPEC §2): an attacker who has seen a
device's pairing ID and made a password with the same one cannot hijack,
shut out or silently replace the device's request; floods and squatting
can be undone by an operator."""

from __future__ import annotations

import json

import fakeredis
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

import cregistry.cli
from cregistry import services
from cregistry.config import Config
from cregistry.errors import AmbiguousRequest, RequestContested
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.passwords import pairing_id, verify_password
from cregistry.pending import PendingRequests
from cregistry.registration import Outcome, Registration
from cregistry.users import UserStore

from .conftest import FakeClock

KEYS = Keys("cregistry")
USERNAME = "sensor-1"
DEVICE_PASSWORD = "secret1"
# Found by brute force over "x<N>" (24 bits: seconds of one core): same pairing ID, other password.
ATTACKER_PASSWORD = "x13401315"
PAIRING = "e2d3f8"


def test_the_attacker_password_collides() -> None:
    assert pairing_id(USERNAME, DEVICE_PASSWORD) == pairing_id(USERNAME, ATTACKER_PASSWORD) == PAIRING
    assert DEVICE_PASSWORD != ATTACKER_PASSWORD


def both_try(registration: Registration, lock: RegistryLock) -> None:
    """The attacker registers first with a colliding password; the device tries after it."""
    lock.unlock()
    assert registration.attempt(USERNAME, ATTACKER_PASSWORD, "evil", "mqtt").outcome is Outcome.RECORDED
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.RECORDED


def test_a_colliding_password_is_a_candidate_of_its_own_and_both_are_contested(
    registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    both_try(registration, lock)
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.REPEATED
    listed = {r.client_id: r for r in requests.list_requests()}
    assert set(listed) == {"evil", "dev"}
    assert listed["evil"].id == f"{USERNAME}:{PAIRING}"
    assert listed["dev"].id == f"{USERNAME}:{PAIRING}-2"
    assert {r.pairing_id for r in listed.values()} == {PAIRING}
    assert all(r.contested for r in listed.values())
    # The device's repeat counted on its own candidate, never the attacker's.
    assert (listed["dev"].attempts, listed["evil"].attempts) == (2, 1)
    assert verify_password(DEVICE_PASSWORD, listed["dev"].password_hash)
    assert not verify_password(DEVICE_PASSWORD, listed["evil"].password_hash)


def test_approving_a_contested_candidate_needs_force_and_otherwise_changes_nothing(
    connection: fakeredis.FakeRedis,
    registration: Registration,
    lock: RegistryLock,
    requests: PendingRequests,
    users: UserStore,
) -> None:
    both_try(registration, lock)
    before = {key: connection.dump(key) for key in connection.keys("*") if key != KEYS.audit()}
    with pytest.raises(RequestContested, match="contested"):
        requests.approve(USERNAME, candidate=f"{PAIRING}-2")
    assert {key: connection.dump(key) for key in connection.keys("*") if key != KEYS.audit()} == before
    # By pairing ID alone it cannot say which: the operator names the request id.
    with pytest.raises(AmbiguousRequest, match=f"{USERNAME}:{PAIRING}-2"):
        requests.approve(USERNAME, PAIRING, force=True)
    user = requests.approve(USERNAME, candidate=f"{PAIRING}-2", force=True)
    assert user.client_id == "dev"
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.ACCEPTED
    assert registration.attempt(USERNAME, ATTACKER_PASSWORD, "evil", "mqtt").outcome is Outcome.WRONG_PASSWORD
    assert requests.list_requests() == []


def test_an_uncontested_request_needs_no_force(
    registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt")
    [request] = requests.list_requests()
    assert request.contested is False
    assert requests.approve(USERNAME, candidate=request.candidate).client_id == "dev"


def test_denying_the_attacker_does_not_shut_out_the_device(
    registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    both_try(registration, lock)
    requests.deny(USERNAME, candidate=PAIRING)
    assert registration.attempt(USERNAME, ATTACKER_PASSWORD, "evil", "mqtt").outcome is Outcome.DENIED
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.REPEATED
    [left] = requests.list_requests()
    assert (left.client_id, left.contested) == ("dev", False)
    # Once alone, it is approved without force.
    assert requests.approve(USERNAME, PAIRING).client_id == "dev"


def test_a_denial_made_before_a_new_colliding_attempt_refuses_only_those_credentials(
    connection: fakeredis.FakeRedis, registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    registration.attempt(USERNAME, ATTACKER_PASSWORD, "evil", "mqtt")
    requests.deny(USERNAME)
    assert PAIRING not in connection.hkeys(KEYS.user_denials(USERNAME))
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.RECORDED


def test_no_password_and_no_unkeyed_digest_at_rest(
    connection: fakeredis.FakeRedis, registration: Registration, lock: RegistryLock
) -> None:
    import hashlib

    lock.unlock()
    registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt")
    dump = json.dumps({key: connection.hgetall(key) for key in connection.keys("*:request:*")})
    assert DEVICE_PASSWORD not in dump
    for text in (DEVICE_PASSWORD, f"{USERNAME}:{DEVICE_PASSWORD}", f"{USERNAME}\0{DEVICE_PASSWORD}"):
        for algorithm in ("sha256", "sha1", "md5", "sha512"):
            assert hashlib.new(algorithm, text.encode()).hexdigest() not in dump


def test_a_candidate_recorded_under_another_secret_is_still_recognised(
    connection: fakeredis.FakeRedis, config: Config, clock: FakeClock, requests: PendingRequests
) -> None:
    """A restart without CREGISTRY_VERIFY_SECRET: the digest cannot match, bcrypt decides."""
    before = services.build(connection, config, clock=clock)
    after = services.build(connection, config, clock=clock)
    assert before.verifier.candidate_key_id != after.verifier.candidate_key_id
    before.lock.unlock()
    assert before.registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.RECORDED
    assert after.registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.REPEATED
    assert after.registration.attempt(USERNAME, ATTACKER_PASSWORD, "evil", "mqtt").outcome is Outcome.RECORDED
    listed = {r.client_id: r for r in requests.list_requests()}
    assert listed["dev"].attempts == 2
    assert listed["dev"].contested and listed["evil"].contested


# -- the deny race ------------------------------------------------------------------
def test_a_deny_racing_a_retry_wins(
    registration: Registration, lock: RegistryLock, requests: PendingRequests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry read "pending, not denied"; the operator denies before it
    counts the attempt, so it finds the request gone and records anew. The
    denial is read again under the insert's WATCH: the request stays denied."""
    lock.unlock()
    registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt")
    touch = registration._touch

    def deny_first(*args: object, **kwargs: object) -> bool:
        requests.deny(USERNAME)
        return touch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registration, "_touch", deny_first)
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.DENIED
    assert requests.list_requests() == []


def test_polling_in_a_tight_loop_never_keeps_the_operator_from_deciding(
    registration: Registration, lock: RegistryLock, requests: PendingRequests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both devices count an attempt inside every approve and deny transaction
    (between its WATCH and its EXEC): counted attempts are no conflict, so
    the operator's decision goes through at once instead of giving up."""
    both_try(registration, lock)
    choose = requests._choose

    def poll_meanwhile(*args: object, **kwargs: object) -> str:
        chosen = choose(*args, **kwargs)  # type: ignore[arg-type]
        for password in (ATTACKER_PASSWORD, DEVICE_PASSWORD):
            registration.attempt(USERNAME, password, "", "mqtt")
        return chosen

    monkeypatch.setattr(requests, "_choose", poll_meanwhile)
    assert requests.deny(USERNAME, candidate=PAIRING).client_id == "evil"
    assert requests.approve(USERNAME, candidate=f"{PAIRING}-2").client_id == "dev"
    assert requests.list_requests() == []


def test_an_attempt_renews_a_request_at_most_once_per_step(
    connection: fakeredis.FakeRedis, registration: Registration, lock: RegistryLock, config: Config
) -> None:
    """Renewing touches the watched candidate set: a poll in a tight loop does not, a later one does."""
    lock.unlock()
    registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt")
    key = KEYS.request(USERNAME, PAIRING)
    connection.expire(key, config.pending_ttl - 10)  # renewed 10 s ago
    registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt")
    assert connection.ttl(key) <= config.pending_ttl - 10
    connection.expire(key, config.pending_ttl - 61)  # renewed more than a step (60 s) ago
    registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt")
    assert connection.ttl(key) > config.pending_ttl - 10
    assert connection.hget(key, "attempts") == "3"


# -- floods -------------------------------------------------------------------------
def test_attempts_while_locked_are_counted_but_never_extend_a_request(
    connection: fakeredis.FakeRedis, registration: Registration, lock: RegistryLock, config: Config
) -> None:
    lock.unlock()
    registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt")
    key = KEYS.request(USERNAME, PAIRING)
    connection.expire(key, 100)
    connection.zadd(KEYS.pending_index(), {f"{USERNAME}:{PAIRING}": registration.clock() + 100})
    lock.lock()
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.REPEATED
    assert connection.hget(key, "attempts") == "2"
    assert 0 < connection.ttl(key) <= 100
    assert connection.zscore(KEYS.pending_index(), f"{USERNAME}:{PAIRING}") == registration.clock() + 100
    lock.unlock()
    registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt")
    assert connection.ttl(key) > 100 and connection.ttl(key) <= config.pending_ttl


def test_purge_removes_every_request_and_denies_none(
    connection: fakeredis.FakeRedis, registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    for n in range(5):
        registration.attempt(f"junk-{n}", "secret1", "", "mqtt")
    assert requests.purge() == 5
    assert requests.list_requests() == [] and requests.count_requests() == 0
    assert connection.keys("*:request:*") == []
    assert registration.attempt("junk-1", "secret1", "", "mqtt").outcome is Outcome.RECORDED
    assert requests.purge() == 1
    assert requests.purge() == 0


def test_refused_attempts_over_the_username_cap_are_counted_and_deny_all_frees_it(
    registration: Registration, lock: RegistryLock, requests: PendingRequests, config: Config
) -> None:
    lock.unlock()
    for n in range(config.pending_per_username):
        registration.attempt(USERNAME, f"junk-{n}", "", "mqtt")
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.PENDING_CAP
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.PENDING_CAP
    assert {r.refused_attempts for r in requests.list_requests()} == {2}
    assert {r.refused_attempts for r in requests.requests_for(USERNAME)} == {2}
    assert len(requests.deny_all(USERNAME)) == config.pending_per_username
    assert registration.attempt(USERNAME, "junk-0", "", "mqtt").outcome is Outcome.DENIED
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.RECORDED


# -- the admin API ------------------------------------------------------------------
def test_api_shows_contested_and_approves_only_with_force(
    api: FlaskClient, auth: dict[str, str], registration: Registration, lock: RegistryLock
) -> None:
    both_try(registration, lock)
    listed = api.get("/api/client-registry/requests", headers=auth).get_json()["requests"]
    assert [r["contested"] for r in listed] == [True, True]
    url = f"/api/client-registry/requests/{USERNAME}:{PAIRING}-2/approve"
    refused = api.post(url, headers=auth)
    assert refused.status_code == 409 and "contested" in refused.get_json()["error"]
    assert api.post(url, headers=auth, json={"force": False}).status_code == 409
    assert api.post(url, headers=auth, json={"force": "yes"}).status_code == 400
    assert api.post(url, headers=auth, json={"forced": True}).status_code == 400
    assert api.get(f"/api/users/{USERNAME}", headers=auth).status_code == 404
    approved = api.post(url, headers=auth, json={"force": True})
    assert approved.status_code == 201 and approved.get_json()["clientId"] == "dev"


def test_api_purge(api: FlaskClient, auth: dict[str, str], registration: Registration, lock: RegistryLock) -> None:
    both_try(registration, lock)
    assert api.delete("/api/client-registry/requests").status_code == 401
    answer = api.delete("/api/client-registry/requests", headers=auth)
    assert (answer.status_code, answer.get_json()) == (200, {"removed": 2})
    assert api.get("/api/client-registry/requests", headers=auth).get_json()["requests"] == []


def test_api_deny_all_denies_every_candidate_of_a_squatted_username(
    api: FlaskClient,
    auth: dict[str, str],
    registration: Registration,
    lock: RegistryLock,
    config: Config,
    requests: PendingRequests,
) -> None:
    """The operator sees refused attempts on a squatted username and denies all of
    its candidates through any one of them; the real device then gets a request."""
    lock.unlock()
    for n in range(config.pending_per_username):
        registration.attempt(USERNAME, f"junk-{n}", "", "mqtt")
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.PENDING_CAP
    listed = api.get("/api/client-registry/requests", headers=auth).get_json()["requests"]
    assert {r["refusedAttempts"] for r in listed} == {1}
    url = f"/api/client-registry/requests/{listed[0]['id']}/deny-all"
    assert api.post(url).status_code == 401
    answer = api.post(url, headers=auth)
    assert answer.status_code == 200
    assert sorted(r["id"] for r in answer.get_json()["denied"]) == sorted(r["id"] for r in listed)
    assert requests.requests_for(USERNAME) == []
    assert api.post(url, headers=auth).status_code == 404
    assert registration.attempt(USERNAME, "junk-1", "", "mqtt").outcome is Outcome.DENIED
    assert registration.attempt(USERNAME, DEVICE_PASSWORD, "dev", "mqtt").outcome is Outcome.RECORDED
    assert [r.refused_attempts for r in requests.requests_for(USERNAME)] == [0]


# -- the CLI ------------------------------------------------------------------------
def run(runner: CliRunner, *args: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return runner.invoke(cregistry.cli.cli, list(args), **kwargs)


def test_cli_marks_contested_and_approves_one_by_request_id_with_force(
    runner: CliRunner, registration: Registration, lock: RegistryLock, users: UserStore
) -> None:
    both_try(registration, lock)
    table = run(runner, "requests")
    assert table.exit_code == 0
    assert table.stdout.count("CONTESTED") == 2
    assert json.loads(run(runner, "requests", "--json").stdout)["requests"][0]["contested"] is True
    ambiguous = run(runner, "approve", USERNAME, "--pairing-id", PAIRING)
    assert ambiguous.exit_code != 0 and f"{USERNAME}:{PAIRING}-2" in ambiguous.stderr
    unforced = run(runner, "approve", USERNAME, "--request", f"{USERNAME}:{PAIRING}-2")
    assert unforced.exit_code != 0 and "contested" in unforced.stderr
    assert run(runner, "deny", USERNAME, "--request", f"{USERNAME}:{PAIRING}").exit_code == 0
    approved = run(runner, "approve", USERNAME, "--request", f"{USERNAME}:{PAIRING}-2")
    assert approved.exit_code == 0, approved.output
    assert users.get(USERNAME).client_id == "dev"


def test_cli_purge_asks_unless_yes(runner: CliRunner, registration: Registration, lock: RegistryLock) -> None:
    both_try(registration, lock)
    declined = run(runner, "requests", "purge", input="n\n")
    assert declined.exit_code != 0
    assert json.loads(run(runner, "requests", "--json").stdout)["total"] == 2
    assert run(runner, "requests", "purge", input="y\n").exit_code == 0
    both_try(registration, lock)
    result = run(runner, "--json", "requests", "purge", "--yes")
    assert (result.exit_code, json.loads(result.stdout)) == (0, {"removed": 2})


def test_cli_deny_all(runner: CliRunner, registration: Registration, lock: RegistryLock) -> None:
    both_try(registration, lock)
    result = run(runner, "deny", USERNAME, "--all")
    assert (result.exit_code, result.stdout) == (0, f"denied 2 requests for {USERNAME}\n")
