"""The one place where errors become HTTP statuses and JSON bodies.

`error_answer` is Flask-free, so the broker listener (which answers without
Flask) and the Flask apps' handlers give the same answer for the same error.
Every body has "ok" and "error", which is what go-auth's json response mode
reads; the status alone is what its status mode reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from cregistry import errors
from cregistry.web import metrics

log = logging.getLogger(__name__)
V = TypeVar("V")

# Looked up along the class hierarchy (status_for): a subclass without a row of
# its own answers as its nearest base does.
STATUS_FOR = {
    errors.InvalidInput: 400,
    errors.CertificateRefused: 403,
    errors.EnrollmentNotFound: 404,
    errors.EnrollmentExists: 409,
    errors.UserNotFound: 404,
    errors.RoleNotFound: 404,
    errors.RequestNotFound: 404,
    errors.PermissionNotFound: 404,
    errors.UsernameTaken: 409,
    errors.ClientIdTaken: 409,
    errors.AmbiguousRequest: 409,
    errors.RequestContested: 409,
    errors.StorageUnavailable: 503,
    errors.PasswordChecksBusy: 503,
    errors.ConfigError: 500,
}

Answer = tuple[int, dict[str, Any]]  # HTTP status, JSON body


def status_for(error: errors.CregistryError) -> int:
    """The status of a domain error: the row of its class or of its nearest base; 400 without one."""
    status = _row(STATUS_FOR, error)
    return 400 if status is None else status


def _row(table: Mapping[type[errors.CregistryError], V], error: errors.CregistryError) -> V | None:
    return next((table[cls] for cls in type(error).__mro__ if cls in table), None)


def error_answer(error: Exception, *, unexpected_status: int) -> Answer:
    """(status, body) for any error. `unexpected_status` is what a bug answers:
    503 on the broker listener, so that a broker refuses instead of granting."""
    if isinstance(error, errors.CregistryError):
        if isinstance(error, errors.StorageUnavailable):
            metrics.count_redis_error(error)
        return status_for(error), {"ok": False, "error": str(error)}
    if isinstance(error, redis.RedisError):
        log.warning("Redis unavailable: %s", type(error).__name__)
        metrics.count_redis_error(error)
        return 503, {"ok": False, "error": "storage unavailable; try again"}
    if isinstance(error, HTTPException) and error.code is not None:
        return error.code, {"ok": False, "error": error.description or error.name}
    log.exception("unexpected error", exc_info=error)
    return unexpected_status, {"ok": False, "error": "internal error"}


def error_body(message: str, http_status: int, /, **extra: object) -> Response:
    response = jsonify({"ok": False, "error": message, **extra})
    response.status_code = http_status
    return response


def _response(answer: Answer) -> Response:
    status, body = answer
    response = jsonify(body)
    response.status_code = status
    return response


def init_app(app: Flask, *, unexpected_status: int) -> None:
    """Register the handlers. `unexpected_status` is what a bug answers:
    503 on the broker listener, so that go-auth refuses instead of granting."""

    @app.errorhandler(errors.CregistryError)
    @app.errorhandler(redis.RedisError)
    def domain_or_storage_error(error: Exception) -> Response:
        return _response(error_answer(error, unexpected_status=unexpected_status))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        response = _response(error_answer(error, unexpected_status=unexpected_status))
        if error.code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if error.code == 405 and error.get_headers():
            response.headers.update({k: v for k, v in error.get_headers() if k == "Allow"})
        return response

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        return _response(error_answer(error, unexpected_status=unexpected_status))
