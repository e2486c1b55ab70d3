"""The public listener: device registration (no auth) and the admin API (bearer token)."""

from __future__ import annotations

import dataclasses

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import Unauthorized

from cregistry import enrollments, names, services
from cregistry.audit import MAX_LISTED as MAX_AUDIT_LISTED
from cregistry.errors import InvalidInput
from cregistry.pending import MAX_OFFSET, MAX_PAGE, parse_request_id
from cregistry.registration import Outcome
from cregistry.roles import RoleStore
from cregistry.users import UserStore
from cregistry.web.bodies import json_body, json_object
from cregistry.web.errors import error_body
from cregistry.web.tokens import admin_token_name

registration = Blueprint("registration", __name__)
admin = Blueprint("admin", __name__)


# -- devices ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Refusal:
    """How the route refuses a registration: the status, the word the device
    acts on ("status" in the body; none for bad input) and the error text."""

    status: int
    word: str | None
    message: str  # formatted with the username and the outcome's detail

    def answer(self, username: object, detail: str) -> tuple[Response, int]:
        body: dict[str, object] = {"ok": False, "error": self.message.format(username=username, detail=detail)}
        if self.word is not None:
            body["status"] = self.word
        return jsonify(body), self.status


# The answer to each outcome: 201 or 202 with a body, or a refusal.
REGISTRATION_ANSWERS: dict[Outcome, int | Refusal] = {
    Outcome.ACCEPTED: 201,
    Outcome.RECORDED: 202,
    Outcome.REPEATED: 202,
    Outcome.APPROVED_MEANWHILE: 202,  # the device's next poll gets 201 (or 409)
    Outcome.WRONG_PASSWORD: Refusal(409, "conflict", "username {username!r} is registered with other credentials"),
    # 201/409 make this route a password oracle: it shares the guessing limit.
    Outcome.TOO_MANY_FAILURES: Refusal(429, "limited", "too many failed attempts for {username!r}; try again later"),
    Outcome.WEAK_PASSWORD: Refusal(400, None, "{detail}"),
    Outcome.CLIENT_ID_REFUSED: Refusal(409, "conflict", "this client id is another device's; use the device's own"),
    Outcome.DENIED: Refusal(403, "denied", "the registration request with these credentials was denied"),
    Outcome.LOCKED: Refusal(423, "locked", "the registry is locked; ask the operator to unlock it"),
    Outcome.PENDING_CAP: Refusal(429, "limited", "too many pending registration requests; try again later"),
    # 429 as for the caps: the device backs off and tries again.
    Outcome.BUSY: Refusal(429, "limited", "registration is busy; try again later"),
}


# With an enrollment token: one refusal for every bad token (enrollments.py).
ENROLLMENT_ANSWERS: dict[enrollments.Outcome, int | Refusal] = {
    enrollments.Outcome.GRANTED: 201,
    enrollments.Outcome.REPEATED: 201,
    enrollments.Outcome.REFUSED: Refusal(403, "refused", enrollments.ONE_REFUSAL),
    enrollments.Outcome.LIMITED: Refusal(429, "limited", "too many refused enrollment registrations; try again later"),
    enrollments.Outcome.WRONG_PASSWORD: REGISTRATION_ANSWERS[Outcome.WRONG_PASSWORD],
    enrollments.Outcome.TOO_MANY_FAILURES: REGISTRATION_ANSWERS[Outcome.TOO_MANY_FAILURES],
    enrollments.Outcome.WEAK_PASSWORD: REGISTRATION_ANSWERS[Outcome.WEAK_PASSWORD],
    enrollments.Outcome.CLIENT_ID_REFUSED: REGISTRATION_ANSWERS[Outcome.CLIENT_ID_REFUSED],
    enrollments.Outcome.BUSY: REGISTRATION_ANSWERS[Outcome.BUSY],
}


@registration.post("/api/client-registry/register")
def register() -> tuple[Response, int]:
    body = json_object(required=True, json_type=True)
    username = body.get("username")
    if "enrollment" in body:
        return _register_enrolled(body)
    domain = _domain()
    csr = domain.certificates.check_csr(body.get("csr"), username)  # checked before anything is recorded
    attempt = domain.registration.attempt(
        username, body.get("password"), body.get("clientId"), "rest", body.get("context"), csr
    )
    answer = REGISTRATION_ANSWERS[attempt.outcome]
    if isinstance(answer, Refusal):
        return answer.answer(username, attempt.detail)
    if answer == 201:
        # The user's certificate (renewed for a CSR with a new key), with the CA's; SPEC §14.
        certificate = domain.certificates.for_granted(str(username), csr)
        granted = {"status": "granted", "username": username, "pairingId": attempt.pairing_id, **certificate}
        return jsonify(granted), 201
    return jsonify({"status": "pending", "pairingId": attempt.pairing_id}), 202


