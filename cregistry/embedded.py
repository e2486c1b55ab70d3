"""The embedded in-memory Redis that `cregistry serve` starts when no
CREGISTRY_REDIS_URL is given: for trying cregistry out, never for production.

It is a real `redis-server` without persistence when one is installed, or
else fakeredis's TCP server (pure Python, slower). Either runs as a child
process on 127.0.0.1, so the CLI (and go-auth's own Redis backend) can reach
it while `serve` runs; its data is gone when `serve` exits.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import redis

from cregistry.config import EMBEDDED_REDIS_PORT, REDIS_URL, env_name

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def url_for(port: int) -> str:
    return f"redis://{HOST}:{port}/0"


class EmbeddedRedis:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = url_for(port)
        self.kind = "redis-server" if shutil.which("redis-server") else "fakeredis"
        self.process: subprocess.Popen[bytes] | None = None
        self.owner_pid = os.getpid()

    def start(self, timeout: float = 10.0) -> None:
        if _port_in_use(self.port):
            raise RuntimeError(
                f"cannot start the embedded Redis: {HOST}:{self.port} is in use"
                f" (set {env_name(EMBEDDED_REDIS_PORT)}, or {env_name(REDIS_URL)} for a real Redis)"
            )
        if self.kind == "redis-server":
            command = [
                "redis-server", "--bind", HOST, "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--loglevel", "warning",
            ]  # fmt: skip
        else:
            command = [sys.executable, "-m", "cregistry.embedded", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1)
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the embedded Redis ({self.kind}) did not start") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        # gunicorn workers are forks of the process that started Redis and
        # unwind through the same `finally`; only the owner may stop it.
        if os.getpid() != self.owner_pid:
            return
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HOST, port)) == 0


def _serve_fakeredis(port: int) -> None:
    from fakeredis import TcpFakeServer

    server = TcpFakeServer((HOST, port), server_type="redis")
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    _serve_fakeredis(int(sys.argv[1]))
