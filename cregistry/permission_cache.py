"""Each worker process's cache of what ACL checks need about a user.

Every change that can alter a user's permissions (their own, their roles',
the roles' permissions, the superuser flag, the user's existence) writes a
change feed entry in the same transaction (changes.py). So the feed's newest
position names a state of everything an ACL check reads.

Two ways to use what is cached:

- A caller that sends its own feed position (the plugin does, with every
  check) gets the cached data without any Redis round trip when the worker's
  feed follower covers that position (the invariant: followed_cache.py).
- Any other check asks Redis, in one round trip (UserStore.acl_snapshot, a
  server-side script), "has the feed moved past the position of my cached
  entry?". If not, the cached data answers; if it has, the same round trip
  brings the fresh data and the new position. So a revocation takes effect
  at the next check, as without a cache, and such a check never answers
  without Redis.
"""

from __future__ import annotations

import threading

from cregistry.feed_follower import FeedFollower
from cregistry.followed_cache import FollowedCache
from cregistry.users import AclData, UserStore

MAX_USERS = 100_000  # users per process; the whole cache is dropped when full


class PermissionCache:
    def __init__(self, users: UserStore, max_users: int = MAX_USERS, follower: FeedFollower | None = None) -> None:
        self.users = users
        self.max_users = max_users
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[str, AclData]] = {}  # username -> (feed position, data)
        self.followed: FollowedCache[AclData] | None = (
            FollowedCache(follower, max_users) if follower is not None else None
        )

    def cached(self, username: str, seen: str | None) -> AclData | None:
        """The data without Redis, for a caller at feed position `seen`; None: ask acl_data."""
        return self.followed.get(username, seen) if self.followed is not None else None

    def acl_data(self, username: str, seen: str | None = None) -> AclData:
        quick = self.cached(username, seen)
        if quick is not None:
            return quick
        cached = self.entries.get(username)
        position, data = self.users.acl_snapshot(username, cached[0] if cached else "")
        if data is None:
            assert cached is not None  # acl_snapshot answers None only for a known position
            data = cached[1]
        elif position:  # an empty feed names no state; the service seeds it on the plugin's first poll
            with self.lock:
                if len(self.entries) >= self.max_users:
                    self.entries.clear()
                self.entries[username] = (position, data)
        if position and self.followed is not None:
            self.followed.put(username, position, data)
        return data
