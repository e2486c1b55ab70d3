"""Pending registration requests: how they are stored, listed, approved
and denied. registration.py records them; operators handle them here.

A pending request is identified by (username, pairing ID); its id in the
admin API is the pending-index member "username:pairingId" (keys.py). Each
lives in its own Redis hash with a TTL (the pending TTL, renewed by every
attempt); a per-username set lists the candidates and a sorted set indexes
all requests by expiry, which is what the global cap counts.
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

from cregistry import instruments, names, passwords
from cregistry.audit import UNNAMED_ACTOR, AuditLog
from cregistry.certificates import Certificates
from cregistry.config import Config
from cregistry.errors import AmbiguousRequest, InvalidInput, RequestNotFound, UsernameTaken
from cregistry.keys import Keys
from cregistry.timestamps import isoformat
from cregistry.transactions import run_watched
from cregistry.users import User, UserStore

log = logging.getLogger(__name__)

MAX_PAGE = 1000  # requests listed at once; the listing is paginated beyond
MAX_OFFSET = 10**9


@dataclasses.dataclass(frozen=True)
class PendingRequest:
    username: str
    pairing_id: str
    client_id: str
    source: str
    first_seen: float
    last_seen: float
    attempts: int
    context: dict[str, Any] | None
    password_hash: str = dataclasses.field(repr=False)
    # The CSR sent with the first attempt, as operators see it (keyType,
    # publicKeySha256; certificates.py), or None: no certificate requested.
    certificate_request: dict[str, str] | None = None

    @property
    def id(self) -> str:
        return request_id(self.username, self.pairing_id)

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
            "certificateRequest": self.certificate_request,
        }


def request_id(username: str, pairing_id: str) -> str:
    """The admin API's id of a request: "username:pairingId", its pending-index member."""
    return Keys.pending_member(username, pairing_id)


