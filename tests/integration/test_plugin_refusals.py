"""The plugin's short memory of refused CONNECTs (mosquitto/plugin/refusals.h)
in a real mosquitto in front of the real `cregistry serve`: a flood of one
wrong password for a known user costs cregistry one check per window, and the
user's change-feed entry ends the window (the first CONNECT after the change
is asked again, within the 2 s of SPEC §11)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import mqtt
from harness.mosquitto import MosquittoProcess
from harness.service import ServiceProcess, http

from .conftest import ADMIN_TOKEN, finish_broker, start_plugin_broker

pytestmark = pytest.mark.broker

CHANGE_BOUND = 2.0  # SPEC §11: every change reaches every broker within 2 s
FLOOD = 20
NOT_AUTHORISED = 5  # MQTT 3.1.1 CONNACK return code


def add_user(cregistry, name: str, password: str) -> None:  # type: ignore[no-untyped-def]
    result = cregistry("user", "add", name, "--password-stdin", stdin=f"{password}\n")
    assert result.returncode == 0, result.stderr


def metric(service: ServiceProcess, name: str, **labels: str) -> float:
    """The sum of a counter's samples with these labels, from /metrics."""
    total = 0.0
    for line in http("GET", f"{service.broker}/metrics").body.decode().splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.startswith(name + "{") and all(f'{key}="{want}"' in sample for key, want in labels.items()):
            total += float(value)
    return total


def user_checks_refused(service: ServiceProcess) -> tuple[float, float]:
    """CONNECT checks cregistry refused, and the bcrypt checks that refused a known user's password."""
    return (
        metric(service, "cregistry_checks_total", route="user", result="deny"),
        metric(service, "cregistry_password_checks_total", path="bcrypt", result="refused"),
    )


def connack(port: int, username: str, password: str, client_id: str) -> int | None:
    answer, _seconds = mqtt.raw_connect(port, username, password, client_id)
    return answer[3] if len(answer) == 4 else None


@pytest.fixture(params=[{}, {"delayed_auth": "0"}], ids=["default", "synchronous"])
def flooded(
    request: pytest.FixtureRequest, service: ServiceProcess, cregistry_plugin: Path
) -> Iterator[MosquittoProcess]:
    """A broker with the plugin's defaults (2.1: delayed basic auth, the refusal
    remembered when the delayed check completes), and one checking synchronously
    (2.0 has no delayed auth and checks synchronously either way)."""
    broker = start_plugin_broker(service, cregistry_plugin, plugin_options=request.param)
    yield broker
    finish_broker(broker)


def test_a_flood_of_one_wrong_password_costs_cregistry_one_check(  # type: ignore[no-untyped-def]
    flooded: MosquittoProcess, cregistry, service: ServiceProcess
) -> None:
    mosquitto = flooded
    add_user(cregistry, "meter-9", "meter-secret")
    time.sleep(1.2)  # the user's feed entry reaches the broker first (it would end the window)
    before = user_checks_refused(service)
    started = time.monotonic()
    answers = [connack(mosquitto.port, "meter-9", "guessed-wrong", "meter-9-client") for _ in range(FLOOD)]
    seconds = time.monotonic() - started
    after = user_checks_refused(service)
    assert answers == [NOT_AUTHORISED] * FLOOD
    asked, hashed = after[0] - before[0], after[1] - before[1]
    print(f"{FLOOD} identical wrong-password CONNECTs in {seconds:.3f} s: {asked:.0f} checks, {hashed:.0f} bcrypt")
    # one per window of refusal_cache_seconds (5 s); a slow machine may cross one window
    assert 1 <= asked <= 2, (before, after)
    assert hashed <= asked
    # other credentials are asked as ever: the right password gets in at once
    assert connack(mosquitto.port, "meter-9", "meter-secret", "meter-9-client") == 0
    assert connack(mosquitto.port, "meter-9", "guessed-wrong-2", "meter-9-client") == NOT_AUTHORISED
    assert user_checks_refused(service)[0] - after[0] == 1


def test_the_once_refused_password_gets_in_within_2_s_after_the_operator_sets_it(  # type: ignore[no-untyped-def]
    mosquitto: MosquittoProcess, cregistry, service: ServiceProcess
) -> None:
    add_user(cregistry, "meter-10", "meter-secret")
    time.sleep(1.2)
    assert connack(mosquitto.port, "meter-10", "the-new-secret", "meter-10-client") == NOT_AUTHORISED
    before = user_checks_refused(service)[0]
    assert connack(mosquitto.port, "meter-10", "the-new-secret", "meter-10-client") == NOT_AUTHORISED
    assert user_checks_refused(service)[0] == before  # remembered: not asked again
    answer = http(
        "PUT",
        f"{service.api}/api/users/meter-10/password",
        json_body={"password": "the-new-secret"},
        token=ADMIN_TOKEN,
    )
    changed = time.monotonic()
    assert answer.status == 200, answer.body
    while connack(mosquitto.port, "meter-10", "the-new-secret", "meter-10-client") != 0:
        assert time.monotonic() - changed < CHANGE_BOUND, "the remembered refusal outlived the password change"
        time.sleep(0.05)
    print(f"the once-refused password got in {time.monotonic() - changed:.3f} s after the change")


def test_guessing_a_connected_devices_password_costs_no_bcrypt(  # type: ignore[no-untyped-def]
    flooded: MosquittoProcess, cregistry, service: ServiceProcess
) -> None:
    """Once the device's password passed bcrypt, its verified token proves
    that password: other guesses (each one new, so the plugin's memory of
    refusals never answers them) are refused with a Redis read and no bcrypt,
    and the device keeps connecting."""
    mosquitto = flooded
    add_user(cregistry, "meter-11", "meter-secret")
    time.sleep(1.2)
    assert connack(mosquitto.port, "meter-11", "meter-secret", "meter-11-client") == 0  # bcrypt, then the token
    before = user_checks_refused(service)
    by_token = metric(service, "cregistry_password_checks_total", path="token", result="refused")
    answers = [connack(mosquitto.port, "meter-11", f"guess-{n}", f"guesser-{n}") for n in range(FLOOD)]
    after = user_checks_refused(service)
    assert answers == [NOT_AUTHORISED] * FLOOD
    assert after[0] - before[0] == FLOOD  # every guess reached cregistry
    assert after[1] == before[1]  # and none of them cost bcrypt
    assert metric(service, "cregistry_password_checks_total", path="token", result="refused") - by_token == FLOOD
    assert connack(mosquitto.port, "meter-11", "meter-secret", "meter-11-client") == 0
