"""What the plugin takes for cregistry's answer: a 200 grants only with the
service's own body ({"ok": true, ...}); a plugin_opt_url that reaches some
other server answering 200 to everything grants nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.mosquitto import PluginMosquittoProcess
from harness.mqtt import MqttClient, raw_connect
from harness.service import run_cli
from tests.integration.conftest import finish_broker

pytestmark = pytest.mark.broker


class CatchAll:
    """A web server answering 200 with an HTML page to every request."""

    def __init__(self) -> None:
        self.requests = 0
        catch_all = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                catch_all.requests += 1
                data = b"<html><body>It works!</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = answer  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def catch_all_broker(cregistry_plugin: Path) -> Iterator[tuple[PluginMosquittoProcess, CatchAll]]:
    server = CatchAll()
    broker = PluginMosquittoProcess(server.port, cregistry_plugin)
    broker.start()
    yield broker, server
    finish_broker(broker)
    server.close()


def test_a_catch_all_200_grants_nothing(catch_all_broker) -> None:  # type: ignore[no-untyped-def]
    broker, server = catch_all_broker
    answer, _seconds = raw_connect(broker.port, "anyone", "any-password", "any-client")
    assert answer == b""  # a fault: closed without a CONNACK, never accepted
    assert server.requests >= 1  # it was asked, and its 200 was not taken for a grant
    client = MqttClient(broker.port, "anyone", "any-password", "any-client-5")
    assert client.connect() != "Success"
    client.close()
    assert "HTTP 200 without" in broker.output()


def test_a_slow_check_arrives_as_a_503_not_as_a_timeout(mosquitto, cli_env) -> None:  # type: ignore[no-untyped-def]
    """A password hashed at bcrypt cost 15 takes the service longer to check
    than its deadline (budget.py): it gives up and says so, 503, before the
    plugin's own timeout, so the plugin logs cregistry's answer, not a timeout.
    (With both at 1.5 s, the plugin timed out.)"""
    result = run_cli(
        "user",
        "add",
        "slow-1",
        "--password-stdin",
        env={**cli_env, "CREGISTRY_BCRYPT_COST": "15"},
        stdin="slow-secret\n",
    )
    assert result.returncode == 0, result.stderr
    answer, seconds = raw_connect(mosquitto.port, "slow-1", "slow-secret", "slow-client")
    assert answer == b"" and seconds < 2.0  # closed without a CONNACK, within the bound
    output = mosquitto.output()
    assert "service not answering" in output and "(HTTP 503)" in output
    assert "timed out" not in output
