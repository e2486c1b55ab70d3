"""The audit trail: who unlocked, locked, approved, denied, or changed a user,
role or permission, and when. A Redis stream capped at CREGISTRY_AUDIT_MAX
entries; each entry is written in the same transaction as the change it
describes, so there is no change without its entry and no entry without its
change. The same call queues the change-feed entry brokers read (changes.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypedDict, cast

import redis
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from cregistry.changes import ChangeFeed
from cregistry.config import Config
from cregistry.keys import Keys
from cregistry.names import validate_int_within
from cregistry.timestamps import isoformat

MAX_LISTED = 1000
# Whoever changes something without saying who (tests, library use).
UNNAMED_ACTOR = "system"


class AuditEntry(TypedDict):
    """One entry as the API and the CLI show it; `details` as the change recorded them."""

    id: str
    time: str | None
    actor: str
    action: str
    target: str
    details: dict[str, object]


class AuditLog:
    def __init__(
        self,
        connection: redis.Redis,
        config: Config,
        clock: Callable[[], float] = time.time,
        *,
        keys: Keys,
        changes: ChangeFeed,
    ) -> None:
        self.redis = connection
        self.config = config
        self.keys = keys
        self.clock = clock
        self.changes = changes

    def add(self, pipe: Pipeline, actor: str, action: str, target: str, **details: object) -> None:
        """Queue one entry, and the change-feed entry the action calls for, on
        `pipe`, the transaction that makes the change."""
        self.changes.record(pipe, action, target)
        fields: dict[FieldT, EncodableT] = {
            "time": repr(self.clock()),
            "actor": actor,
            "action": action,
            "target": target,
            "details": json.dumps(details, sort_keys=True, default=str),
        }
        pipe.xadd(self.keys.audit(), fields, maxlen=self.config.audit_max, approximate=True)

    def entries(self, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` entries, newest first."""
        validate_int_within(limit, "limit", 1, MAX_LISTED)
        # The connection decodes its answers (connections.py): ids and fields are str.
        rows = cast("list[tuple[str, dict[str, str]]]", self.redis.xrevrange(self.keys.audit(), count=limit))
        return [_entry(entry_id, fields) for entry_id, fields in rows or []]


def _entry(entry_id: str, fields: dict[str, str]) -> AuditEntry:
    return {
        "id": entry_id,
        "time": isoformat(float(fields.get("time") or 0)),
        "actor": fields.get("actor", ""),
        "action": fields.get("action", ""),
        "target": fields.get("target", ""),
        "details": json.loads(fields.get("details") or "{}"),
    }
