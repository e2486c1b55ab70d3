"""Redis loses its data (FLUSHALL; a restart without persistence): the
plugin's next poll is a reset, and every change recorded after the loss still
reaches the broker, kicks included (docs/change-feed.md, "Positions and resets"), so a
user deleted after the loss is disconnected within the 2 s of SPEC §11."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.mqtt import RawSession
from harness.redis_server import RedisProcess
from harness.service import Freezer, ServiceProcess, run_cli, running_service
from tests.integration.conftest import ADMIN_TOKEN, finish_broker, start_plugin_broker

pytestmark = pytest.mark.broker

KICK_BOUND = 2.0


def add_user(env: dict[str, str], name: str, password: str) -> None:
    result = run_cli("user", "add", name, "--password-stdin", env=env, stdin=f"{password}\n")
    assert result.returncode == 0, result.stderr


def delete_user(env: dict[str, str], name: str) -> None:
    result = run_cli("user", "delete", name, env=env)
    assert result.returncode == 0, result.stderr


def lose_and_delete(env: dict[str, str], lose, freezer: Freezer) -> None:  # type: ignore[no-untyped-def]
    """With the plugin unable to poll (the service stopped; the CLI writes to
    Redis itself), Redis loses everything, then the user is added again and
    deleted: the kick is recorded before the plugin's next poll, which is the
    reset. Today's main resumed after the newest entry and never kicked."""
    freezer.freeze()
    try:
        lose()
        add_user(env, "gone-1", "gone-secret")
        delete_user(env, "gone-1")
    finally:
        freezer.thaw()


def test_a_user_deleted_after_a_flush_is_kicked(mosquitto, redis_process, cli_env, freezer) -> None:  # type: ignore[no-untyped-def]
    add_user(cli_env, "gone-1", "gone-secret")
    add_user(cli_env, "kept-1", "kept-secret")
    gone = RawSession(mosquitto.port, "gone-1", "gone-secret", "gone-client")
    kept = RawSession(mosquitto.port, "kept-1", "kept-secret", "kept-client")
    assert (gone.connack, kept.connack) == (0, 0)

    def flush() -> None:
        client = redis_process.client()
        client.flushall()
        client.close()

    lose_and_delete(cli_env, flush, freezer)
    assert gone.closed_within(KICK_BOUND)
    assert not kept.closed_within(0.3)  # nobody else is kicked
    assert "change feed reset" in mosquitto.output()
    gone.close()
    kept.close()


@pytest.fixture
def volatile_stack(cregistry_plugin) -> Iterator[tuple[RedisProcess, ServiceProcess, dict[str, str]]]:  # type: ignore[no-untyped-def]
    """A Redis without persistence and its own `cregistry serve`."""
    volatile = RedisProcess(persistent=False)
    volatile.start()
    try:
        with running_service(volatile.url, ADMIN_TOKEN) as service:
            yield volatile, service, {"CREGISTRY_REDIS_URL": volatile.url, "CREGISTRY_BCRYPT_COST": "4"}
    finally:
        volatile.cleanup()


def test_a_user_deleted_after_a_restart_without_persistence_is_kicked(volatile_stack, cregistry_plugin) -> None:  # type: ignore[no-untyped-def]
    volatile, service, env = volatile_stack
    broker = start_plugin_broker(service, cregistry_plugin)
    freezer = Freezer(service)
    try:
        add_user(env, "gone-1", "gone-secret")
        gone = RawSession(broker.port, "gone-1", "gone-secret", "gone-client")
        assert gone.connack == 0

        def restart() -> None:
            volatile.stop()
            volatile.start()  # empty, with a new replication ID

        lose_and_delete(env, restart, freezer)
        assert gone.closed_within(KICK_BOUND)
        assert "change feed reset" in broker.output()
        gone.close()
    finally:
        freezer.thaw()
        finish_broker(broker)
