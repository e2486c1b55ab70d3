"""GET /api/openapi.json: the OpenAPI 3.1 description of the API listener.

The operations are described here, keyed by method and Flask rule; the
document served lists those whose route the app really has, so it never
promises a route that is not there. tests/unit/test_openapi.py walks the
app's url_map and fails when a route has no description here, or a
description no route. Console pages (another blueprint, HTML) are left out.
"""

from __future__ import annotations

import re

from flask import Blueprint, Flask, Response, current_app, jsonify

from cregistry import enrollments
from cregistry.audit import MAX_LISTED as MAX_AUDIT_LISTED
from cregistry.config import MAX_UNLOCK_SECONDS
from cregistry.pending import MAX_PAGE
from cregistry.registration import MAX_CONTEXT_BYTES

bp = Blueprint("openapi", __name__)

# Routes of the API listener that are not part of the JSON API: the
# console's pages (blueprint "console") and its "GET /" redirect.
UNDESCRIBED_ENDPOINTS = ("static", "console.", "console_")
UNDESCRIBED_PREFIXES = ("/console",)
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})

Json = dict[str, object]


@bp.get("/api/openapi.json")
def openapi_document() -> Response:
    document = current_app.extensions.get("cregistry.openapi")
    if document is None:
        document = current_app.extensions["cregistry.openapi"] = build_document(current_app)
    return jsonify(document)


def described_routes(app: Flask) -> set[tuple[str, str]]:
    """(METHOD, OpenAPI path) of every route of `app` that belongs in the document."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(UNDESCRIBED_ENDPOINTS) or rule.rule.startswith(UNDESCRIBED_PREFIXES):
            continue
        for method in rule.methods or ():
            if method not in IGNORED_METHODS:
                routes.add((method, openapi_path(rule.rule)))
    return routes


def openapi_path(rule: str) -> str:
    """Flask's /api/users/<username> as OpenAPI's /api/users/{username}."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def build_document(app: Flask) -> Json:
    paths: dict[str, Json] = {}
    for method, path in sorted(described_routes(app)):
        operation = OPERATIONS.get((method, path))
        if operation is not None:
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cregistry API",
            "version": "1",
            "description": (
                "Device registration and the admin API of cregistry (the API listener, CREGISTRY_API_LISTEN)."
                " The broker routes and /metrics are on the broker listener and are not part of this document."
                ' Every error answer is `{"ok": false, "error": "..."}`. A method a path does not support'
                " answers 405 with an Allow header; a body over 256 KiB answers 413; a path that does not exist"
                " answers 404."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "devices", "description": "Self-registration of devices (no token)."},
            {"name": "registry", "description": "Unlock, lock and the pending requests."},
            {"name": "users", "description": "Users, their permissions, roles and superuser flag."},
            {"name": "roles", "description": "Roles: named sets of permissions."},
            {"name": "audit", "description": "The audit trail."},
            {"name": "enrollments", "description": "Fleet enrollment: a token for a batch of devices."},
            {"name": "service", "description": "Health and this document (no token)."},
        ],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": COMPONENTS,
    }


# -- building blocks ---------------------------------------------------------
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$"
PAIRING_ID = {"type": "string", "pattern": "^[0-9a-f]{6}$", "example": "48ff1f"}
TIME = {"type": "string", "format": "date-time", "example": "2026-12-01T08:00:00Z"}


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Json, example: object = None) -> Json:
    media: Json = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def answer(description: str, schema: Json, example: object = None) -> Json:
    return {"description": description, "content": json_content(schema, example)}


def error(description: str) -> Json:
    return answer(description, ref("Error"))


def common(*codes: int) -> dict[str, Json]:
    return {str(code): {"$ref": f"#/components/responses/{COMMON_RESPONSES[code]}"} for code in codes}


COMMON_RESPONSES = {
    400: "InvalidInput",
    401: "Unauthorized",
    404: "NotFound",
    429: "TooManyWrongTokens",
    413: "TooLarge",
    503: "StorageUnavailable",
}


def path_parameter(name: str, description: str, schema: Json) -> Json:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


