"""The change feed brokers poll (changes.py; docs/change-feed.md): one entry per
change in the change's own transaction, exact resets, and no answer a
broker can provoke is a 500."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient

import cregistry.changes
import cregistry.cli
import cregistry.connections
from cregistry import services
from cregistry.changes import CHANGE_FOR_ACTION, MAX_PAGE, NO_CHANGE_ACTIONS, ChangeFeed
from cregistry.config import Config
from cregistry.errors import UserNotFound
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.pending import PendingRequests
from cregistry.registration import Registration
from cregistry.users import UserStore
from cregistry.web import create_app

from .conftest import ADMIN_TOKEN

KEYS = Keys("cregistry")
PACKAGE = Path(cregistry.cli.__file__).resolve().parent.parent


@pytest.fixture
def clock() -> Callable[[], float]:
    return time.time


@pytest.fixture
def feed(domain: services.Services) -> ChangeFeed:
    return domain.audit.changes


def poll(broker: FlaskClient, after: str | None = None) -> dict[str, Any]:
    query = {} if after is None else {"after": after}
    response = broker.get("/mqtt/changes", query_string=query)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["ok"] is True and body["error"] == ""
    assert re.fullmatch(r"[A-Za-z0-9._:~-]{1,128}", body["position"])
    return body


def changes_after(feed: ChangeFeed, position: str) -> list[dict[str, Any]]:
    page = feed.read(position)
    assert page.reset is False
    return list(page.changes)


def make_device(domain: services.Services, username: str) -> None:
    domain.lock.unlock(actor="setup")
    domain.registration.record_attempt(username, f"{username}-secret", f"{username}-client", "mqtt")
    domain.requests.approve(username)


# -- every action, and what brokers learn of it -------------------------------------
def test_every_audited_action_is_in_exactly_one_table() -> None:
    """A new audit action must decide what brokers forget: changes.py refuses
    to record an action it does not know, and the source holds no other."""
    assert not set(CHANGE_FOR_ACTION) & NO_CHANGE_ACTIONS
    audited = set()
    for path in PACKAGE.rglob("*.py"):
        audited |= set(re.findall(r'"((?:user|role|request|registry|enrollment)\.[a-z.-]+)"', path.read_text()))
    assert audited <= set(CHANGE_FOR_ACTION) | NO_CHANGE_ACTIONS, audited - set(CHANGE_FOR_ACTION) - NO_CHANGE_ACTIONS
    assert set(CHANGE_FOR_ACTION) | NO_CHANGE_ACTIONS <= audited


def test_an_action_in_neither_table_writes_nothing(connection: fakeredis.FakeRedis, domain: services.Services) -> None:
    pipe = connection.pipeline()
    with pytest.raises(ValueError, match="user.rename"):
        domain.audit.add(pipe, "tester", "user.rename", "sensor-1")
    pipe.reset()
    assert connection.xlen(KEYS.changes()) == 0 and connection.xlen(KEYS.audit()) == 0


FORGET = {"kick": False}
KICK = {"kick": True}
ALL = {"all": True}

# (what the operator does, what the feed then says); "sensor-1" exists, has
# role-1 and a permission on a/#, "role-1" and "role-2" exist.
STEPS: list[tuple[str, Callable[[services.Services, UserStore], Any], list[dict[str, Any]]]] = [
    (
        "request.approve",
        lambda d, u: make_device(d, "sensor-2"),
        # The approved request's client ID becomes the user's own: brokers disconnect anyone else wearing it.
        [{"user": "sensor-2", **FORGET, "clientId": "sensor-2-client"}, {"user": "sensor-2", **FORGET}],
    ),
    (
        "user.client-ids",
        lambda d, u: u.set_client_ids("sensor-1", ["sensor-1-client", "spare"]),
        [{"user": "sensor-1", **FORGET, "clientId": "spare"}, {"user": "sensor-1", **FORGET}],
    ),
    ("user.add", lambda d, u: u.add("backend", "backend-secret"), [{"user": "backend", **FORGET}]),
    ("user.superuser", lambda d, u: u.set_superuser("sensor-1", True), [{"user": "sensor-1", **FORGET}]),
    (
        "user.permissions",
        lambda d, u: u.set_permissions("sensor-1", [{"topic": "b/#", "access": "read"}]),
        [{"user": "sensor-1", **FORGET}],
    ),
    ("user.grant", lambda d, u: u.grant("sensor-1", "c/+", "write"), [{"user": "sensor-1", **FORGET}]),
    ("user.revoke", lambda d, u: u.revoke("sensor-1", "a/#"), [{"user": "sensor-1", **FORGET}]),
    ("user.roles", lambda d, u: u.set_roles("sensor-1", ["role-2"]), [{"user": "sensor-1", **FORGET}]),
    ("user.role.assign", lambda d, u: u.assign_role("sensor-1", "role-2"), [{"user": "sensor-1", **FORGET}]),
    ("user.role.unassign", lambda d, u: u.unassign_role("sensor-1", "role-1"), [{"user": "sensor-1", **FORGET}]),
    ("user.delete", lambda d, u: u.delete("sensor-1"), [{"user": "sensor-1", **KICK}]),
    ("user.password", lambda d, u: u.set_password("sensor-1", "new-secret"), [{"user": "sensor-1", **KICK}]),
    ("role.permissions", lambda d, u: u.roles.set_permissions("role-2", [{"topic": "x", "access": "read"}]), [ALL]),
    ("role.grant", lambda d, u: u.roles.grant("role-1", "y/#", "read"), [ALL]),
    ("role.revoke", lambda d, u: u.roles.revoke("role-1", "r/#"), [ALL]),
    ("role.delete", lambda d, u: u.roles.delete("role-1"), [ALL]),
    ("registry.unlock", lambda d, u: d.lock.unlock(), []),
    ("registry.lock", lambda d, u: d.lock.lock(), []),
    ("user.failures.clear", lambda d, u: d.verifier.clear_failures("sensor-1"), []),
]


@pytest.mark.parametrize(("action", "change", "expected"), STEPS, ids=[step[0] for step in STEPS])
def test_each_action_writes_what_brokers_must_forget(
    domain: services.Services,
    users: UserStore,
    feed: ChangeFeed,
    action: str,
    change: Callable[..., Any],
    expected: list[Any],
) -> None:
    make_device(domain, "sensor-1")
    users.roles.grant("role-1", "r/#", "read")
    users.roles.grant("role-2", "s/#", "read")
    users.assign_role("sensor-1", "role-1")
    users.grant("sensor-1", "a/#", "read")
    position = feed.read(None).position
    change(domain, users)
    assert domain.audit.entries(1)[0]["action"] == action
    assert changes_after(feed, position) == expected


def test_deny_writes_no_change(
    feed: ChangeFeed, registration: Registration, lock: RegistryLock, requests: PendingRequests
) -> None:
    lock.unlock()
    registration.record_attempt("rogue-1", "rogue-secret", "c", "mqtt")
    position = feed.read(None).position
    requests.deny("rogue-1")
    assert changes_after(feed, position) == []


def test_a_failed_change_writes_no_entry(users: UserStore, feed: ChangeFeed, connection: fakeredis.FakeRedis) -> None:
    feed.read(None)  # seeds the marker
    length = connection.xlen(KEYS.changes())
    for failing in (
        lambda: users.delete("nobody-here"),
        lambda: users.grant("nobody-here", "a", "read"),
        lambda: users.set_password("nobody-here", "some-secret"),
    ):
        with pytest.raises(UserNotFound):
            failing()
    assert connection.xlen(KEYS.changes()) == length


def test_cli_changes_land_in_the_feed(runner: CliRunner, feed: ChangeFeed) -> None:
    """The CLI writes Redis itself (also while the service is down): its changes are in the feed too."""
    position = feed.read(None).position
    for args in (
        ["user", "add", "cli-user", "--password", "cli-secret"],
        ["grant", "cli-user", "a/#", "read"],
        ["role", "grant", "role-9", "b/#", "read"],
        ["user", "delete", "cli-user"],
    ):
        result = runner.invoke(cregistry.cli.cli, args)
        assert result.exit_code == 0, result.output
    assert changes_after(feed, position) == [
        {"user": "cli-user", "kick": False},
        {"user": "cli-user", "kick": False},
        {"all": True},
        {"user": "cli-user", "kick": True},
    ]


# -- positions and resets -------------------------------------------------------------
def test_first_poll_seeds_an_empty_stream_and_resets(broker: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    first = poll(broker)
    assert first["reset"] is True
    assert connection.xlen(KEYS.changes()) == 1  # the marker the position names
    assert poll(broker, first["position"]) == {**first, "reset": False}
    # An empty `after` is the plugin's first poll too; it does not seed again.
    assert poll(broker, "")["position"] == first["position"]
    assert connection.xlen(KEYS.changes()) == 1


def test_polling_follows_changes_in_order(broker: FlaskClient, users: UserStore) -> None:
    position = poll(broker)["position"]
    users.add("first-1", "first-secret")
    users.delete("first-1")
    users.roles.grant("role-1", "a", "read")
    page = poll(broker, position)
    assert page["reset"] is False
    assert page["changes"] == [{"user": "first-1", "kick": False}, {"user": "first-1", "kick": True}, {"all": True}]
    assert poll(broker, page["position"]) == {**page, "changes": []}


def test_a_page_holds_at_most_1000_changes(broker: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    position = poll(broker)["position"]
    pipe = connection.pipeline()
    for index in range(MAX_PAGE + 5):
        pipe.xadd(KEYS.changes(), {"user": f"user-{index}", "kick": "0"})
    pipe.execute()
    first = poll(broker, position)
    assert len(first["changes"]) == MAX_PAGE and first["changes"][0]["user"] == "user-0"
    second = poll(broker, first["position"])
    assert [c["user"] for c in second["changes"]] == [f"user-{i}" for i in range(MAX_PAGE, MAX_PAGE + 5)]


def test_a_broker_behind_the_cap_gets_a_reset(connection: fakeredis.FakeRedis, users: UserStore) -> None:
    domain = services.build(connection, Config(bcrypt_cost=4, changes_max=10))
    feed, users = domain.changes, domain.users
    position = feed.read(None).position
    users.add("early-1", "early-secret")
    for index in range(8):
        users.grant("early-1", f"t/{index}", "read")
    assert connection.xlen(KEYS.changes()) == 10  # the marker and 9 changes
    assert len(changes_after(feed, position)) == 9
    users.grant("early-1", "t/last", "read")  # trims the entry `position` names
    assert connection.xlen(KEYS.changes()) == 10
    page = feed.read(position)
    # Every entry left is newer than the trimmed one: the reset carries them.
    assert page.reset is True and len(page.changes) == 10
    assert page.changes[-1] == {"user": "early-1", "kick": False}
    assert feed.read(page.position) == type(page)(page.position, False)


def test_a_flushed_redis_is_a_reset(broker: FlaskClient, connection: fakeredis.FakeRedis, users: UserStore) -> None:
    users.add("lost-1", "lost-secret")
    position = poll(broker)["position"]
    connection.flushall()
    page = poll(broker, position)
    assert page["reset"] is True
    assert page["position"] != position
    assert poll(broker, page["position"])["reset"] is False


def test_kicks_recorded_after_a_flush_arrive_with_the_reset(
    broker: FlaskClient, connection: fakeredis.FakeRedis, users: UserStore
) -> None:
    """Redis lost everything (FLUSHALL; a restart without persistence alike):
    the broker's position names nothing, and every entry is newer than it.
    The reset drops the broker's cache and still carries the changes recorded
    since, so a user deleted after the loss is kicked."""
    users.add("before-1", "before-secret")
    position = poll(broker)["position"]
    connection.flushall()
    poll(broker)  # another broker polls first: the empty stream is seeded with a marker
    users.add("after-1", "after-secret")
    users.delete("after-1")
    page = poll(broker, position)
    assert page["reset"] is True
    assert page["changes"] == [{"user": "after-1", "kick": False}, {"user": "after-1", "kick": True}]
    assert poll(broker, page["position"]) == {**page, "reset": False, "changes": []}


def test_kicks_recorded_after_a_restart_without_persistence_arrive_with_the_reset(
    feed: ChangeFeed, users: UserStore, connection: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted Redis has a new replication ID and an empty stream."""
    monkeypatch.setattr(cregistry.changes, "_epoch", lambda _info: "a" * 40)
    users.add("old-1", "old-secret")
    position = feed.read(None).position
    connection.flushall()
    monkeypatch.setattr(cregistry.changes, "_epoch", lambda _info: "b" * 40)
    users.add("new-1", "new-secret")
    users.delete("new-1")
    page = feed.read(position)
    assert page.reset is True and page.position.endswith("~" + "b" * 40)
    assert page.changes == ({"user": "new-1", "kick": False}, {"user": "new-1", "kick": True})
    assert feed.read(page.position).reset is False


