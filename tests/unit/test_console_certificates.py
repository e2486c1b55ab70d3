"""The console's certificate pieces (SPEC §10, §14) through Flask's test client:
a pending request's CSR, the user's certificate and its revocation."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from cregistry import passwords, services
from cregistry.config import Config

from .conftest import ADMIN_TOKEN
from .test_certificates import ca_dir, make_csr  # noqa: F401
from .test_console import alerts, app, client, domain, flashes, operator, post  # noqa: F401

SENSOR = "sensor-1"
SENSOR_PAGE = f"/console/users/{SENSOR}"
CONFIRM = f"/console/users/{SENSOR}/certificate/revoke"


@pytest.fixture
def config(ca_dir: Path) -> Config:  # noqa: F811
    return Config(
        bcrypt_cost=4,
        admin_token=ADMIN_TOKEN,
        session_secret="s" * 40,
        ca_cert=str(ca_dir / "ca.crt"),
        ca_key=str(ca_dir / "ca.key"),
    )


def pending_with_csr(domain: services.Services, username: str = SENSOR) -> tuple[str, dict[str, str]]:  # noqa: F811
    """A pending REST request carrying a CSR: its console id and its certificateRequest."""
    domain.redis.set(domain.keys.unlock(), "1", ex=300)
    csr = domain.certificates.check_csr(make_csr(username)[0], username)
    domain.registration.attempt(username, "secret1", "", "rest", None, csr=csr)
    [request] = domain.requests.requests_for(username)
    assert request.certificate_request is not None
    return f"{username}:{passwords.pairing_id(username, 'secret1')}", request.certificate_request


def with_certificate(operator: FlaskClient, domain: services.Services) -> str:  # noqa: F811
    """SENSOR allowed in the console with its CSR: its certificate's serial."""
    request_id, _ = pending_with_csr(domain)
    assert post(operator, f"/console/requests/{request_id}/approve").status_code == 303
    certificate = domain.users.get(SENSOR).certificate
    assert certificate is not None
    return certificate.serial


def test_a_pending_csr_is_shown_with_its_key_type_and_fingerprint(
    operator: FlaskClient,  # noqa: F811
    domain: services.Services,  # noqa: F811
) -> None:
    request_id, requested = pending_with_csr(domain)
    domain.registration.attempt("plain-1", "secret1", "", "rest", None)
    words = f"Requested: EC P-256 key, public key SHA-256 {requested['publicKeySha256']}"
    assert len(requested["publicKeySha256"]) == 64

    page = html.unescape(operator.get("/console/").text)
    assert page.count("Certificate requested") == 1  # plain-1 asked for none
    assert words in page
    dialog = html.unescape(operator.get(f"/console/requests/{request_id}").text)
    assert words in dialog
    plain = html.unescape(operator.get(f"/console/requests/plain-1:{passwords.pairing_id('plain-1', 'secret1')}").text)
    assert "Not requested" in plain
    # The refresh carries the same value, for console.js and the API alike.
    refreshed = {r["username"]: r for r in operator.get("/console/registry.json").get_json()["requests"]}
    assert refreshed[SENSOR]["certificateRequest"] == requested
    assert refreshed["plain-1"]["certificateRequest"] is None


def test_the_user_page_shows_the_certificate_serial_and_expiry(
    operator: FlaskClient,  # noqa: F811
    domain: services.Services,  # noqa: F811
) -> None:
    serial = with_certificate(operator, domain)
    page = operator.get(SENSOR_PAGE).text
    expires = domain.users.get(SENSOR).to_dict()["certificate"]["notAfter"]
    assert f'<dt>Serial</dt><dd class="mono">{serial}</dd>' in page
    assert f"<dt>Expires</dt><dd>{expires.replace('T', ' ').replace('Z', ' UTC')}</dd>" in page
    assert f'href="{CONFIRM}">Revoke certificate</a>' in page


def test_a_user_without_a_certificate_says_so_and_has_nothing_to_revoke(
    operator: FlaskClient,  # noqa: F811
    domain: services.Services,  # noqa: F811
) -> None:
    domain.users.add(SENSOR, "secret1")
    page = operator.get(SENSOR_PAGE).text
    assert "No certificate." in page and "Revoke certificate" not in page
    confirm = operator.get(CONFIRM)
    assert confirm.status_code == 403 and "has no certificate" in html.unescape(confirm.text)
    refused = post(operator, CONFIRM, page=SENSOR_PAGE)
    assert refused.status_code == 403 and alerts(refused) == ["'sensor-1' has no certificate."]
    assert [e["action"] for e in domain.audit.entries()][:1] == ["user.add"]


def test_revoke_certificate_after_a_confirmation(
    operator: FlaskClient,  # noqa: F811
    domain: services.Services,  # noqa: F811
) -> None:
    serial = with_certificate(operator, domain)
    confirm = operator.get(CONFIRM)
    assert confirm.status_code == 200
    assert serial in confirm.text and ">Revoke certificate</button>" in confirm.text
    assert domain.users.get(SENSOR).certificate is not None  # the confirmation page changes nothing

    done = post(operator, CONFIRM, page=CONFIRM)
    assert (done.status_code, done.headers["Location"]) == (303, SENSOR_PAGE)
    after = operator.get(SENSOR_PAGE)
    assert flashes(after) == [
        "Revoked the certificate: it is refused from now on, and the user's clients were disconnected."
    ]
    assert "No certificate." in after.text
    assert domain.users.get(SENSOR).certificate is None
    assert domain.users.exists(SENSOR)  # only the certificate goes
    [entry] = [e for e in domain.audit.entries() if e["action"] == "user.certificate.revoke"]
    assert entry["actor"] == "console:admin" and entry["details"]["serial"] == serial


def test_revoke_certificate_needs_its_csrf_token(
    operator: FlaskClient,  # noqa: F811
    domain: services.Services,  # noqa: F811
) -> None:
    with_certificate(operator, domain)
    refused = operator.post(CONFIRM, data={})
    assert refused.status_code == 400 and "CSRF" in refused.text
    assert domain.users.get(SENSOR).certificate is not None


def test_revoking_for_an_unknown_user_is_a_404_page(operator: FlaskClient) -> None:  # noqa: F811
    assert operator.get("/console/users/nobody/certificate/revoke").status_code == 404
    answer = post(operator, "/console/users/nobody/certificate/revoke")
    assert answer.status_code == 404 and "nobody" in html.unescape(answer.text)