USERNAME_PARAMETER = path_parameter(
    "username", "A username.", {"type": "string", "pattern": NAME_PATTERN, "example": "sensor-17"}
)
ROLE_PARAMETER = path_parameter(
    "role", "A role name.", {"type": "string", "pattern": NAME_PATTERN, "example": "sensors"}
)
REQUEST_ID_PARAMETER = path_parameter(
    "request_id",
    "A pending request: `username:pairingId`.",
    {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}:[0-9a-f]{6}$", "example": "sensor-17:48ff1f"},
)


def query_integer(name: str, description: str, minimum: int, maximum: int, default: int) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default},
    }


def body(schema: Json, example: object, *, required: bool = True) -> Json:
    return {"required": required, "content": json_content(schema, example)}


def admin(summary: str, tag: str, responses: dict[str, Json], **extra: object) -> Json:
    """An operation that needs the bearer token."""
    return {"summary": summary, "tags": [tag], "responses": {**responses, **common(401, 429, 503)}, **extra}


def public(summary: str, tag: str, responses: dict[str, Json], **extra: object) -> Json:
    return {"summary": summary, "tags": [tag], "security": [], "responses": responses, **extra}


USER_EXAMPLE = {
    "username": "sensor-17",
    "createdAt": "2026-12-01T08:00:00Z",
    "superuser": False,
    "clientId": "sensor-17",
    "clientIds": ["sensor-17"],
    "pairingId": "48ff1f",
    "source": "mqtt",
    "roles": [],
    "permissions": [{"topic": "devices/%u/#", "access": "readWrite"}],
}
REQUEST_EXAMPLE = {
    "id": "sensor-17:48ff1f",
    "username": "sensor-17",
    "pairingId": "48ff1f",
    "clientId": "sensor-17",
    "source": "rest",
    "firstSeen": "2026-12-01T08:00:00Z",
    "lastSeen": "2026-12-01T08:00:05Z",
    "attempts": 2,
    "context": {"model": "TH-2"},
    "contested": False,
    "refusedAttempts": 0,
    "certificateRequest": None,
}
ROLE_EXAMPLE = {"name": "sensors", "permissions": [{"topic": "sensors/#", "access": "write"}], "members": ["sensor-17"]}
STATE_EXAMPLE = {"locked": False, "secondsLeft": 300}
PERMISSIONS_EXAMPLE = [{"topic": "devices/%u/#", "access": "readWrite"}, {"topic": "config/%c", "access": "read"}]

