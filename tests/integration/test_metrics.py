"""GET /metrics of the real `cregistry serve` with two gunicorn workers: the
counters add up over both (prometheus_client's multiprocess mode), a dead
worker's counts are kept and its live gauges dropped, and the metrics
directory is fresh for each start and gone after it."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import children_of
from harness.redis_server import RedisProcess
from harness.service import ServiceProcess, http, running_service
from tests.integration.conftest import ADMIN_TOKEN

DEVICE = {"username": "sensor-1", "password": "secret1", "clientid": "client-1"}


@pytest.fixture
def two_workers(redis_process: RedisProcess) -> Iterator[ServiceProcess]:
    """A service of its own, so that its counters start at zero."""
    # Both workers serve the broker listener, so both count checks.
    with running_service(redis_process.url, ADMIN_TOKEN, {"CREGISTRY_BROKER_PROCESSES": "2"}) as service:
        yield service


@pytest.fixture
def one_broker_process(redis_process: RedisProcess) -> Iterator[ServiceProcess]:
    """Two workers, one serving the broker listener (the default)."""
    with running_service(redis_process.url, ADMIN_TOKEN) as service:
        yield service


def serving_workers(service: ServiceProcess) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker (\d+) serves the broker listener", service.output())]


def workers_of(service: ServiceProcess) -> list[int]:
    assert service.process is not None
    return sorted(children_of(service.process.pid))


def metrics_directory(service: ServiceProcess) -> Path:
    """The directory this start of the service logged (the last one)."""
    found = re.findall(r"worker metrics in (\S+) \(removed on exit\)", service.output())
    assert found, service.output()
    return Path(found[-1])


def checks_in_file(path: Path) -> float:
    """What one worker counted in cregistry_checks_total (its own file; a
    worker that has not counted anything yet has none)."""
    total = 0.0
    if not path.exists():
        return total
    for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(str(path)):
        _metric, sample, _labels, _help = json.loads(key)
        if sample == "cregistry_checks_total":
            total += value
    return total


def scrape(service: ServiceProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = http("GET", f"{service.broker}/metrics")
    assert answer.status == 200
    samples = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def checks_total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(value for (name, _labels), value in samples.items() if name == "cregistry_checks_total")


def test_counters_add_up_over_both_workers(two_workers: ServiceProcess) -> None:
    service = two_workers
    user = {"username": "sensor-1", "password": "secret1"}
    assert http("POST", f"{service.api}/api/users", json_body=user, token=ADMIN_TOKEN).status == 201
    permissions = [{"topic": "sensors/%u/#", "access": "readWrite"}]
    answer = http("PUT", f"{service.api}/api/users/sensor-1/permissions", json_body=permissions, token=ADMIN_TOKEN)
    assert answer.status == 200
    directory = metrics_directory(service)
    workers = workers_of(service)
    assert len(workers) == 2

    def one_round() -> None:
        assert http("POST", f"{service.broker}/mqtt/user", json_body=DEVICE).status == 200
        acl = {"username": "sensor-1", "clientid": "client-1", "topic": "sensors/sensor-1/t", "acc": 2}
        assert http("POST", f"{service.broker}/mqtt/acl", json_body=acl).status == 200
        assert http("POST", f"{service.broker}/mqtt/acl", json_body={**acl, "topic": "other"}).status == 403

    # Each request on a new connection; concurrent, so that both workers accept some.
    rounds = 0
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while rounds < 400:
            list(pool.map(lambda _: one_round(), range(40)))
            rounds += 40
            per_worker = {pid: checks_in_file(directory / f"counter_{pid}.db") for pid in workers}
            if all(per_worker.values()):
                break
    assert all(per_worker.values()), f"one worker served every check: {per_worker}"
    checks = 3 * rounds
    assert sum(per_worker.values()) == checks

    # Whichever worker answers the scrape reports the sum of both.
    for _ in range(10):
        samples = scrape(service)
        assert checks_total(samples) == checks
        assert samples[("cregistry_checks_total", (("result", "allow"), ("route", "user")))] == rounds
        assert samples[("cregistry_checks_total", (("result", "allow"), ("route", "acl")))] == rounds
        assert samples[("cregistry_checks_total", (("result", "deny"), ("route", "acl")))] == rounds
        assert samples[("cregistry_check_duration_seconds_count", (("route", "acl"),))] == 2 * rounds
        accepted = sum(
            samples.get(("cregistry_password_checks_total", (("path", path), ("result", "accepted"))), 0)
            for path in ("token", "bcrypt")
        )
        assert accepted == rounds
        assert samples[("cregistry_password_checks_waiting", ())] == 0
        assert samples[("cregistry_admin_requests_total", (("status", "201"),))] == 1
        assert samples[("cregistry_admin_requests_total", (("status", "200"),))] == 1
        assert samples[("cregistry_redis_up", ())] == 1

    # A worker that dies keeps its counts; its live gauge goes with it.
    gone = workers[0]
    assert (directory / f"gauge_livesum_{gone}.db").exists()
    os.kill(gone, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (len(workers_of(service)) < 2 or gone in workers_of(service)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone not in workers_of(service) and len(workers_of(service)) == 2, service.output()[-3000:]
    assert not (directory / f"gauge_livesum_{gone}.db").exists()
    assert checks_total(scrape(service)) == checks


def test_a_fresh_metrics_directory_per_start_removed_on_exit(two_workers: ServiceProcess) -> None:
    service = two_workers
    directory = metrics_directory(service)
    assert directory.is_dir()
    http("POST", f"{service.broker}/mqtt/superuser", json_body={"username": "sensor-1"})
    assert checks_total(scrape(service)) == 1
    service.stop()
    assert not directory.exists()
    service.start()
    assert metrics_directory(service) != directory
    assert checks_total(scrape(service)) == 0


def test_a_standing_by_worker_takes_over_the_broker_listener(one_broker_process: ServiceProcess) -> None:
    service = one_broker_process
    assert http("POST", f"{service.broker}/mqtt/user", json_body=DEVICE).status == 403  # no such user yet
    serving = serving_workers(service)
    assert len(serving) == 1 and serving[0] in workers_of(service), service.output()[-3000:]
    os.kill(serving[0], signal.SIGKILL)
    started = time.monotonic()
    answer = http("POST", f"{service.broker}/mqtt/user", json_body=DEVICE)  # waits in the listening queue
    took = time.monotonic() - started
    assert answer.status == 403, answer.body
    assert took < 2.0, f"the broker listener was gone for {took:.2f} s"
    now_serving = serving_workers(service)
    assert len(now_serving) == 2 and now_serving[1] != serving[0], service.output()[-3000:]


def test_not_on_the_api_listener(service: ServiceProcess) -> None:
    assert http("GET", f"{service.api}/metrics").status == 404
    assert http("GET", f"{service.broker}/metrics").status == 200
