"""`cregistry serve`: both listeners under one gunicorn master, each worker serving both with uvicorn."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from gunicorn.app.base import BaseApplication

from cregistry import services
from cregistry.api_listener import ApiListener, ApiWorker
from cregistry.certificates import Authority, load_authority
from cregistry.config import (
    ADMIN_TOKEN,
    ADMIN_TOKENS,
    EMBEDDED_REDIS_PORT,
    REDIS_URL,
    SESSION_SECRET,
    VERIFY_SECRET,
    Config,
    env_name,
    parse_listen,
)
from cregistry.connections import check_url, configuration_problem, connect
from cregistry.embedded import EmbeddedRedis
from cregistry.errors import ConfigError

if TYPE_CHECKING:  # imported by load(), in the worker (see there)
    from cregistry.web.broker_asgi import ListenerThread

log = logging.getLogger(__name__)

# prometheus_client reads it when it is imported (web/metrics.py, in each worker).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
SWITCH_INTERVAL_SECONDS = 0.0005
BROKER_BACKLOG = 2048


class CregistryServer(BaseApplication):
    """gunicorn serves the API listener; each worker also serves the broker
    listener (web/broker_asgi.py) on `broker_socket`, opened here before the
    fork so that every worker accepts on it."""

    def __init__(self, config: Config, broker_socket: socket.socket, state_directory: str) -> None:
        self.config = config
        self.broker_socket = broker_socket
        self.state_directory = Path(state_directory)
        self.broker_listener: ListenerThread | None = None  # this worker's, once load() ran
        super().__init__()

    def load_config(self) -> None:
        settings: dict[str, Any] = {
            "bind": [self.config.api_listen],
            # uvicorn in each worker (api_listener.py): slow clients cost the loop, not a
            # thread; the request's Flask work runs on threads (bcrypt releases the GIL).
            "worker_class": ApiWorker,
            "workers": self.config.workers,
            "timeout": 30,
            "graceful_timeout": 10,
            "keepalive": 30,  # go-auth reuses its HTTP connections
            "loglevel": self.config.log_level.lower(),
            "errorlog": "-",
            "proc_name": "cregistry",
        }
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 26 opens a control socket in ~/.gunicorn by default;
            # cregistry does not use it, and two instances would share the path.
            settings["control_socket_disable"] = True
        settings["child_exit"] = _worker_exited
        settings["worker_exit"] = _worker_exiting
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Imported here, in the worker: prometheus_client fixes its storage
        # (files in METRICS_DIR_ENV, or memory) when it is first imported.
        from cregistry.web import MAX_BODY_BYTES, create_worker_apps
        from cregistry.web.broker_asgi import ListenerThread

        # Mosquitto waits for each broker check: a thread that has its answer
        # should not wait CPython's default 5 ms for another one to yield.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        apps = create_worker_apps(self.config)
        apps.follower.start()
        slots = [self.state_directory / f"broker-listener-{i}.lock" for i in range(self.config.broker_processes)]
        self.broker_listener = ListenerThread(apps.broker_listener, self.broker_socket, self.config.log_level, slots)
        self.broker_listener.start()
        return ApiListener(apps.api, threads=self.config.threads, max_body_bytes=MAX_BODY_BYTES)


def _worker_exiting(_server: Any, worker: Any) -> None:
    """In the worker: let the broker listener finish the checks it has begun."""
    listener = getattr(worker.app, "broker_listener", None)
    if listener is not None:
        listener.stop()


def _worker_exited(_server: Any, worker: Any) -> None:
    """A worker's live gauges (password checks waiting) end with it; its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """Prometheus multiprocess mode: each worker writes its metrics to files
    here and the one answering /metrics adds them up. The broker listener's
    lock files (web/broker_asgi.py) live here too. Fresh for every start
    (old files would add a previous run's counts), removed on exit."""
    if "prometheus_client" in sys.modules:
        # Only when serve() runs inside a process that loaded the web apps (tests).
        log.warning("prometheus_client was imported before the metrics directory was set: /metrics counts per worker")
    directory = tempfile.mkdtemp(prefix="cregistry-metrics-")
    owner_pid = os.getpid()
    previous = os.environ.get(METRICS_DIR_ENV)
    os.environ[METRICS_DIR_ENV] = directory
    log.info("worker metrics in %s (removed on exit)", directory)
    # Imported now, with the variable set, so that _worker_exited (run from a signal handler) need not import.
    import prometheus_client.multiprocess  # noqa: F401

    try:
        yield directory
    finally:
        # Workers are forks that unwind through here too; only the master cleans up.
        if os.getpid() == owner_pid:
            if previous is None:
                os.environ.pop(METRICS_DIR_ENV, None)
            else:
                os.environ[METRICS_DIR_ENV] = previous
            shutil.rmtree(directory, ignore_errors=True)


def serve(config: Config, announce: Callable[[str], None]) -> None:
    """Start the service; blocks until gunicorn stops."""
    if config.redis_url is not None:
        check_url(config.redis_url)  # a URL cregistry cannot use is refused before anything starts
    authority = load_authority(config)  # refuses a CA that cannot sign (ConfigError) before anything starts
    if authority is not None:
        announce(f"registry CA for client certificates: {config.ca_cert} (certificates valid {config.cert_days} days)")
    embedded = None
    if config.redis_url is None:
        # The embedded Redis is in-memory on purpose; the banner below says so.
        embedded = EmbeddedRedis(config.embedded_redis_port)
        embedded.start()
        config = dataclasses.replace(config, redis_url=embedded.url)
        announce(
            "\n".join(
                [
                    "!" * 72,
                    f"!! NO {env_name(REDIS_URL)}: running on an EMBEDDED IN-MEMORY Redis ({embedded.kind}).",
                    "!! ALL DATA (users, permissions, requests) IS LOST WHEN THIS PROCESS EXITS.",
                    f"!! The CLI finds it when it has the same {env_name(EMBEDDED_REDIS_PORT)} ({embedded.port});"
                    f" other tools can use {embedded.url}",
                    f"!! For real use set {env_name(REDIS_URL)} to a persistent Redis.",
                    "!" * 72,
                ]
            )
        )
    if not config.named_admin_tokens():
        config = dataclasses.replace(config, admin_token=secrets.token_urlsafe(32))
        # Printed once, here, and never logged: it is the only copy.
        announce(
            f"No {env_name(ADMIN_TOKEN)} or {env_name(ADMIN_TOKENS)} given; this run's admin token is:"
            f" {config.admin_token}"
        )
    # Names only: the values are secrets.
    announce(f"admin tokens: {', '.join(config.named_admin_tokens())}")
    if not config.verify_secret:
        # Generated before gunicorn forks, so every worker shares it.
        config = dataclasses.replace(config, verify_secret=secrets.token_hex(32))
        log.warning(
            f"{env_name(VERIFY_SECRET)} is not set: verified-password tokens end with this process, so after a"
            " restart every device pays bcrypt again and one whose username is over the failure limit is"
            " refused until the window ends; enrollment tokens made now stop working at the restart, and"
            " those the CLI makes never work"
        )
    if not config.session_secret:
        # Also before the fork: a secret per worker would end a console session
        # whenever a request lands on another worker.
        config = dataclasses.replace(config, session_secret=secrets.token_hex(32))
        log.warning(
            f"{env_name(SESSION_SECRET)} is not set: web console sessions end when this process does;"
            " set it (the same on every instance) to keep them"
        )
    if _check_redis(config):
        _adopt_registered_client_ids(config, authority, announce)
    announce(
        f"cregistry API on http://{config.api_listen} (web console at /console/),"
        f" broker routes on http://{config.broker_listen}"
    )
    try:
        with metrics_directory() as state_directory, open_listener(config.broker_listen) as broker_socket:
            CregistryServer(config, broker_socket, state_directory).run()
    finally:
        if embedded is not None:
            embedded.stop()


@contextlib.contextmanager
def open_listener(listen: str) -> Iterator[socket.socket]:
    """A listening socket on HOST:PORT, inherited by the workers."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=BROKER_BACKLOG)
    except OSError as error:
        raise ConfigError(f"cannot listen on {listen}: {error.strerror or error}") from None
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def _adopt_registered_client_ids(config: Config, authority: Authority | None, announce: Callable[[str], None]) -> None:
    """Users created before client IDs had owners gain the client ID they
    registered with (users.py, adopt_registered_client_ids; once per user)."""
    assert config.redis_url is not None
    connection = connect(config.redis_url, max(config.redis_timeout, 2.0))
    try:
        given = services.build(connection, config, authority=authority).users.adopt_registered_client_ids()
    except redis.RedisError as error:
        log.warning("could not give users their registered client IDs (%s); the next start tries again", error)
        return
    if given:
        announce(f"{given} user(s) created before client IDs had owners now own the client ID they registered with")


def _check_redis(config: Config) -> bool:
    """Warn, do not fail: the service must come up and recover by itself.
    True when Redis answered."""
    assert config.redis_url is not None
    connection = connect(config.redis_url, max(config.redis_timeout, 2.0))
    try:
        connection.ping()
    except redis.RedisError as error:
        problem = configuration_problem(error)
        if problem is not None:
            raise ConfigError(problem) from None  # no retry fixes it: refuse to start
        log.warning("Redis is not reachable yet (%s); broker routes answer 503 until it is", type(error).__name__)
        return False
    for warning in redis_durability_warnings(connection):
        log.warning("%s", warning)
    return True


def redis_durability_warnings(connection: redis.Redis) -> list[str]:
    """What about this Redis could lose users: eviction, or no persistence."""
    warnings = []
    try:
        policy: str = connection.config_get("maxmemory-policy").get("maxmemory-policy") or ""
        if policy.startswith("allkeys-"):
            warnings.append(
                f"Redis maxmemory-policy is {policy}: under memory pressure it can evict users and permissions;"
                " use noeviction (or a volatile-* policy)"
            )
        persistence = connection.info("persistence")
        saves: str = connection.config_get("save").get("save") or ""
        if not int(persistence.get("aof_enabled", 0)) and not saves.strip():
            warnings.append("Redis has neither an append-only file nor RDB snapshots: a Redis restart loses every user")
    except redis.ResponseError:
        # Managed Redis services often disable CONFIG; nothing to check then.
        log.debug("cannot read the Redis configuration; skipping the durability checks")
    return warnings


if __name__ == "__main__":  # pragma: no cover - convenience for `python -m cregistry.server`
    serve(Config.from_env(), lambda text: print(text, file=sys.stderr, flush=True))