SCHEMAS: Json = {
    "Error": {
        "type": "object",
        "required": ["ok", "error"],
        "properties": {"ok": {"const": False}, "error": {"type": "string"}},
        "example": {"ok": False, "error": "no user 'sensor-17'"},
    },
    "RegistrationError": {
        "type": "object",
        "required": ["ok", "error", "status"],
        "properties": {
            "ok": {"const": False},
            "error": {"type": "string"},
            "status": {"enum": ["locked", "denied", "conflict", "limited", "refused"]},
        },
    },
    "Health": {
        "type": "object",
        "required": ["ok", "error"],
        "properties": {"ok": {"type": "boolean"}, "error": {"type": "string"}},
    },
    "RegistryState": {
        "type": "object",
        "required": ["locked", "secondsLeft"],
        "properties": {
            "locked": {"type": "boolean", "description": "true while new requests are refused (no unlock key)"},
            "secondsLeft": {
                "type": "integer",
                "minimum": 0,
                "description": "seconds until it locks again; 0 if locked",
            },
        },
        "example": STATE_EXAMPLE,
    },
    "Permission": {
        "type": "object",
        "required": ["topic", "access"],
        "additionalProperties": False,
        "properties": {
            "topic": {
                "type": "string",
                "description": "An MQTT topic pattern with `+`, `#`, `%u` (username) and `%c` (client id).",
            },
            "access": {"enum": ["read", "write", "readWrite"]},
        },
        "example": {"topic": "devices/%u/#", "access": "readWrite"},
    },
    "User": {
        "type": "object",
        "required": [
            "username",
            "createdAt",
            "superuser",
            "clientId",
            "clientIds",
            "pairingId",
            "source",
            "roles",
            "permissions",
        ],
        "properties": {
            "username": {"type": "string"},
            "createdAt": TIME,
            "superuser": {"type": "boolean"},
            "clientId": {"type": ["string", "null"], "description": "The client ID the user registered with."},
            "clientIds": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The user's own client IDs: another user may not connect with them (SPEC §4).",
            },
            "pairingId": {"type": ["string", "null"]},
            "source": {"type": "string", "description": "`mqtt`, `rest` (approved requests) or `operator`"},
            "roles": {"type": "array", "items": {"type": "string"}},
            "permissions": {"type": "array", "items": ref("Permission")},
            "certificate": {
                "description": "The user's current client certificate (docs/certificates.md), or null.",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["serial", "notAfter"],
                        "properties": {"serial": {"type": "string", "description": "hex"}, "notAfter": TIME},
                    },
                ],
            },
        },
        "example": USER_EXAMPLE,
    },
    "PendingRequest": {
        "type": "object",
        "required": [
            "id",
            "username",
            "pairingId",
            "clientId",
            "source",
            "firstSeen",
            "lastSeen",
            "attempts",
            "context",
            "contested",
        ],
        "properties": {
            "id": {
                "type": "string",
                "description": "`username:pairingId`, or `username:pairingId-N` for a later candidate"
                " sharing the pairing ID.",
            },
            "username": {"type": "string"},
            "pairingId": PAIRING_ID,
            "clientId": {"type": "string"},
            "source": {"enum": ["mqtt", "rest"]},
            "firstSeen": TIME,
            "lastSeen": TIME,
            "attempts": {"type": "integer", "minimum": 1},
            "context": {"type": ["object", "null"]},
            "contested": {
                "type": "boolean",
                "description": "Another candidate for the username has the same pairing ID: approving needs force.",
            },
            "refusedAttempts": {
                "type": "integer",
                "minimum": 0,
                "description": "The username's attempts refused over the per-username cap (a sign of squatting).",
            },
            "certificateRequest": {
                "description": "The CSR sent with the request (a certificate is issued on approval), or null.",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["keyType", "publicKeySha256"],
                        "properties": {
                            "keyType": {"type": "string", "description": "`RSA 2048`, `EC P-256`, ..."},
                            "publicKeySha256": {"type": "string", "description": "SHA-256 of the public key (hex)"},
                        },
                    },
                ],
            },
        },
        "example": REQUEST_EXAMPLE,
    },
    "Role": {
        "type": "object",
        "required": ["name", "permissions", "members"],
        "properties": {
            "name": {"type": "string"},
            "permissions": {"type": "array", "items": ref("Permission")},
            "members": {"type": "array", "items": {"type": "string"}},
        },
        "example": ROLE_EXAMPLE,
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "time", "actor", "action", "target", "details"],
        "properties": {
            "id": {"type": "string"},
            "time": TIME,
            "actor": {"type": "string", "description": "`api:<token name>` or `cli:<login name>`"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "details": {"type": "object"},
        },
    },
    "Permissions": {
        "type": "array",
        "items": ref("Permission"),
        "maxItems": 1000,
        "description": "Replaces the whole list; a topic may appear once.",
    },
}

COMPONENTS: Json = {
    "securitySchemes": {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "CREGISTRY_ADMIN_TOKEN, or one of CREGISTRY_ADMIN_TOKENS.",
        }
    },
    "schemas": SCHEMAS,
    "responses": {
        "InvalidInput": error("Invalid input: the body, a field, a name or a query parameter breaks the rules."),
        "Unauthorized": {
            "description": "No valid `Authorization: Bearer <token>` header.",
            "headers": {"WWW-Authenticate": {"schema": {"const": "Bearer"}}},
            "content": json_content(ref("Error")),
        },
        "NotFound": error("No such user, role or request."),
        "TooManyWrongTokens": {
            "description": "Too many wrong admin tokens from this client address (console sign-ins count too): "
            "refused without looking at the token until the window ends.",
            "headers": {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}},
            "content": json_content(ref("Error")),
        },
        "TooLarge": error("The body is larger than 256 KiB."),
        "MethodNotAllowed": {
            "description": "The path does not support this method (answered on every path).",
            "headers": {"Allow": {"schema": {"type": "string"}}},
            "content": json_content(ref("Error")),
        },
        "StorageUnavailable": error("Redis is unreachable, slow or refuses the write; nothing was changed."),
    },
}

