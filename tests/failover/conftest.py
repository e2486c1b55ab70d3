"""Failover tier: a Redis primary with two replicas behind three
redis-sentinel processes, and two `cregistry serve` instances on the Sentinel
URL. It skips on a developer's machine without redis-sentinel, and fails
under CI (CI=true) or CREGISTRY_REQUIRE_REDIS=1."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.mosquitto import PluginMosquittoProcess, plugin_missing
from harness.sentinel import FailoverStack, start_failover_stack

ADMIN_TOKEN = "failover-admin-token"
SERVICE_ENV = {
    "CREGISTRY_ADMIN_TOKEN": ADMIN_TOKEN,
    "CREGISTRY_BCRYPT_COST": "4",
    "CREGISTRY_WORKERS": "1",
    "CREGISTRY_REDIS_MIN_REPLICAS": "1",
    # The failover test sends many wrong passwords; it is not about the limit.
    "CREGISTRY_FAILURE_LIMIT": "1000000",
    "CREGISTRY_PENDING_PER_USERNAME": "100",
    # Both instances accept each other's verified-password tokens.
    "CREGISTRY_VERIFY_SECRET": "0123456789abcdef0123456789abcdef",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/failover/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.failover)


def _required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("CREGISTRY_REQUIRE_REDIS") == "1"


@pytest.fixture(scope="module")
def stack() -> Iterator[FailoverStack]:
    try:
        stack = start_failover_stack(SERVICE_ENV, services=2)
    except FileNotFoundError as error:
        if _required():
            pytest.fail(f"{error}: the failover tier must run here (apt-get install redis-server redis-sentinel)")
        pytest.skip(str(error))
    yield stack
    stack.cleanup()


@pytest.fixture
def cli_env(stack: FailoverStack) -> dict[str, str]:
    return {"CREGISTRY_REDIS_URL": stack.group.url, "CREGISTRY_BCRYPT_COST": "4", "CREGISTRY_REDIS_MIN_REPLICAS": "1"}


def _brokers_required() -> bool:
    return _required() or os.environ.get("CREGISTRY_REQUIRE_BROKER") == "1"


@pytest.fixture(scope="module")
def brokers(stack: FailoverStack) -> Iterator[list[PluginMosquittoProcess]]:
    """Two mosquittos with cregistry's plugin, one per service instance
    (plugin_opt_url: that service's broker listener), added to stack.brokers.
    In CI a missing mosquitto or plugin fails, never skips."""
    problem = plugin_missing()
    if problem:
        if _brokers_required():
            pytest.fail(problem)
        pytest.skip(problem)
    for service in stack.services:
        broker = PluginMosquittoProcess(service.broker_port)
        stack.brokers.append(broker)
        broker.start()
    for broker in stack.brokers:
        try:
            broker.wait_for_feed(timeout=15.0)
        except TimeoutError as error:
            pytest.fail(str(error))
    yield stack.brokers
    problems = []
    for broker in stack.brokers:
        problems += broker.finish()[0]
    assert not problems, problems
