"""Fleet enrollment (SPEC §13) with a real redis-server and the real
`cregistry serve`: the CLI and two instances sharing CREGISTRY_VERIFY_SECRET
agree on a token, the race for the last use has one winner across workers,
and a deleted user stays deleted."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator

import pytest

from harness.redis_server import RedisProcess
from harness.service import ServiceProcess, http, run_cli, running_service
from tests.integration.conftest import ADMIN_TOKEN

SECRET = "5e" * 32
ONE_REFUSAL = {"ok": False, "error": "this enrollment token cannot register this username", "status": "refused"}


@pytest.fixture(scope="module")
def instances(redis_process: RedisProcess) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Two `cregistry serve` on one Redis with the same verify secret, as a deployment runs them."""
    env = {"CREGISTRY_VERIFY_SECRET": SECRET}
    with (
        running_service(redis_process.url, ADMIN_TOKEN, env) as one,
        running_service(redis_process.url, ADMIN_TOKEN, env) as other,
    ):
        yield one, other


def register(service: ServiceProcess, token: str, username: str, password: str = "device-secret-1") -> tuple[int, dict]:  # type: ignore[type-arg]
    body = {"username": username, "password": password, "clientId": f"{username}-c", "enrollment": token}
    answer = http("POST", f"{service.api}/api/client-registry/register", json_body=body)
    return answer.status, answer.json()


def test_a_cli_made_token_registers_on_every_instance(
    instances: tuple[ServiceProcess, ServiceProcess], cli_env: dict[str, str]
) -> None:
    one, other = instances
    env = {**cli_env, "CREGISTRY_VERIFY_SECRET": SECRET}
    assert run_cli("role", "grant", "line3", "line3/%u/#", "readWrite", env=env).returncode == 0
    created = run_cli(
        "enrollment", "create", "line-3", "--pattern", "line3-*", "--role", "line3", "--max-uses", "3", "--json",
        env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]

    assert register(one, token, "line3-001")[0] == 201  # locked: the registry was never unlocked
    assert register(other, token, "line3-001")[0] == 201  # the same device again, on the other instance
    assert register(other, token, "line3-002")[0] == 201
    user = http("GET", f"{one.api}/api/users/line3-001", token=ADMIN_TOKEN).json()
    assert (user["roles"], user["clientId"], user["source"]) == (["line3"], "line3-001-c", "enrollment")
    listed = json.loads(run_cli("enrollment", "list", "--json", env=env).stdout)["enrollments"]
    assert [(e["name"], e["usesLeft"]) for e in listed] == [("line-3", 1)]
    assert token not in json.dumps(listed)
    audit = http("GET", f"{one.api}/api/audit?limit=10", token=ADMIN_TOKEN).json()["entries"]
    registered = [e for e in audit if e["action"] == "enrollment.register"]
    assert [(e["target"], e["details"]["enrollment"]) for e in registered] == [
        ("line3-002", "line-3"),
        ("line3-001", "line-3"),
    ]

    # Every bad attempt: one answer, nothing recorded.
    assert register(one, token, "line4-001") == (403, ONE_REFUSAL)
    assert register(one, token[:-2] + "xy", "line3-003") == (403, ONE_REFUSAL)
    assert register(one, token, "line3-001", "other-password")[0] == 409
    assert http("GET", f"{one.api}/api/client-registry/requests", token=ADMIN_TOKEN).json()["requests"] == []

    # A deleted user stays deleted, whatever it brings; the operator can forget that.
    assert http("DELETE", f"{one.api}/api/users/line3-001", token=ADMIN_TOKEN).status == 200
    assert register(other, token, "line3-001") == (403, ONE_REFUSAL)
    assert register(other, token, "line3-001", "brand-new-password") == (403, ONE_REFUSAL)
    assert run_cli("enrollment", "forget", "line-3", "line3-001", env=env).returncode == 0
    assert register(other, token, "line3-001", "brand-new-password")[0] == 201

    # Used up, then revoked: one answer again.
    assert register(one, token, "line3-004") == (403, ONE_REFUSAL)
    assert run_cli("enrollment", "delete", "line-3", env=env).stdout == "revoked enrollment line-3\n"
    assert register(one, token, "line3-002") == (403, ONE_REFUSAL)


def test_of_many_devices_racing_for_the_last_use_one_registers(
    instances: tuple[ServiceProcess, ServiceProcess],
) -> None:
    one, other = instances
    created = http(
        "POST", f"{one.api}/api/enrollments", token=ADMIN_TOKEN,
        json_body={"name": "last-one", "usernamePattern": "race-*", "maxUses": 1, "expiresIn": 600},
    )  # fmt: skip
    assert created.status == 201
    token = created.json()["token"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda n: register((one, other)[n % 2], token, f"race-{n:02d}")[0], range(8)))
    # 429 is "busy": every bcrypt slot for registrations was taken; such a device retries.
    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {201, 403, 429}
    users = http("GET", f"{one.api}/api/users", token=ADMIN_TOKEN).json()["users"]
    assert len([u for u in users if u["username"].startswith("race-")]) == 1
    listed = http("GET", f"{other.api}/api/enrollments", token=ADMIN_TOKEN).json()["enrollments"]
    assert listed[0]["usesLeft"] == 0
    # Whoever lost gets the one refusal on its next try.
    loser = next(n for n, status in enumerate(statuses) if status != 201)
    assert register(one, token, f"race-{loser:02d}") == (403, ONE_REFUSAL)


def test_guessing_tokens_is_limited_per_address(instances: tuple[ServiceProcess, ServiceProcess]) -> None:
    one, other = instances
    statuses = [register((one, other)[n % 2], f"guess-{n}", "line3-001")[0] for n in range(21)]
    # The default limit (20 refusals per address and window), counted by both instances together.
    assert statuses == [403] * 20 + [429]
