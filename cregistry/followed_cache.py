"""A worker's per-user cache kept exact by the change feed (feed_follower.py).

An entry is admitted only when the data was read at a feed entry at least
as new as the one the follower has applied, under the follower's lock; the
follower drops a user's entry for every change that names the user and
everything for a change to a role or a reset. So an entry present in the
cache is what Redis holds as of the follower's position, and `get` hands it
out only to a caller whose own position the follower covers.
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
