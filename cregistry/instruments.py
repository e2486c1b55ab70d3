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

# What happened to a user's certificate (certificates.py).
CERTIFICATE_ISSUED = "issue"  # at approval
CERTIFICATE_RENEWED = "renew"  # a device with a valid certificate sent a CSR for a new key
CERTIFICATE_REVOKED = "revoke"  # an operator removed it (deleting the user is counted as a deletion)


class Listener:
    """Receives the events; this base ignores them."""

    def password_checked(self, path: str, accepted: bool) -> None:
        """A known user's password was checked along `path` (PASSWORD_*)."""

    def bcrypt_waiting(self, delta: int) -> None:
        """A password check started (+1) or stopped (-1) waiting for a bcrypt slot."""

    def certificate_changed(self, action: str) -> None:
        """A certificate was issued, renewed or revoked (CERTIFICATE_*)."""

    def certificate_checked(self, accepted: bool) -> None:
        """A CONNECT with a client certificate was decided."""

    def enrollment_registration(self, enrollment: str, result: str) -> None:
        """A registration with an enrollment token ended (enrollments.py); `enrollment` is "" for an unknown token."""


_listener = Listener()


def install(listener: Listener) -> None:
    global _listener
    _listener = listener


def password_checked(path: str, accepted: bool) -> None:
    _listener.password_checked(path, accepted)


def certificate_changed(action: str) -> None:
    _listener.certificate_changed(action)


def certificate_checked(accepted: bool) -> None:
    _listener.certificate_checked(accepted)


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
