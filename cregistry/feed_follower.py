"""Each worker process follows the change feed, so that its caches can
answer a broker check without asking Redis.

A thread reads the feed (changes.py) every FOLLOW_INTERVAL and hands every
page to the caches that subscribed, which drop what the page names, or
everything on a reset. `covers(seen)` is true when this process has applied
every change up to the caller's position `seen` and read the feed less than
FRESH_SECONDS ago, its last read having succeeded; `admits(entry)` says
whether data read at a feed entry may be cached. The invariant these keep,
and why it is exact: followed_cache.py.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

import redis

from cregistry.changes import EPOCH_SEPARATOR, ChangeFeed, FeedPage
from cregistry.log_throttle import ThrottledWarning

log = logging.getLogger(__name__)

FOLLOW_INTERVAL = 0.1  # seconds between two reads of the feed
FRESH_SECONDS = 0.5  # a cache answers only while the feed was read this recently

_ENTRY = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)

Subscriber = Callable[[FeedPage], None]


def entry_order(position: str) -> tuple[str, tuple[int, int]] | None:
    """(replication ID, stream entry as numbers) of a position, or None when
    it is not one (the feed's positions are `<entry>~<replid>` or `<entry>`)."""
    entry, _, epoch = position.partition(EPOCH_SEPARATOR)
    match = _ENTRY.fullmatch(entry)
    if match is None:
        return None
    return epoch, (int(match.group(1)), int(match.group(2)))


class FeedFollower:
    def __init__(
        self,
        feed: ChangeFeed,
        *,
        interval: float = FOLLOW_INTERVAL,
        fresh_seconds: float = FRESH_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.feed = feed
        self.interval = interval
        self.fresh_seconds = fresh_seconds
        self.monotonic = monotonic
        # Held while a page is applied and while a cache admits an entry, so
        # that an entry read before a change can never outlive that change.
        self.lock = threading.Lock()
        self.position = ""  # the newest position applied; "" before the first read
        self.confirmed_at = float("-inf")  # when the read that led to `position` was sent
        self.subscribers: list[Subscriber] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, subscriber: Subscriber) -> None:
        with self.lock:
            self.subscribers.append(subscriber)

    def start(self) -> None:
        """Follow in a daemon thread (one per process: call after the fork)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="feed-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def follow_once(self) -> None:
        asked = self.monotonic()
        page = self.feed.read(self.position or None)
        with self.lock:
            for subscriber in self.subscribers:
                subscriber(page)
            self.position = page.position
            self.confirmed_at = asked

    def lapse(self) -> None:
        """Stop the caches answering until the next successful read."""
        with self.lock:
            self.confirmed_at = float("-inf")

    def covers(self, seen: str) -> bool:
        """True when every change up to position `seen` has been applied here,
        and the feed was read less than fresh_seconds ago."""
        if self.monotonic() - self.confirmed_at > self.fresh_seconds:
            return False
        asked, applied = entry_order(seen), entry_order(self.position)
        return asked is not None and applied is not None and asked[0] == applied[0] and asked[1] <= applied[1]

    def admits(self, entry: str) -> bool:
        """Whether data read at feed entry `entry` (a bare entry ID, as a
        snapshot script reads it) is at least as new as what was applied;
        call with `lock` held."""
        read, applied = entry_order(entry), entry_order(self.position)
        return read is not None and applied is not None and read[1] >= applied[1]

    def step(self) -> None:
        """One read of the thread's loop: a failed one stops the caches answering."""
        try:
            self.follow_once()
        except redis.RedisError as error:
            self.lapse()
            _follow_warning.emit(type(error).__name__)
        except Exception:  # noqa: BLE001 - the thread must go on
            self.lapse()
            log.exception("change feed follower failed; retrying")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.interval)


_follow_warning = ThrottledWarning(
    log, "cannot read the change feed (%s); broker checks ask Redis until it answers again"
)
