"""What the domain reports for monitoring, without knowing who listens.

web/metrics.py installs a listener that turns these events into Prometheus
metrics; without one (the CLI, most tests) they cost a function call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# How a known user's password check was decided (verification.py).
PASSWORD_TOKEN = "token"  # matched the verified token: no bcrypt
PASSWORD_BCRYPT = "bcrypt"
PASSWORD_LIMITED = "limited"  # refused by the guessing limit: no bcrypt


class Listener:
    """Receives the events; this base ignores them."""

    def password_checked(self, path: str, accepted: bool) -> None:
        """A known user's password was checked along `path` (PASSWORD_*)."""

    def bcrypt_waiting(self, delta: int) -> None:
        """A password check started (+1) or stopped (-1) waiting for a bcrypt slot."""

    def enrollment_registration(self, enrollment: str, result: str) -> None:
        """A registration with an enrollment token ended (enrollments.py); `enrollment` is "" for an unknown token."""


_listener = Listener()


def install(listener: Listener) -> None:
    global _listener
    _listener = listener


def password_checked(path: str, accepted: bool) -> None:
    _listener.password_checked(path, accepted)


def enrollment_registration(enrollment: str, result: str) -> None:
    _listener.enrollment_registration(enrollment, result)


@contextlib.contextmanager
def waiting_for_bcrypt() -> Iterator[None]:
    listener = _listener
    listener.bcrypt_waiting(1)
    try:
        yield
    finally:
        listener.bcrypt_waiting(-1)
