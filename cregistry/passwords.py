"""Password rules (policy and format), bcrypt hashing, and the pairing ID."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

from cregistry.errors import InvalidInput
from cregistry.names import validate_text

log = logging.getLogger(__name__)

BCRYPT_MAX_BYTES = 72
PAIRING_ID_LENGTH = 6
PAIRING_ID_CHARS = frozenset("0123456789abcdef")


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

    def validate(self, password: object) -> str:
        """Rules for a new password: format, length and classes."""
        return self.validate_strength(validate_password_format(password))

    def validate_strength(self, password: str) -> str:
        """Length and classes of a password whose format is already checked."""
        if len(password) < self.min_length:
            raise InvalidInput(f"password must be at least {self.min_length} characters")
        for name in self.require:
            test = self._CLASS_TESTS[name]
            if not any(test(c) for c in password):
                raise InvalidInput(f"password must contain at least one {name} character")
        return password


def validate_password_format(password: object) -> str:
    """What any password must be before bcrypt sees it, old or new."""
    if password is None:
        raise InvalidInput("password is missing")
    # bcrypt ignores everything past 72 bytes; refusing is the only honest answer.
    return validate_text(password, "password", BCRYPT_MAX_BYTES, "bytes in UTF-8")


def pairing_id(username: str, password: str) -> str:
    """What device and operator both show: 6 hex digits of sha256("user:password")."""
    digest = hashlib.sha256(f"{username}:{password}".encode()).hexdigest()
    return digest[:PAIRING_ID_LENGTH]


def validate_pairing_id(value: object) -> str:
    """A pairing ID in the form pairing_id makes, or InvalidInput."""
    if not isinstance(value, str) or len(value) != PAIRING_ID_LENGTH or not set(value) <= PAIRING_ID_CHARS:
        raise InvalidInput(f"a pairing ID is {PAIRING_ID_LENGTH} lower-case hex digits")
    return value


# bcrypt is imported where it is used: the device agent shares this module's rules
# (policy, format, pairing ID) and must not need the server's dependencies.
def hash_password(password: str, cost: int) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


def verify_password(password: str, password_hash: str) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password.encode(), password_hash.encode())
    except ValueError:
        # A corrupt stored hash must never grant; say so without printing it.
        log.error("stored password hash is not a valid bcrypt hash; refusing")
        return False
