"""A device that asks for a certificate, by clicking (SPEC §10, §14): the
request says so, Allow issues it, the user page shows it and revokes it."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness.service import ServiceProcess, http

try:
    from playwright.sync_api import expect
except ImportError:  # the conftest's `playwright` fixture says why (and fails under CI)
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("Playwright for Python is not installed", allow_module_level=True)

from .conftest import ADMIN_TOKEN
from .test_console_flow import APPEARS_WITHIN_MS, request_row, sign_in


def csr_for(username: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, username)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_a_certificate_is_requested_allowed_shown_and_revoked(page: Any, service: ServiceProcess) -> None:
    assert http("POST", service.api + "/api/client-registry/unlock", token=ADMIN_TOKEN).status == 200
    body = {"username": "meter-7", "password": "pw-meter-7", "csr": csr_for("meter-7")}
    assert http("POST", service.api + "/api/client-registry/register", json_body=body).status == 202
    [requested] = http("GET", service.api + "/api/client-registry/requests", token=ADMIN_TOKEN).json()["requests"]
    fingerprint = requested["certificateRequest"]["publicKeySha256"]

    sign_in(page, service)
    row = request_row(page, "meter-7")
    expect(row).to_contain_text("Certificate requested", timeout=APPEARS_WITHIN_MS)
    row.get_by_role("link", name="meter-7").click()
    dialog = page.locator("#grant-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator('[data-field="certificateRequest"]')).to_have_text(
        f"Requested: EC P-256 key, public key SHA-256 {fingerprint}"
    )
    dialog.get_by_role("button", name="Allow").click()

    expect(page.get_by_role("heading", name="meter-7")).to_be_visible()
    serial = http("GET", service.api + "/api/users/meter-7", token=ADMIN_TOKEN).json()["certificate"]["serial"]
    certificate = page.locator("#certificate")
    expect(certificate).to_contain_text(serial)
    expect(certificate).to_contain_text(re.compile(r"Expires\s*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"))

    page.get_by_role("link", name="Revoke certificate").click()
    expect(page.get_by_role("heading", name="Revoke the certificate of meter-7?")).to_be_visible()
    assert http("GET", service.api + "/api/users/meter-7", token=ADMIN_TOKEN).json()["certificate"] is not None
    page.get_by_role("button", name="Revoke certificate").click()
    expect(page.get_by_role("status")).to_contain_text("Revoked the certificate")
    expect(certificate).to_contain_text("No certificate.")
    expect(page.get_by_role("link", name="Revoke certificate")).to_have_count(0)
    user = http("GET", service.api + "/api/users/meter-7", token=ADMIN_TOKEN).json()
    assert user["certificate"] is None  # and the user stays
