"""The public listener: device registration (no auth) and the admin API (bearer token)."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import Unauthorized

from cregistry.errors import InvalidInput
from cregistry.registry import Registration, Registry, parse_request_id
from cregistry.users import UserStore
from cregistry.web.bodies import json_body, json_object

registration = Blueprint("registration", __name__)
admin = Blueprint("admin", __name__)


# -- devices ----------------------------------------------------------------
@registration.post("/api/client-registry/register")
def register() -> tuple[Response, int]:
    body = json_object(required=True)
    outcome, pairing = _registry().register(
        body.get("username"), body.get("password"), body.get("clientId"), body.get("context")
    )
    if outcome is Registration.GRANTED:
        return jsonify({"status": "granted", "username": body["username"], "pairingId": pairing}), 201
    return jsonify({"status": "pending", "pairingId": pairing}), 202


# -- operators --------------------------------------------------------------
@admin.before_request
def require_token() -> None:
    expected = current_app.extensions["cregistry"].config.admin_token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest keeps the comparison time independent of the token's content.
    if not (expected and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())):
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")


@admin.get("/api/client-registry")
def registry_status() -> Response:
    return jsonify(_registry().status().to_dict())


@admin.post("/api/client-registry/unlock")
def unlock() -> Response:
    body = json_object(required=False)
    return jsonify(_registry().unlock(body.get("seconds")).to_dict())


@admin.post("/api/client-registry/lock")
def lock() -> Response:
    return jsonify(_registry().lock().to_dict())


@admin.get("/api/client-registry/requests")
def list_requests() -> Response:
    return jsonify({"requests": [r.to_dict() for r in _registry().list_requests()]})


@admin.post("/api/client-registry/requests/<request_id>/approve")
def approve(request_id: str) -> tuple[Response, int]:
    user = _registry().approve(*parse_request_id(request_id))
    return jsonify(user.to_dict()), 201


@admin.post("/api/client-registry/requests/<request_id>/deny")
def deny(request_id: str) -> Response:
    denied = _registry().deny(*parse_request_id(request_id))
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
    user = _users().add(body.get("username"), body.get("password"), superuser=superuser)  # type: ignore[arg-type]
    return jsonify(user.to_dict()), 201


@admin.get("/api/users/<username>")
def show_user(username: str) -> Response:
    return jsonify(_users().get(username).to_dict())


@admin.delete("/api/users/<username>")
def delete_user(username: str) -> Response:
    _users().delete(username)
    return jsonify({"deleted": username})


@admin.put("/api/users/<username>/permissions")
def set_user_permissions(username: str) -> Response:
    return jsonify(_users().set_permissions(username, json_body()).to_dict())


@admin.put("/api/users/<username>/roles")
def set_user_roles(username: str) -> Response:
    return jsonify(_users().set_roles(username, json_body()).to_dict())


@admin.put("/api/users/<username>/superuser")
def set_superuser(username: str) -> Response:
    flag = json_object(required=True).get("superuser")
    if not isinstance(flag, bool):
        raise InvalidInput('expected {"superuser": true|false}')
    return jsonify(_users().set_superuser(username, flag).to_dict())


@admin.get("/api/roles")
def list_roles() -> Response:
    return jsonify({"roles": [r.to_dict() for r in _users().list_roles()]})


@admin.get("/api/roles/<role>")
def show_role(role: str) -> Response:
    return jsonify(_users().get_role(role).to_dict())


@admin.put("/api/roles/<role>/permissions")
def set_role_permissions(role: str) -> Response:
    return jsonify(_users().set_role_permissions(role, json_body()).to_dict())


@admin.delete("/api/roles/<role>")
def delete_role(role: str) -> Response:
    _users().delete_role(role)
    return jsonify({"deleted": role})


# -- helpers ----------------------------------------------------------------
def _registry() -> Registry:
    return current_app.extensions["cregistry"].registry


def _users() -> UserStore:
    return current_app.extensions["cregistry"].registry.users
