"""Each worker process's cache of what ACL checks need about a user.

Every change that can alter a user's permissions (their own, their roles',
the roles' permissions, the superuser flag, the user's existence) writes a
change feed entry in the same transaction (changes.py). So the feed's newest
position names a state of everything an ACL check reads: while it has not
moved, data read at that position is still exact.

A check asks Redis, in one round trip (UserStore.acl_snapshot, a server-side
script), "has the feed moved past the position of my cached entry?". If not,
the cached data answers; if it has, the same round trip brings the fresh data
and the new position. So a revocation takes effect at the next check, as
without a cache, and a check never answers without Redis: when Redis cannot
answer, the check fails (503) like any other, and nothing cached is granted.
What the cache saves is the server's work and the parsing of permission
sets, and the second round trip for a user's roles.
"""

from __future__ import annotations

import threading

from cregistry.users import AclData, UserStore

MAX_USERS = 100_000  # users per process; the whole cache is dropped when full


class PermissionCache:
    def __init__(self, users: UserStore, max_users: int = MAX_USERS) -> None:
        self.users = users
        self.max_users = max_users
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[str, AclData]] = {}  # username -> (feed position, data)

    def acl_data(self, username: str) -> AclData:
        cached = self.entries.get(username)
        position, data = self.users.acl_snapshot(username, cached[0] if cached else "")
        if data is None:
            assert cached is not None  # acl_snapshot answers None only for a known position
            return cached[1]
        if position:  # an empty feed names no state; the service seeds it on the plugin's first poll
            with self.lock:
                if len(self.entries) >= self.max_users:
                    self.entries.clear()
                self.entries[username] = (position, data)
        return data
