"""The device's credentials: what the file holds, and how new ones are made."""

from __future__ import annotations

import dataclasses
import re
import secrets
import socket
import unicodedata
from collections.abc import Callable
from typing import Any

from cregistry import errors
from cregistry.config import PASSWORD_CLASSES
from cregistry.names import USERNAME_MAX_LENGTH, validate_username
from cregistry.passwords import BCRYPT_MAX_BYTES, PasswordPolicy, pairing_id, validate_password_format
from cregistry.timestamps import isoformat

CREDENTIALS_FORMAT = 1
# 32 random bytes, 43 URL-safe characters: far above the 24 bytes a guessing
# attacker would have to beat, far below bcrypt's 72-byte limit.
PASSWORD_ENTROPY_BYTES = 32
PASSWORD_LENGTH = 43  # what secrets.token_urlsafe(PASSWORD_ENTROPY_BYTES) gives
# A stored password shorter than this was not written by the agent (which
# writes 43 characters): refused rather than used.
MIN_STORED_PASSWORD_LENGTH = 16
# 40 random bits: a fleet of 10 000 devices with the same host name has a
# chance of about 1 in 20 000 of two sharing a username.
USERNAME_SUFFIX_BYTES = 5
FALLBACK_USERNAME_BASE = "device"
# The strictest policy a server can set, for its character classes only:
# the length is the token's.
EVERY_CLASS = PasswordPolicy(min_length=0, require=PASSWORD_CLASSES)


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a device keeps in its credentials file."""

    username: str
    password: str = dataclasses.field(repr=False)  # never in a repr, so never in a log
    client_id: str
    created: str
    last_accepted: str | None = None

    @property
    def pairing_id(self) -> str:
        return pairing_id(self.username, self.password)

    @property
    def accepted_before(self) -> bool:
        return self.last_accepted is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CREDENTIALS_FORMAT,
            "username": self.username,
            "password": self.password,
            "clientId": self.client_id,
            "created": self.created,
            "lastAccepted": self.last_accepted,
        }

    @classmethod
    def from_json(cls, data: Any) -> Credentials:
        """Raises InvalidInput when `data` is not a credentials object."""
        if not isinstance(data, dict):
            raise errors.InvalidInput("not a JSON object")
        file_format = data.get("format")
        if type(file_format) is not int or file_format != CREDENTIALS_FORMAT:
            found = "missing" if file_format is None else f"{file_format!r}"
            raise errors.InvalidInput(f"format must be {CREDENTIALS_FORMAT}, the one this agent writes, not {found}")
        username = validate_username(data.get("username"))
        password = validate_password_format(data.get("password"))
        # Stricter than the server's policy on purpose: the agent writes 43
        # characters, so a short one was put there by hand.
        if len(password) < MIN_STORED_PASSWORD_LENGTH:
            raise errors.InvalidInput(
                f"the password has {len(password)} character{'' if len(password) == 1 else 's'};"
                f" the agent writes {PASSWORD_LENGTH}"
                f" and never fewer than {MIN_STORED_PASSWORD_LENGTH}"
            )
        client_id = data.get("clientId", username)
        created = data.get("created", "")
        last_accepted = data.get("lastAccepted")
        # Not names.validate_client_id: MQTT lets a client send an empty id, but
        # this one is what the device connects with, so it must say something.
        if not isinstance(client_id, str) or not client_id:
            raise errors.InvalidInput("clientId must be a non-empty string")
        if not isinstance(created, str) or not (last_accepted is None or isinstance(last_accepted, str)):
            raise errors.InvalidInput("created and lastAccepted must be strings")
        return cls(username, password, client_id, created, last_accepted)


def username_for_host(hostname: str, suffix: str) -> str:
    """A valid username (names.USERNAME_RE) from any host name: its first label made
    ASCII, lower case and safe, then `-` and `suffix` (hex digits)."""
    label = next((part for part in hostname.split(".") if part), "")
    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode("ascii")
    # USERNAME_RE's characters in lower case: host names ignore case, usernames do not.
    base = re.sub(r"[^a-z0-9_.-]+", "-", ascii_label.lower())
    base = base.lstrip("_.-")[: USERNAME_MAX_LENGTH - len(suffix) - 1].rstrip("_.-")
    return validate_username(f"{base or FALLBACK_USERNAME_BASE}-{suffix}")


def new_password(token: Callable[[int], str] = secrets.token_urlsafe) -> str:
    """43 random URL-safe characters, drawn again until every character class
    is present, so that even a server policy that requires lower, upper,
    digit and symbol (passwords.PasswordPolicy) accepts it; that costs under one bit."""
    while True:
        candidate = token(PASSWORD_ENTROPY_BYTES)
        try:
            EVERY_CLASS.validate_strength(candidate)
        except errors.InvalidInput:
            continue
        assert len(candidate.encode()) <= BCRYPT_MAX_BYTES
        return candidate


def new_credentials(
    username: str | None,
    client_id: str | None,
    now: float,
    hostname: Callable[[], str] = socket.gethostname,
    token_hex: Callable[[int], str] = secrets.token_hex,
    password: Callable[[], str] = new_password,
) -> Credentials:
    name = validate_username(username) if username else username_for_host(hostname(), token_hex(USERNAME_SUFFIX_BYTES))
    return Credentials(name, password(), client_id or name, isoformat(now) or "")
