"""Figures for docs/capacity.md, measured on this machine.

    python bench/capacity.py [--users 20000] [--permissions 5] [--seconds 10]

1. Redis memory per user and per permission: INFO used_memory of a fresh
   redis-server before and after creating N users (through cregistry's own
   UserStore, so the keys are the real ones) and M permissions each.
2. Broker checks per second per service core: one `cregistry serve` worker,
   a loop of POST /mqtt/acl (and of POST /mqtt/user for a device whose
   password was verified before) over one keep-alive connection per client
   thread, without and with the feed position the plugin sends; the
   worker's CPU seconds are read from /proc, so the figure is checks per
   CPU-second of the worker, whatever else the machine runs.
3. bcrypt at the default cost (10): seconds per check on one core.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cregistry import passwords, services  # noqa: E402
from cregistry.config import Config  # noqa: E402
from cregistry.keys import Keys  # noqa: E402
from harness.sentinel import RedisNode  # noqa: E402
from harness.service import ServiceProcess, run_cli  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def measure_memory(users: int, permissions: int) -> dict[str, Any]:
    node = RedisNode()
    node.start()
    try:
        client = node.client()
        config = Config(redis_url=f"redis://127.0.0.1:{node.port}/0", bcrypt_cost=4)
        store = services.build(client, config).users
        keys = Keys(config.key_prefix)
        # A real bcrypt hash (60 characters at every cost); hashing each user
        # would only make the script slow, not the hash longer.
        sample_hash = passwords.hash_password("x" * 12, 4)
        real_hash = passwords.hash_password
        passwords.hash_password = lambda _password, _cost: sample_hash  # type: ignore[assignment]
        try:
            store.add("warm-up-user", "secret-pw")  # creates the index and the audit stream
            before = used_memory(client)
            for n in range(users):
                store.add(f"device-{n:07d}", "secret-pw")
            client.delete(keys.audit())  # capped at CREGISTRY_AUDIT_MAX: a fixed cost, measured below
            after_users = used_memory(client)
            for n in range(users):
                for p in range(permissions):
                    store.grant(f"device-{n:07d}", f"devices/%u/channel-{p}/#", "readWrite")
            client.delete(keys.audit())
            after_permissions = used_memory(client)
            for n in range(users):
                # What a verified password costs (verification.py): a 64-hex token with a TTL.
                client.set(keys.user_verified(f"device-{n:07d}"), "f" * 64, ex=7 * 24 * 3600)
            after_tokens = used_memory(client)
        finally:
            passwords.hash_password = real_hash  # type: ignore[assignment]
        audit_before = used_memory(client)
        audit_entries = 10_000
        for n in range(audit_entries):
            store.grant("warm-up-user", f"t/{n % 50}", "read")
        audit_after = used_memory(client)
        sample = f"device-{0:07d}"
        return {
            "users": users,
            "permissions_per_user": permissions,
            "bytes_per_user": round((after_users - before) / users),
            "bytes_per_permission": round((after_permissions - after_users) / (users * permissions)),
            "bytes_per_verified_token": round((after_tokens - after_permissions) / users),
            "bytes_per_audit_entry": round((audit_after - audit_before) / audit_entries),
            "memory_usage_of_one_user_hash": client.memory_usage(keys.user(sample)),
            "memory_usage_of_one_permissions_hash": client.memory_usage(keys.user_permissions(sample)),
            "redis_version": client.info("server")["redis_version"],
        }
    finally:
        node.cleanup()


def worker_pid(master: int) -> int:
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True).stdout
    pids = [int(p) for p in children.split()]
    if len(pids) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {pids}")
    return pids[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def hammer(
    port: int, path: str, body: dict[str, Any], seconds: float, threads: int, position: str | None = None
) -> tuple[int, dict[int, int]]:
    """`threads` clients looping POST `path`; with `position` sent as the plugin sends its feed position."""
    counts: list[int] = []
    headers = {"Content-Type": "application/json"}
    if position is not None:
        headers["X-Cregistry-Position"] = position
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    payload = json.dumps(body).encode()
    stop_at = time.monotonic() + seconds

    def loop() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        done = 0
        seen: dict[int, int] = {}
        while time.monotonic() < stop_at:
            connection.request("POST", path, payload, headers)
            response = connection.getresponse()
            response.read()
            seen[response.status] = seen.get(response.status, 0) + 1
            done += 1
        connection.close()
        with lock:
            counts.append(done)
            for status, count in seen.items():
                statuses[status] = statuses.get(status, 0) + count

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts), statuses


def measure_checks(seconds: float, threads: int) -> dict[str, Any]:
    node = RedisNode()
    node.start()
    url = f"redis://127.0.0.1:{node.port}/0"
    service = ServiceProcess(
        {
            "CREGISTRY_REDIS_URL": url,
            "CREGISTRY_ADMIN_TOKEN": "capacity-admin-token",
            "CREGISTRY_WORKERS": "1",
            "CREGISTRY_THREADS": "8",
            "CREGISTRY_LOG_LEVEL": "WARNING",
        }
    )
    service.start()
    try:
        env = {"CREGISTRY_REDIS_URL": url}
        for args, stdin in (
            (("user", "add", "sensor-1", "--password-stdin"), "sensor-secret\n"),
            (("grant", "sensor-1", "devices/%u/#", "readWrite"), None),
            (("role", "grant", "fleet", "fleet/+/cmd", "read"), None),
            (("role", "assign", "sensor-1", "fleet"), None),
        ):
            result = run_cli(*args, env=env, stdin=stdin)
            if result.returncode:
                raise RuntimeError(result.stderr)
        assert service.process is not None
        worker = worker_pid(service.process.pid)
        results: dict[str, Any] = {"client_threads": threads, "seconds": seconds}
        user_body = {"username": "sensor-1", "password": "sensor-secret", "clientid": "c1"}
        hammer(service.broker_port, "/mqtt/user", user_body, 1.0, 1)  # pays bcrypt once; then the token path
        changes = http.client.HTTPConnection("127.0.0.1", service.broker_port, timeout=10)
        changes.request("GET", "/mqtt/changes")
        position = json.loads(changes.getresponse().read())["position"]
        changes.close()
        time.sleep(0.5)  # the worker's feed follower reads the feed every 100 ms
        acl_body = {"username": "sensor-1", "clientid": "c1", "topic": "devices/sensor-1/t", "acc": 2}
        # Without a position (go-auth) every check reads Redis; with the plugin's, the worker's caches answer.
        for name, path, body, seen in (
            ("acl", "/mqtt/acl", acl_body, None),
            ("user_verified", "/mqtt/user", user_body, None),
            ("acl_with_position", "/mqtt/acl", acl_body, position),
            ("user_verified_with_position", "/mqtt/user", user_body, position),
        ):
            cpu_before = cpu_seconds(worker)
            started = time.monotonic()
            done, statuses = hammer(service.broker_port, path, body, seconds, threads, seen)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(worker) - cpu_before
            results[name] = {
                "checks": done,
                "statuses": statuses,
                "checks_per_second": round(done / elapsed),
                "worker_cpu_seconds": round(cpu, 2),
                "checks_per_cpu_second": round(done / cpu) if cpu else None,
            }
        return results
    finally:
        service.cleanup()
        node.cleanup()


def measure_bcrypt(rounds: int = 20) -> dict[str, Any]:
    stored = passwords.hash_password("sensor-secret", 10)
    started = time.process_time()
    for _ in range(rounds):
        passwords.verify_password("sensor-secret", stored)
    return {"cost": 10, "cpu_seconds_per_check": round((time.process_time() - started) / rounds, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--permissions", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    figures = {
        "memory": measure_memory(args.users, args.permissions),
        "checks": measure_checks(args.seconds, args.threads),
        "bcrypt": measure_bcrypt(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
