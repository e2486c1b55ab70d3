"""MQTT clients: raw CONNECT packets, raw sessions and paho clients (3.1.1 and 5)."""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.processes import LOOPBACK


def connect_packet(username: str, password: str, client_id: str, keepalive: int = 30) -> bytes:
    """An MQTT 3.1.1 CONNECT with username, password and a clean session."""

    def text(value: str) -> bytes:
        data = value.encode()
        return len(data).to_bytes(2, "big") + data

    # Protocol "MQTT" level 4, flags: username, password, clean session.
    body = text("MQTT") + bytes([4, 0xC2]) + keepalive.to_bytes(2, "big") + text(client_id) + text(username)
    body += text(password)
    assert len(body) < 128, "one-byte remaining length only"
    return bytes([0x10, len(body)]) + body


def raw_connect(port: int, username: str, password: str, client_id: str, timeout: float = 10.0) -> tuple[bytes, float]:
    """One MQTT 3.1.1 CONNECT on a bare socket: the broker's first bytes (a
    CONNACK, or b"" when it closed the socket) and the seconds until they came.
    paho adds its own delay to noticing a closed socket; timing needs this."""
    packet = connect_packet(username, password, client_id)
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(packet)
        try:
            answer = sock.recv(4)
        except ConnectionResetError:
            answer = b""
    return answer, time.monotonic() - started


class RawSession:
    """An MQTT 3.1.1 session on a plain socket, which never reconnects by
    itself; `connack` is the CONNACK's return code, None without one."""

    def __init__(self, port: int, username: str, password: str, client_id: str) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        self.sock.sendall(connect_packet(username, password, client_id, keepalive=60))
        answer = self.sock.recv(4)
        self.connack = answer[3] if len(answer) == 4 else None

    def closed_within(self, seconds: float) -> bool:
        """True when the broker closes the connection within `seconds`."""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@dataclasses.dataclass(frozen=True)
class ClientTls:
    """What a TLS client presents: the CA it trusts for the broker's server
    certificate, and its own certificate and key (PEM files)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class MqttClient:
    """A paho-mqtt client with blocking calls, as a test wants them."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        client_id: str,
        protocol: int = 4,
        tls: ClientTls | None = None,
    ) -> None:
        """`protocol`: 4 for MQTT 3.1.1, 5 for MQTT 5; `tls`: connect over TLS
        with that client certificate (a listener with require_certificate)."""
        import paho.mqtt.client as mqtt

        self.port = port
        version = mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca_file), certfile=str(tls.cert_file), keyfile=str(tls.key_file))
        self.connack: Any = None
        self.disconnected = threading.Event()
        self.connected = threading.Event()
        self.subacks: dict[int, list[Any]] = {}
        self.suback_event = threading.Condition()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.messages.put((message.topic, message.payload))

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        self.connack = reason_code
        self.connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self.disconnected.set()

    def _on_subscribe(self, _client: Any, _userdata: Any, mid: int, reason_codes: list[Any], _properties: Any) -> None:
        with self.suback_event:
            self.subacks[mid] = reason_codes
            self.suback_event.notify_all()

    def connect(self, timeout: float = 10.0) -> str:
        """ "Success", "Not authorized", ... or "no CONNACK" when the broker closed the socket."""
        self.connected.clear()
        self.disconnected.clear()
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # A refusing CONNACK and the close that follows it can both land between the
            # two checks: the close counts as "no CONNACK" only if no CONNACK came first.
            closed = self.disconnected.is_set()
            if self.connected.wait(0.05):
                if str(self.connack) != "Success":
                    # paho's loop would try again by itself: one call, one attempt.
                    self.close()
                return str(self.connack)
            if closed:
                break
        self.client.loop_stop()
        return "no CONNACK"

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> int:
        """The SUBACK return code: the granted QoS, or 0x80 for failure."""
        _result, mid = self.client.subscribe(topic_filter, qos)
        deadline = time.monotonic() + timeout
        with self.suback_event:
            while mid not in self.subacks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no SUBACK")
                self.suback_event.wait(remaining)
        code = self.subacks[mid][0]
        return 0x80 if code.is_failure else int(code.value)

    def unsubscribe(self, topic_filter: str, timeout: float = 10.0) -> None:
        unsubscribed = threading.Event()
        self.client.on_unsubscribe = lambda *_args: unsubscribed.set()
        self.client.unsubscribe(topic_filter)
        if not unsubscribed.wait(timeout):
            raise TimeoutError("no UNSUBACK")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos).wait_for_publish(10)

    def receive(self, timeout: float) -> tuple[str, bytes] | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def mqtt_clients(port: int) -> Iterator[Callable[[str | None, str | None, str], MqttClient]]:
    """A maker of MqttClients for the broker on `port`: make(username,
    password, client_id); every client made is closed at the end."""
    made: list[MqttClient] = []

    def make(username: str | None, password: str | None, client_id: str) -> MqttClient:
        client = MqttClient(port, username, password, client_id)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.close()


# -- Redis Sentinel (the failover tier) --------------------------------------
