"""Real processes for the integration tier and the benchmarks: redis-server,
`cregistry serve` and mosquitto (with cregistry's plugin, or go-auth), each on
free loopback ports."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before port {port} opened")
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout} s")


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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


GO_AUTH_SO = Path(os.environ.get("CREGISTRY_GO_AUTH_SO", REPO / "mosquitto" / "go-auth.so"))
# cregistry's own plugin, built by `make plugin` (or a sanitizer build, see .ci/run).
PLUGIN_SO = Path(os.environ.get("CREGISTRY_PLUGIN_SO", REPO / "mosquitto" / "cregistry_auth.so"))
SHIPPED_MOSQUITTO_CONF = REPO / "mosquitto" / "mosquitto.conf"
SHIPPED_GO_AUTH_CONF = REPO / "mosquitto" / "mosquitto-go-auth.conf"
# Lines mosquitto writes when a sanitizer in the plugin (or anywhere) found something.
SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "SUMMARY: AddressSanitizer")


def render_mosquitto_conf(
    *,
    port: int,
    plugin: Path,
    cregistry_broker_port: int,
    shipped: Path = SHIPPED_MOSQUITTO_CONF,
    cache_seconds: int | None = None,
    no_auth: bool = False,
    plugin_options: dict[str, str] | None = None,
) -> str:
    """A shipped configuration (the plugin's, or go-auth's with `shipped`) with
    only ports, paths and cache times replaced, and test options added."""
    lines = []
    for line in shipped.read_text().splitlines():
        option = line.split(" ", 1)[0]
        if option == "listener":
            line = f"listener {port} {LOOPBACK}"
        elif no_auth and (option.startswith(("auth_", "plugin")) or option == "allow_anonymous"):
            continue
        elif option in ("auth_plugin", "plugin"):
            line = f"{option} {plugin}"
        elif option == "plugin_opt_url":
            line = f"plugin_opt_url http://{LOOPBACK}:{cregistry_broker_port}"
        elif option == "auth_opt_http_port":
            line = f"auth_opt_http_port {cregistry_broker_port}"
        elif cache_seconds is not None and option in ("auth_opt_auth_cache_seconds", "auth_opt_acl_cache_seconds"):
            line = f"{option} {cache_seconds}"
        elif cache_seconds is not None and option.endswith("_jitter_seconds"):
            line = f"{option} 0"
        lines.append(line)
    lines += [f"plugin_opt_{name} {value}" for name, value in (plugin_options or {}).items()]
    if no_auth:
        lines.append("allow_anonymous true")
    # stderr: unbuffered, so a test that fails can show what mosquitto said up to then.
    lines += [
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "persistence false",
    ]
    return "\n".join(lines) + "\n"


class MosquittoProcess:
    """A real mosquitto configured from mosquitto/, with its output kept.

    `env` reaches mosquitto only (a sanitizer runtime to preload, its options)."""

    def __init__(self, conf_text: str, port: int, env: dict[str, str] | None = None) -> None:
        binary = mosquitto_binary()
        if not binary.exists():
            raise FileNotFoundError(f"mosquitto is not installed ({binary})")
        self.binary = str(binary)
        self.port = port
        self.env = {**os.environ, **mosquitto_library_env(binary), **(env or {})}
        self.directory = tempfile.mkdtemp(prefix="cregistry-mosquitto-")
        os.chmod(self.directory, 0o755)
        self.conf = Path(self.directory) / "mosquitto.conf"
        self.conf.write_text(conf_text)
        self.conf.chmod(0o644)
        self.log = Path(self.directory) / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        wait_for_port(self.port, process=self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, sig)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def problems(self) -> list[str]:
        """Why this broker's run is a failure even if every test passed: a
        crash, an unclean exit, a sanitizer report. Call after stop()."""
        found = []
        code = None if self.process is None else self.process.returncode
        if code not in (None, 0):
            found.append(f"mosquitto exited with {code}")
        output = self.output()
        found += [f"mosquitto's output has {report!r}" for report in SANITIZER_REPORTS if report in output]
        return found

    def finish(self) -> tuple[list[str], str]:
        """Stop the broker and remove its files: the problems() of its run and
        its whole output (also printed, which pytest shows for a failed test).
        Leaks are reported at exit, so only this sees them."""
        self.stop()
        problems = self.problems()
        output = self.output()
        print(f"--- mosquitto on {self.port} ---\n{output}")
        self.cleanup()
        return problems, output

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# More environment for mosquitto alone: every CREGISTRY_MOSQUITTO_ENV_<NAME>=<value>
# becomes <NAME>=<value> (say, other sanitizer options than plugin_env's).
# Read at import: the tests' autouse fixture clears CREGISTRY_* from each test's environment.
MOSQUITTO_ENV_PREFIX = "CREGISTRY_MOSQUITTO_ENV_"
MOSQUITTO_ENV = {
    name.removeprefix(MOSQUITTO_ENV_PREFIX): value
    for name, value in os.environ.items()
    if name.startswith(MOSQUITTO_ENV_PREFIX)
}
# The plugin logs this once it has its first feed position (poll.c), and again after each failure.
FEED_OK_NOTICE = "cregistry_auth: change feed ok"


LSAN_SUPPRESSIONS = REPO / "mosquitto" / "plugin" / "tests" / "lsan-mosquitto.supp"


def plugin_env(plugin: Path) -> dict[str, str]:
    """mosquitto's environment for `plugin`. The sanitizer build (`make plugin-asan`,
    a name ending in -asan.so; see mosquitto/plugin/README.md) needs the ASan
    runtime preloaded, mosquitto itself not being instrumented; any report then
    ends the run with exit code 66, which problems() names."""
    env = {}
    if plugin.name.endswith("-asan.so"):
        runtime = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
        env = {
            "LD_PRELOAD": runtime.stdout.strip(),
            # The slow unwinder sees mosquitto's own frames, so that the suppressions
            # (leaks mosquitto makes and owns itself, never the plugin's) can name them.
            "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:exitcode=66:fast_unwind_on_malloc=0",
            "LSAN_OPTIONS": f"suppressions={LSAN_SUPPRESSIONS}:print_suppressions=0",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        }
    return {**env, **MOSQUITTO_ENV}


# The broker the tests run: Debian's mosquitto, or CREGISTRY_MOSQUITTO=<path>
# (the 2.1 tier: `make test-broker-2.1` builds 2.1.2 outside the repository).
# CREGISTRY_MOSQUITTO_UNAVAILABLE=<reason> says why that broker could not be
# had: every broker test then skips with the reason (fails under CI).
# Read at import, like MOSQUITTO_ENV below.
MOSQUITTO_OVERRIDE = os.environ.get("CREGISTRY_MOSQUITTO", "")
MOSQUITTO_UNAVAILABLE = os.environ.get("CREGISTRY_MOSQUITTO_UNAVAILABLE", "")


def mosquitto_binary() -> Path:
    if MOSQUITTO_OVERRIDE:
        return Path(MOSQUITTO_OVERRIDE)
    return Path(shutil.which("mosquitto") or "/usr/sbin/mosquitto")


def mosquitto_library_env(binary: Path) -> dict[str, str]:
    """An installed prefix's own libraries (<prefix>/sbin/mosquitto finds
    <prefix>/lib/libmosquitto_common.so only through LD_LIBRARY_PATH)."""
    lib = binary.resolve().parent.parent / "lib"
    if not MOSQUITTO_OVERRIDE or not lib.is_dir():
        return {}
    inherited = os.environ.get("LD_LIBRARY_PATH", "")
    return {"LD_LIBRARY_PATH": f"{lib}:{inherited}" if inherited else str(lib)}


def mosquitto_missing() -> str | None:
    if MOSQUITTO_UNAVAILABLE:
        return MOSQUITTO_UNAVAILABLE
    if not mosquitto_binary().exists():
        if MOSQUITTO_OVERRIDE:
            return f"CREGISTRY_MOSQUITTO={MOSQUITTO_OVERRIDE} does not exist"
        return "mosquitto is not installed (apt-get install mosquitto)"
    return None


def plugin_missing(plugin: Path = PLUGIN_SO) -> str | None:
    """Why a broker with cregistry's plugin cannot run here, or None."""
    if problem := mosquitto_missing():
        return problem
    if not plugin.exists():
        return f"cregistry's plugin is not built ({plugin}): run `make plugin`"
    return None


