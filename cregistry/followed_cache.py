"""A worker's per-user cache kept exact by the change feed, and the one place
that says why it may answer without Redis.

The invariant: a worker answers a broker check from its memory only for a
caller whose change feed position its follower covers (feed_follower.py,
FeedFollower.covers: the same replication ID, every change up to that
position applied, the feed read less than FRESH_SECONDS ago). Such an answer
is never older than what the caller already knows. Why that is exact:

- Every change that can make a cached value wrong writes a feed entry in the
  same transaction (audit.py records one for every audit entry, changes.py):
  one naming the user, or one for everyone (a role's change).
- The follower reads the feed every FOLLOW_INTERVAL and, under its lock,
  hands each page to the caches before it advances its position: `_apply`
  drops the entries a page names, everything for a change to everyone or a
  reset (a position the primary does not know, a failover).
- `put` admits an entry only when its data was read at a feed entry at least
  as new as the follower's position, checked under the same lock. Data read
  before a change the follower has applied is refused; data read before a
  change it has not applied yet is dropped when it does. So an entry present
  in the cache is what Redis holds as of the follower's position.
- `get` checks coverage first, then reads the entry (the order matters, see
  there): the follower's position is then at least the caller's, so the
  entry reflects every change up to the caller's position. The plugin sends
  the position it has applied with every check; having dropped a user's
  answers for a change, it asks again with a position past that change,
  which a worker that has not applied it yet does not cover: that worker
  asks Redis.
- When Redis stops answering, the follower stops covering: at once when a
  read fails (a dead Redis refuses the connection within the next
  FOLLOW_INTERVAL), after FRESH_SECONDS when a read hangs (a paused Redis).
  Every check then asks Redis (and fails, 503) like one without a cache, so
  nothing cached is granted for long without Redis.

A caller that sends no position (go-auth, curl) is never answered from here.
The caches: permission_cache.py (what an ACL check reads) and verification.py
(accepted verified-password tokens); operators' view: docs/change-feed.md.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from cregistry.changes import FeedPage
from cregistry.feed_follower import FeedFollower

V = TypeVar("V")

MAX_ENTRIES = 100_000  # users per process; the whole cache is dropped when full


class FollowedCache(Generic[V]):
    def __init__(self, follower: FeedFollower, max_entries: int = MAX_ENTRIES) -> None:
        self.follower = follower
        self.max_entries = max_entries
        self.entries: dict[str, V] = {}
        follower.subscribe(self._apply)

    def get(self, username: str, seen: str | None) -> V | None:
        """The cached value for a caller that has read the feed up to `seen`,
        or None: not cached, no position, or not covered by the follower."""
        # Coverage first: an entry read after the follower covered `seen`
        # reflects every change up to `seen` (a change applied meanwhile
        # removes it). Read first, the entry could predate a change the
        # follower applied before covers() ran -- an answer older than what
        # the caller already knows, which the plugin would cache.
        if not seen or not self.follower.covers(seen):
            return None
        return self.entries.get(username)

    def put(self, username: str, entry: str, value: V) -> None:
        """Keep `value`, read from Redis at feed entry `entry`, if it is new enough."""
        with self.follower.lock:
            if not self.follower.admits(entry):
                return
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
            self.entries[username] = value

    def _apply(self, page: FeedPage) -> None:
        # Called by the follower with its lock held.
        if page.reset:
            self.entries.clear()
            return
        for change in page.changes:
            if change.get("all"):
                self.entries.clear()
                return
            self.entries.pop(change["user"], None)
