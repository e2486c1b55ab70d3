"""The worker caches the broker checks answer from without Redis: only for
a caller whose feed position the worker's follower covers, only while the
follower reads the feed, and never with data older than an applied change."""

from __future__ import annotations

import time
from collections.abc import Callable

import fakeredis
import pytest
import redis

from cregistry import services
from cregistry.authorizer import ConnectRequest
from cregistry.config import Config
from cregistry.feed_follower import FRESH_SECONDS, entry_order
from cregistry.followed_cache import FollowedCache
from cregistry.users import AclData
from tests.unit.conftest import FakeClock

from .conftest import acl

USERNAME = "sensor-1"
PASSWORD = "secret12-long-enough"
ACC_WRITE = 2


class NoRedis(Exception):
    pass


@pytest.fixture
def monotonic() -> FakeClock:
    return FakeClock(start=1000.0)


@pytest.fixture
def followed(
    connection: fakeredis.FakeRedis, config: Config, clock: FakeClock, monotonic: FakeClock
) -> services.Services:
    domain = services.build(connection, config, clock=clock, monotonic=monotonic, follow_changes=True)
    domain.users.add(USERNAME, PASSWORD)
    domain.users.grant(USERNAME, "a/%u/#", "write")
    domain.users.set_client_ids(USERNAME, ["c", "c-1", "c-2"])  # the cache answers for the user's own only
    assert domain.follower is not None
    domain.follower.follow_once()
    return domain


def _position(domain: services.Services) -> str:
    assert domain.follower is not None
    return domain.follower.position


def _without_redis(domain: services.Services, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise NoRedis

    monkeypatch.setattr(domain.users, "acl_snapshot", refuse)
    monkeypatch.setattr(domain.verifier, "verify_by_token", refuse)


def test_a_covered_caller_is_answered_from_the_cache_without_redis(
    followed: services.Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _position(followed)
    authorizer = followed.authorizer
    assert authorizer.check_acl_cached(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE), seen) is None  # not read yet
    assert authorizer.check_acl(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE), seen).allowed
    _without_redis(followed, monkeypatch)
    assert authorizer.check_acl(acl(USERNAME, "c", f"a/{USERNAME}/y", ACC_WRITE), seen).allowed
    denied = authorizer.check_acl_cached(acl(USERNAME, "c", "b/elsewhere", ACC_WRITE), seen)
    assert denied is not None and not denied.allowed and denied.reason == "no permission for this topic"
    # Without a position (go-auth, anyone else) every check asks Redis.
    with pytest.raises(NoRedis):
        authorizer.check_acl(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE))


def test_a_caller_ahead_of_the_follower_is_answered_by_redis(followed: services.Services) -> None:
    authorizer = followed.authorizer
    topic = f"a/{USERNAME}/x"
    assert authorizer.check_acl(acl(USERNAME, "c", topic, ACC_WRITE), _position(followed)).allowed
    followed.users.revoke(USERNAME, "a/%u/#")
    ahead = followed.changes.read(_position(followed)).position  # what the plugin has read, the follower not yet
    assert ahead != _position(followed)
    assert authorizer.check_acl_cached(acl(USERNAME, "c", topic, ACC_WRITE), ahead) is None
    assert not authorizer.check_acl(acl(USERNAME, "c", topic, ACC_WRITE), ahead).allowed
    # The follower has not applied the revocation: a caller behind it still gets the older answer,
    # which it will drop itself when it reads the change.
    assert authorizer.check_acl_cached(acl(USERNAME, "c", topic, ACC_WRITE), _position(followed)) is not None


def test_the_follower_drops_what_the_feed_names(followed: services.Services) -> None:
    authorizer = followed.authorizer
    followed.users.add("other-1", PASSWORD)
    followed.users.grant("other-1", "o/#", "write")
    followed.follower.follow_once()  # type: ignore[union-attr]
    seen = _position(followed)
    assert authorizer.check_acl(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE), seen).allowed
    assert authorizer.check_acl(acl("other-1", "c", "o/x", ACC_WRITE), seen).allowed
    followed.users.revoke(USERNAME, "a/%u/#")
    followed.follower.follow_once()  # type: ignore[union-attr]
    seen = _position(followed)
    assert authorizer.check_acl_cached(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE), seen) is None
    assert authorizer.check_acl_cached(acl("other-1", "c", "o/x", ACC_WRITE), seen) is not None  # not named: kept
    followed.roles.set_permissions("team", [{"topic": "t/#", "access": "read"}])  # a role: everything
    followed.follower.follow_once()  # type: ignore[union-attr]
    assert authorizer.check_acl_cached(acl("other-1", "c", "o/x", ACC_WRITE), _position(followed)) is None


def test_a_follower_that_stopped_reading_answers_nothing(followed: services.Services, monotonic: FakeClock) -> None:
    authorizer = followed.authorizer
    seen = _position(followed)
    assert authorizer.check_acl(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE), seen).allowed
    monotonic.advance(FRESH_SECONDS + 0.1)
    assert authorizer.check_acl_cached(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE), seen) is None
    followed.follower.follow_once()  # type: ignore[union-attr]
    assert authorizer.check_acl_cached(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE), seen) is not None


