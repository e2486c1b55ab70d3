"""Integration tier: a real redis-server and the real `cregistry serve`,
started once per session and flushed before each test.

Where redis-server is missing the tier skips on a developer's machine, but
fails under CI (CI=true) or CREGISTRY_REQUIRE_REDIS=1: a skip there would
hide that nothing was proven.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.mosquitto import (
    GO_AUTH_SO,
    PLUGIN_SO,
    SHIPPED_GO_AUTH_CONF,
    MosquittoProcess,
    PluginMosquittoProcess,
    mosquitto_missing,
    plugin_missing,
    render_mosquitto_conf,
)
from harness.mqtt import MqttClient, mqtt_clients
from harness.processes import free_port
from harness.redis_server import RedisProcess
from harness.service import Freezer, ServiceProcess, run_cli, running_service

ADMIN_TOKEN = "integration-admin-token"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)
            fixtures = getattr(item, "fixturenames", ())
            # test_plugin_*.py: the plugin's own broker tests (the feed's against a stand-in service).
            if "mosquitto" in fixtures or item.path.name.startswith("test_plugin_"):
                item.add_marker(pytest.mark.broker)
            if "go_auth_mosquitto" in fixtures:
                item.add_marker(pytest.mark.broker_go_auth)


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
    with running_service(redis_process.url, ADMIN_TOKEN) as service:
        yield service


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


@pytest.fixture
def freezer(service: ServiceProcess) -> Iterator[Freezer]:
    """Stops and resumes the session's `cregistry serve`; resumed after the test at the latest."""
    freezer = Freezer(service)
    yield freezer
    freezer.thaw()


# -- the real broker ---------------------------------------------------------
def _broker_required() -> bool:
    """The plugin broker tier must run in CI: a skip there would hide that nothing was proven."""
    return os.environ.get("CI") == "true" or os.environ.get("CREGISTRY_REQUIRE_BROKER") == "1"


@pytest.fixture(scope="session")
def cregistry_plugin() -> Path:
    """cregistry_auth.so built by `make plugin` (CREGISTRY_PLUGIN_SO names another
    build). In CI, or under CREGISTRY_REQUIRE_BROKER=1, a missing plugin or
    mosquitto fails the broker tier instead of skipping it."""
    problem = plugin_missing(PLUGIN_SO)
    if problem:
        if _broker_required():
            pytest.fail(problem)
        pytest.skip(problem)
    return PLUGIN_SO


def start_plugin_broker(
    service: ServiceProcess, plugin: Path, plugin_options: dict[str, str] | None = None
) -> PluginMosquittoProcess:
    """A mosquitto with `plugin` (and plugin_opt_<name> `plugin_options`) in
    front of `service`, once the plugin has its feed position."""
    broker = PluginMosquittoProcess(service.broker_port, plugin, plugin_options)
    broker.start()
    try:
        broker.wait_for_feed()
    except TimeoutError as error:
        broker.cleanup()
        pytest.fail(str(error))
    return broker


def finish_broker(broker: MosquittoProcess) -> str:
    """Stop the broker and fail if it crashed, exited uncleanly or a sanitizer
    reported anything; its whole output otherwise."""
    problems, output = broker.finish()
    if problems:
        pytest.fail("; ".join(problems) + "\n--- mosquitto output (end) ---\n" + output[-6000:])
    return output


@pytest.fixture
def mosquitto(service: ServiceProcess, cregistry_plugin: Path) -> Iterator[PluginMosquittoProcess]:
    """A mosquitto with cregistry's plugin, configured by mosquitto/mosquitto.conf.
    One per test (it starts in milliseconds): no test sees answers another
    test's broker cached, and a sanitizer report names the test that caused it."""
    broker = start_plugin_broker(service, cregistry_plugin)
    yield broker
    finish_broker(broker)


@pytest.fixture
def clients(mosquitto: MosquittoProcess) -> Iterator[Callable[..., MqttClient]]:
    """make(username, password, client_id): paho clients of `mosquitto`, closed after the test."""
    with mqtt_clients(mosquitto.port) as make:
        yield make


# go-auth's cache times for its tests: short, so that "refused again within
# the cache time" takes seconds. Everything else is mosquitto/mosquitto-go-auth.conf.
BROKER_CACHE_SECONDS = 2


@pytest.fixture(scope="session")
def go_auth_plugin() -> Path:
    """The go-auth plugin built by `make go-auth`. go-auth alone may skip, with
    the reason, even in CI (the Go module proxy refuses it, see NOTES-go-auth.md);
    CREGISTRY_REQUIRE_GO_AUTH=1 makes it mandatory where it can be built."""
    problem = mosquitto_missing()
    if problem is None and not GO_AUTH_SO.exists():
        problem = (
            f"the go-auth plugin is not built ({GO_AUTH_SO}): run `make go-auth`, or, where the Go module"
            " proxy refuses go-auth, GO_AUTH_SRC=<go-auth checkout> make go-auth"
        )
    if problem:
        if os.environ.get("CREGISTRY_REQUIRE_GO_AUTH") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    return GO_AUTH_SO


@pytest.fixture(scope="session")
def go_auth_mosquitto(service: ServiceProcess, go_auth_plugin: Path) -> Iterator[MosquittoProcess]:
    port = free_port()
    conf = render_mosquitto_conf(
        port=port,
        plugin=go_auth_plugin,
        cregistry_broker_port=service.broker_port,
        shipped=SHIPPED_GO_AUTH_CONF,
        cache_seconds=BROKER_CACHE_SECONDS,
    )
    broker = MosquittoProcess(conf, port)
    broker.start()
    yield broker
    broker.cleanup()
