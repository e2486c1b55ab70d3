"""The Enrollments view in Chromium, by clicking: create (the token shown
once), a device registering with it, revoke."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from harness.service import ServiceProcess, http

try:
    from playwright.sync_api import expect
except ImportError:  # the conftest's `playwright` fixture says why (and fails under CI)
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("Playwright for Python is not installed", allow_module_level=True)

from .conftest import ADMIN_TOKEN
from .test_console_flow import sign_in


def register(service: ServiceProcess, token: str, username: str) -> int:
    body = {"username": username, "password": f"{username}-secret", "enrollment": token}
    return http("POST", service.api + "/api/client-registry/register", json_body=body).status


def test_create_an_enrollment_see_its_token_once_and_revoke_it(
    page: Any, service: ServiceProcess, screenshots: Path | None
) -> None:
    role = [{"topic": "line3/%u/#", "access": "readWrite"}]
    assert http("PUT", service.api + "/api/roles/line3/permissions", json_body=role, token=ADMIN_TOKEN).status == 200
    sign_in(page, service)
    page.get_by_role("link", name="Enrollments").click()
    expect(page.get_by_role("heading", name="Enrollments", exact=True)).to_be_visible()
    expect(page.get_by_text("No enrollments.")).to_be_visible()

    # A bad field: said next to the form, nothing created.
    page.get_by_label("Name", exact=True).fill("line-3")
    page.get_by_label("Username pattern").fill("line3-*")
    page.get_by_label("Roles").fill("no-such-role")
    page.get_by_role("button", name="Create enrollment").click()
    expect(page.get_by_role("alert")).to_contain_text("no role 'no-such-role'")
    expect(page.get_by_text("No enrollments.")).to_be_visible()

    page.get_by_label("Roles").fill("line3")
    page.get_by_label("Max uses").fill("2")
    page.get_by_label("Expires in (seconds)").fill("3600")
    page.get_by_role("button", name="Create enrollment").click()
    token_box = page.locator("#enrollment-token")
    expect(token_box).to_be_visible()
    token = token_box.inner_text().strip()
    assert len(token) >= 43
    row = page.locator("table.enrollments tbody tr", has_text="line-3")
    expect(row).to_contain_text("2 of 2")
    if screenshots is not None:
        page.screenshot(path=str(screenshots / "enrollments-token.png"), full_page=True)

    assert register(service, token, "line3-001") == 201
    # Shown once: a fresh load of the view has the enrollment, not the token.
    page.get_by_role("link", name="Enrollments").click()
    expect(row).to_contain_text("1 of 2")
    expect(page.locator("#enrollment-token")).to_have_count(0)
    assert token not in page.content()

    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_contain_text("Revoked enrollment line-3")
    expect(page.get_by_text("No enrollments.")).to_be_visible()
    assert register(service, token, "line3-002") == 403
    if screenshots is not None:
        page.screenshot(path=str(screenshots / "enrollments-revoked.png"), full_page=True)
