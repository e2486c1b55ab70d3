"""Certificate onboarding (SPEC §14) end to end: a real `cregistry serve` with a
registry CA, a real Mosquitto TLS listener (`cafile` = the registry CA,
`require_certificate true`, cregistry's plugin) and paho clients presenting
the certificates the registry issued. docs/certificates.md is the contract;
the service's own answers are in tests/unit/test_certificates.py."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import itertools
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cregistry.certificates import init_ca
from cregistry.device.agent import DeviceAgent, DeviceSettings
from cregistry.device.tls import TlsSettings
from harness.mosquitto import MosquittoProcess, plugin_env, render_mosquitto_conf
from harness.mqtt import ClientTls, MqttClient
from harness.processes import LOOPBACK, free_port
from harness.redis_server import RedisProcess
from harness.service import ServiceProcess, http, running_service
from tests.integration.conftest import ADMIN_TOKEN, finish_broker
from tests.integration.test_broker import CHANGE_BOUND, disconnected_within
from tests.integration.test_device import Device

REGISTER = "/api/client-registry/register"
PROTOCOLS = [pytest.param(4, id="mqtt311"), pytest.param(5, id="mqtt5")]
# The broker tier (`-m broker`, both broker versions): conftest marks only tests of its `mosquitto` fixture.
pytestmark = pytest.mark.broker


# -- certificates the test makes ---------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class ServerTls:
    """The broker's own server certificate, signed by a test CA that is not the
    registry's: the listener's certfile/keyfile, and what clients trust; and
    the registry CA's certificate, the listener's cafile."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    registry_ca_file: Path


