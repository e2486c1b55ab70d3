"""mosquitto with cregistry's plugin (or go-auth): its configuration, the broker
binary (2.0.11 or 2.1.2), the sanitizer build's environment."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from harness.processes import LOOPBACK, REPO, free_port, stop_process, wait_for_port

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
    extra_lines: tuple[str, ...] = (),
) -> str:
    """A shipped configuration (the plugin's, or go-auth's with `shipped`) with
    only ports, paths and cache times replaced, and test options (and
    `extra_lines`, such as a password_file beside the plugin) added."""
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
    lines += extra_lines
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

    `env` reaches mosquitto only (a sanitizer runtime to preload, its options).
    `binary` names another broker than the tests' one (the benchmark runs both
    versions in one process); `env` then carries what that broker needs."""

    def __init__(
        self, conf_text: str, port: int, env: dict[str, str] | None = None, binary: Path | None = None
    ) -> None:
        library_env = {} if binary is not None else mosquitto_library_env(mosquitto_binary())
        binary = binary or mosquitto_binary()
        if not binary.exists():
            raise FileNotFoundError(f"mosquitto is not installed ({binary})")
        self.binary = str(binary)
        self.port = port
        self.env = {**os.environ, **library_env, **(env or {})}
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
    plugin_opt_<name> lines, `extra_lines` any other lines."""

    def __init__(
        self,
        cregistry_broker_port: int,
        plugin: Path = PLUGIN_SO,
        plugin_options: dict[str, str] | None = None,
        extra_lines: tuple[str, ...] = (),
    ) -> None:
        port = free_port()
        conf = render_mosquitto_conf(
            port=port,
            plugin=plugin,
            cregistry_broker_port=cregistry_broker_port,
            plugin_options=plugin_options,
            extra_lines=extra_lines,
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
