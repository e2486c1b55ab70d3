"""Rules for usernames, passwords and client ids; pairing IDs; bcrypt hashing."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from typing import Any

import bcrypt

from cregistry.errors import InvalidInput

log = logging.getLogger(__name__)

# Usernames end up in Redis keys and in ACL topic patterns (%u), so anything
# that is special in either (/ + # : * { } % spaces) is refused.
USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{2,63}", re.ASCII)
# Role names follow the same rules: they are part of keys too.
ROLE_NAME_RE = USERNAME_RE

BCRYPT_MAX_BYTES = 72
PAIRING_ID_LENGTH = 6
MAX_CLIENT_ID_BYTES = 65535  # MQTT's own limit for a UTF-8 string


def validate_username(username: Any) -> str:
    if username is None:
        raise InvalidInput("username is missing")
    if not isinstance(username, str):
        raise InvalidInput("username must be a string")
    if not USERNAME_RE.fullmatch(username):
        raise InvalidInput(
            "username must be 3 to 64 characters of ASCII letters, digits, '_', '.', '-',"
            " starting with a letter or digit"
        )
    return username


def validate_role_name(role: Any) -> str:
    if not isinstance(role, str) or not ROLE_NAME_RE.fullmatch(role):
        raise InvalidInput(
            "role name must be 3 to 64 characters of ASCII letters, digits, '_', '.', '-',"
            " starting with a letter or digit"
        )
    return role


def validate_client_id(client_id: Any) -> str:
    if not isinstance(client_id, str):
        raise InvalidInput("client id must be a string")
    if "\x00" in client_id:
        raise InvalidInput("client id must not contain NUL")
    if len(_utf8(client_id, "client id")) > MAX_CLIENT_ID_BYTES:
        raise InvalidInput(f"client id must be at most {MAX_CLIENT_ID_BYTES} bytes")
    return client_id


@dataclasses.dataclass(frozen=True)
class PasswordPolicy:
    """Minimum length in characters and the character classes required."""

    min_length: int = 5
    require: tuple[str, ...] = ()

    _CLASS_TESTS = {
        "lower": str.islower,
        "upper": str.isupper,
        "digit": str.isdigit,
        "symbol": lambda c: not c.isalnum(),
    }

    def validate(self, password: Any) -> str:
        """Rules for a new password: format, length and classes."""
        validate_password_format(password)
        if len(password) < self.min_length:
            raise InvalidInput(f"password must be at least {self.min_length} characters")
        for name in self.require:
            test = self._CLASS_TESTS[name]
            if not any(test(c) for c in password):
                raise InvalidInput(f"password must contain at least one {name} character")
        return password


def validate_password_format(password: Any) -> str:
    """What any password must be before bcrypt sees it, old or new."""
    if password is None:
        raise InvalidInput("password is missing")
    if not isinstance(password, str):
        raise InvalidInput("password must be a string")
    if "\x00" in password:
        raise InvalidInput("password must not contain NUL")
    # bcrypt ignores everything past 72 bytes; refusing is the only honest answer.
    if len(_utf8(password, "password")) > BCRYPT_MAX_BYTES:
        raise InvalidInput(f"password must be at most {BCRYPT_MAX_BYTES} bytes in UTF-8")
    return password


def pairing_id(username: str, password: str) -> str:
    """What device and operator both show: 6 hex digits of sha256("user:password")."""
    digest = hashlib.sha256(f"{username}:{password}".encode()).hexdigest()
    return digest[:PAIRING_ID_LENGTH]


def hash_password(password: str, cost: int) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


def verify_password(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), password_hash.encode())
    except ValueError:
        # A corrupt stored hash must never grant; say so without printing it.
        log.error("stored password hash is not a valid bcrypt hash; refusing")
        return False


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # Lone surrogates arrive through JSON "\ud800" escapes.
        raise InvalidInput(f"{what} is not valid Unicode") from None
