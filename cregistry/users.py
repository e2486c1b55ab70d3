"""Users: their passwords, permissions, roles held, client IDs and superuser flags
(roles themselves: roles.py; permissions: permissions.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict, cast

import redis
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from cregistry import client_ids, names, passwords
from cregistry.audit import UNNAMED_ACTOR, AuditLog
from cregistry.certificates import CurrentCertificate, current_from
from cregistry.config import Config
from cregistry.errors import (
    ClientIdTaken,
    InvalidInput,
    PermissionNotFound,
    RoleNotFound,
    UsernameTaken,
    UserNotFound,
)
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
from cregistry.roles import RoleStore
from cregistry.timestamps import isoformat
from cregistry.topics import validate_pattern
from cregistry.transactions import ServerScript, run_watched

# The field of a user's hash that names the enrollment which created it
# (enrollments.py): deleting such a user is remembered by that enrollment.
ENROLLMENT_FIELD = "enrollment"
# Set in a user's hash once its client-ids set is what it owns: users created
# before client IDs had owners gain their registered "clientId" at start-up
# (adopt_registered_client_ids), once, so that an operator's later change stays.
OWNS_CLIENT_IDS_FIELD = "ownsClientIds"


class UserDict(TypedDict):
    """A user as the API and the CLI show it."""

    username: str
    createdAt: str | None
    superuser: bool
    clientId: str | None
    clientIds: list[str]
    pairingId: str | None
    source: str
    roles: list[str]
    permissions: list[PermissionDict]
    lastConnect: str | None
    lastClientId: str | None
    certificate: dict[str, str | None] | None  # {"serial", "notAfter"} (certificates.py)


@dataclasses.dataclass(frozen=True)
class User:
    username: str
    created_at: float
    superuser: bool
    client_id: str | None
    pairing_id: str | None
    source: str
    roles: tuple[str, ...]
    permissions: tuple[Permission, ...]
    # The last successful CONNECT cregistry answered, to within a minute
    # (record_connect); None before the first one.
    last_connect: float | None = None
    last_client_id: str | None = None
    certificate: CurrentCertificate | None = None
    client_ids: tuple[str, ...] = ()  # the user's own (SPEC §4; client_ids.py)

    def to_dict(self) -> UserDict:
        """What the API and CLI show; never the password hash."""
        return {
            "username": self.username,
            "createdAt": isoformat(self.created_at),
            "superuser": self.superuser,
            "clientId": self.client_id,
            "clientIds": list(self.client_ids),
            "pairingId": self.pairing_id,
            "source": self.source,
            "roles": list(self.roles),
            "permissions": [p.to_dict() for p in self.permissions],
            "lastConnect": isoformat(self.last_connect) if self.last_connect is not None else None,
            "lastClientId": self.last_client_id,
            "certificate": self.certificate.to_dict() if self.certificate is not None else None,
        }


@dataclasses.dataclass(frozen=True)
class AclData:
    """What an ACL check needs about one user, read in as few round trips as possible."""

    exists: bool
    superuser: bool
    permissions: tuple[Permission, ...]
    client_ids: frozenset[str] = frozenset()  # the user's own: %c expands to them (authorizer.py)


class UserStore:
    """Users in Redis. Takes its connection; knows nothing of HTTP.

    The connection decodes every answer (decode_responses=True wherever one
    is built, connections.py): redis-py's types say bytes or str, the casts
    below say str."""

    def __init__(
        self,
        connection: redis.Redis,
        config: Config,
        clock: Callable[[], float] = time.time,
        *,
        keys: Keys,
        audit: AuditLog,
        roles: RoleStore,
        policy: passwords.PasswordPolicy,
    ):
        self.redis = connection
        self.config = config
        self.keys = keys
        self.clock = clock
        self.policy = policy  # what add() and set_password() ask of a password
        self.audit = audit
        self.roles = roles  # the roles a user is given must exist

    # -- reading -----------------------------------------------------------
    def password_hash(self, username: str) -> str | None:
        return cast("str | None", self.redis.hget(self.keys.user(username), "passwordHash"))

    def exists(self, username: str) -> bool:
        return bool(self.redis.exists(self.keys.user(username)))

    def get(self, username: str) -> User:
        names.validate_username(username)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.user(username))
        pipe.hgetall(self.keys.user_permissions(username))
        pipe.smembers(self.keys.user_roles(username))
        pipe.hgetall(self.keys.user_last_connect(username))
        pipe.smembers(self.keys.user_client_ids(username))
        fields, permissions, roles, last_connect, own_client_ids = pipe.execute()
        if not fields:
            raise UserNotFound(f"no user {username!r}")
        return _user_from(username, fields, permissions, roles, last_connect, own_client_ids)

    def list_users(self, *, not_connected_since: float | None = None) -> list[User]:
        """Every user; with `not_connected_since`, only those whose last CONNECT
        is older than that time, or who never connected."""
        users = self._all_users()
        if not_connected_since is None:
            return users
        return [u for u in users if u.last_connect is None or u.last_connect < not_connected_since]

    def _all_users(self) -> list[User]:
        names = sorted(cast("set[str]", self.redis.smembers(self.keys.users())))
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.user(name))
            pipe.hgetall(self.keys.user_permissions(name))
            pipe.smembers(self.keys.user_roles(name))
            pipe.hgetall(self.keys.user_last_connect(name))
            pipe.smembers(self.keys.user_client_ids(name))
        results = pipe.execute()
        users = []
        for index, name in enumerate(names):
            fields, permissions, roles, last_connect, own_client_ids = results[5 * index : 5 * index + 5]
            if fields:  # the index can briefly name a user being deleted
                users.append(_user_from(name, fields, permissions, roles, last_connect, own_client_ids))
        return users

    # KEYS: the user's last-connect hash; ARGV: now, client id, interval (record_connect).
    _RECORD_CONNECT = ServerScript("""
