"""Certificate onboarding (SPEC §14): the registry CA, the checks of a
device's certificate signing request, and the certificates issued at
approval and renewal. See docs/certificates.md.

A user's current certificate lives in its user hash (certSerial,
certNotAfter, certFingerprint, certKey, certPem), so deleting the user
revokes it with everything else, and a renewal replaces it in one write:
the broker check (check_connect) accepts only the fingerprint stored there.
A pending request's CSR lives beside the request under its own key
(keys.request_csr) with the request's TTL.

Every parse and signature is the `cryptography` package's; nothing here
builds ASN.1 by hand.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import redis
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis.client import Pipeline

from cregistry import config as settings
from cregistry import instruments
from cregistry.audit import UNNAMED_ACTOR, AuditLog
from cregistry.config import Config
from cregistry.errors import CertificateRefused, ConfigError, InvalidInput, UserNotFound
from cregistry.keys import Keys
from cregistry.timestamps import isoformat
from cregistry.transactions import run_watched

log = logging.getLogger(__name__)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CA_DAYS = 3650  # the registry CA of `cregistry ca init`; what it signs lives CREGISTRY_CERT_DAYS
CA_COMMON_NAME = "cregistry registry CA"
MAX_CSR_BYTES = 16 * 1024  # a PEM CSR of an 8192-bit RSA key is under 4 KiB
RSA_MIN_BITS = 2048
# Larger keys cost every TLS handshake of the device and nobody uses them.
RSA_MAX_BITS = 8192
EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
# Clocks of devices and brokers drift; a certificate valid from a minute ago
# is not refused by a broker whose clock runs a little behind ours.
BACKDATE_SECONDS = 60
ISSUE_ACTION = "user.certificate.issue"
RENEW_ACTION = "user.certificate.renew"
REVOKE_ACTION = "user.certificate.revoke"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def public_key_fingerprint(key: Any) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo (DER): the same for a CSR and the certificate issued for it."""
    return sha256_hex(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, what the plugin sends (lowercase hex)."""
    return sha256_hex(certificate.public_bytes(serialization.Encoding.DER))


def key_type(key: Any) -> str:
    """ "RSA 2048", "EC P-256"; what operators see and the checks allow."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {EC_CURVES.get(key.curve.name, key.curve.name)}"
    return type(key).__name__.removeprefix("_").replace("PublicKey", "")


@dataclasses.dataclass(frozen=True)
class CheckedCsr:
    """A CSR that passed check_csr: its PEM, and what operators are shown."""

    pem: str
    key_type: str
    key_fingerprint: str

    def to_dict(self) -> dict[str, str]:
        return {"keyType": self.key_type, "publicKeySha256": self.key_fingerprint}


def check_csr(value: object, username: str) -> CheckedCsr:
    """The CSR's rules (SPEC §14); InvalidInput saying which one it breaks.

    CSRs that request extensions are refused rather than silently stripped:
    the registry sets every extension of what it issues (clientAuth, not a
    CA) and copies nothing from the request, and a device asking for more
    should be told that it will not get it. Subject attributes other than the
    CN are not copied either (the certificate's subject is CN=username).
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("csr must be a PEM certificate signing request (text)")
    data = value.encode("utf-8", "replace")
    if len(data) > MAX_CSR_BYTES:
        raise InvalidInput(f"csr must be at most {MAX_CSR_BYTES} bytes")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise InvalidInput("csr must be PEM: -----BEGIN CERTIFICATE REQUEST----- ...")
    try:
        csr = x509.load_pem_x509_csr(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput("csr is not a valid PKCS#10 certificate signing request") from None
    try:
        key = csr.public_key()
        signed = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput("csr carries a public key of a type the registry does not accept") from None
    if not signed:
        raise InvalidInput("csr signature is not valid (the request was not signed by its own key)")
    common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(common_names) != 1:
        raise InvalidInput("csr subject must carry exactly one CN (the username)")
    if common_names[0].value != username:
        raise InvalidInput(f"csr subject CN must be the username {username!r}")
    _check_key(key)
    try:
        requested = list(csr.extensions)
    except ValueError:
        raise InvalidInput("csr carries extensions that cannot be read") from None
    if requested:
        names = ", ".join(sorted(ext.oid._name for ext in requested))
        raise InvalidInput(
            f"csr requests extensions ({names}); the registry sets a certificate's extensions itself:"
            " send a CSR without extensions"
        )
    return CheckedCsr(value.strip() + "\n", key_type(key), public_key_fingerprint(key))


def _check_key(key: Any) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise InvalidInput(f"csr RSA key must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits, not {key.key_size}")
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in EC_CURVES:
            raise InvalidInput(f"csr EC key must be on P-256 or P-384, not {key.curve.name}")
        return
    raise InvalidInput(f"csr key must be RSA (2048 bits or more) or EC P-256/P-384, not {key_type(key)}")


# -- the registry CA ---------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IssuedCertificate:
    pem: str
    serial: str  # lowercase hex
    not_after: float
    fingerprint: str  # certificate_fingerprint
    key_fingerprint: str  # public_key_fingerprint of the device's key


@dataclasses.dataclass(frozen=True)
class Authority:
    """The registry CA that `serve` and the CLI sign with."""

    certificate: x509.Certificate
    key: PrivateKey = dataclasses.field(repr=False)

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, csr: CheckedCsr, username: str, days: int, now: float) -> IssuedCertificate:
        """A client certificate for the CSR's key: CN = username, clientAuth, not a CA, a random serial."""
        request = x509.load_pem_x509_csr(csr.pem.encode())
        public_key = request.public_key()
        start = datetime.datetime.fromtimestamp(now - BACKDATE_SECONDS, tz=datetime.UTC)
        end = datetime.datetime.fromtimestamp(now + days * 86400, tz=datetime.UTC)
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, username)]))
            .issuer_name(self.certificate.subject)
            .public_key(cast("Any", public_key))
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=is_rsa,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(cast("Any", public_key)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(cast("Any", self.key.public_key())),
                critical=False,
            )
        )
        certificate = builder.sign(self.key, _signing_hash(self.key))
        return IssuedCertificate(
            pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
            serial=format(certificate.serial_number, "x"),
            not_after=end.timestamp(),
            fingerprint=certificate_fingerprint(certificate),
            key_fingerprint=csr.key_fingerprint,
        )


