"""/healthz and /readyz on both listeners, and how every route behaves when
Redis is down, stalled or still loading its data (a 503 within 2 s)."""

from __future__ import annotations

import collections
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

import cregistry.cli
from cregistry.config import Config
from cregistry.connections import connect
from cregistry.web import create_app

from .conftest import ADMIN_TOKEN

LISTENERS = ["api", "broker"]
LOADING_REPLY = b"-LOADING Redis is loading the dataset in memory\r\n"
# What a real redis-server 7 answers while it loads its data (checked against
# one): WATCH, MULTI and the like are allowed, everything that reads or writes
# data is refused, and EXEC aborts a transaction whose commands were refused.
ALLOWED_WHILE_LOADING = {b"WATCH", b"UNWATCH", b"MULTI", b"DISCARD", b"CLIENT"}
BROKER_CHECKS = [
    ("/mqtt/user", {"username": "sensor-1", "password": "secret1", "clientid": "c"}),
    ("/mqtt/superuser", {"username": "sensor-1"}),
    ("/mqtt/acl", {"username": "sensor-1", "clientid": "c", "topic": "a/b", "acc": 1}),
]


class FakeRespServer:
    """A TCP server speaking just enough RESP to be a broken Redis: `reply`
    maps each command's name to the bytes to answer (None: never answer)."""

    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self.reply = reply
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.connections: list[socket.socket] = []
        self.commands: collections.Counter[bytes] = collections.Counter()
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        while not self.stopped.is_set():
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while (parsed := _one_command(buffer)) is not None:
                name, buffer = parsed
                self.commands[name] += 1
                answer = self.reply(name)
                if answer is not None:
                    try:
                        conn.sendall(answer)
                    except OSError:
                        return

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


def _one_command(buffer: bytes) -> tuple[bytes, bytes] | None:
    """The upper-cased name of the first complete RESP array command and the
    rest of the buffer, or None if the command is incomplete."""
    if not buffer.startswith(b"*"):
        return None
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    position = end + 2
    arguments = []
    for _ in range(int(buffer[1:end])):
        end = buffer.find(b"\r\n", position)
        if end < 0 or buffer[position : position + 1] != b"$":
            return None
        length = int(buffer[position + 1 : end])
        arguments.append(buffer[end + 2 : end + 2 + length])
        position = end + 2 + length + 2
        if position > len(buffer):
            return None
    return arguments[0].upper(), buffer[position:]


def loading_reply(name: bytes) -> bytes:
    if name == b"HELLO":  # redis-py opens every connection with HELLO 3
        return b"%1\r\n$5\r\nproto\r\n:3\r\n"
    if name in ALLOWED_WHILE_LOADING:
        return b"+OK\r\n"
    if name == b"EXEC":
        return b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    return LOADING_REPLY


@pytest.fixture
def loading_redis() -> Iterator[FakeRespServer]:
    server = FakeRespServer(loading_reply)
    yield server
    server.close()


@pytest.fixture
def stalled_redis() -> Iterator[FakeRespServer]:
    server = FakeRespServer(lambda _name: None)
    yield server
    server.close()


def app_on(url: str, listener: str, redis_timeout: float = 0.5) -> FlaskClient:
    config = Config(bcrypt_cost=4, admin_token=ADMIN_TOKEN, redis_timeout=redis_timeout)
    return create_app(config, listener=listener, connection=connect(url, redis_timeout)).test_client()


def timed_get(client: FlaskClient, path: str) -> tuple[int, dict[str, object], float]:
    started = time.monotonic()
    response = client.get(path)
    return response.status_code, response.get_json(), time.monotonic() - started


# -- healthy --------------------------------------------------------------------
@pytest.mark.parametrize("listener", LISTENERS)
def test_healthz_and_readyz_when_redis_answers(
    listener: str, config: Config, connection: fakeredis.FakeRedis, request: pytest.FixtureRequest
) -> None:
    client: FlaskClient = request.getfixturevalue(listener)
    for path in ("/healthz", "/readyz"):
        response = client.get(path)
        assert (response.status_code, response.get_json()) == (200, {"ok": True, "error": ""}), path


