"""Reading request bodies, so that no body a client can send becomes a 500."""

from __future__ import annotations

from flask import request
from werkzeug.exceptions import BadRequest

from cregistry.errors import InvalidInput


def json_body() -> object:
    """The body parsed as JSON whatever its Content-Type; InvalidInput if it is not JSON.

    A body of `null` is JSON and comes back as None: the caller says what it
    expected instead ("a JSON object", "a JSON list ...").
    """
    try:
        return request.get_json(force=True, silent=False)
    except (BadRequest, RecursionError):
        # json refuses deep nesting with RecursionError, not ValueError.
        raise InvalidInput("the body must be JSON") from None


def json_object(*, required: bool, json_type: bool = False) -> dict[str, object]:
    """The body as a JSON object. `json_type`: only with Content-Type
    application/json, which a web page can send to another origin only after
    a CORS preflight that this API never answers, so that a page a device's
    browser opens cannot post registrations (a text/plain "simple request")."""
    if json_type and not request.is_json:
        raise InvalidInput("the body must be JSON sent as Content-Type: application/json")
    if not required and not request.get_data(cache=True).strip():
        return {}
    data = json_body()
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    return data
