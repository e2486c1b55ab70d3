"""The routes go-auth's HTTP backend and cregistry's plugin call, and the
change feed the plugin polls. Served only on the broker listener."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from cregistry.changes import ChangeFeed
from cregistry.web.deadline import within_deadline

# The checks themselves (/mqtt/user, /mqtt/superuser, /mqtt/acl) are answered
# in front of this app, whatever the method: by broker_asgi.BrokerListener
# under `serve`, by broker_asgi.ListenerAsWsgi where the app runs as WSGI.
bp = Blueprint("broker", __name__, url_prefix="/mqtt")


@bp.get("/changes")
def changes() -> Response:
    """What cached answers to drop since position `after` (see changes.py)."""
    page = within_deadline(_feed().read, request.args.get("after") or None)
    return jsonify({"ok": True, "error": "", **page.to_dict()})


def _feed() -> ChangeFeed:
    return current_app.extensions["cregistry"].domain.changes
