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


class CertificateStore:
    """`<credentials>.key`, `<credentials>.crt` and `<credentials>.ca.crt`
    beside the credentials file `credentials_path`."""

    def __init__(self, credentials_path: Path) -> None:
        self.key_path = credentials_path.with_suffix(".key")
        self.cert_path = credentials_path.with_suffix(".crt")
        self.ca_path = credentials_path.with_suffix(".ca.crt")

    def has_certificate(self) -> bool:
        return self.cert_path.exists()

    def load_or_create_key(self) -> ec.EllipticCurvePrivateKey:
        """The device's key: the one stored, or a new EC P-256 key written now.
        A pending request keeps the CSR of its first attempt, so a restarted
        device must ask with the same key."""
        if not self.key_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            if _write_private(self.key_path, pem, exclusive=True):
                return key
        try:
            loaded = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as error:
            raise CredentialsFileInvalid(f"cannot read the device key {self.key_path}: {error}") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise CredentialsFileInvalid(f"{self.key_path} is not an EC key (the agent writes EC P-256)")
        return loaded

    def save(self, answer: object) -> None:
        """The certificate and the CA certificate of a granted (201) answer."""
        certificate = answer.get("certificate") if isinstance(answer, dict) else None
        ca_certificate = answer.get("caCertificate") if isinstance(answer, dict) else None
        if not isinstance(certificate, str) or not isinstance(ca_certificate, str):
            raise RegistrationFailed("the registration was granted without a certificate: is the registry's CA set?")
        try:
            x509.load_pem_x509_certificate(certificate.encode())
            x509.load_pem_x509_certificate(ca_certificate.encode())
        except ValueError as error:
            raise RegistrationFailed(f"the registry sent a certificate that does not parse: {error}") from None
        _write_private(self.ca_path, ca_certificate.encode(), exclusive=False)
        _write_private(self.cert_path, certificate.encode(), exclusive=False)


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
