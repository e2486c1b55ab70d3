"""Certificate onboarding (SPEC §14) on fakeredis: the registry CA, CSR checks, issuing, renewal, the broker check."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import fakeredis
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flask.testing import FlaskClient

from cregistry import services
from cregistry.certificates import certificate_fingerprint, init_ca, load_authority
from cregistry.cli import cli
from cregistry.config import Config
from cregistry.errors import ConfigError, InvalidInput
from cregistry.keys import Keys
from cregistry.passwords import pairing_id
from cregistry.web import create_app
from tests.unit.conftest import ADMIN_TOKEN

REGISTER = "/api/client-registry/register"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def make_csr(username: str, key: object = None, *, extension: bool = False) -> tuple[str, object]:
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, username)])
    )
    if extension:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    csr = builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


@pytest.fixture
def ca_config(ca_dir: Path) -> Config:
    return Config(bcrypt_cost=4, admin_token=ADMIN_TOKEN, ca_cert=str(ca_dir / "ca.crt"), ca_key=str(ca_dir / "ca.key"))


@pytest.fixture
def ca_api(ca_config: Config, connection: fakeredis.FakeRedis) -> FlaskClient:
    return create_app(ca_config, listener="api", connection=connection).test_client()


@pytest.fixture
def ca_broker(ca_config: Config, connection: fakeredis.FakeRedis) -> FlaskClient:
    return create_app(ca_config, listener="broker", connection=connection).test_client()


# -- the CA -------------------------------------------------------------------
def test_ca_init_writes_a_p256_ca_with_a_private_key_and_never_overwrites(tmp_path: Path) -> None:
    cert_path, key_path = init_ca(tmp_path / "ca")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    before = key_path.read_bytes()
    with pytest.raises(InvalidInput, match="never overwritten"):
        init_ca(tmp_path / "ca")
    assert key_path.read_bytes() == before


def test_load_authority_refuses_a_key_of_another_ca_and_a_certificate_that_is_not_a_ca(tmp_path: Path) -> None:
    first, second = init_ca(tmp_path / "a"), init_ca(tmp_path / "b")
    with pytest.raises(ConfigError, match="does not match"):
        load_authority(Config(ca_cert=str(first[0]), ca_key=str(second[1])))
    key = serialization.load_pem_private_key(first[1].read_bytes(), None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")])
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip
    (tmp_path / "leaf.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match="not a CA"):
        load_authority(Config(ca_cert=str(tmp_path / "leaf.crt"), ca_key=str(first[1])))
    assert load_authority(Config(ca_cert=str(first[0]), ca_key=str(first[1]))) is not None


# -- CSR registration -------------------------------------------------------------
def test_a_csr_without_a_ca_is_a_400_and_records_nothing(api: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    api.post("/api/client-registry/unlock", headers=AUTH)
    answer = api.post(REGISTER, json={"username": "sensor-1", "password": "secret1", "csr": make_csr("sensor-1")[0]})
    assert answer.status_code == 400 and "not configured" in answer.get_json()["error"]
    assert connection.zcard(Keys().pending_index()) == 0


@pytest.mark.parametrize(
    ("csr", "why"),
    [
        (lambda: make_csr("sensor-2")[0], "CN must be the username"),
        (lambda: make_csr("sensor-1", rsa.generate_private_key(65537, 1024))[0], "2048"),
        (lambda: make_csr("sensor-1", ec.generate_private_key(ec.SECP521R1()))[0], "P-256 or P-384"),
        (lambda: make_csr("sensor-1", ed25519.Ed25519PrivateKey.generate())[0], "RSA"),
        (lambda: make_csr("sensor-1", extension=True)[0], "extensions"),
        (lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a valid"),
        (lambda: "hello", "PEM"),
        (lambda: 17, "PEM"),
    ],
    ids=["cn", "rsa-1024", "p521", "ed25519", "extensions", "garbage", "not-pem", "not-text"],
)
def test_every_refused_csr_is_a_400_that_says_why_and_records_nothing(
    ca_api: FlaskClient, connection: fakeredis.FakeRedis, csr: object, why: str
) -> None:
    ca_api.post("/api/client-registry/unlock", headers=AUTH)
    answer = ca_api.post(REGISTER, json={"username": "sensor-1", "password": "secret1", "csr": csr()})  # type: ignore[operator]
    assert answer.status_code == 400, answer.get_json()
    assert why in answer.get_json()["error"]
    assert connection.zcard(Keys().pending_index()) == 0
    assert not connection.keys("*request*")


def test_a_csr_is_pending_then_issued_at_approval_and_checked_at_connect(
    ca_api: FlaskClient, ca_broker: FlaskClient, ca_dir: Path
) -> None:
    ca_api.post("/api/client-registry/unlock", headers=AUTH)
    csr, _key = make_csr("sensor-1")
    body = {"username": "sensor-1", "password": "secret1", "csr": csr}
    assert ca_api.post(REGISTER, json=body).status_code == 202
    [request] = ca_api.get("/api/client-registry/requests", headers=AUTH).get_json()["requests"]
    assert request["certificateRequest"]["keyType"] == "EC P-256"
    approved = ca_api.post(f"/api/client-registry/requests/{request['id']}/approve", headers=AUTH)
    assert approved.status_code == 201 and approved.get_json()["certificate"]["serial"]
    granted = ca_api.post(REGISTER, json=body)
    assert granted.status_code == 201
    certificate = x509.load_pem_x509_certificate(granted.get_json()["certificate"].encode())
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert granted.get_json()["caCertificate"].encode() == (ca_dir / "ca.crt").read_bytes()
    certificate.verify_directly_issued_by(ca)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sensor-1"
    assert certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert format(certificate.serial_number, "x") == approved.get_json()["certificate"]["serial"]
    # The same CSR again: the same certificate, not a new one.
    assert ca_api.post(REGISTER, json=body).get_json()["certificate"] == granted.get_json()["certificate"]

    fingerprint = certificate_fingerprint(certificate)
    check = {"username": "sensor-1", "clientid": "c1", "certfingerprint": fingerprint, "certcn": "sensor-1"}
    assert ca_broker.post("/mqtt/user", json=check).status_code == 200  # no password at all
    assert ca_broker.post("/mqtt/user", json={**check, "username": "sensor-2", "certcn": "sensor-1"}).status_code == 403
    assert ca_broker.post("/mqtt/user", json={**check, "certcn": "sensor-2"}).status_code == 403

    # Renewal: the password and a CSR for a new key; the old certificate is refused at once.
    renewed = ca_api.post(REGISTER, json={**body, "csr": make_csr("sensor-1")[0]})
    assert renewed.status_code == 201 and renewed.get_json()["certificate"] != granted.get_json()["certificate"]
    assert ca_broker.post("/mqtt/user", json=check).status_code == 403
    new = certificate_fingerprint(x509.load_pem_x509_certificate(renewed.get_json()["certificate"].encode()))
    assert ca_broker.post("/mqtt/user", json={**check, "certfingerprint": new}).status_code == 200
    actions = [e["action"] for e in ca_api.get("/api/audit", headers=AUTH).get_json()["entries"]]
    assert actions[:1] == ["user.certificate.renew"] and "user.certificate.issue" in actions

    # Deletion revokes it with the user.
    assert ca_api.delete("/api/users/sensor-1", headers=AUTH).status_code == 200
    assert ca_broker.post("/mqtt/user", json={**check, "certfingerprint": new}).status_code == 403


def test_each_contested_candidate_keeps_its_own_csr(ca_api: FlaskClient) -> None:
    """An attacker with a colliding pairing ID (tests/unit/test_candidates.py) sends its own CSR
    first: the device's request still carries the device's CSR, and approving it issues for that key."""
    ca_api.post("/api/client-registry/unlock", headers=AUTH)
    attacker_csr, _ = make_csr("sensor-1")
    device_csr, device_key = make_csr("sensor-1")
    attacker = {"username": "sensor-1", "password": "x13401315", "csr": attacker_csr}
    device = {"username": "sensor-1", "password": "secret1", "csr": device_csr}
    assert ca_api.post(REGISTER, json=attacker).status_code == 202
    assert ca_api.post(REGISTER, json=device).status_code == 202
    listed = ca_api.get("/api/client-registry/requests", headers=AUTH).get_json()["requests"]
    assert [r["id"] for r in listed] == ["sensor-1:e2d3f8", "sensor-1:e2d3f8-2"]
    assert listed[0]["certificateRequest"]["publicKeySha256"] != listed[1]["certificateRequest"]["publicKeySha256"]
    approved = ca_api.post(
        "/api/client-registry/requests/sensor-1:e2d3f8-2/approve", headers=AUTH, json={"force": True}
    )
    assert approved.status_code == 201
    granted = ca_api.post(REGISTER, json=device)
    certificate = x509.load_pem_x509_certificate(granted.get_json()["certificate"].encode())
    assert certificate.public_key() == device_key.public_key()  # type: ignore[attr-defined]


def test_renewal_needs_a_current_certificate(ca_api: FlaskClient) -> None:
    ca_api.post("/api/users", headers=AUTH, json={"username": "sensor-1", "password": "secret1"})
    answer = ca_api.post(REGISTER, json={"username": "sensor-1", "password": "secret1", "csr": make_csr("sensor-1")[0]})
    assert answer.status_code == 403 and "approval" in answer.get_json()["error"]


def test_revoking_a_certificate_refuses_it_and_is_audited(ca_api: FlaskClient, ca_broker: FlaskClient) -> None:
    ca_api.post("/api/client-registry/unlock", headers=AUTH)
    body = {"username": "sensor-1", "password": "secret1", "csr": make_csr("sensor-1")[0]}
    ca_api.post(REGISTER, json=body)
    ca_api.post(
        "/api/client-registry/requests/sensor-1:"
        + ca_api.post(REGISTER, json=body).get_json()["pairingId"]
        + "/approve",
        headers=AUTH,
    )
    pem = ca_api.post(REGISTER, json=body).get_json()["certificate"]
    fingerprint = certificate_fingerprint(x509.load_pem_x509_certificate(pem.encode()))
    revoked = ca_api.delete("/api/users/sensor-1/certificate", headers=AUTH)
    assert revoked.status_code == 200
    check = {"username": "sensor-1", "clientid": "c1", "certfingerprint": fingerprint, "certcn": "sensor-1"}
    assert ca_broker.post("/mqtt/user", json=check).status_code == 403
    assert ca_api.get("/api/users/sensor-1", headers=AUTH).get_json()["certificate"] is None
    assert ca_api.get("/api/audit", headers=AUTH).get_json()["entries"][0]["action"] == "user.certificate.revoke"


def test_cregistry_requests_shows_the_key_type_and_the_whole_fingerprint(
    ca_config: Config, connection: fakeredis.FakeRedis, runner: CliRunner
) -> None:
    domain = services.build(connection, ca_config)
    domain.redis.set(domain.keys.unlock(), "1", ex=300)
    csr = domain.certificates.check_csr(make_csr("sensor-1")[0], "sensor-1")
    assert csr is not None
    domain.registration.attempt("sensor-1", "secret1", "", "rest", None, csr=csr)
    domain.registration.attempt("plain-1", "secret1", "", "rest", None)
    result = runner.invoke(cli, ["requests"])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if "certificate" in line]
    assert line == (
        f"sensor-1 (pairing ID {pairing_id('sensor-1', 'secret1')}) requests a certificate:"
        f" EC P-256 key, public key SHA-256 {csr.to_dict()['publicKeySha256']}"
    )
