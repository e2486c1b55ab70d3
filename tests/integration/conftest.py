"""Integration tier: a real redis-server and the real `cregistry serve`,
started once per session and flushed before each test.

Where redis-server is missing the tier skips on a developer's machine, but
fails under CI (CI=true) or CREGISTRY_REQUIRE_REDIS=1: a skip there would
hide that nothing was proven.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    GO_AUTH_SO,
    PLUGIN_SO,
    SHIPPED_GO_AUTH_CONF,
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
            fixtures = getattr(item, "fixturenames", ())
            # test_plugin_*.py: the plugin's own broker tests, with their own fixtures.
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
def _broker_required() -> bool:
    """The plugin broker tier must run in CI: a skip there would hide that nothing was proven."""
    return os.environ.get("CI") == "true" or os.environ.get("CREGISTRY_REQUIRE_BROKER") == "1"


def _mosquitto_missing() -> str | None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        return "mosquitto is not installed (apt-get install mosquitto)"
    return None


# More environment for mosquitto alone: every CREGISTRY_MOSQUITTO_ENV_<NAME>=<value>
# becomes <NAME>=<value> (say, other sanitizer options than plugin_env's).
# Read at import: the autouse fixture clears CREGISTRY_* from each test's environment.
MOSQUITTO_ENV_PREFIX = "CREGISTRY_MOSQUITTO_ENV_"
MOSQUITTO_ENV = {
    name.removeprefix(MOSQUITTO_ENV_PREFIX): value
    for name, value in os.environ.items()
    if name.startswith(MOSQUITTO_ENV_PREFIX)
}


FEED_OK_NOTICE = "cregistry_auth: change feed ok"


def plugin_env(plugin: Path) -> dict[str, str]:
    """mosquitto's environment for `plugin`. The sanitizer build (`make plugin-asan`,
    a name ending in -asan.so; see mosquitto/plugin/README.md) needs the ASan
    runtime preloaded, mosquitto itself not being instrumented; any report then
    ends the run with exit code 66, which finish_broker() turns into a failure."""
    env = {}
    if plugin.name.endswith("-asan.so"):
        runtime = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
        env = {
            "LD_PRELOAD": runtime.stdout.strip(),
            "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:exitcode=66",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        }
    return {**env, **MOSQUITTO_ENV}


@pytest.fixture(scope="session")
def cregistry_plugin() -> Path:
    """cregistry_auth.so built by `make plugin` (CREGISTRY_PLUGIN_SO names another
    build). In CI, or under CREGISTRY_REQUIRE_BROKER=1, a missing plugin or
    mosquitto fails the broker tier instead of skipping it."""
    problem = _mosquitto_missing()
    if problem is None and not PLUGIN_SO.exists():
        problem = f"cregistry's plugin is not built ({PLUGIN_SO}): run `make plugin`"
    if problem:
        if _broker_required():
            pytest.fail(problem)
        pytest.skip(problem)
    return PLUGIN_SO


def start_plugin_broker(service: ServiceProcess, plugin: Path) -> MosquittoProcess:
    port = free_port()
    conf = render_mosquitto_conf(port=port, plugin=plugin, cregistry_broker_port=service.broker_port)
    broker = MosquittoProcess(conf, port, env=plugin_env(plugin))
    broker.start()
    # The plugin's first poll of the feed is a reset, which drops whatever it
    # cached before the answer came: tests that rely on cached answers start
    # once it has its position (the plugin logs this notice once per state change).
    deadline = time.monotonic() + 10
    while FEED_OK_NOTICE not in broker.output():
        if time.monotonic() > deadline:
            broker.cleanup()
            pytest.fail(f"the plugin did not log {FEED_OK_NOTICE!r} within 10 s:\n{broker.output()[-3000:]}")
        time.sleep(0.02)
    return broker


def finish_broker(broker: MosquittoProcess) -> None:
    """Stop the broker and fail if it crashed, exited uncleanly or a sanitizer
    reported anything (leaks are reported at exit, so only here)."""
    broker.stop()
    problems = broker.problems()
    output = broker.output()
    print(f"--- mosquitto output ---\n{output}")  # pytest shows it when the test failed
    broker.cleanup()
    if problems:
        pytest.fail("; ".join(problems) + "\n--- mosquitto output (end) ---\n" + output[-6000:])


@pytest.fixture
def mosquitto(service: ServiceProcess, cregistry_plugin: Path) -> Iterator[MosquittoProcess]:
    """A mosquitto with cregistry's plugin, configured by mosquitto/mosquitto.conf.
    One per test (it starts in milliseconds): no test sees answers another
    test's broker cached, and a sanitizer report names the test that caused it."""
    broker = start_plugin_broker(service, cregistry_plugin)
    yield broker
    finish_broker(broker)


# go-auth's cache times for its tests: short, so that "refused again within
# the cache time" takes seconds. Everything else is mosquitto/mosquitto-go-auth.conf.
BROKER_CACHE_SECONDS = 2


@pytest.fixture(scope="session")
def go_auth_plugin() -> Path:
    """The go-auth plugin built by `make go-auth`. go-auth alone may skip, with
    the reason, even in CI (the Go module proxy refuses it, see NOTES-go-auth.md);
    CREGISTRY_REQUIRE_GO_AUTH=1 makes it mandatory where it can be built."""
    problem = _mosquitto_missing()
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
