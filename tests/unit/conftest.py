"""Unit tier: the domain, the Flask apps and the CLI on fakeredis."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

import cregistry.cli
from cregistry.broker import Authorizer
from cregistry.config import Config
from cregistry.registry import Registry
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
def registry(connection: fakeredis.FakeRedis, config: Config, clock: FakeClock) -> Registry:
    return Registry(connection, config, clock)


@pytest.fixture
def users(registry: Registry) -> UserStore:
    return registry.users


@pytest.fixture
def authorizer(connection: fakeredis.FakeRedis, config: Config, clock: FakeClock) -> Authorizer:
    return Authorizer(connection, config, clock)


@pytest.fixture
def api(config: Config, connection: fakeredis.FakeRedis) -> FlaskClient:
    return create_app(config, listener="api", connection=connection).test_client()


@pytest.fixture
def broker(config: Config, connection: fakeredis.FakeRedis) -> FlaskClient:
    return create_app(config, listener="broker", connection=connection).test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, redis_server: fakeredis.FakeServer) -> CliRunner:
    """A CliRunner whose `cregistry` talks to the same fakeredis as the other fixtures."""
    monkeypatch.setenv("CREGISTRY_REDIS_URL", "redis://fake:6379/0")
    monkeypatch.setenv("CREGISTRY_BCRYPT_COST", "4")
    monkeypatch.setattr(
        cregistry.cli,
        "connect",
        lambda url, timeout, **_options: fakeredis.FakeRedis(server=redis_server, decode_responses=True),
    )
    return CliRunner()
