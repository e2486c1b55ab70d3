"""The device agent (cregistry/device/) with fake time, randomness, HTTP
and MQTT; `cregistry device pairing-id` through CliRunner."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cregistry import errors
from cregistry.cli import cli
from cregistry.cli.device_commands import device as device_group
from cregistry.device import agent, credential_file, logs, rest, tls
from cregistry.device.agent import DeviceAgent, DeviceSettings
from cregistry.device.backoff import Backoff
from cregistry.device.credential_file import CredentialStore
from cregistry.device.credentials import (
    PASSWORD_ENTROPY_BYTES,
    Credentials,
    new_credentials,
    new_password,
    username_for_host,
)
from cregistry.device.mqtt import ACCEPTED, FAILED, REFUSED, ConnectResult
from cregistry.names import USERNAME_RE
from cregistry.passwords import BCRYPT_MAX_BYTES, PasswordPolicy, pairing_id
from cregistry.timestamps import isoformat

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
STRICT_POLICY = PasswordPolicy(min_length=24, require=("lower", "upper", "digit", "symbol"))


@pytest.fixture(autouse=True)
def device_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The agent's events reach caplog; `device run` (which sets up its own
    handler) leaves the logger as it found it."""
    logger = logging.getLogger("cregistry.device")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    caplog.set_level(logging.DEBUG, logger="cregistry.device")
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


# -- usernames ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hostname", "expected_base"),
    [
        ("raspberrypi", "raspberrypi"),
        ("Sensor-17.kitchen.local", "sensor-17"),  # the short host name, lower case
        ("Küche-Pi", "kuche-pi"),  # accents dropped
        ("日本語ホスト", "device"),  # nothing ASCII is left
        ("", "device"),
        (".", "device"),
        ("...lab", "lab"),
        ("--_x", "x"),  # must start with a letter or digit
        ("my host/with+odd#chars%", "my-host-with-odd-chars"),
        ("tab\there\x00nul", "tab-here-nul"),
        ("a", "a"),
    ],
)
def test_username_from_odd_host_names_is_valid(hostname: str, expected_base: str) -> None:
    username = username_for_host(hostname, "0a1b2c3d4e")
    assert username == f"{expected_base}-0a1b2c3d4e"
    assert USERNAME_RE.fullmatch(username)


def test_username_from_a_very_long_host_name_is_cut_to_64_characters() -> None:
    username = username_for_host("x" * 300 + ".example.com", "0a1b2c3d4e")
    assert len(username) == 64
    assert username == "x" * 53 + "-0a1b2c3d4e"
    assert USERNAME_RE.fullmatch(username)
    # A cut that ends on a separator does not leave "--" before the suffix.
    assert username_for_host("y" * 52 + "-zzz", "0a1b2c3d4e") == "y" * 52 + "-0a1b2c3d4e"


def test_new_credentials_differ_on_one_host_and_use_a_given_name() -> None:
    first = new_credentials(None, None, NOW, hostname=lambda: "gateway")
    second = new_credentials(None, None, NOW, hostname=lambda: "gateway")
    assert first.username != second.username
    assert re.fullmatch(r"gateway-[0-9a-f]{10}", first.username)
    assert first.client_id == first.username
    assert first.created == "2027-01-15T08:00:00Z"
    assert first.last_accepted is None

    named = new_credentials("boiler-3", "boiler-client", NOW)
    assert (named.username, named.client_id) == ("boiler-3", "boiler-client")
    with pytest.raises(errors.InvalidInput):
        new_credentials("bad/name", None, NOW)


# -- passwords --------------------------------------------------------------------
def test_passwords_are_long_random_and_within_bcrypts_limit() -> None:
    assert PASSWORD_ENTROPY_BYTES >= 24
    passwords = [new_password() for _ in range(200)]
    assert len(set(passwords)) == 200
    for password in passwords:
        assert len(password) == 43  # 32 bytes in URL-safe base64
        assert password.isascii() and len(password.encode()) <= BCRYPT_MAX_BYTES
        assert STRICT_POLICY.validate(password) == password


