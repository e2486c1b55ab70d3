"""One error map: domain errors become statuses (web) and exit codes (CLI) by
looking along the class hierarchy, and the Flask handlers and the broker
listener share one Flask-free answer."""

from __future__ import annotations

import redis
from werkzeug.exceptions import MethodNotAllowed

from cregistry import errors
from cregistry.cli.errors import EXIT_UNAVAILABLE, to_command_error
from cregistry.web.errors import STATUS_FOR, error_answer, status_for


class SubclassOfNotFound(errors.UserNotFound):
    """A subclass with no row of its own."""


def test_a_subclass_without_a_row_answers_as_its_nearest_base() -> None:
    assert SubclassOfNotFound not in STATUS_FOR
    assert status_for(SubclassOfNotFound("gone")) == 404
    assert status_for(errors.ReplicasUnconfirmed("not confirmed")) == 503
    assert to_command_error(errors.ReplicasUnconfirmed("not confirmed")).exit_code == EXIT_UNAVAILABLE


def test_an_error_without_any_row_is_bad_input() -> None:
    assert status_for(errors.CregistryError("odd")) == 400


def test_storage_http_and_unexpected_errors() -> None:
    assert error_answer(redis.ConnectionError("down"), unexpected_status=500) == (
        503,
        {"ok": False, "error": "storage unavailable; try again"},
    )
    status, body = error_answer(MethodNotAllowed(["POST"]), unexpected_status=503)
    assert status == 405 and body["ok"] is False
    # A bug is what the listener says it is: 503 where a broker must refuse, 500 elsewhere.
    assert error_answer(RuntimeError("bug"), unexpected_status=503) == (503, {"ok": False, "error": "internal error"})
    assert error_answer(RuntimeError("bug"), unexpected_status=500)[0] == 500
