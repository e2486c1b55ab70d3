"""The plugin's change-feed client (docs/change-feed.md) in a real mosquitto,
against a scripted stand-in for cregistry's broker routes: which answers
drop what, who is kicked, and that a slow feed never holds up the broker.
(The real /mqtt/changes route is exercised by the broker tests.)"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.mosquitto import PluginMosquittoProcess
from harness.mqtt import MqttClient, RawSession
from tests.integration.conftest import finish_broker

pytestmark = pytest.mark.broker

# A change reaches every broker within 2 s.
FEED_BOUND = 2.0


class ScriptedService:
    """/mqtt/user allows password "good"; /mqtt/acl allows all; /mqtt/changes
    answers from a script: queued change lists, a status, or a held request."""

    def __init__(self) -> None:
        self.user_checks: list[tuple[str, str]] = []
        self.feed_afters: list[str] = []
        self.changes: queue.Queue[list[dict[str, Any]]] = queue.Queue()
        self.reset_next = False
        self.feed_status = 200
        self.hold = threading.Event()  # set: feed requests wait for release
        self.holding = threading.Event()
        self.release = threading.Event()
        self.release_by = ""  # a CONNECT check for this user releases held feed requests
        self.position = 1
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/mqtt/user":
                    with service.lock:
                        service.user_checks.append((body["username"], body["clientid"]))
                    if body["username"] == service.release_by:
                        service.release.set()
                    allowed = body["password"] == "good"
                    self.answer(200 if allowed else 403, {"ok": allowed, "error": ""})
                else:
                    self.answer(200, {"ok": True, "error": ""})

            def do_GET(self) -> None:  # noqa: N802
                after = self.path.partition("after=")[2]
                with service.lock:
                    service.feed_afters.append(after)
                if service.hold.is_set():
                    service.holding.set()
                    service.release.wait(10)
                if service.feed_status != 200:
                    self.answer(service.feed_status, {"ok": False, "error": "redis down"})
                    return
                with service.lock:
                    reset = after == "" or service.reset_next
                    service.reset_next = False
                    try:
                        changes = [] if reset else service.changes.get_nowait()
                        service.position += 0 if reset else 1
                    except queue.Empty:
                        changes = []
                    position = f"{service.position}-0"
                self.answer(200, {"ok": True, "position": position, "reset": reset, "changes": changes})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def checks_of(self, user: str) -> int:
        with self.lock:
            return sum(1 for name, _ in self.user_checks if name == user)

    def polls(self) -> int:
        with self.lock:
            return len(self.feed_afters)

    def wait_polls(self, count: int = 2) -> None:
        """Until the plugin has read at least `count` more answers."""
        target = self.polls() + count
        deadline = time.monotonic() + 10
        while self.polls() < target:
            assert time.monotonic() < deadline, "the plugin stopped polling the feed"
            time.sleep(0.05)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[ScriptedService]:
    service = ScriptedService()
    yield service
    service.close()


@pytest.fixture
def broker(scripted: ScriptedService, cregistry_plugin: Path) -> Iterator[PluginMosquittoProcess]:
    process = PluginMosquittoProcess(scripted.port, cregistry_plugin, plugin_options={"stats_interval": "1"})
    process.start()
    scripted.wait_polls(2)  # the first answer (reset) is in
    yield process
    assert "cregistry_auth" in finish_broker(process)


def connect_once(broker: PluginMosquittoProcess, user: str, client_id: str) -> int | None:
    session = RawSession(broker.port, user, "good", client_id)
    session.close()
    return session.connack


def test_kick_disconnects_the_user_and_drops_its_cached_connect(broker, scripted) -> None:  # type: ignore[no-untyped-def]
    alice = RawSession(broker.port, "alice", "good", "alice-1")
    bob = RawSession(broker.port, "bob", "good", "bob-1")
    assert (alice.connack, bob.connack) == (0, 0)
    assert connect_once(broker, "alice", "alice-2") == 0
    assert connect_once(broker, "alice", "alice-2") == 0
    assert scripted.checks_of("alice") == 2  # alice-1 and alice-2, the second alice-2 from the cache

    scripted.changes.put([{"user": "alice", "kick": True}])
    assert alice.closed_within(FEED_BOUND)
    assert not bob.closed_within(0.5)
    assert connect_once(broker, "alice", "alice-2") == 0
    assert scripted.checks_of("alice") == 3  # asked again: the cached grant was dropped
    alice.close()
    bob.close()


def test_kick_reaches_an_idle_broker(broker, scripted) -> None:  # type: ignore[no-untyped-def]
    """Mosquitto 2.1 ticks a plugin only as the plugin asks, and forgets the
    asked time when anything else wakes its loop first: on a broker where
    nothing happens for seconds (one connected client, then silence), a kick
    still arrives within the bound, and again after a PINGREQ-like wakeup."""
    alice = RawSession(broker.port, "alice", "good", "alice-idle")
    assert alice.connack == 0
    for _ in range(2):
        time.sleep(3)  # idle: no client traffic, only the broker's own timers
        scripted.wait_polls(2)  # the plugin still polls: it is still ticked
    other = RawSession(broker.port, "bob", "good", "bob-idle")  # a foreign wakeup of the loop
    assert other.connack == 0
    time.sleep(2)
    sent = time.monotonic()
    scripted.changes.put([{"user": "alice", "kick": True}])
    assert alice.closed_within(FEED_BOUND)
    print(f"kick latency on an idle broker: {time.monotonic() - sent:.3f} s")
    assert not other.closed_within(0.2)
    alice.close()
    other.close()


def test_user_change_drops_only_that_user_and_all_drops_everyone(broker, scripted) -> None:  # type: ignore[no-untyped-def]
    for user in ("carol", "dave"):
        assert connect_once(broker, user, f"{user}-1") == 0
        assert connect_once(broker, user, f"{user}-1") == 0
    assert (scripted.checks_of("carol"), scripted.checks_of("dave")) == (1, 1)
    carol = RawSession(broker.port, "carol", "good", "carol-live")

    scripted.changes.put([{"user": "carol", "kick": False}, {"future": "ignored"}])
    scripted.wait_polls()
    assert connect_once(broker, "carol", "carol-1") == 0
    assert connect_once(broker, "dave", "dave-1") == 0
    assert (scripted.checks_of("carol"), scripted.checks_of("dave")) == (3, 1)
    assert not carol.closed_within(0.5)  # no kick

    scripted.changes.put([{"all": True}])
    scripted.wait_polls()
    assert connect_once(broker, "carol", "carol-1") == 0
    assert connect_once(broker, "dave", "dave-1") == 0
    assert (scripted.checks_of("carol"), scripted.checks_of("dave")) == (4, 2)
    assert not carol.closed_within(0.5)
    carol.close()


def test_reset_drops_everything_and_continues_from_the_new_position(broker, scripted) -> None:  # type: ignore[no-untyped-def]
    assert connect_once(broker, "erin", "erin-1") == 0
    scripted.changes.put([{"user": "nobody", "kick": False}])
    scripted.wait_polls()
    with scripted.lock:
        scripted.reset_next = True
        scripted.position = 40
    scripted.wait_polls()
    assert connect_once(broker, "erin", "erin-1") == 0
    assert scripted.checks_of("erin") == 2
    scripted.wait_polls()
    assert scripted.feed_afters[-1] == "40-0"


def test_failing_feed_keeps_position_and_cache(broker, scripted) -> None:  # type: ignore[no-untyped-def]
    assert connect_once(broker, "frank", "frank-1") == 0
    scripted.wait_polls()
    position = scripted.feed_afters[-1]
    scripted.feed_status = 503
    scripted.wait_polls(3)
    assert set(scripted.feed_afters[-3:]) == {position}
    assert connect_once(broker, "frank", "frank-1") == 0
    assert scripted.checks_of("frank") == 1
    scripted.feed_status = 200
    scripted.changes.put([{"user": "frank", "kick": False}])
    scripted.wait_polls()
    assert connect_once(broker, "frank", "frank-1") == 0
    assert scripted.checks_of("frank") == 2
    assert "change feed failing (HTTP 503)" in broker.output()


def test_a_held_feed_request_does_not_hold_up_the_broker(broker, scripted) -> None:  # type: ignore[no-untyped-def]
    """The feed request is held until the service sees a CONNECT check for
    "hank". A feed read that blocked the broker would keep that CONNECT waiting
    until the plugin gave up on the feed (a timeout in the log); read without
    blocking, the CONNECT is checked meanwhile and the held request then
    answers normally."""
    sub = MqttClient(broker.port, "gina", "good", "gina-sub")
    pub = MqttClient(broker.port, "gina", "good", "gina-pub")
    try:
        assert sub.connect() == "Success" and pub.connect() == "Success"
        assert sub.subscribe("g/#") == 1
        scripted.release.clear()
        scripted.release_by = "hank"
        scripted.hold.set()
        assert scripted.holding.wait(5)  # the plugin's feed request now waits on the service
        pub.publish("g/1", b"while the feed waits")
        assert sub.receive(5) == ("g/1", b"while the feed waits")
        assert connect_once(broker, "hank", "hank-1") == 0
        assert scripted.release.is_set()
        scripted.hold.clear()
        scripted.wait_polls()
        assert "change feed failing" not in broker.output()
    finally:
        scripted.hold.clear()
        scripted.release.set()
        sub.close()
        pub.close()


def test_reload_drops_the_cache_and_counters_are_published(broker, scripted) -> None:  # type: ignore[no-untyped-def]
    assert connect_once(broker, "ivy", "ivy-1") == 0
    assert connect_once(broker, "ivy", "ivy-1") == 0
    assert broker.process is not None
    broker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload: dropped the whole cache" not in broker.output():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert connect_once(broker, "ivy", "ivy-1") == 0
    assert scripted.checks_of("ivy") == 2

    watcher = MqttClient(broker.port, "ivy", "good", "ivy-watch")
    try:
        assert watcher.connect() == "Success"
        assert watcher.subscribe("$SYS/broker/cregistry/#", qos=0) == 0
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 5  # published every second (stats_interval 1): retained, then fresh

        def counted() -> bool:
            # one round of publishes arrives over several reads: wait for every figure
            return len(seen) == 13 and seen["cache/hits"] >= 1 and seen["cache/misses"] >= 2 and seen["feed/polls"] >= 2

        while not counted() and time.monotonic() < deadline:
            message = watcher.receive(0.5)
            if message is not None:
                seen[message[0].removeprefix("$SYS/broker/cregistry/")] = int(message[1])
        assert set(seen) == {
            "cache/hits",
            "cache/misses",
            "cache/entries",
            "cache/evictions",
            "http/errors",
            "http/fast_fails",
            "kicks",
            "feed/polls",
            "feed/errors",
            "feed/lag_ms",
            "ticks",
            "delayed",
            "refusals/hits",
        }
        assert seen["cache/hits"] >= 1 and seen["cache/misses"] >= 2 and seen["feed/polls"] >= 2
    finally:
        watcher.close()
