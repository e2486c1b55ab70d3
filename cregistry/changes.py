"""The change feed: what brokers must forget, in the order it happened.

A broker plugin caches answers of the broker routes. Every change that can
make a cached answer wrong is recorded in a capped Redis stream, in the same
transaction as the change itself (audit.py calls record() for every audit
entry, so no change can skip it). The plugin polls `GET /mqtt/changes?after=`
on the broker listener and drops what the entries name; see the README,
"The change feed".

A position is a stream entry ID. Reading from a position first checks that
the entry still exists: if it does, nothing after it can have been missed; if
it does not (the broker fell more than CREGISTRY_CHANGES_MAX changes behind,
Redis was flushed, a failover lost entries), the answer is a reset and the
plugin drops its whole cache. So that every answer can name an existing
entry, an empty stream is seeded with a marker entry.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import redis
from redis.client import Pipeline

from cregistry.config import Config
from cregistry.keys import Keys

MAX_PAGE = 1000  # changes per answer; the plugin polls again on its next interval

# What each audited action means for a broker's cache.
FORGET_USER = "user"  # drop the user's cached answers
KICK_USER = "kick"  # ... and disconnect the user's clients
FORGET_ALL = "all"  # drop everything (a role's members may be many)

CHANGE_FOR_ACTION = {
    "request.approve": FORGET_USER,
    "user.add": FORGET_USER,
    "user.superuser": FORGET_USER,
    "user.permissions": FORGET_USER,
    "user.grant": FORGET_USER,
    "user.revoke": FORGET_USER,
    "user.roles": FORGET_USER,
    "user.role.assign": FORGET_USER,
    "user.role.unassign": FORGET_USER,
    "user.delete": KICK_USER,
    "user.password": KICK_USER,
    "role.permissions": FORGET_ALL,
    "role.grant": FORGET_ALL,
    "role.revoke": FORGET_ALL,
    "role.delete": FORGET_ALL,
}
# Actions that change nothing a broker caches: refused CONNECTs are never cached.
NO_CHANGE_ACTIONS = frozenset({"registry.unlock", "registry.lock", "request.deny", "user.failures.clear"})

_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)
_UINT64_MAX = 2**64 - 1


@dataclasses.dataclass(frozen=True)
class FeedPage:
    """One answer of the feed: where to continue, and what to forget."""

    position: str
    reset: bool
    changes: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "reset": self.reset, "changes": list(self.changes)}


class ChangeFeed:
    def __init__(self, connection: redis.Redis, config: Config, *, keys: Keys | None = None) -> None:
        self.redis = connection
        self.config = config
        self.keys = keys if keys is not None else Keys(config.key_prefix)

    def record(self, pipe: Pipeline, action: str, target: str) -> None:
        """Queue the feed entry for `action` on `target` on `pipe`, the change's transaction."""
        kind = CHANGE_FOR_ACTION.get(action)
        if kind is None:
            if action not in NO_CHANGE_ACTIONS:
                # A new action must say what brokers forget; failing here writes nothing.
                raise ValueError(f"audit action {action!r} is in neither table of changes.py")
            return
        fields = {"all": "1"} if kind == FORGET_ALL else {"user": target, "kick": "1" if kind == KICK_USER else "0"}
        self._add(pipe, fields)

    def read(self, after: str | None) -> FeedPage:
        """The changes after position `after` (oldest first, at most MAX_PAGE),
        or a reset when `after` is absent or names no entry of the stream."""
        if after is None or not _is_stream_id(after):
            return FeedPage(self._latest_position(), True)
        rows: Any = self.redis.xrange(self.keys.changes(), min=after, max="+", count=MAX_PAGE + 1)
        if not rows or rows[0][0] != after:
            return FeedPage(self._latest_position(), True)
        rows = rows[1:]
        position = rows[-1][0] if rows else after
        changes = tuple(change for change in (_change(fields) for _id, fields in rows) if change is not None)
        return FeedPage(position, False, changes)

    def _latest_position(self) -> str:
        rows: Any = self.redis.xrevrange(self.keys.changes(), count=1)
        if rows:
            return str(rows[0][0])
        # Concurrent seeds add two markers; both are skipped when read.
        return str(self._add(self.redis, {"marker": "1"}))

    def _add(self, target: Any, fields: dict[str, str]) -> Any:
        # Exact trimming: the cap is what the README promises, and changes are rare.
        return target.xadd(self.keys.changes(), fields, maxlen=self.config.changes_max, approximate=False)


def _is_stream_id(text: str) -> bool:
    """Redis refuses IDs beyond 64 bits with an error; such positions are simply unknown."""
    match = _STREAM_ID.fullmatch(text)
    return match is not None and all(int(part) <= _UINT64_MAX for part in match.groups())


def _change(fields: dict[Any, Any]) -> dict[str, Any] | None:
    if fields.get("all") == "1":
        return {"all": True}
    user = fields.get("user")
    if user:
        return {"user": user, "kick": fields.get("kick") == "1"}
    return None  # a marker
