"""The broker configurations the benchmark compares, each a real mosquitto on
a free loopback port: no authentication, Mosquitto's dynamic-security plugin,
cregistry's own plugin, and go-auth's HTTP backend where a build exists."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.mosquitto import GO_AUTH_SO, MosquittoProcess
from harness.processes import LOOPBACK, REPO, free_port

PLUGIN_SO = Path(os.environ.get("CREGISTRY_PLUGIN_SO", REPO / "mosquitto" / "cregistry_auth.so"))
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
# What `mosquitto_ctrl dynsec createClient` uses (PW_DEFAULT_ITERATIONS in mosquitto 2.0).
DYNSEC_ITERATIONS = 101

NO_AUTH = "no-auth"
DYNSEC = "dynsec"
CREGISTRY = "cregistry"
GO_AUTH = "go-auth"

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
    GO_AUTH: Setup(GO_AUTH, GO_AUTH_SO),
}


class DynsecUsers:
    """A dynamic-security configuration file holding the benchmark's devices.

    `mosquitto_ctrl dynsec init` writes the file (with its admin client and
    default ACL access); the devices are added in the shape that
    `mosquitto_ctrl dynsec createClient` gives them (PBKDF2-SHA512, 101
    iterations, 12-byte salt), because creating 10,000 clients one $CONTROL
    command at a time would take longer than the test."""

    def __init__(self) -> None:
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
            digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, DYNSEC_ITERATIONS, 64)
            self.config["clients"].append(
                {
                    "username": name,
                    "password": base64.b64encode(digest).decode(),
                    "salt": base64.b64encode(salt).decode(),
                    "iterations": DYNSEC_ITERATIONS,
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


def conf_lines(setup: Setup, port: int, directory: Path, service_broker_port: int) -> list[str]:
    lines = ["per_listener_settings false", f"listener {port} {LOOPBACK}"]
    if setup.name == NO_AUTH:
        lines.append("allow_anonymous true")
    elif setup.name == DYNSEC:
        lines += [
            "allow_anonymous false",
            f"plugin {setup.plugin}",
            f"plugin_opt_config_file {directory / 'dynamic-security.json'}",
        ]
    elif setup.name == CREGISTRY:
        lines += ["allow_anonymous false", f"plugin {setup.plugin}"]
        lines.append(f"plugin_opt_url http://{LOOPBACK}:{service_broker_port}")
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


def start_broker(setup: Setup, service_broker_port: int, dynsec: DynsecUsers | None = None) -> MosquittoProcess:
    """A freshly started mosquitto: whatever a plugin caches starts empty."""
    if not setup.available():
        raise FileNotFoundError(f"{setup.name}: {setup.plugin} does not exist")
    port = free_port()
    broker = MosquittoProcess("", port)
    directory = Path(broker.directory)
    if setup.name == DYNSEC:
        if dynsec is None:
            raise ValueError("dynsec needs its users")
        dynsec.write_to(directory / "dynamic-security.json")
    broker.conf.write_text("\n".join(conf_lines(setup, port, directory, service_broker_port)) + "\n")
    try:
        broker.start()
    except Exception:
        output = broker.output()
        broker.cleanup()
        raise RuntimeError(f"{setup.name} broker did not start: {output[-2000:]}") from None
    return broker


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")