def test_a_failed_read_stops_the_caches_at_once(followed: services.Services, monkeypatch: pytest.MonkeyPatch) -> None:
    follower = followed.follower
    assert follower is not None
    seen = _position(followed)
    assert followed.authorizer.check_acl(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE), seen).allowed

    def refused(_after: object) -> None:
        raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(follower.feed, "read", refused)
    follower.step()
    assert followed.authorizer.check_acl_cached(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE), seen) is None
    monkeypatch.undo()
    follower.step()
    assert followed.authorizer.check_acl_cached(acl(USERNAME, "c", f"a/{USERNAME}/x", ACC_WRITE), seen) is not None


def test_data_read_before_an_applied_change_is_not_admitted(followed: services.Services) -> None:
    assert followed.follower is not None
    cache: FollowedCache[AclData] = FollowedCache(followed.follower)
    before = _position(followed).partition("~")[0]
    followed.users.grant(USERNAME, "b/#", "read")
    followed.follower.follow_once()
    cache.put(USERNAME, before, AclData(True, False, ()))
    assert USERNAME not in cache.entries
    cache.put(USERNAME, _position(followed).partition("~")[0], AclData(True, False, ()))
    assert cache.get(USERNAME, _position(followed)) == AclData(True, False, ())
    assert cache.get(USERNAME, None) is None
    assert cache.get(USERNAME, "garbage") is None


class _ApplyingOnRead(dict[str, AclData]):
    """The cache's entries; reading one lets the follower apply `then` first
    returned the value it held before: the forced interleaving of a check
    and the follower's thread."""

    def __init__(self, then: Callable[[], None]) -> None:
        super().__init__()
        self.then = then

    def get(self, key: str, default: object = None) -> AclData | None:  # type: ignore[override]
        value = super().get(key)
        self.then()
        return value


def test_a_change_applied_while_a_check_reads_is_never_answered_stale(followed: services.Services) -> None:
    """The caller (the plugin) has already read the revoke; the follower applies
    it in between the check's read of its entry and its coverage test."""
    follower = followed.follower
    assert follower is not None
    cache: FollowedCache[AclData] = FollowedCache(follower)
    stale = AclData(True, False, ())
    cache.put(USERNAME, _position(followed).partition("~")[0], stale)
    followed.users.revoke(USERNAME, "a/%u/#")
    caller_seen = followed.changes.read(_position(followed)).position  # the plugin's new position
    applied: list[bool] = []

    def follower_applies() -> None:
        if not applied:
            applied.append(True)
            follower.follow_once()

    entries = _ApplyingOnRead(follower_applies)
    entries.update(cache.entries)
    cache.entries = entries
    answer = cache.get(USERNAME, caller_seen)
    if not applied:  # coverage tested first: not yet covered, so Redis answers
        assert answer is None
        follower.follow_once()
    assert follower.covers(caller_seen)
    assert answer is None
    assert cache.get(USERNAME, caller_seen) is None  # the revoke dropped the entry


def test_positions_compare_by_replication_id_and_entry() -> None:
    assert entry_order("5-1~" + "a" * 40) == ("a" * 40, (5, 1))
    assert entry_order("12-0") == ("", (12, 0))
    assert entry_order("5-1x") is None and entry_order("") is None
    assert entry_order("10-0") > entry_order("9-5")  # type: ignore[operator]


def test_an_accepted_password_is_kept_until_its_token_ends_or_the_password_changes(
    followed: services.Services, monotonic: FakeClock, config: Config
) -> None:
    verifier = followed.verifier
    seen = _position(followed)
    assert followed.authorizer.check_user(ConnectRequest(USERNAME, PASSWORD, "c")).allowed  # bcrypt, then the token
    assert verifier.verify_by_cached_token(USERNAME, PASSWORD, seen, "c")
    assert not verifier.verify_by_cached_token(USERNAME, PASSWORD + "x", seen, "c")
    assert not verifier.verify_by_cached_token(USERNAME, PASSWORD, None, "c")
    monotonic.advance(config.verified_ttl + 1)
    followed.follower.follow_once()  # type: ignore[union-attr]
    assert not verifier.verify_by_cached_token(USERNAME, PASSWORD, _position(followed), "c")
    assert verifier.verify_by_token(USERNAME, PASSWORD, "c")  # fakeredis's TTL runs on real time: still there
    assert verifier.verify_by_cached_token(USERNAME, PASSWORD, _position(followed), "c")
    followed.users.set_password(USERNAME, "another-password-1")
    followed.follower.follow_once()  # type: ignore[union-attr]
    assert not verifier.verify_by_cached_token(USERNAME, PASSWORD, _position(followed), "c")


def test_a_connect_from_the_cache_records_the_last_connect_in_the_background(followed: services.Services) -> None:
    assert followed.authorizer.check_user(ConnectRequest(USERNAME, PASSWORD, "c-1")).allowed
    followed.authorizer.last_connects.skip_until.clear()  # as if the last write were long ago
    decision = followed.authorizer.check_user_cached(ConnectRequest(USERNAME, PASSWORD, "c-2"), _position(followed))
    assert decision is not None and decision.allowed
    deadline = time.monotonic() + 5
    while followed.users.get(USERNAME).last_client_id != "c-2":
        assert time.monotonic() < deadline, "the background write did not happen"
        time.sleep(0.01)
