"""The broker listener as `serve` runs it (web/broker_asgi.py), driven as
uvicorn drives it (and as WSGI, as the unit tests' Flask client drives it):
the check routes' answers, Flask for everything else, one clear error for
bad input, 503 at the deadline."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient

from cregistry.config import Config
from cregistry.web import create_app
from cregistry.web.broker_asgi import BrokerListener, ListenerAsWsgi

from .conftest import run_on_own_loop

USERNAME = "sensor-1"
PASSWORD = "secret12-long-enough"


@pytest.fixture
def listener(config: Config, connection: fakeredis.FakeRedis) -> Iterator[BrokerListener]:
    app = create_app(config, listener="broker", connection=connection, follow_changes=True)
    domain = app.extensions["cregistry"].domain
    domain.users.add(USERNAME, PASSWORD)
    domain.users.grant(USERNAME, "a/#", "write")
    assert isinstance(app.wsgi_app, ListenerAsWsgi)  # the Flask app's WSGI is this listener too
    listener = app.wsgi_app.listener
    yield listener
    listener.pool.shutdown()


def call(
    app: BrokerListener, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async def run() -> tuple[int, dict[str, Any]]:
        incoming = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "server": ("127.0.0.1", 8081),
            "client": ("127.0.0.1", 40000),
        }
        await app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return status, json.loads(data)

    return run_on_own_loop(run)


JSON = {"Content-Type": "application/json"}


def test_checks_answer_as_go_auth_expects(listener: BrokerListener) -> None:
    acl = {"username": USERNAME, "clientid": "c", "topic": "a/b", "acc": 2}
    assert call(listener, "POST", "/mqtt/acl", json.dumps(acl).encode(), JSON) == (200, {"ok": True, "error": ""})
    acl["topic"] = "b/c"
    assert call(listener, "POST", "/mqtt/acl", json.dumps(acl).encode(), JSON) == (
        403,
        {"ok": False, "error": "no permission for this topic"},
    )
    form = f"username={USERNAME}&password={PASSWORD}&clientid=c".encode()
    status, body = call(listener, "POST", "/mqtt/user", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body) == (200, {"ok": True, "error": ""})


def test_bad_input_gets_one_clear_error(listener: BrokerListener) -> None:
    status, body = call(listener, "POST", "/mqtt/acl", b"{not json", JSON)
    assert (status, body["error"]) == (400, "the body must be JSON")
    status, body = call(listener, "POST", "/mqtt/acl", json.dumps({"username": USERNAME}).encode(), JSON)
    assert (status, body["error"]) == (400, "clientid is missing or not a string")
    big = b'{"username": "' + b"x" * (listener.checks.max_body_bytes + 1) + b'"}'
    assert call(listener, "POST", "/mqtt/acl", big, JSON)[0] == 413


def test_other_routes_and_methods_are_flasks(listener: BrokerListener) -> None:
    assert call(listener, "GET", "/healthz")[0] == 200
    status, body = call(listener, "GET", "/mqtt/changes")
    assert status == 200 and body["position"]
    assert call(listener, "DELETE", "/mqtt/acl")[0] == 405


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_a_check_path_with_another_method_is_405_as_under_wsgi(listener: BrokerListener, method: str) -> None:
    assert call(listener, method, "/mqtt/user") == (
        405,
        {"ok": False, "error": "The method is not allowed for the requested URL."},
    )


def test_a_check_past_the_deadline_is_503(listener: BrokerListener, monkeypatch: pytest.MonkeyPatch) -> None:
    listener.deadline_seconds = 0.2

    def stalled(*_args: object) -> Any:
        time.sleep(1.0)
        raise AssertionError("answered after the deadline")

    monkeypatch.setattr(listener.checks, "answer", stalled)
    started = time.monotonic()
    status, body = call(
        listener,
        "POST",
        "/mqtt/acl",
        json.dumps({"username": USERNAME, "clientid": "c", "topic": "a", "acc": 2}).encode(),
        JSON,
    )
    assert status == 503 and "no answer within" in body["error"]
    assert time.monotonic() - started < 0.9


def test_a_known_devices_connect_without_a_token_reads_its_keys_once(
    broker: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token check and the bcrypt check after it decide from one read of
    the user's keys (verification.PasswordVerifier.read), not one read each."""
    domain = broker.application.extensions["cregistry"].domain
    domain.users.add(USERNAME, PASSWORD)  # known, and no verified token yet
    round_trips: list[bytes] = []
    connection_class = type(domain.redis.connection_pool.get_connection())
    send = connection_class.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        round_trips.append(command if isinstance(command, bytes) else b"".join(command))
        send(self, command, check_health)

    monkeypatch.setattr(connection_class, "send_packed_command", counting)
    form = {"username": USERNAME, "password": PASSWORD, "clientid": "c"}
    assert broker.post("/mqtt/user", data=form).status_code == 200  # bcrypt, then the token is written
    assert len([trip for trip in round_trips if b"passwordHash" in trip]) == 1
    round_trips.clear()
    assert broker.post("/mqtt/user", data=form).status_code == 200  # the token now: one round trip
    assert len(round_trips) == 1


def test_a_connect_runs_start_to_finish_on_one_pool_thread(
    listener: BrokerListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread waits on another: the token check and the bcrypt check after
    it run on the one listener pool thread the request was handed to."""
    verifier = listener.checks.authorizer.verifier
    threads: list[str] = []

    def recording(check: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            threads.append(threading.current_thread().name)
            return check(*args, **kwargs)

        return run

    monkeypatch.setattr(verifier, "verify_by_token", recording(verifier.verify_by_token))
    monkeypatch.setattr(verifier, "verify", recording(verifier.verify))
    form = f"username={USERNAME}&password={PASSWORD}&clientid=c".encode()
    status, _ = call(listener, "POST", "/mqtt/user", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert len(threads) == 2 and len(set(threads)) == 1 and threads[0].startswith("broker"), threads
