"""The device agent behind `cregistry device`: credentials made and
kept on the device, registration over MQTT or REST, then a connection that
stays up. Nothing here knows click; time, sleep, randomness, HTTP and MQTT
are passed in so that tests can drive every decision."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import random as random_module
import re
import secrets
import socket
import ssl
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cregistry import errors
from cregistry.errors import CredentialsFileInvalid, CredentialsFileMissing, CredentialsRefused, RegistrationFailed
from cregistry.names import validate_username
from cregistry.passwords import BCRYPT_MAX_BYTES, pairing_id, validate_password_format
from cregistry.timestamps import isoformat

log = logging.getLogger(__name__)

CREDENTIALS_FORMAT = 1
# 32 random bytes, 43 URL-safe characters: far above the 24 bytes a guessing
# attacker would have to beat, far below bcrypt's 72-byte limit.
PASSWORD_ENTROPY_BYTES = 32
PASSWORD_LENGTH = 43  # what secrets.token_urlsafe(PASSWORD_ENTROPY_BYTES) gives
# 40 random bits: a fleet of 10 000 devices with the same host name has a
# chance of about 1 in 20 000 of two sharing a username.
# A stored password shorter than this was not written by the agent (which
# writes 43 characters): refused rather than used.
MIN_STORED_PASSWORD_LENGTH = 16
USERNAME_SUFFIX_BYTES = 5
USERNAME_MAX_LENGTH = 64
FALLBACK_USERNAME_BASE = "device"
REGISTER_PATH = "/api/client-registry/register"

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
KEEPALIVE_SECONDS = 30
CONNACK_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0
# How long the connected loop blocks at most: the latency of a stop request.
PUMP_SECONDS = 0.2

# MQTT 3.1.1 CONNACK codes 4 and 5, as paho names them: "not accepted (yet)".
REFUSAL_REASONS = frozenset({"Not authorized", "Bad user name or password"})


# -- credentials ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a device keeps in its credentials file."""

    username: str
    password: str = dataclasses.field(repr=False)  # never in a repr, so never in a log
    client_id: str
    created: str
    last_accepted: str | None = None

    @property
    def pairing_id(self) -> str:
        return pairing_id(self.username, self.password)

    @property
    def accepted_before(self) -> bool:
        return self.last_accepted is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CREDENTIALS_FORMAT,
            "username": self.username,
            "password": self.password,
            "clientId": self.client_id,
            "created": self.created,
            "lastAccepted": self.last_accepted,
        }

    @classmethod
    def from_json(cls, data: Any) -> Credentials:
        """Raises InvalidInput when `data` is not a credentials object."""
        if not isinstance(data, dict):
            raise errors.InvalidInput("not a JSON object")
        file_format = data.get("format")
        if type(file_format) is not int or file_format != CREDENTIALS_FORMAT:
            found = "missing" if file_format is None else f"{file_format!r}"
            raise errors.InvalidInput(f"format must be {CREDENTIALS_FORMAT}, the one this agent writes, not {found}")
        username = validate_username(data.get("username"))
        password = validate_password_format(data.get("password"))
        if len(password) < MIN_STORED_PASSWORD_LENGTH:
            raise errors.InvalidInput(
                f"the password has {len(password)} character{'' if len(password) == 1 else 's'};"
                f" the agent writes {PASSWORD_LENGTH}"
                f" and never fewer than {MIN_STORED_PASSWORD_LENGTH}"
            )
        client_id = data.get("clientId", username)
        created = data.get("created", "")
        last_accepted = data.get("lastAccepted")
        if not isinstance(client_id, str) or not client_id:
            raise errors.InvalidInput("clientId must be a non-empty string")
        if not isinstance(created, str) or not (last_accepted is None or isinstance(last_accepted, str)):
            raise errors.InvalidInput("created and lastAccepted must be strings")
        return cls(username, password, client_id, created, last_accepted)


def username_for_host(hostname: str, suffix: str) -> str:
    """A valid username (names.USERNAME_RE) from any host name: its first label made
    ASCII, lower case and safe, then `-` and `suffix` (hex digits)."""
    label = next((part for part in hostname.split(".") if part), "")
    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode("ascii")
    base = re.sub(r"[^a-z0-9_.-]+", "-", ascii_label.lower())
    base = base.lstrip("_.-")[: USERNAME_MAX_LENGTH - len(suffix) - 1].rstrip("_.-")
    return validate_username(f"{base or FALLBACK_USERNAME_BASE}-{suffix}")


