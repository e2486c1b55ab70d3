"""The brokers and configurations the benchmark compares, each a real mosquitto
on a free loopback port: Debian's mosquitto and 2.1.2 (built outside the
repository by mosquitto/build-mosquitto-2.1.sh), each without authentication,
with its own version's dynamic-security plugin, with cregistry's plugin, with
the bench's allow-everything plugin (bench/allow_all.c), and (on Debian's
2.0 only) go-auth's HTTP backend where a build exists."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.mosquitto import GO_AUTH_SO, MosquittoProcess
from harness.processes import LOOPBACK, REPO, free_port

PLUGIN_SO = Path(os.environ.get("CREGISTRY_PLUGIN_SO", REPO / "mosquitto" / "cregistry_auth.so"))
ALLOW_ALL_SO = Path(os.environ.get("CREGISTRY_ALLOW_ALL_SO", REPO / "bench" / "build" / "allow_all.so"))
MOSQUITTO_21_BUILD = REPO / "mosquitto" / "build-mosquitto-2.1.sh"


def parse_plugin_options(text: str) -> dict[str, str]:
    """ "delayed_auth=1,cache_size=50000" -> {"delayed_auth": "1", "cache_size": "50000"}."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise ValueError(f"CREGISTRY_BENCH_PLUGIN_OPTIONS: {item!r} is not name=value")
        options[name.strip()] = value.strip()
    return options


# cregistry's plugin options for a run (plugin_opt_<name> <value>), say delayed_auth=1
# to measure 2.1's delayed basic auth; none by default: the plugin as it ships.
PLUGIN_OPTIONS = parse_plugin_options(os.environ.get("CREGISTRY_BENCH_PLUGIN_OPTIONS", ""))
DYNSEC_SO_CANDIDATES = (
    Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"),  # Debian's mosquitto package
    Path("/usr/lib/mosquitto_dynamic_security.so"),
    Path("/usr/local/lib/mosquitto_dynamic_security.so"),
)
DYNSEC_SO = Path(
    os.environ.get(
        "CREGISTRY_DYNSEC_SO", next((str(p) for p in DYNSEC_SO_CANDIDATES if p.exists()), DYNSEC_SO_CANDIDATES[0])
    )
)
# What `mosquitto_ctrl dynsec createClient` uses: PW_DEFAULT_ITERATIONS in
# mosquitto 2.0 (src/password_mosq.h) and in 2.1 (libcommon/password_common.c).
DYNSEC_ITERATIONS_20 = 101
DYNSEC_ITERATIONS_21 = 1000

NO_AUTH = "no-auth"
DYNSEC = "dynsec"
CREGISTRY = "cregistry"
# cregistry's plugin restarted with its warm file (docs/plugin.md, "Warm restart"):
# synchronous CONNECT checks, as the warm file needs on 2.1; written only at stop.
CREGISTRY_WARM = "cregistry-warm"
WARM_OPTIONS = {"delayed_auth": "0", "warm_save_interval": "0"}
GO_AUTH = "go-auth"
ALLOW_ALL = "allow-all"

# The same for every configuration, so that only authentication differs.
COMMON_LINES = ["persistence false", "log_dest stdout", "log_type error", "log_type warning", "log_type notice"]


@dataclasses.dataclass(frozen=True)
class Setup:
    name: str
    plugin: Path | None  # None: nothing to load

    def available(self) -> bool:
        return self.plugin is None or self.plugin.exists()

    def provenance(self) -> str:
        if self.plugin is None:
            return "mosquitto without a plugin"
        if not self.plugin.exists():
            return f"{self.plugin} (not built)"
        digest = hashlib.sha256(self.plugin.read_bytes()).hexdigest()[:12]
        return f"{self.plugin} (sha256 {digest})"


SETUPS = {
    NO_AUTH: Setup(NO_AUTH, None),
    DYNSEC: Setup(DYNSEC, DYNSEC_SO),
    CREGISTRY: Setup(CREGISTRY, PLUGIN_SO),
    CREGISTRY_WARM: Setup(CREGISTRY_WARM, PLUGIN_SO),
    ALLOW_ALL: Setup(ALLOW_ALL, ALLOW_ALL_SO),
    GO_AUTH: Setup(GO_AUTH, GO_AUTH_SO),
}


