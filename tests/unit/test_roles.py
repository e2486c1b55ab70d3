"""Roles (roles.py) and the users who hold them (users.py): a role must exist
before a user is given it, and deleting a role takes it from its members."""

from __future__ import annotations

import fakeredis
import pytest

from cregistry import services
from cregistry.errors import InvalidInput, PermissionNotFound, RoleNotFound

PASSWORD = "correct-horse-battery"


@pytest.fixture
def fleet(domain: services.Services) -> services.Services:
    """A role "fleet" with one permission, held by the user "sensor-1"."""
    domain.users.add("sensor-1", PASSWORD)
    domain.roles.grant("fleet", "fleet/%u/#", "readWrite")
    domain.users.assign_role("sensor-1", "fleet")
    return domain


def test_a_role_lists_its_permissions_and_members(fleet: services.Services) -> None:
    role = fleet.roles.get("fleet")
    assert role.to_dict() == {
        "name": "fleet",
        "permissions": [{"topic": "fleet/%u/#", "access": "readWrite"}],
        "members": ["sensor-1"],
    }
    assert [r.name for r in fleet.roles.list_roles()] == ["fleet"]


@pytest.mark.parametrize(
    "give",
    [
        lambda domain: domain.users.assign_role("sensor-1", "ghost"),
        lambda domain: domain.users.set_roles("sensor-1", ["fleet", "ghost"]),
    ],
    ids=["assign", "set"],
)
def test_a_user_is_never_given_a_role_that_does_not_exist(
    fleet: services.Services, connection: fakeredis.FakeRedis, give: object
) -> None:
    before = {key: connection.dump(key) for key in connection.keys("*")}
    with pytest.raises(RoleNotFound, match="no role 'ghost'"):
        give(fleet)  # type: ignore[operator]
    assert {key: connection.dump(key) for key in connection.keys("*")} == before
    assert fleet.users.get("sensor-1").roles == ("fleet",)


def test_a_missing_or_misnamed_role_is_refused(fleet: services.Services) -> None:
    with pytest.raises(RoleNotFound):
        fleet.roles.get("ghost")
    with pytest.raises(RoleNotFound):
        fleet.users.unassign_role("sensor-1", "other")
    with pytest.raises(PermissionNotFound):
        fleet.roles.revoke("fleet", "not/granted")
    with pytest.raises(InvalidInput):
        fleet.roles.grant("bad role", "a/#", "read")


def test_deleting_a_role_takes_it_from_its_members(fleet: services.Services) -> None:
    fleet.roles.delete("fleet")
    assert fleet.users.get("sensor-1").roles == ()
    assert fleet.roles.list_roles() == []
    assert fleet.users.acl_data("sensor-1").permissions == ()