def test_password_is_drawn_again_until_every_class_is_present() -> None:
    draws = iter(["a" * 43, "aB3" + "c" * 40, "aB3-" + "c" * 39])
    asked: list[int] = []

    def token(size: int) -> str:
        asked.append(size)
        return next(draws)

    assert new_password(token) == "aB3-" + "c" * 39
    assert asked == [32, 32, 32]


def test_credentials_repr_hides_the_password() -> None:
    credentials = Credentials("sensor-1", "very-secret-password", "sensor-1", "2027-01-15T08:00:00Z")
    assert "very-secret-password" not in repr(credentials)
    assert credentials.pairing_id == pairing_id("sensor-1", "very-secret-password")


# -- the credentials file ---------------------------------------------------------
def _credentials(name: str = "sensor-1", password: str = "password-of-sensor-1") -> Credentials:
    return Credentials(name, password, name, "2027-01-15T08:00:00Z")


def test_credentials_file_is_created_private_and_complete(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask gives 0600
    try:
        store = CredentialStore(tmp_path / "state" / "device.json")
        credentials, created = store.load_or_create(_credentials)
    finally:
        os.umask(old_umask)
    assert created
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert json.loads(store.path.read_text()) == {
        "format": 1,
        "username": "sensor-1",
        "password": "password-of-sensor-1",
        "clientId": "sensor-1",
        "created": "2027-01-15T08:00:00Z",
        "lastAccepted": None,
    }
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["device.json"]  # no temporary files left
    assert store.is_private()


def test_second_store_on_the_same_path_reads_instead_of_overwriting(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    first, created = CredentialStore(path).load_or_create(_credentials)
    second, created_again = CredentialStore(path).load_or_create(lambda: _credentials("other-1", "other-password"))
    assert created and not created_again
    assert second == first
    assert json.loads(path.read_text())["username"] == "sensor-1"


def test_two_agents_racing_on_one_file_end_up_with_the_same_credentials(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    both_made = threading.Barrier(2)
    results: dict[str, tuple[Credentials, bool]] = {}

    def start(name: str) -> None:
        def make() -> Credentials:
            both_made.wait(5)  # both passed the "file exists?" check: only the link decides
            return _credentials(name, f"password-of-{name}")

        results[name] = CredentialStore(path).load_or_create(make)

    threads = [threading.Thread(target=start, args=(name,)) for name in ("racer-a", "racer-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    (a, a_created), (b, b_created) = results["racer-a"], results["racer-b"]
    assert a == b
    assert sorted([a_created, b_created]) == [False, True]
    assert json.loads(path.read_text())["username"] == a.username
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.json"]


def test_acceptance_is_recorded_atomically_and_the_file_stays_private(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "device.json")
    credentials, _ = store.load_or_create(_credentials)
    inode = store.path.stat().st_ino
    updated = store.mark_accepted(credentials, "2027-01-15T08:05:00Z")
    assert updated.last_accepted == "2027-01-15T08:05:00Z" and updated.accepted_before
    assert store.load() == updated
    assert store.path.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.json"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not a valid credentials file"),
        ("[]", "not a JSON object"),
        ('{"format": 1, "username": "x", "password": "password-password"}', "username must be 3 to 64"),
        ('{"format": 1, "username": "sensor-1"}', "password is missing"),
        (
            '{"format": 1, "username": "sensor-1", "password": "password-password", "clientId": 7}',
            "clientId must be a non-empty string",
        ),
        # What the agent never writes: an unknown format, a password a person typed.
        (
            '{"username": "sensor-1", "password": "password-password"}',
            "format must be 1, the one this agent writes, not missing",
        ),
        ('{"format": 2, "username": "sensor-1", "password": "password-password"}', "format must be 1, .* not 2"),
        ('{"format": true, "username": "sensor-1", "password": "password-password"}', "format must be 1, .* not True"),
        ('{"format": "1", "username": "sensor-1", "password": "password-password"}', "format must be 1, .* not '1'"),
        (
            '{"format": 1, "username": "sensor-1", "password": "p"}',
            "the password has 1 character; the agent writes 43 and never fewer than 16",
        ),
    ],
)
def test_invalid_credentials_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "device.json"
    path.write_text(content)
    with pytest.raises(errors.CredentialsFileInvalid, match=message):
        CredentialStore(path).load()
    # ...and never overwritten by a new identity.
    with pytest.raises(errors.CredentialsFileInvalid):
        CredentialStore(path).load_or_create(_credentials)
    assert path.read_text() == content


def test_missing_and_unreadable_credentials_files(tmp_path: Path) -> None:
    with pytest.raises(errors.CredentialsFileMissing, match="no credentials file at"):
        CredentialStore(tmp_path / "absent.json").load()
    (tmp_path / "a-directory.json").mkdir()
    with pytest.raises(errors.CredentialsFileInvalid, match="cannot read the credentials file"):
        CredentialStore(tmp_path / "a-directory.json").load()


def test_an_unwritable_directory_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(credential_file.os, "open", refuse)
    with pytest.raises(errors.CredentialsFileInvalid, match=r"cannot write the credentials file .*: Permission denied"):
        CredentialStore(tmp_path / "device.json").load_or_create(_credentials)


def test_without_hard_links_the_file_is_still_created_exclusively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*_args: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(credential_file.os, "link", no_links)
    store = CredentialStore(tmp_path / "device.json")
    credentials, created = store.load_or_create(_credentials)
    assert created and store.load() == credentials
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.json"]
    assert CredentialStore(store.path).load_or_create(lambda: _credentials("other-1")) == (credentials, False)


# -- backoff --------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(1.0, 60.0, random=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_backoff_jitter_stays_within_bounds_with_a_seeded_random() -> None:
    backoff = Backoff(1.0, 60.0, random=random.Random(20261121).random)
    delays = []
    for _ in range(40):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        delays.append(delay)
    assert len(set(delays)) == 40  # jittered, not a fixed schedule
    assert max(delays[10:]) > 30  # and the cap is reached
    again = Backoff(1.0, 60.0, random=random.Random(20261121).random)
    assert [again.next_delay() for _ in range(40)] == delays


def test_backoff_cap_below_the_initial_delay_and_after_many_attempts() -> None:
    assert Backoff(1.0, 0.5, random=lambda: 1.0).next_delay() == 0.5
    backoff = Backoff(1.0, 60.0, random=lambda: 1.0)
    backoff.attempts = 5000  # years of retries do not overflow
    assert backoff.next_delay() == 60


# -- the REST decision table -----------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "action", "error", "words"),
    [
        (201, {"status": "granted"}, rest.CONNECT, None, "registration granted"),
        (202, {"status": "pending", "pairingId": "3fa2c1"}, rest.POLL, None, "approve sensor-1 (pairing ID 3fa2c1)"),
        (423, {"status": "locked"}, rest.POLL, None, "cregistry unlock"),
        (429, {"status": "limited", "error": "too many"}, rest.POLL, None, "HTTP 429: too many"),
        (503, {"ok": False, "error": "storage unavailable"}, rest.POLL, None, "HTTP 503: storage unavailable"),
        (500, None, rest.POLL, None, "HTTP 500"),
        (403, {"status": "denied"}, rest.STOP, errors.RequestDenied, "denied the registration of sensor-1"),
        (409, {"status": "conflict"}, rest.STOP, errors.UsernameTaken, "cregistry user delete sensor-1"),
        (400, {"ok": False, "error": "password must be at least 50 characters"}, rest.STOP, errors.InvalidInput,
         "refused the registration: password must be at least 50 characters"),
        (404, {"error": "Not Found"}, rest.STOP, errors.RegistrationFailed, "check --register-url"),
    ],
)  # fmt: skip
def test_rest_answers_decide_what_the_device_does(
    status: int, body: Any, action: str, error: type[Exception] | None, words: str
) -> None:
    decision = rest.decide_registration(status, body, "sensor-1", "3fa2c1")
    assert (decision.action, decision.error) == (action, error)
    assert words in decision.message


def test_the_409_message_says_what_the_operator_can_do() -> None:
    message = rest.decide_registration(409, {}, "sensor-1", "3fa2c1").message
    assert message == (
        "the username sensor-1 is taken: it is registered with other credentials. The operator can delete that user"
        " (`cregistry user delete sensor-1`), or start this device with another --username or another credentials"
        " file"
    )


@pytest.mark.parametrize(
    ("given", "endpoint"),
    [
        ("http://cregistry:8080", "http://cregistry:8080/api/client-registry/register"),
        ("https://cregistry.example/", "https://cregistry.example/api/client-registry/register"),
        ("http://h:1/custom/register", "http://h:1/custom/register"),
    ],
)
def test_register_url_is_the_base_or_the_full_route(given: str, endpoint: str) -> None:
    assert rest.register_endpoint(given) == endpoint


@pytest.mark.parametrize("url", ["ftp://h/x", "cregistry:8080", "http://"])
def test_register_url_must_be_http(url: str) -> None:
    with pytest.raises(errors.InvalidInput):
        rest.register_endpoint(url)


# -- the agent, with fakes -----------------------------------------------------------
class FakeSession:
    def __init__(self, broker: FakeBroker, result: ConnectResult) -> None:
        self.broker = broker
        self.result = result
        self.closed = False
        self.lost_reason = ""

    def connect(self) -> ConnectResult:
        return self.result

    def pump(self, timeout: float) -> bool:
        self.broker.clock.advance(max(timeout, 0.05))
        self.broker.pumps += 1
        return self.broker.on_pump()

    def publish(self, topic: str, payload: bytes) -> None:
        self.broker.published.append((topic, json.loads(payload)))

    def close(self) -> None:
        self.closed = True


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeBroker:
    """Answers CONNECTs from a script; `on_pump` says how long a connection lasts."""

    def __init__(self, clock: FakeClock, *results: ConnectResult) -> None:
        self.clock = clock
        self.results = list(results)
        self.connects: list[tuple[str, str, str]] = []
        self.sessions: list[FakeSession] = []
        self.published: list[tuple[str, Any]] = []
        self.pumps = 0
        self.on_pump: Callable[[], bool] = lambda: False

    def session(self, credentials: Credentials, client_id: str) -> FakeSession:
        self.connects.append((credentials.username, credentials.password, client_id))
        session = FakeSession(self, self.results.pop(0) if self.results else ConnectResult(FAILED, "no broker"))
        self.sessions.append(session)
        return session


class Harness:
    """A DeviceAgent on fakes; it stops itself after `max_waits` waits."""

    def __init__(self, tmp_path: Path, *results: ConnectResult, max_waits: int = 20, **settings: Any) -> None:
        self.clock = FakeClock()
        self.broker = FakeBroker(self.clock, *results)
        self.announced: list[str] = []
        self.waits: list[float] = []
        self.http_answers: list[Any] = []
        self.http_calls: list[tuple[str, dict[str, Any]]] = []
        self.max_waits = max_waits
        self.settings = DeviceSettings(host="broker", credentials_path=tmp_path / "device.json", **settings)
        self.agent = DeviceAgent(
            self.settings,
            session_factory=self.broker.session,
            http_post=self.http_post,
            announce=self.announced.append,
            clock=self.clock,
            monotonic=self.clock,
            sleep=self.sleep,
            random=random.Random(5).random,
            hostname=lambda: "testhost",
        )

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)
        if len(self.waits) >= self.max_waits:
            self.agent.stop()

    def http_post(self, url: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.http_calls.append((url, body))
        answer = self.http_answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def stored(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.settings.credentials_path.read_text())
        return data


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.fields["event"] for record in caplog.records if hasattr(record, "fields")]


