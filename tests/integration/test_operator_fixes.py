"""Operators' fixes on a real redis-server: the CLI's bound against a stalled Redis,
a URL naming a database Redis does not have, and the last connect through
the real service."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

import cregistry.cli
from harness.processes import free_port
from harness.redis_server import RedisProcess
from harness.service import ServiceProcess, http, run_cli
from tests.integration.conftest import ADMIN_TOKEN

# The service answers its broker within 2 s when Redis cannot; the CLI keeps the same bound.
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
    # Start-up warnings (unset secrets) may come first; the refusal is the last line.
    assert result.stderr.splitlines()[-1] == (
        "Error: CREGISTRY_REDIS_URL names a database this Redis does not have (DB index is out of range)"
    )
    assert "Traceback" not in result.stderr and "cregistry API on" not in result.stderr


def test_last_connect_through_the_real_service(service: ServiceProcess, cregistry: Callable[..., Any]) -> None:
    assert cregistry("user", "add", "meter-3", "--password-stdin", stdin="meter-secret\n").returncode == 0
    before = http("GET", f"{service.api}/api/users/meter-3", token=ADMIN_TOKEN).json()
    assert (before["lastConnect"], before["lastClientId"]) == (None, None)
    body = {"username": "meter-3", "password": "meter-secret", "clientid": "meter-3-a"}
    assert http("POST", f"{service.broker}/mqtt/user", json_body=body).status == 200
    after = http("GET", f"{service.api}/api/users/meter-3", token=ADMIN_TOKEN).json()
    assert after["lastClientId"] == "meter-3-a" and after["lastConnect"].endswith("Z")
    shown = json.loads(cregistry("user", "show", "meter-3", "--json").stdout)
    assert (shown["lastConnect"], shown["lastClientId"]) == (after["lastConnect"], "meter-3-a")
    idle = json.loads(cregistry("users", "--not-connected-for", "7", "--json").stdout)["users"]
    assert "meter-3" not in [u["username"] for u in idle]
