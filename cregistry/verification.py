"""Checking a known user's password: the fast path, the guessing limit and
the bound on bcrypt work.

- A successful bcrypt check leaves a *verified token* in Redis: an HMAC of
  (username, password, stored hash) under a secret that lives only in the
  service's memory (or CREGISTRY_VERIFY_SECRET). The next connect with the
  same password matches the token without bcrypt; a different stored hash
  (password changed) or a deleted user (its keys gone) invalidates it. Nothing
  in Redis lets anyone recover a password without the secret.
- The token also names the secret and the stored hash it was made under (an
  HMAC of username and stored hash alone, no password in it). While such a
  token lives, it proves the one password that passes bcrypt, so any other
  is refused without bcrypt: guessing a connected device's password costs
  a Redis round trip, not bcrypt's CPU (70 ms at cost 10 on the bench
  machine), and a broker that waits for each check (2.0) keeps serving its
  clients under a guessing flood. The fast refusal tells the guesser only
  that the device connected recently.
- The token slides: a match renews its TTL (at most once per TOKEN_RENEWAL
  of its life, so a CONNECT costs no write), so a device that connects at
  least once per CREGISTRY_VERIFIED_TTL keeps it for good.
- Failed checks are counted per username, and per client ID of the username,
  in a window; over the limit an attempt is refused without bcrypt work. The
  verified token is consulted first, so a device that connected recently
  keeps connecting while someone guesses its password. Without a token (it
  lapsed, or the service restarted without CREGISTRY_VERIFY_SECRET), guessing
  still cannot keep a working device out: the username's limit does not hold
  for a client ID the user owns (its registered one, or one that passed a
  check before), only that client ID's own count does; and over its own
  count, such a client ID still gets one bcrypt try per
  failure_window / failure_limit seconds. See docs/threat-model.md.
- One CONNECT reads the user's keys once (read): the token check and, when
  the token does not accept, the bcrypt check decide from the same read.
- bcrypt runs under a per-process semaphore, and hashing for registrations
  (unknown users) under a separate, smaller one that is never waited for, so
  a flood of unknown users cannot starve known devices.
- bcrypt runs on threads of the lowest CPU priority (WorkLimits.hash_work):
  a device's attempt never takes the CPU from the broker, so guessing costs
  Mosquitto's connected clients no latency where the broker does not wait
  for the check (2.1's delayed basic auth; docs/performance.md).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import hashlib
import hmac
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.client import Pipeline

from cregistry import client_ids, instruments, names, passwords
from cregistry.audit import UNNAMED_ACTOR, AuditLog
from cregistry.budget import SERVICE_DEADLINE_SECONDS
from cregistry.config import BCRYPT_CONCURRENCY, CLIENT_ID_ANY, Config, env_name
from cregistry.errors import PasswordChecksBusy, UserNotFound
from cregistry.feed_follower import FeedFollower
from cregistry.followed_cache import FollowedCache
from cregistry.keys import Keys
from cregistry.transactions import run_watched

log = logging.getLogger(__name__)
R = TypeVar("R")

# At most this often (seconds; 1 % of CREGISTRY_VERIFIED_TTL if that is
# less) a token match renews the token's TTL.
TOKEN_RENEWAL = 3600


class Verdict(enum.Enum):
    UNKNOWN_USER = "unknown user"
    ACCEPTED = "accepted"
    REFUSED = "wrong password"
    LIMITED = "too many failed attempts"
    # Another user's own client ID (or, under policy strict, not the user's
    # own); for an unknown user, a registration wearing another's (client_ids.py).
    CLIENT_ID_REFUSED = "client id not allowed"


@dataclasses.dataclass(frozen=True)
class KnownToken:
    """A verified token this worker read from Redis (followed_cache.py)."""

    stored_hash: str
    verified: str
    expires_at: float  # monotonic time at which the token's TTL ends
    # The user's own client IDs when the token was read: only a CONNECT with
    # one of them is answered from memory (others may be another user's own).
    client_ids: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class PasswordRecord:
    """What a password check reads of one user for one client ID, in one round
    trip (PasswordVerifier.read): the token check and the bcrypt check after it
    both decide from it."""

    newest: list[tuple[str, object]]  # the feed's newest entry, read first: the rest is at least as new
    stored_hash: str | None
    own_client: str | None  # the client ID the user registered with
    verified: str | None
    ttl_ms: int  # the verified token's
    failures: int
    client_failures: int
    known: bool  # the client ID passed a check before
    owner: str | None  # the client ID's owner
    own: set[str]  # the user's own client IDs


# The nice value of the threads that run bcrypt: the lowest priority there is.
# A check that needs bcrypt is a device's first connect or somebody's guess;
# neither may slow the broker's delivery on a shared host. The check still gets
# any core the broker leaves idle, and a synchronous broker (2.0) waits idle.
HASHING_NICE = 19


def _lower_priority() -> None:
    """Initializer of the hashing threads. Linux gives each thread its own
    nice value; elsewhere the process's would change, so nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICE)
    except OSError as error:
        log.warning("bcrypt keeps the normal CPU priority: %s", error)


