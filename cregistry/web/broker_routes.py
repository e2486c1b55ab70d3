"""The routes go-auth's HTTP backend and cregistry's plugin call, and the
change feed the plugin polls. Served only on the broker listener."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from cregistry.changes import ChangeFeed
from cregistry.web.deadline import within_deadline

bp = Blueprint("broker", __name__, url_prefix="/mqtt")
METHODS = ["POST", "PUT", "GET"]  # go-auth's http_method


# The checks themselves are answered in front of this app, for every method
# go-auth uses: by broker_asgi.BrokerListener under `serve`, by
# broker_wsgi.BrokerChecks where the app runs as WSGI; the rules stay here so
# that other methods get Flask's 405 with an Allow header.
def _answered_by_broker_checks() -> Response:
    raise RuntimeError("broker checks are answered by web/broker_wsgi.py, in front of this app")


for _path, _endpoint in (("/user", "check_user"), ("/superuser", "check_superuser"), ("/acl", "check_acl")):
    bp.add_url_rule(_path, _endpoint, _answered_by_broker_checks, methods=METHODS)


@bp.get("/changes")
def changes() -> Response:
    """What cached answers to drop since position `after` (see changes.py)."""
    page = within_deadline(_feed().read, request.args.get("after") or None)
    return jsonify({"ok": True, "error": "", **page.to_dict()})


def _feed() -> ChangeFeed:
    return current_app.extensions["cregistry"].domain.changes
