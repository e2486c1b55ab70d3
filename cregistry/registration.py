"""The one registration flow, shared by both ways a device asks: a CONNECT
with credentials the registry does not know (authorizer.py) and POST
/api/client-registry/register (web/api_routes.py).

An attempt checks the fields, then the password of a known user (with the
guessing limit); for an unknown user it records or refreshes a pending
request, unless an operator denied these credentials, the registry is
locked, a pending cap is reached or bcrypt is busy. It ends in one Outcome;
each listener turns an Outcome into its answer with one table.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline

from cregistry import names, passwords
from cregistry.certificates import Certificates, CheckedCsr
from cregistry.config import Config
from cregistry.errors import InvalidInput
from cregistry.keys import Keys
from cregistry.log_throttle import ThrottledWarning
from cregistry.pending import PendingRequests, candidate_names, candidate_pairing_id
from cregistry.transactions import run_watched
from cregistry.verification import PasswordRecord, PasswordVerifier, Verdict

log = logging.getLogger(__name__)

MAX_CONTEXT_BYTES = 4096

_cap_warning = ThrottledWarning(log, "pending request cap (%d) reached; attempts are not recorded")


class Outcome(enum.Enum):
    """How a registration attempt ended. Only RECORDED and REPEATED write a request."""

    ACCEPTED = "accepted"  # a known user with the right password
    WRONG_PASSWORD = "wrong password"  # a known user, other credentials
    TOO_MANY_FAILURES = "too many failures"  # the guessing limit refused without checking
    CLIENT_ID_REFUSED = "client id refused"  # another user's own client ID (client_ids.py)
    WEAK_PASSWORD = "weak password"  # an unknown user whose password breaks the policy
    DENIED = "denied"  # an operator denied these credentials
    LOCKED = "locked"  # the registry is locked and no request has these credentials
    PENDING_CAP = "pending cap"  # the global or the per-username cap is reached
    BUSY = "busy"  # every registration bcrypt slot is taken
    RECORDED = "recorded"  # a new pending request
    REPEATED = "repeated"  # an existing request, seen again
    APPROVED_MEANWHILE = "approved meanwhile"  # the user was created while we hashed


_KNOWN_USER = {
    Verdict.ACCEPTED: Outcome.ACCEPTED,
    Verdict.REFUSED: Outcome.WRONG_PASSWORD,
    Verdict.LIMITED: Outcome.TOO_MANY_FAILURES,
    Verdict.CLIENT_ID_REFUSED: Outcome.CLIENT_ID_REFUSED,
}


@dataclasses.dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    pairing_id: str
    detail: str = ""  # WEAK_PASSWORD: the rule the password breaks


def validate_fields(username: object, password: object, client_id: object) -> tuple[str, str, str]:
    """The format rules of the credentials a device sends; returns them as checked."""
    return (
        names.validate_username(username),
        passwords.validate_password_format(password),
        names.validate_client_id(client_id),
    )


def validate_context(context: object) -> dict[str, Any] | None:
    if context is None:
        return None
    if not isinstance(context, dict):
        raise InvalidInput("context must be a JSON object")
    try:
        size = len(json.dumps(context, ensure_ascii=False, allow_nan=False).encode())
    except (UnicodeEncodeError, ValueError):
        raise InvalidInput("context is not valid JSON text") from None
    if size > MAX_CONTEXT_BYTES:
        raise InvalidInput(f"context must be at most {MAX_CONTEXT_BYTES} bytes of JSON")
    return context


@dataclasses.dataclass(eq=False)
class Registration:
    """Attempts by devices. Takes its connection and collaborators explicitly."""

    redis: redis.Redis
    config: Config
    clock: Callable[[], float] = time.time
    _: dataclasses.KW_ONLY
    keys: Keys
    verifier: PasswordVerifier
    policy: passwords.PasswordPolicy
    requests: PendingRequests
    certificates: Certificates

    def attempt(
        self,
        username: object,
        password: object,
        client_id: object,
        source: str,
        context: object = None,
        csr: CheckedCsr | None = None,
    ) -> Attempt:
        """A device asks with these credentials (`source`: "mqtt" or "rest");
        malformed fields raise InvalidInput and change nothing. `csr`: a
        checked CSR (certificates.check_csr) a new request keeps beside it."""
        name, secret, client = validate_fields(username, password, "" if client_id is None else client_id)
        return self.attempt_valid(name, secret, client, source, validate_context(context), csr)

    def attempt_valid(
        self,
        username: str,
        password: str,
        client_id: str,
        source: str,
        context: dict[str, Any] | None = None,
        csr: CheckedCsr | None = None,
        *,
        record: PasswordRecord | None = None,
    ) -> Attempt:
        """attempt() for fields that passed the format rules already (validate_fields,
        validate_context; the broker's authorizer.ConnectRequest). `record`: what
        the caller read of the user (PasswordVerifier.read), so that it is not read again."""
        pairing = passwords.pairing_id(username, password)
        verdict = self.verifier.verify(username, password, client_id, record)
        if verdict is not Verdict.UNKNOWN_USER:
            return Attempt(_KNOWN_USER[verdict], pairing)
        try:
            # Existing users keep working under a stricter policy; new ones meet it.
            self.policy.validate_strength(password)
        except InvalidInput as error:
            return Attempt(Outcome.WEAK_PASSWORD, pairing, str(error))
        return self.record_attempt(username, password, client_id, source, context, pairing, csr)

    def record_attempt(
        self,
        username: str,
        password: str,
        client_id: str,
        source: str,
        context: dict[str, Any] | None = None,
        pairing: str | None = None,
        csr: CheckedCsr | None = None,
    ) -> Attempt:
        """Record or refresh a pending request (a candidate, pending.py).

        The caller has validated the input and knows the user does not exist;
        it may pass the pairing ID it computed already.
        """
        if pairing is None:
            pairing = passwords.pairing_id(username, password)
        digest = self.verifier.credentials_digest(username, password)
        now = self.clock()
        # Everything the decision needs, in one round trip.
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(self.keys.user_requests(username))
        pipe.hexists(self.keys.user_denials(username), digest)
        pipe.exists(self.keys.unlock())
        pipe.zremrangebyscore(self.keys.pending_index(), "-inf", now)
        pipe.zcard(self.keys.pending_index())
        listed, denied, unlocked, _, pending_total = pipe.execute()
        if denied:
            return Attempt(Outcome.DENIED, pairing)
        live = self.requests.existing(username, listed) if listed else []
        same_pairing = [c for c in live if candidate_pairing_id(c) == pairing]
        found = self._find_candidate(username, password, digest, same_pairing) if same_pairing else None
        if found is Outcome.BUSY:
            return Attempt(Outcome.BUSY, pairing)
        if isinstance(found, str) and self._touch(username, found, digest, now, bool(unlocked)):
            return Attempt(Outcome.REPEATED, pairing)
        # A request that vanished while counted is gone for good (approved,
        # denied or expired): the next checks treat the attempt as new.
        if not unlocked:
            return Attempt(Outcome.LOCKED, pairing)
        # Caps are checked before bcrypt, so a flood over the cap costs no hashing.
        if pending_total >= self.config.pending_max:
            _cap_warning.emit(self.config.pending_max)
            return Attempt(Outcome.PENDING_CAP, pairing)
        if len(live) >= self.config.pending_per_username:
            self.requests.count_refused(username)
            return Attempt(Outcome.PENDING_CAP, pairing)
        password_hash = self.verifier.hash_for_registration(password)
        if password_hash is None:
            return Attempt(Outcome.BUSY, pairing)
        outcome = self._insert(username, pairing, digest, password_hash, client_id, source, context, now, csr)
        if outcome is Outcome.PENDING_CAP:
            self.requests.count_refused(username)
        return Attempt(outcome, pairing)

    def _find_candidate(self, username: str, password: str, digest: str, candidates: list[str]) -> str | Outcome | None:
        """Which of the username's candidates with this pairing ID holds these
        exact credentials: by the keyed digest, without bcrypt; by bcrypt only
        for a candidate whose digest was made under another key (a restart
        without CREGISTRY_VERIFY_SECRET, or recorded before candidates had
        digests). None: none does; BUSY: that bcrypt could not run now."""
        stored = self.requests.credentials_of(username, candidates)
        for candidate, data in stored.items():
            if data["key"] == self.verifier.candidate_key_id and hmac.compare_digest(data["credentials"], digest):
                return candidate
        for candidate, data in stored.items():
            if data["key"] != self.verifier.candidate_key_id:
                matches = self.verifier.matches_for_registration(password, data["hash"])
                if matches is None:
                    return Outcome.BUSY
                if matches:
                    return candidate
        return None

    def _touch(self, username: str, candidate: str, digest: str, now: float, unlocked: bool) -> bool:
        """Count one more attempt on an existing request; False if it vanished meanwhile."""
        credentials = (digest, self.verifier.candidate_key_id)
        return self.requests.touch(username, candidate, credentials, now, unlocked=unlocked)

    def _insert(
        self,
        username: str,
        pairing: str,
        digest: str,
        password_hash: str,
        client_id: str,
        source: str,
        context: dict[str, Any] | None,
        now: float,
        csr: CheckedCsr | None = None,
    ) -> Outcome:
        candidates_key = self.keys.user_requests(username)
        denials_key = self.keys.user_denials(username)
        key_id = self.verifier.candidate_key_id

        def insert(pipe: Pipeline) -> Outcome:
            if pipe.exists(self.keys.user(username)):
                # Approved while we hashed: no request for an existing user.
                return Outcome.APPROVED_MEANWHILE
            # Read under the WATCH: a denial made while we hashed stays a denial.
            if pipe.hexists(denials_key, digest):
                return Outcome.DENIED
            live = self.requests.existing(username, pipe.smembers(candidates_key))
            same_pairing = [c for c in live if candidate_pairing_id(c) == pairing]
            for candidate, data in self.requests.credentials_of(username, same_pairing).items():
                if data["key"] == key_id and hmac.compare_digest(data["credentials"], digest):
                    # Recorded by a concurrent attempt: count this one in the
                    # same transaction (the candidate set is watched).
                    pipe.multi()
                    self.requests.count_attempt(pipe, username, candidate, now, renew=True)
                    return Outcome.REPEATED
            if len(live) >= self.config.pending_per_username:
                return Outcome.PENDING_CAP
            name = next(c for c in candidate_names(pairing, self.config.pending_per_username) if c not in live)
            if pipe.exists(self.keys.request(username, name)):
                return Outcome.BUSY  # created after we read the set; the device tries again
            pipe.multi()
            self.requests.add(pipe, username, name, (digest, key_id), password_hash, client_id, source, context, now)
            if csr is not None:
                self.certificates.queue_pending(pipe, username, name, csr)
            return Outcome.RECORDED

        # Watching the candidate set makes the per-username cap exact; the
        # denials, that a deny racing this attempt wins; the user key, that an
        # approval racing it leaves no request behind for the user it created.
        outcome = run_watched(
            self.redis, [candidates_key, denials_key, self.keys.user(username)], insert, durable=False
        )
        if outcome is Outcome.RECORDED:
            log.info("registration request recorded: user %s pairing %s via %s", username, pairing, source)
        return outcome