@pytest.mark.parametrize("listener", LISTENERS)
def test_health_routes_need_no_token_and_refuse_other_methods(listener: str, request: pytest.FixtureRequest) -> None:
    client: FlaskClient = request.getfixturevalue(listener)
    assert client.get("/readyz").status_code == 200  # no Authorization header
    response = client.post("/healthz")
    assert response.status_code == 405 and response.get_json()["ok"] is False


# -- Redis down -----------------------------------------------------------------
@pytest.mark.parametrize("listener", LISTENERS)
def test_readyz_503_and_healthz_200_when_redis_is_down(
    listener: str, request: pytest.FixtureRequest, redis_server: fakeredis.FakeServer
) -> None:
    client: FlaskClient = request.getfixturevalue(listener)
    redis_server.connected = False
    status, body, seconds = timed_get(client, "/readyz")
    assert status == 503 and body["ok"] is False and "Redis not ready" in str(body["error"])
    assert seconds < 2.0
    assert timed_get(client, "/healthz")[0] == 200  # the process itself is fine
    redis_server.connected = True
    assert timed_get(client, "/readyz")[0] == 200  # and it recovers by itself


@pytest.mark.parametrize("listener", LISTENERS)
def test_readyz_503_on_a_closed_port(listener: str) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    status, body, seconds = timed_get(app_on(url, listener), "/readyz")
    assert (status, body["ok"]) == (503, False) and seconds < 2.0


# -- Redis stalled --------------------------------------------------------------
@pytest.mark.parametrize("listener", LISTENERS)
def test_readyz_503_within_2_s_when_redis_stalls(listener: str, stalled_redis: FakeRespServer) -> None:
    # A socket timeout longer than the deadline: the route's own deadline must answer.
    client = app_on(stalled_redis.url, listener, redis_timeout=5.0)
    status, body, seconds = timed_get(client, "/readyz")
    assert (status, body["ok"]) == (503, False)
    assert seconds < 2.0
    assert timed_get(client, "/healthz")[0] == 200


@pytest.mark.parametrize(("path", "params"), BROKER_CHECKS)
def test_broker_checks_503_within_2_s_when_redis_stalls(
    path: str, params: dict[str, object], stalled_redis: FakeRespServer
) -> None:
    client = app_on(stalled_redis.url, "broker", redis_timeout=5.0)
    started = time.monotonic()
    response = client.post(path, json=params)
    assert (response.status_code, response.get_json()["ok"]) == (503, False)
    assert time.monotonic() - started < 2.0
    assert sum(stalled_redis.commands.values()) >= 1  # it did reach the stalled Redis


# -- Redis loading its data (BusyLoadingError) ----------------------------------
@pytest.mark.parametrize(("path", "params"), BROKER_CHECKS)
def test_broker_checks_503_while_redis_is_loading(
    path: str, params: dict[str, object], loading_redis: FakeRespServer
) -> None:
    client = app_on(loading_redis.url, "broker")
    for _ in range(3):
        started = time.monotonic()
        response = client.post(path, json=params)
        assert (response.status_code, response.get_json()["ok"]) == (503, False)
        assert time.monotonic() - started < 2.0
    assert sum(loading_redis.commands.values()) >= 3


@pytest.mark.parametrize("listener", LISTENERS)
def test_readyz_503_while_redis_is_loading(listener: str, loading_redis: FakeRespServer) -> None:
    status, body, seconds = timed_get(app_on(loading_redis.url, listener), "/readyz")
    assert (status, body["ok"]) == (503, False) and "BusyLoadingError" in str(body["error"])
    assert seconds < 2.0


