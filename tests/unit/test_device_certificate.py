"""`cregistry device run --certificate` (SPEC §14) on fakes: the key is made
on the device and kept, the registration carries its CSR, the granted answer's
certificate and CA are stored beside the credentials (owner-only), and the
broker connection presents them."""

from __future__ import annotations

import itertools
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cregistry import errors
from cregistry.certificates import check_csr, init_ca, load_authority
from cregistry.cli.device_commands import device as device_group
from cregistry.config import Config
from cregistry.device.certificate import CertificateStore, csr_pem, renewal_time
from cregistry.device.mqtt import ACCEPTED, ConnectResult

from .test_device import NOW, Harness, events

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


# -- renewal before expiry ------------------------------------------------------
DAY = 86400.0
VALIDITY_DAYS = 30


@pytest.fixture
def authority(tmp_path: Path) -> Any:
    init_ca(tmp_path / "ca")
    loaded = load_authority(Config(ca_cert=str(tmp_path / "ca" / "ca.crt"), ca_key=str(tmp_path / "ca" / "ca.key")))
    assert loaded is not None
    return loaded


def granted(authority: Any, csr: str, now: float, username: str = "sensor-1") -> dict[str, str]:
    """The registry's 201 answer to `csr`, issued at `now` for VALIDITY_DAYS."""
    issued = authority.issue(check_csr(csr, username), username, VALIDITY_DAYS, now)
    return {"status": "granted", "certificate": issued.pem, "caCertificate": authority.pem}


class Registry:
    """The register route as the service answers a renewal: a scripted status
    (or an OSError) per call, then 201 with a certificate for the call's CSR,
    issued at the agent's clock."""

    def __init__(self, harness: Harness, authority: Any, *failures: Any, clock: Any = None) -> None:
        self.harness, self.authority, self.failures = harness, authority, list(failures)
        self.clock = clock or harness.clock  # the registry's, when it is not the device's
        self.calls: list[tuple[float, dict[str, Any]]] = []
        harness.agent.http_post = self.post

    def post(self, url: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.calls.append((self.harness.clock(), body))
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        return 201, granted(self.authority, body["csr"], self.clock())


def registered(tmp_path: Path, authority: Any) -> tuple[CertificateStore, bytes]:
    """A device that registered with its CSR at NOW and connected once: its files, and its first certificate."""
    first = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), **RENEWING)
    first.agent.http_post = lambda url, body: (201, granted(authority, body["csr"], first.clock()))
    first.broker.on_pump = lambda: (first.agent.stop(), True)[1]
    first.agent.run()
    files = CertificateStore(tmp_path / "device.json")
    return files, files.cert_path.read_bytes()


RENEWING = {"register_url": REGISTER_URL, "username": "sensor-1", "certificate": True}


def pumping_for(harness: Harness, seconds_per_pump: float, stop_after_sessions: int) -> None:
    """Each pump of a connection lasts `seconds_per_pump` of the agent's clock;
    the agent stops once its `stop_after_sessions`-th connection is up."""

    def pump() -> bool:
        if len(harness.broker.sessions) >= stop_after_sessions:
            harness.agent.stop()
        else:
            harness.clock.advance(seconds_per_pump)
        return True

    harness.broker.on_pump = pump


def test_renewal_is_due_once_a_third_of_the_validity_is_left() -> None:
    assert renewal_time(1000.0, 1000.0 + 90 * DAY) == 1000.0 + 60 * DAY
    assert renewal_time(0.0, 3.0) == 2.0


def test_a_connected_agent_renews_when_a_third_is_left_stores_the_new_key_and_certificate_and_reconnects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, authority: Any
) -> None:
    files, first_certificate = registered(tmp_path, authority)
    first_key = files.key_path.read_bytes()
    caplog.set_level(logging.INFO, logger="cregistry.device")
    harness = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), ConnectResult(ACCEPTED, "Success"), **RENEWING)
    registry = Registry(harness, authority)
    pumping_for(harness, 3600.0, stop_after_sessions=2)  # an hour of the clock per pump
    harness.agent.run()

    renew_at = NOW + (VALIDITY_DAYS * 2 / 3) * DAY - 60  # issued a minute before NOW
    [(asked_at, body)] = registry.calls
    assert renew_at <= asked_at < renew_at + 3600 + 1  # at the first pump past it
    assert body["username"] == "sensor-1" and body["password"] == harness.stored()["password"]
    assert csr_key(body["csr"]) != serialization.load_pem_private_key(first_key, None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    renewed = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
    key = serialization.load_pem_private_key(files.key_path.read_bytes(), password=None)
    assert files.cert_path.read_bytes() != first_certificate and files.ready()
    assert renewed.public_key() == key.public_key() == x509.load_pem_x509_csr(body["csr"].encode()).public_key()
    assert not files.next_key_path.exists()
    assert all(private(path) for path in (files.key_path, files.cert_path, files.ca_path))
    assert [e for e in events(caplog) if e in ("connected", "certificate-renewed", "reconnecting-renewed")] == [
        "connected", "certificate-renewed", "reconnecting-renewed", "connected",
    ]  # fmt: skip
    assert harness.broker.sessions[0].closed and len(harness.broker.sessions) == 2
    assert harness.waits == []  # reconnected at once, no backoff


def run_for_hours(harness: Harness, hours: int) -> None:
    """The agent run with one broker pump per hour of the device's clock, then stopped."""
    pumps = iter(range(hours))

    def pump() -> bool:
        if next(pumps, None) is None:
            harness.agent.stop()
        harness.clock.advance(3600.0)
        return True

    harness.broker.on_pump = pump
    harness.agent.run()


def test_a_device_clock_ahead_of_the_registrys_renews_once_not_in_a_loop(tmp_path: Path, authority: Any) -> None:
    files, _first = registered(tmp_path, authority)
    harness = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), ConnectResult(ACCEPTED, "Success"), **RENEWING)
    harness.clock.advance(25 * DAY)  # the device's clock: 25 days ahead; what it is issued is due by it at once
    registry = Registry(harness, authority, clock=lambda: NOW)
    run_for_hours(harness, 5 * 24)
    assert len(registry.calls) == 1 and files.ready()
    assert len(harness.broker.sessions) == 1  # renewed before connecting, then connected once