def new_password(token: Callable[[int], str] = secrets.token_urlsafe) -> str:
    """43 random URL-safe characters, drawn again until every character class
    is present, so that even a server policy that requires lower, upper,
    digit and symbol (passwords.PasswordPolicy) accepts it; that costs under one bit."""
    while True:
        candidate = token(PASSWORD_ENTROPY_BYTES)
        if (
            any(c.islower() for c in candidate)
            and any(c.isupper() for c in candidate)
            and any(c.isdigit() for c in candidate)
            and any(not c.isalnum() for c in candidate)
        ):
            assert len(candidate.encode()) <= BCRYPT_MAX_BYTES
            return candidate


def new_credentials(
    username: str | None,
    client_id: str | None,
    now: float,
    hostname: Callable[[], str] = socket.gethostname,
    token_hex: Callable[[int], str] = secrets.token_hex,
    password: Callable[[], str] = new_password,
) -> Credentials:
    name = validate_username(username) if username else username_for_host(hostname(), token_hex(USERNAME_SUFFIX_BYTES))
    return Credentials(name, password(), client_id or name, isoformat(now) or "")


class CredentialStore:
    """The credentials file: created once, atomically, readable only by its owner.

    Creation writes a private temporary file and hard-links it to the final
    name; the link fails if the file exists, so of two agents started on the
    same file at once exactly one creates it and the other reads it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Credentials:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CredentialsFileMissing(f"no credentials file at {self.path}") from None
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8"
            raise CredentialsFileInvalid(f"cannot read the credentials file {self.path}: {reason}") from None
        try:
            return Credentials.from_json(json.loads(text))
        except (ValueError, errors.InvalidInput) as error:
            raise CredentialsFileInvalid(
                f"{self.path} is not a valid credentials file ({error}); fix it or use another --credentials file"
            ) from None

    def load_or_create(self, make: Callable[[], Credentials]) -> tuple[Credentials, bool]:
        """The stored credentials, or new ones from `make()`; True when new."""
        if self.path.exists():
            return self.load(), False
        credentials = make()
        if self._create(credentials):
            return credentials, True
        return self.load(), False

    def mark_accepted(self, credentials: Credentials, when: str) -> Credentials:
        """Remember that the broker accepted these credentials (temp file + rename)."""
        updated = dataclasses.replace(credentials, last_accepted=when)
        temporary = self._write_private_temporary(updated)
        try:
            os.replace(temporary, self.path)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(self.path.parent)
        return updated

    def is_private(self) -> bool:
        return self.path.stat().st_mode & 0o077 == 0

    def _create(self, credentials: Credentials) -> bool:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = self._write_private_temporary(credentials)
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                return False
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # No hard links here (vfat, some FUSE mounts): O_EXCL still lets
                # only one agent create the file, though not all at once.
                return self._create_in_place(credentials)
            finally:
                temporary.unlink(missing_ok=True)
        except FileExistsError:
            return False
        except OSError as error:
            raise CredentialsFileInvalid(
                f"cannot write the credentials file {self.path}: {error.strerror or error}"
            ) from None
        _fsync_directory(self.path.parent)
        return True

    def _create_in_place(self, credentials: Credentials) -> bool:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(credentials.to_json(), file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        return True

    def _write_private_temporary(self, credentials: Credentials) -> Path:
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        # O_EXCL with mode 0600: the password is never in a file anyone else could open.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                fd = -1
                json.dump(credentials.to_json(), file, indent=2)
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            if fd >= 0:
                os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        return temporary


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system syncs directories; the data is synced
    finally:
        os.close(fd)


def operator_instructions(credentials: Credentials, path: Path, created: bool, register_url: str | None) -> str:
    """The block a person reads on the device's console."""
    name, pairing = credentials.username, credentials.pairing_id
    how = "registers over REST" if register_url else "connects to the broker"
    return "\n".join(
        [
            f"cregistry device: {'new credentials in' if created else 'credentials from'} {path}",
            f"  username:   {name}",
            f"  pairing ID: {pairing}",
            f"This device {how} and retries until an operator approves it. The operator:",
            "  1. cregistry unlock                 (the device's next attempt is recorded)",
            "  2. cregistry requests               (the pairing ID must be the one above)",
            f"  3. cregistry approve {name} --pairing-id {pairing}",
            f"  or over the admin API: POST /api/client-registry/requests/{name}:{pairing}/approve",
        ]
    )


