"""cregistry benchmarks: every goal is a ratio of two figures measured in
the same run on the same machine, so the machine's speed cancels out.

    python bench/run.py [--quick] [--out bench/out]

Starts its own redis-server, `cregistry serve` and (when the go-auth plugin
is built) mosquitto, all on free loopback ports, and writes
bench/results.json, bench/out/report.md and bench/out/chart.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cregistry.config import Config  # noqa: E402
from cregistry.connections import connect  # noqa: E402
from cregistry.credentials import hash_password  # noqa: E402
from cregistry.keys import Keys  # noqa: E402
from cregistry.users import UserStore  # noqa: E402
from tests.harness import (  # noqa: E402
    GO_AUTH_SO,
    SHIPPED_GO_AUTH_CONF,
    MosquittoProcess,
    MqttClient,
    RedisProcess,
    ServiceProcess,
    free_port,
    http,
    render_mosquitto_conf,
)

SIZES = {
    "quick": {
        "storm_devices": 40,
        "acl_samples": 300,
        "publish_messages": 5_000,
        "memory_users": 300,
        "permissions": 4,
    },
    "full": {
        "storm_devices": 300,
        "acl_samples": 2_000,
        "publish_messages": 50_000,
        "memory_users": 3_000,
        "permissions": 10,
    },
}
GOALS = {"storm_speedup": (">=", 100.0), "acl_p50_vs_native": ("<=", 1.0), "cached_publish_ratio": (">=", 0.9)}
DEVICE_PASSWORD = "bench-device-password"
BCRYPT_COST = 10  # the production default: the storm is about what it costs


class Bench:
    def __init__(self, size: dict[str, int]) -> None:
        self.size = size
        self.redis = RedisProcess()
        self.redis.start()
        self.service = ServiceProcess(
            {
                "CREGISTRY_REDIS_URL": self.redis.url,
                "CREGISTRY_ADMIN_TOKEN": "bench-admin-token-0123456789",
                "CREGISTRY_BCRYPT_COST": str(BCRYPT_COST),
                "CREGISTRY_LOG_LEVEL": "WARNING",
            }
        )
        self.service.start()
        self.connection = connect(self.redis.url, 5)
        self.config = Config(redis_url=self.redis.url, bcrypt_cost=4)
        self.keys = Keys(self.config.key_prefix)
        self.figures: dict[str, Any] = {}
        self.notes: list[str] = []

    def close(self) -> None:
        self.service.cleanup()
        self.redis.cleanup()

    # -- Redis memory ----------------------------------------------------------
    def memory(self) -> None:
        self.connection.flushall()
        users = UserStore(self.connection, self.config)
        count = self.size["memory_users"]
        base = self._used_memory()
        stored_hash = hash_password(DEVICE_PASSWORD, 4)  # every cost gives a 60-byte hash
        self._create_users([f"mem-{i:06d}" for i in range(count)], stored_hash)
        after_users = self._used_memory()
        per_user_permissions = self.size["permissions"]
        for i in range(count):
            users.set_permissions(
                f"mem-{i:06d}",
                [{"topic": f"site/{j}/mem-{i:06d}/#", "access": "readWrite"} for j in range(per_user_permissions)],
            )
        after_permissions = self._used_memory()
        self.figures["redis_bytes_per_user"] = round((after_users - base) / count)
        self.figures["redis_bytes_per_permission"] = round(
            (after_permissions - after_users) / (count * per_user_permissions)
        )

    # -- the storm ---------------------------------------------------------------
    def storm_http(self) -> None:
        """Known devices' user checks, straight to cregistry at concurrency 1
        (as Mosquitto calls go-auth): bcrypt every time, then verified tokens."""
        names = self._storm_users()
        cold = self._timed(lambda: [self._user_check(n) for n in names])
        warm = self._timed(lambda: [self._user_check(n) for n in names])
        self.figures["storm_http_bcrypt_ms_per_check"] = round(cold / len(names) * 1000, 2)
        self.figures["storm_http_verified_ms_per_check"] = round(warm / len(names) * 1000, 3)
        self.figures["storm_http_speedup"] = round(cold / warm, 1)

    def storm_broker(self) -> None:
        """Known devices reconnecting through the real broker after a restart."""
        names = self._storm_users()  # no verified tokens: every connect pays bcrypt
        bcrypt_seconds = self._reconnect_all(names)
        verified_seconds = self._reconnect_all(names)  # tokens left by the first round
        self.figures["storm_devices"] = len(names)
        self.figures["storm_bcrypt_seconds"] = round(bcrypt_seconds, 3)
        self.figures["storm_verified_seconds"] = round(verified_seconds, 3)
        self.figures["storm_speedup"] = round(bcrypt_seconds / verified_seconds, 1)

    def _storm_users(self) -> list[str]:
        self.connection.flushall()
        names = [f"storm-{i:05d}" for i in range(self.size["storm_devices"])]
        self._create_users(names, hash_password(DEVICE_PASSWORD, BCRYPT_COST))
        return names

    def _reconnect_all(self, names: list[str]) -> float:
        broker = self._mosquitto()  # a fresh broker: go-auth's cache is empty, as after a restart
        try:

            def connect_one(name: str) -> str:
                client = MqttClient(broker.port, name, DEVICE_PASSWORD, name)
                try:
                    return client.connect(timeout=120)
                finally:
                    client.close()

            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                answers = list(pool.map(connect_one, names))
            elapsed = time.perf_counter() - started
        finally:
            broker.cleanup()
        refused = [a for a in answers if a != "Success"]
        if refused:
            raise RuntimeError(f"{len(refused)} storm connects failed: {refused[:3]}")
        return elapsed

    # -- ACL latency ---------------------------------------------------------
    def acl_latency(self) -> None:
        self.connection.flushall()
        self._create_users(["acl-dev"], hash_password(DEVICE_PASSWORD, 4))
        UserStore(self.connection, self.config).grant("acl-dev", "bench/%u/#", "readWrite")
        samples = self.size["acl_samples"]
        body = {"username": "acl-dev", "clientid": "acl-dev", "topic": "bench/acl-dev/t", "acc": 2}
        latencies = []
        for _ in range(samples):
            answer = http("POST", f"{self.service.broker}/mqtt/acl", json_body=body)
            assert answer.status == 200
            latencies.append(answer.seconds)
        self.figures["acl_http_p50_ms"] = round(statistics.median(latencies) * 1000, 3)
        if GO_AUTH_SO.exists():
            ours = self._publish_latency(self._mosquitto(cache=False), "acl-dev", samples)
            native = self._publish_latency(self._native_mosquitto("acl-dev"), "acl-dev", samples)
            self.figures["acl_publish_p50_ms_cregistry"] = round(ours * 1000, 3)
            self.figures["acl_publish_p50_ms_goauth_redis"] = round(native * 1000, 3)
            self.figures["acl_p50_vs_native"] = round(ours / native, 3)

    def _publish_latency(self, broker: MosquittoProcess, name: str, samples: int) -> float:
        """p50 of QoS 1 publish -> PUBACK: one write ACL check each, cache off."""
        try:
            client = MqttClient(broker.port, name, DEVICE_PASSWORD, name)
            assert client.connect() == "Success"
            latencies = []
            for i in range(samples):
                started = time.perf_counter()
                client.publish(f"bench/{name}/t", str(i).encode(), qos=1)
                latencies.append(time.perf_counter() - started)
            client.close()
            return statistics.median(latencies)
        finally:
            broker.cleanup()

    # -- cached publish throughput -------------------------------------------------
    def cached_publish(self) -> None:
        self.connection.flushall()
        self._create_users(["pub-dev", "sub-dev"], hash_password(DEVICE_PASSWORD, 4))
        users = UserStore(self.connection, self.config)
        users.grant("pub-dev", "bench/#", "write")
        users.grant("sub-dev", "bench/#", "read")
        with_auth = self._throughput(self._mosquitto(), auth=True)
        without = self._throughput(self._mosquitto(no_auth=True), auth=False)
        self.figures["publish_msgs_per_s_goauth_cached"] = round(with_auth)
        self.figures["publish_msgs_per_s_no_auth"] = round(without)
        self.figures["cached_publish_ratio"] = round(with_auth / without, 3)

    def _throughput(self, broker: MosquittoProcess, auth: bool) -> float:
        count = self.size["publish_messages"]
        try:
            sub = MqttClient(broker.port, "sub-dev" if auth else None, DEVICE_PASSWORD if auth else None, "sub-dev")
            pub = MqttClient(broker.port, "pub-dev" if auth else None, DEVICE_PASSWORD if auth else None, "pub-dev")
            assert sub.connect() == "Success" and pub.connect() == "Success"
            assert sub.subscribe("bench/#", qos=0) == 0
            pub.publish("bench/warm", b"warm", qos=1)  # fill go-auth's cache before timing
            assert sub.receive(10) is not None
            started = time.perf_counter()
            for i in range(count):
                pub.client.publish("bench/t", b"%d" % i, qos=0)
            pub.publish("bench/end", b"end", qos=1)
            received = 0
            while True:
                message = sub.receive(30)
                if message is None or message[0] == "bench/end":
                    break
                received += 1
            elapsed = time.perf_counter() - started
            sub.close()
            pub.close()
            if received < count:
                self.notes.append(f"{'go-auth' if auth else 'no-auth'} run: {count - received} QoS 0 messages dropped")
            return received / elapsed
        finally:
            broker.cleanup()

    # -- helpers ---------------------------------------------------------------
    def _mosquitto(self, *, cache: bool = True, no_auth: bool = False) -> MosquittoProcess:
        port = free_port()
        conf = render_mosquitto_conf(
            port=port,
            plugin=GO_AUTH_SO,
            cregistry_broker_port=self.service.broker_port,
            shipped=SHIPPED_GO_AUTH_CONF,
            no_auth=no_auth,
        )
        if not cache:
            conf = conf.replace("auth_opt_cache true", "auth_opt_cache false")
        broker = MosquittoProcess(conf, port)
        broker.start()
        return broker

    def _native_mosquitto(self, name: str) -> MosquittoProcess:
        """go-auth's own Redis backend (in the same plugin) on the same permission."""
        native_db = 9
        native = self.redis.client()
        native.execute_command("SELECT", native_db)
        native.flushdb()
        native.set(name, hash_password(DEVICE_PASSWORD, 4))
        native.sadd(f"{name}:rwacls", f"bench/{name}/#")
        native.close()
        port = free_port()
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous false", f"auth_plugin {GO_AUTH_SO}"]
        lines += [
            "auth_opt_backends redis", "auth_opt_log_level warn", "auth_opt_hasher bcrypt",
            "auth_opt_redis_host 127.0.0.1", f"auth_opt_redis_port {self.redis.port}", f"auth_opt_redis_db {native_db}",
            "auth_opt_cache false", "persistence false", "log_dest stdout",
        ]  # fmt: skip
        broker = MosquittoProcess("\n".join(lines) + "\n", port)
        broker.start()
        return broker

    def _create_users(self, names: list[str], stored_hash: str) -> None:
        pipe = self.connection.pipeline(transaction=False)
        for name in names:
            pipe.hset(self.keys.user(name), mapping={"passwordHash": stored_hash, "createdAt": "0", "superuser": "0"})
            pipe.sadd(self.keys.users(), name)
        pipe.execute()

    def _user_check(self, name: str) -> None:
        body = {"username": name, "password": DEVICE_PASSWORD, "clientid": name}
        answer = http("POST", f"{self.service.broker}/mqtt/user", json_body=body, timeout=30)
        assert answer.status == 200, answer.body

    def _used_memory(self) -> int:
        return int(self.connection.info("memory")["used_memory"])

    @staticmethod
    def _timed(work: Callable[[], Any]) -> float:
        started = time.perf_counter()
        work()
        return time.perf_counter() - started