USER_ANSWER = answer("The user, without its password hash.", ref("User"), USER_EXAMPLE)
STATE_ANSWER = answer("The registry's state.", ref("RegistryState"), STATE_EXAMPLE)
ROLE_ANSWER = answer("The role.", ref("Role"), ROLE_EXAMPLE)

OPERATIONS: dict[tuple[str, str], Json] = {
    # -- service --------------------------------------------------------------
    ("GET", "/healthz"): public(
        "The process answers",
        "service",
        {"200": answer("Up.", ref("Health"), {"ok": True, "error": ""})},
        operationId="healthz",
    ),
    ("GET", "/readyz"): public(
        "Redis answers",
        "service",
        {
            "200": answer("Ready.", ref("Health"), {"ok": True, "error": ""}),
            "503": answer("Redis does not answer (within 2 s).", ref("Health")),
        },
        operationId="readyz",
    ),
    ("GET", "/api/openapi.json"): public(
        "This document",
        "service",
        {"200": answer("The OpenAPI 3.1 document of the API listener.", {"type": "object"})},
        operationId="openapi",
    ),
    # -- devices --------------------------------------------------------------
    ("POST", "/api/client-registry/register"): public(
        "A device asks to be registered (and polls by repeating the request)",
        "devices",
        {
            "201": answer(
                "The user exists with these credentials; with its client certificate if it has one"
                " (issued at approval, or renewed now for a `csr` with a new key).",
                {
                    "type": "object",
                    "required": ["status", "username", "pairingId"],
                    "properties": {
                        "status": {"const": "granted"},
                        "username": {"type": "string"},
                        "pairingId": PAIRING_ID,
                        "certificate": {"type": "string", "description": "PEM, signed by the registry CA"},
                        "caCertificate": {"type": "string", "description": "PEM of the registry CA"},
                    },
                },
                {"status": "granted", "username": "sensor-17", "pairingId": "48ff1f"},
            ),
            "202": answer(
                "A request is pending (recorded now, or earlier).",
                {
                    "type": "object",
                    "required": ["status", "pairingId"],
                    "properties": {"status": {"const": "pending"}, "pairingId": PAIRING_ID},
                },
                {"status": "pending", "pairingId": "48ff1f"},
            ),
            **common(400),
            "403": answer(
                "An operator denied these credentials; or, with `enrollment`, the token is unknown, revoked,"
                " expired or used up, or the username is not the enrollment's (one error text for each); or a"
                " `csr` of a known user that has no valid certificate to renew (a first certificate needs an"
                " approval).",
                ref("RegistrationError"),
            ),
            "409": answer(
                "The username exists with other credentials, or the client ID is another user's own (SPEC §4).",
                ref("RegistrationError"),
            ),
            **common(413),
            "423": answer("Locked, and no pending request with these credentials.", ref("RegistrationError")),
            "429": answer(
                "A pending cap is reached (nothing recorded), or too many wrong passwords for this username,"
                " or (with `enrollment`) too many refused enrollment registrations from this address.",
                ref("RegistrationError"),
            ),
            **common(503),
        },
        operationId="register",
        requestBody=body(
            {
                "type": "object",
                "required": ["username", "password"],
                "properties": {
                    "username": {"type": "string", "pattern": NAME_PATTERN},
                    "password": {
                        "type": "string",
                        "minLength": 5,
                        "description": "At least 5 characters (CREGISTRY_PASSWORD_MIN_LENGTH), at most 72 bytes"
                        " in UTF-8, no U+0000.",
                    },
                    "clientId": {"type": "string"},
                    "context": {"type": "object", "description": f"At most {MAX_CONTEXT_BYTES} bytes of JSON."},
                    "csr": {
                        "type": "string",
                        "description": "A PEM PKCS#10 request, subject CN = username, RSA of 2048 bits or more or"
                        " EC P-256/P-384, without extensions; a 400 without a registry CA (docs/certificates.md).",
                    },
                    "enrollment": {
                        "type": "string",
                        "description": "An enrollment token: registers at once (201), locked or not.",
                    },
                },
            },
            {"username": "sensor-17", "password": "k3H9-xq2", "clientId": "sensor-17", "context": {"model": "TH-2"}},
        ),
    ),
    # -- registry -------------------------------------------------------------
    ("GET", "/api/client-registry"): admin(
        "Whether the registry is locked", "registry", {"200": STATE_ANSWER}, operationId="registryStatus"
    ),
    ("POST", "/api/client-registry/unlock"): admin(
        "Unlock: record unknown devices' attempts for a while",
        "registry",
        {"200": STATE_ANSWER, **common(400, 413)},
        operationId="unlock",
        requestBody=body(
            {
                "type": "object",
                "properties": {
                    "seconds": {
                        "type": ["integer", "null"],
                        "minimum": 1,
                        "maximum": MAX_UNLOCK_SECONDS,
                        "description": "Absent or null: CREGISTRY_UNLOCK_SECONDS (300).",
                    }
                },
            },
            {"seconds": 600},
            required=False,
        ),
    ),
    ("POST", "/api/client-registry/lock"): admin(
        "Lock: refuse new requests", "registry", {"200": STATE_ANSWER}, operationId="lock"
    ),
    ("GET", "/api/client-registry/requests"): admin(
        "The pending requests, least recently seen first",
        "registry",
        {
            "200": answer(
                "One page of pending requests.",
                {
                    "type": "object",
                    "required": ["requests", "total", "offset", "limit"],
                    "properties": {
                        "requests": {"type": "array", "items": ref("PendingRequest")},
                        "total": {"type": "integer", "minimum": 0},
                        "offset": {"type": "integer", "minimum": 0},
                        "limit": {"type": "integer", "minimum": 1},
                    },
                },
                {"requests": [REQUEST_EXAMPLE], "total": 1, "offset": 0, "limit": MAX_PAGE},
            ),
            **common(400),
        },
        operationId="listRequests",
        parameters=[
            query_integer("offset", "Requests to skip.", 0, 10**9, 0),
            query_integer("limit", "Requests on the page.", 1, MAX_PAGE, MAX_PAGE),
        ],
    ),
    ("POST", "/api/client-registry/requests/{request_id}/approve"): admin(
        "Approve a request: create the user with its hash and no permissions",
        "registry",
        {
            "201": answer("The new user.", ref("User"), USER_EXAMPLE),
            **common(400, 404, 413),
            "409": error(
                "The username is taken, the request is contested and force was not given, or the request's"
                " client ID is another user's own."
            ),
        },
        operationId="approve",
        parameters=[REQUEST_ID_PARAMETER],
        requestBody=body(
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "force": {
                        "type": "boolean",
                        "description": "Approve a contested request (the operator knows it is the device's).",
                    }
                },
            },
            {"force": True},
            required=False,
        ),
    ),
    ("DELETE", "/api/client-registry/requests"): admin(
        "Remove every pending request (a flood); none is denied",
        "registry",
        {
            "200": answer(
                "How many were removed.",
                {
                    "type": "object",
                    "required": ["removed"],
                    "properties": {"removed": {"type": "integer", "minimum": 0}},
                },
                {"removed": 12},
            ),
        },
        operationId="purgeRequests",
    ),
    ("POST", "/api/client-registry/requests/{request_id}/deny"): admin(
        "Deny a request",
        "registry",
        {
            "200": answer(
                "The denied request.",
                {"type": "object", "required": ["denied"], "properties": {"denied": ref("PendingRequest")}},
                {"denied": REQUEST_EXAMPLE},
            ),
            **common(404),
        },
        operationId="deny",
        parameters=[REQUEST_ID_PARAMETER],
    ),
    ("POST", "/api/client-registry/requests/{request_id}/deny-all"): admin(
        "Deny every request for this request's username (a squatted username)",
        "registry",
        {
            "200": answer(
                "The denied requests; the username's count of refused attempts starts again.",
                {
                    "type": "object",
                    "required": ["denied"],
                    "properties": {"denied": {"type": "array", "items": ref("PendingRequest")}},
                },
                {"denied": [REQUEST_EXAMPLE]},
            ),
            **common(404),
        },
        operationId="denyAll",
        parameters=[REQUEST_ID_PARAMETER],
    ),
    # -- users ----------------------------------------------------------------
    ("GET", "/api/users"): admin(
        "Every user",
        "users",
        {
            "200": answer(
                "The users.",
                {
                    "type": "object",
                    "required": ["users"],
                    "properties": {"users": {"type": "array", "items": ref("User")}},
                },
                {"users": [USER_EXAMPLE]},
            )
        },
        operationId="listUsers",
    ),
    ("POST", "/api/users"): admin(
        "Create a user (an operator-made one, source `operator`)",
        "users",
        {
            "201": answer("The new user.", ref("User"), USER_EXAMPLE),
            **common(400),
            "409": error("The username exists."),
            **common(413),
        },
        operationId="addUser",
        requestBody=body(
            {
                "type": "object",
                "required": ["username", "password"],
                "properties": {
                    "username": {"type": "string", "pattern": NAME_PATTERN},
                    "password": {"type": "string", "minLength": 5},
                    "superuser": {"type": "boolean", "default": False},
                },
            },
            {"username": "gateway-1", "password": "s3cret-pass", "superuser": False},
        ),
    ),
    ("GET", "/api/users/{username}"): admin(
        "One user",
        "users",
        {"200": USER_ANSWER, **common(400, 404)},
        operationId="showUser",
        parameters=[USERNAME_PARAMETER],
    ),
    ("DELETE", "/api/users/{username}"): admin(
        "Delete a user",
        "users",
        {
            "200": answer(
                "Deleted.",
                {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}},
                {"deleted": "sensor-17"},
            ),
            **common(400, 404),
        },
        operationId="deleteUser",
        parameters=[USERNAME_PARAMETER],
    ),
    ("DELETE", "/api/users/{username}/certificate"): admin(
        "Revoke the user's client certificate; its clients are disconnected",
        "users",
        {
            "200": answer(
                "Revoked.",
                {
                    "type": "object",
                    "required": ["username", "revoked"],
                    "properties": {"username": {"type": "string"}, "revoked": {"type": "string"}},
                },
                {"username": "sensor-17", "revoked": "5f1c0e2a9b"},
            ),
            "403": answer("The user has no certificate.", ref("Error")),
            **common(400, 404),
        },
        operationId="revokeUserCertificate",
        parameters=[USERNAME_PARAMETER],
    ),
    ("PUT", "/api/users/{username}/permissions"): admin(
        "Replace the user's direct permissions",
        "users",
        {"200": USER_ANSWER, **common(400, 404, 413)},
        operationId="setUserPermissions",
        parameters=[USERNAME_PARAMETER],
        requestBody=body(ref("Permissions"), PERMISSIONS_EXAMPLE),
    ),
    ("PUT", "/api/users/{username}/client-ids"): admin(
        "Replace the user's own client IDs",
        "users",
        {
            "200": USER_ANSWER,
            "409": answer("A client ID belongs to another user (it is never taken from it).", ref("Error")),
            **common(400, 404, 413),
        },
        operationId="setUserClientIds",
        parameters=[USERNAME_PARAMETER],
        requestBody=body(
            {
                "type": "array",
                "maxItems": 100,
                "uniqueItems": True,
                "items": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^+#]*$"},
            },
            ["sensor-17", "sensor-17-backup"],
        ),
    ),
    ("PUT", "/api/users/{username}/password"): admin(
        "Give the user a new password; the old one stops working everywhere",
        "users",
        {"200": USER_ANSWER, **common(400, 404, 413)},
        operationId="setUserPassword",
        parameters=[USERNAME_PARAMETER],
        requestBody=body(
            {
                "type": "object",
                "required": ["password"],
                "additionalProperties": False,
                "properties": {"password": {"type": "string", "minLength": 5}},
            },
            {"password": "n3w-pass-word"},
        ),
    ),
    ("PUT", "/api/users/{username}/roles"): admin(
        "Replace the user's roles",
        "users",
        {"200": USER_ANSWER, **common(400, 404, 413)},
        operationId="setUserRoles",
        parameters=[USERNAME_PARAMETER],
        requestBody=body({"type": "array", "items": {"type": "string", "pattern": NAME_PATTERN}}, ["sensors"]),
    ),
    ("PUT", "/api/users/{username}/superuser"): admin(
        "Set or clear the superuser flag (superusers pass every ACL check)",
        "users",
        {"200": USER_ANSWER, **common(400, 404, 413)},
        operationId="setSuperuser",
        parameters=[USERNAME_PARAMETER],
        requestBody=body(
            {"type": "object", "required": ["superuser"], "properties": {"superuser": {"type": "boolean"}}},
            {"superuser": True},
        ),
    ),
    ("DELETE", "/api/users/{username}/failures"): admin(
        "Lift the guessing limit of a username",
        "users",
        {
            "200": answer(
                "How many failed attempts were forgotten.",
                {
                    "type": "object",
                    "required": ["username", "cleared"],
                    "properties": {"username": {"type": "string"}, "cleared": {"type": "integer", "minimum": 0}},
                },
                {"username": "sensor-17", "cleared": 12},
            ),
            **common(400, 404),
        },
        operationId="clearFailures",
        parameters=[USERNAME_PARAMETER],
    ),
    # -- roles ----------------------------------------------------------------
    ("GET", "/api/roles"): admin(
        "Every role",
        "roles",
        {
            "200": answer(
                "The roles.",
                {
                    "type": "object",
                    "required": ["roles"],
                    "properties": {"roles": {"type": "array", "items": ref("Role")}},
                },
                {"roles": [ROLE_EXAMPLE]},
            )
        },
        operationId="listRoles",
    ),
    ("GET", "/api/roles/{role}"): admin(
        "One role",
        "roles",
        {"200": ROLE_ANSWER, **common(400, 404)},
        operationId="showRole",
        parameters=[ROLE_PARAMETER],
    ),
    ("PUT", "/api/roles/{role}/permissions"): admin(
        "Create the role or replace its permissions",
        "roles",
        {"200": ROLE_ANSWER, **common(400, 413)},
        operationId="setRolePermissions",
        parameters=[ROLE_PARAMETER],
        requestBody=body(ref("Permissions"), [{"topic": "sensors/#", "access": "write"}]),
    ),
    ("DELETE", "/api/roles/{role}"): admin(
        "Delete the role and take it from its members",
        "roles",
        {
            "200": answer(
                "Deleted.",
                {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}},
                {"deleted": "sensors"},
            ),
            **common(400, 404),
        },
        operationId="deleteRole",
        parameters=[ROLE_PARAMETER],
    ),
    # -- audit ----------------------------------------------------------------
    ("GET", "/api/audit"): admin(
        "The audit trail, newest first",
        "audit",
        {
            "200": answer(
                "The newest entries.",
                {
                    "type": "object",
                    "required": ["entries"],
                    "properties": {"entries": {"type": "array", "items": ref("AuditEntry")}},
                },
                {
                    "entries": [
                        {
                            "id": "1764576000000-0",
                            "time": "2026-12-01T08:00:00Z",
                            "actor": "api:admin",
                            "action": "registry.unlock",
                            "target": "registry",
                            "details": {"seconds": 300},
                        }
                    ]
                },
            ),
            **common(400),
        },
        operationId="audit",
        parameters=[query_integer("limit", "Entries to show.", 1, MAX_AUDIT_LISTED, 100)],
    ),
}


