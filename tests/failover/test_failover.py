"""A Sentinel failover under load: the primary is killed with
SIGKILL while two services answer connects, ACL checks and approvals.

During the failover every answer is a grant that was right, a refusal or a
503; no wrong password and no unknown user is ever let in; both services
recover on the new primary within 30 s without a restart; and every approval
answered 201 (CREGISTRY_REDIS_MIN_REPLICAS=1) is still there afterwards.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import secrets
import threading
import time
from typing import Any

from cregistry.connections import connect
from cregistry.keys import Keys
from harness.sentinel import FailoverStack
from harness.service import ServiceProcess, http, run_cli

from .conftest import ADMIN_TOKEN

PASSWORD = "alice-secret-1"
RECOVERY_BOUND = 30.0  # seconds until both services work on the new primary, without a restart
BROKER_BOUND = 2.0  # a broker check Redis cannot answer is a 503 within 2 seconds


@dataclasses.dataclass
class Answer:
    kind: str
    service: int
    status: int
    seconds: float
    at: float


ALLOWED = {
    # kind: statuses that are right for it at any time, failover or not
    "user-right": {200, 503},
    "user-wrong": {403, 503},
    "user-unknown": {403, 503},
    "acl-granted": {200, 503},
    "acl-refused": {403, 503},
    "register": {202, 429, 503},  # 429: the registration bcrypt slots are busy
    "approve": {201, 404, 503},
}
NEVER_200 = {"user-wrong", "user-unknown", "acl-refused"}


class Traffic:
    """Threads that keep checking and approving through both services."""

    def __init__(self, services: list[ServiceProcess]) -> None:
        self.services = services
        self.answers: list[Answer] = []
        self.approved: list[tuple[str, str, int]] = []  # username, password, service that said 201
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.counter = itertools.count()
        self.threads = [threading.Thread(target=self._checks, args=(n,), daemon=True) for n in range(4)]
        self.threads += [threading.Thread(target=self._approvals, args=(n,), daemon=True) for n in range(2)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _record(self, kind: str, service: int, url: str, **options: Any) -> int:
        """POST to `url`; the status, or 0 when the service did not answer at all."""
        started = time.monotonic()
        try:
            status = http("POST", url, **options).status
        except OSError:
            status = 0
        with self.lock:
            self.answers.append(Answer(kind, service, status, time.monotonic() - started, started))
        return status

    def _checks(self, number: int) -> None:
        kinds = ["user-right", "user-wrong", "user-unknown", "acl-granted", "acl-refused"]
        for index in itertools.count(number):
            if self.stopping.is_set():
                return
            service = index % 2
            broker = self.services[service].broker
            kind = kinds[index % len(kinds)]
            if kind.startswith("user-"):
                username = f"ghost-{index % 7}" if kind == "user-unknown" else "alice"
                password = PASSWORD if kind == "user-right" else f"wrong-{index}"
                body = {"username": username, "password": password, "clientid": f"c-{index}"}
                self._record(kind, service, f"{broker}/mqtt/user", json_body=body)
            else:
                topic = "devices/alice/state" if kind == "acl-granted" else "other/state"
                body = {"username": "alice", "clientid": "c-1", "topic": topic, "acc": 2}
                self._record(kind, service, f"{broker}/mqtt/acl", json_body=body)

    def _approvals(self, number: int) -> None:
        while not self.stopping.is_set():
            n = next(self.counter)
            self.register_and_approve(f"dev-{number}-{n}", n % 2)

    def register_and_approve(self, username: str, service: int) -> bool:
        """A device registers through one service, the operator approves through the other."""
        password = secrets.token_hex(8)
        body = {"username": username, "password": password}
        register_url = f"{self.services[service].api}/api/client-registry/register"
        if self._record("register", service, register_url, json_body=body) != 202:
            return False
        other = 1 - service
        request_id = f"{username}:{pairing_id(username, password)}"
        approve_url = f"{self.services[other].api}/api/client-registry/requests/{request_id}/approve"
        status = self._record("approve", other, approve_url, token=ADMIN_TOKEN)
        if status == 201:
            with self.lock:
                self.approved.append((username, password, other))
        return status == 201


def pairing_id(username: str, password: str) -> str:
    return hashlib.sha256(f"{username}:{password}".encode()).hexdigest()[:6]


def check_user(service: ServiceProcess, username: str, password: str) -> int:
    body = {"username": username, "password": password, "clientid": "probe"}
    return http("POST", f"{service.broker}/mqtt/user", json_body=body).status


def recovered(stack: FailoverStack, traffic: Traffic, attempt: int) -> bool:
    """Both services grant alice, read the registry and approve a new device."""
    for number, service in enumerate(stack.services):
        if check_user(service, "alice", PASSWORD) != 200:
            return False
        if http("GET", f"{service.api}/api/client-registry", token=ADMIN_TOKEN).status != 200:
            return False
        if not traffic.register_and_approve(f"probe-{attempt}-{number}", 1 - number):
            return False
    return True


def test_cli_works_on_the_sentinel_url(stack: FailoverStack, cli_env: dict[str, str]) -> None:
    unlocked = run_cli("--json", "unlock", "--seconds", "600", env=cli_env)
    assert unlocked.returncode == 0, unlocked.stderr
    assert 590 <= json.loads(unlocked.stdout)["secondsLeft"] <= 600
    status = run_cli("--json", "status", env=cli_env)
    assert status.returncode == 0, status.stderr
    assert 590 <= json.loads(status.stdout)["secondsLeft"] <= 600
    locked = run_cli("lock", env=cli_env)
    assert (locked.returncode, locked.stderr) == (0, "")
    assert json.loads(run_cli("--json", "status", env=cli_env).stdout)["secondsLeft"] == 0
    # Acknowledged with CREGISTRY_REDIS_MIN_REPLICAS=1: a replica had the unlock (and its audit entry) by then.
    # The CLI process has exited, so at least one replica holds both entries now.
    lengths = []
    for replica in stack.group.replicas:
        with replica.client() as client:
            lengths.append(client.xlen(Keys("cregistry").audit()))
    assert max(lengths) >= 2, lengths


def test_a_failover_loses_no_acknowledged_approval_and_lets_no_one_in(
    stack: FailoverStack, cli_env: dict[str, str]
) -> None:
    for args, stdin in (
        (("user", "add", "alice", "--password-stdin"), PASSWORD + "\n"),
        (("grant", "alice", "devices/%u/#", "readWrite"), None),
        (("unlock", "--seconds", "600"), None),
    ):
        result = run_cli(*args, env=cli_env, stdin=stdin)
        assert result.returncode == 0, (args, result.stderr)
    for service in stack.services:
        assert check_user(service, "alice", PASSWORD) == 200

    traffic = Traffic(stack.services)
    traffic.start()
    try:
        time.sleep(3)  # traffic before the failover, to compare against
        old_primary = stack.group.primary
        killed_at = time.monotonic()
        old_primary.kill()
        attempt = 0
        while not recovered(stack, traffic, attempt):
            attempt += 1
            assert time.monotonic() - killed_at < RECOVERY_BOUND, (
                f"no recovery within {RECOVERY_BOUND} s\n{stack.group.output()[-3000:]}"
            )
            time.sleep(0.2)
        recovery = time.monotonic() - killed_at
        time.sleep(2)  # and some traffic after it
    finally:
        traffic.stop()

    new_primary = stack.group.primary_port()
    assert new_primary is not None and new_primary != old_primary.port
    statuses = collections.Counter(
        (a.kind, a.status, "before" if a.at < killed_at else "during" if a.at < killed_at + recovery else "after")
        for a in traffic.answers
    )
    summary = f"recovered in {recovery:.1f} s; answers: {sorted(statuses.items())}"
    print(summary)

    wrong = [a for a in traffic.answers if a.status not in ALLOWED[a.kind]]
    assert not wrong, (summary, wrong[:10])
    assert not [a for a in traffic.answers if a.kind in NEVER_200 and a.status == 200]
    slow = [a for a in traffic.answers if a.kind.startswith(("user-", "acl-")) and a.seconds > BROKER_BOUND]
    assert not slow, (summary, slow[:10])
    # The traffic really ran through the failover: 503s while it lasted, grants before and after it.
    assert statuses[("user-right", 503, "during")] > 0, summary
    after = [a for a in traffic.answers if a.at > killed_at + recovery and a.kind == "user-right"]
    assert after and all(a.status == 200 for a in after), summary

    # Every acknowledged approval survived, on the new primary, through both services.
    assert len(traffic.approved) >= 4, summary
    client = connect(stack.group.url, 5.0)
    try:
        for username, password, _service in traffic.approved:
            assert client.hget(Keys("cregistry").user(username), "passwordHash"), username
            for service in stack.services:
                assert check_user(service, username, password) == 200, username
    finally:
        client.close()

    # The CLI finds the new primary by itself too, and the unlock survived.
    status = run_cli("--json", "status", env=cli_env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["secondsLeft"] > 500
