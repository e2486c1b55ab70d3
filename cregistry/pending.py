"""Pending registration requests: how they are stored, listed, approved
and denied. registration.py records them; operators handle them here.

A pending request is one *candidate*: a username and the exact credentials
of its first attempt, identified by a keyed digest of them (verification.py's
credentials_digest; the key never enters Redis). Its name among the user's
candidates is its pairing ID, or "pairingId-N" when another candidate of the
username has that pairing ID already (the pairing ID has 24 bits: anyone who
saw it finds a colliding password in seconds). Candidates sharing a pairing
ID are *contested*: approving one needs an explicit override (SPEC §2).

Its id in the admin API is the pending-index member "username:candidate"
(keys.py). Each lives in its own Redis hash with a TTL (the pending TTL,
renewed by attempts made while the registry is unlocked); a per-username set
lists the candidates and a sorted set indexes all requests by expiry, which
is what the global cap counts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline

from cregistry import client_ids, instruments, names, passwords
from cregistry.audit import UNNAMED_ACTOR, AuditLog
from cregistry.certificates import Certificates
from cregistry.config import CLIENT_ID_ANY, Config
from cregistry.errors import (
    AmbiguousRequest,
    ClientIdTaken,
    InvalidInput,
    RequestContested,
    RequestNotFound,
    UsernameTaken,
)
from cregistry.keys import Keys
from cregistry.timestamps import isoformat
from cregistry.transactions import ServerScript, run_watched
from cregistry.users import User, UserStore

log = logging.getLogger(__name__)

MAX_PAGE = 1000  # requests listed at once; the listing is paginated beyond
MAX_OFFSET = 10**9
# At most this often (seconds; 1 % of the pending TTL if that is less) an
# attempt restarts a request's life (PendingRequests.touch).
RENEWAL_STEP = 60


@dataclasses.dataclass(frozen=True)
class PendingRequest:
    username: str
    candidate: str  # its name among the username's candidates (module docstring)
    client_id: str
    source: str
    first_seen: float
    last_seen: float
    attempts: int
    context: dict[str, Any] | None
    password_hash: str = dataclasses.field(repr=False)
    credentials: str = dataclasses.field(default="", repr=False)  # keyed digest; "" before candidates had one
    contested: bool = False
    refused_attempts: int = 0  # the username's attempts refused over the per-username cap

    # The CSR sent with the first attempt, as operators see it (keyType,
    # publicKeySha256; certificates.py), or None: no certificate requested.
    certificate_request: dict[str, str] | None = None

    @property
    def pairing_id(self) -> str:
        return candidate_pairing_id(self.candidate)

    @property
    def id(self) -> str:
        return request_id(self.username, self.candidate)

    def to_dict(self) -> dict[str, Any]:
        """What operators see; never the password hash."""
        return {
            "id": self.id,
            "username": self.username,
            "pairingId": self.pairing_id,
            "clientId": self.client_id,
            "source": self.source,
            "firstSeen": isoformat(self.first_seen),
            "lastSeen": isoformat(self.last_seen),
            "attempts": self.attempts,
            "context": self.context,
            "contested": self.contested,
            "refusedAttempts": self.refused_attempts,
            "certificateRequest": self.certificate_request,
        }


def request_id(username: str, candidate: str) -> str:
    """The admin API's id of a request: "username:candidate", its pending-index member."""
    return Keys.pending_member(username, candidate)


def candidate_pairing_id(candidate: str) -> str:
    """The pairing ID in a candidate's name ("3fa2c1" or "3fa2c1-2")."""
    return candidate.partition("-")[0]


def validate_candidate(value: str) -> str:
    """A candidate's name as candidate_names makes it, or InvalidInput."""
    pairing, sep, number = value.partition("-")
    passwords.validate_pairing_id(pairing)
    if sep and not (number.isascii() and number.isdigit() and not number.startswith("0") and len(number) <= 3):
        raise InvalidInput("a candidate is a pairing ID, optionally followed by -N")
    return value


