"""Registration over REST: the register route's answers, seen from the device,
and the one HTTP call it makes."""

from __future__ import annotations

import dataclasses
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from cregistry import errors
from cregistry.errors import RegistrationFailed

REGISTER_PATH = "/api/client-registry/register"
HTTP_TIMEOUT = 10.0

POLL, CONNECT, STOP = "poll", "connect", "stop"


@dataclasses.dataclass(frozen=True)
class RestDecision:
    """What an answer of the register route means for the device."""

    action: str  # POLL, CONNECT or STOP
    message: str
    error: type[errors.CregistryError] | None = None  # raised on STOP


def decide_registration(
    status: int, body: Any, username: str, pairing: str, *, enrolling: bool = False
) -> RestDecision:
    """The statuses of POST /api/client-registry/register, seen from the device
    (`enrolling`: the request carried an enrollment token)."""
    server_error = body.get("error") if isinstance(body, dict) else None
    detail = f": {server_error}" if isinstance(server_error, str) and server_error else ""
    if status == 403 and enrolling:
        return RestDecision(
            STOP,
            f"the registry refused the enrollment token for {username}: it is unknown, revoked, expired or used"
            " up, or the username is not one the enrollment registers (ask the operator: `cregistry enrollment"
            " list`)",
            errors.EnrollmentRefused,
        )
    if status == 201:
        return RestDecision(CONNECT, f"registration granted: {username} exists with these credentials")
    if status == 202:
        return RestDecision(
            POLL, f"registration pending: waiting for the operator to approve {username} (pairing ID {pairing})"
        )
    if status == 423:
        return RestDecision(POLL, "the registry is locked: waiting for the operator to unlock it (`cregistry unlock`)")
    if status == 403:
        return RestDecision(
            STOP,
            f"the operator denied the registration of {username} (pairing ID {pairing}); to ask again,"
            " start the device with a new credentials file",
            errors.RequestDenied,
        )
    if status == 409:
        return RestDecision(
            STOP,
            f"the username {username} is taken: it is registered with other credentials. The operator can delete"
            f" that user (`cregistry user delete {username}`), or start this device with another --username or"
            " another credentials file",
            errors.UsernameTaken,
        )
    if status == 400:
        return RestDecision(
            STOP, f"the registry refused the registration{detail or ': invalid input'}", errors.InvalidInput
        )
    if status == 429 or status >= 500:
        return RestDecision(POLL, f"the registry cannot take the request now (HTTP {status}{detail})")
    message = f"unexpected answer HTTP {status} from the registration URL{detail}; check --register-url"
    return RestDecision(STOP, message, RegistrationFailed)


def register_endpoint(url: str) -> str:
    """The register route from the service's base URL (or the full route as given)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise errors.InvalidInput(f"the registration URL must be http:// or https:// with a host, not {url!r}")
    if parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path=REGISTER_PATH))
    return url


HttpPost = Callable[[str, dict[str, Any]], tuple[int, Any]]


def http_post_json(context: ssl.SSLContext | None = None, timeout: float = HTTP_TIMEOUT) -> HttpPost:
    """POST a JSON body; (status, parsed JSON body or None). Network errors raise OSError."""

    def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "cregistry-device"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                return response.status, _json_or_none(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, _json_or_none(error.read())

    return post


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
