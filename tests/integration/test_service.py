"""The real service over HTTP, driven as go-auth, a device and an operator do."""

from __future__ import annotations

import concurrent.futures
import json
import signal

import pytest

from harness.processes import free_port, wait_for_port
from harness.redis_server import RedisProcess
from harness.service import ServiceProcess, http, run_cli
from tests.integration.conftest import ADMIN_TOKEN

PARAMS_MODES = ["json", "form"]


def go_auth(service: ServiceProcess, route: str, mode: str, **fields: object):  # type: ignore[no-untyped-def]
    """A request shaped like go-auth's HTTP backend in the given params mode."""
    url = f"{service.broker}/mqtt/{route}"
    if mode == "json":
        return http("POST", url, json_body=fields)
    return http("POST", url, form={k: str(v) for k, v in fields.items()})


def connect(service: ServiceProcess, mode: str, username: str, password: str, clientid: str = "client-1"):  # type: ignore[no-untyped-def]
    return go_auth(service, "user", mode, username=username, password=password, clientid=clientid)


def acl(service: ServiceProcess, mode: str, username: str, topic: str, acc: int, clientid: str = "client-1"):  # type: ignore[no-untyped-def]
    return go_auth(service, "acl", mode, username=username, clientid=clientid, topic=topic, acc=acc)


@pytest.mark.parametrize("mode", PARAMS_MODES)
def test_registration_through_go_auth_routes_and_cli(service: ServiceProcess, cregistry, mode: str) -> None:  # type: ignore[no-untyped-def]
    # Locked: refused, and nothing is recorded.
    answer = connect(service, mode, "sensor-1", "device-secret")
    assert answer.status == 403 and answer.json()["ok"] is False
    assert json.loads(cregistry("requests", "--json").stdout)["requests"] == []

    assert cregistry("unlock").stdout.strip() == "unlocked, 300 s left"
    answer = connect(service, mode, "sensor-1", "device-secret", clientid="sensor-1-client")
    assert answer.status == 403
    requests = json.loads(cregistry("requests", "--json").stdout)["requests"]
    assert [(r["username"], r["pairingId"], r["clientId"], r["source"]) for r in requests] == [
        ("sensor-1", _pairing_id("sensor-1", "device-secret"), "sensor-1-client", "mqtt")
    ]

    approved = cregistry("approve", "sensor-1")
    assert approved.returncode == 0, approved.stderr
    assert connect(service, mode, "sensor-1", "device-secret").status == 200
    assert connect(service, mode, "sensor-1", "wrong-secret").status == 403

    # No permissions yet: every ACL check is denied.
    assert acl(service, mode, "sensor-1", "devices/sensor-1/temp", 2).status == 403
    assert cregistry("grant", "sensor-1", "devices/%u/#", "readWrite").returncode == 0
    assert acl(service, mode, "sensor-1", "devices/sensor-1/temp", 2).status == 200
    assert acl(service, mode, "sensor-1", "devices/sensor-1/#", 4).status == 200
    assert acl(service, mode, "sensor-1", "devices/#", 4).status == 403
    assert acl(service, mode, "sensor-1", "devices/other/temp", 1).status == 403
    assert acl(service, mode, "sensor-1", "devices/sensor-1/+", 2).status == 403


def test_get_and_put_methods_are_served(service: ServiceProcess) -> None:
    for method in ("GET", "PUT"):
        answer = http(
            method, f"{service.broker}/mqtt/user", json_body={"username": "x1x", "password": "p", "clientid": ""}
        )
        assert answer.status == 403
        # ok and error for go-auth; unknown_user for the plugin's unknown_users defer (a locked registry has no x1x)
        assert answer.json() == {"ok": False, "error": answer.json()["error"], "unknown_user": True}


def test_malformed_go_auth_input_is_never_a_500(service: ServiceProcess) -> None:
    bodies = [
        {"username": 1, "password": "x", "clientid": "c"},
        {"username": "abc"},
        {"username": "abc", "clientid": "c", "topic": "t", "acc": "read"},
        {"username": "abc", "clientid": "c", "topic": "t", "acc": 7},
        {"username": "abc", "clientid": "c", "topic": ["t"], "acc": 1},
    ]
    for route in ("user", "superuser", "acl"):
        for body in bodies:
            answer = http("POST", f"{service.broker}/mqtt/{route}", json_body=body)
            assert answer.status in (400, 403), (route, body, answer.status)
            assert answer.json()["ok"] is False


def test_rest_registration_flow(service: ServiceProcess, cregistry) -> None:  # type: ignore[no-untyped-def]
    register = f"{service.api}/api/client-registry/register"
    body = {"username": "agent-7", "password": "generated-secret", "clientId": "agent-7", "context": {"site": "A"}}
    assert http("POST", register, json_body=body).status == 423
    assert http(
        "POST", f"{service.api}/api/client-registry/unlock", token=ADMIN_TOKEN, json_body={"seconds": 60}
    ).json() == {
        "locked": False,
        "secondsLeft": 60,
    }
    pending = http("POST", register, json_body=body)
    assert pending.status == 202
    assert pending.json() == {"status": "pending", "pairingId": _pairing_id("agent-7", "generated-secret")}
    listed = http("GET", f"{service.api}/api/client-registry/requests", token=ADMIN_TOKEN).json()["requests"]
    assert listed[0]["context"] == {"site": "A"} and listed[0]["source"] == "rest"
    approved = http("POST", f"{service.api}/api/client-registry/requests/{listed[0]['id']}/approve", token=ADMIN_TOKEN)
    assert approved.status == 201 and approved.json()["permissions"] == []
    assert http("POST", register, json_body=body).status == 201
    assert http("POST", register, json_body={**body, "password": "another-secret"}).status == 409
    # The same credentials also work over MQTT.
    assert connect(service, "json", "agent-7", "generated-secret").status == 200


