"""Fleet enrollment (SPEC §13): a token for a batch of devices, bound to a
username pattern, with roles, a number of uses and an expiry. A device that
registers with a valid token is created at once, locked or not.

- The token is made here (256 random bits), shown once, and stored only as
  an HMAC-SHA256 digest under the secret of verification.py
  (CREGISTRY_VERIFY_SECRET): nothing in Redis gives a token away, and every
  instance and the CLI find an enrollment by its token only if they share
  that secret.
- Every key of an enrollment expires with it, so does what it remembers.
- A registration checks the token (no bcrypt) before anything else; every
  kind of bad token, and a username the enrollment does not cover, ends in
  one refusal with one text (ONE_REFUSAL), counted per client address: over
  CREGISTRY_ENROLLMENT_FAILURE_LIMIT, tokens are not even looked at.
- A use is taken in the transaction that creates the user (WATCH on the
  enrollment), so of two devices racing for the last use exactly one gets it.
- A user an operator deletes is remembered by the enrollment that created it
  (users.py, delete) and cannot come back through it.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any, TypedDict, cast

import redis
from redis.client import Pipeline

from cregistry import instruments, names, passwords
from cregistry.address_limit import AddressLimit
from cregistry.audit import UNNAMED_ACTOR, AuditLog
from cregistry.config import Config
from cregistry.errors import EnrollmentExists, EnrollmentNotFound, InvalidInput, UserNotFound
from cregistry.keys import Keys
from cregistry.log_throttle import ThrottledWarning
from cregistry.registration import validate_context, validate_fields
from cregistry.timestamps import isoformat
from cregistry.transactions import run_watched
from cregistry.users import UserStore
from cregistry.verification import PasswordVerifier, Verdict

log = logging.getLogger(__name__)

# The bounds of an enrollment (docs/enrollment.md).
MAX_USES = 100_000
DEFAULT_MAX_USES = 1
MIN_EXPIRES_IN = 60
MAX_EXPIRES_IN = 365 * 24 * 3600
DEFAULT_EXPIRES_IN = 24 * 3600
MAX_PATTERN_LENGTH = 128
MAX_ROLES = 100
MAX_TOKEN_LENGTH = 256  # what a device may send; the tokens made here have 43 characters
TOKEN_BYTES = 32
# A glob over usernames: the username characters and fnmatch's * ? [ ] !.
PATTERN_RE = re.compile(r"[A-Za-z0-9_.\-*?\[\]!]+", re.ASCII)
# The one answer to every refused enrollment registration: which check
# failed is for the operator's log and metrics, never for the device.
ONE_REFUSAL = "this enrollment token cannot register this username"
_DIGEST_LABEL = b"cregistry enrollment token\0"
# Refusals are logged one by one (the address limit bounds them); what comes
# after the limit is an attacker's rate, logged at most once a minute.
_limited_warning = ThrottledWarning(log, "enrollment registration from %s refused: too many refusals from that address")


class EnrollmentDict(TypedDict):
    """An enrollment as the API and the CLI show it; never the token."""

    name: str
    usernamePattern: str
    roles: list[str]
    maxUses: int
    usesLeft: int
    expiresAt: str | None
    createdBy: str
    createdAt: str | None
    removedUsers: list[str]


@dataclasses.dataclass(frozen=True)
class Enrollment:
    name: str
    username_pattern: str
    roles: tuple[str, ...]
    max_uses: int
    uses_left: int
    expires_at: float
    created_by: str
    created_at: float
    removed_users: tuple[str, ...] = ()

    def covers(self, username: str) -> bool:
        """True when `username` matches the pattern (case-sensitive, as usernames are)."""
        return fnmatch.fnmatchcase(username, self.username_pattern)

    def to_dict(self) -> EnrollmentDict:
        return {
            "name": self.name,
            "usernamePattern": self.username_pattern,
            "roles": list(self.roles),
            "maxUses": self.max_uses,
            "usesLeft": self.uses_left,
            "expiresAt": isoformat(self.expires_at),
            "createdBy": self.created_by,
            "createdAt": isoformat(self.created_at),
            "removedUsers": list(self.removed_users),
        }


@dataclasses.dataclass(frozen=True)
class CreatedEnrollment:
    """A new enrollment and its token: the only time the token is known."""

    enrollment: Enrollment
    token: str = dataclasses.field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {**self.enrollment.to_dict(), "token": self.token}


class Outcome(enum.Enum):
    """How a registration with a token ended."""

    GRANTED = "granted"  # the user was created now, taking one use
    REPEATED = "repeated"  # the user exists with these credentials: no use taken
    REFUSED = "refused"  # a bad token or a username the enrollment does not cover (ONE_REFUSAL)
    LIMITED = "limited"  # too many refusals from this address: the token was not looked at
    WRONG_PASSWORD = "conflict"  # the user exists with other credentials
    TOO_MANY_FAILURES = "too many failures"  # the user's own guessing limit
    CLIENT_ID_REFUSED = "client id refused"  # another user's own client ID: nothing recorded
    WEAK_PASSWORD = "weak password"
    BUSY = "busy"  # every registration bcrypt slot is taken


# Why a registration was refused, for the log and the metrics only.
UNKNOWN_TOKEN = "unknown token"  # never made, revoked, or expired (its keys are gone)
EXPIRED = "expired"
USED_UP = "used up"
OUTSIDE_PATTERN = "outside pattern"
REMOVED_USER = "removed user"
CLIENT_ID_TAKEN = "client id taken"


@dataclasses.dataclass(frozen=True)
class EnrolledAttempt:
    outcome: Outcome
    pairing_id: str
    enrollment: str = ""  # the enrollment's name, "" when the token named none
    detail: str = ""  # REFUSED: one of the reasons above; WEAK_PASSWORD: the rule broken


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not names.ROLE_NAME_RE.fullmatch(name):
        raise InvalidInput(
            "name must be 3 to 64 characters of ASCII letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return name


def validate_username_pattern(pattern: object) -> str:
    if not isinstance(pattern, str) or not 1 <= len(pattern) <= MAX_PATTERN_LENGTH:
        raise InvalidInput(f"usernamePattern must be a glob of 1 to {MAX_PATTERN_LENGTH} characters")
    if not PATTERN_RE.fullmatch(pattern):
        raise InvalidInput(
            "usernamePattern may hold only username characters (ASCII letters, digits, '_', '.', '-')"
            " and the glob characters * ? [ ] !"
        )
    if pattern.count("[") != pattern.count("]"):
        raise InvalidInput("usernamePattern has an unclosed [ ] set")
    return pattern


@dataclasses.dataclass(eq=False)
class Enrollments:
    """Enrollments and the registrations they allow. Takes its connection and collaborators explicitly."""

    redis: redis.Redis
    config: Config
    clock: Callable[[], float] = time.time
    _: dataclasses.KW_ONLY
    keys: Keys
    users: UserStore
    verifier: PasswordVerifier
    audit: AuditLog
    secret: bytes = dataclasses.field(repr=False)
    limit: AddressLimit
    token_factory: Callable[[], str] = lambda: secrets.token_urlsafe(TOKEN_BYTES)

    # -- operators ---------------------------------------------------------
    def create(
        self,
        name: object,
        username_pattern: object,
        roles: object = (),
        max_uses: object = DEFAULT_MAX_USES,
        expires_in: object = DEFAULT_EXPIRES_IN,
        *,
        actor: str = UNNAMED_ACTOR,
    ) -> CreatedEnrollment:
        """A new enrollment and its token; the whole input is checked before anything is written."""
        checked_name = validate_name(name)
        pattern = validate_username_pattern(username_pattern)
        role_names = self._existing_roles(roles)
        uses = names.validate_int_within(max_uses, "maxUses", 1, MAX_USES)
        lifetime = names.validate_int_within(expires_in, "expiresIn", MIN_EXPIRES_IN, MAX_EXPIRES_IN)
        token = self.token_factory()
        digest = self.digest(token)
        now = self.clock()
        expires_at = now + lifetime
        enrollment_key = self.keys.enrollment(checked_name)
        token_key = self.keys.enrollment_token(digest)

        def write(pipe: Pipeline) -> None:
            if pipe.exists(enrollment_key):
                raise EnrollmentExists(f"enrollment {checked_name!r} exists already")
            pipe.multi()
            pipe.hset(
                enrollment_key,
                mapping={
                    "usernamePattern": pattern,
                    "roles": json.dumps(role_names),
                    "maxUses": uses,
                    "usesLeft": uses,
                    "expiresAt": repr(expires_at),
                    "createdBy": actor,
                    "createdAt": repr(now),
                    "tokenDigest": digest,
                },
            )
            pipe.set(token_key, checked_name)
            # Redis forgets what expired by itself (a relative TTL: Redis's clock
            # need not agree with ours); the clock check in register() covers
            # the moments before it does.
            pipe.expire(enrollment_key, lifetime)
            pipe.expire(token_key, lifetime)
            pipe.sadd(self.keys.enrollments(), checked_name)
            self.audit.add(
                pipe, actor, "enrollment.create", checked_name,
                usernamePattern=pattern, roles=role_names, maxUses=uses, expiresIn=lifetime,
            )  # fmt: skip

        run_watched(self.redis, [enrollment_key], write)
        log.info("enrollment %s created by %s: pattern %s, %d uses", checked_name, actor, pattern, uses)
        enrollment = Enrollment(checked_name, pattern, tuple(role_names), uses, uses, expires_at, actor, now)
        return CreatedEnrollment(enrollment, token)

    def get(self, name: str) -> Enrollment:
        validate_name(name)
        found = self._read([name])
        if not found:
            raise EnrollmentNotFound(f"no enrollment {name!r}")
        return found[0]

    def list_enrollments(self) -> list[Enrollment]:
        """Every live enrollment, by name; forgets the names of expired ones."""
        listed = sorted(cast("set[str]", self.redis.smembers(self.keys.enrollments())))
        found = self._read(listed)
        gone = set(listed) - {e.name for e in found}
        if gone:
            self.redis.srem(self.keys.enrollments(), *gone)
        return found

    def delete(self, name: str, *, actor: str = UNNAMED_ACTOR) -> None:
        """Revoke the enrollment: its token registers nobody from now on.
        The users it created stay (delete them as any user)."""
        validate_name(name)
        enrollment_key = self.keys.enrollment(name)

        def remove(pipe: Pipeline) -> None:
            digest = cast("str | None", pipe.hget(enrollment_key, "tokenDigest"))
            if digest is None:
                raise EnrollmentNotFound(f"no enrollment {name!r}")
            pipe.multi()
            pipe.delete(enrollment_key, self.keys.enrollment_removed(name), self.keys.enrollment_token(digest))
            pipe.srem(self.keys.enrollments(), name)
            self.audit.add(pipe, actor, "enrollment.delete", name)

        run_watched(self.redis, [enrollment_key], remove)
        log.info("enrollment %s revoked by %s", name, actor)

    def forget_removed(self, name: str, username: str, *, actor: str = UNNAMED_ACTOR) -> Enrollment:
        """Let a deleted user register through the enrollment again."""
        validate_name(name)
        names.validate_username(username)
        enrollment_key = self.keys.enrollment(name)
        removed_key = self.keys.enrollment_removed(name)

        def forget(pipe: Pipeline) -> None:
            if not pipe.exists(enrollment_key):
                raise EnrollmentNotFound(f"no enrollment {name!r}")
            if not pipe.hexists(removed_key, username):
                raise UserNotFound(f"enrollment {name!r} remembers no deleted user {username!r}")
            pipe.multi()
            pipe.hdel(removed_key, username)
            self.audit.add(pipe, actor, "enrollment.forget", name, username=username)

        run_watched(self.redis, [enrollment_key, removed_key], forget)
        return self.get(name)

    # -- devices -----------------------------------------------------------
    def register(
        self,
        token: object,
        username: object,
        password: object,
        client_id: object,
        address: str,
        context: object = None,
    ) -> EnrolledAttempt:
        """A device registers with an enrollment token; malformed fields
        raise InvalidInput and change nothing."""
        name, secret, client = validate_fields(username, password, "" if client_id is None else client_id)
        validate_context(context)
        if not isinstance(token, str):
            raise InvalidInput("enrollment must be a string: the enrollment token")
        pairing = passwords.pairing_id(name, secret)
        if self.limit.blocked(address):
            return self._counted(EnrolledAttempt(Outcome.LIMITED, pairing), name, address)
        enrollment, reason = self._check_token(token)
        if enrollment is None:
            self.limit.failed(address)
            return self._counted(EnrolledAttempt(Outcome.REFUSED, pairing, "", reason), name, address)
        attempt = self._register_checked(enrollment, name, secret, client, pairing)
        if attempt.outcome is Outcome.REFUSED:
            self.limit.failed(address)
        return self._counted(attempt, name, address)

    def digest(self, token: str) -> str:
        """The keyed digest under which a token is stored."""
        return hmac.new(self.secret, _DIGEST_LABEL + token.encode(), hashlib.sha256).hexdigest()

    def _check_token(self, token: str) -> tuple[Enrollment | None, str]:
        """The live enrollment the token belongs to, or None and why not; no bcrypt."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None, UNKNOWN_TOKEN
        try:
            digest = self.digest(token)
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape
            return None, UNKNOWN_TOKEN
        name = cast("str | None", self.redis.get(self.keys.enrollment_token(digest)))
        found = self._read([name]) if name else []
        if not found:
            return None, UNKNOWN_TOKEN
        if self.clock() >= found[0].expires_at:
            return None, EXPIRED
        return found[0], ""

    def _register_checked(
        self, enrollment: Enrollment, username: str, password: str, client_id: str, pairing: str
    ) -> EnrolledAttempt:
        """The token is valid for this enrollment; `enrollment` may still refuse the username."""

        def refused(reason: str) -> EnrolledAttempt:
            return EnrolledAttempt(Outcome.REFUSED, pairing, enrollment.name, reason)

        reason = "" if enrollment.covers(username) else OUTSIDE_PATTERN
        if not reason and username in enrollment.removed_users:
            reason = REMOVED_USER
        if reason:
            return refused(reason)
        verdict = self.verifier.verify(username, password, client_id)
        if verdict is not Verdict.UNKNOWN_USER:
            return EnrolledAttempt(_KNOWN_USER[verdict], pairing, enrollment.name)
        if enrollment.uses_left <= 0:
            return refused(USED_UP)  # before bcrypt: a used-up token costs no hashing
        try:
            self.users.policy.validate_strength(password)
        except InvalidInput as error:
            return EnrolledAttempt(Outcome.WEAK_PASSWORD, pairing, enrollment.name, str(error))
        password_hash = self.verifier.hash_for_registration(password)
        if password_hash is None:
            return EnrolledAttempt(Outcome.BUSY, pairing, enrollment.name)
        created = self._create_user(enrollment.name, username, password_hash, client_id, pairing)
        if created is None:
            # Created meanwhile (a concurrent attempt of the same device, or an
            # operator): answer as for an existing user.
            verdict = self.verifier.verify(username, password, client_id)
            return EnrolledAttempt(_KNOWN_USER.get(verdict, Outcome.WRONG_PASSWORD), pairing, enrollment.name)
        if created:
            return refused(created)
        log.info("user %s registered through enrollment %s (pairing %s)", username, enrollment.name, pairing)
        return EnrolledAttempt(Outcome.GRANTED, pairing, enrollment.name)

    def _create_user(self, name: str, username: str, password_hash: str, client_id: str, pairing: str) -> str | None:
        """Take one use and create the user in one transaction: "" when done,
        a refusal reason when the enrollment changed meanwhile, None when the
        user exists already."""
        enrollment_key = self.keys.enrollment(name)
        removed_key = self.keys.enrollment_removed(name)
        user_key = self.keys.user(username)

        def create(pipe: Pipeline) -> str | None:
            if pipe.exists(user_key):
                return None
            fields = cast("dict[str, str]", pipe.hgetall(enrollment_key))
            if not fields or self.clock() >= float(fields["expiresAt"]):
                return UNKNOWN_TOKEN  # revoked or expired while we hashed
            if int(fields["usesLeft"]) <= 0:
                return USED_UP  # the last use went to another device while we hashed
            if pipe.hexists(removed_key, username):
                return REMOVED_USER
            if self.users.client_id_owners(pipe, [client_id] if client_id else []):
                return CLIENT_ID_TAKEN  # given to another user while we hashed
            roles = set(json.loads(fields["roles"])) & cast("set[str]", pipe.smembers(self.keys.roles()))
            now = self.clock()
            pipe.multi()
            pipe.hincrby(enrollment_key, "usesLeft", -1)
            self.users.queue_enrolled_user(
                pipe, username, password_hash=password_hash, client_id=client_id, pairing_id=pairing,
                enrollment=name, roles=sorted(roles), now=now,
            )  # fmt: skip
            self.audit.add(
                pipe, f"enrollment:{name}", "enrollment.register", username,
                enrollment=name, pairingId=pairing, clientId=client_id, roles=sorted(roles),
            )  # fmt: skip
            return ""

        watched = [enrollment_key, removed_key, user_key, self.keys.roles(), self.keys.client_owners()]
        return run_watched(self.redis, watched, create)

    def _counted(self, attempt: EnrolledAttempt, username: str, address: str) -> EnrolledAttempt:
        instruments.enrollment_registration(attempt.enrollment, _metric_result(attempt))
        if attempt.outcome is Outcome.REFUSED:
            # The log names what the device's answer never does.
            log.warning(
                "enrollment registration of %s from %s refused: %s%s",
                username,
                address,
                attempt.detail,
                f" (enrollment {attempt.enrollment})" if attempt.enrollment else "",
            )
        elif attempt.outcome is Outcome.LIMITED:
            _limited_warning.emit(address)
        return attempt

    # -- helpers -----------------------------------------------------------
    def _existing_roles(self, roles: object) -> list[str]:
        if not isinstance(roles, list | tuple) or not all(isinstance(r, str) for r in roles):
            raise InvalidInput("roles must be a JSON list of role names")
        if len(roles) > MAX_ROLES:
            raise InvalidInput(f"roles: at most {MAX_ROLES}")
        for role in roles:
            try:
                names.validate_role_name(role)
            except InvalidInput as error:
                raise InvalidInput(f"roles: {error}") from None
        unique = sorted(set(roles))
        pipe = self.redis.pipeline(transaction=False)
        for role in unique:
            pipe.sismember(self.keys.roles(), role)
        missing = [role for role, exists in zip(unique, pipe.execute(), strict=True) if not exists]
        if missing:
            raise InvalidInput(f"roles: no role {missing[0]!r} (create it first, e.g. `cregistry role grant`)")
        return unique

    def _read(self, enrollment_names: list[str]) -> list[Enrollment]:
        pipe = self.redis.pipeline(transaction=False)
        for name in enrollment_names:
            pipe.hgetall(self.keys.enrollment(name))
            pipe.hkeys(self.keys.enrollment_removed(name))
        results = pipe.execute()
        found = []
        for index, name in enumerate(enrollment_names):
            fields, removed = results[2 * index], results[2 * index + 1]
            if fields:  # expired, or revoked since it was listed
                found.append(_enrollment_from(name, fields, removed))
        return found


_KNOWN_USER = {
    Verdict.ACCEPTED: Outcome.REPEATED,
    Verdict.REFUSED: Outcome.WRONG_PASSWORD,
    Verdict.LIMITED: Outcome.TOO_MANY_FAILURES,
    Verdict.CLIENT_ID_REFUSED: Outcome.CLIENT_ID_REFUSED,
}


def _metric_result(attempt: EnrolledAttempt) -> str:
    """The metric's result label: the outcome, and for a refusal its reason."""
    if attempt.outcome is Outcome.REFUSED:
        return attempt.detail.replace(" ", "_")
    return attempt.outcome.value.replace(" ", "_")


def _enrollment_from(name: str, fields: dict[str, str], removed: list[str]) -> Enrollment:
    return Enrollment(
        name=name,
        username_pattern=fields.get("usernamePattern", ""),
        roles=tuple(json.loads(fields.get("roles") or "[]")),
        max_uses=int(fields.get("maxUses") or 0),
        uses_left=max(0, int(fields.get("usesLeft") or 0)),
        expires_at=float(fields.get("expiresAt") or 0),
        created_by=fields.get("createdBy", ""),
        created_at=float(fields.get("createdAt") or 0),
        removed_users=tuple(sorted(removed)),
    )