class PluginMosquittoProcess(MosquittoProcess):
    """A real mosquitto loading cregistry's own plugin, configured by
    mosquitto/mosquitto.conf, that asks cregistry's broker listener on
    `cregistry_broker_port` (or a stand-in for it); `plugin_options` adds
    plugin_opt_<name> lines."""

    def __init__(
        self, cregistry_broker_port: int, plugin: Path = PLUGIN_SO, plugin_options: dict[str, str] | None = None
    ) -> None:
        port = free_port()
        conf = render_mosquitto_conf(
            port=port, plugin=plugin, cregistry_broker_port=cregistry_broker_port, plugin_options=plugin_options
        )
        super().__init__(conf, port, env=plugin_env(plugin))

    def wait_for_feed(self, timeout: float = 10.0) -> None:
        """Until the plugin has its first feed position. Its first poll is a
        reset, which drops whatever it cached before the answer came: a test
        that relies on cached answers starts after this."""
        deadline = time.monotonic() + timeout
        while FEED_OK_NOTICE not in self.output():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the plugin did not log {FEED_OK_NOTICE!r} within {timeout} s:\n{self.output()[-3000:]}"
                )
            time.sleep(0.02)


def children_of(pid: int) -> list[int]:
    """The processes `pid` started (gunicorn's workers, for its master)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (gunicorn's master and its workers)."""
    found = [pid]
    for each in found:
        found += children_of(each)
    return found


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