# -- backoff ----------------------------------------------------------------
class Backoff:
    """Exponential backoff with full jitter: the n-th delay is uniform in
    [0, min(maximum, initial * 2**n)], so a fleet that lost its broker at the
    same moment does not come back at the same moment."""

    def __init__(
        self, initial: float = 1.0, maximum: float = 60.0, random: Callable[[], float] = random_module.random
    ) -> None:
        self.initial = min(initial, maximum)
        self.maximum = maximum
        self.random = random
        self.attempts = 0

    def ceiling(self) -> float:
        # min() before the power would overflow: 2**1100 is not a float.
        return min(self.maximum, self.initial * 2 ** min(self.attempts, 64))

    def next_delay(self) -> float:
        delay = self.random() * self.ceiling()
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


# -- REST registration ------------------------------------------------------
POLL, CONNECT, STOP = "poll", "connect", "stop"


@dataclasses.dataclass(frozen=True)
class RestDecision:
    """What an answer of the register route means for the device."""

    action: str  # POLL, CONNECT or STOP
    message: str
    error: type[errors.CregistryError] | None = None  # raised on STOP


def decide_registration(status: int, body: Any, username: str, pairing: str) -> RestDecision:
    """The statuses of POST /api/client-registry/register, seen from the device."""
    server_error = body.get("error") if isinstance(body, dict) else None
    detail = f": {server_error}" if isinstance(server_error, str) and server_error else ""
    if status == 201:
        return RestDecision(CONNECT, f"registration granted: {username} exists with these credentials")
    if status == 202:
        return RestDecision(
            POLL, f"registration pending: waiting for the operator to approve {username} (pairing ID {pairing})"
        )
    if status == 423:
        return RestDecision(POLL, "the registry is locked: waiting for the operator to unlock it (`cregistry unlock`)")
    if status == 403:
        return RestDecision(
            STOP,
            f"the operator denied the registration of {username} (pairing ID {pairing}); to ask again,"
            " start the device with a new credentials file",
            errors.RequestDenied,
        )
    if status == 409:
        return RestDecision(
            STOP,
            f"the username {username} is taken: it is registered with other credentials. The operator can delete"
            f" that user (`cregistry user delete {username}`), or start this device with another --username or"
            " another credentials file",
            errors.UsernameTaken,
        )
    if status == 400:
        return RestDecision(
            STOP, f"the registry refused the registration{detail or ': invalid input'}", errors.InvalidInput
        )
    if status == 429 or status >= 500:
        return RestDecision(POLL, f"the registry cannot take the request now (HTTP {status}{detail})")
    message = f"unexpected answer HTTP {status} from the registration URL{detail}; check --register-url"
    return RestDecision(STOP, message, RegistrationFailed)