local last = redis.call('HMGET', KEYS[1], 'time', 'clientId')
if last[1] and last[2] == ARGV[2] and tonumber(ARGV[1]) - tonumber(last[1]) < tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'time', ARGV[1], 'clientId', ARGV[2])
return 1
""")

    def record_connect(self, username: str, client_id: str, now: float, interval: float) -> bool:
        """Remember a successful CONNECT unless one with the same client id was
        recorded less than `interval` seconds ago (by any process); True if written.

        Not a transaction: a user deleted between its password check and this
        write leaves this one small key behind, which delete(), add() and an
        approval of the same name remove.
        """
        key = self.keys.user_last_connect(username)
        args = (repr(now), client_id, repr(interval))
        written = self._RECORD_CONNECT.run(self.redis, [key], args)  # one round trip on the connect path
        return bool(int(written))

    def acl_data(self, username: str) -> AclData:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.user(username), ["passwordHash", "superuser"])
        pipe.hgetall(self.keys.user_permissions(username))
        pipe.smembers(self.keys.user_roles(username))
        pipe.smembers(self.keys.user_client_ids(username))
        (password_hash, superuser), direct, roles, own_client_ids = pipe.execute()
        if password_hash is None:
            return AclData(False, False, ())
        permissions = permissions_from(direct)
        role_names = sorted(roles)
        if role_names:
            pipe = self.redis.pipeline(transaction=False)
            for role in role_names:
                pipe.hgetall(self.keys.role_permissions(role))
            for role_permissions in pipe.execute():
                permissions += permissions_from(role_permissions)
        return AclData(True, superuser == "1", tuple(permissions), frozenset(own_client_ids))

    # KEYS: changes, user, user permissions, user roles, user client ids; ARGV: the caller's known
    # position, and the affixes of a role's permissions key (keys.py).
    # Answers {position} when nothing changed, {position, 0} for no such user, or
    # {position, 1, superuser, direct permissions, roles, own client ids, each role's permissions}.
    _ACL_SNAPSHOT = ServerScript("""
