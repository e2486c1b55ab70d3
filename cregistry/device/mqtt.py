"""The connection to the broker: what the agent needs of it (BrokerSession)
and the paho-mqtt client that provides it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

from cregistry.device.credentials import Credentials
from cregistry.device.logs import describe_os_error
from cregistry.device.tls import TlsSettings

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
KEEPALIVE_SECONDS = 30
CONNACK_TIMEOUT = 10.0
# How long the connected loop blocks at most: the latency of a stop request.
PUMP_SECONDS = 0.2

# MQTT 3.1.1 CONNACK codes 4 and 5, as paho names them: "not accepted (yet)".
REFUSAL_REASONS = frozenset({"Not authorized", "Bad user name or password"})

ACCEPTED, REFUSED, FAILED = "accepted", "refused", "failed"


@dataclasses.dataclass(frozen=True)
class ConnectResult:
    outcome: str  # ACCEPTED, REFUSED (credentials not accepted) or FAILED (network, broker)
    reason: str = ""


class BrokerSession(Protocol):
    """One MQTT connection, driven from the agent's own loop."""

    def connect(self) -> ConnectResult: ...

    def pump(self, timeout: float) -> bool:
        """Do the network work for up to `timeout` seconds; False once the connection is gone."""
        ...

    def publish(self, topic: str, payload: bytes) -> None: ...

    def close(self) -> None: ...

    @property
    def lost_reason(self) -> str: ...


class PahoSession:
    """A fresh paho-mqtt client per connection (MQTT 3.1.1, clean session),
    pumped with loop() from the caller's thread: no paho thread, no paho
    automatic reconnect, so the agent alone decides when to try again."""

    def __init__(self, host: str, port: int, credentials: Credentials, client_id: str, tls: TlsSettings | None) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.host = host
        self.port = port
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        self.client.username_pw_set(credentials.username, credentials.password)
        if tls is not None:
            self.client.tls_set_context(tls.context())
            if tls.insecure:
                self.client.tls_insecure_set(True)
        self._connack: str | None = None
        self._lost_reason = ""
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        self._connack = str(reason_code)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        self._lost_reason = str(reason_code)

    @property
    def lost_reason(self) -> str:
        return self._lost_reason

    def connect(self) -> ConnectResult:
        try:
            self.client.connect(self.host, self.port, keepalive=KEEPALIVE_SECONDS)
        except OSError as error:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            return ConnectResult(FAILED, describe_os_error(error))
        deadline = time.monotonic() + CONNACK_TIMEOUT
        while self._connack is None and time.monotonic() < deadline:
            if self.client.loop(PUMP_SECONDS) != self._mqtt.MQTT_ERR_SUCCESS and self._connack is None:
                self.close()
                return ConnectResult(FAILED, f"the broker closed the connection ({self._lost_reason or 'no CONNACK'})")
        if self._connack is None:
            self.close()
            return ConnectResult(FAILED, f"no CONNACK within {CONNACK_TIMEOUT:g} s")
        if self._connack == "Success":
            return ConnectResult(ACCEPTED, self._connack)
        self.close()
        return ConnectResult(REFUSED if self._connack in REFUSAL_REASONS else FAILED, self._connack)

    def pump(self, timeout: float) -> bool:
        code = self.client.loop(timeout)
        if code != self._mqtt.MQTT_ERR_SUCCESS:
            # paho's own words ("The connection was lost."), clearer than its reason code here
            self._lost_reason = self._mqtt.error_string(code).rstrip(".")
            return False
        return True

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        if self.client.socket() is None:
            return
        self.client.disconnect()
        deadline = time.monotonic() + 1.0
        # paho closes the socket once DISCONNECT is written.
        while self.client.socket() is not None and time.monotonic() < deadline:
            if self.client.loop(0.05) != self._mqtt.MQTT_ERR_SUCCESS:
                break
