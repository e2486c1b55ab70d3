"""The public listener: device registration (no auth) and the admin API (bearer token)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import Unauthorized

from cregistry import errors, services
from cregistry.audit import MAX_LISTED as MAX_AUDIT_LISTED
from cregistry.errors import InvalidInput
from cregistry.registration import Outcome
from cregistry.requests import MAX_OFFSET, MAX_PAGE, parse_request_id
from cregistry.users import UserStore
from cregistry.web.bodies import json_body, json_object
from cregistry.web.tokens import admin_token_name

registration = Blueprint("registration", __name__)
admin = Blueprint("admin", __name__)


# -- devices ----------------------------------------------------------------
# The answer to each outcome: 201 or 202 with a body, or the domain error
# that web/errors.py renders (403 denied, 409 conflict, 423 locked, 429 limited).
REGISTRATION_ANSWERS: dict[Outcome, int | tuple[type[errors.CregistryError], str]] = {
    Outcome.ACCEPTED: 201,
    Outcome.RECORDED: 202,
    Outcome.REPEATED: 202,
    Outcome.APPROVED_MEANWHILE: 202,  # the device's next poll gets 201 (or 409)
    Outcome.WRONG_PASSWORD: (errors.UsernameTaken, "username {username!r} is registered with other credentials"),
    # 201/409 make this route a password oracle: it shares the guessing limit.
    Outcome.TOO_MANY_FAILURES: (errors.TooManyFailures, "too many failed attempts for {username!r}; try again later"),
    Outcome.WEAK_PASSWORD: (errors.InvalidInput, "{detail}"),
    Outcome.DENIED: (errors.RequestDenied, "the registration request with these credentials was denied"),
    Outcome.LOCKED: (errors.RegistryLocked, "the registry is locked; ask the operator to unlock it"),
    Outcome.PENDING_CAP: (errors.PendingLimitReached, "too many pending registration requests; try again later"),
    # 429 as for the caps: the device backs off and tries again.
    Outcome.BUSY: (errors.PendingLimitReached, "registration is busy; try again later"),
}


@registration.post("/api/client-registry/register")
def register() -> tuple[Response, int]:
    body = json_object(required=True)
    username = body.get("username")
    attempt = _domain().registration.attempt(
        username, body.get("password"), body.get("clientId"), "rest", body.get("context")
    )
    answer = REGISTRATION_ANSWERS[attempt.outcome]
    if isinstance(answer, tuple):
        error, message = answer
        raise error(message.format(username=username, detail=attempt.detail))
    if answer == 201:
        return jsonify({"status": "granted", "username": username, "pairingId": attempt.pairing_id}), 201
    return jsonify({"status": "pending", "pairingId": attempt.pairing_id}), 202


# -- operators --------------------------------------------------------------
@admin.before_request
def require_token() -> None:
    """Find the token's name (the actor in the audit trail) or refuse with 401."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    name = admin_token_name(current_app.extensions["cregistry"].config, given.strip())
    if scheme.lower() != "bearer" or name is None:
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
    g.actor = f"api:{name}"


@admin.get("/api/client-registry")
def registry_status() -> Response:
    return jsonify(_domain().lock.status().to_dict())


@admin.post("/api/client-registry/unlock")
def unlock() -> Response:
    body = json_object(required=False)
    return jsonify(_domain().lock.unlock(body.get("seconds"), actor=g.actor).to_dict())


@admin.post("/api/client-registry/lock")
def lock() -> Response:
    return jsonify(_domain().lock.lock(actor=g.actor).to_dict())


@admin.get("/api/client-registry/requests")
def list_requests() -> Response:
    offset, limit = _page()
    pending = _domain().requests
    page = pending.list_requests(offset, limit)
    return jsonify(
        {"requests": [r.to_dict() for r in page], "total": pending.count_requests(), "offset": offset, "limit": limit}
    )


@admin.delete("/api/client-registry/requests")
def purge_requests() -> Response:
    return jsonify({"removed": _domain().requests.purge(actor=g.actor)})


@admin.post("/api/client-registry/requests/<request_id>/approve")
def approve(request_id: str) -> tuple[Response, int]:
    body = json_object(required=False)
    if set(body) - {"force"} or not isinstance(body.get("force", False), bool):
        raise InvalidInput('expected no body or {"force": true|false}')
    username, candidate = parse_request_id(request_id)
    user = _domain().requests.approve(username, candidate=candidate, force=bool(body.get("force")), actor=g.actor)
    return jsonify(user.to_dict()), 201