class WorkLimits:
    """The process's bcrypt slots and the threads bcrypt runs on; shared by
    both listeners of one worker."""

    def __init__(self, config: Config, *, slot_timeout: float = SERVICE_DEADLINE_SECONDS) -> None:
        self.verify_slots = threading.BoundedSemaphore(config.bcrypt_concurrency)
        self.registration_slots = threading.BoundedSemaphore(config.registration_concurrency)
        # A password check waits for a slot at most as long as a broker check may
        # take (budget.py): past that its answer is a 503 anyway, and a thread
        # waiting without bound is a thread the next checks no longer have.
        self.slot_timeout = slot_timeout
        # One thread per slot: work that holds a slot never queues here.
        self._hashing = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.bcrypt_concurrency + config.registration_concurrency,
            thread_name_prefix="bcrypt",
            initializer=_lower_priority,
        )

    def hash_work(self, work: Callable[..., R], *args: object) -> R:
        """`work(*args)` on a hashing thread (HASHING_NICE); called with a slot held."""
        return self._hashing.submit(work, *args).result()


class PasswordVerifier:
    def __init__(
        self,
        connection: redis.Redis,
        config: Config,
        clock: Callable[[], float] = time.time,
        *,
        limits: WorkLimits,
        keys: Keys,
        audit: AuditLog,
        follower: FeedFollower | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = connection
        self.monotonic = monotonic
        # With a feed follower (the service's workers), accepted tokens are kept
        # here too, so that a known device's CONNECT needs no Redis round trip
        # (see followed_cache.py).
        self.tokens: FollowedCache[KnownToken] | None = FollowedCache(follower) if follower is not None else None
        self.config = config
        self.keys = keys
        self.clock = clock
        self.limits = limits
        self.audit = audit
        secret = config.verify_secret
        self.secret = bytes.fromhex(secret) if secret else secrets.token_bytes(32)
        # A key of its own for candidates' credential digests, so that no
        # digest can ever be replayed as a verified token or the other way.
        self.candidate_secret = hmac.new(self.secret, b"cregistry candidate credentials", hashlib.sha256).digest()
        self.candidate_key_id = hmac.new(self.candidate_secret, b"key id", hashlib.sha256).hexdigest()[:12]
        self.binding_secret = hmac.new(self.secret, b"cregistry token binding", hashlib.sha256).digest()

    def verify_by_cached_token(self, username: str, password: str, seen: str | None, client_id: str = "") -> bool:
        """True when the token this worker holds accepts the password, for a
        caller at feed position `seen` with `client_id` (no Redis, no bcrypt);
        False means "ask verify_by_token()"."""
        known = self.tokens.get(username, seen) if self.tokens is not None else None
        # Once its renewal is due, verify_by_token renews it in Redis (and caches it again).
        if known is None or self.monotonic() >= known.expires_at - self._renewal_due_below():
            return False
        # A client ID not the user's own may be someone else's: only Redis knows.
        if self.config.client_id_policy != CLIENT_ID_ANY and client_id not in known.client_ids:
            return False
        return self._token_accepts(username, password, known.stored_hash, known.verified)

    def read(self, username: str, client_id: str = "") -> PasswordRecord:
        """Everything verify_by_token and verify decide from, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        # The feed's newest entry first: what is read after it is at least as new.
        pipe.xrevrange(self.keys.changes(), count=1)
        pipe.hmget(self.keys.user(username), "passwordHash", "clientId")
        pipe.get(self.keys.user_verified(username))
        pipe.pttl(self.keys.user_verified(username))
        pipe.get(self.keys.user_failures(username))
        pipe.hget(self.keys.user_client_failures(username), client_id)
        pipe.sismember(self.keys.user_known_clients(username), client_id)
        pipe.hget(self.keys.client_owners(), client_id)
        pipe.smembers(self.keys.user_client_ids(username))
        (newest, (stored_hash, own_client), verified, ttl_ms, failures, client_failures, known, owner, own) = (
            pipe.execute()
        )
        return PasswordRecord(
            newest,
            stored_hash,
            own_client,
            verified,
            ttl_ms,
            int(failures or 0),
            int(client_failures or 0),
            bool(known),
            owner,
            own,
        )

    def verify_by_token(
        self, username: str, password: str, client_id: str = "", record: PasswordRecord | None = None
    ) -> bool:
        """True when the verified token accepts the password and the client ID
        policy lets the user connect with `client_id` (no bcrypt; one round trip
        unless the caller read `record` already); False means "ask verify()",
        not "wrong password"."""
        if record is None:
            record = self.read(username, client_id)
        if client_id and not client_ids.may_connect(self.config.client_id_policy, username, client_id, record.owner):
            return False
        accepted = self._token_accepts(username, password, record.stored_hash, record.verified)
        if accepted:
            assert record.stored_hash is not None and record.verified is not None  # the token accepted them
            ttl_ms = self._slide_token(username, record.ttl_ms)
            self._keep_token(username, record.newest, record.stored_hash, record.verified, ttl_ms, record.own)
        return accepted

    def _slide_token(self, username: str, ttl_ms: int) -> int:
        """Renew a matched token's TTL once it is older than the renewal step; its TTL now (ms)."""
        ttl = self.config.verified_ttl
        if ttl_ms >= self._renewal_due_below() * 1000:
            return ttl_ms
        # EXPIRE, not SET: a token replaced or deleted meanwhile stays as it is.
        return ttl * 1000 if self.redis.expire(self.keys.user_verified(username), ttl) else ttl_ms

    def _renewal_due_below(self) -> int:
        """Seconds: a token with less life left than this is renewed at its next match."""
        ttl = self.config.verified_ttl
        return ttl - max(1, min(TOKEN_RENEWAL, ttl // 100))

    def _keep_token(
        self,
        username: str,
        newest: list[tuple[str, object]],
        stored_hash: str,
        token: str,
        ttl_ms: int,
        own_client_ids: set[str],
    ) -> None:
        """Cache an accepted token (verify_by_cached_token); `newest` is the
        feed's newest entry read before the user's data."""
        if self.tokens is not None and newest and ttl_ms > 0:
            expires_at = self.monotonic() + ttl_ms / 1000
            known = KnownToken(stored_hash, token, expires_at, frozenset(own_client_ids))
            self.tokens.put(username, str(newest[0][0]), known)

    def verify(
        self, username: str, password: str, client_id: str = "", record: PasswordRecord | None = None
    ) -> Verdict:
        """The password check of a CONNECT or a registration attempt with
        `client_id` ("" for none: then the username's limit alone applies);
        `record`: what the caller read of the user already (read)."""
        if record is None:
            record = self.read(username, client_id)
        stored_hash, owner = record.stored_hash, record.owner
        policy = self.config.client_id_policy
        if stored_hash is None:
            # Wearing another user's client ID, a registration records nothing.
            return Verdict.CLIENT_ID_REFUSED if client_ids.refuses_registration(policy, owner) else Verdict.UNKNOWN_USER
        # Before any password work: such a CONNECT could take over another's
        # session. "" names no client ID (a REST registration's poll): brokers
        # always send one (Mosquitto assigns one to a client that sends none).
        if client_id and not client_ids.may_connect(policy, username, client_id, owner):
            return Verdict.CLIENT_ID_REFUSED
        if self._token_accepts(username, password, stored_hash, record.verified):
            self._slide_token(username, record.ttl_ms)
            return Verdict.ACCEPTED
        token = self._token(username, password, stored_hash)
        owned = bool(client_id) and (record.known or client_id == record.own_client or owner == username)
        if self._limited(username, client_id, owned, record.failures, record.client_failures):
            instruments.password_checked(instruments.PASSWORD_LIMITED, False)
            return Verdict.LIMITED
        if self._token_binds(username, stored_hash, record.verified):
            # The token proves the one password that passes bcrypt, and this is not it.
            instruments.password_checked(instruments.PASSWORD_TOKEN, False)
            self._count_failure(username, client_id)
            return Verdict.REFUSED
        with instruments.waiting_for_bcrypt():
            if not self.limits.verify_slots.acquire(timeout=self.limits.slot_timeout):
                raise PasswordChecksBusy(
                    f"every password check slot ({env_name(BCRYPT_CONCURRENCY)}) stayed busy: try again"
                )
        try:
            accepted = self.limits.hash_work(passwords.verify_password, password, stored_hash)
        finally:
            self.limits.verify_slots.release()
        instruments.password_checked(instruments.PASSWORD_BCRYPT, accepted)
        if accepted:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(self.keys.user_verified(username), token, ex=self.config.verified_ttl)
            if client_id:
                pipe.sadd(self.keys.user_known_clients(username), client_id)
                pipe.expire(self.keys.user_known_clients(username), self.config.verified_ttl)
            pipe.execute()
            self._keep_token(username, record.newest, stored_hash, token, self.config.verified_ttl * 1000, record.own)
            return Verdict.ACCEPTED
        self._count_failure(username, client_id)
        return Verdict.REFUSED

    def _limited(self, username: str, client_id: str, owned: bool, failures: int, client_failures: int) -> bool:
        """Whether this attempt is refused without bcrypt (module docstring).

        Someone guessing with other client IDs fills the username's count,
        which an owned client ID ignores; guessing with the owned client ID
        itself fills that client ID's count, over which it still gets one try
        per interval: the guesser gains one guess per interval, and a device
        that retries gets its turn.
        """
        limit = self.config.failure_limit
        if not owned:
            return failures >= limit or client_failures >= limit
        if client_failures < limit:
            return False
        interval = max(1, self.config.failure_window // limit)
        took_try = self.redis.set(self.keys.user_limited_try(username, client_id), "1", ex=interval, nx=True)
        return not took_try

    def hash_for_registration(self, password: str) -> str | None:
        """bcrypt for a new request, or None when the registration slots are busy."""
        return self._in_registration_slot(passwords.hash_password, password, self.config.bcrypt_cost)

    def matches_for_registration(self, password: str, password_hash: str) -> bool | None:
        """bcrypt against a pending candidate's hash under the registration
        slots (registration.py); None when they are busy."""
        return self._in_registration_slot(passwords.verify_password, password, password_hash)

    def _in_registration_slot(self, work: Callable[..., R], *args: object) -> R | None:
        """`work(*args)` in a registration slot, never waited for: None when they are all busy."""
        if not self.limits.registration_slots.acquire(blocking=False):
            return None
        try:
            return self.limits.hash_work(work, *args)
        finally:
            self.limits.registration_slots.release()

    def failures(self, username: str) -> int:
        return int(self.redis.get(self.keys.user_failures(username)) or 0)

    def clear_failures(self, username: str, *, actor: str = UNNAMED_ACTOR) -> int:
        """Forget the failed attempts of a username; returns how many there were."""
        names.validate_username(username)
        user_key = self.keys.user(username)
        failures_key = self.keys.user_failures(username)

        def clear(pipe: Pipeline) -> int:
            # Only known users collect failures (see verify); for anyone else
            # the answer is "no user", as from every other user command.
            if not pipe.exists(user_key):
                raise UserNotFound(f"no user {username!r}")
            count = pipe.get(failures_key)
            pipe.multi()
            pipe.delete(failures_key, self.keys.user_client_failures(username))
            self.audit.add(pipe, actor, "user.failures.clear", username)
            return int(count or 0)

        return run_watched(self.redis, [user_key, failures_key], clear)

    def _count_failure(self, username: str, client_id: str) -> None:
        key = self.keys.user_failures(username)
        client_key = self.keys.user_client_failures(username)
        pipe = self.redis.pipeline()
        # SET NX EX starts the window only for the first failure; INCR keeps
        # the TTL. (EXPIRE NX would do the same but needs Redis 7.)
        pipe.set(key, 0, ex=self.config.failure_window, nx=True)
        pipe.incr(key)
        pipe.hincrby(client_key, client_id, 1)
        pipe.pttl(client_key)
        _, count, _, client_ttl_ms = pipe.execute()
        if client_ttl_ms == -1:  # its first failure: the window starts now
            self.redis.expire(client_key, self.config.failure_window)
        if count == self.config.failure_limit:
            log.warning("user %s reached %d failed password checks; refusing without bcrypt", username, count)

    def credentials_digest(self, username: str, password: str) -> str:
        """The keyed digest that identifies a pending candidate's exact
        credentials (pending.py); useless without the secret, which never
        enters Redis."""
        message = b"\0".join((username.encode(), password.encode()))
        return hmac.new(self.candidate_secret, message, hashlib.sha256).hexdigest()

    def _token_accepts(self, username: str, password: str, stored_hash: str | None, verified: str | None) -> bool:
        if stored_hash is None or verified is None:
            return False
        # A token written before bindings is the proof alone: rpartition reads it as such.
        proof = verified.rpartition(":")[2]
        if not hmac.compare_digest(proof, self._proof(username, password, stored_hash)):
            return False
        instruments.password_checked(instruments.PASSWORD_TOKEN, True)
        return True

    def _token_binds(self, username: str, stored_hash: str, verified: str | None) -> bool:
        """Whether `verified` was made by this secret for `stored_hash`: then its
        proof is of the only password that passes bcrypt against that hash
        (passwords never exceed bcrypt's 72 bytes: validate_password_format)."""
        if verified is None:
            return False
        binding = verified.rpartition(":")[0]
        return bool(binding) and hmac.compare_digest(binding, self._binding(username, stored_hash))

    def _token(self, username: str, password: str, stored_hash: str) -> str:
        """`binding:proof` (module docstring)."""
        return f"{self._binding(username, stored_hash)}:{self._proof(username, password, stored_hash)}"

    def _binding(self, username: str, stored_hash: str) -> str:
        message = b"\0".join((username.encode(), stored_hash.encode()))
        return hmac.new(self.binding_secret, message, hashlib.sha256).hexdigest()[:32]

    def _proof(self, username: str, password: str, stored_hash: str) -> str:
        message = b"\0".join((username.encode(), password.encode(), stored_hash.encode()))
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()
