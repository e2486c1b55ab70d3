"""The plugin's warm restart (plugin_opt_warm_file, docs/plugin.md "Warm
restart") in a real mosquitto in front of the real `cregistry serve`: grants
kept across a broker restart answer without asking, but never after a change
the broker missed while down, never without the change feed read up to now,
and never from a file others may read."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.mosquitto import PluginMosquittoProcess
from harness.mqtt import mqtt_clients
from harness.service import Freezer, ServiceProcess
from tests.integration.conftest import finish_broker, started

pytestmark = pytest.mark.broker


@pytest.fixture
def warm_file() -> Iterator[Path]:
    """A path in a directory only the broker's user may write: mosquitto run
    as root drops to its user `mosquitto` (2.1 before loading plugins, 2.0
    after, so the file is written as that user either way)."""
    directory = Path(tempfile.mkdtemp(prefix="cregistry-warm-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            pass
        else:
            os.chown(directory, user.pw_uid, user.pw_gid)
    directory.chmod(0o700)
    yield directory / "cregistry.warm"
    shutil.rmtree(directory, ignore_errors=True)


def warm_broker(service: ServiceProcess, plugin: Path, warm_file: Path) -> PluginMosquittoProcess:
    # synchronous CONNECT checks: on 2.1 a warm file is used only so (docs/plugin.md)
    return PluginMosquittoProcess(
        service.broker_port, plugin, plugin_options={"warm_file": str(warm_file), "delayed_auth": "0"}
    )


def connect(port: int, username: str, password: str, client_id: str) -> str:
    with mqtt_clients(port) as make:
        return make(username, password, client_id).connect()


def add_user(cregistry, name: str, password: str) -> None:  # type: ignore[no-untyped-def]
    result = cregistry("user", "add", name, "--password-stdin", stdin=f"{password}\n")
    assert result.returncode == 0, result.stderr


def answered_from_warm_file(output: str) -> int:
    """The plugin's count of CONNECTs a warm entry answered, logged at stop."""
    found = re.findall(r"cregistry_auth: warm file \S+: (\d+) CONNECT\(s\) answered from it", output)
    assert len(found) == 1, output[-3000:]
    return int(found[0])


def stopped_after_granting(service: ServiceProcess, plugin: Path, warm_file: Path, *devices: tuple[str, str]) -> None:
    """A broker that granted each (user, password) a CONNECT, stopped: the warm file written."""
    broker = started(warm_broker(service, plugin, warm_file))
    for user, password in devices:
        assert connect(broker.port, user, password, f"{user}-client") == "Success"
    output = finish_broker(broker)
    assert f"{len(devices)} grant(s) written" in output, output[-3000:]
    assert warm_file.stat().st_mode & 0o777 == 0o600


def wait_for_log(broker: PluginMosquittoProcess, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in broker.output():
        assert time.monotonic() < deadline, broker.output()[-3000:]
        time.sleep(0.05)


def test_a_restarted_broker_answers_a_known_device_from_the_warm_file(  # type: ignore[no-untyped-def]
    service: ServiceProcess, cregistry_plugin: Path, cregistry, freezer: Freezer, warm_file: Path
) -> None:
    add_user(cregistry, "warm-1", "warm-secret")
    stopped_after_granting(service, cregistry_plugin, warm_file, ("warm-1", "warm-secret"))
    broker = started(warm_broker(service, cregistry_plugin, warm_file))
    try:
        assert "warm start: 1 grant(s)" in broker.output()
        # with cregistry frozen, only the warm entry can answer
        freezer.freeze()
        assert connect(broker.port, "warm-1", "warm-secret", "warm-1-client") == "Success"
        assert connect(broker.port, "warm-1", "warm-secret-", "warm-1-client") != "Success"
        assert connect(broker.port, "warm-1", "warm-secret", "warm-1-other") != "Success"  # per client ID
    finally:
        freezer.thaw()
        output = finish_broker(broker)
    assert answered_from_warm_file(output) == 1


def test_a_user_deleted_or_given_a_new_password_while_the_broker_was_down_is_refused(  # type: ignore[no-untyped-def]
    service: ServiceProcess, cregistry_plugin: Path, cregistry, warm_file: Path
) -> None:
    add_user(cregistry, "gone-1", "gone-secret")
    add_user(cregistry, "moved-1", "old-secret")
    add_user(cregistry, "stays-1", "stays-secret")
    stopped_after_granting(
        service,
        cregistry_plugin,
        warm_file,
        ("gone-1", "gone-secret"),
        ("moved-1", "old-secret"),
        ("stays-1", "stays-secret"),
    )
    assert cregistry("user", "delete", "gone-1").returncode == 0
    result = cregistry("user", "passwd", "moved-1", "--password-stdin", stdin="new-secret\n")
    assert result.returncode == 0, result.stderr
    broker = started(warm_broker(service, cregistry_plugin, warm_file))
    try:
        assert "warm start: 1 grant(s)" in broker.output()  # stays-1's alone survived the replay
        assert connect(broker.port, "gone-1", "gone-secret", "gone-1-client") == "Not authorized"
        assert connect(broker.port, "moved-1", "old-secret", "moved-1-client") == "Not authorized"
        assert connect(broker.port, "moved-1", "new-secret", "moved-1-client") == "Success"
        assert connect(broker.port, "stays-1", "stays-secret", "stays-1-client") == "Success"
    finally:
        output = finish_broker(broker)
    assert answered_from_warm_file(output) == 1  # stays-1 only


def test_with_cregistry_down_at_the_restart_the_warm_file_answers_nothing(  # type: ignore[no-untyped-def]
    service: ServiceProcess, cregistry_plugin: Path, cregistry, freezer: Freezer, warm_file: Path
) -> None:
    add_user(cregistry, "down-1", "down-secret")
    stopped_after_granting(service, cregistry_plugin, warm_file, ("down-1", "down-secret"))
    freezer.freeze()
    broker = warm_broker(service, cregistry_plugin, warm_file)
    try:
        broker.start()
        wait_for_log(broker, "1 grant(s) dropped, a cold start")
        # the feed could not be read up to now: fail closed
        assert connect(broker.port, "down-1", "down-secret", "down-1-client") != "Success"
        freezer.thaw()
        broker.wait_for_feed()
        assert connect(broker.port, "down-1", "down-secret", "down-1-client") == "Success"  # asked, once back
    finally:
        freezer.thaw()
        output = finish_broker(broker)
    assert answered_from_warm_file(output) == 0


def test_a_warm_file_others_may_read_is_not_loaded(  # type: ignore[no-untyped-def]
    service: ServiceProcess, cregistry_plugin: Path, cregistry, freezer: Freezer, warm_file: Path
) -> None:
    add_user(cregistry, "open-1", "open-secret")
    stopped_after_granting(service, cregistry_plugin, warm_file, ("open-1", "open-secret"))
    warm_file.chmod(0o644)
    broker = started(warm_broker(service, cregistry_plugin, warm_file))
    try:
        assert "ignored (mode 0644" in broker.output()
        freezer.freeze()
        assert connect(broker.port, "open-1", "open-secret", "open-1-client") != "Success"
    finally:
        freezer.thaw()
        output = finish_broker(broker)
    assert answered_from_warm_file(output) == 0
