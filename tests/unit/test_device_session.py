"""How `cregistry device` reads a broker's answer to its CONNECT (PahoSession):
a CONNACK "not authorised" means refused credentials; a socket closed
without any CONNACK is an outage (what cregistry's plugin makes mosquitto do
when cregistry cannot answer), retried with backoff and never reported as
a refusal, even by a device that was accepted before."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cregistry.device.credential_file import CredentialStore
from cregistry.device.credentials import Credentials
from cregistry.device.mqtt import ACCEPTED, FAILED, REFUSED, ConnectResult, PahoSession

CREDENTIALS = Credentials(
    username="sensor-1", password="password-of-sensor-1", client_id="sensor-1", created="2027-01-10T12:00:00Z"
)


class ScriptedBroker:
    """A TCP server that reads one CONNECT and then answers `reply` (b"": just close)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.connects: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                self.connects.append(connection.recv(65536))
                if self.reply:
                    connection.sendall(self.reply)
                    connection.recv(65536)  # paho's DISCONNECT, or the close

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[ScriptedBroker]:
    scripted = ScriptedBroker(request.param)
    yield scripted
    scripted.close()


def connack(return_code: int) -> bytes:
    return bytes([0x20, 0x02, 0x00, return_code])


@pytest.mark.parametrize(
    ("broker", "outcome", "reason"),
    [
        (connack(0), ACCEPTED, "Success"),
        (connack(5), REFUSED, "Not authorized"),
        (connack(4), REFUSED, "Bad user name or password"),
        (connack(3), FAILED, "Server unavailable"),  # the broker's own trouble, not the credentials
        (b"", FAILED, "the broker closed the connection"),
    ],
    indirect=["broker"],
    ids=["accepted", "not-authorised", "bad-credentials", "server-unavailable", "closed-without-connack"],
)
def test_a_connack_refusal_is_told_from_a_closed_socket(broker: ScriptedBroker, outcome: str, reason: str) -> None:
    session = PahoSession("127.0.0.1", broker.port, CREDENTIALS, "sensor-1", None)
    try:
        result = session.connect()
    finally:
        session.close()
    assert result.outcome == outcome, result
    assert result.reason.startswith(reason), result
    assert broker.connects and broker.connects[0][:1] == b"\x10"  # it did send a CONNECT


def test_an_outage_after_acceptance_is_retried_not_reported_as_a_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.unit.test_device import Harness, _credentials, events

    store = CredentialStore(tmp_path / "device.json")
    store.mark_accepted(store.load_or_create(_credentials)[0], "2027-01-10T12:00:00Z")
    closed = ConnectResult(FAILED, "the broker closed the connection (no CONNACK)")
    harness = Harness(tmp_path, closed, closed, closed, max_waits=3, exit_on_refusal=True)
    harness.agent.run()  # --exit-on-refusal: an outage must not end the device
    assert events(caplog).count("connect-failed") == 3
    assert "refused-after-accepted" not in events(caplog)
    assert len(harness.waits) == 3 and harness.waits[0] <= harness.waits[-1] * 4  # backoff, not a busy loop
