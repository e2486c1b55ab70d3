"""A user's last successful CONNECT: recorded at most once
a minute per user, shown by `user show`, `users` and the API, and never able
to turn a successful check into a failure."""

from __future__ import annotations

import json

import fakeredis
import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient

import cregistry.cli
from cregistry import services
from cregistry.authorizer import Authorizer, ConnectRequest
from cregistry.config import Config
from cregistry.keys import Keys
from cregistry.last_connect import LAST_CONNECT_INTERVAL
from cregistry.lock import RegistryLock
from cregistry.pending import PendingRequests
from cregistry.registration import Registration
from cregistry.timestamps import isoformat
from cregistry.users import UserStore

from .conftest import FakeClock

KEYS = Keys("cregistry")
PASSWORD = "device-secret"


class FakeMonotonic(FakeClock):
    def __init__(self) -> None:
        super().__init__(1000.0)


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def checker(connection: fakeredis.FakeRedis, config: Config, clock: FakeClock, monotonic: FakeMonotonic) -> Authorizer:
    return services.build(connection, config, clock=clock, monotonic=monotonic).authorizer


@pytest.fixture
def device(users: UserStore) -> str:
    users.add("sensor-1", PASSWORD)
    return "sensor-1"


def advance(clock: FakeClock, monotonic: FakeMonotonic, seconds: float) -> None:
    clock.advance(seconds)
    monotonic.advance(seconds)


def test_a_successful_connect_is_recorded(checker: Authorizer, users: UserStore, clock: FakeClock, device: str) -> None:
    assert users.get(device).to_dict()["lastConnect"] is None
    assert checker.check_user(ConnectRequest(device, PASSWORD, "client-a")).allowed
    shown = users.get(device).to_dict()
    assert (shown["lastConnect"], shown["lastClientId"]) == (isoformat(clock.now), "client-a")


def test_a_refused_connect_is_not_recorded(checker: Authorizer, users: UserStore, device: str) -> None:
    assert not checker.check_user(ConnectRequest(device, "wrong-password", "client-a")).allowed
    assert not checker.check_user(ConnectRequest("nobody-1", PASSWORD, "client-a")).allowed
    assert users.get(device).last_connect is None


