"""Configuration: every CREGISTRY_* name, its default, and how it is parsed.

Settings are layered like Flask's tutorial factory: defaults, then the
environment, then an explicit override (tests).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
from collections.abc import Mapping
from typing import Any

from cregistry.errors import ConfigError
from cregistry.names import decimal, is_int_within

ENV_PREFIX = "CREGISTRY_"

# Names of the environment variables, without the prefix.
REDIS_URL = "REDIS_URL"
KEY_PREFIX = "KEY_PREFIX"
ADMIN_TOKEN = "ADMIN_TOKEN"
ADMIN_TOKENS = "ADMIN_TOKENS"
UNLOCK_SECONDS = "UNLOCK_SECONDS"
BCRYPT_COST = "BCRYPT_COST"
PENDING_TTL = "PENDING_TTL"
PENDING_MAX = "PENDING_MAX"
PENDING_PER_USERNAME = "PENDING_PER_USERNAME"
PASSWORD_MIN_LENGTH = "PASSWORD_MIN_LENGTH"
PASSWORD_REQUIRE = "PASSWORD_REQUIRE"
API_LISTEN = "API_LISTEN"
BROKER_LISTEN = "BROKER_LISTEN"
REDIS_TIMEOUT = "REDIS_TIMEOUT"
REDIS_MIN_REPLICAS = "REDIS_MIN_REPLICAS"
EMBEDDED_REDIS_PORT = "EMBEDDED_REDIS_PORT"
WORKERS = "WORKERS"
THREADS = "THREADS"
BROKER_PROCESSES = "BROKER_PROCESSES"
LOG_LEVEL = "LOG_LEVEL"
FAILURE_LIMIT = "FAILURE_LIMIT"
FAILURE_WINDOW = "FAILURE_WINDOW"
VERIFIED_TTL = "VERIFIED_TTL"
VERIFY_SECRET = "VERIFY_SECRET"
BCRYPT_CONCURRENCY = "BCRYPT_CONCURRENCY"
REGISTRATION_CONCURRENCY = "REGISTRATION_CONCURRENCY"
AUDIT_MAX = "AUDIT_MAX"
CHANGES_MAX = "CHANGES_MAX"
SESSION_SECRET = "SESSION_SECRET"
CONSOLE_SECURE_COOKIES = "CONSOLE_SECURE_COOKIES"
CONSOLE_IDLE_TIMEOUT = "CONSOLE_IDLE_TIMEOUT"
CONSOLE_MAX_AGE = "CONSOLE_MAX_AGE"
CONSOLE_SIGNIN_LIMIT = "CONSOLE_SIGNIN_LIMIT"
CONSOLE_SIGNIN_WINDOW = "CONSOLE_SIGNIN_WINDOW"
CONSOLE_HOSTS = "CONSOLE_HOSTS"
CA_CERT = "CA_CERT"
CA_KEY = "CA_KEY"
CERT_DAYS = "CERT_DAYS"
ENROLLMENT_FAILURE_LIMIT = "ENROLLMENT_FAILURE_LIMIT"
ENROLLMENT_FAILURE_WINDOW = "ENROLLMENT_FAILURE_WINDOW"
CLIENT_ID_POLICY = "CLIENT_ID_POLICY"


def env_name(name: str) -> str:
    """The environment variable of a setting: env_name(REDIS_URL) is "CREGISTRY_REDIS_URL"."""
    return ENV_PREFIX + name


MAX_UNLOCK_SECONDS = 3600
# One floor for CREGISTRY_ADMIN_TOKEN and every token of CREGISTRY_ADMIN_TOKENS.
MIN_ADMIN_TOKEN_LENGTH = 16
PASSWORD_CLASSES = ("lower", "upper", "digit", "symbol")
HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# Who may CONNECT with a client ID (SPEC §4, docs/threat-model.md): "owned"
# refuses another user's own client ID; "strict" allows only the user's own;
# "any" binds nothing.
CLIENT_ID_OWNED = "owned"
CLIENT_ID_STRICT = "strict"
CLIENT_ID_ANY = "any"
CLIENT_ID_POLICIES = (CLIENT_ID_OWNED, CLIENT_ID_STRICT, CLIENT_ID_ANY)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything cregistry can be told; one instance per process."""

    redis_url: str | None = None
    key_prefix: str = "cregistry"
    admin_token: str | None = None
    # More admin tokens, each with a name for the audit trail: "ops=tok1,ci=tok2".
    admin_tokens: str | None = None
    unlock_seconds: int = 300
    bcrypt_cost: int = 10
    pending_ttl: int = 24 * 3600
    pending_max: int = 1000
    pending_per_username: int = 3
    password_min_length: int = 5
    password_require: tuple[str, ...] = ()
    api_listen: str = "0.0.0.0:8080"
    broker_listen: str = "127.0.0.1:8081"
    # A broker check answers 503 within the service's deadline (budget.py) when
    # Redis stalls; it makes at most a few round trips, each a fraction of it.
    redis_timeout: float = 0.5
    # Replicas that must have an operator change before it is acknowledged
    # (WAIT; see transactions.py). 0: no waiting; 1 with Sentinel and replicas.
    redis_min_replicas: int = 0
    embedded_redis_port: int = 6399
    workers: int = 2
    threads: int = 8
    # Workers that serve the broker listener at a time (web/broker_asgi.py): each
    # keeps its own caches, so one answers most checks from memory soonest.
    broker_processes: int = 1
    log_level: str = "INFO"
    # Guessing: failed password checks per username and window.
    failure_limit: int = 100
    failure_window: int = 3600
    # How long a verified password skips bcrypt (see verification.py).
    verified_ttl: int = 7 * 24 * 3600
    verify_secret: str | None = None
    bcrypt_concurrency: int = max(1, os.cpu_count() or 1)
    registration_concurrency: int = 1
    audit_max: int = 10_000
    # The change feed brokers poll (changes.py): a broker further behind than
    # this many changes drops its whole cache instead.
    changes_max: int = 100_000
    # The web console (web/console/): the key that signs its session cookies,
    # the same on every worker and instance; cookie flags; session lifetimes;
    # failed sign-ins per client address and window.
    session_secret: str | None = None
    console_secure_cookies: bool = False
    console_idle_timeout: int = 30 * 60
    console_max_age: int = 12 * 3600
    console_signin_limit: int = 10
    console_signin_window: int = 15 * 60
    # Host names the console answers to besides IP addresses and localhost
    # (web/console/auth.py, console_host_allowed); "*" for any name.
    console_hosts: tuple[str, ...] = ()
    # Certificate onboarding (certificates.py, docs/certificates.md): the registry
    # CA's certificate and key files (both or neither), and the days what it signs is valid.
    ca_cert: str | None = None
    ca_key: str | None = None
    cert_days: int = 365
    # Refused enrollment registrations (bad tokens, usernames outside the
    # pattern) per client address and window; over it, tokens are not looked at.
    enrollment_failure_limit: int = 20
    enrollment_failure_window: int = 15 * 60
    client_id_policy: str = CLIENT_ID_OWNED

    def __post_init__(self) -> None:
        _check_range(UNLOCK_SECONDS, self.unlock_seconds, 1, MAX_UNLOCK_SECONDS)
        _check_range(BCRYPT_COST, self.bcrypt_cost, 4, 31)
        _check_range(PENDING_TTL, self.pending_ttl, 1, 365 * 24 * 3600)
        _check_range(PENDING_MAX, self.pending_max, 0, 10_000_000)
        _check_range(PENDING_PER_USERNAME, self.pending_per_username, 1, 100)
        _check_range(PASSWORD_MIN_LENGTH, self.password_min_length, 1, 72)
        _check_range(EMBEDDED_REDIS_PORT, self.embedded_redis_port, 1, 65535)
        _check_range(WORKERS, self.workers, 1, 64)
        _check_range(THREADS, self.threads, 1, 256)
        _check_range(BROKER_PROCESSES, self.broker_processes, 1, 64)
        _check_range(FAILURE_LIMIT, self.failure_limit, 1, 10_000_000)
        _check_range(FAILURE_WINDOW, self.failure_window, 1, 30 * 24 * 3600)
        _check_range(VERIFIED_TTL, self.verified_ttl, 1, 365 * 24 * 3600)
        _check_range(BCRYPT_CONCURRENCY, self.bcrypt_concurrency, 1, 256)
        _check_range(REGISTRATION_CONCURRENCY, self.registration_concurrency, 1, 256)
        _check_range(AUDIT_MAX, self.audit_max, 100, 10_000_000)
        _check_range(CHANGES_MAX, self.changes_max, 10, 10_000_000)
        _check_range(REDIS_MIN_REPLICAS, self.redis_min_replicas, 0, 100)
        _check_range(CONSOLE_IDLE_TIMEOUT, self.console_idle_timeout, 60, 7 * 24 * 3600)
        _check_range(CONSOLE_MAX_AGE, self.console_max_age, 60, 30 * 24 * 3600)
        _check_range(CONSOLE_SIGNIN_LIMIT, self.console_signin_limit, 1, 10_000)
        _check_range(CONSOLE_SIGNIN_WINDOW, self.console_signin_window, 1, 24 * 3600)
        _check_range(CERT_DAYS, self.cert_days, 1, 3650)
        _check_range(ENROLLMENT_FAILURE_LIMIT, self.enrollment_failure_limit, 1, 1_000_000)
        _check_range(ENROLLMENT_FAILURE_WINDOW, self.enrollment_failure_window, 1, 24 * 3600)
        if self.session_secret is not None and len(self.session_secret) < 32:
            raise ConfigError(f"{ENV_PREFIX}{SESSION_SECRET} must be at least 32 characters")
        if self.verify_secret is not None:
            try:
                if len(bytes.fromhex(self.verify_secret)) < 16:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"{ENV_PREFIX}{VERIFY_SECRET} must be at least 32 hex digits") from None
        if not 0.05 <= self.redis_timeout <= 60:
            raise ConfigError(f"{ENV_PREFIX}{REDIS_TIMEOUT} must be between 0.05 and 60 seconds")
        if self.admin_token is not None and len(self.admin_token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ConfigError(f"{ENV_PREFIX}{ADMIN_TOKEN} must be at least {MIN_ADMIN_TOKEN_LENGTH} characters")
        token_names = ["admin"] if self.admin_token else []
        for item in (self.admin_tokens or "").split(","):
            name, sep, token = item.strip().partition("=")
            if item.strip() and (not sep or not name or len(token) < MIN_ADMIN_TOKEN_LENGTH):
                raise ConfigError(
                    f"{ENV_PREFIX}{ADMIN_TOKENS} must be NAME=TOKEN,... with tokens of"
                    f" {MIN_ADMIN_TOKEN_LENGTH} characters or more"
                )
            if item.strip() and name in token_names:
                # One token per name: a second one would silently replace the first.
                also = f" (the name of {ENV_PREFIX}{ADMIN_TOKEN})" if name == "admin" and self.admin_token else ""
                raise ConfigError(f"{ENV_PREFIX}{ADMIN_TOKENS} names {name!r} twice{also}")
            token_names.append(name)
        if self.client_id_policy not in CLIENT_ID_POLICIES:
            raise ConfigError(
                f"{ENV_PREFIX}{CLIENT_ID_POLICY} must be one of {', '.join(CLIENT_ID_POLICIES)},"
                f" got {self.client_id_policy!r}"
            )
        unknown = set(self.password_require) - set(PASSWORD_CLASSES)
        if unknown:
            raise ConfigError(
                f"{ENV_PREFIX}{PASSWORD_REQUIRE}: unknown class {sorted(unknown)[0]!r}"
                f" (choose from {', '.join(PASSWORD_CLASSES)})"
            )
        for host in self.console_hosts:
            if host != "*" and not (len(host) <= 253 and all(HOST_LABEL.fullmatch(x) for x in host.split("."))):
                raise ConfigError(
                    f"{ENV_PREFIX}{CONSOLE_HOSTS} must be host names (no ports) separated by commas, got {host!r}"
                )
        if not self.key_prefix or any(c in self.key_prefix for c in "{}: \t\r\n"):
            raise ConfigError(f"{ENV_PREFIX}{KEY_PREFIX} must be non-empty without braces, colons or spaces")
        for name, value in ((API_LISTEN, self.api_listen), (BROKER_LISTEN, self.broker_listen)):
            parse_listen(value, name)
        if parse_listen(self.api_listen, API_LISTEN)[1] == parse_listen(self.broker_listen, BROKER_LISTEN)[1]:
            raise ConfigError(f"{ENV_PREFIX}{API_LISTEN} and {ENV_PREFIX}{BROKER_LISTEN} need different ports")

    def named_admin_tokens(self) -> Mapping[str, str]:
        """Token name -> token; CREGISTRY_ADMIN_TOKEN is named "admin"."""
        return self._named_admin_tokens

    @functools.cached_property
    def _named_admin_tokens(self) -> Mapping[str, str]:
        # Parsed once per Config, not once per admin request; read-only
        # because every request of the process shares it.
        named = {"admin": self.admin_token} if self.admin_token else {}
        for item in (self.admin_tokens or "").split(","):
            if item.strip():
                name, _, token = item.strip().partition("=")
                named[name] = token
        return types.MappingProxyType(named)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **override: Any) -> Config:
        """Defaults, then CREGISTRY_* variables, then keyword overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}  # each value of its own field's type
        for field in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(field.name, field.type, raw)
        values.update(override)
        return cls(**values)


def parse_listen(value: str, name: str = "listen address") -> tuple[str, int]:
    """Split "host:port" (or "[::1]:port"), refusing anything else."""
    host, sep, port = value.rpartition(":")
    number = decimal(port)
    if not sep or not host or number is None or not 0 < number < 65536:
        raise ConfigError(f"{ENV_PREFIX}{name} must look like HOST:PORT, got {value!r}")
    return host.strip("[]"), number


def _parse(name: str, type_name: object, raw: str) -> bool | int | float | tuple[str, ...] | str:
    """A setting's text as its field's type (`type_name`: the annotation, a string here)."""
    env_name = ENV_PREFIX + name.upper()
    type_text = str(type_name)
    if type_text == "bool":
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{env_name} must be true or false, got {raw!r}")
    try:
        if type_text == "int":
            return int(raw)
        if type_text == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{env_name} must be a number, got {raw!r}") from None
    if name == "password_require":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name == "console_hosts":  # host names are case-insensitive
        return tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    return raw


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not is_int_within(value, low, high):
        raise ConfigError(f"{ENV_PREFIX}{name} must be an integer from {low} to {high}, got {value!r}")
