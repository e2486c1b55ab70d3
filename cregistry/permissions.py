"""Permissions: an access level on a topic pattern, as users and roles hold
them (users.py, roles.py), parsed and checked before anything is written."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TypedDict

from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from cregistry.errors import InvalidInput
from cregistry.topics import validate_pattern

ACCESS_LEVELS = ("read", "write", "readWrite")
READ_ACCESS = ("read", "readWrite")
WRITE_ACCESS = ("write", "readWrite")
MAX_PERMISSIONS = 1000  # per user or role; ACL checks read them all


class PermissionDict(TypedDict):
    topic: str
    access: str


@dataclasses.dataclass(frozen=True)
class Permission:
    topic: str
    access: str

    def to_dict(self) -> PermissionDict:
        return {"topic": self.topic, "access": self.access}


@dataclasses.dataclass(frozen=True)
class PermissionChange:
    """What one grant did. A grant replaces the access on that exact pattern
    (it never merges read and write into readWrite); `previous` is the access
    it replaced, None for a new pattern."""

    permission: Permission
    previous: str | None

    def describe(self) -> str:
        """ "read → write", "new", or "unchanged"."""
        if self.previous is None:
            return "new"
        if self.previous == self.permission.access:
            return "unchanged"
        return f"{self.previous} → {self.permission.access}"


def parse_permission(topic: object, access: object) -> Permission:
    pattern = validate_pattern(topic)
    if not isinstance(access, str) or access not in ACCESS_LEVELS:
        raise InvalidInput(f"access must be one of {', '.join(ACCESS_LEVELS)}")
    return Permission(pattern, access)


def parse_permission_list(items: object) -> list[Permission]:
    """A JSON list of {"topic", "access"}; the whole list is checked before any write."""
    if not isinstance(items, list):
        raise InvalidInput('permissions must be a JSON list of {"topic": ..., "access": ...}')
    if len(items) > MAX_PERMISSIONS:
        raise InvalidInput(f"at most {MAX_PERMISSIONS} permissions")
    permissions: list[Permission] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"topic", "access"}:
            raise InvalidInput(f'permission {index}: expected exactly {{"topic": ..., "access": ...}}')
        try:
            permission = parse_permission(item["topic"], item["access"])
        except InvalidInput as error:
            raise InvalidInput(f"permission {index}: {error}") from None
        if permission.topic in seen:
            raise InvalidInput(f"permission {index}: topic {permission.topic!r} is listed twice")
        seen.add(permission.topic)
        permissions.append(permission)
    return permissions


def replace_permissions(pipe: Pipeline, key: str, permissions: Iterable[Permission]) -> None:
    """Queue the writes that make the permissions hash at `key` hold exactly `permissions`."""
    pipe.delete(key)
    mapping: dict[FieldT, EncodableT] = {p.topic: p.access for p in permissions}
    if mapping:
        pipe.hset(key, mapping=mapping)


def permissions_from(mapping: Mapping[str, str]) -> list[Permission]:
    """A permissions hash as HGETALL answers it, sorted by topic."""
    return sorted((Permission(topic, access) for topic, access in mapping.items()), key=lambda p: p.topic)
