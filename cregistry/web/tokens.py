"""Which configured admin token a client presented: shared by the admin API
(bearer header) and the web console (sign-in form)."""

from __future__ import annotations

import hmac

from cregistry.config import Config


def admin_token_name(config: Config, given: str) -> str | None:
    """The name of the admin token equal to `given`, or None.

    Every configured token is compared, each in constant time, so the
    answer's timing tells nothing about which one came close.
    """
    given_bytes = given.encode()
    found = None
    for name, token in config.named_admin_tokens().items():
        if hmac.compare_digest(given_bytes, token.encode()):
            found = name
    return found
