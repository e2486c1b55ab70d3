"""`cregistry device run --certificate` (SPEC §14) on fakes: the key is made
on the device and kept, the registration carries its CSR, the granted answer's
certificate and CA are stored beside the credentials (owner-only), and the
broker connection presents them."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from cregistry import errors
from cregistry.certificates import check_csr, init_ca, load_authority
from cregistry.cli.device_commands import device as device_group
from cregistry.config import Config
from cregistry.device.certificate import CertificateStore
from cregistry.device.mqtt import ACCEPTED, ConnectResult

from .test_device import Harness, events

REGISTER_URL = "http://cregistry:8080"


@pytest.fixture
def issue(tmp_path: Path) -> Any:
    """The registry's side: issue(csr_pem, username) -> the 201 answer, signed by a real registry CA."""
    init_ca(tmp_path / "ca")
    authority = load_authority(Config(ca_cert=str(tmp_path / "ca" / "ca.crt"), ca_key=str(tmp_path / "ca" / "ca.key")))
    assert authority is not None

    def answer(csr: str, username: str) -> dict[str, str]:
        issued = authority.issue(check_csr(csr, username), username, 365, time.time())
        return {"status": "granted", "certificate": issued.pem, "caCertificate": authority.pem}

    return answer


def csr_key(csr: str) -> bytes:
    return (
        x509.load_pem_x509_csr(csr.encode())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_agent_registers_with_a_csr_stores_the_certificate_privately_and_connects_with_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, issue: Any
) -> None:
    caplog.set_level(logging.INFO, logger="cregistry.device")
    harness = Harness(
        tmp_path, ConnectResult(ACCEPTED, "Success"), register_url=REGISTER_URL, username="sensor-1", certificate=True
    )
    harness.http_answers = [(202, {"status": "pending"}), (202, {"status": "pending"})]
    harness.broker.on_pump = lambda: (harness.agent.stop(), True)[1]
    original_post = harness.http_post

    def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
        if len(harness.http_calls) == 2:
            harness.http_answers.append((201, issue(body["csr"], "sensor-1")))
        return original_post(url, body)

    harness.agent.http_post = post
    harness.agent.run()

    files = CertificateStore(tmp_path / "device.json")
    csrs = [x509.load_pem_x509_csr(body["csr"].encode()) for _url, body in harness.http_calls]
    assert len(csrs) == 3 and len({csr_key(body["csr"]) for _url, body in harness.http_calls}) == 1
    assert csrs[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sensor-1"
    key = serialization.load_pem_private_key(files.key_path.read_bytes(), password=None)
    certificate = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
    assert certificate.public_key() == key.public_key() == csrs[0].public_key()
    assert files.ca_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert all(private(path) for path in (files.key_path, files.cert_path, files.ca_path))
    assert b"PRIVATE KEY" not in b"".join(body["csr"].encode() for _url, body in harness.http_calls)
    assert events(caplog)[-4:] == ["registration-granted", "certificate-stored", "connected", "stopped"]
    tls = harness.agent.broker_tls
    assert tls is not None and (tls.cert_file, tls.key_file) == (files.cert_path, files.key_path)
    tls.context()  # the stored certificate and key load and belong together


def test_a_restarted_agent_asks_with_the_same_key_and_one_with_its_certificate_does_not_register_again(
    tmp_path: Path, issue: Any
) -> None:
    settings = {"register_url": REGISTER_URL, "username": "sensor-1", "certificate": True}
    before_approval = Harness(tmp_path, max_waits=1, **settings)
    before_approval.http_answers = [(202, {"status": "pending"})]
    before_approval.agent.run()
    [(_url, first)] = before_approval.http_calls

    approved = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), **settings)
    approved.http_answers = [(201, issue(first["csr"], "sensor-1"))]
    approved.broker.on_pump = lambda: (approved.agent.stop(), True)[1]
    approved.agent.run()
    # Its own key again (an ECDSA signature differs each time; the key does not).
    assert [csr_key(body["csr"]) for _url, body in approved.http_calls] == [csr_key(first["csr"])]

    later = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), **settings)
    later.broker.on_pump = lambda: (later.agent.stop(), True)[1]
    later.agent.run()
    assert later.http_calls == [] and len(later.broker.connects) == 1


def test_a_grant_without_a_certificate_stops_the_device(tmp_path: Path) -> None:
    harness = Harness(tmp_path, register_url=REGISTER_URL, username="sensor-1", certificate=True)
    harness.http_answers = [(201, {"status": "granted"})]
    with pytest.raises(errors.RegistrationFailed, match="without a certificate"):
        harness.agent.run()
    assert harness.broker.connects == []
    assert not CertificateStore(tmp_path / "device.json").has_certificate()


@pytest.mark.parametrize(
    "extra",
    [[], ["--register-url", REGISTER_URL, "--cert-file", "{cert}"]],
    ids=["without-register-url", "with-cert-file"],
)
def test_the_cli_refuses_certificate_mode_it_cannot_run(tmp_path: Path, extra: list[str]) -> None:
    (tmp_path / "own.crt").write_text("not used")
    args = [a.replace("{cert}", str(tmp_path / "own.crt")) for a in extra]
    result = CliRunner().invoke(
        device_group, ["run", "--host", "broker", "--credentials", str(tmp_path / "d.json"), "--certificate", *args]
    )
    assert result.exit_code == 2
    assert "--certificate needs --register-url" in result.output
    assert not (tmp_path / "d.json").exists() and not (tmp_path / "d.key").exists()