def test_written_at_most_once_a_minute_per_user(
    checker: Authorizer,
    users: UserStore,
    clock: FakeClock,
    monotonic: FakeMonotonic,
    device: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes: list[str] = []
    original = checker.users.record_connect

    def counting(username: str, *args: object) -> bool:
        writes.append(username)
        return original(username, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(checker.users, "record_connect", counting)
    first = clock.now
    for _ in range(5):
        assert checker.check_user(ConnectRequest(device, PASSWORD, "client-a")).allowed
        advance(clock, monotonic, 10)
    assert writes == [device]  # one Redis write in 50 s of connects
    assert users.get(device).last_connect == first
    advance(clock, monotonic, LAST_CONNECT_INTERVAL)
    assert checker.check_user(ConnectRequest(device, PASSWORD, "client-a")).allowed
    assert writes == [device, device]
    assert users.get(device).last_connect == clock.now


def test_another_client_id_is_recorded_at_once(
    checker: Authorizer, users: UserStore, clock: FakeClock, monotonic: FakeMonotonic, device: str
) -> None:
    assert checker.check_user(ConnectRequest(device, PASSWORD, "client-a")).allowed
    advance(clock, monotonic, 5)
    assert checker.check_user(ConnectRequest(device, PASSWORD, "client-b")).allowed
    assert (users.get(device).last_connect, users.get(device).last_client_id) == (clock.now, "client-b")


def test_another_process_that_wrote_recently_is_not_repeated(
    connection: fakeredis.FakeRedis, config: Config, clock: FakeClock, device: str, users: UserStore
) -> None:
    """Two workers: the second one reads that the first one wrote and skips the write."""
    first, second = (
        services.build(connection, config, clock=clock, monotonic=FakeMonotonic()).authorizer for _ in range(2)
    )
    assert first.check_user(ConnectRequest(device, PASSWORD, "client-a")).allowed
    written = connection.hgetall(KEYS.user_last_connect(device))
    clock.advance(30)
    assert second.check_user(ConnectRequest(device, PASSWORD, "client-a")).allowed
    assert connection.hgetall(KEYS.user_last_connect(device)) == written


@pytest.mark.parametrize("error", [redis.ConnectionError("gone"), redis.TimeoutError("slow"), redis.ReadOnlyError()])
def test_a_failing_bookkeeping_write_leaves_the_connect_a_success(
    checker: Authorizer, users: UserStore, device: str, monkeypatch: pytest.MonkeyPatch, error: redis.RedisError
) -> None:
    def failing(*_args: object) -> bool:
        raise error

    monkeypatch.setattr(checker.users, "record_connect", failing)
    assert checker.check_user(ConnectRequest(device, PASSWORD, "client-a")).allowed
    assert users.get(device).last_connect is None  # it did fail


def test_no_bookkeeping_when_the_check_was_slow(
    checker: Authorizer, users: UserStore, monotonic: FakeMonotonic, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check that already took long (bcrypt queue, slow Redis) answers without the extra round trips."""
    original = checker.verifier.verify

    def slow_verify(username: str, password: str, client_id: str = "", record: object = None) -> object:
        monotonic.advance(1.0)
        return original(username, password, client_id, record)

    monkeypatch.setattr(checker.verifier, "verify", slow_verify)
    assert checker.check_user(ConnectRequest(device, PASSWORD, "client-a")).allowed
    assert users.get(device).last_connect is None


def test_deleting_and_recreating_a_user_starts_without_a_last_connect(
    checker: Authorizer, users: UserStore, connection: fakeredis.FakeRedis, device: str
) -> None:
    assert checker.check_user(ConnectRequest(device, PASSWORD, "client-a")).allowed
    users.delete(device)
    assert not connection.exists(KEYS.user_last_connect(device))
    # A connect that passed its password check just before the delete writes late:
    users.record_connect(device, "client-a", 1.0, LAST_CONNECT_INTERVAL)
    users.add(device, PASSWORD)
    assert users.get(device).last_connect is None


def test_an_approval_starts_without_a_predecessors_last_connect(
    users: UserStore,
    connection: fakeredis.FakeRedis,
    registration: Registration,
    lock: RegistryLock,
    requests: PendingRequests,
) -> None:
    users.record_connect("sensor-9", "stray", 1.0, LAST_CONNECT_INTERVAL)
    lock.unlock()
    registration.record_attempt("sensor-9", PASSWORD, "client-9", "mqtt")
    assert requests.approve("sensor-9").last_connect is None
    assert not connection.exists(KEYS.user_last_connect("sensor-9"))


def test_shown_by_user_show_users_and_the_api(
    checker: Authorizer,
    users: UserStore,
    clock: FakeClock,
    runner: CliRunner,
    api: FlaskClient,
    auth: dict[str, str],
    device: str,
) -> None:
    users.add("backend", "backend-password")
    assert checker.check_user(ConnectRequest(device, PASSWORD, "client-a")).allowed
    when = isoformat(clock.now)
    show = runner.invoke(cregistry.cli.cli, ["user", "show", device])
    assert f"last connect: {when} (client id client-a)\n" in show.stdout
    listed = runner.invoke(cregistry.cli.cli, ["users"]).stdout.splitlines()
    assert listed[1].endswith("  never") and listed[1].startswith("backend")
    assert listed[2].endswith(f"  {when} client-a") and listed[2].startswith("sensor-1")
    body = api.get(f"/api/users/{device}", headers=auth).get_json()
    assert (body["lastConnect"], body["lastClientId"]) == (when, "client-a")
    everyone = api.get("/api/users", headers=auth).get_json()["users"]
    assert [(u["username"], u["lastConnect"]) for u in everyone] == [("backend", None), (device, when)]


def test_users_not_connected_for_a_week(
    connection: fakeredis.FakeRedis,
    config: Config,
    users: UserStore,
    runner: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    now = time.time()  # the CLI's own clock
    for name in ("quiet-1", "recent-1", "never-1"):
        users.add(name, PASSWORD)
    users.record_connect("quiet-1", "q", now - 8 * 86400, LAST_CONNECT_INTERVAL)
    users.record_connect("recent-1", "r", now - 2 * 86400, LAST_CONNECT_INTERVAL)
    result = runner.invoke(cregistry.cli.cli, ["users", "--not-connected-for", "7", "--json"])
    assert result.exit_code == 0, result.output
    assert [u["username"] for u in json.loads(result.stdout)["users"]] == ["never-1", "quiet-1"]
    everyone = runner.invoke(cregistry.cli.cli, ["users", "--json"])
    assert len(json.loads(everyone.stdout)["users"]) == 3
    bad = runner.invoke(cregistry.cli.cli, ["users", "--not-connected-for", "-1"])
    assert bad.exit_code == 2
