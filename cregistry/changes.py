"""The change feed: what brokers must forget, in the order it happened.

A broker plugin caches answers of the broker routes. Every change that can
make a cached answer wrong is recorded in a capped Redis stream, in the same
transaction as the change itself (audit.py calls record() for every audit
entry, so no change can skip it). The plugin polls `GET /mqtt/changes?after=`
on the broker listener and drops what the entries name; see
docs/change-feed.md.

A position is a stream entry ID and the Redis primary's replication ID
(`<entry>~<replid>`). Reading from a position first checks that it is this
primary's and that the entry still exists: if so, nothing after it can have
been missed; if not (the broker fell more than CREGISTRY_CHANGES_MAX changes
behind, Redis was flushed or restarted without persistence, a failover
happened and may have lost entries), the answer is a reset: the plugin drops
its whole cache, and every change recorded after the position still reaches
it (ChangeFeed._reset). So that every answer can name an existing entry, an
empty stream is seeded with a marker entry.

The service's own workers follow the feed too (feed_follower.py): why their
caches may then answer without Redis is said in followed_cache.py.
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
    "enrollment.register": FORGET_USER,
    "user.add": FORGET_USER,
    "user.superuser": FORGET_USER,
    "user.permissions": FORGET_USER,
    "user.grant": FORGET_USER,
    "user.revoke": FORGET_USER,
    "user.roles": FORGET_USER,
    "user.role.assign": FORGET_USER,
    "user.role.unassign": FORGET_USER,
    # Client IDs given also have entries of their own (record_client_id).
    "user.client-ids": FORGET_USER,
    "user.delete": KICK_USER,
    "user.password": KICK_USER,
    # A new certificate at approval: the user is new. Renewal and revocation
    # kick, so that the old certificate's connections end within 2 s.
    "user.certificate.issue": FORGET_USER,
    "user.certificate.renew": KICK_USER,
    "user.certificate.revoke": KICK_USER,
    "role.permissions": FORGET_ALL,
    "role.grant": FORGET_ALL,
    "role.revoke": FORGET_ALL,
    "role.delete": FORGET_ALL,
}
# Actions that change nothing a broker caches: refused CONNECTs are never cached.
NO_CHANGE_ACTIONS = frozenset(
    {
        "registry.unlock",
        "registry.lock",
        "request.deny",
        "request.purge",
        "user.failures.clear",
        "enrollment.create",
        "enrollment.delete",
        "enrollment.forget",
    }
)

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
    def __init__(self, connection: redis.Redis, config: Config, *, keys: Keys) -> None:
        self.redis = connection
        self.config = config
        self.keys = keys

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

    def record_client_id(self, pipe: Pipeline, owner: str, client_id: str) -> None:
        """Queue on `pipe` the entry for `client_id` becoming `owner`'s own:
        brokers drop the owner's answers, every cached CONNECT grant (one of
        another user with this client ID may be among them), and disconnect
        whoever is connected with it (the owner's own client reconnects)."""
        self._add(pipe, {"user": owner, "kick": "0", "clientId": client_id})

    def read(self, after: str | None) -> FeedPage:
        """The changes after position `after` (oldest first, at most MAX_PAGE),
        or a reset when `after` is absent, names no entry of the stream, or was
        given out by another Redis primary (see _epoch)."""
        entry, _, epoch = (after or "").partition(EPOCH_SEPARATOR)
        pipe = self.redis.pipeline(transaction=False)  # one connection: both answers from one server
        pipe.info("replication")
        if _is_stream_id(entry):
            pipe.xrange(self.keys.changes(), min=entry, max="+", count=MAX_PAGE + 1)
        # raise_on_error=False: the embedded in-memory Redis refuses INFO (no
        # epoch then); connection errors are raised all the same.
        answers = pipe.execute(raise_on_error=False)
        current = _epoch(answers[0])
        if len(answers) < 2:
            return FeedPage(self._latest_position(current), True)
        rows: Any = answers[1]
        if isinstance(rows, Exception):
            raise rows
        if epoch != current or not rows or rows[0][0] != entry:
            return self._reset(entry, current)
        rows = rows[1:]
        position = _position(rows[-1][0] if rows else entry, current)
        return FeedPage(position, False, _changes(rows))

    def _reset(self, entry: str, epoch: str) -> FeedPage:
        """The reset for a position whose entry is gone or was given out by
        another primary. Every change recorded after `entry` still reaches
        the broker, kicks included (stream IDs grow with the clock, so an
        entry newer than `entry` was written after it):
        - the newest entry up to `entry` that still exists (a failover's new
          primary lacks the latest entries): the reset continues from it, and
          the next page sends everything after it;
        - none left (Redis flushed, restarted without persistence, or the
          broker fell more than CHANGES_MAX behind): every entry is newer, so
          the reset itself carries the oldest ones (MAX_PAGE at most) and
          continues from the last of them."""
        older: Any = self.redis.xrevrange(self.keys.changes(), max=entry, count=1)
        if older:
            return FeedPage(_position(str(older[0][0]), epoch), True)
        newer: Any = self.redis.xrange(self.keys.changes(), count=MAX_PAGE)
        if newer:
            return FeedPage(_position(str(newer[-1][0]), epoch), True, _changes(newer))
        return FeedPage(self._latest_position(epoch), True)

    def _latest_position(self, epoch: str) -> str:
        rows: Any = self.redis.xrevrange(self.keys.changes(), count=1)
        if rows:
            return _position(str(rows[0][0]), epoch)
        # Concurrent seeds add two markers; both are skipped when read.
        return _position(str(self._add(self.redis, {"marker": "1"})), epoch)

    def _add(self, target: Any, fields: dict[str, str]) -> Any:
        # Exact trimming: the cap is what docs/change-feed.md promises, and changes are rare.
        return target.xadd(self.keys.changes(), fields, maxlen=self.config.changes_max, approximate=False)


EPOCH_SEPARATOR = "~"
_REPLID = re.compile(r"[0-9a-f]{40}", re.ASCII)


def _epoch(info: Any) -> str:
    """The primary's replication ID (INFO replication, master_replid), or ""
    where there is none (the embedded in-memory Redis). A replica promoted by
    a failover takes a new one, so a position given out by the old primary is
    a reset on the new one even if its entry was replicated: answers a broker
    cached from the old primary may reflect changes the failover lost, whose
    entries it never read (its position was before them)."""
    replid = info.get("master_replid", "") if isinstance(info, dict) else ""
    return replid if isinstance(replid, str) and _REPLID.fullmatch(replid) else ""


def _position(entry: str, epoch: str) -> str:
    """`<entry ID>~<replid>`: at most 82 characters of [0-9a-f~-] (the contract allows 128)."""
    return f"{entry}{EPOCH_SEPARATOR}{epoch}" if epoch else entry


def _is_stream_id(text: str) -> bool:
    """Redis refuses IDs beyond 64 bits with an error; such positions are simply unknown."""
    match = _STREAM_ID.fullmatch(text)
    return match is not None and all(int(part) <= _UINT64_MAX for part in match.groups())


def _changes(rows: Any) -> tuple[dict[str, Any], ...]:
    return tuple(change for change in (_change(fields) for _id, fields in rows) if change is not None)


def _change(fields: dict[Any, Any]) -> dict[str, Any] | None:
    if fields.get("all") == "1":
        return {"all": True}
    user = fields.get("user")
    if user:
        change = {"user": user, "kick": fields.get("kick") == "1"}
        if fields.get("clientId"):
            change["clientId"] = fields["clientId"]
        return change
    return None  # a marker
