"""Warnings whose rate an attacker sets, logged at most once per interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any


class ThrottledWarning:
    """A warning logged at most once per interval per process: a flood of
    attempts must not turn into a flood of log lines (the attacker sets the
    rate). The lines held back are counted in the next one."""

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logger
        self.message = message
        self.interval = interval
        self.clock = clock
        self.lock = threading.Lock()
        self.last: float | None = None
        self.held_back = 0

    def emit(self, *args: Any) -> None:
        with self.lock:
            now = self.clock()
            if self.last is not None and now - self.last < self.interval:
                self.held_back += 1
                return
            held_back, self.held_back, self.last = self.held_back, 0, now
        self.log.warning(self.message + " (%d more since the last such line)", *args, held_back)
