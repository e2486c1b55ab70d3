"""Integration tier: a real redis-server and the real `cregistry serve`,
started once per session and flushed before each test.

Where redis-server is missing the tier skips on a developer's machine, but
fails under CI (CI=true) or CREGISTRY_REQUIRE_REDIS=1: a skip there would
hide that nothing was proven.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    GO_AUTH_SO,
    MosquittoProcess,
    RedisProcess,
    ServiceProcess,
    free_port,
    render_mosquitto_conf,
    run_cli,
)

ADMIN_TOKEN = "integration-admin-token"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
            if "mosquitto" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.broker)


def _required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("CREGISTRY_REQUIRE_REDIS") == "1"


@pytest.fixture(scope="session")
def redis_process() -> Iterator[RedisProcess]:
    try:
        process = RedisProcess()
    except FileNotFoundError as error:
        if _required():
            pytest.fail(f"{error}: the integration tier must run here (apt-get install redis-server)")
        pytest.skip(str(error))
    process.start()
    yield process
    process.cleanup()


@pytest.fixture(scope="session")
def service(redis_process: RedisProcess) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        {
            "CREGISTRY_REDIS_URL": redis_process.url,
            "CREGISTRY_ADMIN_TOKEN": ADMIN_TOKEN,
            "CREGISTRY_BCRYPT_COST": "4",
            "CREGISTRY_WORKERS": "2",
        }
    )
    service.start()
    yield service
    service.cleanup()


@pytest.fixture(autouse=True)
def flushed_redis(redis_process: RedisProcess) -> None:
    """Every test starts from an empty, running Redis."""
    if redis_process.process is None or redis_process.process.poll() is not None:
        redis_process.start()
    client = redis_process.client()
    client.flushall()
    client.close()


@pytest.fixture
def cli_env(redis_process: RedisProcess) -> dict[str, str]:
    return {"CREGISTRY_REDIS_URL": redis_process.url, "CREGISTRY_BCRYPT_COST": "4"}


@pytest.fixture
def cregistry(cli_env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Run the real CLI: cregistry("approve", "dev1")."""

    def run(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
        return run_cli(*args, env=cli_env, stdin=stdin)

    return run


# -- the real broker ---------------------------------------------------------
# go-auth's cache times for the tests: short, so that "refused again within
# the cache time" takes seconds. Everything else is mosquitto/mosquitto.conf.
BROKER_CACHE_SECONDS = 2


@pytest.fixture(scope="session")
def go_auth_plugin() -> Path:
    """The go-auth plugin built by `make go-auth`; under CREGISTRY_REQUIRE_BROKER=1
    a missing plugin or mosquitto fails the tests instead of skipping them."""
    problem = None
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        problem = "mosquitto is not installed (apt-get install mosquitto)"
    elif not GO_AUTH_SO.exists():
        problem = (
            f"the go-auth plugin is not built ({GO_AUTH_SO}): run `make go-auth`, or, where the Go module"
            " proxy refuses go-auth, GO_AUTH_SRC=<go-auth checkout> make go-auth"
        )
    if problem:
        if os.environ.get("CREGISTRY_REQUIRE_BROKER") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    return GO_AUTH_SO


@pytest.fixture(scope="session")
def mosquitto(service: ServiceProcess, go_auth_plugin: Path) -> Iterator[MosquittoProcess]:
    port = free_port()
    conf = render_mosquitto_conf(
        port=port, plugin=go_auth_plugin, cregistry_broker_port=service.broker_port, cache_seconds=BROKER_CACHE_SECONDS
    )
    broker = MosquittoProcess(conf, port)
    broker.start()
    yield broker
    broker.cleanup()