def _register_enrolled(body: dict[str, object]) -> tuple[Response, int]:
    username = body.get("username")
    attempt = _domain().enrollments.register(
        body["enrollment"], username, body.get("password"), body.get("clientId"), _client_address(), body.get("context")
    )
    answer = ENROLLMENT_ANSWERS[attempt.outcome]
    if isinstance(answer, Refusal):
        return answer.answer(username, attempt.detail)
    return jsonify({"status": "granted", "username": username, "pairingId": attempt.pairing_id}), 201


def _client_address() -> str:
    return request.remote_addr or "unknown"


# -- operators --------------------------------------------------------------
@admin.before_request
def require_token() -> Response | None:
    """Find the token's name (the actor in the audit trail) or refuse: 401 for a
    missing or wrong token; 429, without looking at the token, once the client's
    address has sent too many wrong ones (counted with the console's sign-ins)."""
    limit = _domain().admin_token_limit
    address = _client_address()
    blocked = limit.seconds_blocked(address)
    if blocked:
        response = error_body("too many wrong admin tokens from this address; try again later", 429)
        response.headers["Retry-After"] = str(blocked)
        return response
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    name = admin_token_name(current_app.extensions["cregistry"].config, given.strip())
    if scheme.lower() != "bearer" or name is None:
        # Only a presented token is a guess; a success does not clear the count
        # (a guesser behind the same address would reset it with every call).
        if given.strip():
            limit.failed(address)
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
    g.actor = f"api:{name}"
    return None


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


@admin.post("/api/client-registry/requests/<request_id>/deny-all")
def deny_all(request_id: str) -> Response:
    """Every candidate of the request's username, as `cregistry deny USERNAME --all`."""
    username, _ = parse_request_id(request_id)
    denied = _domain().requests.deny_all(username, actor=g.actor)
    return jsonify({"denied": [r.to_dict() for r in denied]})


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


@admin.delete("/api/users/<username>/certificate")
def revoke_certificate(username: str) -> Response:
    """The user's clients are disconnected; the device gets a new certificate only through a new approval."""
    serial = _domain().certificates.revoke(username, actor=g.actor)
    return jsonify({"username": username, "revoked": serial})


@admin.put("/api/users/<username>/permissions")
def set_user_permissions(username: str) -> Response:
    return jsonify(_users().set_permissions(username, json_body(), actor=g.actor).to_dict())


@admin.put("/api/users/<username>/client-ids")
def set_user_client_ids(username: str) -> Response:
    return jsonify(_users().set_client_ids(username, json_body(), actor=g.actor).to_dict())


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
    return jsonify({"roles": [r.to_dict() for r in _roles().list_roles()]})


@admin.get("/api/roles/<role>")
def show_role(role: str) -> Response:
    return jsonify(_roles().get(role).to_dict())


@admin.put("/api/roles/<role>/permissions")
def set_role_permissions(role: str) -> Response:
    return jsonify(_roles().set_permissions(role, json_body(), actor=g.actor).to_dict())


@admin.delete("/api/roles/<role>")
def delete_role(role: str) -> Response:
    _roles().delete(role, actor=g.actor)
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


@admin.post("/api/enrollments")
def create_enrollment() -> tuple[Response, int]:
    body = json_object(required=True)
    unknown = set(body) - {"name", "usernamePattern", "roles", "maxUses", "expiresIn"}
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}")
    created = _domain().enrollments.create(
        body.get("name"),
        body.get("usernamePattern"),
        body.get("roles", []),
        body.get("maxUses", enrollments.DEFAULT_MAX_USES),
        body.get("expiresIn", enrollments.DEFAULT_EXPIRES_IN),
        actor=g.actor,
    )
    return jsonify(created.to_dict()), 201


@admin.get("/api/enrollments")
def list_enrollments() -> Response:
    return jsonify({"enrollments": [e.to_dict() for e in _domain().enrollments.list_enrollments()]})


@admin.delete("/api/enrollments/<name>")
def delete_enrollment(name: str) -> Response:
    _domain().enrollments.delete(name, actor=g.actor)
    return jsonify({"deleted": name})


@admin.delete("/api/enrollments/<name>/removed-users/<username>")
def forget_removed_user(name: str, username: str) -> Response:
    """Let a user an operator deleted register through the enrollment again."""
    return jsonify(_domain().enrollments.forget_removed(name, username, actor=g.actor).to_dict())


# -- helpers ----------------------------------------------------------------
def _domain() -> services.Services:
    return current_app.extensions["cregistry"].domain


def _roles() -> RoleStore:
    return _domain().roles


def _users() -> UserStore:
    return _domain().users


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    """A query integer; one message for every way it can be wrong."""
    values = request.args.getlist(name)
    if not values:
        return default
    if len(values) > 1:
        raise InvalidInput(f"{name} must be given once")
    return names.validate_int_within(names.decimal(values[0]), name, low, high)


def _page() -> tuple[int, int]:
    return _int_arg("offset", 0, 0, MAX_OFFSET), _int_arg("limit", MAX_PAGE, 1, MAX_PAGE)