def test_a_position_that_was_never_in_the_stream_is_a_reset(broker: FlaskClient, users: UserStore) -> None:
    position = poll(broker)["position"]
    users.add("near-1", "near-secret")
    milliseconds, sequence = position.split("-")
    for unknown in (f"{milliseconds}-{int(sequence) + 7}", "0-0", "1-0"):
        assert poll(broker, unknown)["reset"] is True


@pytest.mark.parametrize(
    "after",
    [
        "garbage",
        "-",
        "+",
        "$",
        "0",
        "123",
        "1-2-3",
        "99999999999999999999-0",  # one past 2**64: Redis would answer an error
        "18446744073709551616-0",
        "1-18446744073709551616",
        "9" * 200 + "-0",
        "x" * 10000,
        "%00",
        "\x00",
        "1-0\n",
        "１-0",  # fullwidth digit
        "(1-0",
    ],
)
def test_bad_positions_are_a_reset_never_an_error(broker: FlaskClient, after: str) -> None:
    page = poll(broker, after)
    assert page["reset"] is True
    assert poll(broker, page["position"])["reset"] is False


def test_the_largest_possible_position_is_a_reset(broker: FlaskClient) -> None:
    assert poll(broker, "18446744073709551615-18446744073709551615")["reset"] is True


# -- listeners and faults -----------------------------------------------------------
def test_the_feed_is_not_on_the_api_listener(api: FlaskClient) -> None:
    for headers in ({}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
        assert api.get("/mqtt/changes", headers=headers).status_code == 404
        assert api.get("/mqtt/changes?after=0-1", headers=headers).status_code == 404


def test_the_feed_answers_get_only(broker: FlaskClient) -> None:
    assert broker.post("/mqtt/changes").status_code == 405


def test_redis_unreachable_answers_503_within_2_seconds(config: Config) -> None:
    broker = create_app(
        config, listener="broker", connection=cregistry.connections.connect("redis://127.0.0.1:1/0", 0.5)
    ).test_client()
    for after in (None, "1-0"):
        started = time.monotonic()
        response = broker.get("/mqtt/changes", query_string={} if after is None else {"after": after})
        assert time.monotonic() - started < 2
        assert response.status_code == 503
        assert response.get_json()["ok"] is False and response.get_json()["error"]


def test_a_position_given_out_by_another_primary_is_a_reset(
    feed: ChangeFeed, users: UserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failover: the new primary has the entry a position names, but answers
    cached from the old primary may reflect changes it lost (whose entries the
    broker never read). The primary's replication ID in the position tells."""
    primary = {"replid": "a" * 40}
    monkeypatch.setattr(cregistry.changes, "_epoch", lambda _info: primary["replid"])
    first = feed.read(None)
    assert first.position.endswith("~" + "a" * 40)
    users.add("epoch-1", "epoch-secret")
    page = feed.read(first.position)
    assert page.reset is False and page.changes == ({"user": "epoch-1", "kick": False},)
    primary["replid"] = "b" * 40  # promoted replica: same stream, another replication ID
    after = feed.read(page.position)
    assert after.reset is True and after.changes == ()
    assert after.position == page.position.replace("a" * 40, "b" * 40)
    assert feed.read(after.position).reset is False
    # An entry ID alone (given out where there was no replication ID) is a reset too.
    assert feed.read(after.position.partition("~")[0]).reset is True


def test_the_epoch_is_the_primarys_replication_id_or_nothing() -> None:
    replid = "0123456789abcdef0123456789abcdef01234567"
    assert cregistry.changes._epoch({"role": "master", "master_replid": replid}) == replid
    assert cregistry.changes._epoch({"master_replid": "not-a-replid"}) == ""
    assert cregistry.changes._epoch(redis.ResponseError("unknown command 'info'")) == ""


def test_a_reset_continues_before_the_lost_entry_so_later_kicks_still_arrive(
    feed: ChangeFeed, users: UserStore, connection: fakeredis.FakeRedis
) -> None:
    """A failover lost the entry the broker's position names; what the new
    primary recorded since (a delete: a kick) still reaches the broker after
    the reset, which alone kicks nobody."""
    start = feed.read(None).position
    users.add("gone-1", "gone-secret")
    seen = feed.read(start)
    assert seen.changes == ({"user": "gone-1", "kick": False},)
    connection.xdel(KEYS.changes(), seen.position)  # the entry the failover lost
    users.delete("gone-1")  # on the new primary, before the broker polls again
    reset = feed.read(seen.position)
    assert reset.reset is True and reset.position == start
    assert changes_after(feed, reset.position) == [{"user": "gone-1", "kick": True}]