@admin.post("/api/client-registry/requests/<request_id>/deny")
def deny(request_id: str) -> Response:
    username, candidate = parse_request_id(request_id)
    denied = _domain().requests.deny(username, candidate=candidate, actor=g.actor)
    return jsonify({"denied": denied.to_dict()})


@admin.get("/api/users")
def list_users() -> Response:
    return jsonify({"users": [u.to_dict() for u in _users().list_users()]})


@admin.post("/api/users")
def add_user() -> tuple[Response, int]:
    body = json_object(required=True)
    superuser = body.get("superuser", False)
    if not isinstance(superuser, bool):
        raise InvalidInput("superuser must be true or false")
    user = _users().add(body.get("username"), body.get("password"), superuser=superuser, actor=g.actor)  # type: ignore[arg-type]
    return jsonify(user.to_dict()), 201


@admin.get("/api/users/<username>")
def show_user(username: str) -> Response:
    return jsonify(_users().get(username).to_dict())


@admin.delete("/api/users/<username>")
def delete_user(username: str) -> Response:
    _users().delete(username, actor=g.actor)
    return jsonify({"deleted": username})


@admin.put("/api/users/<username>/permissions")
def set_user_permissions(username: str) -> Response:
    return jsonify(_users().set_permissions(username, json_body(), actor=g.actor).to_dict())


@admin.put("/api/users/<username>/password")
def set_user_password(username: str) -> Response:
    body = json_object(required=True)
    if set(body) != {"password"}:
        raise InvalidInput('expected {"password": "..."}')
    return jsonify(_users().set_password(username, body["password"], actor=g.actor).to_dict())


@admin.put("/api/users/<username>/roles")
def set_user_roles(username: str) -> Response:
    return jsonify(_users().set_roles(username, json_body(), actor=g.actor).to_dict())


@admin.put("/api/users/<username>/superuser")
def set_superuser(username: str) -> Response:
    flag = json_object(required=True).get("superuser")
    if not isinstance(flag, bool):
        raise InvalidInput('expected {"superuser": true|false}')
    return jsonify(_users().set_superuser(username, flag, actor=g.actor).to_dict())


@admin.get("/api/roles")
def list_roles() -> Response:
    return jsonify({"roles": [r.to_dict() for r in _users().list_roles()]})


@admin.get("/api/roles/<role>")
def show_role(role: str) -> Response:
    return jsonify(_users().get_role(role).to_dict())


@admin.put("/api/roles/<role>/permissions")
def set_role_permissions(role: str) -> Response:
    return jsonify(_users().set_role_permissions(role, json_body(), actor=g.actor).to_dict())


@admin.delete("/api/roles/<role>")
def delete_role(role: str) -> Response:
    _users().delete_role(role, actor=g.actor)
    return jsonify({"deleted": role})


@admin.delete("/api/users/<username>/failures")
def clear_failures(username: str) -> Response:
    """Lift the guessing limit of a username."""
    cleared = _domain().verifier.clear_failures(username, actor=g.actor)
    return jsonify({"username": username, "cleared": cleared})


@admin.get("/api/audit")
def audit() -> Response:
    limit = _int_arg("limit", 100, 1, MAX_AUDIT_LISTED)
    return jsonify({"entries": _domain().audit.entries(limit)})


# -- helpers ----------------------------------------------------------------
def _domain() -> services.Services:
    return current_app.extensions["cregistry"].domain


def _users() -> UserStore:
    return _domain().users


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    """A query integer; one message for every way it can be wrong."""
    values = request.args.getlist(name)
    if not values:
        return default
    if len(values) > 1:
        raise InvalidInput(f"{name} must be given once")
    value = values[0]
    # str.isdigit() is also true of "²" and "٣", which int() refuses or reads.
    if not (value.isascii() and value.isdigit() and low <= int(value) <= high):
        raise InvalidInput(f"{name} must be an integer from {low} to {high}")
    return int(value)


def _page() -> tuple[int, int]:
    return _int_arg("offset", 0, 0, MAX_OFFSET), _int_arg("limit", MAX_PAGE, 1, MAX_PAGE)
