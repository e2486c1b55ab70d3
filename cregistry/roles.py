"""Roles: named sets of permissions that users hold (users.py assigns them)."""

from __future__ import annotations

import dataclasses
from typing import TypedDict, cast

import redis
from redis.client import Pipeline

from cregistry import names
from cregistry.audit import UNNAMED_ACTOR, AuditLog
from cregistry.errors import PermissionNotFound, RoleNotFound
from cregistry.keys import Keys
from cregistry.permissions import (
    Permission,
    PermissionChange,
    PermissionDict,
    parse_permission,
    parse_permission_list,
    permissions_from,
    replace_permissions,
)
from cregistry.topics import validate_pattern
from cregistry.transactions import run_watched


class RoleDict(TypedDict):
    name: str
    permissions: list[PermissionDict]
    members: list[str]


@dataclasses.dataclass(frozen=True)
class Role:
    name: str
    permissions: tuple[Permission, ...]
    members: tuple[str, ...]

    def to_dict(self) -> RoleDict:
        return {
            "name": self.name,
            "permissions": [p.to_dict() for p in self.permissions],
            "members": list(self.members),
        }


class RoleStore:
    """Roles in Redis, with their members. Takes its connection; knows nothing of HTTP.

    Every change takes the `actor` for the audit trail and writes its audit
    entry in the same transaction (the audit log records it in the change
    feed too, so that brokers forget the members' permissions)."""

    def __init__(self, connection: redis.Redis, *, keys: Keys, audit: AuditLog) -> None:
        self.redis = connection
        self.keys = keys
        self.audit = audit

    def require(self, role: str) -> None:
        """Raise RoleNotFound unless `role` exists (InvalidInput for a name no role can have)."""
        names.validate_role_name(role)
        if not self.redis.sismember(self.keys.roles(), role):
            raise RoleNotFound(f"no role {role!r}")

    def get(self, role: str) -> Role:
        self.require(role)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.role_permissions(role))
        pipe.smembers(self.keys.role_members(role))
        permissions, members = pipe.execute()
        return Role(role, tuple(permissions_from(permissions)), tuple(sorted(members)))

    def list_roles(self) -> list[Role]:
        return [self.get(name) for name in sorted(cast("set[str]", self.redis.smembers(self.keys.roles())))]

    def set_permissions(self, role: str, items: object, *, actor: str = UNNAMED_ACTOR) -> Role:
        """Create the role if needed and replace its permissions."""
        names.validate_role_name(role)
        permissions = parse_permission_list(items)

        def replace(pipe: Pipeline) -> None:
            pipe.multi()
            pipe.sadd(self.keys.roles(), role)
            replace_permissions(pipe, self.keys.role_permissions(role), permissions)
            self.audit.add(pipe, actor, "role.permissions", role, permissions=[p.to_dict() for p in permissions])

        run_watched(self.redis, [], replace)
        return self.get(role)

    def grant(self, role: str, topic: str, access: str, *, actor: str = UNNAMED_ACTOR) -> Role:
        """Create the role if needed and set its access on `topic` (replacing, as a user's grant does)."""
        return self.grant_permission(role, topic, access, actor=actor)[0]

    def grant_permission(
        self, role: str, topic: str, access: str, *, actor: str = UNNAMED_ACTOR
    ) -> tuple[Role, PermissionChange]:
        """grant(), also saying what it replaced; the audit entry records the old access."""
        names.validate_role_name(role)
        permission = parse_permission(topic, access)
        key = self.keys.role_permissions(role)

        def replace(pipe: Pipeline) -> PermissionChange:
            change = PermissionChange(permission, cast("str | None", pipe.hget(key, permission.topic)))
            pipe.multi()
            pipe.sadd(self.keys.roles(), role)
            pipe.hset(key, permission.topic, permission.access)
            self.audit.add(
                pipe, actor, "role.grant", role, topic=permission.topic, access=permission.access,
                previous=change.previous,
            )  # fmt: skip
            return change

        change = run_watched(self.redis, [key], replace)
        return self.get(role), change

    def revoke(self, role: str, topic: str, *, actor: str = UNNAMED_ACTOR) -> Role:
        self.require(role)
        validate_pattern(topic)
        key = self.keys.role_permissions(role)

        def remove(pipe: Pipeline) -> None:
            if not pipe.hexists(key, topic):
                raise PermissionNotFound(f"role {role!r} has no permission on {topic!r}")
            pipe.multi()
            pipe.hdel(key, topic)
            self.audit.add(pipe, actor, "role.revoke", role, topic=topic)

        run_watched(self.redis, [key], remove)
        return self.get(role)

    def delete(self, role: str, *, actor: str = UNNAMED_ACTOR) -> None:
        """Delete the role and take it from its members."""
        self.require(role)
        members_key = self.keys.role_members(role)

        def remove(pipe: Pipeline) -> None:
            members = cast("set[str]", pipe.smembers(members_key))
            pipe.multi()
            pipe.srem(self.keys.roles(), role)
            pipe.delete(self.keys.role_permissions(role), members_key)
            for username in members:
                pipe.srem(self.keys.user_roles(username), role)
            self.audit.add(pipe, actor, "role.delete", role)

        run_watched(self.redis, [members_key], remove)