# -- enrollments (enrollments.py) ----------------------------------------------
ENROLLMENT_EXAMPLE = {
    "name": "line3-2026-12",
    "usernamePattern": "line3-*",
    "roles": ["sensors"],
    "maxUses": 500,
    "usesLeft": 498,
    "expiresAt": "2026-12-02T08:00:00Z",
    "createdBy": "api:admin",
    "createdAt": "2026-12-01T08:00:00Z",
    "removedUsers": [],
}
SCHEMAS["Enrollment"] = {
    "type": "object",
    "required": list(ENROLLMENT_EXAMPLE),
    "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "usernamePattern": {"type": "string", "description": "A glob over usernames (`*`, `?`, `[...]`)."},
        "roles": {"type": "array", "items": {"type": "string"}},
        "maxUses": {"type": "integer", "minimum": 1, "maximum": enrollments.MAX_USES},
        "usesLeft": {"type": "integer", "minimum": 0},
        "expiresAt": TIME,
        "createdBy": {"type": "string"},
        "createdAt": TIME,
        "removedUsers": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Users it created that an operator deleted: they cannot register through it again.",
        },
    },
    "example": ENROLLMENT_EXAMPLE,
}
ENROLLMENT_NAME_PARAMETER = path_parameter(
    "name", "An enrollment's name.", {"type": "string", "pattern": NAME_PATTERN, "example": "line3-2026-12"}
)
OPERATIONS.update(
    {
        ("POST", "/api/enrollments"): admin(
            "Create an enrollment; the answer carries its token, this once",
            "enrollments",
            {
                "201": answer(
                    "The enrollment and its token (only a keyed digest of it is stored).",
                    {"allOf": [ref("Enrollment"), {"type": "object", "required": ["token"]}]},
                    {**ENROLLMENT_EXAMPLE, "usesLeft": 500, "token": "kq0B5b3nB9r8tZ0mF1x2yQ7cV4eW6aL8sD3hJ5gK9pU"},
                ),
                **common(400, 413),
                "409": error("An enrollment with that name exists."),
            },
            operationId="createEnrollment",
            requestBody=body(
                {
                    "type": "object",
                    "required": ["name", "usernamePattern"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "pattern": NAME_PATTERN},
                        "usernamePattern": {"type": "string", "maxLength": enrollments.MAX_PATTERN_LENGTH},
                        "roles": {
                            "type": "array",
                            "items": {"type": "string"},
                            "maxItems": enrollments.MAX_ROLES,
                            "description": "Existing roles, given to every user the enrollment creates.",
                        },
                        "maxUses": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": enrollments.MAX_USES,
                            "default": enrollments.DEFAULT_MAX_USES,
                        },
                        "expiresIn": {
                            "type": "integer",
                            "minimum": enrollments.MIN_EXPIRES_IN,
                            "maximum": enrollments.MAX_EXPIRES_IN,
                            "default": enrollments.DEFAULT_EXPIRES_IN,
                            "description": "Seconds.",
                        },
                    },
                },
                {
                    "name": "line3-2026-12",
                    "usernamePattern": "line3-*",
                    "roles": ["sensors"],
                    "maxUses": 500,
                    "expiresIn": 86400,
                },
            ),  # fmt: skip
        ),
        ("GET", "/api/enrollments"): admin(
            "Every live enrollment (never a token)",
            "enrollments",
            {
                "200": answer(
                    "The enrollments.",
                    {
                        "type": "object",
                        "required": ["enrollments"],
                        "properties": {"enrollments": {"type": "array", "items": ref("Enrollment")}},
                    },
                    {"enrollments": [ENROLLMENT_EXAMPLE]},
                )
            },
            operationId="listEnrollments",
        ),
        ("DELETE", "/api/enrollments/{name}"): admin(
            "Revoke an enrollment: its token registers nobody from now on (its users stay)",
            "enrollments",
            {
                "200": answer(
                    "Revoked.",
                    {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}},
                    {"deleted": "line3-2026-12"},
                ),
                **common(400, 404),
            },
            operationId="deleteEnrollment",
            parameters=[ENROLLMENT_NAME_PARAMETER],
        ),
        ("DELETE", "/api/enrollments/{name}/removed-users/{username}"): admin(
            "Forget that an operator deleted this user: it may register through the enrollment again",
            "enrollments",
            {
                "200": answer("The enrollment.", ref("Enrollment"), ENROLLMENT_EXAMPLE),
                **common(400, 404),
            },
            operationId="forgetRemovedUser",
            parameters=[ENROLLMENT_NAME_PARAMETER, USERNAME_PARAMETER],
        ),
    }
)