def test_api_routes_503_while_redis_is_loading(loading_redis: FakeRespServer) -> None:
    client = app_on(loading_redis.url, "api")
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answers = [
        client.post("/api/client-registry/register", json={"username": "sensor-1", "password": "secret1"}),
        client.get("/api/client-registry", headers=auth),
        client.get("/api/client-registry/requests", headers=auth),
        client.delete("/api/users/sensor-1/failures", headers=auth),
    ]
    assert [(a.status_code, a.get_json()["ok"]) for a in answers] == [(503, False)] * 4


def run_bounded(target: Callable[[], Any], server: FakeRespServer, seconds: float) -> tuple[Any, float]:
    """Run `target` in a thread; if it has not finished after `seconds`, stop
    the fake Redis (which ends any retry loop) and fail."""
    result: list[Any] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)
    thread.start()
    thread.join(seconds)
    elapsed = time.monotonic() - started
    hung = thread.is_alive()
    watches = server.commands[b"WATCH"]
    if hung:
        server.close()
        thread.join(10)
    assert not hung, f"no answer after {elapsed:.1f} s; {watches} WATCH commands sent meanwhile"
    return result[0], elapsed


# WATCH succeeds while Redis loads, the read after it fails, and redis-py turns
# that connection error into a WatchError: a loop that retries on every
# WatchError spins until loading is over.
TRANSACTION_ROUTES = [
    ("POST", "/api/client-registry/requests/sensor-1:abcdef/approve", None),
    ("POST", "/api/client-registry/requests/sensor-1:abcdef/deny", None),
    ("DELETE", "/api/users/sensor-1", None),
    ("PUT", "/api/users/sensor-1/permissions", [{"topic": "a/#", "access": "read"}]),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), TRANSACTION_ROUTES, ids=["approve", "deny", "delete-user", "permissions"]
)
def test_watched_changes_answer_503_while_redis_is_loading(
    loading_redis: FakeRespServer, method: str, path: str, body: Any
) -> None:
    client = app_on(loading_redis.url, "api")
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    kwargs = {"json": body} if body is not None else {}
    response, seconds = run_bounded(
        lambda: client.open(path, method=method, headers=auth, **kwargs), loading_redis, 3.0
    )
    assert (response.status_code, response.get_json()["ok"]) == (503, False)
    assert seconds < 2.0
    assert loading_redis.commands[b"WATCH"] <= 10  # a bounded number of tries, not a spin


def test_cli_exits_6_while_redis_is_loading(loading_redis: FakeRespServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREGISTRY_REDIS_URL", loading_redis.url)
    for args in (["status"], ["requests"], ["unlock"], ["user", "clear-failures", "sensor-1"]):
        result = CliRunner().invoke(cregistry.cli.cli, args)
        assert result.exit_code == 6, (args, result.output)
        # clear-failures is a watched transaction, which says so in its own words.
        assert result.stderr.startswith(("Error: cannot reach Redis (BusyLoadingError)", "Error: cannot reach Redis:"))
        assert len(result.stderr.splitlines()) == 1
        assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args", [["approve", "sensor-1"], ["deny", "sensor-1"], ["user", "delete", "sensor-1"]], ids=lambda a: "-".join(a)
)
def test_cli_watched_changes_exit_6_while_redis_is_loading(
    loading_redis: FakeRespServer, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.setenv("CREGISTRY_REDIS_URL", loading_redis.url)
    result, _seconds = run_bounded(lambda: CliRunner().invoke(cregistry.cli.cli, args), loading_redis, 3.0)
    assert result.exit_code == 6, (args, result.output)
    assert result.stderr.startswith("Error: cannot reach Redis")


def test_the_fake_server_parses_pipelines() -> None:
    one = b"*2\r\n$3\r\nget\r\n$1\r\nk\r\n"
    assert _one_command(one + one) == (b"GET", one)
    assert _one_command(one[:-3]) is None
    assert _one_command(b"") is None
