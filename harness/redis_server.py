"""redis-server on a free port, without persistence."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

import redis

from harness.processes import LOOPBACK, free_port, stop_process, wait_for_port


class RedisProcess:
    """A real redis-server with an append-only file, so a restart keeps the
    data (`persistent=False`: no file at all, so a restart loses everything)."""

    def __init__(self, persistent: bool = True) -> None:
        self.persistent = persistent
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.directory = tempfile.mkdtemp(prefix="cregistry-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                LOOPBACK,
                "--port",
                str(self.port),
                "--dir",
                self.directory,
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--loglevel",
                "warning",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:  # the port opens before the AOF is loaded
            try:
                client.ping()
                break
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        stop_process(self.process)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
