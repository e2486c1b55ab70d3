"""Redis Sentinel groups and a failover stack of services on them (the failover tier)."""

from __future__ import annotations

import dataclasses
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from harness.mosquitto import PluginMosquittoProcess
from harness.processes import LOOPBACK, free_port, stop_process, wait_for_port
from harness.service import ServiceProcess

SENTINEL_SERVICE = "cregistry"


class RedisNode:
    """A redis-server without persistence, optionally a replica of another:
    in the failover tier, durability comes from replicas, not from a disk."""

    def __init__(self, replica_of: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.replica_of = replica_of
        self.directory = tempfile.mkdtemp(prefix="cregistry-redis-node-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            self.binary, "--bind", LOOPBACK, "--port", str(self.port), "--dir", self.directory,
            "--save", "", "--appendonly", "no", "--loglevel", "warning",
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
        ]  # fmt: skip
        if self.replica_of is not None:
            command += ["--replicaof", LOOPBACK, str(self.replica_of)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for_port(self.port, process=self.process)

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, decode_responses=True, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: the primary vanishes without a word, as on a power cut."""
        stop_process(self.process, signal.SIGKILL)

    def cleanup(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


class SentinelGroup:
    """A primary, replicas, and redis-sentinel processes watching them, with
    quick failover settings; `url` is the Sentinel form of CREGISTRY_REDIS_URL."""

    def __init__(self, replicas: int = 2, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise FileNotFoundError("redis-sentinel is not installed")
        self.sentinel_binary = binary
        self.primary = RedisNode()
        self.replicas = [RedisNode(replica_of=self.primary.port) for _ in range(replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.down_after_ms = down_after_ms
        self.directory = tempfile.mkdtemp(prefix="cregistry-sentinel-")
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.url = (
            "redis+sentinel://"
            + ",".join(f"{LOOPBACK}:{port}" for port in self.sentinel_ports)
            + f"/{SENTINEL_SERVICE}/0"
        )

    def start(self, timeout: float = 20.0) -> None:
        self.primary.start()
        for replica in self.replicas:
            replica.start()
        quorum = len(self.sentinel_ports) // 2 + 1
        for port in self.sentinel_ports:
            conf = Path(self.directory) / f"sentinel-{port}.conf"  # sentinel rewrites its file
            conf.write_text(
                f"port {port}\nbind {LOOPBACK}\ndir {self.directory}\n"
                f"sentinel monitor {SENTINEL_SERVICE} {LOOPBACK} {self.primary.port} {quorum}\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 2000\n"
                f"sentinel parallel-syncs {SENTINEL_SERVICE} {len(self.replicas)}\n"
            )
            log = open(Path(self.directory) / f"sentinel-{port}.log", "ab")  # noqa: SIM115
            self.sentinels.append(subprocess.Popen([self.sentinel_binary, str(conf)], stdout=log, stderr=log))
            log.close()
        for process, port in zip(self.sentinels, self.sentinel_ports, strict=True):
            wait_for_port(port, process=process)
        # Ready once every replica is in sync and every sentinel knows every
        # replica and every other sentinel.
        deadline = time.monotonic() + timeout
        while not (self._replicas_online() and self._all_discovered()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sentinels did not discover each other and the replicas:\n{self.output()}")
            time.sleep(0.1)

    def _replicas_online(self) -> bool:
        with self.primary.client() as client:
            info = client.info("replication")
        online = [value for key, value in info.items() if key.startswith("slave") and isinstance(value, dict)]
        return sum(1 for replica in online if replica.get("state") == "online") >= len(self.replicas)

    def _all_discovered(self) -> bool:
        for port in self.sentinel_ports:
            with redis.Redis(host=LOOPBACK, port=port, decode_responses=True, socket_timeout=2) as sentinel:
                try:
                    state = sentinel.sentinel_master(SENTINEL_SERVICE)
                except redis.RedisError:
                    return False
            if state["num-slaves"] < len(self.replicas) or state["num-other-sentinels"] < len(self.sentinel_ports) - 1:
                return False
        return True

    def primary_port(self) -> int | None:
        """The primary the sentinels name now (None when they name none yet)."""
        for port in self.sentinel_ports:
            with redis.Redis(host=LOOPBACK, port=port, decode_responses=True, socket_timeout=2) as sentinel:
                try:
                    address = sentinel.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
                except redis.RedisError:
                    continue
            if address:
                return int(address[1])
        return None

    def nodes(self) -> list[RedisNode]:
        return [self.primary, *self.replicas]

    def node(self, port: int) -> RedisNode:
        return next(node for node in self.nodes() if node.port == port)

    def output(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(Path(self.directory).glob("*.log")))

    def cleanup(self) -> None:
        for process in self.sentinels:
            stop_process(process)
        for node in self.nodes():
            node.cleanup()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclasses.dataclass
class FailoverStack:
    """Everything the failover tier runs; its `brokers` fixture adds the
    brokers (mosquittos with cregistry's plugin, one per service)."""

    group: SentinelGroup
    services: list[ServiceProcess]
    brokers: list[PluginMosquittoProcess] = dataclasses.field(default_factory=list)

    def cleanup(self) -> None:
        for broker in self.brokers:
            broker.cleanup()
        for service in self.services:
            service.cleanup()
        self.group.cleanup()


def start_failover_stack(env: dict[str, str], services: int = 2) -> FailoverStack:
    """A Sentinel group and `services` instances of `cregistry serve` on its URL.
    Everything started is cleaned up again if a later start fails."""
    group = SentinelGroup()
    stack = FailoverStack(group, [])
    try:
        group.start()
        for _ in range(services):
            service = ServiceProcess({"CREGISTRY_REDIS_URL": group.url, **env})
            stack.services.append(service)
            service.start()
    except BaseException:
        stack.cleanup()
        raise
    return stack
