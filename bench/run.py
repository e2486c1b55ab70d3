"""cregistry benchmarks: every goal is a ratio of two figures measured in
the same run on the same machine, so the machine's speed cancels out.

    python bench/run.py [--quick] [--out bench/out] [--results bench/results.json]

Starts its own redis-server and `cregistry serve`, and a freshly started
mosquitto for every measurement, on both broker versions in turn: Debian's
mosquitto and 2.1.2 (CREGISTRY_BENCH_MOSQUITTO_21, else what
mosquitto/build-mosquitto-2.1.sh builds outside the repository; skipped with
a note where it cannot be had). On each: without auth, with that version's
dynamic security plugin, with cregistry's plugin (CREGISTRY_PLUGIN_SO,
default mosquitto/cregistry_auth.so), with the bench's allow-everything
plugin (bench/build/allow_all.so) and with go-auth where a build exists (2.0
only). The configurations take turns (A B A B ...) and every figure is the
median of its turns. The MQTT and HTTP load comes from bench/loadgen.c (built
by the Makefile). Writes bench/results.json, bench/out/report.md and
bench/out/chart-<version>.png. Exits 1 when something could not be measured;
a goal that is missed is reported, not fatal.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import brokers  # noqa: E402
from bench.brokers import (  # noqa: E402
    ALLOW_ALL,
    CREGISTRY,
    CREGISTRY_WARM,
    DYNSEC,
    GO_AUTH,
    NO_AUTH,
    SETUPS,
    Broker,
    DynsecUsers,
)
from bench.output import GOALS, chart, evaluate_goals, report  # noqa: E402
from cregistry import services  # noqa: E402
from cregistry.config import Config  # noqa: E402
from cregistry.connections import connect  # noqa: E402
from cregistry.keys import Keys  # noqa: E402
from cregistry.passwords import hash_password  # noqa: E402
from harness.mosquitto import MosquittoProcess  # noqa: E402
from harness.mqtt import MqttClient  # noqa: E402
from harness.redis_server import RedisProcess  # noqa: E402
from harness.service import ServiceProcess, http  # noqa: E402

LOADGEN = Path(os.environ.get("CREGISTRY_LOADGEN", REPO / "bench" / "build" / "loadgen"))
SIZES: dict[str, dict[str, int]] = {
    "quick": {
        "rounds": 2,
        "publish_messages": 20_000,
        "qos1_messages": 10_000,
        "fanout_messages": 2_000,
        "connect_devices": 300,
        "storm_devices": 1_000,
        "storm_concurrency": 50,
        "acl_samples": 300,
        "memory_users": 300,
        "permissions": 4,
        "cache_entries": 3_000,
        "latency_samples": 1,
        "flood_seconds": 2,
    },
    "full": {
        "rounds": 3,
        "publish_messages": 200_000,
        "qos1_messages": 100_000,
        "fanout_messages": 20_000,
        "connect_devices": 1_000,
        "storm_devices": 10_000,
        "storm_concurrency": 50,
        "acl_samples": 2_000,
        "memory_users": 3_000,
        "permissions": 10,
        "cache_entries": 100_000,
        "latency_samples": 3,
        "flood_seconds": 10,
    },
}
QOS1_INFLIGHT = 32  # the publisher's in-flight window (MQTT "receive maximum" seen from the client)
FANOUT_SUBSCRIBERS = 10
FANOUT_TOPICS = 100
ACL_CONCURRENCY = (1, 8)
ACL_USERS = 8
EFFECT_WINDOW_SECONDS = 5.0  # how long the approval/revocation scenarios wait for an effect
DEVICE_PASSWORD = "bench-device-password"
ADMIN_TOKEN = "bench-admin-token-0123456789"
BCRYPT_COST = 10  # the production default, paid by registrations and first connects
PROBE_USER = "bench-probe"
# The floods of the issue: unknown usernames at 500 CONNECTs/s (each one a
# question to the service), and wrong passwords for known usernames at 20/s
# (nothing the plugin may cache): usernames of devices that connected before,
# as a fleet's are (their verified tokens refuse other passwords without
# bcrypt), and, reported without a goal, of users never verified (a bcrypt
# at the service for each).
FLOODS = {"unknown": 500, "wrong_password": 20, "wrong_password_unverified": 20}
FLOOD_KNOWN_USERS = 20
FLOOD_CONCURRENCY = 500  # CONNECTs waiting for their CONNACK at once, at most


def key(setup: str) -> str:
    return setup.replace("-", "_")


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class Bench:
    def __init__(self, size: dict[str, int]) -> None:
        self.size = size
        self.figures: dict[str, Any] = {}
        self.runs: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.redis = RedisProcess()
        self.redis.start()
        self.service = ServiceProcess(
            {
                "CREGISTRY_REDIS_URL": self.redis.url,
                "CREGISTRY_ADMIN_TOKEN": ADMIN_TOKEN,
                "CREGISTRY_BCRYPT_COST": str(BCRYPT_COST),
                "CREGISTRY_LOG_LEVEL": "WARNING",
            }
        )
        self.service.start()
        self.connection = connect(self.redis.url, 5)
        self.config = Config(redis_url=self.redis.url, bcrypt_cost=4)
        self.keys = Keys(self.config.key_prefix)
        self.users = services.build(self.connection, self.config).users
        self.stored_hash = hash_password(DEVICE_PASSWORD, 4)  # verified once, then never bcrypt again
        self.verified: set[str] = set()
        self.dynsec: DynsecUsers | None = None
        self.broker: Broker | None = None
        self.plugin_setups: list[str] = []
        for name in (CREGISTRY, ALLOW_ALL):
            if not SETUPS[name].available():
                self.errors.append(f"{name}: {SETUPS[name].plugin} does not exist; its scenarios cannot run")
        if not SETUPS[GO_AUTH].available():
            self.notes.append(f"go-auth is not built ({SETUPS[GO_AUTH].plugin}): its columns are skipped")

    def use(self, broker: Broker) -> dict[str, Any]:
        """Measure on `broker` from now on, into a figures dict of its own (returned)."""
        self.broker = broker
        self.figures = {}
        if self.dynsec is not None:
            self.dynsec.cleanup()
        self.dynsec = None  # its hashes have the version's own iterations
        # The configurations a scenario compares; go-auth only where a build exists.
        self.plugin_setups = [s for s in (CREGISTRY, GO_AUTH) if SETUPS[s].available() and broker.supports(s)]
        if not broker.setup(DYNSEC).available():
            self.errors.append(f"{broker.version}: {broker.dynsec_plugin} does not exist; dynsec cannot run")
        return self.figures

    def close(self) -> None:
        self.connection.close()
        self.service.cleanup()
        self.redis.cleanup()
        if self.dynsec is not None:
            self.dynsec.cleanup()

    def scenario(self, name: str, work: Callable[[], None]) -> None:
        started = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            work()
        except Exception as error:  # one scenario's failure must not hide the others' figures
            traceback.print_exc()
            self.errors.append(f"{name}: {error}")
        print(f"bench: {name} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

    # -- the pieces every scenario uses ------------------------------------------
    def loadgen(self, mode: str, timeout: float = 600, **options: Any) -> dict[str, Any]:
        args = [str(LOADGEN), mode]
        for name, value in options.items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        lines = done.stdout.strip().splitlines()
        try:
            answer: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            raise RuntimeError(f"loadgen {mode}: exit {done.returncode}, {done.stderr.strip()[-500:]}") from None
        if done.returncode != 0 or "error" in answer:
            raise RuntimeError(f"loadgen {mode}: {answer.get('error', done.stderr.strip()[-500:])}")
        return answer

    def tag(self) -> str:
        """The broker version in a username ("2112"): each version's one-off devices are its own."""
        assert self.broker is not None
        return self.broker.version.replace(".", "")

    def start(self, setup: str) -> MosquittoProcess:
        if setup == DYNSEC and self.dynsec is None:
            raise RuntimeError("dynsec users were not prepared")
        assert self.broker is not None, "use() a broker first"
        return brokers.start_broker(self.broker, self.broker.setup(setup), self.service.broker_port, self.dynsec)

    def alternate(
        self, scenario: str, setups: list[str], run_one: Callable[[str, MosquittoProcess], dict[str, Any]]
    ) -> dict[str, list[dict[str, Any]]]:
        """Every configuration once per round, each on a freshly started broker."""
        results: dict[str, list[dict[str, Any]]] = {s: [] for s in setups}
        for turn in range(self.size["rounds"]):
            for setup in setups:
                starting = time.monotonic()
                broker = self.start(setup)
                start_seconds = time.monotonic() - starting
                try:
                    assert broker.process is not None
                    cpu = brokers.process_cpu_seconds(broker.process.pid)
                    started = time.monotonic()
                    result = run_one(setup, broker)
                    wall = time.monotonic() - started
                    # loadgen's publish mode measures its timed phase itself, a warm restart its second broker
                    if "broker_cpu_share" not in result:
                        cpu_used = brokers.process_cpu_seconds(broker.process.pid) - cpu
                        result["broker_cpu_share"] = round(cpu_used / wall, 3)
                    result["broker_start_seconds"] = round(start_seconds, 3)
                finally:
                    broker.cleanup()
                version = self.broker.version if self.broker else None
                self.runs.append({"broker": version, "scenario": scenario, "setup": setup, "round": turn, **result})
                results[setup].append(result)
        return results

    def put_medians(self, results: dict[str, list[dict[str, Any]]], field: str, name: str, digits: int = 3) -> None:
        for setup, answers in results.items():
            self.figures[f"{name}_{key(setup)}"] = round(median([a[field] for a in answers]), digits)

    def ratio(self, name: str, numerator: str, denominator: str, digits: int = 3) -> None:
        top, bottom = self.figures.get(numerator), self.figures.get(denominator)
        if top is not None and bottom:
            self.figures[name] = round(top / bottom, digits)

    def create_users(
        self, names: list[str], grants: list[tuple[str, str]] | None = None, password_hash: str | None = None
    ) -> None:
        """Users as an approval leaves them (without an audit entry each): each
        owns its registered client ID, its name, as the load generator's
        devices connect with (client_ids.py); then their permissions through
        the domain, as an operator sets them."""
        pipe = self.connection.pipeline(transaction=False)
        for name in names:
            pipe.hset(
                self.keys.user(name),
                mapping={
                    "passwordHash": password_hash or self.stored_hash,
                    "createdAt": "0",
                    "superuser": "0",
                    "clientId": name,
                },
            )
            pipe.sadd(self.keys.users(), name)
            pipe.sadd(self.keys.user_client_ids(name), name)
            pipe.hset(self.keys.client_owners(), name, name)
        pipe.execute()
        if grants:
            for name in names:
                self.users.set_permissions(name, [{"topic": t, "access": a} for t, a in grants])

    def verify(self, names: list[str]) -> None:
        """Each device's password checked once by the service (bcrypt), as
        when it connected before: afterwards its verified token answers."""
        missing = [n for n in names if n not in self.verified]

        def check(name: str) -> None:
            body = {"username": name, "password": DEVICE_PASSWORD, "clientid": name}
            answer = http("POST", f"{self.service.broker}/mqtt/user", json_body=body, timeout=60)
            if answer.status != 200:
                raise RuntimeError(f"{name}: /mqtt/user answered {answer.status} {answer.body[:200]!r}")

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(check, missing))
        self.verified.update(missing)

    def devices(self, prefix: str, count: int) -> list[str]:
        """Known, verified devices (in Redis and in the dynsec file), named as loadgen names them."""
        names = [f"{prefix}{i:05d}" for i in range(count)]
        fresh = [n for n in names if n not in self.verified]
        self.create_users(fresh, [("bench/#", "readWrite")])
        self.verify(fresh)
        self.dynsec_users().add(names, DEVICE_PASSWORD)
        return names

    def dynsec_users(self) -> DynsecUsers:
        """The dynsec file of the broker in use, hashed with its version's iterations."""
        if self.dynsec is None:
            assert self.broker is not None
            self.dynsec = DynsecUsers(self.broker.dynsec_iterations)
        return self.dynsec

    def api(self, method: str, path: str, body: Any = None) -> Any:
        answer = http(method, f"{self.service.api}{path}", json_body=body, token=ADMIN_TOKEN)
        if answer.status >= 300:
            raise RuntimeError(f"{method} {path}: {answer.status} {answer.body[:300]!r}")
        return answer.json()

    # -- Redis memory ------------------------------------------------------------
    def memory(self) -> None:
        count = self.size["memory_users"]
        names = [f"mem-{i:06d}" for i in range(count)]
        base = self._used_memory()
        self.create_users(names)
        after_users = self._used_memory()
        per_user = self.size["permissions"]
        for name in names:
            self.users.set_permissions(
                name, [{"topic": f"site/{j}/{name}/#", "access": "readWrite"} for j in range(per_user)]
            )
        # set_permissions also appends to the audit stream: count the permission hashes alone
        permission_bytes = 0
        for name in names:
            permission_bytes += int(self.connection.memory_usage(self.keys.user_permissions(name), samples=0) or 0)
        self.figures["redis_bytes_per_user"] = round((after_users - base) / count)
        self.figures["redis_bytes_per_permission"] = round(permission_bytes / (count * per_user))
        pipe = self.connection.pipeline(transaction=False)
        for name in names:
            pipe.delete(self.keys.user(name), self.keys.user_permissions(name))
            pipe.srem(self.keys.users(), name)
        pipe.execute()

    def _used_memory(self) -> int:
        return int(self.connection.info("memory")["used_memory"])

    # -- one uncached ACL check at the service -------------------------------------
    def acl_miss(self) -> None:
        """Uncached at the plugin: a new topic every time. The plugin sends its
        feed position, so the service may answer from its worker's permission
        cache (the goal's figure); without it (go-auth, anyone else) every
        check asks Redis: the `_exact` figures."""
        names = [f"acl-{i:05d}" for i in range(ACL_USERS)]
        # Several permissions each, the one that matches last, so the service does the matching work.
        others = [(f"site/{j}/%u/#", "readWrite") for j in range(self.size["permissions"] - 1)]
        self.create_users(names, [*others, ("bench/%u/#", "write")])
        position = http("GET", f"{self.service.broker}/mqtt/changes").json()["position"]
        variants = {"": position, "_exact": None}
        answers: dict[tuple[str, int], list[dict[str, Any]]] = {
            (variant, c): [] for variant in variants for c in ACL_CONCURRENCY
        }
        for turn in range(self.size["rounds"]):
            for (variant, concurrency), runs in answers.items():
                answer = self.loadgen(
                    "http",
                    url=f"{self.service.broker}/mqtt/acl",
                    user_prefix="acl-",
                    users=ACL_USERS,
                    concurrency=concurrency,
                    samples=max(1, self.size["acl_samples"] // concurrency),  # per thread
                    position=variants[variant],
                )
                if answer["not_200"]:
                    raise RuntimeError(f"{answer['not_200']} ACL checks not allowed (last {answer['last_bad_status']})")
                setup = "service" + (variant or "_with_position")
                self.runs.append({"scenario": "acl_miss", "setup": setup, "round": turn, **answer})
                runs.append(answer)
        for (variant, concurrency), runs in answers.items():
            suffix = variant + ("" if concurrency == 1 else f"_c{concurrency}")
            for field in ("p50", "p99"):
                self.figures[f"acl_miss_{field}_ms{suffix}"] = round(
                    median([r[f"latency_{field}_ms"] for r in runs]), 3
                )
            self.figures[f"acl_miss_checks_per_s{suffix}"] = round(median([r["requests_per_s"] for r in runs]))
        requests = sum(r["requests"] for runs in answers.values() for r in runs)
        connections = sum(r["new_connections"] for runs in answers.values() for r in runs)
        self.figures["acl_miss_connections_per_request"] = round(connections / requests, 4)
        if connections > requests / 10:
            self.notes.append(
                f"the service closed its HTTP connections: {connections} new ones for {requests} ACL checks"
            )

    # -- publish throughput --------------------------------------------------------
    def publish(self) -> None:
        self.create_users(["bench-pub", "bench-sub"])
        self.users.set_permissions("bench-pub", [{"topic": "bench/#", "access": "write"}])
        self.users.set_permissions("bench-sub", [{"topic": "bench/#", "access": "read"}])
        self.verify(["bench-pub", "bench-sub"])
        setups = [NO_AUTH, ALLOW_ALL, *self.plugin_setups]
        kinds = {
            "publish_qos0": {"messages": self.size["publish_messages"], "qos": 0, "subscribers": 1, "topics": 1},
            "publish_qos1": {
                "messages": self.size["qos1_messages"],
                "qos": 1,
                "subscribers": 1,
                "topics": 1,
                "inflight": QOS1_INFLIGHT,
            },
            "fanout": {
                "messages": self.size["fanout_messages"],
                "qos": 0,
                "subscribers": FANOUT_SUBSCRIBERS,
                "topics": FANOUT_TOPICS,
            },
        }
        for kind, options in kinds.items():

            def run_one(
                setup: str, broker: MosquittoProcess, kind: str = kind, options: dict[str, int] = options
            ) -> dict[str, Any]:
                auth = setup != NO_AUTH
                assert broker.process is not None
                answer = self.loadgen(
                    "publish",
                    port=broker.port,
                    broker_pid=broker.process.pid,
                    user="bench-pub" if auth else None,
                    password=DEVICE_PASSWORD if auth else None,
                    sub_user="bench-sub" if auth else None,
                    sub_password=DEVICE_PASSWORD if auth else None,
                    prefix=f"bench/{kind}",
                    **options,
                )
                # Steadier than the rate on a busy machine: what a message costs the broker.
                rate = answer["deliveries_per_s" if kind == "fanout" else "msgs_per_s"]
                share = answer["broker_cpu_share"]
                answer["per_broker_cpu_second"] = rate / share if share > 0 else 0.0
                # The figure that counts: the broker's CPU time (/proc/<pid>/stat over the timed phase) per message.
                answer["broker_cpu_us_per_message"] = share / rate * 1e6 if rate > 0 else 0.0
                return answer

            results = self.alternate(kind, setups, run_one)
            field = "deliveries_per_s" if kind == "fanout" else "msgs_per_s"
            name = "fanout_deliveries_per_s" if kind == "fanout" else f"{kind}_msgs_per_s"
            self.put_medians(results, field, name, 0)
            self.put_medians(results, "broker_cpu_share", f"{kind}_broker_cpu_share", 2)
            self.put_medians(results, "loadgen_cpu_share", f"{kind}_loadgen_cpu_share", 2)
            self.put_medians(results, "per_broker_cpu_second", f"{kind}_per_broker_cpu_second", 0)
            self.put_medians(results, "broker_cpu_us_per_message", f"{kind}_broker_cpu_us_per_message", 3)
            ratio = {"publish_qos0": "publish_ratio", "publish_qos1": "publish_qos1_ratio", "fanout": "fanout_ratio"}
            for setup in [ALLOW_ALL, *self.plugin_setups]:
                suffix = "" if setup == CREGISTRY else f"_{key(setup)}"
                self.ratio(ratio[kind] + suffix, f"{name}_{key(setup)}", f"{name}_{key(NO_AUTH)}")
                cpu = f"{kind}_per_broker_cpu_second"
                self.ratio(f"{ratio[kind]}_cpu{suffix}", f"{cpu}_{key(setup)}", f"{cpu}_{key(NO_AUTH)}")
        # The figures: QoS 0 1:1, CPU per message and throughput against no auth and the allow-everything floor.
        cpu = "publish_qos0_broker_cpu_us_per_message"
        self.ratio("broker_cpu_per_message_ratio", f"{cpu}_{key(CREGISTRY)}", f"{cpu}_{key(NO_AUTH)}")
        self.ratio("broker_cpu_per_message_ratio_allow_all", f"{cpu}_{key(ALLOW_ALL)}", f"{cpu}_{key(NO_AUTH)}")
        rate = "publish_qos0_msgs_per_s"
        self.ratio("publish_ratio_vs_allow_all", f"{rate}_{key(CREGISTRY)}", f"{rate}_{key(ALLOW_ALL)}")

    # -- a broker restarted with the plugin's warm file -------------------------------
    def warm_setups(self) -> list[str]:
        """cregistry's plugin restarted with its warm file, beside the cold one (docs/performance.md)."""
        return [CREGISTRY_WARM] if CREGISTRY in self.plugin_setups else []

    def measured_after_warm_restart(
        self, broker: MosquittoProcess, fill: Callable[[], dict[str, Any]], measure: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """`fill` connects every device to `broker` (its grants go to the warm
        file at stop); then the same broker is restarted with that file, its
        grants brought up to date by the change feed before it listens, and
        `measure` runs. The broker's log (stdout, flushed at exit) says after
        the stop how many CONNECTs the warm file answered."""
        starting = time.monotonic()
        self._require_all_connected(CREGISTRY_WARM, fill())
        broker.stop()
        if "grant(s) written" not in broker.output():
            raise RuntimeError(f"{CREGISTRY_WARM}: no warm file written: {broker.output()[-1500:]}")
        before = len(broker.output())
        broker.start()
        assert broker.process is not None
        cpu = brokers.process_cpu_seconds(broker.process.pid)
        started = time.monotonic()
        answer = measure()
        # over the measured part alone: the broker process before the restart is gone
        answer["broker_cpu_share"] = round(
            (brokers.process_cpu_seconds(broker.process.pid) - cpu) / (time.monotonic() - started), 3
        )
        answer["fill_and_restart_seconds"] = round(started - starting, 3)
        broker.stop()
        restarted = broker.output()[before:]
        answered = re.search(r"warm file \S+: (\d+) CONNECT\(s\) answered from it", restarted)
        if "cregistry_auth: warm start:" not in restarted or answered is None:
            raise RuntimeError(f"{CREGISTRY_WARM}: the restart was cold: {restarted[-1500:]}")
        answer["warm_answered"] = int(answered.group(1))
        return answer

    # -- one known device's CONNECT on a fresh broker --------------------------------
    def connect_latency(self) -> None:
        count = self.size["connect_devices"]
        self.devices("conn-", count)

        def connect_all(broker: MosquittoProcess, concurrency: int = 1) -> dict[str, Any]:
            return self.loadgen(
                "connect",
                port=broker.port,
                user_prefix="conn-",
                count=count,
                password=DEVICE_PASSWORD,
                concurrency=concurrency,
            )

        def run_one(setup: str, broker: MosquittoProcess) -> dict[str, Any]:
            if setup == CREGISTRY_WARM:
                answer = self.measured_after_warm_restart(
                    broker, lambda: connect_all(broker, self.size["storm_concurrency"]), lambda: connect_all(broker)
                )
            else:
                answer = connect_all(broker)
            self._require_all_connected(setup, answer)
            return answer

        results = self.alternate("connect", [*self.plugin_setups, *self.warm_setups(), DYNSEC], run_one)
        self.put_medians(results, "connack_p50_ms", "connect_p50_ms")
        self.put_medians(results, "connack_p99_ms", "connect_p99_ms")
        # The goal's figure is the cold one, the plugin as it ships (no warm file by
        # default); the warm restart's is reported beside it (docs/performance.md).
        self.ratio("connect_ratio", f"connect_p50_ms_{key(CREGISTRY)}", f"connect_p50_ms_{key(DYNSEC)}")
        self.ratio("connect_ratio_warm", f"connect_p50_ms_{key(CREGISTRY_WARM)}", f"connect_p50_ms_{key(DYNSEC)}")
        if results.get(CREGISTRY_WARM):
            self.figures["connect_warm_answered"] = median([a["warm_answered"] for a in results[CREGISTRY_WARM]])
        if GO_AUTH in self.plugin_setups:
            self.ratio("connect_ratio_go_auth", f"connect_p50_ms_{key(GO_AUTH)}", f"connect_p50_ms_{key(DYNSEC)}")

    # -- the storm -------------------------------------------------------------------
    def storm(self) -> None:
        count = self.size["storm_devices"]
        self.devices("storm-", count)
        if PROBE_USER not in self.verified:
            self.create_users([PROBE_USER])
            self.verify([PROBE_USER])
        assert self.dynsec is not None
        self.dynsec.add([PROBE_USER], DEVICE_PASSWORD)

        def connect_all(broker: MosquittoProcess, probe: bool = True) -> dict[str, Any]:
            return self.loadgen(
                "connect",
                port=broker.port,
                user_prefix="storm-",
                count=count,
                password=DEVICE_PASSWORD,
                concurrency=self.size["storm_concurrency"],
                probe_user=PROBE_USER if probe else None,
                probe_password=DEVICE_PASSWORD if probe else None,
            )

        def run_one(setup: str, broker: MosquittoProcess) -> dict[str, Any]:
            if setup == CREGISTRY_WARM:
                answer = self.measured_after_warm_restart(
                    broker, lambda: connect_all(broker, probe=False), lambda: connect_all(broker)
                )
            else:
                answer = connect_all(broker)
            self._require_all_connected(setup, answer)
            if answer["probe_pings"] < 0:
                raise RuntimeError(f"{setup}: the broker dropped the PINGREQ probe during the storm")
            return answer

        results = self.alternate("storm", [*self.plugin_setups, *self.warm_setups(), DYNSEC], run_one)
        self.figures["storm_devices"] = count
        self.figures["storm_concurrency"] = self.size["storm_concurrency"]
        self.put_medians(results, "seconds", "storm_seconds")
        self.put_medians(results, "connack_max_ms", "storm_slowest_connack_ms", 1)
        self.put_medians(results, "connack_p99_ms", "storm_connack_p99_ms", 1)
        self.put_medians(results, "probe_max_ms", "storm_probe_max_ms", 1)
        self.put_medians(results, "probe_p50_ms", "storm_probe_p50_ms", 1)
        self.put_medians(results, "probe_p99_ms", "storm_probe_p99_ms", 1)
        self.put_medians(results, "broker_cpu_share", "storm_broker_cpu_share", 2)
        self.put_medians(results, "broker_start_seconds", "storm_broker_start_seconds", 3)
        self.ratio("storm_seconds_ratio", f"storm_seconds_{key(CREGISTRY)}", f"storm_seconds_{key(DYNSEC)}")
        self.ratio("storm_seconds_ratio_warm", f"storm_seconds_{key(CREGISTRY_WARM)}", f"storm_seconds_{key(DYNSEC)}")
        if results.get(CREGISTRY_WARM):
            self.figures["storm_warm_answered"] = median([a["warm_answered"] for a in results[CREGISTRY_WARM]])
        if GO_AUTH in self.plugin_setups:
            self.ratio("storm_seconds_ratio_go_auth", f"storm_seconds_{key(GO_AUTH)}", f"storm_seconds_{key(DYNSEC)}")

    @staticmethod
    def _require_all_connected(setup: str, answer: dict[str, Any]) -> None:
        if answer["ok"] != answer["devices"]:
            raise RuntimeError(
                f"{setup}: {answer['ok']} of {answer['devices']} devices connected"
                f" ({answer['refused']} refused: {answer['first_refusal']!r}, {answer['lost']} without CONNACK)"
            )

    # -- floods of refused CONNECTs -----------------------------------------------------
    def floods(self) -> None:
        """A connected probe's PINGREQ round trips on a fresh broker: unflooded,
        while unknown usernames arrive at 500 CONNECTs/s, and while wrong
        passwords for known usernames arrive at 20/s; each flood's p99 over the
        unflooded p99 of the same configuration."""
        # Known in Redis and in the dynsec file, hashed at the production cost so that every
        # bcrypt costs the service what it costs in production.
        known = [f"flood-{i:05d}" for i in range(FLOOD_KNOWN_USERS)]
        never_verified = [f"flood-new-{i:05d}" for i in range(FLOOD_KNOWN_USERS)]
        production_hash = hash_password(DEVICE_PASSWORD, BCRYPT_COST)
        self.create_users([*known, *never_verified], [("bench/#", "readWrite")], production_hash)
        self.verify(known)
        if PROBE_USER not in self.verified:
            self.create_users([PROBE_USER])
            self.verify([PROBE_USER])
        self.dynsec_users().add([*known, PROBE_USER], DEVICE_PASSWORD)
        kinds = {"none": (0, "flood-unknown-", None, [CREGISTRY, DYNSEC]),
                 "unknown": (FLOODS["unknown"], "flood-unknown-", None, [CREGISTRY, DYNSEC]),
                 "wrong_password": (FLOODS["wrong_password"], "flood-", len(known), [CREGISTRY, DYNSEC]),
                 # dynsec answers these as the verified ones: only the plugin's are measured
                 "wrong_password_unverified": (FLOODS["wrong_password_unverified"], "flood-new-",
                                               len(never_verified), [CREGISTRY])}  # fmt: skip
        for kind, (rate, prefix, users, setups) in kinds.items():

            def run_one(
                setup: str, broker: MosquittoProcess, rate: int = rate, prefix: str = prefix, users: int | None = users
            ) -> dict[str, Any]:
                answer = self.loadgen(
                    "flood", timeout=120, port=broker.port, user_prefix=prefix, users=users,
                    password="not-" + DEVICE_PASSWORD, rate=rate, seconds=self.size["flood_seconds"],
                    concurrency=FLOOD_CONCURRENCY, probe_user=PROBE_USER, probe_password=DEVICE_PASSWORD,
                )  # fmt: skip
                if answer["probe_pings"] < 0:
                    raise RuntimeError(f"{setup}: the broker dropped the PINGREQ probe during the flood")
                if answer["ok"]:
                    raise RuntimeError(f"{setup}: {answer['ok']} flood CONNECTs with a wrong password got in")
                return answer

            results = self.alternate(f"flood_{kind}", setups, run_one)
            self.put_medians(results, "probe_p99_ms", f"flood_{kind}_probe_p99_ms", 3)
            self.put_medians(results, "probe_p50_ms", f"flood_{kind}_probe_p50_ms", 3)
            if rate:
                self.put_medians(results, "sent_per_s", f"flood_{kind}_connects_per_s", 1)
                self.put_medians(results, "refused", f"flood_{kind}_refused", 0)
                self.put_medians(results, "lost", f"flood_{kind}_lost", 0)
                for setup in setups:  # over "none", measured first
                    suffix = "" if setup == CREGISTRY else f"_{key(setup)}"
                    self.ratio(f"flood_{kind}_probe_p99_ratio{suffix}", f"flood_{kind}_probe_p99_ms_{key(setup)}",
                               f"flood_none_probe_p99_ms_{key(setup)}")  # fmt: skip

    # -- approval and revocation through the broker ------------------------------------
    def approval_to_connect(self) -> None:
        """An unknown device keeps trying; the operator approves it; how long
        until its next CONNECT gets in (its first one pays bcrypt)."""
        self.api("POST", "/api/client-registry/unlock", {"seconds": 600})
        broker = self.start(CREGISTRY)
        latencies, attempts = [], []
        try:
            for sample in range(self.size["latency_samples"]):
                name = f"appr-{self.tag()}-{sample:03d}-{os.getpid()}"
                first = self._try_connect(broker, name)
                if first == "Success":
                    raise RuntimeError(f"{name} connected before it was approved")
                requests = self.api("GET", "/api/client-registry/requests")["requests"]
                request_id = next(r["id"] for r in requests if r["username"] == name)
                self.api("POST", f"/api/client-registry/requests/{request_id}/approve")
                approved = time.monotonic()
                tries = 0
                while True:
                    tries += 1
                    if self._try_connect(broker, name) == "Success":
                        latencies.append(time.monotonic() - approved)
                        attempts.append(tries)
                        break
                    if time.monotonic() - approved > EFFECT_WINDOW_SECONDS:
                        raise RuntimeError(f"{name} still refused {EFFECT_WINDOW_SECONDS} s after its approval")
                    time.sleep(0.02)
        finally:
            broker.cleanup()
            # Locked again, as a registry mostly is: the floods must not file requests.
            self.api("POST", "/api/client-registry/lock")
        self.figures["approval_to_connect_ms"] = round(median(latencies) * 1000, 1)
        self.figures["approval_to_connect_attempts"] = max(attempts)
        if GO_AUTH in self.plugin_setups:
            self.notes.append("approval_to_connect: go-auth caches refusals (auth_cache_seconds 30); not measured")

    @staticmethod
    def _try_connect(broker: MosquittoProcess, name: str) -> str:
        client = MqttClient(broker.port, name, DEVICE_PASSWORD, name)
        try:
            return client.connect(timeout=10)
        finally:
            client.close()

    def revocation_to_effect(self) -> None:
        """A device publishes every 5 ms to a watcher; the operator revokes its
        permission (then deletes another device): how long until the broker
        stops delivering (disconnects the deleted one)."""
        samples = self.size["latency_samples"]
        devices = [f"rev-{self.tag()}-{i:03d}" for i in range(samples)]
        kicked = [f"kick-{self.tag()}-{i:03d}" for i in range(samples)]
        self.create_users([*devices, *kicked], [("bench/rev/%u/#", "readWrite")])
        self.create_users(["rev-watch"], [("bench/rev/#", "read")])
        self.verify([*devices, *kicked, "rev-watch"])
        revocations, kicks = [], []
        broker = self.start(CREGISTRY)
        try:
            watcher = MqttClient(broker.port, "rev-watch", DEVICE_PASSWORD, "rev-watch")
            if watcher.connect() != "Success" or watcher.subscribe("bench/rev/#", qos=0) != 0:
                raise RuntimeError("the watcher could not subscribe")
            for device, victim in zip(devices, kicked, strict=True):
                revocations.append(self._revocation(broker, watcher, device))
                kicks.append(self._kick(broker, victim))
            watcher.close()
        finally:
            broker.cleanup()
        measured = [r for r in revocations if r is not None]
        self.figures["revocation_to_effect_ms"] = round(median(measured) * 1000, 1) if measured else None
        if len(measured) < len(revocations):
            self.notes.append(
                f"revocation_to_effect: {len(revocations) - len(measured)} of {len(revocations)} revoked devices"
                f" were still delivered {EFFECT_WINDOW_SECONDS} s later"
            )
        measured = [k for k in kicks if k is not None]
        self.figures["deletion_to_disconnect_ms"] = round(median(measured) * 1000, 1) if measured else None
        if len(measured) < len(kicks):
            self.notes.append(
                f"deletion_to_disconnect: {len(kicks) - len(measured)} of {len(kicks)} deleted devices"
                f" were still connected {EFFECT_WINDOW_SECONDS} s later"
            )

    def _revocation(self, broker: MosquittoProcess, watcher: MqttClient, device: str) -> float | None:
        client = MqttClient(broker.port, device, DEVICE_PASSWORD, device)
        if client.connect() != "Success":
            raise RuntimeError(f"{device} could not connect")
        stop = threading.Event()

        def publish() -> None:
            while not stop.is_set():
                client.client.publish(f"bench/rev/{device}/t", f"{time.monotonic():.6f}".encode(), qos=0)
                time.sleep(0.005)

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        try:
            if watcher.receive(10) is None:
                raise RuntimeError(f"nothing from {device} reached the watcher before the revocation")
            self.api("PUT", f"/api/users/{device}/permissions", [])
            revoked = time.monotonic()
            # The device goes on publishing every 5 ms: the effect is the send
            # time of the last message delivered after the revocation.
            last = revoked
            while time.monotonic() - revoked < EFFECT_WINDOW_SECONDS:
                message = watcher.receive(0.5)
                if message is None:
                    return max(0.0, last - revoked)  # half a second of silence: revoked
                if message[0] == f"bench/rev/{device}/t":
                    last = max(last, float(message[1]))
            return None  # still delivered when the window closed
        finally:
            stop.set()
            publisher.join()
            client.close()
            while watcher.receive(0.1) is not None:
                pass

    def _kick(self, broker: MosquittoProcess, device: str) -> float | None:
        client = MqttClient(broker.port, device, DEVICE_PASSWORD, device)
        if client.connect() != "Success":
            raise RuntimeError(f"{device} could not connect")
        try:
            client.disconnected.clear()
            self.api("DELETE", f"/api/users/{device}")
            deleted = time.monotonic()
            if not client.disconnected.wait(EFFECT_WINDOW_SECONDS):
                return None
            return time.monotonic() - deleted
        finally:
            client.close()

    # -- the plugin's memory -----------------------------------------------------------
    def plugin_memory(self) -> None:
        """RSS of mosquitto before and after M uncached ACL checks (M distinct
        topics), minus what the same publishes grow a broker without auth by."""
        entries = self.size["cache_entries"]
        self.create_users(["cache-dev"], [("bench/cache/#", "write")])
        self.verify(["cache-dev"])
        growth = {}
        for setup in (NO_AUTH, CREGISTRY):
            auth = setup != NO_AUTH
            creds: dict[str, Any] = {"user": "cache-dev", "password": DEVICE_PASSWORD} if auth else {}
            broker = self.start(setup)
            try:
                assert broker.process is not None
                self.loadgen("publish", port=broker.port, subscribers=0, qos=1, topics=1, messages=0,
                             prefix="bench/cache/warm", **creds)  # fmt: skip
                before = brokers.process_rss_kib(broker.process.pid)
                answer = self.loadgen("publish", port=broker.port, subscribers=0, qos=1, topics=entries, messages=0,
                                      inflight=64, prefix="bench/cache/fill", **creds)  # fmt: skip
                after = brokers.process_rss_kib(broker.process.pid)
            finally:
                broker.cleanup()
            growth[setup] = after - before
            self.figures[f"cache_fill_rss_kib_before_{key(setup)}"] = before
            self.figures[f"cache_fill_rss_kib_after_{key(setup)}"] = after
            if auth:
                self.figures["acl_miss_through_broker_per_s"] = round(entries / answer["warm_seconds"])
        per_entry = (growth[CREGISTRY] - growth[NO_AUTH]) * 1024 / entries
        self.figures["plugin_cache_entries"] = entries
        self.figures["plugin_bytes_per_cache_entry"] = round(per_entry)
        self.figures["plugin_rss_mib_per_100k_entries"] = round(per_entry * 100_000 / 2**20, 1)


def source_commit() -> str:
    """The tree that was measured: its commit, "+changes" when the work tree differs from it."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def plugin_provenance(versions: list[Broker]) -> dict[str, str]:
    found = {name: setup.provenance() for name, setup in SETUPS.items() if name != DYNSEC}
    return found | {f"{DYNSEC} {broker.version}": broker.setup(DYNSEC).provenance() for broker in versions}


def build_loadgen() -> None:
    source = REPO / "bench" / "loadgen.c"
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= source.stat().st_mtime:
        return
    if "CREGISTRY_LOADGEN" in os.environ:
        raise FileNotFoundError(f"CREGISTRY_LOADGEN={LOADGEN} is missing or older than {source}")
    subprocess.run(["make", "-C", str(REPO), "--no-print-directory", str(LOADGEN.relative_to(REPO))], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts, a few minutes")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results.json")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    build_loadgen()
    started = time.time()
    load_before = os.getloadavg()
    versions = [brokers.debian_broker()]
    newer, missing = brokers.mosquitto_21()
    skipped: dict[str, str] = {}
    if newer is not None:
        versions.append(newer)
    else:
        skipped["2.1.2"] = missing
    bench = Bench(SIZES[mode])
    if missing:
        # As the broker tier: in CI, or under CREGISTRY_REQUIRE_BROKER=1, a missing 2.1.2 fails the run.
        required = os.environ.get("CI") == "true" or os.environ.get("CREGISTRY_REQUIRE_BROKER") == "1"
        (bench.errors if required else bench.notes).append(f"2.1.2 skipped: {missing}")
    per_broker: dict[str, dict[str, Any]] = {}
    try:
        bench.scenario("redis memory", bench.memory)
        bench.scenario("acl miss at the service", bench.acl_miss)
        service_figures = bench.figures
        for broker in versions:
            figures = bench.use(broker)
            per_broker[broker.version] = {"binary": str(broker.binary), "figures": figures}
            if SETUPS[CREGISTRY].available():
                bench.scenario(f"{broker.version}: publish throughput", bench.publish)
                bench.scenario(f"{broker.version}: plugin memory", bench.plugin_memory)
                if broker.setup(DYNSEC).available():
                    bench.scenario(f"{broker.version}: floods", bench.floods)
                bench.scenario(f"{broker.version}: approval to connect", bench.approval_to_connect)
                bench.scenario(f"{broker.version}: revocation to effect", bench.revocation_to_effect)
                if broker.setup(DYNSEC).available():
                    bench.scenario(f"{broker.version}: connect latency", bench.connect_latency)
                    bench.scenario(f"{broker.version}: storm", bench.storm)
    finally:
        bench.close()
    for version, entry in per_broker.items():
        seen = {**service_figures, **entry["figures"]}
        entry.update({name: seen.get(name) for name in GOALS})
        entry["goals"] = evaluate_goals(seen, version)
        bench.errors += [f"{version}: {name} was not measured" for name in GOALS if seen.get(name) is None]
    results: dict[str, Any] = {
        "mode": mode,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "commit": source_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "plugins": plugin_provenance(versions),
        "plugin_options": brokers.PLUGIN_OPTIONS,
        "bcrypt_cost": BCRYPT_COST,
        "sizes": SIZES[mode],
        "service": service_figures,
        "brokers": per_broker,
        "skipped": skipped,
        "notes": bench.notes,
        "errors": bench.errors,
        "runs": bench.runs,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(results)
    (args.out / "report.md").write_text(text)
    for version in per_broker:
        chart(results, version, args.out / f"chart-{version}.png")
    print(text)
    if bench.errors:
        print("bench: NOT everything could be measured:\n  " + "\n  ".join(bench.errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
