"""Property-based tier: schemathesis reads GET /api/openapi.json from the real
`cregistry serve` and sends generated requests to every operation, valid and
invalid, with and without a valid token. Nothing may answer 5xx, and every
answer must be what the document says (status, content type, headers, body
schema), and invalid input must be refused with a 4xx. The 405 and 413 the
document promises on every path are checked directly.

Deterministic: a fixed seed and derandomized Hypothesis. Bounded: at most
FUZZ_EXAMPLES generated cases per operation and token (40; set
CREGISTRY_FUZZ_EXAMPLES for a longer hunt), no per-example deadline (the
requests go over the network), 10 s per request.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.generation.meta import TestPhase
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cregistry.config import Config
from cregistry.passwords import pairing_id
from cregistry.web import create_app, openapi
from harness.redis_server import RedisProcess
from harness.service import ServiceProcess, http, running_service
from tests.integration.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.fuzz

FUZZ_EXAMPLES = int(os.environ.get("CREGISTRY_FUZZ_EXAMPLES", "40"))
SEED = 20261201
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
DEVICE_PASSWORD = "k3H9-xq2"  # the document's example
SEEDED_NAMES = {
    "username": "gateway-1",
    "role": "sensors",
    "request_id": f"sensor-17:{pairing_id('sensor-17', DEVICE_PASSWORD)}",
    "name": "line3-2026-12",  # the document's example enrollment
}
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def service(redis_process: RedisProcess) -> Iterator[ServiceProcess]:
    """The service, with room for the wrong tokens the fuzz sends: past the
    per-address limit every answer would be 429 (a unit test covers that)."""
    with running_service(redis_process.url, ADMIN_TOKEN, {"CREGISTRY_CONSOLE_SIGNIN_LIMIT": "10000"}) as service:
        yield service


@pytest.fixture
def api_schema(service: ServiceProcess) -> Any:
    """The document as the service serves it, with data to find: the
    examples' user, role and pending request exist, and the registry is open."""
    seed_examples(service)
    schema = schemathesis.openapi.from_url(f"{service.api}/api/openapi.json", config=SchemathesisConfig(seed=SEED))
    schema.config.update(base_url=service.api, request_timeout=10)
    return schema


def seed_examples(service: ServiceProcess) -> None:
    def admin(method: str, path: str, body: Any = None) -> None:
        answer = http(method, service.api + path, json_body=body, token=ADMIN_TOKEN)
        assert answer.status < 300, (path, answer.status, answer.body)

    admin("POST", "/api/client-registry/unlock", {"seconds": 3600})
    admin("POST", "/api/users", {"username": "gateway-1", "password": "s3cret-pass"})
    admin("PUT", "/api/roles/sensors/permissions", [{"topic": "sensors/#", "access": "write"}])
    admin("PUT", "/api/users/gateway-1/roles", ["sensors"])
    admin("POST", "/api/enrollments", {"name": "line3-2026-12", "usernamePattern": "line3-*", "roles": ["sensors"]})
    registered = http(
        "POST",
        service.api + "/api/client-registry/register",
        json_body={"username": "sensor-17", "password": DEVICE_PASSWORD, "clientId": "sensor-17"},
    )
    assert registered.status == 202, registered.body


def local_document() -> dict[str, Any]:
    """The document built in this process from the code under test: its
    operations name the tests (the served one must be the same)."""
    app = create_app(Config(admin_token="collection-only-token"), listener="api", connection=fakeredis.FakeRedis())
    return openapi.build_document(app)


DOCUMENT = local_document()
OPERATIONS = [(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item]
ADMIN_OPERATIONS = [(m, p) for m, p in OPERATIONS if DOCUMENT["paths"][p][m.lower()].get("security") != []]


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def test_the_service_serves_the_document_of_its_code(service: ServiceProcess) -> None:
    assert http("GET", f"{service.api}/api/openapi.json").json() == json.loads(json.dumps(DOCUMENT))


def fuzz(schema: Any, method: str, path: str, session: requests.Session, headers: dict[str, str]) -> list[int]:
    """Run generated cases against one operation; returns the statuses seen."""
    operation = schema[path][method]
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE, phase=TestPhase.EXAMPLES),
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    names = re.findall(r"{(\w+)}", path)
    if names:
        # Generated names rarely exist; these do (seed_examples).
        seeded = {name: SEEDED_NAMES[name] for name in names}
        strategies += [
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters=seeded),
            operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=seeded),
        ]
    cases = st.one_of(strategies)
    statuses: list[int] = []

    @FUZZ_SETTINGS
    @given(case=cases)
    def run(case: Any) -> None:
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"} | headers
        response = case.call_and_validate(session=session, checks=CHECKS)
        statuses.append(response.status_code)

    run()
    return statuses


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_with_the_admin_token(api_schema: Any, session: requests.Session, method: str, path: str) -> None:
    statuses = fuzz(api_schema, method, path, session, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert statuses
    assert 401 not in statuses


@pytest.mark.parametrize(("method", "path"), ADMIN_OPERATIONS, ids=[f"{m} {p}" for m, p in ADMIN_OPERATIONS])
def test_without_a_valid_token(api_schema: Any, session: requests.Session, method: str, path: str) -> None:
    statuses = fuzz(api_schema, method, path, session, {"Authorization": "Bearer not-the-token"})
    statuses += fuzz(api_schema, method, path, session, {})
    assert set(statuses) == {401}


@pytest.mark.parametrize("path", list(DOCUMENT["paths"]))
def test_other_methods_answer_405_as_documented(service: ServiceProcess, path: str) -> None:
    """What the document says of every path: a method it does not list answers 405 with Allow."""
    url = service.api + re.sub(r"{(\w+)}", lambda match: SEEDED_NAMES[match[1]], path)
    documented = {method.upper() for method in DOCUMENT["paths"][path]}
    for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - documented):
        response = requests.request(method, url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
        assert response.status_code == 405, (method, path)
        assert documented <= set(response.headers["Allow"].replace(" ", "").split(",")), (method, path)
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["ok"] is False


BODY_OPERATIONS = [(m, p) for m, p in OPERATIONS if "requestBody" in DOCUMENT["paths"][p][m.lower()]]


@pytest.mark.parametrize(("method", "path"), BODY_OPERATIONS, ids=[f"{m} {p}" for m, p in BODY_OPERATIONS])
def test_a_body_over_256_kib_answers_413_as_documented(service: ServiceProcess, method: str, path: str) -> None:
    seed_examples(service)
    url = service.api + re.sub(r"{(\w+)}", lambda match: SEEDED_NAMES[match[1]], path)
    body = json.dumps({"padding": "x" * 300_000})
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    response = requests.request(method, url, data=body, headers=headers, timeout=10)
    assert response.status_code == 413
    assert "413" in DOCUMENT["paths"][path][method.lower()]["responses"]
    assert response.json()["ok"] is False
