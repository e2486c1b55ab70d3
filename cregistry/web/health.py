"""/healthz (the process answers) and /readyz (Redis answers), on both listeners."""

from __future__ import annotations

import concurrent.futures

import redis
from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("health", __name__)
READY_DEADLINE_SECONDS = 1.5


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"ok": True, "error": ""})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    services = current_app.extensions["cregistry"]
    future = services.checks.submit(services.registry.redis.ping)
    try:
        future.result(timeout=READY_DEADLINE_SECONDS)
    except (concurrent.futures.TimeoutError, redis.RedisError) as error:
        future.cancel()
        return jsonify({"ok": False, "error": f"Redis not ready ({type(error).__name__})"}), 503
    return jsonify({"ok": True, "error": ""}), 200
