"""Client IDs owned by users (SPEC §4; client_ids.py): the owner index, the
three policies on every CONNECT path, registration wearing another's client
ID, the migration of users created before, and PUT /api/users/<name>/client-ids."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient

from cregistry import services
from cregistry.authorizer import ConnectRequest
from cregistry.config import Config
from cregistry.errors import ClientIdTaken, ConfigError, InvalidInput
from cregistry.keys import Keys
from cregistry.passwords import hash_password
from cregistry.web import create_app

from .conftest import ADMIN_TOKEN, FakeClock, acl

KEYS = Keys()
OWNER, OWNER_PASSWORD, OWNER_CLIENT = "device-a", "device-a-secret", "a-1"
OTHER, OTHER_PASSWORD, OTHER_CLIENT = "device-b", "device-b-secret", "b-1"
REFUSAL = "client id not allowed"


def build(connection: fakeredis.FakeRedis, policy: str = "owned", **extra: Any) -> services.Services:
    config = Config(bcrypt_cost=4, admin_token=ADMIN_TOKEN, client_id_policy=policy)
    return services.build(connection, config, clock=FakeClock(), **extra)


def approve_device(domain: services.Services, username: str, password: str, client_id: str) -> None:
    domain.lock.unlock(actor="setup")
    outcome = domain.registration.attempt(username, password, client_id, "mqtt").outcome
    assert outcome.value == "recorded", outcome
    domain.requests.approve(username)


@pytest.fixture
def two_devices(connection: fakeredis.FakeRedis) -> services.Services:
    domain = build(connection)
    approve_device(domain, OWNER, OWNER_PASSWORD, OWNER_CLIENT)
    approve_device(domain, OTHER, OTHER_PASSWORD, OTHER_CLIENT)
    return domain


def policy_domain(connection: fakeredis.FakeRedis, policy: str, **extra: Any) -> services.Services:
    """A domain on the same Redis as `two_devices`, under another policy."""
    return build(connection, policy, **extra)


# -- the index -----------------------------------------------------------------
def test_the_approved_requests_client_id_becomes_the_users_own(
    two_devices: services.Services, connection: fakeredis.FakeRedis
) -> None:
    assert two_devices.users.get(OWNER).to_dict()["clientIds"] == [OWNER_CLIENT]
    assert connection.hget(KEYS.client_owners(), OWNER_CLIENT) == OWNER
    assert connection.smembers(KEYS.user_client_ids(OTHER)) == {OTHER_CLIENT}
    entry = two_devices.audit.entries(1)[0]
    assert (entry["action"], entry["details"]["clientId"]) == ("request.approve", OTHER_CLIENT)


def test_deleting_a_user_frees_its_client_ids(two_devices: services.Services, connection: fakeredis.FakeRedis) -> None:
    two_devices.users.delete(OWNER)
    assert connection.hget(KEYS.client_owners(), OWNER_CLIENT) is None
    assert not connection.exists(KEYS.user_client_ids(OWNER))
    two_devices.users.set_client_ids(OTHER, [OTHER_CLIENT, OWNER_CLIENT])
    assert two_devices.users.get(OTHER).client_ids == (OWNER_CLIENT, OTHER_CLIENT)


def test_enrollment_gives_the_registering_client_id(connection: fakeredis.FakeRedis) -> None:
    domain = build(connection)
    created = domain.enrollments.create("line-1", username_pattern="line1-*", roles=[], max_uses=5, expires_in=600)
    attempt = domain.enrollments.register(created.token, "line1-7", "line1-7-secret", "line1-7-c", "127.0.0.1")
    assert attempt.outcome.value == "granted"
    assert domain.users.get("line1-7").client_ids == ("line1-7-c",)
    # A second device of the enrollment wearing that client ID gets nothing.
    again = domain.enrollments.register(created.token, "line1-8", "line1-8-secret", "line1-7-c", "127.0.0.1")
    assert again.outcome.value == "client id refused"
    assert not domain.users.exists("line1-8")
    assert domain.enrollments.list_enrollments()[0].uses_left == 4


# -- the policies on the CONNECT check ------------------------------------------
def test_owned_refuses_another_users_own_client_id(two_devices: services.Services) -> None:
    authorizer = two_devices.authorizer
    assert authorizer.check_user(ConnectRequest(OWNER, OWNER_PASSWORD, OWNER_CLIENT)).allowed
    refused = authorizer.check_user(ConnectRequest(OTHER, OTHER_PASSWORD, OWNER_CLIENT))
    assert not refused.allowed and REFUSAL in refused.reason
    assert authorizer.check_user(ConnectRequest(OTHER, OTHER_PASSWORD, OTHER_CLIENT)).allowed
    assert authorizer.check_user(
        ConnectRequest(OTHER, OTHER_PASSWORD, "nobody-s")
    ).allowed  # unowned: allowed under owned
    # No failure counted: the password was right, the client ID was not B's to use.
    assert two_devices.verifier.failures(OTHER) == 0


def test_the_token_paths_never_accept_another_users_own_client_id(connection: fakeredis.FakeRedis) -> None:
    domain = build(connection, follow_changes=True)
    approve_device(domain, OWNER, OWNER_PASSWORD, OWNER_CLIENT)
    approve_device(domain, OTHER, OTHER_PASSWORD, OTHER_CLIENT)
    follower = domain.follower
    assert follower is not None
    authorizer = domain.authorizer
    assert authorizer.check_user(
        ConnectRequest(OTHER, OTHER_PASSWORD, OTHER_CLIENT)
    ).allowed  # bcrypt; the token is kept
    follower.follow_once()
    assert authorizer.verifier.verify_by_token(OTHER, OTHER_PASSWORD, OTHER_CLIENT)  # cached again
    seen = follower.position
    assert authorizer.check_user_cached(ConnectRequest(OTHER, OTHER_PASSWORD, OTHER_CLIENT), seen) is not None
    # The same valid token, with A's client ID: memory does not answer, nor does the token, and Redis refuses.
    assert authorizer.check_user_cached(ConnectRequest(OTHER, OTHER_PASSWORD, OWNER_CLIENT), seen) is None
    assert not authorizer.verifier.verify_by_token(OTHER, OTHER_PASSWORD, OWNER_CLIENT)
    assert not authorizer.check_user(ConnectRequest(OTHER, OTHER_PASSWORD, OWNER_CLIENT)).allowed
    # An unowned client ID is not answered from memory either: it may be given to someone meanwhile.
    assert authorizer.check_user_cached(ConnectRequest(OTHER, OTHER_PASSWORD, "spare"), seen) is None
    domain.users.set_client_ids(OWNER, [OWNER_CLIENT, "spare"])
    assert not authorizer.verifier.verify_by_token(OTHER, OTHER_PASSWORD, "spare")
    assert not authorizer.check_user(ConnectRequest(OTHER, OTHER_PASSWORD, "spare")).allowed


def test_a_change_of_ownership_drops_the_owners_cached_token(connection: fakeredis.FakeRedis) -> None:
    domain = build(connection, follow_changes=True)
    approve_device(domain, OWNER, OWNER_PASSWORD, OWNER_CLIENT)
    follower = domain.follower
    assert follower is not None
    domain.users.set_client_ids(OWNER, [OWNER_CLIENT, "spare"])
    assert not domain.authorizer.verifier.verify_by_token(OWNER, OWNER_PASSWORD, "spare")  # no token yet
    assert domain.authorizer.check_user(ConnectRequest(OWNER, OWNER_PASSWORD, "spare")).allowed
    follower.follow_once()
    assert domain.authorizer.verifier.verify_by_token(OWNER, OWNER_PASSWORD, "spare")
    follower.follow_once()
    assert domain.authorizer.check_user_cached(ConnectRequest(OWNER, OWNER_PASSWORD, "spare"), follower.position)
    domain.users.set_client_ids(OWNER, [OWNER_CLIENT])  # "spare" taken away: A's cached token goes
    follower.follow_once()
    assert (
        domain.authorizer.check_user_cached(ConnectRequest(OWNER, OWNER_PASSWORD, "spare"), follower.position) is None
    )


def test_strict_allows_only_the_users_own_client_ids(
    two_devices: services.Services, connection: fakeredis.FakeRedis
) -> None:
    strict = policy_domain(connection, "strict").authorizer
    assert strict.check_user(ConnectRequest(OWNER, OWNER_PASSWORD, OWNER_CLIENT)).allowed
    assert not strict.check_user(ConnectRequest(OTHER, OTHER_PASSWORD, OWNER_CLIENT)).allowed
    refused = strict.check_user(ConnectRequest(OTHER, OTHER_PASSWORD, "nobody-s"))
    assert not refused.allowed and REFUSAL in refused.reason
    # A REST poll that names no client ID connects nothing: it is answered as before.
    polled = policy_domain(connection, "strict").registration.attempt(OTHER, OTHER_PASSWORD, None, "rest")
    assert polled.outcome.value == "accepted"


def test_any_binds_nothing(two_devices: services.Services, connection: fakeredis.FakeRedis) -> None:
    anything = policy_domain(connection, "any").authorizer
    assert anything.check_user(ConnectRequest(OTHER, OTHER_PASSWORD, OWNER_CLIENT)).allowed
    assert anything.check_user(ConnectRequest(OTHER, OTHER_PASSWORD, "nobody-s")).allowed


def test_a_wrong_password_with_another_users_client_id_is_refused_the_same(two_devices: services.Services) -> None:
    refused = two_devices.authorizer.check_user(ConnectRequest(OTHER, "a-wrong-password", OWNER_CLIENT))
    assert not refused.allowed


def test_go_auths_routes_refuse_the_same(two_devices: services.Services, connection: fakeredis.FakeRedis) -> None:
    """go-auth asks the broker routes that the plugin asks: the same answers, form or JSON."""
    two_devices.users.grant(OTHER, "clients/%c/#", "readWrite")
    broker = create_app(two_devices.config, listener="broker", connection=connection).test_client()
    wearing = {"username": OTHER, "password": OTHER_PASSWORD, "clientid": OWNER_CLIENT}
    assert broker.post("/mqtt/user", json=wearing).status_code == 403
    assert broker.post("/mqtt/user", data=wearing).status_code == 403
    assert broker.post("/mqtt/user", json={**wearing, "clientid": OTHER_CLIENT}).status_code == 200
    acl = {"username": OTHER, "clientid": OWNER_CLIENT, "topic": f"clients/{OWNER_CLIENT}/x", "acc": 2}
    assert broker.post("/mqtt/acl", json=acl).status_code == 403
    own = {**acl, "clientid": OTHER_CLIENT, "topic": f"clients/{OTHER_CLIENT}/x"}
    assert broker.post("/mqtt/acl", json=own).status_code == 200


# -- %c -----------------------------------------------------------------------------
def test_percent_c_never_expands_to_another_users_own_client_id(
    two_devices: services.Services, connection: fakeredis.FakeRedis
) -> None:
    for name in (OWNER, OTHER):
        two_devices.users.grant(name, "clients/%c/#", "readWrite")
    authorizer = two_devices.authorizer
    assert authorizer.check_acl(acl(OWNER, OWNER_CLIENT, f"clients/{OWNER_CLIENT}/x", 2)).allowed
    assert not authorizer.check_acl(acl(OTHER, OWNER_CLIENT, f"clients/{OWNER_CLIENT}/x", 2)).allowed
    assert not authorizer.check_acl(acl(OTHER, OWNER_CLIENT, f"clients/{OWNER_CLIENT}/#", 4)).allowed
    assert authorizer.check_acl(acl(OTHER, "nobody-s", "clients/nobody-s/x", 2)).allowed  # unowned under owned
    strict = policy_domain(connection, "strict").authorizer
    assert strict.check_acl(acl(OTHER, OTHER_CLIENT, f"clients/{OTHER_CLIENT}/x", 2)).allowed
    assert not strict.check_acl(acl(OTHER, "nobody-s", "clients/nobody-s/x", 2)).allowed
    anything = policy_domain(connection, "any").authorizer
    assert anything.check_acl(acl(OTHER, OWNER_CLIENT, f"clients/{OWNER_CLIENT}/x", 2)).allowed


# -- registration -----------------------------------------------------------------
def test_registration_wearing_another_users_client_id_records_nothing(
    two_devices: services.Services, connection: fakeredis.FakeRedis
) -> None:
    two_devices.lock.unlock()
    before = connection.zcard(KEYS.pending_index())
    broker = create_app(two_devices.config, listener="broker", connection=connection).test_client()
    api = create_app(two_devices.config, listener="api", connection=connection).test_client()
    answer = broker.post(
        "/mqtt/user", json={"username": "rogue-1", "password": "rogue-secret", "clientid": OWNER_CLIENT}
    )
    assert answer.status_code == 403 and REFUSAL in answer.get_json()["error"]
    body = {"username": "rogue-2", "password": "rogue-secret", "clientId": OWNER_CLIENT}
    rest = api.post("/api/client-registry/register", json=body)
    assert (rest.status_code, rest.get_json()["status"]) == (409, "conflict")
    assert connection.zcard(KEYS.pending_index()) == before == 0
    assert not connection.exists(KEYS.user_requests("rogue-1"), KEYS.user_requests("rogue-2"))
    # Under policy any the attempt is recorded as before.
    anything = policy_domain(connection, "any")
    assert anything.registration.attempt("rogue-3", "rogue-secret", OWNER_CLIENT, "mqtt").outcome.value == "recorded"


def test_approval_never_takes_a_client_id_owned_meanwhile(
    two_devices: services.Services, connection: fakeredis.FakeRedis
) -> None:
    two_devices.lock.unlock()
    assert two_devices.registration.attempt("late-1", "late-secret", "shared-1", "rest").outcome.value == "recorded"
    two_devices.users.set_client_ids(OWNER, [OWNER_CLIENT, "shared-1"])  # given to A while late-1 waits
    with pytest.raises(ClientIdTaken, match="shared-1"):
        two_devices.requests.approve("late-1")
    assert not two_devices.users.exists("late-1")
    assert [r.username for r in two_devices.requests.list_requests()] == ["late-1"]  # still pending
    # Under policy any the user is created, without the client ID.
    user = policy_domain(connection, "any").requests.approve("late-1")
    assert user.client_ids == () and user.client_id == "shared-1"
    assert connection.hget(KEYS.client_owners(), "shared-1") == OWNER


# -- migration ------------------------------------------------------------------------
def legacy_user(connection: fakeredis.FakeRedis, username: str, client_id: str) -> None:
    """A user as an approval wrote it before client IDs had owners."""
    fields = {"passwordHash": hash_password(f"{username}-secret", 4), "createdAt": "1", "superuser": "0"}
    connection.hset(KEYS.user(username), mapping={**fields, "clientId": client_id, "source": "mqtt"})
    connection.sadd(KEYS.users(), username)


def test_users_created_before_own_their_registered_client_id(connection: fakeredis.FakeRedis) -> None:
    domain = build(connection)
    legacy_user(connection, "old-1", "old-c1")
    legacy_user(connection, "old-2", "old-c1")  # the same client ID: the first (by name) keeps it
    legacy_user(connection, "old-3", "")
    legacy_user(connection, "old-4", "bad/+")
    assert domain.authorizer.check_user(
        ConnectRequest("old-2", "old-2-secret", "old-c1")
    ).allowed  # before: nobody owns it
    assert domain.users.adopt_registered_client_ids() == 1
    assert domain.users.get("old-1").client_ids == ("old-c1",)
    assert [domain.users.get(u).client_ids for u in ("old-2", "old-3", "old-4")] == [(), (), ()]
    assert not domain.authorizer.check_user(ConnectRequest("old-2", "old-2-secret", "old-c1")).allowed
    # Idempotent, and an operator's change after it stays.
    domain.users.set_client_ids("old-1", [])
    assert domain.users.adopt_registered_client_ids() == 0
    assert domain.users.get("old-1").client_ids == ()


def test_serve_gives_users_created_before_their_client_id(
    monkeypatch: pytest.MonkeyPatch, connection: fakeredis.FakeRedis, config: Config
) -> None:
    import cregistry.server

    legacy_user(connection, "old-1", "old-c1")
    monkeypatch.setattr(cregistry.server, "connect", lambda url, timeout: connection)
    announced: list[str] = []
    config = Config(bcrypt_cost=4, admin_token=ADMIN_TOKEN, redis_url="redis://127.0.0.1:1")
    cregistry.server._adopt_registered_client_ids(config, None, announced.append)
    assert connection.hget(KEYS.client_owners(), "old-c1") == "old-1"
    assert announced and "1 user(s)" in announced[0]


def test_a_bad_policy_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="CREGISTRY_CLIENT_ID_POLICY"):
        Config(client_id_policy="loose")
    with pytest.raises(ConfigError, match="owned, strict, any"):
        Config.from_env({"CREGISTRY_CLIENT_ID_POLICY": "Owned"})
    assert Config.from_env({"CREGISTRY_CLIENT_ID_POLICY": "strict"}).client_id_policy == "strict"
    assert Config().client_id_policy == "owned"


# -- PUT /api/users/<name>/client-ids ---------------------------------------------------
def put_client_ids(api: FlaskClient, username: str, body: object, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return api.put(f"/api/users/{username}/client-ids", json=body, headers=headers, **kwargs)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"clientIds": ["x"]}, "JSON list"),
        ("a-1", "JSON list"),
        ([1], "must be a string"),
        ([""], "must not be empty"),
        (["a+b"], "'+' or '#'"),
        (["a/#"], "'+' or '#'"),
        (["x" * 257], "at most 256"),
        (["nul\x00"], "NUL"),
        (["dup", "dup"], "repeat"),
        ([f"c{n}" for n in range(101)], "at most 100"),
    ],
)
def test_put_client_ids_refuses_bad_input_and_changes_nothing(
    two_devices: services.Services, connection: fakeredis.FakeRedis, body: object, problem: str
) -> None:
    api = create_app(two_devices.config, listener="api", connection=connection).test_client()
    answer = put_client_ids(api, OWNER, body)
    assert answer.status_code == 400 and problem in answer.get_json()["error"]
    assert two_devices.users.get(OWNER).client_ids == (OWNER_CLIENT,)


def test_put_client_ids(two_devices: services.Services, connection: fakeredis.FakeRedis) -> None:
    api = create_app(two_devices.config, listener="api", connection=connection).test_client()
    position = two_devices.changes.read(None).position
    answer = put_client_ids(api, OWNER, ["a-2", OWNER_CLIENT])
    assert answer.status_code == 200 and answer.get_json()["clientIds"] == [OWNER_CLIENT, "a-2"]
    changes = list(two_devices.changes.read(position).changes)
    assert changes == [{"user": OWNER, "kick": False, "clientId": "a-2"}, {"user": OWNER, "kick": False}]
    entry = two_devices.audit.entries(1)[0]
    assert (entry["action"], entry["actor"], entry["details"]["clientIds"]) == (
        "user.client-ids",
        "api:admin",
        ["a-2", OWNER_CLIENT],
    )
    # Another user's client ID: refused, not stolen, nothing changed.
    taken = put_client_ids(api, OTHER, [OTHER_CLIENT, OWNER_CLIENT])
    assert taken.status_code == 409 and OWNER in taken.get_json()["error"]
    assert two_devices.users.get(OTHER).client_ids == (OTHER_CLIENT,)
    assert connection.hget(KEYS.client_owners(), OWNER_CLIENT) == OWNER
    assert put_client_ids(api, "nobody-1", ["z"]).status_code == 404
    assert not connection.exists(KEYS.user_client_ids("nobody-1"))
    # Taking one away frees it.
    assert put_client_ids(api, OWNER, ["a-2"]).get_json()["clientIds"] == ["a-2"]
    assert connection.hget(KEYS.client_owners(), OWNER_CLIENT) is None
    assert put_client_ids(api, OTHER, [OWNER_CLIENT]).status_code == 200


def test_validation_rules() -> None:
    from cregistry.client_ids import validate_owned_client_id

    assert validate_owned_client_id("dev/1 ü") == "dev/1 ü"
    with pytest.raises(InvalidInput):
        validate_owned_client_id(None)
