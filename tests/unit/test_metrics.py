"""GET /metrics on the broker listener, in one process.

The metrics live in the process (tests/integration/test_metrics.py proves
them across gunicorn's workers), so each test compares before and after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import fakeredis
import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

import cregistry.connections
import cregistry.passwords
from cregistry.config import Config
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.registration import Registration
from cregistry.users import UserStore
from cregistry.web import create_app, metrics

USER = {"username": "sensor-1", "password": "secret1", "clientid": "client-1"}


@pytest.fixture
def clock() -> Callable[[], float]:
    return time.time  # the app reads the real time


def scrape(broker: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = broker.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(broker: FlaskClient, name: str, **labels: str) -> float:
    return scrape(broker).get((name, tuple(sorted(labels.items()))), 0.0)


def test_not_on_the_api_listener(api: FlaskClient) -> None:
    assert api.get("/metrics").status_code == 404


def test_checks_by_route_and_result(broker: FlaskClient, users: UserStore) -> None:
    users.add("sensor-1", "secret1")
    users.set_permissions("sensor-1", [{"topic": "a/#", "access": "read"}])
    before = scrape(broker)
    calls = [
        ("/mqtt/user", USER, "user", "allow"),
        ("/mqtt/user", {**USER, "password": "wrong-one"}, "user", "deny"),
        ("/mqtt/user", {"username": "sensor-1"}, "user", "deny"),  # 400: malformed
        ("/mqtt/acl", {"username": "sensor-1", "clientid": "c", "topic": "a/b", "acc": 1}, "acl", "allow"),
        ("/mqtt/acl", {"username": "sensor-1", "clientid": "c", "topic": "b/c", "acc": 2}, "acl", "deny"),
        ("/mqtt/superuser", {"username": "sensor-1"}, "superuser", "deny"),
    ]
    for path, body, _route, _result in calls:
        broker.post(path, json=body)
    after = scrape(broker)
    for route, result in {(c[2], c[3]) for c in calls}:
        key = ("cregistry_checks_total", (("result", result), ("route", route)))
        expected = sum(1 for c in calls if (c[2], c[3]) == (route, result))
        assert after.get(key, 0) - before.get(key, 0) == expected, (route, result)
    count = ("cregistry_check_duration_seconds_count", (("route", "user"),))
    assert after[count] - before.get(count, 0) == 3
    fastest = ("cregistry_check_duration_seconds_bucket", (("le", "0.0001"), ("route", "user")))
    assert fastest in after  # the buckets resolve a tenth of a millisecond


def test_a_check_redis_cannot_answer_is_an_error_and_a_redis_error(config: Config) -> None:
    broker = create_app(
        config, listener="broker", connection=cregistry.connections.connect("redis://127.0.0.1:1/0", 0.5)
    ).test_client()
    errors_before = sum(v for (name, _), v in scrape(broker).items() if name == "cregistry_redis_errors_total")
    before = value(broker, "cregistry_checks_total", route="acl", result="error")
    response = broker.post("/mqtt/acl", json={"username": "sensor-1", "clientid": "c", "topic": "a", "acc": 1})
    assert response.status_code == 503
    samples = scrape(broker)  # this scrape fails on Redis too, and says so
    assert samples[("cregistry_checks_total", (("result", "error"), ("route", "acl")))] == before + 1
    assert samples[("cregistry_redis_up", ())] == 0
    assert ("cregistry_pending_requests", ()) not in samples
    errors_after = sum(v for (name, _), v in samples.items() if name == "cregistry_redis_errors_total")
    assert errors_after >= errors_before + 1


def test_the_feed_route_is_counted(broker: FlaskClient) -> None:
    """GET /mqtt/changes (endpoint broker.changes) is counted like the checks."""
    before = value(broker, "cregistry_checks_total", route="feed", result="allow")
    assert broker.get("/mqtt/changes").status_code == 200
    assert value(broker, "cregistry_checks_total", route="feed", result="allow") == before + 1


def test_other_routes_are_not_checks(broker: FlaskClient) -> None:
    before = scrape(broker)
    broker.get("/healthz")
    broker.get("/mqtt/nothing")
    broker.get("/metrics")
    after = scrape(broker)
    checks = {k: v for k, v in after.items() if k[0] == "cregistry_checks_total"}
    assert checks == {k: v for k, v in before.items() if k[0] == "cregistry_checks_total"}


def test_password_checks_by_path(
    broker: FlaskClient, users: UserStore, config: Config, connection: fakeredis.FakeRedis
) -> None:
    users.add("sensor-1", "secret1")

    def path_count(path: str, result: str) -> float:
        return value(broker, "cregistry_password_checks_total", path=path, result=result)

    before = {(p, r): path_count(p, r) for p in ("token", "bcrypt", "limited") for r in ("accepted", "refused")}
    broker.post("/mqtt/user", json=USER)  # bcrypt, then the verified token is stored
    broker.post("/mqtt/user", json=USER)  # the token: no bcrypt
    # Guesses with a client ID of its own (the device's own would get occasional tries, verification.py).
    guess = {**USER, "password": "wrong-one", "clientid": "guesser"}
    broker.post("/mqtt/user", json=guess)  # the token proves another password: no bcrypt
    connection.delete(Keys("cregistry").user_verified("sensor-1"))  # the token lapsed
    for _ in range(config.failure_limit - 1):
        broker.post("/mqtt/user", json=guess)
    broker.post("/mqtt/user", json=guess)  # over the limit
    assert path_count("bcrypt", "accepted") - before[("bcrypt", "accepted")] == 1
    assert path_count("token", "accepted") - before[("token", "accepted")] == 1
    assert path_count("token", "refused") - before[("token", "refused")] == 1
    assert path_count("bcrypt", "refused") - before[("bcrypt", "refused")] == config.failure_limit - 1
    assert path_count("limited", "refused") - before[("limited", "refused")] == 1


def test_password_checks_waiting_for_bcrypt(
    connection: fakeredis.FakeRedis, users: UserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config(bcrypt_cost=4, admin_token="test-admin-token", bcrypt_concurrency=1)
    broker = create_app(config, listener="broker", connection=connection).test_client()
    users.add("sensor-1", "secret1")
    release = threading.Event()
    started = threading.Event()
    verify = cregistry.passwords.verify_password

    def slow_verify(password: str, password_hash: str) -> bool:
        started.set()
        release.wait(10)
        return verify(password, password_hash)

    monkeypatch.setattr(cregistry.passwords, "verify_password", slow_verify)
    baseline = value(broker, "cregistry_password_checks_waiting")
    threads = [threading.Thread(target=broker.post, args=("/mqtt/user",), kwargs={"json": USER}) for _ in range(2)]
    threads[0].start()
    assert started.wait(5)
    threads[1].start()
    deadline = time.monotonic() + 5
    while value(broker, "cregistry_password_checks_waiting") != baseline + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert value(broker, "cregistry_password_checks_waiting") == baseline + 1
    release.set()
    for thread in threads:
        thread.join(5)
    assert value(broker, "cregistry_password_checks_waiting") == baseline


def test_pending_requests_and_the_unlock_state_come_from_redis(
    broker: FlaskClient, registration: Registration, lock: RegistryLock
) -> None:
    samples = scrape(broker)
    assert samples[("cregistry_redis_up", ())] == 1
    assert samples[("cregistry_registry_unlocked", ())] == 0
    assert samples[("cregistry_registry_unlock_seconds_left", ())] == 0
    assert samples[("cregistry_pending_requests", ())] == 0
    lock.unlock(120)
    registration.record_attempt("sensor-1", "secret1", "c1", "mqtt")
    registration.record_attempt("sensor-2", "secret2", "c2", "mqtt")
    samples = scrape(broker)
    assert samples[("cregistry_registry_unlocked", ())] == 1
    assert 119 <= samples[("cregistry_registry_unlock_seconds_left", ())] <= 120
    assert samples[("cregistry_pending_requests", ())] == 2


def test_admin_and_registration_answers_by_status(api: FlaskClient, broker: FlaskClient) -> None:
    auth = {"Authorization": "Bearer test-admin-token"}
    before = scrape(broker)
    api.get("/api/users", headers=auth)
    api.get("/api/users")
    api.get("/api/users/nobody-here", headers=auth)
    api.post("/api/client-registry/register", json={"username": "sensor-1", "password": "secret1"})  # locked
    api.get("/api/openapi.json")  # neither
    after = scrape(broker)

    def delta(name: str, status: str) -> float:
        key = (name, (("status", status),))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("cregistry_admin_requests_total", "200") == 1
    assert delta("cregistry_admin_requests_total", "401") == 1
    assert delta("cregistry_admin_requests_total", "404") == 1
    assert delta("cregistry_registrations_total", "423") == 1


def test_check_result_of_a_status() -> None:
    assert [metrics.check_result(s) for s in (200, 400, 403, 503, 500)] == ["allow", "deny", "deny", "error", "error"]


def test_the_metrics_directory_must_come_before_prometheus_client(caplog: pytest.LogCaptureFixture) -> None:
    """prometheus_client picks files or memory when first imported; once it
    is (as here), a directory set afterwards is ignored, and serve says so."""
    import os

    from cregistry import server

    with server.metrics_directory() as directory:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == directory
        assert os.path.isdir(directory)
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert not os.path.exists(directory)
    assert "imported before the metrics directory was set" in caplog.text
