"""The routes go-auth's HTTP backend calls. Served only on the broker listener."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from cregistry.broker import Authorizer, Decision, parse_acc
from cregistry.errors import InvalidInput

bp = Blueprint("broker", __name__, url_prefix="/mqtt")
METHODS = ["POST", "PUT", "GET"]  # go-auth's http_method


@bp.route("/user", methods=METHODS)
def check_user() -> Response:
    params = _params()
    decision = _authorizer().check_user(
        _field(params, "username"), _field(params, "password"), _field(params, "clientid")
    )
    return _answer(decision)


@bp.route("/superuser", methods=METHODS)
def check_superuser() -> Response:
    return _answer(_authorizer().check_superuser(_field(_params(), "username")))


@bp.route("/acl", methods=METHODS)
def check_acl() -> Response:
    params = _params()
    decision = _authorizer().check_acl(
        _field(params, "username"),
        _field(params, "clientid"),
        _field(params, "topic"),
        parse_acc(params.get("acc")),
    )
    return _answer(decision)


def _authorizer() -> Authorizer:
    return current_app.extensions["cregistry"].authorizer


def _params() -> dict[str, Any]:
    """go-auth sends JSON (http_params_mode json) or a form (form); GET may
    carry either in the body, or the fields in the query string."""
    body = request.get_data(cache=True)
    if request.is_json or body.lstrip()[:1] == b"{":
        data = request.get_json(force=True, silent=True)
        if not isinstance(data, dict):
            raise InvalidInput("body must be a JSON object")
        return data
    params: dict[str, Any] = request.args.to_dict()
    params.update(request.form.to_dict())
    return params


def _field(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise InvalidInput(f"{name} is missing or not a string")
    return value


def _answer(decision: Decision) -> Response:
    response = jsonify({"ok": decision.allowed, "error": decision.reason})
    response.status_code = 200 if decision.allowed else 403
    return response
