"""The decisions go-auth asks for: is this password right, is this a
superuser, may this client read, write or subscribe to this topic."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from cregistry import names, passwords, topics
from cregistry.config import Config
from cregistry.errors import InvalidInput
from cregistry.feed_follower import FeedFollower
from cregistry.log_throttle import ThrottledWarning
from cregistry.permission_cache import PermissionCache
from cregistry.registry import Attempt, Registry
from cregistry.users import READ_ACCESS, WRITE_ACCESS, AclData, UserStore
from cregistry.verification import Verdict, WorkLimits

log = logging.getLogger(__name__)

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


ALLOW = Decision(True)


def parse_acc(value: Any) -> int:
    """acc arrives as a JSON number or as form text."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in ACC_VALUES:
        raise InvalidInput("acc must be 1 (read), 2 (write), 3 (read and write) or 4 (subscribe)")
    return value


# A user's last successful CONNECT is written at most this often.
LAST_CONNECT_INTERVAL = 60.0
# The bookkeeping write runs only if the check itself took less than this:
# with the 0.5 s Redis timeout, its two round trips then end well within
# the broker routes' 1.5 s deadline even when Redis stalls right now.
LAST_CONNECT_BUDGET = 0.25
LAST_CONNECT_REMEMBERED = 100_000  # users per process whose last write is remembered
LAST_CONNECT_QUEUE = 10_000  # writes waiting for the background writer; more are dropped


