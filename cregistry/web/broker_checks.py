"""The broker's check routes (/mqtt/user, /mqtt/acl, /mqtt/superuser): their
answers, whatever server carries them.

The one front that reads, parses, answers and encodes a check request is the
broker listener (broker_asgi.BrokerListener): uvicorn carries it on `serve`,
and a2wsgi wherever the broker app runs as WSGI (Flask's test client). The
wire format is go-auth's HTTP backend's: JSON, form or query string, POST,
PUT or GET; {"ok", "error"} with 200, 403, 400 or 503. Requests are counted
in the same metrics (web/metrics.py).

ROUTES maps each path to its Route: the fields are parsed and format-checked
once into the request value the Authorizer trusts (authorizer.py). `quick`
answers without I/O: the refusal of malformed fields, or from the worker's
caches for a caller that sends its change feed position
(X-Cregistry-Position), see followed_cache.py. `answer` does the rest, start
to finish on the thread it runs on (the listener's pool, under the deadline of
budget.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cregistry.authorizer import (
    AclRequest,
    Authorizer,
    ConnectRequest,
    Decision,
    SuperuserRequest,
    acl_request,
    connect_request,
    parse_acc,
    superuser_request,
)
from cregistry.errors import InvalidInput
from cregistry.web import metrics

log = logging.getLogger(__name__)

Answer = tuple[int, dict[str, Any]]  # HTTP status, JSON body
R = TypeVar("R")
METHODS = frozenset({"POST", "PUT", "GET"})  # go-auth's http_method
# A check path asked with a method go-auth never uses: 405, with the Allow header.
NOT_ALLOWED_BODY = b'{"ok":false,"error":"The method is not allowed for the requested URL."}'
ALLOW = ", ".join(sorted(METHODS))


POSITION_HEADER = "X-Cregistry-Position"  # the caller's change feed position (feed_follower.py)


class BrokerChecks:
    """The answers of the check routes (the broker listener carries them)."""

    def __init__(self, authorizer: Authorizer, *, max_body_bytes: int) -> None:
        self.authorizer = authorizer
        self.max_body_bytes = max_body_bytes
        self._counters: dict[tuple[str, str], Any] = {}  # CHECKS' children, looked up once

    def quick(self, route: Route[R], parsed: R | Decision, seen: str | None) -> Answer | None:
        """The answer without I/O: the refusal of malformed fields, or from
        this worker's caches (see followed_cache.py); None: ask `answer`."""
        decision = parsed if isinstance(parsed, Decision) else route.cached(self.authorizer, parsed, seen)
        if decision is None:
            return None
        metrics.CHECKS_WITHOUT_REDIS.labels(route.check).inc()
        return _answer(decision)

    def answer(self, route: Route[R], request: R, seen: str | None) -> Answer:
        """The answer, asking Redis (and bcrypt) as needed, all on the calling thread."""
        return _answer(route.full(self.authorizer, request, seen))

    def finish(self, route: Route[Any], status: int, body: dict[str, Any], started: float) -> bytes:
        """Count the answer (web/metrics.py) and encode it."""
        metrics.CHECK_SECONDS.labels(route.check).observe(time.perf_counter() - started)
        result = metrics.check_result(status)
        counter = self._counters.get((route.check, result))
        if counter is None:
            counter = self._counters[(route.check, result)] = metrics.CHECKS.labels(route.check, result)
        counter.inc()
        return _json_bytes(body)


def parse_params(content_type: str, body: bytes, query: bytes) -> dict[str, Any]:
    """go-auth sends JSON (http_params_mode json) or a form (form); GET may
    carry either in the body, or the fields in the query string."""
    mimetype = content_type.partition(";")[0].strip().lower()
    if mimetype == "application/json" or mimetype.endswith("+json") or body.lstrip()[:1] in (b"{", b"["):
        try:
            # Text first: json.loads of bytes guesses their encoding on every call.
            data = json.loads(body.decode() if body.isascii() else body)
        except (ValueError, RecursionError):
            # json refuses deep nesting with RecursionError, not ValueError.
            raise InvalidInput("the body must be JSON") from None
        if not isinstance(data, dict):
            raise InvalidInput("the body must be a JSON object")
        return data
    params: dict[str, Any] = _first_values(query)
    if mimetype == "application/x-www-form-urlencoded":
        params.update(_first_values(body))
    return params


def _first_values(encoded: bytes) -> dict[str, str]:
    """A query string or urlencoded form; the first of repeated fields counts."""
    values: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(encoded.decode("utf-8", "replace"), keep_blank_values=True):
        values.setdefault(name, value)
    return values


def parse_connect(params: dict[str, Any]) -> ConnectRequest | Decision:
    """/mqtt/user's fields: InvalidInput (400) when one is missing or not a
    string, the refusal (403) of any that break the format rules."""
    # The plugin sends the client certificate's SHA-256 and CN from a TLS
    # listener that requires one (SPEC §14); the password may then be absent.
    certificate = None
    if params.get("certfingerprint") is not None:
        certificate = _field(params, "certfingerprint"), _field(params, "certcn")
    password = params.get("password", "") if certificate is not None else _field(params, "password")
    if not isinstance(password, str):
        raise InvalidInput("password is missing or not a string")
    return connect_request(_field(params, "username"), password, _field(params, "clientid"), certificate)


def parse_acl(params: dict[str, Any]) -> AclRequest | Decision:
    fields = _field(params, "username"), _field(params, "clientid"), _field(params, "topic")
    return acl_request(*fields, parse_acc(params.get("acc")))


def parse_superuser(params: dict[str, Any]) -> SuperuserRequest | Decision:
    return superuser_request(_field(params, "username"))


@dataclasses.dataclass(frozen=True)
class Route(Generic[R]):
    """One check route: the check's name (the `route` label of its metrics),
    the parser of its fields into the request value the Authorizer trusts (or
    the refusal of malformed ones), and its two answers."""

    check: str
    parse: Callable[[dict[str, Any]], R | Decision]
    # From this worker's caches alone, without I/O; None: ask `full`.
    cached: Callable[[Authorizer, R, str | None], Decision | None]
    full: Callable[[Authorizer, R, str | None], Decision]


def _check_user(authorizer: Authorizer, request: ConnectRequest, _seen: str | None) -> Decision:
    return authorizer.check_user(request)  # a CONNECT that reaches Redis reads the newest data


def _not_cached(_authorizer: Authorizer, _request: object, _seen: str | None) -> None:
    return None


ROUTES: dict[str, Route[Any]] = {
    "/mqtt/user": Route(
        "user",
        parse_connect,
        Authorizer.check_user_cached,
        lambda authorizer, request, _: authorizer.check_user(request),
    ),
    "/mqtt/acl": Route("acl", parse_acl, Authorizer.check_acl_cached, Authorizer.check_acl),
    "/mqtt/superuser": Route("superuser", parse_superuser, _not_cached, Authorizer.check_superuser),
}


def _field(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise InvalidInput(f"{name} is missing or not a string")
    return value


def _answer(decision: Decision) -> Answer:
    body: dict[str, Any] = {"ok": decision.allowed, "error": decision.reason}
    if decision.unknown_user:
        body["unknown_user"] = True  # the plugin's plugin_opt_unknown_users defer (SPEC §11)
    return (200 if decision.allowed else 403), body


def _json_bytes(body: dict[str, Any]) -> bytes:
    """As the Flask apps' JSON (web/__init__.py): compact, ASCII, with <, > and & escaped."""
    text = json.dumps(body, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n").encode()
