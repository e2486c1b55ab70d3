"""Work that must answer within a deadline, whatever Redis does.

go-auth gives up after its http_timeout (2 s in mosquitto/); answering 503
before that lets it report an error instead of a timeout. Socket timeouts
alone cannot promise this: a check makes several round trips. The broker
listener enforces the deadline on the check routes itself (broker_asgi.py,
with start_in_time and too_late); within_deadline is for the Flask views
that ask Redis (health, the change feed).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app

from cregistry.budget import SERVICE_DEADLINE_SECONDS
from cregistry.errors import StorageUnavailable

T = TypeVar("T")
DEADLINE_SECONDS = SERVICE_DEADLINE_SECONDS  # budget.py: shorter than the plugin's timeout


def within_deadline(work: Callable[..., T], *args: Any) -> T:
    """run_within on the app's thread pool."""
    return run_within(current_app.extensions["cregistry"].checks, work, *args)


def run_within(pool: concurrent.futures.Executor, work: Callable[..., T], *args: Any) -> T:
    """Run `work` on `pool`; StorageUnavailable past the deadline, counted from now.

    Work that waited in the queue past its deadline is not started at all: it
    was answered 503 already and could only record what nobody waits for. Work
    that started in time may finish late; its writes are atomic, and it never
    grants anything.
    """
    deadline = time.monotonic() + DEADLINE_SECONDS
    future = pool.submit(start_in_time, deadline, work, *args)
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise too_late() from None


def start_in_time(deadline: float, work: Callable[..., T], *args: Any) -> T:
    """`work`, unless the deadline (time.monotonic()) passed while it waited."""
    if time.monotonic() > deadline:
        raise StorageUnavailable("the work did not start in time")
    return work(*args)


def too_late() -> StorageUnavailable:
    return StorageUnavailable(f"no answer within {DEADLINE_SECONDS} s (Redis slow?)")