def test_denied_rest_request_answers_403(service: ServiceProcess, cregistry) -> None:  # type: ignore[no-untyped-def]
    register = f"{service.api}/api/client-registry/register"
    body = {"username": "intruder", "password": "whatever1"}
    cregistry("unlock")
    assert http("POST", register, json_body=body).status == 202
    denied = cregistry("deny", "intruder")
    assert denied.returncode == 0 and denied.stdout.startswith("denied intruder")
    assert http("POST", register, json_body=body).status == 403
    assert connect(service, "json", "intruder", "whatever1").status == 403
    assert json.loads(cregistry("requests", "--json").stdout)["requests"] == []


def test_each_listener_serves_only_its_routes(service: ServiceProcess) -> None:
    assert http("POST", f"{service.api}/mqtt/user", json_body={}).status == 404
    assert http("GET", f"{service.broker}/api/client-registry", token=ADMIN_TOKEN).status == 404
    assert http("POST", f"{service.broker}/api/client-registry/register", json_body={}).status == 404


def test_admin_api_requires_the_token(service: ServiceProcess) -> None:
    url = f"{service.api}/api/client-registry"
    assert http("GET", url).status == 401
    assert http("GET", url, token="wrong").status == 401
    assert http("GET", url, token=ADMIN_TOKEN).json() == {"locked": True, "secondsLeft": 0}


def test_concurrent_approvals_have_exactly_one_winner(service: ServiceProcess, cregistry) -> None:  # type: ignore[no-untyped-def]
    cregistry("unlock")
    for password in ("first-secret", "second-secret", "third-secret"):
        connect(service, "json", "twin", password)
    ids = [r["id"] for r in json.loads(cregistry("requests", "--json").stdout)["requests"]]
    assert len(ids) == 3

    def approve(request_id: str) -> int:
        url = f"{service.api}/api/client-registry/requests/{request_id}/approve"
        return http("POST", url, token=ADMIN_TOKEN).status

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(approve, ids + ids))
    assert statuses.count(201) == 1
    assert set(statuses) <= {201, 404, 409}
    assert json.loads(cregistry("requests", "--json").stdout)["requests"] == []
    winner = ids[statuses.index(201) % 3]
    password = {_pairing_id("twin", p): p for p in ("first-secret", "second-secret", "third-secret")}[
        winner.split(":")[1]
    ]
    assert connect(service, "json", "twin", password).status == 200


def test_redis_stopped_then_back(service: ServiceProcess, redis_process: RedisProcess, cregistry) -> None:  # type: ignore[no-untyped-def]
    cregistry("unlock")
    connect(service, "json", "steady", "steady-secret")
    cregistry("approve", "steady")
    assert connect(service, "json", "steady", "steady-secret").status == 200

    redis_process.stop()
    for route, body in [
        ("user", {"username": "steady", "password": "steady-secret", "clientid": "c"}),
        ("acl", {"username": "steady", "clientid": "c", "topic": "t", "acc": 1}),
        ("superuser", {"username": "steady"}),
    ]:
        answer = http("POST", f"{service.broker}/mqtt/{route}", json_body=body)
        assert answer.status == 503 and answer.json()["ok"] is False
        assert answer.seconds < 2.0
    cli = cregistry("status")
    assert cli.returncode == 6 and cli.stderr.startswith("Error: cannot reach Redis")
    assert "Traceback" not in cli.stderr

    redis_process.start()  # same port, data from its append-only file
    assert connect(service, "json", "steady", "steady-secret").status == 200


def test_stalled_redis_answers_503_within_two_seconds(service: ServiceProcess, redis_process: RedisProcess) -> None:
    client = redis_process.client()
    client.execute_command("CLIENT", "PAUSE", "3000", "ALL")
    try:
        answer = connect(service, "json", "someone", "some-secret")
        assert answer.status == 503
        assert answer.seconds < 2.0
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
        client.close()


def test_embedded_redis_when_no_url_is_given() -> None:
    embedded_port = free_port()
    service = ServiceProcess({"CREGISTRY_EMBEDDED_REDIS_PORT": str(embedded_port), "CREGISTRY_BCRYPT_COST": "4"})
    service.env.pop("CREGISTRY_REDIS_URL", None)
    service.env.pop("CREGISTRY_ADMIN_TOKEN", None)
    service.start()
    try:
        output = service.output()
        assert "EMBEDDED IN-MEMORY Redis" in output and "LOST WHEN THIS PROCESS EXITS" in output
        token = output.split("admin token is: ")[1].split()[0]
        env = {"CREGISTRY_EMBEDDED_REDIS_PORT": str(embedded_port)}
        assert run_cli("unlock", "--seconds", "30", env=env).stdout.strip() == "unlocked, 30 s left"
        status = http("GET", f"{service.api}/api/client-registry", token=token).json()
        assert status["locked"] is False
    finally:
        service.stop(signal.SIGTERM)
        service.cleanup()
    with pytest.raises(TimeoutError):
        wait_for_port(embedded_port, timeout=2)


def _pairing_id(username: str, password: str) -> str:
    import hashlib

    return hashlib.sha256(f"{username}:{password}".encode()).hexdigest()[:6]
