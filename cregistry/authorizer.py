"""The decisions the broker asks for (go-auth's HTTP backend and cregistry's
plugin): may this CONNECT pass (a client certificate, a verified token, a
known user's password, or an unknown user's registration attempt,
registration.py), is this a superuser, may this client read, write or
subscribe to this topic.

Each check takes a request value (ConnectRequest, AclRequest,
SuperuserRequest) whose fields the broker route checked once against the
format rules (connect_request, acl_request, superuser_request): the methods
here trust them. A *_cached method answers from this worker's caches alone,
without I/O (see followed_cache.py), or says None: ask the full check."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from cregistry import instruments, names, topics
from cregistry.certificates import Certificates
from cregistry.config import CLIENT_ID_ANY, CLIENT_ID_STRICT
from cregistry.errors import InvalidInput
from cregistry.feed_follower import FeedFollower
from cregistry.last_connect import LastConnectRecorder
from cregistry.permission_cache import PermissionCache
from cregistry.permissions import READ_ACCESS, WRITE_ACCESS
from cregistry.registration import Outcome, Registration, validate_fields
from cregistry.users import AclData, UserStore
from cregistry.verification import PasswordVerifier

# go-auth's "acc" values, as Mosquitto passes them.
ACC_READ = 1  # delivery of a message to a subscriber
ACC_WRITE = 2  # publish
ACC_READ_WRITE = 3
ACC_SUBSCRIBE = 4  # the topic is a filter and may hold wildcards
ACC_VALUES = (ACC_READ, ACC_WRITE, ACC_READ_WRITE, ACC_SUBSCRIBE)


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    # The registry has no such user: the plugin may leave the check to the
    # broker's other authentication (plugin_opt_unknown_users defer, SPEC §11).
    unknown_user: bool = False


ALLOW = Decision(True)


def parse_acc(value: Any) -> int:
    """acc arrives as a JSON number or as form text."""
    if isinstance(value, str):
        value = names.decimal(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value not in ACC_VALUES:
        raise InvalidInput("acc must be 1 (read), 2 (write), 3 (read and write) or 4 (subscribe)")
    return value


@dataclasses.dataclass(frozen=True)
class ConnectRequest:
    """A CONNECT's fields as the format rules passed them (connect_request):
    the checks below trust them and never check the format again."""

    username: str
    password: str
    client_id: str
    # (SHA-256 fingerprint, CN) of the client certificate Mosquitto verified (SPEC §14).
    certificate: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class AclRequest:
    """An ACL check's fields, checked (acl_request)."""

    username: str
    client_id: str
    topic: str
    acc: int
    levels: topics.Levels  # the topic's levels, as its validation split them


@dataclasses.dataclass(frozen=True)
class SuperuserRequest:
    """A superuser check's username, checked (superuser_request)."""

    username: str


def connect_request(
    username: str, password: str, client_id: str, certificate: tuple[str, str] | None = None
) -> ConnectRequest | Decision:
    """The CONNECT's checked fields, or the refusal of fields that break the format rules."""
    try:
        if certificate is not None:
            # The certificate decides (check_user): a password is not needed, and one sent is not checked.
            return ConnectRequest(
                names.validate_username(username), password, names.validate_client_id(client_id), certificate
            )
    except InvalidInput as error:
        return Decision(False, str(error))
    try:
        return ConnectRequest(*validate_fields(username, password, client_id))
    except InvalidInput as error:
        return malformed_refusal(username, error)


def acl_request(username: str, client_id: str, topic: str, acc: int) -> AclRequest | Decision:
    """The ACL check's checked fields (acc: parse_acc's), or the refusal of malformed ones."""
    try:
        names.validate_username(username)
    except InvalidInput as error:
        return Decision(False, str(error), unknown_user=True)
    try:
        levels = topics.validate_filter(topic) if acc == ACC_SUBSCRIBE else topics.validate_topic_name(topic)
    except InvalidInput as error:
        return Decision(False, str(error))
    return AclRequest(username, client_id, topic, acc, levels)