def test_mqtt_first_start_announces_then_retries_until_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refused = ConnectResult(REFUSED, "Not authorized")
    harness = Harness(tmp_path, refused, ConnectResult(FAILED, "ConnectionRefusedError"), refused,
                      ConnectResult(ACCEPTED, "Success"), max_backoff=8.0)  # fmt: skip
    harness.broker.on_pump = lambda: (harness.agent.stop(), True)[1]  # stop once connected
    harness.agent.run()

    stored = harness.stored()
    username, password = stored["username"], stored["password"]
    assert re.fullmatch(r"testhost-[0-9a-f]{10}", username)
    [block] = harness.announced
    assert f"  username:   {username}\n" in block
    assert f"  pairing ID: {pairing_id(username, password)}\n" in block
    assert f"cregistry approve {username} --pairing-id {pairing_id(username, password)}" in block
    assert harness.broker.connects == [(username, password, username)] * 4
    assert len(harness.waits) == 3 and all(0 <= w <= c for w, c in zip(harness.waits, [1, 2, 4], strict=True))
    assert stored["lastAccepted"] == isoformat(NOW + sum(harness.waits))  # accepted after the three waits
    assert [e for e in events(caplog) if e != "retry"] == [
        "credentials-created", "not-accepted-yet", "connect-failed", "not-accepted-yet", "connected", "stopped",
    ]  # fmt: skip
    assert harness.broker.sessions[-1].closed
    assert all(password not in record.getMessage() for record in caplog.records)
    assert all(password not in json.dumps(getattr(r, "fields", {})) for r in caplog.records)


