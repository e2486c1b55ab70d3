"""`cregistry device` as a real process: against the real `cregistry serve`
over REST, through a real mosquitto with cregistry's plugin (tests that use
the `mosquitto` fixture), and against a plain mosquitto without authentication
for what needs no registry (reconnecting, stopping)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cregistry.feed_follower import FRESH_SECONDS
from cregistry.passwords import pairing_id
from harness.mosquitto import MosquittoProcess, render_mosquitto_conf
from harness.mqtt import MqttClient
from harness.processes import REPO, free_port
from harness.redis_server import RedisProcess
from harness.service import ServiceProcess, run_cli
from tests.integration.conftest import finish_broker, start_plugin_broker

# The plugin never caches a refused CONNECT, and a change reaches it within
# 2 s: after an approval or a grant the device gets in (or its publishes
# pass) within one backoff (--max-backoff 1) plus that, plus a margin.
FEED_WAIT = 6.0


class Device:
    """`cregistry device run` as an operator starts it on a device."""

    def __init__(self, workdir: Path, *args: str, log_format: str = "json") -> None:
        self.stdout_path = workdir / f"device-{time.monotonic_ns()}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        command = [sys.executable, "-m", "cregistry", "device", "run", "--max-backoff", "1", "--log-format", log_format]
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [*command, *args], stdout=stdout, stderr=stderr, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr().splitlines() if line.startswith("{")]

    def wait_for(self, event: str, timeout: float = 15.0, after: int = 0, **fields: Any) -> dict[str, Any]:
        """The first `event` (with these fields) among the events after the first `after`."""
        deadline = time.monotonic() + timeout
        while True:
            for found in self.events()[after:]:
                if found.get("event") == event and all(found.get(k) == v for k, v in fields.items()):
                    return found
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {event} {fields} within {timeout} s; exit {self.process.poll()}\n{self.stderr()}")
            time.sleep(0.05)

    def announced(self) -> tuple[str, str]:
        """Username and pairing ID as the block on stdout shows them."""
        text = self.stdout()
        username = re.search(r"^  username:   (\S+)$", text, re.M)
        pairing = re.search(r"^  pairing ID: ([0-9a-f]{6})$", text, re.M)
        assert username and pairing, text
        return username.group(1), pairing.group(1)

    def stop(self, sig: int = signal.SIGTERM, within: float = 5.0) -> int:
        self.process.send_signal(sig)
        return self.process.wait(within)

    def wait_exit(self, within: float = 15.0) -> int:
        return self.process.wait(within)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[Callable[..., Device]]:
    started: list[Device] = []

    def start(*args: str, log_format: str = "json") -> Device:
        started.append(Device(tmp_path, *args, log_format=log_format))
        return started[-1]

    yield start
    for device in started:
        device.kill()


@pytest.fixture
def plain_broker() -> Iterator[MosquittoProcess]:
    """A mosquitto without authentication, for the MQTT side alone."""
    port = free_port()
    broker = MosquittoProcess(
        render_mosquitto_conf(port=port, plugin=Path("/nonexistent"), cregistry_broker_port=0, no_auth=True), port
    )
    broker.start()
    yield broker
    broker.cleanup()


def requests_of(cregistry) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    result = cregistry("requests", "--json")
    assert result.returncode == 0, result.stderr
    requests: list[dict[str, Any]] = json.loads(result.stdout)["requests"]
    return requests


def wait_for_requests(cregistry, count: int, timeout: float = FEED_WAIT) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = requests_of(cregistry)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def stored(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# -- REST registration against the real service ---------------------------------------
def test_rest_registration_locked_unlocked_approved_connected(  # type: ignore[no-untyped-def]
    service: ServiceProcess, plain_broker: MosquittoProcess, cregistry, devices, tmp_path: Path
) -> None:
    credentials = tmp_path / "sensor.json"
    device = devices("--host", "127.0.0.1", "--port", str(plain_broker.port), "--credentials", str(credentials),
                     "--register-url", service.api)  # fmt: skip
    device.wait_for("registration-waiting", status=423)
    username, pairing = device.announced()
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert requests_of(cregistry) == []  # locked: nothing recorded

    assert cregistry("unlock").returncode == 0
    device.wait_for("registration-waiting", status=202)
    [request] = requests_of(cregistry)
    assert (request["username"], request["pairingId"], request["source"]) == (username, pairing, "rest")
    assert request["clientId"] == username

    shown = run_cli("device", "pairing-id", "--credentials", str(credentials), env={})
    assert (shown.returncode, shown.stdout) == (0, f"{pairing}\n")
    shown = run_cli("device", "pairing-id", "--credentials", str(credentials), "--json", env={})
    assert json.loads(shown.stdout) == {"username": username, "pairingId": pairing}

    approved = cregistry("approve", username, "--pairing-id", pairing)
    assert approved.returncode == 0, approved.stderr
    device.wait_for("registration-granted", status=201)
    device.wait_for("connected", username=username)
    assert device.stop() == 0
    assert device.events()[-1]["event"] == "stopped"
    assert stored(credentials)["lastAccepted"] is not None
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    password = stored(credentials)["password"]
    assert password not in device.stdout() and password not in device.stderr()


def test_rest_username_taken_stops_with_what_to_do(  # type: ignore[no-untyped-def]
    service: ServiceProcess, cregistry, devices, tmp_path: Path
) -> None:
    assert cregistry("user", "add", "taken-7", "--password-stdin", stdin="someone-elses-password\n").returncode == 0
    cregistry("unlock")
    device = devices("--host", "127.0.0.1", "--port", str(free_port()), "--credentials", str(tmp_path / "d.json"),
                     "--register-url", service.api, "--username", "taken-7")  # fmt: skip
    assert device.wait_exit() == 4
    errors = [line for line in device.stderr().splitlines() if line.startswith("Error: ")]
    assert errors == [
        "Error: the username taken-7 is taken: it is registered with other credentials. The operator can delete that"
        " user (`cregistry user delete taken-7`), or start this device with another --username or another"
        " credentials file"
    ]
    assert requests_of(cregistry) == []


def test_two_devices_on_one_host_register_separately(  # type: ignore[no-untyped-def]
    service: ServiceProcess, cregistry, devices, tmp_path: Path
) -> None:
    cregistry("unlock")
    first, second = (
        devices("--host", "127.0.0.1", "--port", str(free_port()), "--credentials", str(tmp_path / name),
                "--register-url", service.api)
        for name in ("first.json", "second.json")
    )  # fmt: skip
    first.wait_for("registration-waiting", status=202)
    second.wait_for("registration-waiting", status=202)
    announced = {first.announced(), second.announced()}
    assert len({username for username, _ in announced}) == 2
    requests = requests_of(cregistry)
    assert {(r["username"], r["pairingId"]) for r in requests} == announced
    # Both are named after this host, with different random suffixes.
    prefixes = {username.rsplit("-", 1)[0] for username, _ in announced}
    assert len(prefixes) == 1
    assert first.stop() == 0 and second.stop() == 0


def test_restart_reuses_the_credentials_and_the_request(  # type: ignore[no-untyped-def]
    service: ServiceProcess, plain_broker: MosquittoProcess, cregistry, devices, tmp_path: Path
) -> None:
    credentials = tmp_path / "boiler.json"
    args = ("--host", "127.0.0.1", "--port", str(plain_broker.port), "--credentials", str(credentials),
            "--register-url", service.api)  # fmt: skip
    cregistry("unlock")
    first = devices(*args)
    first.wait_for("registration-waiting", status=202)
    assert first.stop() == 0
    [request] = requests_of(cregistry)

    second = devices(*args)
    second.wait_for("credentials-loaded")
    second.wait_for("registration-waiting", status=202)
    assert second.announced() == first.announced()  # still waiting: the block is shown again, unchanged
    [again] = requests_of(cregistry)
    assert (again["id"], again["firstSeen"]) == (request["id"], request["firstSeen"])
    assert again["attempts"] > request["attempts"]

    username, pairing = first.announced()
    assert cregistry("approve", username, "--pairing-id", pairing).returncode == 0
    second.wait_for("connected")
    assert second.stop() == 0

    third = devices(*args)
    loaded = third.wait_for("credentials-loaded")
    assert "accepted before" in loaded["message"]
    third.wait_for("connected", username=username)
    assert third.stdout() == ""  # nothing for the operator to do
    assert not any(e["event"].startswith("registration") for e in third.events())
    assert requests_of(cregistry) == []
    assert third.stop() == 0


def test_pairing_id_command_errors(tmp_path: Path) -> None:
    missing = run_cli("device", "pairing-id", "--credentials", str(tmp_path / "absent.json"), env={})
    assert (missing.returncode, missing.stderr) == (3, f"Error: no credentials file at {tmp_path / 'absent.json'}\n")
    (tmp_path / "broken.json").write_text('{"username": "ok-name"}')
    broken = run_cli("device", "pairing-id", "--credentials", str(tmp_path / "broken.json"), env={})
    assert broken.returncode == 2
    assert broken.stderr.startswith(f"Error: {tmp_path / 'broken.json'} is not a valid credentials file")


# -- through the real broker with cregistry's plugin ------------------------------------------
def test_mqtt_registration_then_publishing(  # type: ignore[no-untyped-def]
    mosquitto: MosquittoProcess, cregistry, devices, tmp_path: Path
) -> None:
    device = devices("--host", "127.0.0.1", "--port", str(mosquitto.port), "--credentials", str(tmp_path / "d.json"),
                     "--publish", "devices/%u/heartbeat", "--publish-interval", "0.5")  # fmt: skip
    refused = device.wait_for("not-accepted-yet")
    assert refused["reason"] == "Not authorized"
    assert requests_of(cregistry) == []  # locked: the attempts are not recorded

    cregistry("unlock")
    [request] = wait_for_requests(cregistry, 1)
    username, pairing = device.announced()
    assert (request["username"], request["pairingId"], request["source"]) == (username, pairing, "mqtt")
    assert cregistry("approve", username, "--pairing-id", pairing).returncode == 0
    device.wait_for("connected", timeout=FEED_WAIT, username=username)

    assert cregistry("grant", username, "devices/%u/#", "write").returncode == 0
    cregistry("user", "add", "watcher-1", "--password-stdin", stdin="watcher-secret\n")
    cregistry("grant", "watcher-1", "devices/#", "read")
    watcher = MqttClient(mosquitto.port, "watcher-1", "watcher-secret", "watcher-1")
    try:
        assert watcher.connect() == "Success"
        assert watcher.subscribe(f"devices/{username}/heartbeat") == 1
        # The device's first publishes were denied; the grant reached the broker since.
        received = watcher.receive(FEED_WAIT)
        assert received is not None
        topic, payload = received
        assert topic == f"devices/{username}/heartbeat"
        message = json.loads(payload)
        assert set(message) == {"seq", "time"} and message["seq"] >= 1
    finally:
        watcher.close()

    started = time.monotonic()
    assert device.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 3
    assert device.events()[-1]["event"] == "stopped"


def test_mqtt_restart_reuses_and_a_deleted_user_is_reported(  # type: ignore[no-untyped-def]
    mosquitto: MosquittoProcess, cregistry, devices, tmp_path: Path
) -> None:
    credentials = tmp_path / "d.json"
    args = ("--host", "127.0.0.1", "--port", str(mosquitto.port), "--credentials", str(credentials))
    cregistry("unlock")
    first = devices(*args)
    [request] = wait_for_requests(cregistry, 1)
    cregistry("approve", request["username"], "--pairing-id", request["pairingId"])
    first.wait_for("connected", timeout=FEED_WAIT)
    assert first.stop() == 0

    second = devices(*args)
    second.wait_for("connected")
    assert second.stdout() == ""
    assert not any(e["event"] == "not-accepted-yet" for e in second.events())
    assert requests_of(cregistry) == []

    # The operator deletes the user: the broker disconnects the device, which
    # says so instead of quietly starting over.
    cregistry("lock")
    seen = len(second.events())
    assert cregistry("user", "delete", request["username"]).returncode == 0
    second.wait_for("connection-lost", timeout=FEED_WAIT, after=seen)
    second.wait_for("refused-after-accepted", timeout=FEED_WAIT, after=seen)
    assert second.stop() == 0
    third = devices(*args, "--exit-on-refusal")
    assert third.wait_exit() == 5
    warning = third.wait_for("refused-after-accepted")
    assert warning["message"].startswith("the broker refused credentials that were accepted before")
    assert f"approve {request['username']} with pairing ID {request['pairingId']} again" in warning["message"]
    assert "Error: the broker refused credentials that were accepted before" in third.stderr()
    assert third.stdout() == ""
    assert requests_of(cregistry) == []
    assert stored(credentials)["username"] == request["username"]
    assert pairing_id(request["username"], stored(credentials)["password"]) == request["pairingId"]


def test_an_outage_is_retried_and_not_taken_for_a_refusal(  # type: ignore[no-untyped-def]
    mosquitto: MosquittoProcess, service: ServiceProcess, redis_process: RedisProcess, cregistry_plugin: Path,
    cregistry, devices, tmp_path: Path,
) -> None:  # fmt: skip
    """When cregistry cannot answer, the plugin makes mosquitto close the socket
    without a CONNACK; the device treats that as an outage (retry with backoff),
    not as refused credentials, and gets in once cregistry answers again."""
    credentials = tmp_path / "d.json"
    cregistry("unlock")
    first = devices("--host", "127.0.0.1", "--port", str(mosquitto.port), "--credentials", str(credentials))
    [request] = wait_for_requests(cregistry, 1)
    cregistry("approve", request["username"], "--pairing-id", request["pairingId"])
    first.wait_for("connected", timeout=FEED_WAIT)
    assert first.stop() == 0

    fresh = start_plugin_broker(service, cregistry_plugin)  # nothing cached there
    try:
        redis_process.stop()
        # The service's workers answer what they know from memory while their last read of the
        # change feed is recent (docs/faults.md); past that, cregistry cannot answer.
        time.sleep(FRESH_SECONDS + 0.5)
        try:
            device = devices("--host", "127.0.0.1", "--port", str(fresh.port), "--credentials", str(credentials))
            failed = device.wait_for("connect-failed")
            assert "closed the connection" in failed["reason"], failed
            device.wait_for("connect-failed", after=device.events().index(failed) + 1)  # retried
        finally:
            redis_process.start()
        device.wait_for("connected", timeout=FEED_WAIT)
        assert not any(e["event"] in ("refused-after-accepted", "not-accepted-yet") for e in device.events())
        assert device.stop() == 0
    finally:
        finish_broker(fresh)


# -- MQTT alone: a plain broker without authentication -----------------------------------
def test_reconnects_after_a_broker_restart(plain_broker: MosquittoProcess, devices, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    device = devices("--host", "127.0.0.1", "--port", str(plain_broker.port), "--credentials", str(tmp_path / "d.json"),
                     "--publish", "beats/%u", "--publish-interval", "0.3")  # fmt: skip
    device.wait_for("connected")
    seen_before = _one_heartbeat(plain_broker.port)

    plain_broker.stop()
    lost = device.wait_for("connection-lost")
    assert lost["reason"] == "The connection was lost"
    device.wait_for("connect-failed")  # retrying while the broker is down
    after = len(device.events())  # no connection can follow before the restart
    plain_broker.start()
    device.wait_for("connected", after=after)
    seen_after = _one_heartbeat(plain_broker.port)
    assert seen_after["seq"] > seen_before["seq"]
    assert device.stop() == 0


def _one_heartbeat(port: int) -> dict[str, Any]:
    watcher = MqttClient(port, None, None, f"watcher-{time.monotonic_ns()}")
    try:
        assert watcher.connect() == "Success"
        assert watcher.subscribe("beats/#") == 1
        received = watcher.receive(5.0)
        assert received is not None
        message: dict[str, Any] = json.loads(received[1])
        return message
    finally:
        watcher.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_connected_device_cleanly(  # type: ignore[no-untyped-def]
    plain_broker: MosquittoProcess, devices, tmp_path: Path, sig: int
) -> None:
    device = devices("--host", "127.0.0.1", "--port", str(plain_broker.port), "--credentials", str(tmp_path / "d.json"),
                     log_format="text")  # fmt: skip
    deadline = time.monotonic() + 15
    while " INFO connected as " not in device.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    username = stored(tmp_path / "d.json")["username"]
    line = rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO connected as {username} to 127\.0\.0\.1:\d+"
    assert any(re.fullmatch(line, text) for text in device.stderr().splitlines()), device.stderr()
    started = time.monotonic()
    assert device.stop(sig) == 0
    assert time.monotonic() - started < 3
    assert device.stderr().splitlines()[-1].endswith(" INFO stopped")


def test_sigterm_stops_a_device_that_is_still_retrying(devices, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    device = devices("--host", "127.0.0.1", "--port", str(free_port()), "--credentials", str(tmp_path / "d.json"))
    failed = device.wait_for("connect-failed")
    assert "ConnectionRefusedError" in failed["message"]
    started = time.monotonic()
    assert device.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 3
    assert device.events()[-1]["event"] == "stopped"


def test_tls_verifies_the_broker_with_the_given_ca(devices, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs = _make_certificates()
    try:
        port = free_port()
        conf = render_mosquitto_conf(port=port, plugin=Path("/nonexistent"), cregistry_broker_port=0, no_auth=True)
        broker = MosquittoProcess(conf + f"certfile {certs / 'server.pem'}\nkeyfile {certs / 'server.key'}\n", port)
        broker.start()
        try:
            common = ("--host", "localhost", "--port", str(port))
            trusted = devices(*common, "--credentials", str(tmp_path / "a.json"), "--ca-file", str(certs / "ca.pem"))
            trusted.wait_for("connected")
            stranger = devices(
                *common, "--credentials", str(tmp_path / "b.json"), "--ca-file", str(certs / "other.pem")
            )
            assert "CERTIFICATE_VERIFY_FAILED" in stranger.wait_for("connect-failed")["reason"]
            insecure = devices(*common, "--credentials", str(tmp_path / "c.json"), "--tls", "--insecure")
            insecure.wait_for("connected")
            assert trusted.stop() == 0 and stranger.stop() == 0 and insecure.stop() == 0
        finally:
            broker.cleanup()
    finally:
        shutil.rmtree(certs, ignore_errors=True)


def _make_certificates() -> Path:
    """A CA, a server certificate for localhost signed by it, and an unrelated
    CA; in a directory mosquitto can read after dropping root privileges."""
    directory = Path(tempfile.mkdtemp(prefix="cregistry-tls-"))
    directory.chmod(0o755)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, subject in (("ca", "/CN=cregistry test CA"), ("other", "/CN=unrelated CA")):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
                "-days", "2", "-subj", subject)  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    for path in directory.iterdir():
        path.chmod(0o644)
    return directory