def superuser_request(username: str) -> SuperuserRequest | Decision:
    try:
        return SuperuserRequest(names.validate_username(username))
    except InvalidInput as error:
        return Decision(False, str(error))


def malformed_refusal(username: object, error: InvalidInput) -> Decision:
    """A refusal for malformed fields; a username the rules refuse can name no
    user of the registry, so it is unknown (a bad password of a valid name may
    belong to a user: that refusal is not marked)."""
    return Decision(False, str(error), unknown_user=not names.is_valid_username(username))


# The broker's reason for refusing each outcome of a CONNECT (ACCEPTED is ALLOW).
REFUSALS = {
    Outcome.WRONG_PASSWORD: "wrong password",
    Outcome.TOO_MANY_FAILURES: "too many failed attempts",
    Outcome.CLIENT_ID_REFUSED: "client id not allowed for this user (another user's own)",
    Outcome.WEAK_PASSWORD: "unknown user; not recorded: {detail}",
    Outcome.DENIED: "the registration request with these credentials was denied",
    Outcome.LOCKED: "unknown user; the registry is locked",
    Outcome.PENDING_CAP: "unknown user; too many pending requests, not recorded",
    Outcome.BUSY: "unknown user; registration is busy, not recorded; connect again later",
    Outcome.RECORDED: "unknown user; registration request recorded (pairing ID {pairing})",
    Outcome.REPEATED: "registration request pending (pairing ID {pairing})",
    Outcome.APPROVED_MEANWHILE: "registration approved just now; connect again",
}
# The outcomes of an attempt by a username the registry has no user for: the
# broker may leave those CONNECTs to its other authentication. Not among them:
# ACCEPTED, WRONG_PASSWORD, TOO_MANY_FAILURES (a user exists),
# APPROVED_MEANWHILE (one exists now) and CLIENT_ID_REFUSED (the client ID is a
# registry user's own: the other authentication must not hand its session over).
UNKNOWN_USER_OUTCOMES = frozenset(
    {
        Outcome.WEAK_PASSWORD,
        Outcome.DENIED,
        Outcome.LOCKED,
        Outcome.PENDING_CAP,
        Outcome.BUSY,
        Outcome.RECORDED,
        Outcome.REPEATED,
    }
)