def test_later_start_reuses_the_file_and_does_not_announce_again(tmp_path: Path) -> None:
    first = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"))
    first.broker.on_pump = lambda: (first.agent.stop(), True)[1]
    first.agent.run()
    stored = first.stored()

    again = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), register_url="http://cregistry:8080")
    again.broker.on_pump = lambda: (again.agent.stop(), True)[1]
    again.agent.run()
    assert again.announced == []  # accepted before: nothing for the operator to do
    assert again.http_calls == []  # and no registration again
    assert again.broker.connects == [(stored["username"], stored["password"], stored["clientId"])]
    assert again.stored()["username"] == stored["username"]


def test_refused_after_being_accepted_warns_and_never_registers_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CredentialStore(tmp_path / "device.json")
    credentials, _ = store.load_or_create(_credentials)
    store.mark_accepted(credentials, "2027-01-10T12:00:00Z")
    refused = ConnectResult(REFUSED, "Not authorized")
    harness = Harness(tmp_path, refused, refused, refused, max_waits=3, register_url="http://cregistry:8080")
    harness.agent.run()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    pairing = pairing_id("sensor-1", "password-of-sensor-1")
    assert warnings[0] == (
        "the broker refused credentials that were accepted before (Not authorized; last accepted"
        " 2027-01-10T12:00:00Z): the user sensor-1 may have been deleted or its password changed. Ask the operator"
        " to check `cregistry user show sensor-1`; to let this device in again, unlock and approve sensor-1 with"
        f" pairing ID {pairing} again. The device keeps its credentials"
    )
    assert harness.http_calls == [] and harness.announced == []
    assert harness.stored()["password"] == "password-of-sensor-1"  # the file is kept as it was
    assert harness.stored()["lastAccepted"] == "2027-01-10T12:00:00Z"


