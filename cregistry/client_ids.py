"""Client IDs owned by users (SPEC §4, docs/threat-model.md).

A user's own client IDs are a set beside the user, and an index (one hash,
keys.client_owners) names the owner of each; both change in the same MULTI
as whatever gives or takes client IDs (approval, enrollment, PUT
/api/users/<name>/client-ids, deletion: users.py and pending.py). The
CONNECT check reads the owner of the client ID in the round trip it makes
anyway (verification.py), and CREGISTRY_CLIENT_ID_POLICY decides:

- owned (default): another user's own client ID is refused, so nobody takes
  over a user's session or its %c namespace;
- strict: a user connects only with its own client IDs;
- any: no binding (the behaviour before client IDs had owners).
"""

from __future__ import annotations

from cregistry import names
from cregistry.config import CLIENT_ID_ANY, CLIENT_ID_OWNED
from cregistry.errors import InvalidInput

# An owned client ID must be one the plugin lets CONNECT (no + or #) and one
# MQTT clients send in practice; the bound keeps the index small.
MAX_OWNED_CLIENT_ID_BYTES = 256
MAX_CLIENT_IDS_PER_USER = 100


def validate_owned_client_id(client_id: object) -> str:
    """A client ID a user may own; else InvalidInput naming the problem."""
    checked = names.validate_text(client_id, "client id", MAX_OWNED_CLIENT_ID_BYTES)
    if not checked:
        raise InvalidInput("client id must not be empty")
    if "+" in checked or "#" in checked:
        raise InvalidInput(f"client id {checked!r} must not contain '+' or '#' (brokers refuse them)")
    return checked


def ownable(client_id: str) -> bool:
    """Whether a registered client ID can become its user's own (an empty one, or one
    no broker lets connect, cannot)."""
    try:
        validate_owned_client_id(client_id)
    except InvalidInput:
        return False
    return True


def validate_client_id_list(items: object) -> list[str]:
    """The body of PUT /api/users/<name>/client-ids: a JSON list of distinct client IDs."""
    if not isinstance(items, list):
        raise InvalidInput("client IDs must be a JSON list of strings")
    if len(items) > MAX_CLIENT_IDS_PER_USER:
        raise InvalidInput(f"a user owns at most {MAX_CLIENT_IDS_PER_USER} client IDs")
    checked = [validate_owned_client_id(item) for item in items]
    if len(set(checked)) != len(checked):
        raise InvalidInput("client IDs must not repeat")
    return checked


def may_connect(policy: str, username: str, client_id: str, owner: str | None) -> bool:
    """Whether `username` may CONNECT with `client_id`, whose owner is `owner` (None: nobody)."""
    if policy == CLIENT_ID_ANY:
        return True
    if policy == CLIENT_ID_OWNED:
        return owner is None or owner == username
    return owner == username  # strict


def refuses_registration(policy: str, owner: str | None) -> bool:
    """Whether a registration attempt wearing a client ID owned by `owner` is
    refused (and records nothing): under owned and strict, when anyone owns it."""
    return policy != CLIENT_ID_ANY and owner is not None