class Authorizer:
    def __init__(
        self,
        users: UserStore,
        verifier: PasswordVerifier,
        registration: Registration,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        follower: FeedFollower | None = None,
        certificates: Certificates,
    ):
        self.users = users
        self.certificates = certificates
        self.verifier = verifier
        self.registration = registration
        self.monotonic = monotonic
        self.last_connects = LastConnectRecorder(users, clock, monotonic)
        self.permissions = PermissionCache(users, follower=follower)

    def check_user_cached(self, request: ConnectRequest, seen: str | None) -> Decision | None:
        """ALLOW when this worker's cached token accepts the password (no I/O),
        for a caller at feed position `seen` (see followed_cache.py); None: ask check_user."""
        if request.certificate is not None:
            return None  # the certificate's answer is not cached here
        if not self.verifier.verify_by_cached_token(request.username, request.password, seen, request.client_id):
            return None
        self.last_connects.record_later(request.username, request.client_id)
        return ALLOW

    def check_user(self, request: ConnectRequest) -> Decision:
        """CONNECT: a certificate, or the verified token, or bcrypt for a known
        user; an unknown user's credentials may become a pending request. The
        user's keys are read once, for the token and the password check alike."""
        if request.certificate is not None:
            return self._check_certificate(request, *request.certificate)
        username, password, client_id = request.username, request.password, request.client_id
        started = self.monotonic()
        record = self.verifier.read(username, client_id)  # the one round trip both checks need
        if self.verifier.verify_by_token(username, password, client_id, record):
            # Only if the check so far took less than LAST_CONNECT_BUDGET (last_connect.py).
            self.last_connects.record(username, client_id, started)
            return ALLOW
        attempt = self.registration.attempt_valid(username, password, client_id, "mqtt", record=record)
        if attempt.outcome is Outcome.ACCEPTED:
            self.last_connects.record(username, client_id, started)
            return ALLOW
        return Decision(
            False,
            REFUSALS[attempt.outcome].format(pairing=attempt.pairing_id, detail=attempt.detail),
            unknown_user=attempt.outcome in UNKNOWN_USER_OUTCOMES,
        )

    def _check_certificate(self, request: ConnectRequest, fingerprint: str, common_name: str) -> Decision:
        """CONNECT with a client certificate Mosquitto verified against the
        registry CA (the plugin sends its SHA-256 and CN): the certificate
        decides, so a password is not needed, and one sent is not checked."""
        started = self.monotonic()
        refusal = self.certificates.check_connect(request.username, fingerprint, common_name)
        instruments.certificate_checked(refusal is None)
        if refusal is not None:
            return Decision(False, refusal)
        self.last_connects.record(request.username, request.client_id, started)
        return ALLOW

    def check_superuser(self, request: SuperuserRequest, seen: str | None = None) -> Decision:
        if self.permissions.acl_data(request.username, seen).superuser:
            return ALLOW
        return Decision(False, "not a superuser")

    def check_acl(self, request: AclRequest, seen: str | None = None) -> Decision:
        """Superusers pass here too, so go-auth's superuser URI is optional.
        `seen`: the caller's change feed position (see followed_cache.py)."""
        decision = self._decide_acl(request, lambda: self.permissions.acl_data(request.username, seen), cached=False)
        assert decision is not None  # acl_data always has the data
        return decision

    def check_acl_cached(self, request: AclRequest, seen: str | None) -> Decision | None:
        """check_acl from this worker's cache alone (no Redis), or None: ask check_acl."""
        return self._decide_acl(request, lambda: self.permissions.cached(request.username, seen), cached=True)

    def _own_client_id(self, username: str, client_id: str, data: AclData, *, cached: bool) -> bool | None:
        """Whether %c may expand to `client_id` for this user (SPEC §4): never to
        another user's own client ID. None: only Redis can tell (cached)."""
        policy = self.verifier.config.client_id_policy
        if policy == CLIENT_ID_ANY or client_id in data.client_ids:
            return True
        if policy == CLIENT_ID_STRICT:
            return False
        if cached:
            return None
        return self.users.client_id_owner(client_id) in (None, username)

    def _decide_acl(self, request: AclRequest, read: Callable[[], AclData | None], *, cached: bool) -> Decision | None:
        username, client_id, acc, levels = request.username, request.client_id, request.acc, request.levels
        data = read()  # at most one round trip
        if data is None:
            return None
        if not data.exists:
            return Decision(False, "unknown user", unknown_user=True)
        if data.superuser:
            return ALLOW
        readable = []
        writable = []
        own: bool | None = True
        if any("%c" in permission.topic for permission in data.permissions):
            own = self._own_client_id(username, client_id, data, cached=cached)
            if own is None:
                return None
        # "" makes every %c pattern inapplicable (topics.expand_pattern).
        expanded_client_id = client_id if own else ""
        for permission in data.permissions:
            pattern = topics.expand_pattern(permission.topic, username, expanded_client_id)
            if pattern is None:
                continue
            if permission.access in READ_ACCESS:
                readable.append(pattern)
            if permission.access in WRITE_ACCESS:
                writable.append(pattern)
        if acc == ACC_SUBSCRIBE:
            allowed = topics.filter_is_covered(levels, readable)
        else:
            can_read = any(topics.topic_matches(p, levels) for p in readable)
            can_write = any(topics.topic_matches(p, levels) for p in writable)
            allowed = {ACC_READ: can_read, ACC_WRITE: can_write, ACC_READ_WRITE: can_read and can_write}[acc]
        return ALLOW if allowed else Decision(False, "no permission for this topic")
