"""Fleet enrollment (SPEC §13): the rules in enrollments.py and the admin
and register routes on fakeredis."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient

from cregistry import instruments, services
from cregistry.config import Config
from cregistry.enrollments import ONE_REFUSAL, Enrollments, Outcome
from cregistry.errors import EnrollmentExists, EnrollmentNotFound, InvalidInput
from cregistry.keys import Keys
from cregistry.passwords import pairing_id
from cregistry.users import UserStore
from cregistry.web import create_app

from .conftest import FakeClock
from .test_api import snapshot

KEYS = Keys("cregistry")
REGISTER = "/api/client-registry/register"
SECRET_HEX = "ab" * 32


@pytest.fixture
def config() -> Config:
    return Config(bcrypt_cost=4, admin_token="test-admin-token", verify_secret=SECRET_HEX, enrollment_failure_limit=50)


@pytest.fixture
def api(config: Config, connection: fakeredis.FakeRedis, clock: FakeClock) -> FlaskClient:
    """The API app on the same clock as the domain fixtures."""
    return create_app(config, listener="api", connection=connection, clock=clock).test_client()


@pytest.fixture
def enrollments(domain: services.Services) -> Enrollments:
    return domain.enrollments


@pytest.fixture
def sensors_role(users: UserStore) -> str:
    users.roles.grant("sensors", "sensors/%u/#", "readWrite")
    return "sensors"


@pytest.fixture
def token(enrollments: Enrollments, sensors_role: str) -> str:
    return enrollments.create("line-3", "line3-*", [sensors_role], 2, 3600, actor="cli:test").token


def register(
    enrollments: Enrollments, token: object, username: str = "line3-001", password: str = "secret-1", **kw: Any
) -> Any:
    return enrollments.register(token, username, password, kw.get("client_id", f"{username}-cid"), "192.0.2.1")


# -- creating -------------------------------------------------------------------
def test_create_makes_a_long_token_and_stores_only_its_digest(
    enrollments: Enrollments, sensors_role: str, connection: fakeredis.FakeRedis, clock: FakeClock
) -> None:
    created = enrollments.create("line-3", "line3-*", [sensors_role], 500, 86400, actor="api:admin")
    assert len(created.token) >= 43  # 32 random bytes in URL-safe base64: 256 bits
    assert created.enrollment.to_dict() == {
        "name": "line-3",
        "usernamePattern": "line3-*",
        "roles": ["sensors"],
        "maxUses": 500,
        "usesLeft": 500,
        "expiresAt": "2027-01-16T08:00:00Z",
        "createdBy": "api:admin",
        "createdAt": "2027-01-15T08:00:00Z",
        "removedUsers": [],
    }
    everything = repr(snapshot(connection)) + repr(connection.keys("*"))
    assert created.token not in everything
    assert connection.hget(KEYS.enrollment("line-3"), "tokenDigest") == enrollments.digest(created.token)
    # Every key of the enrollment expires with it.
    for key in (KEYS.enrollment("line-3"), KEYS.enrollment_token(enrollments.digest(created.token))):
        assert 86390 < connection.ttl(key) <= 86401
    assert enrollments.list_enrollments() == [created.enrollment]


def test_the_digest_is_keyed_by_the_verify_secret(connection: fakeredis.FakeRedis, config: Config) -> None:
    one = services.build(connection, config).enrollments
    same = services.build(connection, config).enrollments
    other = services.build(connection, dataclasses.replace(config, verify_secret="cd" * 32)).enrollments
    assert one.digest("tok") == same.digest("tok") != other.digest("tok")


@pytest.mark.parametrize(
    ("field", "arguments"),
    [
        ("name", {"name": "x"}),
        ("name", {"name": "line/3"}),
        ("name", {"name": 3}),
        ("usernamePattern", {"username_pattern": ""}),
        ("usernamePattern", {"username_pattern": "line3/*"}),
        ("usernamePattern", {"username_pattern": "line3-[0-9"}),
        ("usernamePattern", {"username_pattern": "a" * 129}),
        ("usernamePattern", {"username_pattern": None}),
        ("roles", {"roles": ["nobody-has-this"]}),
        ("roles", {"roles": "sensors"}),
        ("roles", {"roles": ["bad/role"]}),
        ("maxUses", {"max_uses": 0}),
        ("maxUses", {"max_uses": 100_001}),
        ("maxUses", {"max_uses": True}),
        ("maxUses", {"max_uses": "5"}),
        ("expiresIn", {"expires_in": 59}),
        ("expiresIn", {"expires_in": 365 * 24 * 3600 + 1}),
        ("expiresIn", {"expires_in": 1.5}),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(
    enrollments: Enrollments, sensors_role: str, connection: fakeredis.FakeRedis, field: str, arguments: dict[str, Any]
) -> None:
    values: dict[str, Any] = {
        "name": "line-3",
        "username_pattern": "line3-*",
        "roles": [sensors_role],
        "max_uses": 10,
        "expires_in": 3600,
    }
    before = snapshot(connection)
    with pytest.raises(InvalidInput, match=f"^{field}"):
        enrollments.create(**{**values, **arguments})
    assert snapshot(connection) == before


def test_the_bounds_themselves_are_accepted(enrollments: Enrollments) -> None:
    enrollments.create("low", "a?c", [], 1, 60)
    enrollments.create("high", "[ab]*", [], 100_000, 365 * 24 * 3600)
    assert [e.name for e in enrollments.list_enrollments()] == ["high", "low"]


def test_a_name_is_taken_once(enrollments: Enrollments, token: str) -> None:
    with pytest.raises(EnrollmentExists):
        enrollments.create("line-3", "other-*")


# -- registering ------------------------------------------------------------------
def test_a_valid_token_registers_at_once_while_locked(
    enrollments: Enrollments, token: str, users: UserStore, domain: services.Services, connection: fakeredis.FakeRedis
) -> None:
    assert domain.lock.status().locked
    attempt = register(enrollments, token)
    assert (attempt.outcome, attempt.enrollment) == (Outcome.GRANTED, "line-3")
    user = users.get("line3-001")
    assert (user.roles, user.client_id, user.source) == (("sensors",), "line3-001-cid", "enrollment")
    assert user.pairing_id == pairing_id("line3-001", "secret-1")
    assert connection.hget(KEYS.user("line3-001"), "enrollment") == "line-3"
    assert domain.verifier.verify("line3-001", "secret-1").value == "accepted"
    assert users.roles.get("sensors").members == ("line3-001",)
    assert enrollments.get("line-3").uses_left == 1
    assert domain.requests.count_requests() == 0
    entry = domain.audit.entries(1)[0]
    assert (entry["actor"], entry["action"], entry["target"]) == (
        "enrollment:line-3",
        "enrollment.register",
        "line3-001",
    )
    assert entry["details"]["enrollment"] == "line-3"
    # The change feed tells brokers, as for an approval.
    feed = connection.xrange(KEYS.changes())
    assert feed[-1][1] == {"user": "line3-001", "kick": "0"}


def test_repeating_a_granted_registration_uses_nothing(
    enrollments: Enrollments, token: str, hash_calls: list[str]
) -> None:
    assert register(enrollments, token).outcome is Outcome.GRANTED
    assert register(enrollments, token).outcome is Outcome.REPEATED
    assert register(enrollments, token).outcome is Outcome.REPEATED
    assert enrollments.get("line-3").uses_left == 1
    assert len(hash_calls) == 1


def test_repeating_after_the_last_use_is_still_granted(enrollments: Enrollments, token: str) -> None:
    register(enrollments, token, "line3-001")
    register(enrollments, token, "line3-002")
    assert enrollments.get("line-3").uses_left == 0
    assert register(enrollments, token, "line3-001").outcome is Outcome.REPEATED


def test_other_credentials_for_an_existing_user_conflict(enrollments: Enrollments, token: str) -> None:
    register(enrollments, token)
    assert register(enrollments, token, password="another-1").outcome is Outcome.WRONG_PASSWORD
    assert enrollments.get("line-3").uses_left == 1


def test_the_password_policy_still_applies(enrollments: Enrollments, token: str, users: UserStore) -> None:
    attempt = register(enrollments, token, password="abc")
    assert (attempt.outcome, attempt.detail) == (Outcome.WEAK_PASSWORD, "password must be at least 5 characters")
    with pytest.raises(InvalidInput, match="password"):
        register(enrollments, token, password="a\x00bcdef")
    assert not users.exists("line3-001")
    assert enrollments.get("line-3").uses_left == 2


def test_a_deleted_role_is_not_given(enrollments: Enrollments, token: str, users: UserStore) -> None:
    users.roles.delete("sensors")
    register(enrollments, token)
    assert users.get("line3-001").roles == ()


def _bad_tokens(enrollments: Enrollments, token: str, clock: FakeClock, users: UserStore) -> dict[str, Any]:
    """Every kind of refusal, each as (token, username), with the state set up for it."""
    revoked = enrollments.create("revoked", "line3-*", [], 5, 3600).token
    enrollments.delete("revoked")
    expired = enrollments.create("expired", "line3-*", [], 5, 60).token
    used_up = enrollments.create("used-up", "line3-*", [], 1, 3600).token
    assert register(enrollments, used_up, "line3-900").outcome is Outcome.GRANTED
    removed = enrollments.create("removed", "line3-*", [], 5, 3600).token
    assert register(enrollments, removed, "line3-800").outcome is Outcome.GRANTED
    users.delete("line3-800")
    clock.advance(61)
    return {
        "unknown": (token[:-1] + ("A" if token[-1] != "A" else "B"), "line3-001"),
        "empty": ("", "line3-001"),
        "too long": ("x" * 5000, "line3-001"),
        "lone surrogate": ("\ud800", "line3-001"),
        "revoked": (revoked, "line3-001"),
        "expired": (expired, "line3-001"),
        "used up": (used_up, "line3-001"),
        "outside the pattern": (token, "line4-001"),
        "removed user": (removed, "line3-800"),
    }


def test_every_bad_token_gets_one_answer_and_records_nothing(
    enrollments: Enrollments,
    token: str,
    clock: FakeClock,
    users: UserStore,
    connection: fakeredis.FakeRedis,
    hash_calls: list[str],
    verify_calls: list[str],
    domain: services.Services,
) -> None:
    cases = _bad_tokens(enrollments, token, clock, users)
    domain.lock.unlock()  # unlocked or not: nothing is recorded
    hash_calls.clear()
    verify_calls.clear()
    failures = KEYS.enrollment_failures("192.0.2.1")
    for kind, (bad, username) in cases.items():
        before = snapshot(connection)
        before.pop(failures, None)
        attempt = register(enrollments, bad, username, password="secret-9")
        assert attempt.outcome is Outcome.REFUSED, kind
        after = snapshot(connection)
        after.pop(failures, None)
        assert after == before, kind
    assert hash_calls == [] and verify_calls == []  # no bcrypt for a bad token
    assert not users.exists("line3-001") and not users.exists("line3-800")
    assert int(connection.get(failures)) == len(cases)


def test_every_bad_token_gets_the_same_http_answer(
    api: FlaskClient, enrollments: Enrollments, token: str, clock: FakeClock, users: UserStore
) -> None:
    answers = set()
    for bad, username in _bad_tokens(enrollments, token, clock, users).values():
        response = api.post(REGISTER, json={"username": username, "password": "secret-9", "enrollment": bad})
        assert response.status_code == 403
        answers.add(response.get_data(as_text=True))
    assert answers == {f'{{"ok":false,"error":"{ONE_REFUSAL}","status":"refused"}}\n'}


def test_the_race_for_the_last_use_has_one_winner(
    connection: fakeredis.FakeRedis,
    redis_server: fakeredis.FakeServer,
    config: Config,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each device has its own process (own bcrypt slots), as two workers do;
    # both pass every check before either commits: the barrier holds them in bcrypt.
    config = dataclasses.replace(config, registration_concurrency=2)
    domain = services.build(connection, config, clock=clock)
    token = domain.enrollments.create("last-one", "line3-*", [], 1, 3600).token
    barrier = threading.Barrier(2, timeout=10)
    import cregistry.passwords

    original = cregistry.passwords.hash_password

    def hash_together(password: str, cost: int) -> str:
        hashed = original(password, cost)
        barrier.wait()
        return hashed

    monkeypatch.setattr(cregistry.passwords, "hash_password", hash_together)
    outcomes: dict[str, Outcome] = {}

    def device(username: str) -> None:
        own_connection = fakeredis.FakeRedis(server=redis_server, decode_responses=True)
        own = services.build(own_connection, config, clock=clock)
        outcomes[username] = own.enrollments.register(token, username, "secret-1", username, "192.0.2.7").outcome

    threads = [threading.Thread(target=device, args=(f"line3-00{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert sorted(o.value for o in outcomes.values()) == ["granted", "refused"]
    assert sum(domain.users.exists(name) for name in outcomes) == 1
    assert domain.enrollments.get("last-one").uses_left == 0


def test_a_deleted_user_cannot_come_back_through_its_enrollment(
    enrollments: Enrollments, token: str, users: UserStore, hash_calls: list[str]
) -> None:
    register(enrollments, token)
    users.delete("line3-001")
    assert enrollments.get("line-3").removed_users == ("line3-001",)
    hash_calls.clear()
    for password in ("secret-1", "another-2"):
        assert register(enrollments, token, password=password).outcome is Outcome.REFUSED
    assert hash_calls == []
    assert not users.exists("line3-001")
    # Other usernames still register, and the operator can forget the deletion.
    assert register(enrollments, token, "line3-002").outcome is Outcome.GRANTED
    enrollments.forget_removed("line-3", "line3-001")
    assert enrollments.get("line-3").removed_users == ()
    # Forgotten, it is a new user again, and this enrollment has no use left.
    assert register(enrollments, token).outcome is Outcome.REFUSED


def test_forgetting_lets_it_register_again(enrollments: Enrollments, users: UserStore) -> None:
    token = enrollments.create("line-4", "line4-*", [], 5, 3600).token
    register(enrollments, token, "line4-001")
    users.delete("line4-001")
    assert register(enrollments, token, "line4-001").outcome is Outcome.REFUSED
    enrollments.forget_removed("line-4", "line4-001")
    assert register(enrollments, token, "line4-001", password="another-2").outcome is Outcome.GRANTED
    with pytest.raises(Exception, match="remembers no deleted user"):
        enrollments.forget_removed("line-4", "line4-001")


def test_the_memory_of_a_deletion_expires_with_the_enrollment(
    enrollments: Enrollments, token: str, users: UserStore, connection: fakeredis.FakeRedis
) -> None:
    register(enrollments, token)
    users.delete("line3-001")
    assert 3590 < connection.ttl(KEYS.enrollment_removed("line-3")) <= 3601


def test_deleting_a_user_of_a_revoked_enrollment_writes_nothing_for_it(
    enrollments: Enrollments, token: str, users: UserStore, connection: fakeredis.FakeRedis
) -> None:
    register(enrollments, token)
    enrollments.delete("line-3")
    users.delete("line3-001")
    assert not connection.exists(KEYS.enrollment_removed("line-3"))


def test_revoking_removes_every_key(
    enrollments: Enrollments, token: str, users: UserStore, connection: fakeredis.FakeRedis
) -> None:
    register(enrollments, token)
    users.delete("line3-001")
    enrollments.delete("line-3")
    assert [k for k in connection.keys("*") if "enrollment" in k and "failures" not in k] == []
    assert enrollments.list_enrollments() == []
    with pytest.raises(EnrollmentNotFound):
        enrollments.delete("line-3")


def test_expired_enrollments_leave_the_list(
    enrollments: Enrollments, token: str, connection: fakeredis.FakeRedis
) -> None:
    connection.delete(KEYS.enrollment("line-3"))  # what Redis does at the expiry
    assert enrollments.list_enrollments() == []
    assert connection.smembers(KEYS.enrollments()) == set()


def test_guessing_is_limited_per_address(
    connection: fakeredis.FakeRedis, config: Config, clock: FakeClock, hash_calls: list[str]
) -> None:
    domain = services.build(connection, dataclasses.replace(config, enrollment_failure_limit=3), clock=clock)
    token = domain.enrollments.create("line-3", "line3-*", [], 5, 3600).token
    for n in range(3):
        assert domain.enrollments.register(f"guess-{n}", "line3-001", "secret-1", "", "198.51.100.9").outcome is (
            Outcome.REFUSED
        )
    # Now even the right token is not looked at from that address; others go on.
    assert domain.enrollments.register(token, "line3-001", "secret-1", "", "198.51.100.9").outcome is Outcome.LIMITED
    assert domain.enrollments.register(token, "line3-001", "secret-1", "", "198.51.100.10").outcome is Outcome.GRANTED
    assert 0 < connection.ttl(KEYS.enrollment_failures("198.51.100.9")) <= config.enrollment_failure_window


def test_registrations_are_reported_by_enrollment_and_result(
    enrollments: Enrollments, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str]] = []

    class Recorder(instruments.Listener):
        def enrollment_registration(self, enrollment: str, result: str) -> None:
            seen.append((enrollment, result))

    monkeypatch.setattr(instruments, "_listener", Recorder())
    register(enrollments, token)
    register(enrollments, token)
    register(enrollments, "nope")
    register(enrollments, token, "line4-001")
    assert seen == [("line-3", "granted"), ("line-3", "repeated"), ("", "unknown_token"), ("line-3", "outside_pattern")]


# -- the routes -----------------------------------------------------------------
def test_api_create_list_delete(api: FlaskClient, auth: dict[str, str], sensors_role: str) -> None:
    body = {"name": "line-3", "usernamePattern": "line3-*", "roles": ["sensors"], "maxUses": 10, "expiresIn": 600}
    created = api.post("/api/enrollments", json=body, headers=auth)
    assert created.status_code == 201
    token = created.get_json()["token"]
    listed = api.get("/api/enrollments", headers=auth).get_json()["enrollments"]
    assert [e["name"] for e in listed] == ["line-3"] and "token" not in listed[0]
    assert token not in api.get("/api/enrollments", headers=auth).get_data(as_text=True)
    assert api.post("/api/enrollments", json=body, headers=auth).status_code == 409
    assert api.delete("/api/enrollments/line-3", headers=auth).get_json() == {"deleted": "line-3"}
    assert api.delete("/api/enrollments/line-3", headers=auth).status_code == 404
    assert api.get("/api/enrollments", headers=auth).get_json() == {"enrollments": []}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"roles": ["ghost"]}, "roles"),
        ({"maxUses": 0}, "maxUses"),
        ({"expiresIn": 31536001}, "expiresIn"),
        ({"usernamePattern": "a b"}, "usernamePattern"),
        ({"name": "x"}, "name"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_api_bad_input_is_a_400_naming_the_field(
    api: FlaskClient, auth: dict[str, str], sensors_role: str, change: dict[str, Any], field: str
) -> None:
    body = {"name": "line-3", "usernamePattern": "line3-*", "roles": ["sensors"], "maxUses": 10, "expiresIn": 600}
    response = api.post("/api/enrollments", json={**body, **change}, headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(field)
    assert api.get("/api/enrollments", headers=auth).get_json() == {"enrollments": []}


def test_api_register_with_a_token(api: FlaskClient, auth: dict[str, str], token: str) -> None:
    body = {"username": "line3-001", "password": "secret-1", "clientId": "c-1", "enrollment": token}
    first = api.post(REGISTER, json=body)
    assert (first.status_code, first.get_json()["status"]) == (201, "granted")
    assert api.post(REGISTER, json=body).status_code == 201
    conflict = api.post(REGISTER, json={**body, "password": "other-pw-1"})
    assert (conflict.status_code, conflict.get_json()["status"]) == (409, "conflict")
    assert api.post(REGISTER, json={**body, "enrollment": 7}).status_code == 400
    assert api.post(REGISTER, json={**body, "username": "a/b"}).status_code == 400
    user = api.get("/api/users/line3-001", headers=auth).get_json()
    assert (user["roles"], user["clientId"], user["source"]) == (["sensors"], "c-1", "enrollment")
    listed = api.get("/api/enrollments", headers=auth).get_json()["enrollments"][0]
    assert listed["usesLeft"] == 1


def test_api_forget_a_removed_user(api: FlaskClient, auth: dict[str, str], token: str) -> None:
    body = {"username": "line3-001", "password": "secret-1", "enrollment": token}
    assert api.post(REGISTER, json=body).status_code == 201
    assert api.delete("/api/users/line3-001", headers=auth).status_code == 200
    assert api.post(REGISTER, json=body).status_code == 403
    forgotten = api.delete("/api/enrollments/line-3/removed-users/line3-001", headers=auth)
    assert (forgotten.status_code, forgotten.get_json()["removedUsers"]) == (200, [])
    assert api.post(REGISTER, json=body).status_code == 201
    assert api.delete("/api/enrollments/line-3/removed-users/line3-001", headers=auth).status_code == 404


def test_the_guessing_limit_over_http(connection: fakeredis.FakeRedis, config: Config) -> None:
    app = create_app(dataclasses.replace(config, enrollment_failure_limit=2), listener="api", connection=connection)
    client = app.test_client()
    body = {"username": "line3-001", "password": "secret-1", "enrollment": "guess"}
    assert [client.post(REGISTER, json=body).status_code for _ in range(3)] == [403, 403, 429]


def test_metrics_count_registrations_by_enrollment_and_result(
    api: FlaskClient, broker: FlaskClient, token: str
) -> None:
    def count(result: str) -> float:
        text = broker.get("/metrics").get_data(as_text=True)
        line = f'cregistry_enrollment_registrations_total{{enrollment="line-3",result="{result}"}} '
        found = [row for row in text.splitlines() if row.startswith(line)]
        return float(found[0].rsplit(" ", 1)[1]) if found else 0.0

    granted, outside = count("granted"), count("outside_pattern")
    api.post(REGISTER, json={"username": "line3-001", "password": "secret-1", "enrollment": token})
    api.post(REGISTER, json={"username": "line4-001", "password": "secret-1", "enrollment": token})
    assert (count("granted"), count("outside_pattern")) == (granted + 1, outside + 1)


def test_the_service_never_logs_a_token(
    api: FlaskClient, auth: dict[str, str], sensors_role: str, users: UserStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = {"name": "line-3", "usernamePattern": "line3-*", "roles": ["sensors"], "maxUses": 1}
    token = api.post("/api/enrollments", json=body, headers=auth).get_json()["token"]
    for username in ("line3-001", "line3-001", "line3-002", "line4-001"):
        api.post(REGISTER, json={"username": username, "password": "secret-1", "enrollment": token})
    api.post(REGISTER, json={"username": "line3-003", "password": "secret-1", "enrollment": token + "x"})
    assert "refused: used up (enrollment line-3)" in caplog.text  # the log says why; the answer never does
    assert token not in caplog.text
    assert token[:-1] not in caplog.text