def plugin_provenance() -> str:
    stamp = GO_AUTH_SO.parent / ".go-auth.version"
    if not GO_AUTH_SO.exists():
        return "not built"
    return stamp.read_text().splitlines()[0] if stamp.exists() else "unknown build"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts, under a minute")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    bench = Bench(SIZES[mode])
    started = time.time()
    try:
        bench.memory()
        bench.storm_http()
        bench.acl_latency()
        if GO_AUTH_SO.exists():
            bench.storm_broker()
            bench.cached_publish()
        else:
            bench.notes.append(f"go-auth plugin not built ({GO_AUTH_SO}): the broker scenarios did not run")
    finally:
        bench.close()
    results = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "go_auth_plugin": plugin_provenance(),
        "bcrypt_cost": BCRYPT_COST,
        "sizes": SIZES[mode],
        **{name: bench.figures.get(name) for name in GOALS},
        "goals_met": {
            name: (None if bench.figures.get(name) is None else _meets(bench.figures[name], *goal))
            for name, goal in GOALS.items()
        },
        "figures": bench.figures,
        "notes": bench.notes,
    }
    (REPO / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(report(results))
    chart(results, args.out / "chart.png")
    print(report(results))


def _meets(value: float, operator: str, goal: float) -> bool:
    return value >= goal if operator == ">=" else value <= goal


def report(results: dict[str, Any]) -> str:
    lines = [
        f"# cregistry benchmark ({results['mode']}, {results['date']})",
        "",
        f"{results['machine']['cpus']} CPUs, Python {results['machine']['python']};"
        f" go-auth plugin: `{results['go_auth_plugin']}`; bcrypt cost {results['bcrypt_cost']}.",
        "",
        "| ratio | measured | goal | met |",
        "| --- | --- | --- | --- |",
    ]
    for name, (operator, goal) in GOALS.items():
        value = results[name]
        met = results["goals_met"][name]
        lines.append(f"| `{name}` | {'not measured' if value is None else value} | {operator} {goal} | "
                     f"{'-' if met is None else ('yes' if met else 'NO')} |")  # fmt: skip
    lines += ["", "| figure | value |", "| --- | --- |"]
    lines += [f"| `{k}` | {v} |" for k, v in results["figures"].items()]
    if results["notes"]:
        lines += ["", *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in GOALS if results[n] is not None]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4 * max(1, len(names)), 3.5))
    axes = axes if hasattr(axes, "__iter__") else [axes]
    for axis, name in zip(axes, names, strict=False):
        operator, goal = GOALS[name]
        value = results[name]
        axis.bar(
            ["measured", "goal"],
            [value, goal],
            color=["tab:green" if results["goals_met"][name] else "tab:red", "grey"],
        )
        axis.set_title(f"{name} ({operator} {goal})", fontsize=9)
    if not names:
        axes[0].text(0.5, 0.5, "no broker scenario ran", ha="center")
    fig.suptitle(f"cregistry benchmark, {results['mode']} ({results['date']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
