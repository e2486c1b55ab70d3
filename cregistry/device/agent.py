"""The device agent behind `cregistry device run`: credentials made and
kept on the device, registration over MQTT or REST, then a connection that
stays up. Nothing here knows click; time, sleep, randomness, HTTP and MQTT
are passed in so that tests can drive every decision."""

from __future__ import annotations

import dataclasses
import json
import logging
import random as random_module
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cregistry import errors
from cregistry.device.backoff import Backoff
from cregistry.device.certificate import RENEW_WHEN_LEFT, CertificateStore, csr_pem, renewal_time
from cregistry.device.credential_file import CredentialStore
from cregistry.device.credentials import Credentials, new_credentials
from cregistry.device.logs import describe_os_error, event
from cregistry.device.mqtt import (
    ACCEPTED,
    DEFAULT_MQTT_PORT,
    DEFAULT_MQTTS_PORT,
    PUMP_SECONDS,
    REFUSED,
    BrokerSession,
    PahoSession,
)
from cregistry.device.rest import (
    CONNECT,
    POLL,
    STOP,
    HttpPost,
    RestDecision,
    decide_registration,
    http_post_json,
    register_endpoint,
)
from cregistry.device.tls import TlsSettings
from cregistry.errors import CredentialsFileInvalid, CredentialsRefused
from cregistry.names import validate_username
from cregistry.timestamps import isoformat
from cregistry.topics import substitute_placeholders, validate_topic_name


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
    # An enrollment token (SPEC §13): registers over REST at once. A secret
    # for a whole batch of devices: never in a log line or a repr.
    enrollment_token: str | None = dataclasses.field(default=None, repr=False)
    # SPEC §14: register with a CSR for a key made here, connect with the
    # certificate the registry issues (mutual TLS; `tls` is the broker's side).
    certificate: bool = False

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
        self.certificates = CertificateStore(self.store.path) if settings.certificate else None
        tls_context = settings.tls.context() if settings.tls is not None else None
        # What the broker connection presents; with --certificate the files are read at
        # each connection, the certificate being written once the registration is granted.
        self.broker_tls = settings.tls
        if self.certificates is not None:
            self.broker_tls = dataclasses.replace(
                settings.tls or TlsSettings(),
                cert_file=self.certificates.cert_path,
                key_file=self.certificates.key_path,
            )
        broker_tls = self.broker_tls
        self.session_factory = session_factory or (
            lambda credentials, client_id: PahoSession(
                settings.host, settings.broker_port, credentials, client_id, broker_tls
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
        # --certificate: when the stored certificate is next looked at for
        # renewal (self.clock), and the backoff of failed renewals.
        self._renewal_check_at = 0.0
        self._renewal_backoff = self.backoff()
        self._renewal_failure: str | None = None

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
        needs_certificate = self.certificates is not None and not self.certificates.ready()
        if not credentials.accepted_before or needs_certificate:
            self.announce(
                operator_instructions(
                    credentials,
                    self.store.path,
                    created,
                    self.settings.register_url,
                    enrolling=self.settings.enrollment_token is not None,
                )
            )
            if self.settings.register_url and not self.register_over_rest(credentials):
                event(logging.INFO, "stopped", "stopped")
                return
        self.stay_connected(credentials)
        event(logging.INFO, "stopped", "stopped")

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
            event(
                logging.INFO, "credentials-created", f"new credentials for {credentials.username} in {path}", **fields
            )
        else:
            accepted = f", accepted before (last {credentials.last_accepted})" if credentials.accepted_before else ""
            message = f"using the credentials of {credentials.username} from {path}{accepted}"
            event(logging.INFO, "credentials-loaded", message, **fields)
        if not self.store.is_private():
            message = f"{path} is readable by other users: chmod 600 {path}"
            event(logging.WARNING, "credentials-exposed", message, file=str(path))
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
        enrolling = self.settings.enrollment_token is not None
        if self.settings.enrollment_token is not None:
            body["enrollment"] = self.settings.enrollment_token
        if self.certificates is not None:
            body["csr"] = csr_pem(self.certificates.request_key(), credentials.username)
        backoff = self.backoff()
        last_status: int | None = None
        while not self.stopping:
            try:
                status, answer = self.http_post(url, body)
            except OSError as error:
                status, answer = 0, None
                decision = RestDecision(POLL, f"cannot reach {url}: {describe_os_error(error)}")
            else:
                decision = decide_registration(
                    status, answer, credentials.username, credentials.pairing_id, enrolling=enrolling
                )
            fields = {"status": status, "username": credentials.username, "pairingId": credentials.pairing_id}
            if decision.action == CONNECT:
                event(logging.INFO, "registration-granted", decision.message, **fields)
                if self.certificates is not None:
                    self.certificates.save(answer)
                    message = f"certificate stored in {self.certificates.cert_path}"
                    event(logging.INFO, "certificate-stored", message, file=str(self.certificates.cert_path))
                return True
            if decision.action == STOP:
                event(logging.ERROR, "registration-stopped", decision.message, **fields)
                assert decision.error is not None
                raise decision.error(decision.message)
            if status != last_status:
                backoff.reset()  # a new state (unlocked, pending) is worth a quick look again
                level = logging.INFO if status in (202, 423) else logging.WARNING
                event(level, "registration-waiting", decision.message, **fields)
            last_status = status
            self._wait(backoff.next_delay())
        return False

    # -- MQTT -------------------------------------------------------------------
    def stay_connected(self, credentials: Credentials) -> None:
        settings = self.settings
        where = f"{settings.host}:{settings.broker_port}"
        backoff = self.backoff()
        while not self.stopping:
            self.renew_certificate_if_due(credentials)  # a certificate about to expire: renewed before connecting
            session = self.session_factory(credentials, self._client_id(credentials))
            result = session.connect()
            fields = {"username": credentials.username, "broker": where, "reason": result.reason}
            if result.outcome == ACCEPTED:
                credentials = self._remember_acceptance(credentials)
                event(logging.INFO, "connected", f"connected as {credentials.username} to {where}", **fields)
                backoff.reset()
                renewed = self._serve(session, credentials)
                session.close()
                if self.stopping:
                    break
                if renewed:
                    # The registry disconnects the old certificate's clients
                    # too (within 2 s): this one goes first, with the new one.
                    message = f"reconnecting to {where} with the renewed certificate"
                    event(logging.INFO, "reconnecting-renewed", message, broker=where)
                    continue
                reason = session.lost_reason or "closed"
                message = f"lost the connection to {where} ({reason}); reconnecting"
                event(logging.WARNING, "connection-lost", message, **{**fields, "reason": reason})
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
                event(logging.WARNING, "refused-after-accepted", message, **fields)
                if settings.exit_on_refusal:
                    raise CredentialsRefused(message)
            elif result.outcome == REFUSED:
                message = (
                    f"not accepted yet ({result.reason}): waiting for the operator to approve"
                    f" {credentials.username} (pairing ID {credentials.pairing_id})"
                )
                event(logging.INFO, "not-accepted-yet", message, **fields)
            else:
                event(logging.WARNING, "connect-failed", f"cannot connect to {where}: {result.reason}", **fields)
            self._wait(backoff.next_delay())

    def _serve(self, session: BrokerSession, credentials: Credentials) -> bool:
        """Connected: publish when due, otherwise pump the network. True when
        it returns for a renewed certificate, False when the connection is gone."""
        topic = self._publish_topic(credentials)
        interval = self.settings.publish_interval
        next_publish = self.monotonic()
        while not self.stopping:
            if self.renew_certificate_if_due(credentials):
                return True
            timeout = PUMP_SECONDS
            if topic is not None:
                now = self.monotonic()
                if now >= next_publish:
                    self.published += 1
                    payload = json.dumps({"seq": self.published, "time": isoformat(self.clock())})
                    session.publish(topic, payload.encode())
                    event(logging.DEBUG, "published", f"published #{self.published} to {topic}", topic=topic)
                    next_publish = max(next_publish + interval, now)
                timeout = max(0.0, min(PUMP_SECONDS, next_publish - self.monotonic()))
            if not session.pump(timeout):
                return False
        return False

    # -- certificate renewal (--certificate) -------------------------------------
    def renew_certificate_if_due(self, credentials: Credentials) -> bool:
        """Renew the stored certificate once less than a third of its validity
        is left (certificate.RENEW_WHEN_LEFT), or when a renewal was started
        and not finished: one registration with the password and a CSR for a
        new key, answered at once while the current certificate is valid
        (SPEC §14). True when a new certificate is stored; a failure is
        logged and tried again after a backoff, the current certificate
        being used meanwhile."""
        certificates = self.certificates
        now = self.clock()
        if certificates is None or self.settings.register_url is None or now < self._renewal_check_at:
            return False
        validity = certificates.validity()
        if validity is None:
            self._renewal_check_at = now + self.settings.max_backoff  # run() registers for a missing certificate
            return False
        renew_at = renewal_time(*validity)
        if now < renew_at and not certificates.renewal_started():
            self._renewal_check_at = renew_at  # the certificate is written only here, so nothing changes it before
            return False
        url = register_endpoint(self.settings.register_url)
        body = {
            "username": credentials.username,
            "password": credentials.password,
            "clientId": self._client_id(credentials),
            "csr": csr_pem(certificates.renewal_key(), credentials.username),
        }
        expires = isoformat(validity[1])
        fields = {"username": credentials.username, "notAfter": expires}
        try:
            status, answer = self.http_post(url, body)
        except OSError as error:
            status, answer = 0, None
            failure: str | None = f"cannot reach {url}: {describe_os_error(error)}"
        else:
            failure = self._store_renewed(status, answer)
        if failure is None:
            not_before, not_after = certificates.validity() or validity
            # A device clock ahead of the registry's finds the new certificate
            # due at once: it is not renewed again within a third of its
            # validity (one renewal per start at most, never a loop).
            self._renewal_check_at = max(
                renewal_time(not_before, not_after), now + (not_after - not_before) * RENEW_WHEN_LEFT
            )
            self._renewal_backoff.reset()
            self._renewal_failure = None
            new_expiry = isoformat(not_after)
            message = f"certificate renewed (valid until {new_expiry}), stored in {certificates.cert_path}"
            event(logging.INFO, "certificate-renewed", message, **{**fields, "notAfter": new_expiry})
            return True
        if failure != self._renewal_failure:  # once per reason, not at every retry
            message = f"cannot renew the certificate that expires {expires}: {failure}; retrying"
            event(logging.WARNING, "certificate-renewal-failed", message, status=status, **fields)
        self._renewal_failure = failure
        self._renewal_check_at = now + self._renewal_backoff.next_delay()
        return False

    def _store_renewed(self, status: int, answer: object) -> str | None:
        """Why a renewal's answer brought no certificate, or None once it is stored."""
        assert self.certificates is not None
        if status != 201:
            error = answer.get("error") if isinstance(answer, dict) else None
            return f"HTTP {status}" + (f" ({error})" if isinstance(error, str) and error else "")
        try:
            self.certificates.save(answer)
        except (errors.RegistrationFailed, CredentialsFileInvalid) as error:
            return str(error)
        return None

    def _remember_acceptance(self, credentials: Credentials) -> Credentials:
        try:
            return self.store.mark_accepted(credentials, isoformat(self.clock()) or "")
        except OSError as error:
            message = f"cannot record the acceptance in {self.store.path}: {describe_os_error(error)}"
            event(logging.WARNING, "credentials-not-saved", message)
            return dataclasses.replace(credentials, last_accepted=isoformat(self.clock()))

    def _client_id(self, credentials: Credentials) -> str:
        return self.settings.client_id or credentials.client_id

    def _publish_topic(self, credentials: Credentials) -> str | None:
        topic = self.settings.publish_topic
        if topic is None:
            return None
        # Unlike a permission pattern (topics.expand_pattern), any client id
        # applies: a topic the device publishes to grants nothing.
        return substitute_placeholders(topic, credentials.username, self._client_id(credentials))

    def _wait(self, seconds: float) -> None:
        event(logging.DEBUG, "retry", f"retrying in {seconds:.1f} s", delay=round(seconds, 3))
        self._sleep(seconds)


def validate_publish_topic(topic: str) -> str:
    """A topic name (topics.validate_topic_name) that may hold %u and %c."""
    try:
        validate_topic_name(topic)
    except errors.InvalidInput:
        # In the option's own words: the usual mistake is a filter given for a topic.
        raise errors.InvalidInput("the publish topic must be a non-empty topic name without + or #") from None
    return topic


def operator_instructions(
    credentials: Credentials, path: Path, created: bool, register_url: str | None, *, enrolling: bool = False
) -> str:
    """The block a person reads on the device's console."""
    name, pairing = credentials.username, credentials.pairing_id
    if enrolling:
        return "\n".join(
            [
                f"cregistry device: {'new credentials in' if created else 'credentials from'} {path}",
                f"  username:   {name}",
                f"  pairing ID: {pairing}",
                "This device registers over REST with an enrollment token: no approval is needed. If it is"
                " refused, the operator checks `cregistry enrollment list` (uses left, expiry, username pattern).",
            ]
        )
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