local position = ''
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then position = newest[1][1] end
if position ~= '' and position == ARGV[1] then return {position} end
local user = redis.call('HMGET', KEYS[2], 'passwordHash', 'superuser')
if not user[1] then return {position, 0} end
local roles = redis.call('SMEMBERS', KEYS[4])
table.sort(roles)
local answer = {position, 1, user[2] or '', redis.call('HGETALL', KEYS[3]), roles, redis.call('SMEMBERS', KEYS[5])}
for _, role in ipairs(roles) do
    answer[#answer + 1] = redis.call('HGETALL', ARGV[2] .. role .. ARGV[3])
end
return answer
""")

    def acl_snapshot(self, username: str, known_position: str) -> tuple[str, AclData | None]:
        """The change feed's newest position, and the user's AclData read in
        the same atomic step (one round trip, a server-side script); None
        instead of the data when the position is `known_position` (nothing
        changed since the caller read the data it holds). The position is ""
        while the feed is empty."""
        before, after = self.keys.role_permissions_affixes()
        keys = [self.keys.changes(), self.keys.user(username), self.keys.user_permissions(username)]
        keys += [self.keys.user_roles(username), self.keys.user_client_ids(username)]
        args = [known_position, before, after]
        reply = self._ACL_SNAPSHOT.run(self.redis, keys, args)
        position = str(reply[0])
        if len(reply) == 1:
            return position, None
        if not int(reply[1]):
            return position, AclData(False, False, ())
        permissions = permissions_from(_pairs(reply[3]))
        for role_permissions in reply[6:]:
            permissions += permissions_from(_pairs(role_permissions))
        return position, AclData(True, reply[2] == "1", tuple(permissions), frozenset(reply[5]))

    # -- users -------------------------------------------------------------
    # Every change takes the `actor` for the audit trail and writes its audit
    # entry in the same transaction.
    def add(self, username: str, password: str, *, superuser: bool = False, actor: str = UNNAMED_ACTOR) -> User:
        """Create a user with a password chosen by the operator."""
        names.validate_username(username)
        self.policy.validate(password)
        password_hash = passwords.hash_password(password, self.config.bcrypt_cost)
        fields: dict[FieldT, EncodableT] = {
            "passwordHash": password_hash,
            "createdAt": repr(self.clock()),
            "superuser": "1" if superuser else "0",
            "source": "operator",
        }

        def create(pipe: Pipeline) -> None:
            if pipe.exists(self.keys.user(username)):
                raise UsernameTaken(f"user {username!r} exists already")
            pipe.multi()
            pipe.hset(self.keys.user(username), mapping=fields)
            pipe.delete(self.keys.user_last_connect(username))  # a predecessor's, if any
            pipe.sadd(self.keys.users(), username)
            self.audit.add(pipe, actor, "user.add", username, superuser=superuser)

        run_watched(self.redis, [self.keys.user(username)], create)
        return self.get(username)

    def set_password(self, username: str, password: object, *, actor: str = UNNAMED_ACTOR) -> User:
        """Give the user a new password; the old one stops working everywhere.

        The verified-password token goes (verification.py), and the change
        feed tells brokers to disconnect the user's clients. The pairing ID
        described the old password, so it goes too.
        """
        names.validate_username(username)
        new_password = self.policy.validate(password)
        if not self.exists(username):  # before bcrypt: an unknown name costs no hashing
            raise UserNotFound(f"no user {username!r}")
        password_hash = passwords.hash_password(new_password, self.config.bcrypt_cost)

        def replace(pipe: Pipeline) -> None:
            pipe.hset(self.keys.user(username), "passwordHash", password_hash)
            pipe.hdel(self.keys.user(username), "pairingId")
            # Client IDs that proved the old password prove nothing about the new one.
            pipe.delete(self.keys.user_verified(username), self.keys.user_known_clients(username))

        self._change_user(username, replace, actor, "user.password")
        return self.get(username)

    def queue_enrolled_user(
        self,
        pipe: Pipeline,
        username: str,
        *,
        password_hash: str,
        client_id: str,
        pairing_id: str,
        enrollment: str,
        roles: Iterable[str],
        now: float,
    ) -> None:
        """Queue on `pipe` (after MULTI) the writes of a user that enrollment
        `enrollment` creates: the device's own hash, the enrollment's roles,
        and the client ID the device registered with as the user's own."""
        pipe.hset(
            self.keys.user(username),
            mapping={
                "passwordHash": password_hash,
                "createdAt": repr(now),
                "superuser": "0",
                # The registering device's client ID as the user's own: the
                # field an approval writes (pending.py, approve).
                "clientId": client_id,
                "pairingId": pairing_id,
                "source": "enrollment",
                ENROLLMENT_FIELD: enrollment,
            },
        )
        self.queue_client_ids(pipe, username, [client_id] if client_ids.ownable(client_id) else [])
        pipe.sadd(self.keys.users(), username)
        pipe.delete(self.keys.user_last_connect(username))  # a predecessor's, if any
        for role in roles:
            pipe.sadd(self.keys.user_roles(username), role)
            pipe.sadd(self.keys.role_members(role), username)

    def delete(self, username: str, *, actor: str = UNNAMED_ACTOR) -> None:
        """Delete the user; one an enrollment created cannot come back through
        it (the enrollment remembers the deletion for as long as it lives)."""
        names.validate_username(username)
        enrollment = cast("str | None", self.redis.hget(self.keys.user(username), ENROLLMENT_FIELD))
        watch = [self.keys.user_roles(username), self.keys.user_client_ids(username), self.keys.client_owners()]
        if enrollment:
            watch.append(self.keys.enrollment(enrollment))

        def delete_all(pipe: Pipeline) -> None:
            self._free_client_ids(pipe, username, self._own_client_ids(username))
            if enrollment:
                self._remember_enrolled_removal(pipe, enrollment, username)
            pipe.delete(
                self.keys.user(username),
                self.keys.user_permissions(username),
                self.keys.user_roles(username),
                self.keys.user_verified(username),
                self.keys.user_failures(username),
                self.keys.user_client_failures(username),
                self.keys.user_known_clients(username),
                self.keys.user_last_connect(username),
                self.keys.user_client_ids(username),
            )
            pipe.srem(self.keys.users(), username)
            for role in cast("set[str]", self.redis.smembers(self.keys.user_roles(username))):
                pipe.srem(self.keys.role_members(role), username)

        self._change_user(username, delete_all, actor, "user.delete", watch=watch)

    def _remember_enrolled_removal(self, pipe: Pipeline, enrollment: str, username: str) -> None:
        """Queue (after MULTI) the enrollment's memory of this deletion, to
        expire with the enrollment; nothing if the enrollment is gone (its key is watched)."""
        milliseconds_left = int(cast(int, self.redis.pttl(self.keys.enrollment(enrollment))))
        if milliseconds_left <= 0:
            return
        removed_key = self.keys.enrollment_removed(enrollment)
        pipe.hset(removed_key, username, repr(self.clock()))
        pipe.pexpire(removed_key, milliseconds_left)

    # -- client IDs (client_ids.py) -----------------------------------------
    def client_id_owners(self, reader: redis.Redis | Pipeline, wanted: Iterable[str]) -> dict[str, str]:
        """Client ID -> owner for those of `wanted` that someone owns (with
        `reader` a pipeline in WATCH mode, the read is watched)."""
        wanted = list(wanted)
        if not wanted:
            return {}
        owners = cast("list[str | None]", reader.hmget(self.keys.client_owners(), wanted))
        return {client_id: owner for client_id, owner in zip(wanted, owners, strict=True) if owner is not None}

    def client_id_owner(self, client_id: str) -> str | None:
        return cast("str | None", self.redis.hget(self.keys.client_owners(), client_id))

    def queue_client_ids(self, pipe: Pipeline, username: str, given: Iterable[str]) -> None:
        """Queue on `pipe` (after MULTI) client IDs becoming `username`'s own.
        The caller has checked, watching keys.client_owners, that nobody else
        owns them. Each one gets a feed entry of its own: brokers then drop
        cached CONNECT grants and disconnect anyone else connected with it."""
        pipe.hset(self.keys.user(username), OWNS_CLIENT_IDS_FIELD, "1")
        for client_id in given:
            pipe.sadd(self.keys.user_client_ids(username), client_id)
            pipe.hset(self.keys.client_owners(), client_id, username)
            self.audit.changes.record_client_id(pipe, username, client_id)

    def _own_client_ids(self, username: str) -> set[str]:
        return cast("set[str]", self.redis.smembers(self.keys.user_client_ids(username)))

    def _free_client_ids(self, pipe: Pipeline, username: str, freed: Iterable[str]) -> None:
        """Queue (after MULTI) the release of the user's client IDs `freed`."""
        freed = list(freed)
        if freed:
            pipe.srem(self.keys.user_client_ids(username), *freed)
            pipe.hdel(self.keys.client_owners(), *freed)

    def set_client_ids(self, username: str, items: object, *, actor: str = UNNAMED_ACTOR) -> User:
        """Replace the user's own client IDs with the JSON list `items`. A
        client ID that another user owns is refused (ClientIdTaken), never
        taken from it: the operator frees it there first."""
        wanted = client_ids.validate_client_id_list(items)
        set_key = self.keys.user_client_ids(username)

        def check(pipe: Pipeline) -> dict[str, object]:
            taken = {c: o for c, o in self.client_id_owners(pipe, wanted).items() if o != username}
            if taken:
                client_id, owner = sorted(taken.items())[0]
                raise ClientIdTaken(f"client id {client_id!r} belongs to user {owner!r}; change that user's first")
            return {}

        def replace(pipe: Pipeline) -> None:
            current = self._own_client_ids(username)
            self._free_client_ids(pipe, username, current - set(wanted))
            self.queue_client_ids(pipe, username, [c for c in wanted if c not in current])

        self._change_user(
            username,
            replace,
            actor,
            "user.client-ids",
            watch=[set_key, self.keys.client_owners()],
            precheck=check,
            clientIds=wanted,
        )
        return self.get(username)

    def adopt_registered_client_ids(self) -> int:
        """Give every user created before client IDs had owners the client ID
        it registered with (its hash's "clientId"), unless another user owns
        it already; idempotent (OWNS_CLIENT_IDS_FIELD marks users done).
        Returns how many client IDs were given."""
        given = 0
        names = sorted(cast("set[str]", self.redis.smembers(self.keys.users())))
        pipe = self.redis.pipeline(transaction=False)
        for username in names:
            pipe.hexists(self.keys.user(username), OWNS_CLIENT_IDS_FIELD)
        # One round trip for the users done already (every user, after the first start).
        waiting = [username for username, done in zip(names, pipe.execute(), strict=True) if not done]
        for username in waiting:
            user_key = self.keys.user(username)

            def adopt(pipe: Pipeline, username: str = username, user_key: str = user_key) -> int:
                registered, done = cast("list[str | None]", pipe.hmget(user_key, "clientId", OWNS_CLIENT_IDS_FIELD))
                if done or not pipe.exists(user_key):
                    return 0
                client_id = registered if registered and client_ids.ownable(registered) else ""
                free = bool(client_id) and not self.client_id_owners(pipe, [client_id])
                pipe.multi()
                self.queue_client_ids(pipe, username, [client_id] if free else [])
                return 1 if free else 0

            given += run_watched(self.redis, [user_key, self.keys.client_owners()], adopt)
        return given

    def set_superuser(self, username: str, superuser: bool, *, actor: str = UNNAMED_ACTOR) -> User:
        self._change_user(
            username,
            lambda pipe: pipe.hset(self.keys.user(username), "superuser", int(superuser)),
            actor,
            "user.superuser",
            superuser=superuser,
        )
        return self.get(username)

    def set_permissions(self, username: str, items: object, *, actor: str = UNNAMED_ACTOR) -> User:
        permissions = parse_permission_list(items)
        key = self.keys.user_permissions(username)
        self._change_user(
            username,
            lambda pipe: replace_permissions(pipe, key, permissions),
            actor,
            "user.permissions",
            permissions=[p.to_dict() for p in permissions],
        )
        return self.get(username)

    def grant(self, username: str, topic: str, access: str, *, actor: str = UNNAMED_ACTOR) -> User:
        """Set the user's access on `topic`, replacing any access it had there."""
        return self.grant_permission(username, topic, access, actor=actor)[0]

    def grant_permission(
        self, username: str, topic: str, access: str, *, actor: str = UNNAMED_ACTOR
    ) -> tuple[User, PermissionChange]:
        """grant(), also saying what it replaced; the audit entry records the old access."""
        permission = parse_permission(topic, access)
        key = self.keys.user_permissions(username)
        previous: list[str | None] = [None]

        def read_previous(pipe: Pipeline) -> dict[str, object]:
            previous[0] = cast("str | None", pipe.hget(key, permission.topic))
            return {"previous": previous[0]}

        self._change_user(
            username,
            lambda pipe: pipe.hset(key, permission.topic, permission.access),
            actor,
            "user.grant",
            watch=[key],
            precheck=read_previous,
            topic=permission.topic,
            access=permission.access,
        )
        return self.get(username), PermissionChange(permission, previous[0])

    def revoke(self, username: str, topic: str, *, actor: str = UNNAMED_ACTOR) -> User:
        validate_pattern(topic)
        key = self.keys.user_permissions(username)

        def require_permission(pipe: Pipeline) -> None:
            if not pipe.hexists(key, topic):
                raise PermissionNotFound(f"user {username!r} has no permission on {topic!r}")

        self._change_user(
            username,
            lambda pipe: pipe.hdel(key, topic),
            actor,
            "user.revoke",
            watch=[key],
            precheck=require_permission,
            topic=topic,
        )
        return self.get(username)

    def set_roles(self, username: str, roles: object, *, actor: str = UNNAMED_ACTOR) -> User:
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidInput("roles must be a JSON list of role names")
        for role in roles:
            self.roles.require(role)
        roles_key = self.keys.user_roles(username)

        def replace(pipe: Pipeline) -> None:
            old = cast("set[str]", self.redis.smembers(roles_key))
            pipe.delete(roles_key)
            if roles:
                pipe.sadd(roles_key, *roles)
            for role in old - set(roles):
                pipe.srem(self.keys.role_members(role), username)
            for role in roles:
                pipe.sadd(self.keys.role_members(role), username)

        self._change_user(username, replace, actor, "user.roles", watch=[roles_key], roles=roles)
        return self.get(username)

    def assign_role(self, username: str, role: str, *, actor: str = UNNAMED_ACTOR) -> User:
        self.roles.require(role)

        def assign(pipe: Pipeline) -> None:
            pipe.sadd(self.keys.user_roles(username), role)
            pipe.sadd(self.keys.role_members(role), username)

        self._change_user(username, assign, actor, "user.role.assign", role=role)
        return self.get(username)

    def unassign_role(self, username: str, role: str, *, actor: str = UNNAMED_ACTOR) -> User:
        names.validate_role_name(role)
        roles_key = self.keys.user_roles(username)

        def require_role(pipe: Pipeline) -> None:
            if not pipe.sismember(roles_key, role):
                raise RoleNotFound(f"user {username!r} does not have role {role!r}")

        def unassign(pipe: Pipeline) -> None:
            pipe.srem(roles_key, role)
            pipe.srem(self.keys.role_members(role), username)

        self._change_user(
            username, unassign, actor, "user.role.unassign", watch=[roles_key], precheck=require_role, role=role
        )
        return self.get(username)

    # -- helpers -----------------------------------------------------------
    def _change_user(
        self,
        username: str,
        change: Callable[[Pipeline], object],
        actor: str,
        action: str,
        *,
        watch: Iterable[str] = (),
        precheck: Callable[[Pipeline], dict[str, object] | None] | None = None,
        **details: object,
    ) -> None:
        """Apply a change and its audit entry only if the user exists,
        atomically with that check, so a concurrent delete cannot leave
        orphaned permissions behind. `precheck` reads (watched) before the
        change and may return more details for the audit entry."""
        names.validate_username(username)
        user_key = self.keys.user(username)

        def apply(pipe: Pipeline) -> None:
            if not pipe.exists(user_key):
                raise UserNotFound(f"no user {username!r}")
            read = precheck(pipe) if precheck is not None else None
            pipe.multi()
            change(pipe)
            self.audit.add(pipe, actor, action, username, **details, **(read or {}))

        run_watched(self.redis, [user_key, *watch], apply)


def _user_from(
    username: str,
    data: Mapping[str, str],
    permissions: Mapping[str, str],
    roles: Iterable[str],
    connect: Mapping[str, str],
    own_client_ids: Iterable[str] = (),
) -> User:
    """A user from its hashes and its set of roles, as HGETALL and SMEMBERS answer them."""
    return User(
        username=username,
        created_at=float(data.get("createdAt") or 0),
        superuser=data.get("superuser") == "1",
        client_id=data.get("clientId"),
        pairing_id=data.get("pairingId"),
        source=data.get("source") or "operator",
        roles=tuple(sorted(roles)),
        permissions=tuple(permissions_from(permissions)),
        last_connect=float(connect["time"]) if connect.get("time") else None,
        last_client_id=connect.get("clientId"),
        certificate=current_from(dict(data)),
        client_ids=tuple(sorted(own_client_ids)),
    )


def _pairs(flat: list[str]) -> dict[str, str]:
    """HGETALL's answer inside a script: [field, value, field, value, ...]."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
