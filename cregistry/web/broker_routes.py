"""The routes go-auth's HTTP backend and cregistry's plugin call, and the
change feed the plugin polls. Served only on the broker listener."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from cregistry.broker import Authorizer, Decision, parse_acc
from cregistry.changes import ChangeFeed
from cregistry.errors import InvalidInput
from cregistry.web.bodies import json_object
from cregistry.web.deadline import within_deadline

bp = Blueprint("broker", __name__, url_prefix="/mqtt")
METHODS = ["POST", "PUT", "GET"]  # go-auth's http_method


@bp.route("/user", methods=METHODS)
def check_user() -> Response:
    params = _params()
    fields = (_field(params, "username"), _field(params, "password"), _field(params, "clientid"))
    return _decide(_authorizer().check_user, *fields)


@bp.route("/superuser", methods=METHODS)
def check_superuser() -> Response:
    return _decide(_authorizer().check_superuser, _field(_params(), "username"))


@bp.route("/acl", methods=METHODS)
def check_acl() -> Response:
    params = _params()
    fields = (_field(params, "username"), _field(params, "clientid"), _field(params, "topic"))
    return _decide(_authorizer().check_acl, *fields, parse_acc(params.get("acc")))


@bp.get("/changes")
def changes() -> Response:
    """What cached answers to drop since position `after` (see changes.py)."""
    page = within_deadline(_feed().read, request.args.get("after") or None)
    return jsonify({"ok": True, "error": "", **page.to_dict()})


def _feed() -> ChangeFeed:
    return current_app.extensions["cregistry"].domain.changes


def _authorizer() -> Authorizer:
    return current_app.extensions["cregistry"].authorizer


def _decide(check: Callable[..., Decision], *args: Any) -> Response:
    return _answer(within_deadline(check, *args))


def _params() -> dict[str, Any]:
    """go-auth sends JSON (http_params_mode json) or a form (form); GET may
    carry either in the body, or the fields in the query string."""
    body = request.get_data(cache=True)
    if request.is_json or body.lstrip()[:1] in (b"{", b"["):
        return json_object(required=True)
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
