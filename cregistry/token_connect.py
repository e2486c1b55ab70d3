"""A CONNECT accepted by its verified token: the broker path's fast cases.

A known device that connected before proves its password with the verified
token (verification.py) without bcrypt: from this worker's cache of tokens,
with no Redis round trip at all, when the caller sends a feed position the
worker's follower covers (followed_cache.py); otherwise in one Redis round
trip. Both run on the request's own thread (web/broker_wsgi.py); every other
case (bcrypt, a wrong password, the guessing limit, an unknown user who may
become a registration request) is Authorizer.check_user's, on the check pool
under the deadline.
"""

from __future__ import annotations

from cregistry.authorizer import ALLOW, Authorizer, Decision, refuse_malformed_connect


def check_user_by_cached_token(
    authorizer: Authorizer, username: str, password: str, client_id: str, seen: str | None
) -> Decision | None:
    """ALLOW when this worker's cached token accepts the password, a refusal
    for malformed fields (as check_user's), None for "ask Redis"; no I/O."""
    malformed = refuse_malformed_connect(username, password, client_id)
    if malformed is not None:
        return malformed
    if not authorizer.verifier.verify_by_cached_token(username, password, seen, client_id):
        return None
    authorizer.last_connects.record_later(username, client_id)
    return ALLOW


def check_user_by_token(authorizer: Authorizer, username: str, password: str, client_id: str) -> Decision | None:
    """ALLOW when the verified token accepts the password, a refusal for
    malformed fields (as check_user's), None for "ask check_user"."""
    started = authorizer.monotonic()
    malformed = refuse_malformed_connect(username, password, client_id)
    if malformed is not None:
        return malformed
    if not authorizer.verifier.verify_by_token(username, password, client_id):
        return None
    # Runs only if the check above took less than LAST_CONNECT_BUDGET (authorizer.py).
    authorizer.last_connects.record(username, client_id, started)
    return ALLOW