def test_refused_after_being_accepted_can_exit_instead(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "device.json")
    store.mark_accepted(store.load_or_create(_credentials)[0], "2027-01-10T12:00:00Z")
    harness = Harness(tmp_path, ConnectResult(REFUSED, "Bad user name or password"), exit_on_refusal=True)
    with pytest.raises(errors.CredentialsRefused, match="accepted before"):
        harness.agent.run()
    assert harness.waits == []


def test_rest_registration_polls_then_connects(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(tmp_path, ConnectResult(ACCEPTED, "Success"), register_url="http://cregistry:8080")
    harness.http_answers = [
        OSError("Connection refused"), (423, {"status": "locked"}), (423, {"status": "locked"}),
        (503, {"error": "storage unavailable; try again"}), (202, {"status": "pending"}),
        (202, {"status": "pending"}), (201, {"status": "granted"}),
    ]  # fmt: skip
    harness.broker.on_pump = lambda: (harness.agent.stop(), True)[1]
    harness.agent.run()

    stored = harness.stored()
    url = "http://cregistry:8080/api/client-registry/register"
    body = {"username": stored["username"], "password": stored["password"], "clientId": stored["clientId"]}
    assert harness.http_calls == [(url, body)] * 7
    assert len(harness.announced) == 1 and "registers over REST" in harness.announced[0]
    waiting = [r.fields["status"] for r in caplog.records if r.fields["event"] == "registration-waiting"]
    assert waiting == [0, 423, 503, 202]  # logged when the answer changes, not on every poll
    assert events(caplog)[-3:] == ["registration-granted", "connected", "stopped"]
    # the backoff starts again whenever the state changes
    assert harness.waits[3] <= 1.0 and harness.waits[4] <= 1.0


@pytest.mark.parametrize(
    ("status", "error"), [(403, errors.RequestDenied), (409, errors.UsernameTaken), (400, errors.InvalidInput)]
)
def test_rest_registration_stops_on_a_final_answer(tmp_path: Path, status: int, error: type[Exception]) -> None:
    harness = Harness(tmp_path, register_url="http://cregistry:8080")
    harness.http_answers = [(423, {}), (status, {"ok": False, "error": "password too short"})]
    with pytest.raises(error):
        harness.agent.run()
    assert harness.broker.connects == []


def test_stop_during_rest_polling_returns_cleanly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(tmp_path, max_waits=3, register_url="http://cregistry:8080")
    harness.http_answers = [(423, {})] * 3
    harness.agent.run()
    assert harness.broker.connects == []
    assert events(caplog)[-1] == "stopped"


def test_publishes_small_json_at_the_interval_and_reconnects(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    accepted = ConnectResult(ACCEPTED, "Success")
    harness = Harness(
        tmp_path, accepted, accepted, username="pump-7", publish_topic="devices/%u/%c/beat", publish_interval=1.0
    )

    def on_pump() -> bool:  # each pump is 0.2 s of fake time
        if harness.broker.pumps == 12:
            return False  # the broker goes away once
        if harness.broker.pumps == 30:
            harness.agent.stop()
        return True

    harness.broker.on_pump = on_pump
    harness.agent.run()

    topics = {topic for topic, _ in harness.broker.published}
    assert topics == {"devices/pump-7/pump-7/beat"}
    seqs = [message["seq"] for _, message in harness.broker.published]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 5  # numbering goes on after a reconnect
    assert all(set(message) == {"seq", "time"} for _, message in harness.broker.published)
    assert events(caplog).count("connected") == 2 and "connection-lost" in events(caplog)


def test_username_given_for_a_file_of_another_device_is_refused(tmp_path: Path) -> None:
    CredentialStore(tmp_path / "device.json").load_or_create(_credentials)
    harness = Harness(tmp_path, username="sensor-2")
    with pytest.raises(errors.CredentialsFileInvalid, match="holds the credentials of sensor-1, not sensor-2"):
        harness.agent.run()


# -- log formats ------------------------------------------------------------------
def _record(message: str, **fields: Any) -> logging.LogRecord:
    record = logging.LogRecord("cregistry.device", logging.INFO, __file__, 1, message, None, None)
    record.created = NOW
    record.fields = fields
    return record


def test_text_log_lines_read_like_a_sentence() -> None:
    line = logs.TextLogFormatter().format(_record("connected as sensor-1 to broker:1883", event="connected"))
    assert line == "2027-01-15T08:00:00Z INFO connected as sensor-1 to broker:1883"


def test_json_log_lines_carry_the_fields() -> None:
    line = logs.JsonLogFormatter().format(_record("connected as sensor-1", event="connected", username="sensor-1"))
    assert json.loads(line) == {
        "time": "2027-01-15T08:00:00Z",
        "level": "INFO",
        "message": "connected as sensor-1",
        "event": "connected",
        "username": "sensor-1",
    }


# -- the commands -------------------------------------------------------------------
def test_pairing_id_command(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    CredentialStore(path).load_or_create(_credentials)
    expected = pairing_id("sensor-1", "password-of-sensor-1")
    runner = CliRunner()

    result = runner.invoke(device_group, ["pairing-id", "--credentials", str(path)])
    assert (result.exit_code, result.output) == (0, f"{expected}\n")
    result = runner.invoke(device_group, ["pairing-id", "--credentials", str(path), "--json"])
    assert (result.exit_code, json.loads(result.output)) == (0, {"username": "sensor-1", "pairingId": expected})
    result = runner.invoke(cli, ["--json", "device", "pairing-id", "--credentials", str(path)])
    assert (result.exit_code, json.loads(result.output)) == (0, {"username": "sensor-1", "pairingId": expected})


def test_pairing_id_warns_about_a_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    CredentialStore(path).load_or_create(_credentials)
    path.chmod(0o644)
    result = CliRunner().invoke(device_group, ["pairing-id", "--credentials", str(path)])
    assert (result.exit_code, result.stdout) == (0, f"{pairing_id('sensor-1', 'password-of-sensor-1')}\n")
    assert result.stderr == f"Warning: {path} is readable by other users: chmod 600 {path}\n"
    path.chmod(0o600)
    assert CliRunner().invoke(device_group, ["pairing-id", "--credentials", str(path)]).stderr == ""


def test_pairing_id_refuses_a_password_the_agent_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    path.write_text('{"format": 1, "username": "sensor-1", "password": "p"}')
    path.chmod(0o600)
    result = CliRunner().invoke(device_group, ["pairing-id", "--credentials", str(path)])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"Error: {path} is not a valid credentials file (the password has 1 character; the agent writes 43"
        " and never fewer than 16); fix it or use another --credentials file\n"
    )


def test_pairing_id_command_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(device_group, ["pairing-id", "--credentials", str(tmp_path / "absent.json")])
    assert (result.exit_code, result.output) == (3, f"Error: no credentials file at {tmp_path / 'absent.json'}\n")
    (tmp_path / "broken.json").write_text("{")
    result = runner.invoke(device_group, ["pairing-id", "--credentials", str(tmp_path / "broken.json")])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {tmp_path / 'broken.json'} is not a valid credentials file")
    assert result.output.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--username", "bad/name"], "username must be 3 to 64"),
        (["--publish", "devices/#"], "without + or #"),
        (["--register-url", "cregistry:8080"], "http:// or https://"),
        (["--key-file", __file__], "--key-file needs --cert-file"),
    ],
)
def test_run_refuses_bad_options(tmp_path: Path, args: list[str], words: str) -> None:
    result = CliRunner().invoke(
        device_group, ["run", "--host", "broker", "--credentials", str(tmp_path / "d.json"), *args]
    )
    assert result.exit_code == 2
    assert words in result.output
    assert not (tmp_path / "d.json").exists()


