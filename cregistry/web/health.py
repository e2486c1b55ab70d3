"""/healthz (the process answers) and /readyz (Redis answers), on both listeners."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify

from cregistry.errors import StorageUnavailable
from cregistry.web.deadline import within_deadline

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"ok": True, "error": ""})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        within_deadline(current_app.extensions["cregistry"].domain.redis.ping)
    except (StorageUnavailable, redis.RedisError) as error:
        return jsonify({"ok": False, "error": f"Redis not ready ({type(error).__name__})"}), 503
    return jsonify({"ok": True, "error": ""}), 200
