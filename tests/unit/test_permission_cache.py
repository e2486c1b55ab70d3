"""The per-worker permission cache: one round trip per ACL check, exact
after every change, and nothing answered without Redis."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from cregistry import services
from cregistry.permission_cache import PermissionCache
from cregistry.permissions import Permission
from cregistry.users import AclData, UserStore

USERNAME = "sensor-1"


@pytest.fixture
def users(domain: services.Services) -> UserStore:
    domain.users.add(USERNAME, "secret12")
    domain.users.grant(USERNAME, "a/#", "readWrite")
    return domain.users


def test_the_snapshot_is_the_same_data_as_acl_data(users: UserStore) -> None:
    users.roles.set_permissions("readers", [{"topic": "r/#", "access": "read"}])
    users.roles.set_permissions("writers", [{"topic": "w/#", "access": "write"}])
    users.assign_role(USERNAME, "writers")
    users.assign_role(USERNAME, "readers")
    users.set_superuser(USERNAME, True)
    position, data = users.acl_snapshot(USERNAME, "")
    assert position
    assert data == users.acl_data(USERNAME)
    assert data is not None and data.superuser and len(data.permissions) == 3
    assert users.acl_snapshot("nobody", "") == (position, AclData(False, False, ()))


def test_a_known_position_answers_without_the_data(users: UserStore) -> None:
    position, data = users.acl_snapshot(USERNAME, "")
    assert data is not None
    assert users.acl_snapshot(USERNAME, position) == (position, None)
    users.revoke(USERNAME, "a/#")
    moved, fresh = users.acl_snapshot(USERNAME, position)
    assert moved != position and fresh == AclData(True, False, ())


def test_every_change_is_seen_at_the_next_lookup(users: UserStore) -> None:
    cache = PermissionCache(users)
    assert cache.acl_data(USERNAME).permissions == (Permission("a/#", "readWrite"),)
    assert USERNAME in cache.entries
    users.roles.set_permissions("team", [{"topic": "t/#", "access": "read"}])
    users.assign_role(USERNAME, "team")
    assert [p.topic for p in cache.acl_data(USERNAME).permissions] == ["a/#", "t/#"]
    users.roles.revoke("team", "t/#")  # a role's change names no user in the feed
    assert [p.topic for p in cache.acl_data(USERNAME).permissions] == ["a/#"]
    users.delete(USERNAME)
    assert not cache.acl_data(USERNAME).exists


def test_a_cached_answer_is_still_read_from_redis(users: UserStore) -> None:
    cache = PermissionCache(users)
    assert cache.acl_data(USERNAME).exists
    redis_server = users.redis.connection_pool.connection_kwargs["server"]
    assert isinstance(redis_server, fakeredis.FakeServer)
    redis_server.connected = False
    with pytest.raises(redis.ConnectionError):
        cache.acl_data(USERNAME)


def test_a_flushed_redis_is_not_mistaken_for_the_cached_state(users: UserStore) -> None:
    cache = PermissionCache(users)
    assert cache.acl_data(USERNAME).exists
    users.redis.flushall()
    assert not cache.acl_data(USERNAME).exists


def test_the_cache_is_bounded(users: UserStore) -> None:
    cache = PermissionCache(users, max_users=3)
    for n in range(10):
        cache.acl_data(f"user-{n}")
    assert len(cache.entries) <= 3
