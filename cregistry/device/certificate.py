"""The device's client certificate (SPEC §14, `cregistry device run
--certificate`): a key made on the device and never sent, the CSR the
registration carries, and the certificate and registry CA the granted answer
brings, each in a file beside the credentials file, readable only by its owner."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cregistry.errors import CredentialsFileInvalid, RegistrationFailed

# The agent renews its certificate once less than this share of its validity
# is left (a third: 4 months of a year), early enough to retry for weeks when
# the registry cannot be reached, late enough not to renew needlessly.
RENEW_WHEN_LEFT = 1 / 3


def renewal_time(not_before: float, not_after: float) -> float:
    """When a certificate valid from `not_before` to `not_after` is renewed."""
    return not_after - (not_after - not_before) * RENEW_WHEN_LEFT


class CertificateStore:
    """`<credentials>.key`, `<credentials>.crt` and `<credentials>.ca.crt`
    beside the credentials file `credentials_path`; during a renewal the new
    key waits in `<credentials>.next.key` until its certificate is stored."""

    def __init__(self, credentials_path: Path) -> None:
        self.key_path = credentials_path.with_suffix(".key")
        self.cert_path = credentials_path.with_suffix(".crt")
        self.ca_path = credentials_path.with_suffix(".ca.crt")
        self.next_key_path = credentials_path.with_suffix(".next.key")

    def has_certificate(self) -> bool:
        return self.cert_path.exists()

    def ready(self) -> bool:
        """A certificate to connect with: stored, and for the device's key (not
        so after a renewal cut short between storing its key and its certificate)."""
        try:
            certificate = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (OSError, ValueError):
            return False
        return self.key_path.exists() and certificate.public_key() == self._load_key(self.key_path).public_key()

    def validity(self) -> tuple[float, float] | None:
        """The stored certificate's notBefore and notAfter (POSIX seconds), or None without a readable one."""
        try:
            certificate = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except (OSError, ValueError):
            return None
        return certificate.not_valid_before_utc.timestamp(), certificate.not_valid_after_utc.timestamp()

    def renewal_started(self) -> bool:
        """A renewal's key is waiting for its certificate (its answer was lost, or the agent stopped)."""
        return self.next_key_path.exists()

    def load_or_create_key(self) -> ec.EllipticCurvePrivateKey:
        """The device's key: the one stored, or a new EC P-256 key written now.
        A pending request keeps the CSR of its first attempt, so a restarted
        device must ask with the same key."""
        return self._load_or_create(self.key_path)

    def request_key(self) -> ec.EllipticCurvePrivateKey:
        """The key a registration asks a certificate for: a renewal's when one was started, else the device's."""
        return self._load_key(self.next_key_path) if self.renewal_started() else self.load_or_create_key()

    def renewal_key(self) -> ec.EllipticCurvePrivateKey:
        """A new key for a renewal, made once: a renewal asked again (its
        answer lost, the agent restarted) asks with the same key, and the
        registry answers the certificate it issued for it."""
        return self._load_or_create(self.next_key_path)

    def save(self, answer: object) -> None:
        """The certificate and the CA certificate of a granted (201) answer,
        for the key it was asked for (request_key). After a renewal its key
        takes the old key's place first, then the certificate the old one's:
        each file is replaced whole, never seen half written, and a stop in
        between leaves a key without its certificate, which ready() sees and
        the next registration mends (the registry answers the current
        certificate to a CSR for its key)."""
        certificate = answer.get("certificate") if isinstance(answer, dict) else None
        ca_certificate = answer.get("caCertificate") if isinstance(answer, dict) else None
        if not isinstance(certificate, str) or not isinstance(ca_certificate, str):
            raise RegistrationFailed("the registration was granted without a certificate: is the registry's CA set?")
        try:
            issued = x509.load_pem_x509_certificate(certificate.encode())
            x509.load_pem_x509_certificate(ca_certificate.encode())
        except ValueError as error:
            raise RegistrationFailed(f"the registry sent a certificate that does not parse: {error}") from None
        renewing = self.renewal_started()
        key = self._load_key(self.next_key_path if renewing else self.key_path)
        if issued.public_key() != key.public_key():
            raise RegistrationFailed("the registry sent a certificate for another key than the one asked for")
        _write_private(self.ca_path, ca_certificate.encode(), exclusive=False)
        if renewing:
            try:
                os.replace(self.next_key_path, self.key_path)
            except OSError as error:
                raise CredentialsFileInvalid(f"cannot write {self.key_path}: {error.strerror or error}") from None
        _write_private(self.cert_path, certificate.encode(), exclusive=False)

    def _load_or_create(self, path: Path) -> ec.EllipticCurvePrivateKey:
        if not path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            if _write_private(path, pem, exclusive=True):
                return key
        return self._load_key(path)

    @staticmethod
    def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as error:
            raise CredentialsFileInvalid(f"cannot read the device key {path}: {error}") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise CredentialsFileInvalid(f"{path} is not an EC key (the agent writes EC P-256)")
        return loaded


def csr_pem(key: ec.EllipticCurvePrivateKey, username: str) -> str:
    """A PKCS#10 request with CN = username and no extensions (the registry sets them all)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, username)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _write_private(path: Path, data: bytes, *, exclusive: bool) -> bool:
    """`data` in `path`, mode 0600 from the start (a temporary file, then a
    link or a rename). With `exclusive`, False when the file exists already:
    of two agents on one file, one key wins and both use it."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if exclusive:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
        else:
            os.replace(temporary, path)
    except OSError as error:
        raise CredentialsFileInvalid(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return True
