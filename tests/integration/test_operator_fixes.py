"""Issue 10 on a real redis-server: the CLI's bound against a stalled Redis,
and a URL naming a database Redis does not have."""

from __future__ import annotations

import os
import time

import pytest
from click.testing import CliRunner

import cregistry.cli
from tests.harness import RedisProcess, free_port, run_cli

# The bound the service promises its broker (SPEC §3) and the CLI now shares.
CONTRACT_SECONDS = 2.0


def test_the_cli_fails_within_2_s_against_a_paused_redis(
    redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREGISTRY_REDIS_URL", redis_process.url)
    client = redis_process.client()
    client.execute_command("CLIENT", "PAUSE", "6000", "ALL")
    try:
        started = time.monotonic()
        result = CliRunner().invoke(cregistry.cli.cli, ["status"])
        seconds = time.monotonic() - started
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
        client.close()
    assert (result.exit_code, result.stdout) == (6, "")
    assert result.stderr == "Error: cannot reach Redis (TimeoutError) at CREGISTRY_REDIS_URL\n"
    assert seconds < CONTRACT_SECONDS


def test_a_database_redis_does_not_have_is_a_configuration_error(redis_process: RedisProcess) -> None:
    url = redis_process.url.rsplit("/", 1)[0] + "/99"
    result = run_cli("status", env={"CREGISTRY_REDIS_URL": url})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "Error: CREGISTRY_REDIS_URL names a database this Redis does not have (DB index is out of range)\n"
    )


def test_serve_refuses_to_start_on_a_database_redis_does_not_have(redis_process: RedisProcess) -> None:
    env = {
        "CREGISTRY_REDIS_URL": redis_process.url.rsplit("/", 1)[0] + "/99",
        "CREGISTRY_ADMIN_TOKEN": "integration-admin-token",
        "CREGISTRY_VERIFY_SECRET": os.urandom(16).hex(),
        "CREGISTRY_API_LISTEN": f"127.0.0.1:{free_port()}",
        "CREGISTRY_BROKER_LISTEN": f"127.0.0.1:{free_port()}",
    }
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "Error: CREGISTRY_REDIS_URL names a database this Redis does not have (DB index is out of range)"
    ]