def test_a_certificate_not_due_is_not_renewed(tmp_path: Path, authority: Any) -> None:
    files, first_certificate = registered(tmp_path, authority)
    harness = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), **RENEWING)
    registry = Registry(harness, authority)
    run_for_hours(harness, 19 * 24)  # 20 days (two thirds of 30) not reached
    assert registry.calls == [] and files.cert_path.read_bytes() == first_certificate
    assert len(harness.broker.sessions) == 1


def test_a_failed_renewal_keeps_the_connection_and_the_certificate_and_retries_with_the_same_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, authority: Any
) -> None:
    files, first_certificate = registered(tmp_path, authority)
    caplog.set_level(logging.INFO, logger="cregistry.device")
    harness = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), ConnectResult(ACCEPTED, "Success"), **RENEWING)
    unreachable = ConnectionRefusedError(111, "Connection refused")
    busy = (503, {"error": "Redis is unavailable"})
    registry = Registry(harness, authority, busy, busy, unreachable, (201, {"status": "granted"}))
    pumping_for(harness, 0.5, stop_after_sessions=2)
    harness.clock.advance(VALIDITY_DAYS * 2 / 3 * DAY)  # due at once
    seen: list[bytes] = []
    original = registry.post

    def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
        seen.append(files.cert_path.read_bytes())
        return original(url, body)

    harness.agent.http_post = post
    harness.agent.run()

    assert len(registry.calls) == 5
    times = [at for at, _body in registry.calls]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap > 0 for gap in gaps) and gaps[1] > gaps[0] * 0.5  # a backoff, not a busy loop
    assert len({csr_key(body["csr"]) for _at, body in registry.calls}) == 1  # one new key, kept across attempts
    assert seen[:4] == [first_certificate] * 4  # the current certificate stays in use meanwhile
    assert files.ready() and files.cert_path.read_bytes() != first_certificate
    warnings = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "certificate-renewal-failed"]
    assert [r.fields["status"] for r in warnings] == [503, 0, 201]  # once per reason, not per retry
    assert "Redis is unavailable" in warnings[0].getMessage() and "without a certificate" in warnings[2].getMessage()
    # Tried before connecting, then while connected: the one connection lasted until the renewal.
    assert [e for e in events(caplog) if e in ("connected", "certificate-renewed", "connection-lost")] == [
        "connected", "certificate-renewed", "connected",
    ]  # fmt: skip


def test_a_renewal_cut_short_is_finished_with_the_same_key_at_the_next_start(tmp_path: Path, authority: Any) -> None:
    files, first_certificate = registered(tmp_path, authority)
    # The agent stopped after sending its renewal, before the answer: the new key is kept.
    waiting_key = csr_key(csr_pem(files.renewal_key(), "sensor-1"))
    harness = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), **RENEWING)
    registry = Registry(harness, authority)
    harness.broker.on_pump = lambda: (harness.agent.stop(), True)[1]
    harness.agent.run()  # not due by its dates, but a renewal was started
    [(_at, body)] = registry.calls
    assert csr_key(body["csr"]) == waiting_key
    assert files.ready() and not files.next_key_path.exists()
    assert files.cert_path.read_bytes() != first_certificate


def test_a_key_stored_without_its_certificate_is_mended_by_registering_for_it(tmp_path: Path, authority: Any) -> None:
    files, first_certificate = registered(tmp_path, authority)
    # Stopped between the two renames of a renewal: the new key, the old certificate.
    files.renewal_key()
    os.replace(files.next_key_path, files.key_path)
    assert not files.ready()
    harness = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), **RENEWING)
    registry = Registry(harness, authority)
    harness.broker.on_pump = lambda: (harness.agent.stop(), True)[1]
    harness.agent.run()
    [(_at, body)] = registry.calls
    key = serialization.load_pem_private_key(files.key_path.read_bytes(), password=None)
    assert x509.load_pem_x509_csr(body["csr"].encode()).public_key() == key.public_key()
    assert files.ready() and files.cert_path.read_bytes() != first_certificate
    assert len(harness.broker.sessions) == 1


def test_a_certificate_for_another_key_is_not_stored(tmp_path: Path, authority: Any) -> None:
    files, first_certificate = registered(tmp_path, authority)
    files.renewal_key()
    stranger, _key = make_csr_for("sensor-1")
    with pytest.raises(errors.RegistrationFailed, match="another key"):
        files.save(granted(authority, stranger, NOW))
    assert files.cert_path.read_bytes() == first_certificate and files.ready() and files.renewal_started()


def make_csr_for(username: str) -> tuple[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    return csr_pem(key, username), key