class LastConnectRecorder:
    """Records a user's last successful CONNECT (time, client id) without
    slowing the connect path: this process skips Redis entirely for a user
    it wrote less than a minute ago with the same client id, and the write
    itself (record_connect) skips users another process wrote meanwhile.

    Bookkeeping never decides anything: if Redis fails here, the check that
    succeeded stays a success and the time is written on a later connect.
    """

    def __init__(
        self,
        users: UserStore,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = users
        self.clock = clock
        self.monotonic = monotonic
        self.lock = threading.Lock()
        self.skip_until: dict[str, tuple[float, str]] = {}  # username -> (monotonic time, client id)
        self.pending: queue.Queue[tuple[str, str, float]] = queue.Queue(LAST_CONNECT_QUEUE)
        self.writer: threading.Thread | None = None

    def record(self, username: str, client_id: str, started: float) -> None:
        now = self.monotonic()
        if now - started > LAST_CONNECT_BUDGET or not self._due(username, client_id, now):
            return
        self._write(username, client_id, self.clock())

    def record_later(self, username: str, client_id: str) -> None:
        """As record(), with the write left to a background thread: for
        answers given without any Redis round trip (followed_cache.py)."""
        if not self._due(username, client_id, self.monotonic()):
            return
        with self.lock:
            if self.writer is None:
                self.writer = threading.Thread(target=self._write_pending, name="last-connect", daemon=True)
                self.writer.start()
        try:
            self.pending.put_nowait((username, client_id, self.clock()))
        except queue.Full:
            _last_connect_warning.emit("too many waiting")

    def _due(self, username: str, client_id: str, now: float) -> bool:
        with self.lock:
            until, written_client_id = self.skip_until.get(username, (0.0, ""))
            if now < until and written_client_id == client_id:
                return False
            if len(self.skip_until) >= LAST_CONNECT_REMEMBERED:
                self.skip_until = {u: v for u, v in self.skip_until.items() if v[0] > now}
                if len(self.skip_until) >= LAST_CONNECT_REMEMBERED:
                    self.skip_until.clear()
            self.skip_until[username] = (now + LAST_CONNECT_INTERVAL, client_id)
            return True

    def _write(self, username: str, client_id: str, when: float) -> None:
        try:
            self.users.record_connect(username, client_id, when, LAST_CONNECT_INTERVAL)
        except redis.RedisError as error:
            _last_connect_warning.emit(type(error).__name__)

    def _write_pending(self) -> None:
        while True:
            self._write(*self.pending.get())


_last_connect_warning = ThrottledWarning(log, "cannot record a last connect (%s); the connect itself succeeded")


def refuse_malformed_connect(username: str, password: str, client_id: str) -> Decision | None:
    """The refusal of a CONNECT whose fields break the format rules, or None."""
    try:
        names.validate_username(username)
        passwords.validate_password_format(password)
        names.validate_client_id(client_id)
    except InvalidInput as error:
        return Decision(False, str(error))
    return None


class Authorizer:
    def __init__(
        self,
        connection: redis.Redis,
        config: Config,
        clock: Callable[[], float] = time.time,
        limits: WorkLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        registry: Registry | None = None,
        follower: FeedFollower | None = None,
    ):
        # cregistry.services.build hands in the registry it built; alone
        # (tests, benchmarks) the authorizer builds its own.
        self.registry = registry if registry is not None else Registry(connection, config, clock, limits)
        self.users: UserStore = self.registry.users
        self.monotonic = monotonic
        self.last_connects = LastConnectRecorder(self.users, clock, monotonic)
        self.permissions = PermissionCache(self.users, follower=follower)

    def check_user(self, username: str, password: str, client_id: str) -> Decision:
        """CONNECT: known users by bcrypt; unknown ones may become pending requests."""
        started = self.monotonic()
        malformed = refuse_malformed_connect(username, password, client_id)
        if malformed is not None:
            return malformed
        verdict = self.registry.verifier.verify(username, password)
        if verdict is Verdict.ACCEPTED:
            self.last_connects.record(username, client_id, started)
            return ALLOW
        if verdict is not Verdict.UNKNOWN_USER:
            return Decision(False, verdict.value)
        try:
            self.users.policy.validate_strength(password)
        except InvalidInput as error:
            return Decision(False, f"unknown user; not recorded: {error}")
        attempt, pairing = self.registry.record_attempt(username, password, client_id, "mqtt")
        reasons = {
            Attempt.RECORDED: f"unknown user; registration request recorded (pairing ID {pairing})",
            Attempt.REPEATED: f"registration request pending (pairing ID {pairing})",
            Attempt.LOCKED: "unknown user; the registry is locked",
            Attempt.DENIED: "the registration request with these credentials was denied",
            Attempt.LIMITED: "unknown user; too many pending requests, not recorded",
            Attempt.BUSY: "unknown user; registration is busy, not recorded; connect again later",
            Attempt.APPROVED_MEANWHILE: "registration approved just now; connect again",
        }
        return Decision(False, reasons[attempt])

    def check_superuser(self, username: str, seen: str | None = None) -> Decision:
        try:
            names.validate_username(username)
        except InvalidInput as error:
            return Decision(False, str(error))
        if self.permissions.acl_data(username, seen).superuser:
            return ALLOW
        return Decision(False, "not a superuser")

    def check_acl(self, username: str, client_id: str, topic: str, acc: int, seen: str | None = None) -> Decision:
        """Superusers pass here too, so go-auth's superuser URI is optional.
        `seen`: the caller's change feed position (permission_cache.py)."""
        decision = self._decide_acl(username, client_id, topic, acc, lambda: self.permissions.acl_data(username, seen))
        assert decision is not None  # acl_data always has the data
        return decision

    def check_acl_cached(
        self, username: str, client_id: str, topic: str, acc: int, seen: str | None
    ) -> Decision | None:
        """check_acl from this worker's cache alone (no Redis), or None: ask check_acl."""
        return self._decide_acl(username, client_id, topic, acc, lambda: self.permissions.cached(username, seen))

    def _decide_acl(
        self, username: str, client_id: str, topic: str, acc: int, read: Callable[[], AclData | None]
    ) -> Decision | None:
        try:
            names.validate_username(username)
            if acc == ACC_SUBSCRIBE:
                levels = topics.validate_filter(topic)
            else:
                levels = topics.validate_topic_name(topic)
        except InvalidInput as error:
            return Decision(False, str(error))
        data = read()  # at most one round trip
        if data is None:
            return None
        if not data.exists:
            return Decision(False, "unknown user")
        if data.superuser:
            return ALLOW
        readable = []
        writable = []
        for permission in data.permissions:
            pattern = topics.expand_pattern(permission.topic, username, client_id)
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