@dataclasses.dataclass(frozen=True)
class Broker:
    """One mosquitto version: its binary, its own dynamic-security plugin, and
    the environment an installed prefix outside the system needs."""

    version: str
    binary: Path
    dynsec_plugin: Path
    dynsec_iterations: int
    library_dir: Path | None = None  # <prefix>/lib, for LD_LIBRARY_PATH

    def setup(self, name: str) -> Setup:
        """The configuration on this broker: dynamic security is the broker's own."""
        return Setup(DYNSEC, self.dynsec_plugin) if name == DYNSEC else SETUPS[name]

    def supports(self, name: str) -> bool:
        # go-auth is an auth_plugin of the version 4 interface, built against Debian's 2.0 only.
        return name != GO_AUTH or self.library_dir is None

    def env(self) -> dict[str, str]:
        if self.library_dir is None:
            return {}
        inherited = os.environ.get("LD_LIBRARY_PATH", "")
        return {"LD_LIBRARY_PATH": f"{self.library_dir}:{inherited}" if inherited else str(self.library_dir)}


def broker_version(binary: Path, env: dict[str, str]) -> str:
    """ "2.0.11" from `mosquitto -h`'s first line ("mosquitto version 2.0.11")."""
    done = subprocess.run([str(binary), "-h"], capture_output=True, text=True, timeout=10, env={**os.environ, **env})
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("mosquitto version "):
            return line.removeprefix("mosquitto version ").strip()
    raise RuntimeError(f"{binary} -h names no version")