def make_server_tls(directory: Path, registry_ca_file: Path) -> ServerTls:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("cregistry test server CA"))
        .issuer_name(_name("cregistry test server CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(LOOPBACK))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "server-ca.crt"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.crt"
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    return ServerTls(ca_file, cert_file, _write_key(key, directory / "server.key"), registry_ca_file)


def make_csr(username: str) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """A device's new key and its CSR (PEM), CN = username, no extensions."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(username)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


# -- the processes -------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ServerTls]]:
    """The registry CA (`cregistry ca init`'s code) and the broker's server
    certificate; the broker's files where the broker reads them: mosquitto
    started as root drops to the mosquitto user, so a directory of its own
    that all may read (as MosquittoProcess's), not pytest's owner-only ones."""
    registry_ca = tmp_path_factory.mktemp("registry") / "ca"
    init_ca(registry_ca)
    broker_files = Path(tempfile.mkdtemp(prefix="cregistry-tls-"))
    broker_files.chmod(0o755)
    shutil.copy(registry_ca / "ca.crt", broker_files / "registry-ca.crt")
    (broker_files / "registry-ca.crt").chmod(0o644)
    server = make_server_tls(broker_files, broker_files / "registry-ca.crt")
    server.key_file.chmod(0o644)  # a throw-away test key, read by the mosquitto user
    yield registry_ca, server
    shutil.rmtree(broker_files, ignore_errors=True)


@pytest.fixture(scope="module")
def ca_service(redis_process: RedisProcess, tls_files: tuple[Path, ServerTls]) -> Iterator[ServiceProcess]:
    """`cregistry serve` signing with the registry CA."""
    registry_ca, _server = tls_files
    env = {"CREGISTRY_CA_CERT": str(registry_ca / "ca.crt"), "CREGISTRY_CA_KEY": str(registry_ca / "ca.key")}
    with running_service(redis_process.url, ADMIN_TOKEN, env) as service:
        yield service


def tls_listener_conf(port: int, plugin: Path, service: ServiceProcess, server: ServerTls) -> str:
    """mosquitto/mosquitto.conf with its listener made the TLS listener of
    docs/certificates.md (the lines after the listener are that listener's)."""
    conf = render_mosquitto_conf(port=port, plugin=plugin, cregistry_broker_port=service.broker_port)
    listener = f"listener {port} {LOOPBACK}"
    assert listener in conf
    tls_lines = [
        f"cafile {server.registry_ca_file}",
        f"certfile {server.cert_file}",
        f"keyfile {server.key_file}",
        "require_certificate true",
    ]
    return conf.replace(listener, "\n".join([listener, *tls_lines]))


@pytest.fixture
def tls_mosquitto(
    ca_service: ServiceProcess, cregistry_plugin: Path, tls_files: tuple[Path, ServerTls]
) -> Iterator[MosquittoProcess]:
    port = free_port()
    broker = MosquittoProcess(
        tls_listener_conf(port, cregistry_plugin, ca_service, tls_files[1]), port, env=plugin_env(cregistry_plugin)
    )
    broker.start()
    yield broker
    finish_broker(broker)


# -- a device, as the REST registration sees it --------------------------------
@dataclass
class Enrolled:
    username: str
    password: str
    key: ec.EllipticCurvePrivateKey
    certificate_pem: str
    tls: ClientTls


class Fleet:
    """Devices registering with a CSR on `service`, and their TLS clients of `broker`."""

    def __init__(self, service: ServiceProcess, broker: MosquittoProcess, server: ServerTls, directory: Path) -> None:
        self.api = service.api
        self.broker = broker
        self.server = server
        self.directory = directory
        self.clients: list[MqttClient] = []
        self.ids = itertools.count()

    def register(self, username: str, password: str, csr: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        body = {"username": username, "password": password, "clientId": username, "csr": csr}
        answer = http("POST", f"{self.api}{REGISTER}", json_body=body)
        return answer.status, answer.json()

    def tls_files(self, username: str, key: ec.EllipticCurvePrivateKey, certificate_pem: str) -> ClientTls:
        n = next(self.ids)
        cert_file = self.directory / f"{username}-{n}.crt"
        cert_file.write_text(certificate_pem)
        return ClientTls(self.server.ca_file, cert_file, _write_key(key, self.directory / f"{username}-{n}.key"))

    def enroll(self, username: str, password: str) -> Enrolled:
        """Unlocked registration with a CSR (202), the operator's approval, the repeated registration (201)."""
        assert http("POST", f"{self.api}/api/client-registry/unlock", token=ADMIN_TOKEN).status == 200
        csr, key = make_csr(username)
        status, pending = self.register(username, password, csr)
        assert status == 202, pending
        request_id = f"{username}:{pending['pairingId']}"
        [listed] = [
            r
            for r in http("GET", f"{self.api}/api/client-registry/requests", token=ADMIN_TOKEN).json()["requests"]
            if r["id"] == request_id
        ]
        assert listed["certificateRequest"]["keyType"] == "EC P-256"
        approved = http("POST", f"{self.api}/api/client-registry/requests/{request_id}/approve", token=ADMIN_TOKEN)
        assert approved.status == 201, approved.body
        status, granted = self.register(username, password, csr)
        assert status == 201, granted
        assert granted["caCertificate"].startswith("-----BEGIN CERTIFICATE-----")
        pem = granted["certificate"]
        return Enrolled(username, password, key, pem, self.tls_files(username, key, pem))

    def client(self, username: str, password: str | None, tls: ClientTls, protocol: int = 4) -> MqttClient:
        client = MqttClient(self.broker.port, username, password, f"{username}-{next(self.ids)}", protocol, tls)
        self.clients.append(client)
        return client

    def connect(self, username: str, password: str | None, tls: ClientTls, protocol: int = 4) -> str:
        return self.client(username, password, tls, protocol).connect()

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture
def fleet(
    ca_service: ServiceProcess, tls_mosquitto: MosquittoProcess, tls_files: tuple[Path, ServerTls], tmp_path: Path
) -> Iterator[Fleet]:
    fleet = Fleet(ca_service, tls_mosquitto, tls_files[1], tmp_path)
    yield fleet
    fleet.close()


def grant(service: ServiceProcess, username: str, topic: str, access: str = "readWrite") -> None:
    permissions = [{"topic": topic, "access": access}]
    answer = http("PUT", f"{service.api}/api/users/{username}/permissions", json_body=permissions, token=ADMIN_TOKEN)
    assert answer.status == 200, answer.body


def connected_with(fleet: Fleet, device: Enrolled, password: str | None = None, protocol: int = 4) -> MqttClient:
    client = fleet.client(device.username, password, device.tls, protocol)
    assert client.connect() == "Success"
    return client


# -- the tests -------------------------------------------------------------------
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_device_registered_with_a_csr_connects_with_its_certificate_with_or_without_its_password(
    fleet: Fleet, ca_service: ServiceProcess, protocol: int
) -> None:
    device = fleet.enroll("sensor-1", "sensor-1-secret")
    grant(ca_service, "sensor-1", "plant/sensor-1/#")

    without_password = connected_with(fleet, device, None, protocol)
    with_password = connected_with(fleet, device, device.password, protocol)
    assert without_password.subscribe("plant/sensor-1/#") == 1
    assert without_password.subscribe("plant/other/#") == 0x80  # outside its permissions
    with_password.publish("plant/sensor-1/temperature", b"21.5")
    assert without_password.receive(5.0) == ("plant/sensor-1/temperature", b"21.5")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_certificate_whose_cn_is_another_username_is_refused(fleet: Fleet, protocol: int) -> None:
    first = fleet.enroll("sensor-1", "sensor-1-secret")
    second = fleet.enroll("sensor-2", "sensor-2-secret")

    # sensor-1's certificate for sensor-2's username: refused even with sensor-2's own password.
    assert fleet.connect("sensor-2", None, first.tls, protocol) == "Not authorized"
    assert fleet.connect("sensor-2", second.password, first.tls, protocol) == "Not authorized"
    assert fleet.connect("sensor-2", None, second.tls, protocol) == "Success"


def test_deleting_the_user_kicks_its_tls_client_within_2_s_and_its_certificate_is_refused_afterwards(
    fleet: Fleet, ca_service: ServiceProcess
) -> None:
    device = fleet.enroll("sensor-1", "sensor-1-secret")
    client = connected_with(fleet, device)

    assert http("DELETE", f"{ca_service.api}/api/users/sensor-1", token=ADMIN_TOKEN).status == 200
    assert disconnected_within(client, CHANGE_BOUND) <= CHANGE_BOUND
    assert fleet.connect("sensor-1", None, device.tls) == "Not authorized"
    assert fleet.connect("sensor-1", device.password, device.tls) == "Not authorized"


def test_renewal_kicks_the_old_certificates_client_within_2_s_refuses_the_old_certificate_and_the_new_one_works(
    fleet: Fleet,
) -> None:
    device = fleet.enroll("sensor-1", "sensor-1-secret")
    old_client = connected_with(fleet, device)

    csr, new_key = make_csr("sensor-1")
    status, renewed = fleet.register("sensor-1", device.password, csr)  # no approval: it has a current certificate
    assert status == 201, renewed
    assert renewed["certificate"] != device.certificate_pem
    assert disconnected_within(old_client, CHANGE_BOUND) <= CHANGE_BOUND
    assert fleet.connect("sensor-1", None, device.tls) == "Not authorized"
    assert fleet.connect("sensor-1", device.password, device.tls) == "Not authorized"
    new_tls = fleet.tls_files("sensor-1", new_key, renewed["certificate"])
    assert fleet.connect("sensor-1", None, new_tls) == "Success"
    assert fleet.connect("sensor-1", None, new_tls, protocol=5) == "Success"


def test_a_revoked_certificate_is_refused_and_its_client_kicked_while_the_password_keeps_no_way_in_through_it(
    fleet: Fleet, ca_service: ServiceProcess
) -> None:
    device = fleet.enroll("sensor-1", "sensor-1-secret")
    client = connected_with(fleet, device)

    revoked = http("DELETE", f"{ca_service.api}/api/users/sensor-1/certificate", token=ADMIN_TOKEN)
    assert revoked.status == 200, revoked.body
    assert disconnected_within(client, CHANGE_BOUND) <= CHANGE_BOUND
    assert fleet.connect("sensor-1", None, device.tls) == "Not authorized"
    assert fleet.connect("sensor-1", device.password, device.tls, protocol=5) == "Not authorized"


def test_the_device_agent_registers_with_a_csr_and_connects_with_its_certificate(
    fleet: Fleet, ca_service: ServiceProcess, tls_files: tuple[Path, ServerTls], tmp_path: Path
) -> None:
    """`cregistry device run --certificate` as a process: its key stays on the
    device, the operator approves its request, it connects over mutual TLS."""
    api = ca_service.api
    watcher = fleet.enroll("watcher", "watcher-secret-1")
    grant(ca_service, "watcher", "plant/#", "read")
    watching = connected_with(fleet, watcher)
    assert watching.subscribe("plant/sensor-9/heartbeat") == 1
    credentials = tmp_path / "device" / "sensor-9.json"
    agent = Device(
        tmp_path, "--host", LOOPBACK, "--port", str(fleet.broker.port), "--credentials", str(credentials),
        "--username", "sensor-9", "--register-url", api, "--certificate", "--ca-file", str(tls_files[1].ca_file),
        "--publish", "plant/%u/heartbeat", "--publish-interval", "0.5",
    )  # fmt: skip
    try:
        agent.wait_for("registration-waiting", timeout=30, status=202)
        [request] = [
            r
            for r in http("GET", f"{api}/api/client-registry/requests", token=ADMIN_TOKEN).json()["requests"]
            if r["username"] == "sensor-9"
        ]
        assert request["certificateRequest"]["keyType"] == "EC P-256"
        approved = http("POST", f"{api}/api/client-registry/requests/{request['id']}/approve", token=ADMIN_TOKEN)
        assert approved.status == 201, approved.body
        grant(ca_service, "sensor-9", "plant/sensor-9/#")
        agent.wait_for("certificate-stored", timeout=30)
        agent.wait_for("connected", timeout=30)
        message = watching.receive(10.0)
        assert message is not None and message[0] == "plant/sensor-9/heartbeat"
        for stored in ("sensor-9.key", "sensor-9.crt", "sensor-9.ca.crt"):
            assert (credentials.parent / stored).stat().st_mode & 0o077 == 0
        served = x509.load_pem_x509_certificate((credentials.parent / "sensor-9.crt").read_bytes())
        assert served.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sensor-9"
    finally:
        agent.kill()


class AgentEvents(logging.Handler):
    """The events of an in-process device agent, in order."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            self.names.append(fields["event"])

    def wait_for(self, name: str, *, after: int = 0, timeout: float = 30.0) -> int:
        """The index of the first `name` from index `after` on, polling up to `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if name in self.names[after:]:
                return self.names.index(name, after)
            time.sleep(0.05)
        raise AssertionError(f"no {name!r} within {timeout} s after #{after}: {self.names}")


def test_the_device_agent_renews_its_certificate_before_expiry_and_reconnects_with_it(
    fleet: Fleet, ca_service: ServiceProcess, tls_files: tuple[Path, ServerTls], tmp_path: Path
) -> None:
    """The agent's own loop (PahoSession, urllib) against the real service and
    broker; only its clock is moved on, to two thirds of the validity (the
    registry's validity is in days). The registry sees a real renewal: a
    valid current certificate, a CSR for a new key, 201 at once."""
    api = ca_service.api
    watcher = fleet.enroll("watcher", "watcher-secret-1")
    grant(ca_service, "watcher", "plant/#", "read")
    watching = connected_with(fleet, watcher)
    assert watching.subscribe("plant/meter-1/heartbeat") == 1
    assert http("POST", f"{api}/api/client-registry/unlock", token=ADMIN_TOKEN).status == 200

    credentials = tmp_path / "device" / "meter-1.json"
    moved_on = [0.0]
    settings = DeviceSettings(
        host=LOOPBACK, port=fleet.broker.port, credentials_path=credentials, username="meter-1", register_url=api,
        tls=TlsSettings(ca_file=tls_files[1].ca_file), certificate=True, publish_topic="plant/%u/heartbeat",
        publish_interval=0.3, max_backoff=1.0,
    )  # fmt: skip
    agent = DeviceAgent(settings, announce=lambda _text: None, clock=lambda: time.time() + moved_on[0])
    events = AgentEvents()
    logger = logging.getLogger("cregistry.device")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(events)
    running = threading.Thread(target=agent.run, daemon=True)
    running.start()
    try:
        events.wait_for("registration-waiting")
        approved = http("POST", f"{api}/api/client-registry/requests/meter-1:{pairing_of(credentials)}/approve",
                        token=ADMIN_TOKEN)  # fmt: skip
        assert approved.status == 201, approved.body
        grant(ca_service, "meter-1", "plant/meter-1/#")
        first_connected = events.wait_for("connected")
        first_serial = http("GET", f"{api}/api/users/meter-1", token=ADMIN_TOKEN).json()["certificate"]["serial"]
        old = ClientTls(tls_files[1].ca_file, tmp_path / "old.crt", tmp_path / "old.key")
        shutil.copy(credentials.with_suffix(".crt"), old.cert_file)
        shutil.copy(credentials.with_suffix(".key"), old.key_file)

        moved_on[0] = 365 * 2 / 3 * 86400 + 3600  # CREGISTRY_CERT_DAYS' default: renewal is due
        renewed = events.wait_for("certificate-renewed", after=first_connected)
        events.wait_for("connected", after=renewed)

        user = http("GET", f"{api}/api/users/meter-1", token=ADMIN_TOKEN).json()
        stored = x509.load_pem_x509_certificate(credentials.with_suffix(".crt").read_bytes())
        assert user["certificate"]["serial"] == format(stored.serial_number, "x") != first_serial
        assert not credentials.with_suffix(".next.key").exists()
        for name in ("meter-1.key", "meter-1.crt", "meter-1.ca.crt"):
            assert (credentials.parent / name).stat().st_mode & 0o077 == 0
        assert fleet.connect("meter-1", None, old) == "Not authorized"  # the old certificate is refused
        # The agent is connected with the new one (after the registry's kick, if it came later, again).
        while watching.receive(0.1) is not None:
            pass  # what it published before
        published_before = agent.published
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            message = watching.receive(1.0)
            if message is not None and json.loads(message[1])["seq"] > published_before:
                break
        else:
            raise AssertionError("no heartbeat from the agent after the renewal")
        # Once: the new certificate is due by the agent's moved-on clock too, and is not renewed in a loop.
        actions = [e["action"] for e in http("GET", f"{api}/api/audit", token=ADMIN_TOKEN).json()["entries"]]
        assert actions.count("user.certificate.renew") == 1 and events.names.count("certificate-renewed") == 1
    finally:
        agent.stop()
        running.join(15)
        logger.removeHandler(events)
        logger.setLevel(level)
    assert not running.is_alive()


def pairing_of(credentials: Path) -> str:
    stored = json.loads(credentials.read_text())
    return hashlib.sha256(f"{stored['username']}:{stored['password']}".encode()).hexdigest()[:6]
