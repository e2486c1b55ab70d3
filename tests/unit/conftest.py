"""Unit tier: the domain, the Flask apps and the CLI on fakeredis."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import fakeredis
import pytest
from click.testing import CliRunner, Result
from flask.testing import FlaskClient

import cregistry.server
from cregistry import services
from cregistry.authorizer import AclRequest, Authorizer, acl_request
from cregistry.config import Config
from cregistry.lock import RegistryLock
from cregistry.pending import PendingRequests
from cregistry.registration import Registration
from cregistry.users import UserStore
from cregistry.web import create_app

ADMIN_TOKEN = "test-admin-token"


class FakeClock:
    """Time that only moves when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def config() -> Config:
    # bcrypt cost 4: the rules are the same, the tests a hundred times faster.
    return Config(bcrypt_cost=4, admin_token=ADMIN_TOKEN)


@pytest.fixture
def redis_server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def connection(redis_server: fakeredis.FakeServer) -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=redis_server, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def domain(connection: fakeredis.FakeRedis, config: Config, clock: FakeClock) -> services.Services:
    """The objects of one process, built as the apps and the CLI build them."""
    return services.build(connection, config, clock=clock)


@pytest.fixture
def lock(domain: services.Services) -> RegistryLock:
    return domain.lock


@pytest.fixture
def requests(domain: services.Services) -> PendingRequests:
    return domain.requests


@pytest.fixture
def registration(domain: services.Services) -> Registration:
    return domain.registration


@pytest.fixture
def users(domain: services.Services) -> UserStore:
    return domain.users


@pytest.fixture
def authorizer(domain: services.Services) -> Authorizer:
    return domain.authorizer


@pytest.fixture
def api(config: Config, connection: fakeredis.FakeRedis) -> FlaskClient:
    return create_app(config, listener="api", connection=connection).test_client()


@pytest.fixture
def broker(config: Config, connection: fakeredis.FakeRedis) -> FlaskClient:
    return create_app(config, listener="broker", connection=connection).test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def acl(username: str, client_id: str, topic: str, acc: int) -> AclRequest:
    """An ACL check's request, as the broker route parses it (authorizer.acl_request)."""
    request = acl_request(username, client_id, topic, acc)
    assert isinstance(request, AclRequest), request
    return request


class ConnectingRunner(CliRunner):
    """A CliRunner that hands `cregistry` its way to Redis through the click
    context (obj), as cregistry.cli.cli accepts it."""

    def __init__(self, connect: Callable[..., Any]) -> None:
        super().__init__()
        self.connect = connect

    def invoke(self, cli: Any, args: Any = None, **kwargs: Any) -> Result:  # type: ignore[override]
        kwargs.setdefault("obj", self.connect)
        return super().invoke(cli, args, **kwargs)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, redis_server: fakeredis.FakeServer) -> ConnectingRunner:
    """A CliRunner whose `cregistry` talks to the same fakeredis as the other fixtures."""
    monkeypatch.setenv("CREGISTRY_REDIS_URL", "redis://fake:6379/0")
    monkeypatch.setenv("CREGISTRY_BCRYPT_COST", "4")
    return ConnectingRunner(
        lambda url, timeout, **_options: fakeredis.FakeRedis(server=redis_server, decode_responses=True)
    )


def serve_once(monkeypatch: pytest.MonkeyPatch, config: Config) -> tuple[Config, list[str]]:
    """Run serve() up to the gunicorn start; the config it would start with, and what it announced."""
    started: list[Config] = []

    class Server:
        def __init__(self, config: Config, *_args: Any) -> None:
            started.append(config)

        def run(self) -> None:
            pass

    monkeypatch.setattr(cregistry.server, "CregistryServer", Server)
    monkeypatch.setattr(cregistry.server, "_check_redis", lambda config: None)
    monkeypatch.setattr(cregistry.server, "open_listener", lambda listen: contextlib.nullcontext(None))
    announced: list[str] = []
    cregistry.server.serve(config, announced.append)
    return started[0], announced


T = TypeVar("T")


def run_on_own_loop(coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run(coroutine()) on a thread of its own: the browser tier's
    Playwright keeps an event loop running on the main thread for the whole
    session, and asyncio.run refuses to start beside it."""
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(lambda: asyncio.run(coroutine())).result()
