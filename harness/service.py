"""`cregistry serve` and the CLI as the tiers run them, HTTP calls to them, and a freezer for a hung service."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.processes import LOOPBACK, REPO, free_port, process_tree, stop_process, wait_for_port


class ServiceProcess:
    """`cregistry serve` as an operator starts it, with its output kept."""

    def __init__(self, env: dict[str, str]) -> None:
        self.api_port = free_port()
        self.broker_port = free_port()
        self.api = f"http://{LOOPBACK}:{self.api_port}"
        self.broker = f"http://{LOOPBACK}:{self.broker_port}"
        self.env = {
            **os.environ,
            "CREGISTRY_API_LISTEN": f"{LOOPBACK}:{self.api_port}",
            "CREGISTRY_BROKER_LISTEN": f"{LOOPBACK}:{self.broker_port}",
            **env,
        }
        self.log = tempfile.NamedTemporaryFile(prefix="cregistry-serve-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cregistry", "serve"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        wait_for_port(self.api_port, process=self.process)
        wait_for_port(self.broker_port, process=self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, sig)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def cleanup(self) -> None:
        self.stop()
        self.log.close()
        os.unlink(self.log.name)


@contextlib.contextmanager
def running_service(redis_url: str, admin_token: str, env: dict[str, str] | None = None) -> Iterator[ServiceProcess]:
    """`cregistry serve` on `redis_url` as the tiers run it (bcrypt cost 4,
    two workers; `env` adds or overrides settings), stopped and its log
    removed afterwards."""
    service = ServiceProcess(
        {
            "CREGISTRY_REDIS_URL": redis_url,
            "CREGISTRY_ADMIN_TOKEN": admin_token,
            "CREGISTRY_BCRYPT_COST": "4",
            "CREGISTRY_WORKERS": "2",
            **(env or {}),
        }
    )
    try:
        service.start()
        yield service
    finally:
        service.cleanup()


def run_cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real `cregistry` command, as an operator types it."""
    return subprocess.run(
        [sys.executable, "-m", "cregistry", *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


class HttpAnswer:
    def __init__(self, status: int, body: bytes, seconds: float) -> None:
        self.status = status
        self.body = body
        self.seconds = seconds

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    form: dict[str, str] | None = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> HttpAnswer:
    """One HTTP request, shaped as go-auth, a device or an operator sends it."""
    headers = {}
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpAnswer(response.status, response.read(), time.monotonic() - started)
    except urllib.error.HTTPError as error:
        return HttpAnswer(error.code, error.read(), time.monotonic() - started)


class Freezer:
    """freeze() stops `cregistry serve` and its workers (SIGSTOP): connections
    hang, as on a dead host; thaw() lets them run again."""

    def __init__(self, service: ServiceProcess) -> None:
        self.service = service
        self.frozen: list[int] = []

    def freeze(self) -> None:
        assert self.service.process is not None
        for pid in process_tree(self.service.process.pid):
            os.kill(pid, signal.SIGSTOP)
            self.frozen.append(pid)

    def thaw(self) -> None:
        while self.frozen:
            os.kill(self.frozen.pop(), signal.SIGCONT)