def debian_broker() -> Broker:
    binary = Path(shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    return Broker(broker_version(binary, {}), binary, DYNSEC_SO, DYNSEC_ITERATIONS_20)


def mosquitto_21() -> tuple[Broker | None, str]:
    """2.1.2 from CREGISTRY_BENCH_MOSQUITTO_21 or the build script (which
    reuses an earlier build): the broker, or None and why it is missing."""
    binary_text = os.environ.get("CREGISTRY_BENCH_MOSQUITTO_21", "")
    if not binary_text:
        try:
            done = subprocess.run([str(MOSQUITTO_21_BUILD)], capture_output=True, text=True, timeout=1200)
        except (OSError, subprocess.TimeoutExpired) as error:
            return None, f"Mosquitto 2.1.2 is not available: {error}"
        if done.returncode != 0 or not done.stdout.strip():
            reason = (done.stderr.strip().splitlines() or ["the build script failed"])[-1]
            return None, f"Mosquitto 2.1.2 is not available: {reason}"
        binary_text = done.stdout.strip().splitlines()[-1]
    binary = Path(binary_text)
    if not binary.exists():
        return None, f"Mosquitto 2.1.2 is not available: {binary} does not exist"
    library_dir = binary.resolve().parent.parent / "lib"
    broker = Broker("", binary, library_dir / "mosquitto_dynamic_security.so", DYNSEC_ITERATIONS_21, library_dir)
    try:
        version = broker_version(binary, broker.env())
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
        return None, f"Mosquitto 2.1.2 is not available: {error}"
    return dataclasses.replace(broker, version=version), ""


class DynsecUsers:
    """A dynamic-security configuration file holding the benchmark's devices.

    `mosquitto_ctrl dynsec init` writes the file (with its admin client and
    default ACL access); the devices are added in the shape that
    `mosquitto_ctrl dynsec createClient` of the broker's version gives them
    (PBKDF2-SHA512, 101 iterations on 2.0 and 1000 on 2.1, 12-byte salt), because creating 10,000 clients one $CONTROL
    command at a time would take longer than the test."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.directory = Path(tempfile.mkdtemp(prefix="cregistry-bench-dynsec-"))
        self.path = self.directory / "dynamic-security.json"
        admin_password = secrets.token_hex(16)
        ctrl = shutil.which("mosquitto_ctrl")
        if ctrl is None:
            raise FileNotFoundError("mosquitto_ctrl is not installed (Debian package mosquitto-clients)")
        subprocess.run(
            [ctrl, "dynsec", "init", str(self.path), "bench-admin", admin_password],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.config = json.loads(self.path.read_text())
        self.clients: set[str] = set()

    def add(self, names: list[str], password: str) -> None:
        for name in names:
            if name in self.clients:
                continue
            salt = secrets.token_bytes(12)
            digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, self.iterations, 64)
            self.config["clients"].append(
                {
                    "username": name,
                    "password": base64.b64encode(digest).decode(),
                    "salt": base64.b64encode(salt).decode(),
                    "iterations": self.iterations,
                    # No role: a CONNECT does not consult roles, and mosquitto 2.0.11 keeps a
                    # role's member list sorted by insertion, so loading 11,000 members of one
                    # role takes it about 9 s (quadratic) before it even listens.
                    "roles": [],
                }
            )
            self.clients.add(name)

    def write_to(self, path: Path) -> None:
        path.write_text(json.dumps(self.config))
        path.chmod(0o666)  # mosquitto drops root for its own user, and dynsec saves its file

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def conf_lines(
    setup: Setup, port: int, directory: Path, service_broker_port: int, plugin_options: dict[str, str] | None = None
) -> list[str]:
    lines = ["per_listener_settings false", f"listener {port} {LOOPBACK}"]
    if setup.name == NO_AUTH:
        lines.append("allow_anonymous true")
    elif setup.name == ALLOW_ALL:
        lines += ["allow_anonymous false", f"plugin {setup.plugin}"]
    elif setup.name == DYNSEC:
        lines += [
            "allow_anonymous false",
            f"plugin {setup.plugin}",
            f"plugin_opt_config_file {directory / 'dynamic-security.json'}",
        ]
    elif setup.name in (CREGISTRY, CREGISTRY_WARM):
        lines += ["allow_anonymous false", f"plugin {setup.plugin}"]
        lines.append(f"plugin_opt_url http://{LOOPBACK}:{service_broker_port}")
        options = PLUGIN_OPTIONS if plugin_options is None else plugin_options
        if setup.name == CREGISTRY_WARM:
            options = {**options, **WARM_OPTIONS, "warm_file": str(warm_file(directory))}
        lines += [f"plugin_opt_{name} {value}" for name, value in options.items()]
    elif setup.name == GO_AUTH:
        # The settings that mosquitto/mosquitto.conf shipped for go-auth.
        lines += [
            "allow_anonymous false", f"auth_plugin {setup.plugin}", "auth_opt_log_level warn",
            "auth_opt_backends http", f"auth_opt_http_host {LOOPBACK}", f"auth_opt_http_port {service_broker_port}",
            "auth_opt_http_getuser_uri /mqtt/user", "auth_opt_http_aclcheck_uri /mqtt/acl",
            "auth_opt_http_params_mode json", "auth_opt_http_response_mode status", "auth_opt_http_timeout 2",
            "auth_opt_retry_count 1", "auth_opt_cache true", "auth_opt_cache_type go-cache",
            "auth_opt_auth_cache_seconds 30", "auth_opt_acl_cache_seconds 30",
            "auth_opt_auth_jitter_seconds 3", "auth_opt_acl_jitter_seconds 3",
        ]  # fmt: skip
    else:
        raise ValueError(setup.name)
    return lines + COMMON_LINES


def warm_file(directory: Path) -> Path:
    return directory / "warm" / "cregistry.warm"


def make_warm_directory(directory: Path) -> None:
    """A directory for the warm file that only the broker's user may write:
    mosquitto started as root runs as its user `mosquitto`."""
    path = warm_file(directory).parent
    path.mkdir(mode=0o700)
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return
        os.chown(path, user.pw_uid, user.pw_gid)


def start_broker(
    version: Broker, setup: Setup, service_broker_port: int, dynsec: DynsecUsers | None = None
) -> MosquittoProcess:
    """A freshly started mosquitto of that version: whatever a plugin caches starts empty."""
    if not setup.available():
        raise FileNotFoundError(f"{setup.name}: {setup.plugin} does not exist")
    port = free_port()
    broker = MosquittoProcess("", port, env=version.env(), binary=version.binary)
    directory = Path(broker.directory)
    if setup.name == DYNSEC:
        if dynsec is None:
            raise ValueError("dynsec needs its users")
        dynsec.write_to(directory / "dynamic-security.json")
    if setup.name == CREGISTRY_WARM:
        make_warm_directory(directory)
    if setup.plugin is not None and not world_readable(setup.plugin):
        # mosquitto started as root loads plugins as its own user, who cannot
        # enter a build under /root/.cache (2.1.2's dynamic security): a copy beside the config.
        copy = directory / setup.plugin.name
        shutil.copyfile(setup.plugin, copy)
        copy.chmod(0o755)
        setup = dataclasses.replace(setup, plugin=copy)
    broker.conf.write_text("\n".join(conf_lines(setup, port, directory, service_broker_port)) + "\n")
    try:
        broker.start()
    except Exception:
        output = broker.output()
        broker.cleanup()
        raise RuntimeError(f"{setup.name} broker did not start: {output[-2000:]}") from None
    return broker


def world_readable(path: Path) -> bool:
    """Whether any user can read `path`: every directory above it enterable by all, the file readable by all."""
    resolved = path.resolve()
    return all(parent.stat().st_mode & 0o001 for parent in resolved.parents) and bool(resolved.stat().st_mode & 0o004)


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")
