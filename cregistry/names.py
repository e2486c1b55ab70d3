"""Rules for the names that end up in Redis keys and topics: usernames, role
names, client ids; and the bounded-integer check every setting shares."""

from __future__ import annotations

import re
from typing import TypeGuard

from cregistry.errors import InvalidInput

# Usernames end up in Redis keys and in ACL topic patterns (%u), so anything
# that is special in either (/ + # : * { } % spaces) is refused.
USERNAME_MAX_LENGTH = 64
USERNAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{2,{USERNAME_MAX_LENGTH - 1}}}", re.ASCII)
# Role names follow the same rules: they are part of keys too.
ROLE_NAME_RE = USERNAME_RE

MAX_CLIENT_ID_BYTES = 65535  # MQTT's own limit for a UTF-8 string


def validate_username(username: object) -> str:
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


def is_valid_username(username: object) -> bool:
    """Whether validate_username accepts it."""
    return isinstance(username, str) and USERNAME_RE.fullmatch(username) is not None


def validate_role_name(role: object) -> str:
    if not isinstance(role, str) or not ROLE_NAME_RE.fullmatch(role):
        raise InvalidInput(
            "role name must be 3 to 64 characters of ASCII letters, digits, '_', '.', '-',"
            " starting with a letter or digit"
        )
    return role


def validate_client_id(client_id: object) -> str:
    return validate_text(client_id, "client id", MAX_CLIENT_ID_BYTES)


def validate_text(value: object, what: str, max_bytes: int, unit: str = "bytes") -> str:
    """A string without NUL of at most `max_bytes` in UTF-8; else InvalidInput naming `what`."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL")
    if len(utf8(value, what)) > max_bytes:
        raise InvalidInput(f"{what} must be at most {max_bytes} {unit}")
    return value


def utf8(text: str, what: str) -> bytes:
    """text as UTF-8, or InvalidInput naming what it is."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        # Lone surrogates arrive through JSON "\ud800" escapes.
        raise InvalidInput(f"{what} is not valid Unicode") from None


def decimal(text: str) -> int | None:
    """`text` as a non-negative integer written in ASCII digits, else None.

    str.isdigit() is also true of "²" (which int() refuses: a ValueError where
    a clear error was meant) and of "٣" (which int() reads as 3)."""
    return int(text) if text.isascii() and text.isdigit() else None


def is_int_within(value: object, low: int, high: int) -> TypeGuard[int]:
    """An integer (JSON's true is not 1 here) from low to high inclusive."""
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def validate_int_within(value: object, field: str, low: int, high: int) -> int:
    """`value` if is_int_within, else InvalidInput naming the field and its bounds."""
    if not is_int_within(value, low, high):
        raise InvalidInput(f"{field} must be an integer from {low} to {high}")
    return value
