"""The one place where errors become HTTP statuses and JSON bodies.

Every body has "ok" and "error", which is what go-auth's json response mode
reads; the status alone is what its status mode reads.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from cregistry import errors
from cregistry.web import metrics

log = logging.getLogger(__name__)

STATUS_FOR = {
    errors.InvalidInput: 400,
    errors.RequestDenied: 403,
    errors.UserNotFound: 404,
    errors.RoleNotFound: 404,
    errors.RequestNotFound: 404,
    errors.PermissionNotFound: 404,
    errors.UsernameTaken: 409,
    errors.AmbiguousRequest: 409,
    errors.RequestContested: 409,
    errors.RegistryLocked: 423,
    errors.PendingLimitReached: 429,
    errors.TooManyFailures: 429,
    errors.StorageUnavailable: 503,
    errors.ReplicasUnconfirmed: 503,
    errors.ConfigError: 500,
}

# The registration route's answers also carry a word for the device.
REGISTRATION_STATUS_FOR = {
    errors.RegistryLocked: "locked",
    errors.RequestDenied: "denied",
    errors.UsernameTaken: "conflict",
    errors.PendingLimitReached: "limited",
    errors.TooManyFailures: "limited",
}


def error_body(message: str, http_status: int, /, **extra: object) -> Response:
    response = jsonify({"ok": False, "error": message, **extra})
    response.status_code = http_status
    return response


def init_app(app: Flask, *, unexpected_status: int) -> None:
    """Register the handlers. `unexpected_status` is what a bug answers:
    503 on the broker listener, so that go-auth refuses instead of granting."""

    @app.errorhandler(errors.CregistryError)
    def domain_error(error: errors.CregistryError) -> Response:
        status = STATUS_FOR.get(type(error), 400)
        if isinstance(error, errors.StorageUnavailable):
            metrics.count_redis_error(error)
        extra = {}
        if type(error) in REGISTRATION_STATUS_FOR:
            extra["status"] = REGISTRATION_STATUS_FOR[type(error)]
        return error_body(str(error), status, **extra)

    @app.errorhandler(redis.RedisError)
    def storage_error(error: redis.RedisError) -> Response:
        log.warning("Redis unavailable: %s", type(error).__name__)
        metrics.count_redis_error(error)
        return error_body("storage unavailable; try again", 503)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        response = error_body(error.description or error.name, error.code or 500)
        if error.code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if error.code == 405 and error.get_headers():
            response.headers.update({k: v for k, v in error.get_headers() if k == "Allow"})
        return response

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        log.exception("unexpected error")
        return error_body("internal error", unexpected_status)
