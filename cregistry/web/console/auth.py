"""Console sessions: signing in with an admin token, the session cookie, and
the per-address limit on failed sign-ins.

Flask's session is a cookie that is signed, not encrypted: anyone holding it
can read it. So it carries the token's NAME and a keyed fingerprint of the
token, never the token; every request checks that a token of that name is
still configured with the same value, so removing or rotating a token ends
the sessions it opened.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
from typing import Any

from flask import Flask, has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface

from cregistry.address_limit import AddressLimit
from cregistry.config import Config
from cregistry.web.tokens import admin_token_name

log = logging.getLogger(__name__)

SESSION_KEY = "operator"
COOKIE_NAME = "cregistry_console"
COOKIE_PATH = "/console"


@dataclasses.dataclass(frozen=True)
class Operator:
    """Whoever is signed in: known by the name of the admin token used."""

    token_name: str

    @property
    def actor(self) -> str:
        """The audit trail's name for changes made in the console."""
        return f"console:{self.token_name}"


class SignInRefused(Exception):
    """A sign-in failed; the message is shown on the sign-in page."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, marked Secure when configured so or when
    the request came over https (directly, or through a TLS proxy that
    gunicorn trusts to say so with X-Forwarded-Proto)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (has_request_context() and request.is_secure)


def configure(app: Flask, config: Config) -> None:
    """Session settings of the API listener's app (only the console uses the session)."""
    secret = config.session_secret
    if secret is None:
        # `cregistry serve` generates one before gunicorn forks (server.py);
        # an app made otherwise (tests, embedding) has sessions of its own.
        log.warning("CREGISTRY_SESSION_SECRET is not set: console sessions end when this process does")
        secret = secrets.token_hex(32)
    app.secret_key = secret
    app.session_interface = SessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_PATH=COOKIE_PATH,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=config.console_secure_cookies,
        # The cookie's own expiry (and the signature's age limit) is the
        # maximum age; the idle timeout is checked on the session's data.
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=config.console_max_age),
        SESSION_REFRESH_EACH_REQUEST=False,
    )


def token_fingerprint(app: Flask, token: str) -> str:
    """Tells whether the token behind a session is still the configured one, without being it."""
    key = str(app.secret_key).encode()
    return hmac.new(key, b"console-session-token:" + token.encode(), hashlib.sha256).hexdigest()[:32]


def console_host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether the console answers a request sent to `host` (its Host header).
    A web page that rebinds its own DNS name to this service's address (DNS
    rebinding) sends that name, so names must be listed; an IP address or
    localhost is not a name such a page can own."""
    if "*" in allowed:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # [IPv6]:port
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:  # name:port or IPv4:port
        name = name.partition(":")[0]
    if name == "localhost" or name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def client_address() -> str:
    return request.remote_addr or "unknown"


def sign_in(app: Flask, config: Config, limit: AddressLimit, given: Any, now: float) -> Operator:
    """Start a session for the admin token `given`, or raise SignInRefused."""
    address = client_address()
    blocked = limit.seconds_blocked(address)
    if blocked:
        log.warning("console sign-in refused: too many failures from %s", address)
        minutes = math.ceil(blocked / 60)
        raise SignInRefused(
            f"Too many failed sign-ins from your address; try again in {minutes} minute{'s' if minutes > 1 else ''}.",
            429,
        )
    name = admin_token_name(config, given.strip()) if isinstance(given, str) and given.strip() else None
    if name is None:
        limit.failed(address)
        log.warning("console sign-in failed from %s", address)
        raise SignInRefused("That is not an admin token of this cregistry.", 403)
    limit.clear(address)
    token = config.named_admin_tokens()[name]
    # A fresh session: nothing from before the sign-in (CSRF token included) survives it.
    session.clear()
    session.permanent = True
    session[SESSION_KEY] = {
        "tokenName": name,
        "tokenFingerprint": token_fingerprint(app, token),
        "signedInAt": now,
        "lastActive": now,
    }
    log.info("console sign-in with token %s from %s", name, address)
    return Operator(name)


def current_operator(app: Flask, config: Config, now: float, *, activity: bool) -> tuple[Operator | None, str]:
    """The signed-in operator, or None and why the session ended ("" if there was none).

    `activity` is False for the console's own background refreshes: they
    must not keep an unattended session alive past the idle timeout.
    """
    data = session.get(SESSION_KEY)
    if not isinstance(data, dict):
        return None, ""
    name = data.get("tokenName")
    token = config.named_admin_tokens().get(name) if isinstance(name, str) else None
    reason = ""
    if token is None or not hmac.compare_digest(str(data.get("tokenFingerprint", "")), token_fingerprint(app, token)):
        reason = "The admin token of this session is no longer configured; sign in again."
    elif now - float(data.get("signedInAt", 0)) > config.console_max_age:
        reason = f"Your session ended after {_duration(config.console_max_age)}; sign in again."
    elif now - float(data.get("lastActive", 0)) > config.console_idle_timeout:
        reason = f"Your session ended after {_duration(config.console_idle_timeout)} without activity; sign in again."
    if reason:
        session.pop(SESSION_KEY, None)
        return None, reason
    assert isinstance(name, str)
    if activity and now - float(data.get("lastActive", 0)) >= 1:
        session[SESSION_KEY] = {**data, "lastActive": now}
    return Operator(name), ""


def sign_out() -> None:
    session.clear()


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours > 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes > 1 else ''}"