def test_run_exits_with_the_code_of_a_final_rest_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "http_post_json", lambda _context: lambda _url, _body: (409, {"status": "conflict"}))
    result = CliRunner().invoke(
        device_group,
        ["run", "--host", "broker", "--credentials", str(tmp_path / "d.json"), "--register-url", "http://c:8080",
         "--username", "taken-1"],
    )  # fmt: skip
    assert result.exit_code == 4  # EXIT_CONFLICT, as for `cregistry approve`
    assert "Error: the username taken-1 is taken" in result.output


def test_tls_context_verifies_unless_told_not_to() -> None:
    assert tls.TlsSettings().context().verify_mode == ssl.CERT_REQUIRED
    assert tls.TlsSettings().context().check_hostname
    insecure = tls.TlsSettings(insecure=True).context()
    assert (insecure.verify_mode, insecure.check_hostname) == (ssl.CERT_NONE, False)


def test_run_refuses_an_unusable_ca_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    result = CliRunner().invoke(
        device_group,
        ["run", "--host", "broker", "--credentials", str(tmp_path / "d.json"), "--ca-file", str(tmp_path / "ca.pem")],
    )
    assert result.exit_code == 2
    assert result.output.startswith("Error: cannot set up TLS: ")
    assert not (tmp_path / "d.json").exists()
