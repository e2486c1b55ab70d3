"""A user's last successful CONNECT (docs/last-connect.md): bookkeeping the
CONNECT checks (authorizer.py) leave behind them, never a decision."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import redis

from cregistry.log_throttle import ThrottledWarning
from cregistry.users import UserStore

log = logging.getLogger(__name__)

# A user's last successful CONNECT is written at most this often.
LAST_CONNECT_INTERVAL = 60.0
# The bookkeeping write runs only if the check itself took less than this:
# with the default 0.5 s Redis timeout, its two round trips then end within
# the service's deadline (budget.py) even when Redis stalls right now.
LAST_CONNECT_BUDGET = 0.25
LAST_CONNECT_REMEMBERED = 100_000  # users per process whose last write is remembered
LAST_CONNECT_QUEUE = 10_000  # writes waiting for the background writer; more are dropped


class LastConnectRecorder:
    """Records a user's last successful CONNECT (time, client id) without
    slowing the connect path: this process skips Redis entirely for a user
    it wrote less than a minute ago with the same client id, and the write
    itself (record_connect) skips users another process wrote meanwhile.

    Bookkeeping never decides anything: if Redis fails here, the check that
    succeeded stays a success and the time is written on a later connect.
    """

    def __init__(
        self,
        users: UserStore,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = users
        self.clock = clock
        self.monotonic = monotonic
        self.lock = threading.Lock()
        self.skip_until: dict[str, tuple[float, str]] = {}  # username -> (monotonic time, client id)
        self.pending: queue.Queue[tuple[str, str, float]] = queue.Queue(LAST_CONNECT_QUEUE)
        self.writer: threading.Thread | None = None

    def record(self, username: str, client_id: str, started: float) -> None:
        now = self.monotonic()
        if now - started > LAST_CONNECT_BUDGET or not self._due(username, client_id, now):
            return
        self._write(username, client_id, self.clock())

    def record_later(self, username: str, client_id: str) -> None:
        """As record(), with the write left to a background thread: for
        answers given without any Redis round trip (followed_cache.py)."""
        if not self._due(username, client_id, self.monotonic()):
            return
        with self.lock:
            if self.writer is None:
                self.writer = threading.Thread(target=self._write_pending, name="last-connect", daemon=True)
                self.writer.start()
        try:
            self.pending.put_nowait((username, client_id, self.clock()))
        except queue.Full:
            _last_connect_warning.emit("too many waiting")

    def _due(self, username: str, client_id: str, now: float) -> bool:
        with self.lock:
            until, written_client_id = self.skip_until.get(username, (0.0, ""))
            if now < until and written_client_id == client_id:
                return False
            if len(self.skip_until) >= LAST_CONNECT_REMEMBERED:
                self.skip_until = {u: v for u, v in self.skip_until.items() if v[0] > now}
                if len(self.skip_until) >= LAST_CONNECT_REMEMBERED:
                    self.skip_until.clear()
            self.skip_until[username] = (now + LAST_CONNECT_INTERVAL, client_id)
            return True

    def _write(self, username: str, client_id: str, when: float) -> None:
        try:
            self.users.record_connect(username, client_id, when, LAST_CONNECT_INTERVAL)
        except redis.RedisError as error:
            _last_connect_warning.emit(type(error).__name__)

    def _write_pending(self) -> None:
        while True:
            self._write(*self.pending.get())


_last_connect_warning = ThrottledWarning(log, "cannot record a last connect (%s); the connect itself succeeded")
