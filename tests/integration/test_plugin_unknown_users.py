"""plugin_opt_unknown_users defer (SPEC §11, "Beside the auth Mosquitto already
has"): a real mosquitto with a password_file and an acl_file beside cregistry's
plugin, in front of the real `cregistry serve`. Accounts of the password_file
connect and publish, registry devices work as ever, and nothing a user of the
registry sends is ever left to the password_file."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import mqtt
from harness.mosquitto import PluginMosquittoProcess
from harness.mqtt import MqttClient, mqtt_clients
from harness.service import Freezer, ServiceProcess

from .conftest import finish_broker, started

pytestmark = pytest.mark.broker

SERVICE_ACCOUNT = ("svc-historian", "historian-secret")  # in the password_file only
ACL_FILE = "user svc-historian\ntopic readwrite plant/#\n"


def add_user(cregistry, name: str, password: str) -> None:  # type: ignore[no-untyped-def]
    result = cregistry("user", "add", name, "--password-stdin", stdin=f"{password}\n")
    assert result.returncode == 0, result.stderr


def requests_of(cregistry) -> list[str]:  # type: ignore[no-untyped-def]
    return [request["username"] for request in json.loads(cregistry("requests", "--json").stdout)["requests"]]


def password_file(directory: Path, accounts: dict[str, str]) -> Path:
    """A password_file as the operator makes it, with Debian's mosquitto_passwd
    (its PBKDF2-SHA512 lines are read by 2.0.11 and 2.1.2 alike)."""
    path = directory / "passwd"
    for name, password in accounts.items():
        create = [] if path.exists() else ["-c"]
        subprocess.run(["mosquitto_passwd", *create, "-b", str(path), name, password], check=True)
    path.chmod(0o644)  # mosquitto may drop to its own user
    return path


def start_broker(
    service: ServiceProcess, plugin: Path, directory: Path, *, unknown_users: str | None, files_first: bool = False
) -> PluginMosquittoProcess:
    accounts = {SERVICE_ACCOUNT[0]: SERVICE_ACCOUNT[1], "dev-both": "file-password"}
    acl = directory / "acl"
    acl.write_text(ACL_FILE)
    acl.chmod(0o644)
    files = (f"password_file {password_file(directory, accounts)}", f"acl_file {acl}")
    options = {} if unknown_users is None else {"unknown_users": unknown_users}
    broker = PluginMosquittoProcess(service.broker_port, plugin, plugin_options=options, extra_lines=files)
    if files_first:
        # The order of the lines does not matter: both versions ask plugins
        # before the password_file and acl_file (security.c, plugin_basic_auth.c).
        lines = broker.conf.read_text().splitlines()
        lines = [line for line in lines if line not in files]
        at = next(i for i, line in enumerate(lines) if line.startswith("plugin "))
        broker.conf.write_text("\n".join([*lines[:at], *files, *lines[at:]]) + "\n")
    return started(broker)


@pytest.fixture
def beside_broker(
    service: ServiceProcess, cregistry_plugin: Path, request: pytest.FixtureRequest
) -> Iterator[PluginMosquittoProcess]:
    """A broker with the password_file beside the plugin; the test's parameter
    (through `beside`) says the plugin's unknown_users (None: the default) and
    whether the files' lines come before the plugin's."""
    unknown_users, files_first = request.param
    # not under pytest's tmp_path (mode 0700): mosquitto may run as its own user
    directory = Path(tempfile.mkdtemp(prefix="cregistry-password-file-"))
    directory.chmod(0o755)
    try:
        broker = start_broker(
            service, cregistry_plugin, directory, unknown_users=unknown_users, files_first=files_first
        )
        yield broker
        finish_broker(broker)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def beside(beside_broker: PluginMosquittoProcess) -> Iterator[Callable[..., MqttClient]]:
    """make(username, password, client_id): clients of `beside_broker`."""
    with mqtt_clients(beside_broker.port) as make:
        yield make


@pytest.mark.parametrize(
    "beside_broker",
    [("defer", False), ("defer", True)],
    indirect=["beside_broker"],
    ids=["plugin-first", "files-first"],
)
def test_with_defer_a_password_file_account_works_beside_registry_devices(beside, cregistry) -> None:  # type: ignore[no-untyped-def]
    add_user(cregistry, "dev-1", "device-secret")
    cregistry("grant", "dev-1", "plant/%u/#", "readWrite")
    add_user(cregistry, "dev-both", "registry-password")  # also in the password_file, with another password

    historian = beside(*SERVICE_ACCOUNT, "historian")
    assert historian.connect() == "Success"
    assert historian.subscribe("plant/#") == 1  # the acl_file's grant: cregistry has no such user
    device = beside("dev-1", "device-secret", "dev-1-client")
    assert device.connect() == "Success"
    assert device.subscribe("plant/dev-1/#") == 1
    assert device.subscribe("plant/#") == 0x80  # a registry device: cregistry's answer, never the acl_file's

    device.publish("plant/dev-1/temperature", b"21.5")
    assert historian.receive(5) == ("plant/dev-1/temperature", b"21.5")
    historian.publish("plant/dev-1/setpoint", b"20")
    assert device.receive(5) == ("plant/dev-1/temperature", b"21.5")
    assert device.receive(5) == ("plant/dev-1/setpoint", b"20")

    assert beside(SERVICE_ACCOUNT[0], "not-the-secret", "historian-2").connect() == "Not authorized"
    assert beside("nobody-anywhere", "whatever", "nobody").connect() == "Not authorized"
    # a user of the registry is never left to the password_file
    assert beside("dev-both", "file-password", "dev-both-client").connect() == "Not authorized"
    assert beside("dev-both", "registry-password", "dev-both-client").connect() == "Success"


@pytest.mark.parametrize("beside_broker", [("defer", False)], indirect=["beside_broker"])
def test_with_defer_an_unknown_username_is_still_recorded_while_unlocked(beside, cregistry) -> None:  # type: ignore[no-untyped-def]
    cregistry("unlock")
    assert beside(*SERVICE_ACCOUNT, "historian").connect() == "Success"  # the password_file's answer
    assert beside("new-device", "device-made-secret", "new-device-client").connect() == "Not authorized"
    assert sorted(requests_of(cregistry)) == sorted([SERVICE_ACCOUNT[0], "new-device"])


@pytest.mark.parametrize(
    "beside_broker", [(None, False), ("refuse", False)], indirect=["beside_broker"], ids=["default", "refuse"]
)
def test_with_refuse_the_password_file_account_is_refused(beside, cregistry) -> None:  # type: ignore[no-untyped-def]
    add_user(cregistry, "dev-1", "device-secret")
    assert beside(*SERVICE_ACCOUNT, "historian").connect() == "Not authorized"
    assert beside("dev-1", "device-secret", "dev-1-client").connect() == "Success"


@pytest.mark.parametrize("beside_broker", [("defer", False)], indirect=["beside_broker"])
def test_with_defer_a_fault_is_never_deferred(beside_broker: PluginMosquittoProcess, freezer: Freezer) -> None:
    """While cregistry cannot answer, the plugin cannot know that a username is
    unknown: the CONNECT fails closed (no CONNACK for MQTT 3.1.1) instead of
    going to the password_file, which would then decide for a registry user."""
    freezer.freeze()
    answer, seconds = mqtt.raw_connect(beside_broker.port, *SERVICE_ACCOUNT, "historian")
    assert answer == b""  # closed without a CONNACK: an outage, not "accepted" nor "not authorised"
    assert seconds < 2.5
    freezer.thaw()