def parse_request_id(value: str) -> tuple[str, str]:
    """Split an id made by request_id; anything else names no request."""
    username, pairing_id = Keys.split_pending_member(value)
    try:
        names.validate_username(username)
        passwords.validate_pairing_id(pairing_id)
    except InvalidInput:
        raise RequestNotFound(f"no pending request {value!r}") from None
    return username, pairing_id


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
        pairing: str,
        password_hash: str,
        client_id: str,
        source: str,
        context: dict[str, Any] | None,
        now: float,
    ) -> None:
        """Queue the writes of a new request on `pipe` (after MULTI)."""
        pipe.hset(
            self.keys.request(username, pairing),
            mapping={
                "passwordHash": password_hash,
                "clientId": client_id,
                "source": source,
                "firstSeen": repr(now),
                "lastSeen": repr(now),
                "attempts": 1,
                "context": json.dumps(context) if context is not None else "",
            },
        )
        pipe.sadd(self.keys.user_requests(username), pairing)
        self._keep_alive(pipe, username, pairing, now)

    def count_attempt(self, pipe: Pipeline, username: str, pairing: str, now: float) -> None:
        """Queue one more attempt on an existing request on `pipe` (after MULTI)."""
        request_key = self.keys.request(username, pairing)
        pipe.hincrby(request_key, "attempts", 1)
        pipe.hset(request_key, "lastSeen", repr(now))
        self._keep_alive(pipe, username, pairing, now)

    def _keep_alive(self, pipe: Pipeline, username: str, pairing: str, now: float) -> None:
        """(Re)start the pending TTL of a request, its user's candidate set and its index entry."""
        ttl = self.config.pending_ttl
        pipe.expire(self.keys.request(username, pairing), ttl)
        pipe.expire(self.keys.user_requests(username), ttl)
        pipe.expire(self.keys.request_csr(username, pairing), ttl)  # certificates.py; absent without a CSR
        pipe.zadd(self.keys.pending_index(), {Keys.pending_member(username, pairing): now + ttl})

    def live_pairing_ids(self, username: str) -> list[str]:
        """Pairing IDs of the user's requests whose keys still exist (TTL).

        Reads go through a separate pipeline even inside a WATCH: WATCH
        notices changes by anyone, so the reads need not share its connection.
        """
        return self.existing(username, self.redis.smembers(self.keys.user_requests(username)))

    def existing(self, username: str, pairings: Any) -> list[str]:
        """Those of `pairings` whose request keys still exist, sorted."""
        ordered = sorted(pairings)
        pipe = self.redis.pipeline(transaction=False)
        for pairing in ordered:
            pipe.exists(self.keys.request(username, pairing))
        return [p for p, exists in zip(ordered, pipe.execute(), strict=True) if exists]

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
        for username, pairing in pairs:
            pipe.hgetall(self.keys.request(username, pairing))
            pipe.hgetall(self.keys.request_csr(username, pairing))
        requests = []
        stale = []
        answers = pipe.execute()
        for (username, pairing), fields, csr in zip(pairs, answers[::2], answers[1::2], strict=True):
            if fields:
                requests.append(_request_from(username, pairing, fields, csr))
            else:
                stale.append(Keys.pending_member(username, pairing))
        if stale:
            self.redis.zrem(self.keys.pending_index(), *stale)
        return requests

    def count_requests(self) -> int:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.pending_index(), "-inf", self.clock())
        pipe.zcard(self.keys.pending_index())
        return int(pipe.execute()[1])

    def requests_for(self, username: str) -> list[PendingRequest]:
        names.validate_username(username)
        pipe = self.redis.pipeline(transaction=False)
        pairings = self.live_pairing_ids(username)
        for pairing in pairings:
            pipe.hgetall(self.keys.request(username, pairing))
            pipe.hgetall(self.keys.request_csr(username, pairing))
        answers = pipe.execute()
        return [
            _request_from(username, pairing, fields, csr)
            for pairing, fields, csr in zip(pairings, answers[::2], answers[1::2], strict=True)
            if fields
        ]

    def approve(self, username: str, pairing_id: str | None = None, *, actor: str = UNNAMED_ACTOR) -> User:
        """Create the user with exactly the request's hash and no permissions.

        One transaction writes the user and removes every candidate for the
        username; WATCH makes concurrent approvals (or an approve racing a
        deny) end with exactly one winner.
        """
        names.validate_username(username)
        user_key = self.keys.user(username)
        candidates_key = self.keys.user_requests(username)

        def create_user(pipe: Pipeline) -> PendingRequest:
            if pipe.exists(user_key):
                raise UsernameTaken(f"user {username!r} exists already")
            request = self._watch_request(pipe, username, pairing_id)
            pairing = request.pairing_id
            all_pairings = set(pipe.smembers(candidates_key)) | {pairing}
            # The request's CSR (certificates.py), signed before MULTI; None without one.
            certificate = self.certificates.issue_for_request(
                username, pipe.hgetall(self.keys.request_csr(username, pairing))
            )
            pipe.multi()
            pipe.hset(
                user_key,
                mapping={
                    "passwordHash": request.password_hash,
                    "createdAt": repr(self.clock()),
                    "superuser": "0",
                    "clientId": request.client_id,
                    "pairingId": pairing,
                    "source": request.source,
                },
            )
            pipe.sadd(self.keys.users(), username)
            pipe.delete(self.keys.user_last_connect(username))  # a predecessor's, if any
            self._forget_requests(pipe, username, all_pairings)
            pipe.delete(self.keys.user_denials(username))
            self.audit.add(pipe, actor, "request.approve", username, pairingId=pairing, clientId=request.client_id)
            self.certificates.queue_issued(pipe, username, certificate, actor)
            return request

        pairing = run_watched(self.redis, [user_key, candidates_key], create_user).pairing_id
        log.info("registration approved: user %s pairing %s by %s", username, pairing, actor)
        user = self.users.get(username)
        if user.certificate is not None:
            instruments.certificate_changed(instruments.CERTIFICATE_ISSUED)
        return user

    def deny(self, username: str, pairing_id: str | None = None, *, actor: str = UNNAMED_ACTOR) -> PendingRequest:
        """Remove the request and remember the denial for the pending TTL,
        so the device's polling gets 403 instead of a fresh request."""
        names.validate_username(username)
        candidates_key = self.keys.user_requests(username)
        denials_key = self.keys.user_denials(username)

        def deny_request(pipe: Pipeline) -> PendingRequest:
            request = self._watch_request(pipe, username, pairing_id)
            pairing = request.pairing_id
            pipe.multi()
            self._forget_requests(pipe, username, {pairing})
            pipe.hset(denials_key, pairing, repr(self.clock()))
            pipe.expire(denials_key, self.config.pending_ttl)
            self.audit.add(pipe, actor, "request.deny", username, pairingId=pairing, clientId=request.client_id)
            return request

        request = run_watched(self.redis, [candidates_key], deny_request)
        pairing = request.pairing_id
        log.info("registration denied: user %s pairing %s by %s", username, pairing, actor)
        return request

    def _watch_request(self, pipe: Pipeline, username: str, pairing_id: str | None) -> PendingRequest:
        """Choose the request (see _choose), WATCH it and read it."""
        pairing = self._choose(username, pairing_id)
        request_key = self.keys.request(username, pairing)
        pipe.watch(request_key)
        fields = pipe.hgetall(request_key)
        if not fields:
            raise RequestNotFound(f"no pending request for {username!r} with pairing ID {pairing}")
        return _request_from(username, pairing, fields)

    def _choose(self, username: str, pairing_id: str | None) -> str:
        live = self.live_pairing_ids(username)
        if pairing_id is not None:
            passwords.validate_pairing_id(pairing_id)
            if pairing_id not in live:
                raise RequestNotFound(f"no pending request for {username!r} with pairing ID {pairing_id}")
            return pairing_id
        if not live:
            raise RequestNotFound(f"no pending request for {username!r}")
        if len(live) > 1:
            raise AmbiguousRequest(
                f"{username!r} has {len(live)} pending requests (pairing IDs {', '.join(live)});"
                " say which with the pairing ID"
            )
        return live[0]

    def _forget_requests(self, pipe: Pipeline, username: str, pairings: set[Any]) -> None:
        for pairing in pairings:
            pipe.delete(self.keys.request(username, pairing), self.keys.request_csr(username, pairing))
            pipe.srem(self.keys.user_requests(username), pairing)
            pipe.zrem(self.keys.pending_index(), Keys.pending_member(username, pairing))


def _request_from(
    username: str, pairing: str, fields: dict[Any, Any], csr: dict[Any, Any] | None = None
) -> PendingRequest:
    context = fields.get("context") or ""
    return PendingRequest(
        username=username,
        pairing_id=pairing,
        client_id=fields.get("clientId", ""),
        source=fields.get("source", ""),
        first_seen=float(fields.get("firstSeen") or 0),
        last_seen=float(fields.get("lastSeen") or 0),
        attempts=int(fields.get("attempts") or 0),
        context=json.loads(context) if context else None,
        password_hash=fields.get("passwordHash", ""),
        certificate_request=(
            {"keyType": csr.get("keyType", ""), "publicKeySha256": csr.get("publicKeySha256", "")} if csr else None
        ),
    )