def candidate_names(pairing: str, limit: int) -> list[str]:
    """The names a new candidate with this pairing ID may take, first free first."""
    return [pairing] + [f"{pairing}-{n}" for n in range(2, limit + 2)]


def contested_names(candidates: list[str]) -> set[str]:
    """Those of one username's live candidates that share their pairing ID with another."""
    seen: dict[str, int] = {}
    for candidate in candidates:
        seen[candidate_pairing_id(candidate)] = seen.get(candidate_pairing_id(candidate), 0) + 1
    return {c for c in candidates if seen[candidate_pairing_id(c)] > 1}


def parse_request_id(value: str) -> tuple[str, str]:
    """Split an id made by request_id; anything else names no request."""
    username, candidate = Keys.split_pending_member(value)
    try:
        names.validate_username(username)
        validate_candidate(candidate)
    except InvalidInput:
        raise RequestNotFound(f"no pending request {value!r}") from None
    return username, candidate


def validate_page(offset: object, limit: object) -> None:
    for name, value, low, high in (("offset", offset, 0, MAX_OFFSET), ("limit", limit, 1, MAX_PAGE)):
        names.validate_int_within(value, name, low, high)


@dataclasses.dataclass(eq=False)
class PendingRequests:
    """Pending requests. Takes its connection and collaborators explicitly."""

    redis: redis.Redis
    config: Config
    clock: Callable[[], float] = time.time
    _: dataclasses.KW_ONLY
    keys: Keys
    users: UserStore
    audit: AuditLog
    certificates: Certificates

    # -- storage (the writes of registration.py) --------------------------
    def add(
        self,
        pipe: Pipeline,
        username: str,
        candidate: str,
        credentials: tuple[str, str],
        password_hash: str,
        client_id: str,
        source: str,
        context: dict[str, Any] | None,
        now: float,
    ) -> None:
        """Queue the writes of a new request on `pipe` (after MULTI);
        `credentials`: the keyed digest and the id of its key."""
        digest, key_id = credentials
        pipe.hset(
            self.keys.request(username, candidate),
            mapping={
                "passwordHash": password_hash,
                "credentials": digest,
                "credentialsKey": key_id,
                "clientId": client_id,
                "source": source,
                "firstSeen": repr(now),
                "lastSeen": repr(now),
                "attempts": 1,
                "context": json.dumps(context) if context is not None else "",
            },
        )
        pipe.sadd(self.keys.user_requests(username), candidate)
        self._keep_alive(pipe, username, candidate, now)

    def count_attempt(self, pipe: Pipeline, username: str, candidate: str, now: float, *, renew: bool) -> None:
        """Queue one more attempt on an existing request on `pipe` (after MULTI),
        restarting its life when `renew` (a request just recorded by another
        process; touch counts all other attempts)."""
        request_key = self.keys.request(username, candidate)
        pipe.hincrby(request_key, "attempts", 1)
        pipe.hset(request_key, "lastSeen", repr(now))
        if renew:
            self._keep_alive(pipe, username, candidate, now)

    # KEYS: the request, the username's candidate set, the request's CSR, the
    # pending index. ARGV: now, the pending TTL, the renewal step, "1" while
    # unlocked, the index member, the credentials digest, its key id.
    _TOUCH = ServerScript("""
local left = redis.call('PTTL', KEYS[1])
if left == -2 then return 0 end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'lastSeen', ARGV[1])
if redis.call('HGET', KEYS[1], 'credentialsKey') ~= ARGV[7] then
  redis.call('HSET', KEYS[1], 'credentials', ARGV[6], 'credentialsKey', ARGV[7])
end
local ttl = tonumber(ARGV[2])
if ARGV[4] == '1' and left < (ttl - tonumber(ARGV[3])) * 1000 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('ZADD', KEYS[4], tonumber(ARGV[1]) + ttl, ARGV[5])
end
return 1
""")

    def touch(self, username: str, candidate: str, credentials: tuple[str, str], now: float, *, unlocked: bool) -> bool:
        """Count one more attempt on an existing request; False if it is gone
        (approved, denied, purged or expired). `credentials`: the attempt's
        keyed digest and its key id, stated again when the request's digest was
        made under another key (registration.py's _find_candidate).

        One script, not a WATCH: devices polling fast (or an attacker
        repeating its attempt) must neither conflict with each other nor with
        approve and deny, which watch the candidate set. For the same reason
        the request's life restarts at most once per renewal step (and only
        while unlocked: otherwise a flood made in one unlock window would keep
        the pending cap full for good).
        """
        digest, key_id = credentials
        keys = (
            self.keys.request(username, candidate),
            self.keys.user_requests(username),
            self.keys.request_csr(username, candidate),
            self.keys.pending_index(),
        )
        args = (
            repr(now),
            self.config.pending_ttl,
            self.renewal_step(),
            "1" if unlocked else "0",
            Keys.pending_member(username, candidate),
            digest,
            key_id,
        )
        counted = self._TOUCH.run(self.redis, keys, args)  # one round trip on the registration path
        return bool(int(counted))

    def renewal_step(self) -> int:
        """Seconds: an attempt restarts a request's life only when it is older than this."""
        return max(1, min(RENEWAL_STEP, self.config.pending_ttl // 100))

    def count_refused(self, username: str) -> None:
        """One more attempt refused over the username's cap (shown with its candidates)."""
        key = self.keys.user_refused(username)
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, self.config.pending_ttl)
        pipe.execute()

    def _keep_alive(self, pipe: Pipeline, username: str, candidate: str, now: float) -> None:
        """(Re)start the pending TTL of a request, its user's candidate set and its index entry."""
        ttl = self.config.pending_ttl
        pipe.expire(self.keys.request(username, candidate), ttl)
        pipe.expire(self.keys.user_requests(username), ttl)
        pipe.expire(self.keys.request_csr(username, candidate), ttl)  # certificates.py; absent without a CSR
        pipe.zadd(self.keys.pending_index(), {Keys.pending_member(username, candidate): now + ttl})

    def live_candidates(self, username: str) -> list[str]:
        """The user's candidates whose keys still exist (TTL).

        Reads go through a separate pipeline even inside a WATCH: WATCH
        notices changes by anyone, so the reads need not share its connection.
        """
        return self.existing(username, self.redis.smembers(self.keys.user_requests(username)))

    def existing(self, username: str, candidates: Any) -> list[str]:
        """Those of `candidates` whose request keys still exist, sorted."""
        ordered = sorted(candidates)
        pipe = self.redis.pipeline(transaction=False)
        for candidate in ordered:
            pipe.exists(self.keys.request(username, candidate))
        return [c for c, exists in zip(ordered, pipe.execute(), strict=True) if exists]

    def credentials_of(self, username: str, candidates: list[str]) -> dict[str, dict[str, str]]:
        """candidate -> its credentials digest, the digest's key id and its hash (registration.py)."""
        pipe = self.redis.pipeline(transaction=False)
        for candidate in candidates:
            pipe.hmget(self.keys.request(username, candidate), "credentials", "credentialsKey", "passwordHash")
        found = {}
        for candidate, (digest, key_id, password_hash) in zip(candidates, pipe.execute(), strict=True):
            if password_hash is not None:
                found[candidate] = {"credentials": digest or "", "key": key_id or "", "hash": password_hash}
        return found

    # -- operators ---------------------------------------------------------
    def list_requests(self, offset: int = 0, limit: int = MAX_PAGE) -> list[PendingRequest]:
        """One page of pending requests, least recently seen first."""
        validate_page(offset, limit)
        now = self.clock()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.pending_index(), "-inf", now)
        pipe.zrange(self.keys.pending_index(), offset, offset + limit - 1)
        members = pipe.execute()[1]
        pairs = [Keys.split_pending_member(member) for member in members]
        pipe = self.redis.pipeline(transaction=False)
        for username, candidate in pairs:
            pipe.hgetall(self.keys.request(username, candidate))
            pipe.hgetall(self.keys.request_csr(username, candidate))
        found = []
        stale = []
        answers = pipe.execute()
        for (username, candidate), fields, csr in zip(pairs, answers[::2], answers[1::2], strict=True):
            if fields:
                found.append((username, candidate, fields, csr))
            else:
                stale.append(Keys.pending_member(username, candidate))
        if stale:
            self.redis.zrem(self.keys.pending_index(), *stale)
        marks = self._marks(sorted({username for username, _, _, _ in found}))
        return [
            _request_from(username, candidate, fields, csr, candidate in marks[username][0], marks[username][1])
            for username, candidate, fields, csr in found
        ]

    def _marks(self, usernames: list[str]) -> dict[str, tuple[set[str], int]]:
        """Per username: its contested candidates and its refused attempts."""
        pipe = self.redis.pipeline(transaction=False)
        for username in usernames:
            pipe.smembers(self.keys.user_requests(username))
            pipe.get(self.keys.user_refused(username))
        answers = pipe.execute()
        return {
            username: (contested_names(self.existing(username, answers[2 * i])), int(answers[2 * i + 1] or 0))
            for i, username in enumerate(usernames)
        }

    def count_requests(self) -> int:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.pending_index(), "-inf", self.clock())
        pipe.zcard(self.keys.pending_index())
        return int(pipe.execute()[1])

    def requests_for(self, username: str) -> list[PendingRequest]:
        names.validate_username(username)
        pipe = self.redis.pipeline(transaction=False)
        candidates = self.live_candidates(username)
        for candidate in candidates:
            pipe.hgetall(self.keys.request(username, candidate))
            pipe.hgetall(self.keys.request_csr(username, candidate))
        pipe.get(self.keys.user_refused(username))
        *answers, refused = pipe.execute()
        contested = contested_names(candidates)
        return [
            _request_from(username, candidate, fields, csr, candidate in contested, int(refused or 0))
            for candidate, fields, csr in zip(candidates, answers[::2], answers[1::2], strict=True)
            if fields
        ]

    def approve(
        self,
        username: str,
        pairing_id: str | None = None,
        *,
        candidate: str | None = None,
        force: bool = False,
        actor: str = UNNAMED_ACTOR,
    ) -> User:
        """Create the user with exactly the request's hash and no permissions.

        Which request: see _choose. One transaction
        writes the user and removes every candidate for the username; WATCH
        makes concurrent approvals (or an approve racing a deny or a new
        colliding candidate) end with exactly one winner. A contested
        candidate needs `force`.
        """
        names.validate_username(username)
        user_key = self.keys.user(username)
        candidates_key = self.keys.user_requests(username)

        def create_user(pipe: Pipeline) -> PendingRequest:
            if pipe.exists(user_key):
                raise UsernameTaken(f"user {username!r} exists already")
            request = self._read_request(pipe, username, pairing_id, candidate)
            all_candidates = set(pipe.smembers(candidates_key)) | {request.candidate}
            if not force and request.candidate in contested_names(self.existing(username, all_candidates)):
                raise RequestContested(
                    f"request {request.id} is contested: another candidate for {username!r} has pairing ID"
                    f" {request.pairing_id}; approve it only if you are sure this is the device (force)"
                )
            given = self._client_ids_to_give(pipe, username, request.client_id)
            # The request's CSR (certificates.py), signed before MULTI; None without one.
            certificate = self.certificates.issue_for_request(
                username, pipe.hgetall(self.keys.request_csr(username, request.candidate))
            )
            pipe.multi()
            pipe.hset(
                user_key,
                mapping={
                    "passwordHash": request.password_hash,
                    "createdAt": repr(self.clock()),
                    "superuser": "0",
                    "clientId": request.client_id,
                    "pairingId": request.pairing_id,
                    "source": request.source,
                },
            )
            pipe.sadd(self.keys.users(), username)
            self.users.queue_client_ids(pipe, username, given)
            pipe.delete(self.keys.user_last_connect(username))  # a predecessor's, if any
            self._forget_requests(pipe, username, all_candidates)
            pipe.delete(self.keys.user_denials(username), self.keys.user_refused(username))
            self.audit.add(
                pipe,
                actor,
                "request.approve",
                username,
                pairingId=request.pairing_id,
                clientId=request.client_id,
                **({"forced": True} if force else {}),
            )
            self.certificates.queue_issued(pipe, username, certificate, actor)
            return request

        watched = [user_key, candidates_key, self.keys.client_owners()]
        pairing = run_watched(self.redis, watched, create_user).pairing_id
        log.info("registration approved: user %s pairing %s by %s", username, pairing, actor)
        user = self.users.get(username)
        if user.certificate is not None:
            instruments.certificate_changed(instruments.CERTIFICATE_ISSUED)
        return user

    def _client_ids_to_give(self, pipe: Pipeline, username: str, client_id: str) -> list[str]:
        """The approved request's client ID as the user's own (SPEC §4), read
        under the WATCH of the owner index. One that another user owns is
        never taken from it: under CLIENT_ID_POLICY any the user is created
        without it, otherwise the approval is refused (ClientIdTaken)."""
        if not client_ids.ownable(client_id):
            return []
        owner = self.users.client_id_owners(pipe, [client_id]).get(client_id)
        if owner is None:
            return [client_id]
        if self.config.client_id_policy == CLIENT_ID_ANY:
            return []
        raise ClientIdTaken(
            f"client id {client_id!r} of this request belongs to user {owner!r}: free it there"
            " (PUT /api/users/<name>/client-ids) or deny the request"
        )

    def deny(
        self,
        username: str,
        pairing_id: str | None = None,
        *,
        candidate: str | None = None,
        actor: str = UNNAMED_ACTOR,
    ) -> PendingRequest:
        """Remove the request and remember the denial of its exact credentials
        for the pending TTL, so the device's polling gets 403 instead of a
        fresh request (and a device with the same pairing ID does not)."""
        names.validate_username(username)
        candidates_key = self.keys.user_requests(username)
        denials_key = self.keys.user_denials(username)

        def deny_request(pipe: Pipeline) -> PendingRequest:
            request = self._read_request(pipe, username, pairing_id, candidate)
            pipe.multi()
            self._forget_requests(pipe, username, {request.candidate})
            if request.credentials:
                pipe.hset(denials_key, request.credentials, repr(self.clock()))
                pipe.expire(denials_key, self.config.pending_ttl)
            self.audit.add(
                pipe, actor, "request.deny", username, pairingId=request.pairing_id, clientId=request.client_id
            )
            return request

        request = run_watched(self.redis, [candidates_key], deny_request)
        log.info("registration denied: user %s pairing %s by %s", username, request.pairing_id, actor)
        return request

    def deny_all(self, username: str, *, actor: str = UNNAMED_ACTOR) -> list[PendingRequest]:
        """Deny every candidate of a username (a squatted name, SPEC §2)."""
        denied = []
        for candidate in self.live_candidates(username):
            try:
                denied.append(self.deny(username, candidate=candidate, actor=actor))
            except RequestNotFound:
                continue  # expired or handled meanwhile
        if not denied:
            raise RequestNotFound(f"no pending request for {username!r}")
        # Those refusals were the squatter's doing, handled now: the count starts again.
        self.redis.delete(self.keys.user_refused(username))
        return denied

    def purge(self, *, actor: str = UNNAMED_ACTOR) -> int:
        """Remove every pending request (a flood); returns how many there were.
        Nothing is denied: a device that tries again while unlocked is recorded anew."""
        removed = 0
        while True:
            members: list[str] = self.redis.zrange(self.keys.pending_index(), 0, MAX_PAGE - 1)  # type: ignore[assignment]
            if not members:
                break
            pipe = self.redis.pipeline(transaction=False)
            for member in members:
                username, candidate = Keys.split_pending_member(member)
                pipe.delete(self.keys.request(username, candidate))  # counted: 1 while it had not expired
                pipe.delete(self.keys.request_csr(username, candidate))
                pipe.srem(self.keys.user_requests(username), candidate)
                pipe.delete(self.keys.user_refused(username))
            pipe.zrem(self.keys.pending_index(), *members)
            answers = pipe.execute()
            removed += sum(answers[0:-1:4])
        pipe = self.redis.pipeline()
        self.audit.add(pipe, actor, "request.purge", "", removed=removed)
        pipe.execute()
        log.info("pending requests purged: %d removed by %s", removed, actor)
        return removed

    def _read_request(
        self, pipe: Pipeline, username: str, pairing_id: str | None, candidate: str | None
    ) -> PendingRequest:
        """Choose the request (see _choose) and read it.

        The request key is not watched: every change that matters to approve
        and deny (a new, approved, denied or purged candidate) also changes
        the username's candidate set, which they watch; what else changes the
        request (an attempt counted) must not make them conflict, or a device
        polling fast would keep the operator from approving or denying it.
        """
        candidate = self._choose(username, pairing_id, candidate)
        fields = pipe.hgetall(self.keys.request(username, candidate))
        if not fields:
            raise RequestNotFound(_not_found(username, candidate))
        return _request_from(username, candidate, fields)

    def _choose(self, username: str, pairing_id: str | None, candidate: str | None) -> str:
        """`candidate` (from a request id) names exactly one request; a
        pairing ID names the one candidate that has it; neither, the only one."""
        live = self.live_candidates(username)
        if candidate is not None:
            validate_candidate(candidate)
            if candidate not in live:
                raise RequestNotFound(_not_found(username, candidate))
            return candidate
        if pairing_id is not None:
            passwords.validate_pairing_id(pairing_id)
            matching = [c for c in live if candidate_pairing_id(c) == pairing_id]
            if not matching:
                raise RequestNotFound(f"no pending request for {username!r} with pairing ID {pairing_id}")
            if len(matching) > 1:
                raise AmbiguousRequest(
                    f"{username!r} has {len(matching)} contested requests with pairing ID {pairing_id}"
                    f" (request ids {', '.join(request_id(username, c) for c in matching)});"
                    " say which with the request id"
                )
            return matching[0]
        if not live:
            raise RequestNotFound(f"no pending request for {username!r}")
        if len(live) > 1:
            raise AmbiguousRequest(
                f"{username!r} has {len(live)} pending requests (pairing IDs"
                f" {', '.join(candidate_pairing_id(c) for c in live)}); say which with the pairing ID"
            )
        return live[0]

    def _forget_requests(self, pipe: Pipeline, username: str, candidates: set[Any]) -> None:
        for candidate in candidates:
            pipe.delete(self.keys.request(username, candidate), self.keys.request_csr(username, candidate))
            pipe.srem(self.keys.user_requests(username), candidate)
            pipe.zrem(self.keys.pending_index(), Keys.pending_member(username, candidate))


def _not_found(username: str, candidate: str) -> str:
    if candidate == candidate_pairing_id(candidate):
        return f"no pending request for {username!r} with pairing ID {candidate}"
    return f"no pending request {request_id(username, candidate)}"


def _request_from(
    username: str,
    candidate: str,
    fields: dict[Any, Any],
    csr: dict[Any, Any] | None = None,
    contested: bool = False,
    refused: int = 0,
) -> PendingRequest:
    context = fields.get("context") or ""
    return PendingRequest(
        username=username,
        candidate=candidate,
        client_id=fields.get("clientId", ""),
        source=fields.get("source", ""),
        first_seen=float(fields.get("firstSeen") or 0),
        last_seen=float(fields.get("lastSeen") or 0),
        attempts=int(fields.get("attempts") or 0),
        context=json.loads(context) if context else None,
        password_hash=fields.get("passwordHash", ""),
        credentials=fields.get("credentials", ""),
        contested=contested,
        refused_attempts=refused,
        certificate_request=(
            {"keyType": csr.get("keyType", ""), "publicKeySha256": csr.get("publicKeySha256", "")} if csr else None
        ),
    )