def _signing_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None  # EdDSA hashes internally
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def init_ca(directory: Path, *, now: float | None = None) -> tuple[Path, Path]:
    """Write a new registry CA (an EC P-256 key) as DIR/ca.crt and DIR/ca.key
    (the key readable only by its owner); never overwrites either file."""
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    for path in (cert_path, key_path):
        if path.exists():
            raise InvalidInput(f"{path} exists already; a registry CA is never overwritten")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    moment = time.time() if now is None else now
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(moment - BACKDATE_SECONDS, tz=datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(moment + CA_DAYS * 86400, tz=datetime.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: a file that appeared since the check above is not overwritten either.
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_pem)
    descriptor = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(descriptor, "wb") as cert_file:
        cert_file.write(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def load_authority(config: Config) -> Authority | None:
    """The CA named by CREGISTRY_CA_CERT and CREGISTRY_CA_KEY, checked; None
    when neither is set. ConfigError when it cannot sign client certificates."""
    cert_name, key_name = settings.env_name(settings.CA_CERT), settings.env_name(settings.CA_KEY)
    if not config.ca_cert and not config.ca_key:
        return None
    if not config.ca_cert or not config.ca_key:
        raise ConfigError(f"{cert_name} and {key_name} must be set together")
    try:
        cert_data = Path(config.ca_cert).read_bytes()
        key_data = Path(config.ca_key).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the registry CA: {error.strerror}: {error.filename}") from None
    try:
        certificate = x509.load_pem_x509_certificate(cert_data)
    except ValueError:
        raise ConfigError(f"{cert_name} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{key_name} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{key_name} is a key type the registry cannot sign with")
    if public_key_fingerprint(key.public_key()) != public_key_fingerprint(certificate.public_key()):
        raise ConfigError(f"{key_name} does not match the certificate {cert_name}")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigError(f"{cert_name} is not a CA certificate (basicConstraints CA:TRUE is missing)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            raise ConfigError(f"{cert_name} may not sign certificates (keyUsage lacks keyCertSign)")
    except x509.ExtensionNotFound:
        pass  # no keyUsage: any use, as RFC 5280 reads it
    if certificate.not_valid_after_utc.timestamp() < time.time():
        raise ConfigError(f"{cert_name} expired on {isoformat(certificate.not_valid_after_utc.timestamp())}")
    return Authority(certificate, key)


# -- certificates of users -----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CurrentCertificate:
    serial: str
    not_after: float
    fingerprint: str
    key_fingerprint: str
    pem: str

    def to_dict(self) -> dict[str, str | None]:
        """The user's JSON (SPEC §14): never more than what identifies it."""
        return {"serial": self.serial, "notAfter": isoformat(self.not_after)}


CERT_FIELDS = ("certSerial", "certNotAfter", "certFingerprint", "certKey", "certPem")


def current_from(fields: dict[str, Any]) -> CurrentCertificate | None:
    """The certificate stored in a user hash (HGETALL's answer), or None."""
    if not fields.get("certFingerprint"):
        return None
    return CurrentCertificate(
        serial=fields.get("certSerial", ""),
        not_after=float(fields.get("certNotAfter") or 0),
        fingerprint=fields["certFingerprint"],
        key_fingerprint=fields.get("certKey", ""),
        pem=fields.get("certPem", ""),
    )


@dataclasses.dataclass(eq=False)
class Certificates:
    """Issuing, renewing and revoking users' certificates; the CONNECT check."""

    redis: redis.Redis
    config: Config
    clock: Callable[[], float] = time.time
    _: dataclasses.KW_ONLY
    keys: Keys
    audit: AuditLog
    authority: Authority | None

    def check_csr(self, value: object, username: object) -> CheckedCsr | None:
        """None without a CSR; InvalidInput for one the registry cannot sign."""
        if value is None:
            return None
        if self.authority is None:
            raise InvalidInput("certificates are not configured on this registry (no CA); register without a csr")
        return check_csr(value, username if isinstance(username, str) else "")

    # -- pending requests (pending.py, registration.py) -----------------
    def queue_pending(self, pipe: Pipeline, username: str, candidate: str, csr: CheckedCsr) -> None:
        """Store a new request's CSR beside it (after MULTI); pending.py keeps its TTL."""
        key = self.keys.request_csr(username, candidate)
        pipe.hset(key, mapping={"pem": csr.pem, "keyType": csr.key_type, "publicKeySha256": csr.key_fingerprint})
        pipe.expire(key, self.config.pending_ttl)

    def issue_for_request(self, username: str, csr_fields: Mapping[Any, Any]) -> IssuedCertificate | None:
        """The certificate for an approved request's CSR (its keys.request_csr hash), or None without one."""
        if not csr_fields.get("pem"):
            return None
        authority = self._require_authority()
        csr = CheckedCsr(csr_fields["pem"], csr_fields.get("keyType", ""), csr_fields.get("publicKeySha256", ""))
        return authority.issue(csr, username, self.config.cert_days, self.clock())

    def queue_issued(self, pipe: Pipeline, username: str, issued: IssuedCertificate | None, actor: str) -> None:
        """Store the approval's certificate in its transaction (after MULTI); nothing for None."""
        if issued is not None:
            self._queue_store(pipe, username, issued, actor, ISSUE_ACTION)

    # -- devices -----------------------------------------------------------
    def for_granted(self, username: str, csr: CheckedCsr | None, *, actor: str = "device") -> dict[str, str]:
        """The certificate fields of a 201 answer to a known user with the right
        password: its current certificate, or a renewed one for a CSR with a
        new key (only while the current certificate is valid; the old one
        stops working at once). Empty for a user without a certificate."""
        fields = cast("dict[str, Any]", self.redis.hgetall(self.keys.user(username)))
        current = current_from(fields)
        if csr is not None and (current is None or current.key_fingerprint != csr.key_fingerprint):
            current = self._renew(username, csr, actor)
        if current is None:
            return {}
        answer = {"certificate": current.pem}
        if self.authority is not None:
            answer["caCertificate"] = self.authority.pem
        return answer

    def _renew(self, username: str, csr: CheckedCsr, actor: str) -> CurrentCertificate:
        authority = self._require_authority()
        user_key = self.keys.user(username)

        def renew(pipe: Pipeline) -> IssuedCertificate:
            current = current_from(cast("dict[str, Any]", pipe.hgetall(user_key)))
            if current is None:
                raise CertificateRefused(
                    f"{username!r} has no certificate; a first certificate needs an operator's approval"
                )
            if current.not_after <= self.clock():
                raise CertificateRefused(
                    f"the certificate of {username!r} expired; renewal needs a valid current certificate"
                )
            issued = authority.issue(csr, username, self.config.cert_days, self.clock())
            pipe.multi()
            self._queue_store(pipe, username, issued, actor, RENEW_ACTION, previousSerial=current.serial)
            return issued

        issued = run_watched(self.redis, [user_key], renew)
        instruments.certificate_changed(instruments.CERTIFICATE_RENEWED)
        log.info("certificate renewed: user %s serial %s", username, issued.serial)
        return _current_of(issued)

    def _queue_store(
        self, pipe: Pipeline, username: str, issued: IssuedCertificate, actor: str, action: str, **details: object
    ) -> None:
        pipe.hset(
            self.keys.user(username),
            mapping={
                "certSerial": issued.serial,
                "certNotAfter": repr(issued.not_after),
                "certFingerprint": issued.fingerprint,
                "certKey": issued.key_fingerprint,
                "certPem": issued.pem,
            },
        )
        self.audit.add(
            pipe, actor, action, username, serial=issued.serial, notAfter=isoformat(issued.not_after), **details
        )

    # -- operators ---------------------------------------------------------
    def revoke(self, username: str, *, actor: str = UNNAMED_ACTOR) -> str:
        """Remove the user's certificate (its clients are disconnected); the serial revoked."""
        user_key = self.keys.user(username)

        def remove(pipe: Pipeline) -> str:
            fields = cast("dict[str, Any]", pipe.hgetall(user_key))
            if not fields:
                raise UserNotFound(f"no user {username!r}")
            current = current_from(fields)
            if current is None:
                raise CertificateRefused(f"{username!r} has no certificate")
            pipe.multi()
            pipe.hdel(user_key, *CERT_FIELDS)
            self.audit.add(pipe, actor, REVOKE_ACTION, username, serial=current.serial)
            return current.serial

        serial = run_watched(self.redis, [user_key], remove)
        instruments.certificate_changed(instruments.CERTIFICATE_REVOKED)
        log.info("certificate revoked: user %s serial %s by %s", username, serial, actor)
        return serial

    # -- the broker ----------------------------------------------------------
    def check_connect(self, username: str, fingerprint: str, common_name: str) -> str | None:
        """Why a CONNECT with this client certificate is refused, or None: the
        CN must be the username and the certificate the user's current one
        (one round trip). Mosquitto has verified the chain and validity."""
        if common_name != username:
            return "the certificate's CN is not the username"
        stored, not_after = cast(
            "list[str | None]", self.redis.hmget(self.keys.user(username), ["certFingerprint", "certNotAfter"])
        )
        if stored is None:
            return "no current certificate for this user"
        if stored != fingerprint.lower():
            return "not the user's current certificate"
        if float(not_after or 0) <= self.clock():
            return "the certificate has expired"
        return None

    def _require_authority(self) -> Authority:
        if self.authority is None:
            raise CertificateRefused("certificates are not configured on this registry (no CA)")
        return self.authority


def _current_of(issued: IssuedCertificate) -> CurrentCertificate:
    return CurrentCertificate(issued.serial, issued.not_after, issued.fingerprint, issued.key_fingerprint, issued.pem)