def register_endpoint(url: str) -> str:
    """The register route from the service's base URL (or the full route as given)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise errors.InvalidInput(f"the registration URL must be http:// or https:// with a host, not {url!r}")
    if parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path=REGISTER_PATH))
    return url


HttpPost = Callable[[str, dict[str, Any]], tuple[int, Any]]


def http_post_json(context: ssl.SSLContext | None = None, timeout: float = HTTP_TIMEOUT) -> HttpPost:
    """POST a JSON body; (status, parsed JSON body or None). Network errors raise OSError."""

    def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "cregistry-device"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return response.status, _json_or_none(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, _json_or_none(error.read())

    return post


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


# -- MQTT -------------------------------------------------------------------
ACCEPTED, REFUSED, FAILED = "accepted", "refused", "failed"


@dataclasses.dataclass(frozen=True)
class ConnectResult:
    outcome: str  # ACCEPTED, REFUSED (credentials not accepted) or FAILED (network, broker)
    reason: str = ""


class BrokerSession(Protocol):
    """One MQTT connection, driven from the agent's own loop."""

    def connect(self) -> ConnectResult: ...

    def pump(self, timeout: float) -> bool:
        """Do the network work for up to `timeout` seconds; False once the connection is gone."""
        ...

    def publish(self, topic: str, payload: bytes) -> None: ...

    def close(self) -> None: ...

    @property
    def lost_reason(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file:
            context.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class PahoSession:
    """A fresh paho-mqtt client per connection (MQTT 3.1.1, clean session),
    pumped with loop() from the caller's thread: no paho thread, no paho
    automatic reconnect, so the agent alone decides when to try again."""

    def __init__(self, host: str, port: int, credentials: Credentials, client_id: str, tls: TlsSettings | None) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.host = host
        self.port = port
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        self.client.username_pw_set(credentials.username, credentials.password)
        if tls is not None:
            self.client.tls_set_context(tls.context())
            if tls.insecure:
                self.client.tls_insecure_set(True)
        self._connack: str | None = None
        self._lost_reason = ""
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        self._connack = str(reason_code)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        self._lost_reason = str(reason_code)

    @property
    def lost_reason(self) -> str:
        return self._lost_reason

    def connect(self) -> ConnectResult:
        try:
            self.client.connect(self.host, self.port, keepalive=KEEPALIVE_SECONDS)
        except OSError as error:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            return ConnectResult(FAILED, _describe_os_error(error))
        deadline = time.monotonic() + CONNACK_TIMEOUT
        while self._connack is None and time.monotonic() < deadline:
            if self.client.loop(PUMP_SECONDS) != self._mqtt.MQTT_ERR_SUCCESS and self._connack is None:
                self.close()
                return ConnectResult(FAILED, f"the broker closed the connection ({self._lost_reason or 'no CONNACK'})")
        if self._connack is None:
            self.close()
            return ConnectResult(FAILED, f"no CONNACK within {CONNACK_TIMEOUT:g} s")
        if self._connack == "Success":
            return ConnectResult(ACCEPTED, self._connack)
        self.close()
        return ConnectResult(REFUSED if self._connack in REFUSAL_REASONS else FAILED, self._connack)

    def pump(self, timeout: float) -> bool:
        code = self.client.loop(timeout)
        if code != self._mqtt.MQTT_ERR_SUCCESS:
            # paho's own words ("The connection was lost."), clearer than its reason code here
            self._lost_reason = self._mqtt.error_string(code).rstrip(".")
            return False
        return True

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        if self.client.socket() is None:
            return
        self.client.disconnect()
        deadline = time.monotonic() + 1.0
        # paho closes the socket once DISCONNECT is written.
        while self.client.socket() is not None and time.monotonic() < deadline:
            if self.client.loop(0.05) != self._mqtt.MQTT_ERR_SUCCESS:
                break


def _describe_os_error(error: OSError) -> str:
    return f"{type(error).__name__}: {error.strerror or error}"


# -- the agent ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DeviceSettings:
    host: str
    credentials_path: Path
    port: int | None = None
    username: str | None = None
    client_id: str | None = None
    register_url: str | None = None
    publish_topic: str | None = None
    publish_interval: float = 10.0
    tls: TlsSettings | None = None
    max_backoff: float = 60.0
    exit_on_refusal: bool = False

    @property
    def broker_port(self) -> int:
        if self.port is not None:
            return self.port
        return DEFAULT_MQTTS_PORT if self.tls is not None else DEFAULT_MQTT_PORT


class DeviceAgent:
    """Registers the device, then keeps it connected until stop() is called."""

    def __init__(
        self,
        settings: DeviceSettings,
        *,
        store: CredentialStore | None = None,
        session_factory: Callable[[Credentials, str], BrokerSession] | None = None,
        http_post: HttpPost | None = None,
        announce: Callable[[str], None] = print,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        random: Callable[[], float] = random_module.random,
        hostname: Callable[[], str] = socket.gethostname,
    ) -> None:
        self.settings = settings
        self.store = store or CredentialStore(settings.credentials_path)
        tls_context = settings.tls.context() if settings.tls is not None else None
        self.session_factory = session_factory or (
            lambda credentials, client_id: PahoSession(
                settings.host, settings.broker_port, credentials, client_id, settings.tls
            )
        )
        self.http_post = http_post or http_post_json(tls_context)
        self.announce = announce
        self.clock = clock
        self.monotonic = monotonic
        self._stop = threading.Event()
        # The default sleep wakes up at once on stop().
        self._sleep = sleep or self._stop.wait
        self.random = random
        self.hostname = hostname
        self.published = 0

    # -- control ------------------------------------------------------------
    def stop(self) -> None:
        """Ask run() to return; safe from a signal handler or another thread."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def backoff(self) -> Backoff:
        return Backoff(1.0, self.settings.max_backoff, self.random)

    def run(self) -> None:
        """Until stop(): raises CregistryError subclasses when the device must give up."""
        credentials, created = self.load_credentials()
        if not credentials.accepted_before:
            self.announce(operator_instructions(credentials, self.store.path, created, self.settings.register_url))
            if self.settings.register_url and not self.register_over_rest(credentials):
                _event(logging.INFO, "stopped", "stopped")
                return
        self.stay_connected(credentials)
        _event(logging.INFO, "stopped", "stopped")

    def load_credentials(self) -> tuple[Credentials, bool]:
        """The stored credentials, or new ones written now (True)."""
        wanted = self.settings.username
        if wanted is not None:
            validate_username(wanted)
        credentials, created = self.store.load_or_create(
            lambda: new_credentials(wanted, self.settings.client_id, self.clock(), self.hostname)
        )
        path = self.store.path
        if wanted is not None and credentials.username != wanted:
            raise CredentialsFileInvalid(
                f"{path} holds the credentials of {credentials.username}, not {wanted}:"
                " drop --username, or use another --credentials file for another device"
            )
        fields = {"username": credentials.username, "pairingId": credentials.pairing_id, "file": str(path)}
        if created:
            _event(
                logging.INFO, "credentials-created", f"new credentials for {credentials.username} in {path}", **fields
            )
        else:
            accepted = f", accepted before (last {credentials.last_accepted})" if credentials.accepted_before else ""
            message = f"using the credentials of {credentials.username} from {path}{accepted}"
            _event(logging.INFO, "credentials-loaded", message, **fields)
        if not self.store.is_private():
            message = f"{path} is readable by other users: chmod 600 {path}"
            _event(logging.WARNING, "credentials-exposed", message, file=str(path))
        return credentials, created

    # -- REST -------------------------------------------------------------------
    def register_over_rest(self, credentials: Credentials) -> bool:
        """Poll the register route until 201 (True) or stop() (False); raises on 400/403/409."""
        assert self.settings.register_url is not None
        url = register_endpoint(self.settings.register_url)
        body = {
            "username": credentials.username,
            "password": credentials.password,
            "clientId": self._client_id(credentials),
        }
        backoff = self.backoff()
        last_status: int | None = None
        while not self.stopping:
            try:
                status, answer = self.http_post(url, body)
            except OSError as error:
                status, answer = 0, None
                decision = RestDecision(POLL, f"cannot reach {url}: {_describe_os_error(error)}")
            else:
                decision = decide_registration(status, answer, credentials.username, credentials.pairing_id)
            fields = {"status": status, "username": credentials.username, "pairingId": credentials.pairing_id}
            if decision.action == CONNECT:
                _event(logging.INFO, "registration-granted", decision.message, **fields)
                return True
            if decision.action == STOP:
                _event(logging.ERROR, "registration-stopped", decision.message, **fields)
                assert decision.error is not None
                raise decision.error(decision.message)
            if status != last_status:
                backoff.reset()  # a new state (unlocked, pending) is worth a quick look again
                level = logging.INFO if status in (202, 423) else logging.WARNING
                _event(level, "registration-waiting", decision.message, **fields)
            last_status = status
            self._wait(backoff.next_delay())
        return False

    # -- MQTT -------------------------------------------------------------------
    def stay_connected(self, credentials: Credentials) -> None:
        settings = self.settings
        where = f"{settings.host}:{settings.broker_port}"
        backoff = self.backoff()
        while not self.stopping:
            session = self.session_factory(credentials, self._client_id(credentials))
            result = session.connect()
            fields = {"username": credentials.username, "broker": where, "reason": result.reason}
            if result.outcome == ACCEPTED:
                credentials = self._remember_acceptance(credentials)
                _event(logging.INFO, "connected", f"connected as {credentials.username} to {where}", **fields)
                backoff.reset()
                self._serve(session, credentials)
                session.close()
                if self.stopping:
                    break
                reason = session.lost_reason or "closed"
                message = f"lost the connection to {where} ({reason}); reconnecting"
                _event(logging.WARNING, "connection-lost", message, **{**fields, "reason": reason})
            elif result.outcome == REFUSED and credentials.accepted_before:
                # Over MQTT every attempt with an unknown user is a registration
                # attempt; the device cannot help that, but it never makes new
                # credentials, so the operator sees the same pairing ID again.
                message = (
                    f"the broker refused credentials that were accepted before ({result.reason}; last accepted"
                    f" {credentials.last_accepted}): the user {credentials.username} may have been deleted or its"
                    f" password changed. Ask the operator to check `cregistry user show {credentials.username}`;"
                    f" to let this device in again, unlock and approve {credentials.username} with pairing ID"
                    f" {credentials.pairing_id} again. The device keeps its credentials"
                )
                _event(logging.WARNING, "refused-after-accepted", message, **fields)
                if settings.exit_on_refusal:
                    raise CredentialsRefused(message)
            elif result.outcome == REFUSED:
                message = (
                    f"not accepted yet ({result.reason}): waiting for the operator to approve"
                    f" {credentials.username} (pairing ID {credentials.pairing_id})"
                )
                _event(logging.INFO, "not-accepted-yet", message, **fields)
            else:
                _event(logging.WARNING, "connect-failed", f"cannot connect to {where}: {result.reason}", **fields)
            self._wait(backoff.next_delay())

    def _serve(self, session: BrokerSession, credentials: Credentials) -> None:
        """Connected: publish when due, otherwise pump the network."""
        topic = self._publish_topic(credentials)
        interval = self.settings.publish_interval
        next_publish = self.monotonic()
        while not self.stopping:
            timeout = PUMP_SECONDS
            if topic is not None:
                now = self.monotonic()
                if now >= next_publish:
                    self.published += 1
                    payload = json.dumps({"seq": self.published, "time": isoformat(self.clock())})
                    session.publish(topic, payload.encode())
                    _event(logging.DEBUG, "published", f"published #{self.published} to {topic}", topic=topic)
                    next_publish = max(next_publish + interval, now)
                timeout = max(0.0, min(PUMP_SECONDS, next_publish - self.monotonic()))
            if not session.pump(timeout):
                return

    def _remember_acceptance(self, credentials: Credentials) -> Credentials:
        try:
            return self.store.mark_accepted(credentials, isoformat(self.clock()) or "")
        except OSError as error:
            message = f"cannot record the acceptance in {self.store.path}: {_describe_os_error(error)}"
            _event(logging.WARNING, "credentials-not-saved", message)
            return dataclasses.replace(credentials, last_accepted=isoformat(self.clock()))

    def _client_id(self, credentials: Credentials) -> str:
        return self.settings.client_id or credentials.client_id

    def _publish_topic(self, credentials: Credentials) -> str | None:
        topic = self.settings.publish_topic
        if topic is None:
            return None
        return topic.replace("%u", credentials.username).replace("%c", self._client_id(credentials))

    def _wait(self, seconds: float) -> None:
        _event(logging.DEBUG, "retry", f"retrying in {seconds:.1f} s", delay=round(seconds, 3))
        self._sleep(seconds)


def validate_publish_topic(topic: str) -> str:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise errors.InvalidInput("the publish topic must be a non-empty topic name without + or #")
    return topic


def _event(level: int, event: str, message: str, **fields: Any) -> None:
    """One log line; `fields` appear as keys in --log-format json."""
    log.log(level, message, extra={"fields": {"event": event, **fields}})


# -- log formats -------------------------------------------------------------
class TextLogFormatter(logging.Formatter):
    """2026-11-21T20:00:00Z INFO connected as sensor-17 to broker:1883"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{isoformat(record.created)} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": isoformat(record.created), "level": record.levelname}
        data["message"] = record.getMessage()
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)