def connect_packet(username: str, password: str, client_id: str, keepalive: int = 30) -> bytes:
    """An MQTT 3.1.1 CONNECT with username, password and a clean session."""

    def text(value: str) -> bytes:
        data = value.encode()
        return len(data).to_bytes(2, "big") + data

    # Protocol "MQTT" level 4, flags: username, password, clean session.
    body = text("MQTT") + bytes([4, 0xC2]) + keepalive.to_bytes(2, "big") + text(client_id) + text(username)
    body += text(password)
    assert len(body) < 128, "one-byte remaining length only"
    return bytes([0x10, len(body)]) + body


def raw_connect(port: int, username: str, password: str, client_id: str, timeout: float = 10.0) -> tuple[bytes, float]:
    """One MQTT 3.1.1 CONNECT on a bare socket: the broker's first bytes (a
    CONNACK, or b"" when it closed the socket) and the seconds until they came.
    paho adds its own delay to noticing a closed socket; timing needs this."""
    packet = connect_packet(username, password, client_id)
    started = time.monotonic()
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(packet)
        try:
            answer = sock.recv(4)
        except ConnectionResetError:
            answer = b""
    return answer, time.monotonic() - started


class RawSession:
    """An MQTT 3.1.1 session on a plain socket, which never reconnects by
    itself; `connack` is the CONNACK's return code, None without one."""

    def __init__(self, port: int, username: str, password: str, client_id: str) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        self.sock.sendall(connect_packet(username, password, client_id, keepalive=60))
        answer = self.sock.recv(4)
        self.connack = answer[3] if len(answer) == 4 else None

    def closed_within(self, seconds: float) -> bool:
        """True when the broker closes the connection within `seconds`."""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@dataclasses.dataclass(frozen=True)
class ClientTls:
    """What a TLS client presents: the CA it trusts for the broker's server
    certificate, and its own certificate and key (PEM files)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class MqttClient:
    """A paho-mqtt client with blocking calls, as a test wants them."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        client_id: str,
        protocol: int = 4,
        tls: ClientTls | None = None,
    ) -> None:
        """`protocol`: 4 for MQTT 3.1.1, 5 for MQTT 5; `tls`: connect over TLS
        with that client certificate (a listener with require_certificate)."""
        import paho.mqtt.client as mqtt

        self.port = port
        version = mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca_file), certfile=str(tls.cert_file), keyfile=str(tls.key_file))
        self.connack: Any = None
        self.disconnected = threading.Event()
        self.connected = threading.Event()
        self.subacks: dict[int, list[Any]] = {}
        self.suback_event = threading.Condition()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.messages.put((message.topic, message.payload))

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        self.connack = reason_code
        self.connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self.disconnected.set()

    def _on_subscribe(self, _client: Any, _userdata: Any, mid: int, reason_codes: list[Any], _properties: Any) -> None:
        with self.suback_event:
            self.subacks[mid] = reason_codes
            self.suback_event.notify_all()

    def connect(self, timeout: float = 10.0) -> str:
        """ "Success", "Not authorized", ... or "no CONNACK" when the broker closed the socket."""
        self.connected.clear()
        self.disconnected.clear()
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # A refusing CONNACK and the close that follows it can both land between the
            # two checks: the close counts as "no CONNACK" only if no CONNACK came first.
            closed = self.disconnected.is_set()
            if self.connected.wait(0.05):
                if str(self.connack) != "Success":
                    # paho's loop would try again by itself: one call, one attempt.
                    self.close()
                return str(self.connack)
            if closed:
                break
        self.client.loop_stop()
        return "no CONNACK"

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> int:
        """The SUBACK return code: the granted QoS, or 0x80 for failure."""
        _result, mid = self.client.subscribe(topic_filter, qos)
        deadline = time.monotonic() + timeout
        with self.suback_event:
            while mid not in self.subacks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no SUBACK")
                self.suback_event.wait(remaining)
        code = self.subacks[mid][0]
        return 0x80 if code.is_failure else int(code.value)

    def unsubscribe(self, topic_filter: str, timeout: float = 10.0) -> None:
        unsubscribed = threading.Event()
        self.client.on_unsubscribe = lambda *_args: unsubscribed.set()
        self.client.unsubscribe(topic_filter)
        if not unsubscribed.wait(timeout):
            raise TimeoutError("no UNSUBACK")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos).wait_for_publish(10)

    def receive(self, timeout: float) -> tuple[str, bytes] | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def mqtt_clients(port: int) -> Iterator[Callable[[str | None, str | None, str], MqttClient]]:
    """A maker of MqttClients for the broker on `port`: make(username,
    password, client_id); every client made is closed at the end."""
    made: list[MqttClient] = []

    def make(username: str | None, password: str | None, client_id: str) -> MqttClient:
        client = MqttClient(port, username, password, client_id)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.close()


# -- Redis Sentinel (the failover tier) --------------------------------------
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
