"""The operator's whole day in the web console, by clicking."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
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

from .conftest import ADMIN_TOKEN, OPS_TOKEN

# A device's attempt appears in the console within 5 s without a reload.
APPEARS_WITHIN_MS = 5000


def pairing_id(username: str, password: str) -> str:
    return hashlib.sha256(f"{username}:{password}".encode()).hexdigest()[:6]


def device_attempt(service: ServiceProcess, username: str, password: str, client_id: str) -> int:
    """What Mosquitto's plugin sends when an unknown device connects."""
    answer = http(
        "POST",
        service.broker + "/mqtt/user",
        json_body={"username": username, "password": password, "clientid": client_id},
    )
    return answer.status


def sign_in(page: Any, service: ServiceProcess, token: str = ADMIN_TOKEN) -> None:
    page.goto(service.api + "/")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Client Registry")).to_be_visible()
    page.wait_for_load_state("load")


def request_row(page: Any, username: str) -> Any:
    return page.locator("#request-rows tr", has_text=username)


def test_the_whole_flow_by_clicking(page: Any, service: ServiceProcess, screenshots: Path | None) -> None:
    # A wrong token: an error on the page, no session.
    page.goto(service.api + "/")
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That is not an admin token of this cregistry.")
    page.goto(service.api + "/console/users")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))

    sign_in(page, service)
    expect(page.locator("#lock-word")).to_have_text("Locked")
    expect(page.locator("#lock-left")).to_be_hidden()

    page.get_by_role("button", name="Unlock").click()
    expect(page.locator("#lock-word")).to_have_text("Unlocked")
    left = page.locator("#lock-left")
    expect(left).to_have_text(re.compile(r"^[45]:\d\d left$"))
    first = left.inner_text()
    expect(left).not_to_have_text(first, timeout=3000)  # it counts down by itself

    # A device tries to connect; the page shows it without a reload.
    page.evaluate("window.notReloaded = true")
    assert device_attempt(service, "sensor-17", "pw-sensor-17", "sensor-17-esp32") == 403
    row = request_row(page, "sensor-17")
    expect(row).to_be_visible(timeout=APPEARS_WITHIN_MS)
    assert page.evaluate("window.notReloaded") is True
    pairing = pairing_id("sensor-17", "pw-sensor-17")
    expect(row.locator('td[data-label="Pairing ID"]')).to_have_text(pairing)
    expect(row.locator('td[data-label="Client ID"]')).to_have_text("sensor-17-esp32")
    expect(row.locator('td[data-label="Source"]')).to_have_text("mqtt")
    expect(row.locator('td[data-label="Attempts"]')).to_have_text("1")
    assert device_attempt(service, "sensor-17", "pw-sensor-17", "sensor-17-esp32") == 403
    expect(row.locator('td[data-label="Attempts"]')).to_have_text("2", timeout=APPEARS_WITHIN_MS)
    # Another one over REST, with a context.
    registered = http(
        "POST",
        service.api + "/api/client-registry/register",
        json_body={
            "username": "camera-2",
            "password": "pw-camera-2",
            "clientId": "cam-2",
            "context": {"site": "dock 4"},
        },
    )
    assert registered.status == 202
    expect(request_row(page, "camera-2")).to_be_visible(timeout=APPEARS_WITHIN_MS)
    if screenshots is not None:
        page.screenshot(path=str(screenshots / "console-registry.png"))

    # Grant access: the dialog with the pairing ID in large type.
    row.click()
    dialog = page.locator("dialog#grant-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading", name="Grant access")).to_be_visible()
    expect(dialog.locator(".pairing-id")).to_have_text(pairing)
    font_size = dialog.locator(".pairing-id").evaluate("e => parseFloat(getComputedStyle(e).fontSize)")
    assert font_size >= 40
    expect(dialog.locator('[data-field="clientId"]')).to_have_text("sensor-17-esp32")
    expect(dialog.locator('[data-field="attempts"]')).to_have_text("2")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()  # Enter does not allow by accident
    if screenshots is not None:
        page.screenshot(path=str(screenshots / "console-grant.png"))
    dialog.get_by_role("button", name="Allow").click()

    # The new user's page: no permissions yet; the device gets in.
    expect(page.get_by_role("heading", name="sensor-17")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Allowed sensor-17")
    assert device_attempt(service, "sensor-17", "pw-sensor-17", "sensor-17") == 200

    # A bad topic: one sentence next to the form, nothing added.
    page.get_by_label("Topic").fill("sensors/#/temp")
    page.get_by_role("button", name="Add permission").click()
    expect(page.get_by_role("alert")).to_contain_text("#")
    expect(page.locator("table.permissions")).to_contain_text("No direct permissions")

    page.get_by_label("Topic").fill("sensors/%u/#")
    page.get_by_label("Access").select_option("readWrite")
    page.get_by_role("button", name="Add permission").click()
    expect(page.locator("table.permissions tbody")).to_contain_text("sensors/%u/#")
    expect(page.locator("table.permissions tbody")).to_contain_text("readWrite")
    acl = http(
        "POST",
        service.broker + "/mqtt/acl",
        json_body={"username": "sensor-17", "clientid": "sensor-17", "topic": "sensors/sensor-17/t", "acc": 2},
    )
    assert acl.status == 200

    # The audit trail, newest first, names the console's actor.
    page.get_by_role("link", name="Audit").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows.first).to_contain_text("user.grant")
    expect(rows.first).to_contain_text("console:admin")
    expect(rows.nth(1)).to_contain_text("request.approve")
    expect(rows.nth(2)).to_contain_text("registry.unlock")

    # Deny the other request.
    page.get_by_role("link", name="Client Registry").click()
    # Review opens the dialog once console.js runs; clicked before that, it is the page without script.
    expect(page).to_have_url(re.compile(r"/console/$"))
    page.wait_for_load_state("load")
    request_row(page, "camera-2").get_by_role("link", name="Review").click()
    expect(dialog.locator(".pairing-id")).to_have_text(pairing_id("camera-2", "pw-camera-2"))
    dialog.get_by_role("button", name="Deny", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Denied camera-2")
    expect(request_row(page, "camera-2")).to_have_count(0)
    denied = http(
        "POST",
        service.api + "/api/client-registry/register",
        json_body={"username": "camera-2", "password": "pw-camera-2", "clientId": "cam-2"},
    )
    assert denied.status == 403
    assert http("GET", service.api + "/api/client-registry/requests", token=ADMIN_TOKEN).json()["requests"] == []

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("Signed out.")
    page.goto(service.api + "/console/")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))

    log = service.output()
    assert ADMIN_TOKEN not in log and "pw-sensor-17" not in log


def test_what_a_device_sent_is_shown_as_text(page: Any, service: ServiceProcess) -> None:
    sign_in(page, service)
    page.get_by_role("button", name="Unlock").click()
    hostile = '<img src=x onerror="window.pwned=1">'
    context = {"note": "<script>window.pwned=2</script>", "name": "evil\u202egpj.exe"}
    registered = http(
        "POST",
        service.api + "/api/client-registry/register",
        json_body={"username": "sensor-66", "password": "pw-sensor-66", "clientId": hostile, "context": context},
    )
    assert registered.status == 202
    row = request_row(page, "sensor-66")
    expect(row.locator('td[data-label="Client ID"]')).to_have_text(hostile, timeout=APPEARS_WITHIN_MS)
    row.click()
    dialog = page.locator("dialog#grant-dialog")
    expect(dialog.locator('[data-field="clientId"]')).to_have_text(hostile)
    expect(dialog.locator('[data-field="context"]')).to_contain_text("<script>window.pwned=2</script>")
    expect(dialog.locator('[data-field="context"]')).to_contain_text("evil\\u202egpj.exe")  # the override, visible
    # The page served without script (the request's own page) shows it the same way.
    page.goto(service.api + "/console/requests/sensor-66:" + pairing_id("sensor-66", "pw-sensor-66"))
    expect(page.locator('[data-field="clientId"]')).to_have_text(hostile)
    expect(page.locator('[data-field="context"]')).to_contain_text("evil\\u202egpj.exe")
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.pwned") is None


def test_roles_are_given_and_taken_and_a_user_deleted_after_confirmation(page: Any, service: ServiceProcess) -> None:
    http(
        "POST", service.api + "/api/users", json_body={"username": "gateway-1", "password": "pw-gw-1"}, token=OPS_TOKEN
    )
    http(
        "PUT",
        service.api + "/api/roles/fleet/permissions",
        json_body=[{"topic": "fleet/#", "access": "read"}],
        token=OPS_TOKEN,
    )
    sign_in(page, service, OPS_TOKEN)
    page.get_by_role("link", name="Users").click()
    page.get_by_role("link", name="gateway-1").click()
    expect(page.locator("#superuser")).to_have_text("no")

    page.get_by_label("Role").select_option("fleet")
    page.get_by_role("button", name="Give role").click()
    expect(page.locator("ul.roles")).to_contain_text("fleet")
    assert http("GET", service.api + "/api/users/gateway-1", token=ADMIN_TOKEN).json()["roles"] == ["fleet"]
    page.get_by_role("button", name="Take role fleet").click()
    expect(page.locator("ul.roles")).to_have_text("No roles.")

    page.get_by_role("button", name="Make superuser").click()
    expect(page.locator("#superuser")).to_contain_text("yes")

    page.get_by_role("link", name="Delete user").click()
    expect(page.get_by_role("heading", name="Delete user gateway-1?")).to_be_visible()
    assert http("GET", service.api + "/api/users/gateway-1", token=ADMIN_TOKEN).status == 200  # not yet
    page.get_by_role("button", name="Delete user").click()
    expect(page.get_by_role("status")).to_have_text("Deleted gateway-1.")
    assert http("GET", service.api + "/api/users/gateway-1", token=ADMIN_TOKEN).status == 404

    page.get_by_role("link", name="Audit").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows.first).to_contain_text("user.delete")
    expect(rows.first).to_contain_text("console:ops")


def test_the_dialog_says_when_another_operator_handled_the_request(page: Any, service: ServiceProcess) -> None:
    sign_in(page, service)
    page.get_by_role("button", name="Unlock").click()
    assert device_attempt(service, "sensor-5", "pw-sensor-5", "s5") == 403
    request_row(page, "sensor-5").click(timeout=APPEARS_WITHIN_MS)
    dialog = page.locator("dialog#grant-dialog")
    expect(dialog).to_be_visible()
    # Meanwhile someone approves it with the API.
    request_id = f"sensor-5:{pairing_id('sensor-5', 'pw-sensor-5')}"
    assert (
        http("POST", f"{service.api}/api/client-registry/requests/{request_id}/approve", token=OPS_TOKEN).status == 201
    )
    expect(dialog.locator("[data-gone]")).to_be_visible(timeout=APPEARS_WITHIN_MS)
    expect(dialog.get_by_role("button", name="Allow")).to_be_disabled()

    # A form sent anyway (the page was not refreshed yet) gets one sentence, not a 500.
    page.goto(service.api + "/console/")
    page.evaluate("document.getElementById('grant-dialog').showModal()")
    page.evaluate(
        "id => document.querySelector('form[data-action=approve]').action = '/console/requests/' + id + '/approve'",
        request_id,
    )
    page.locator("dialog#grant-dialog").get_by_role("button", name="Allow").click()
    expect(page.get_by_role("alert")).to_have_text(
        "User 'sensor-5' exists already; another operator may have allowed it already."
    )


# No horizontal scrolling, and no table cell whose text is cut off.
NOTHING_CUT_OFF = """() =>
    document.documentElement.scrollWidth <= window.innerWidth
    && [...document.querySelectorAll("td, th")].every(cell => cell.scrollWidth <= cell.clientWidth + 1)"""


CUT_OFF_CELLS = """() => [...document.querySelectorAll("td, th")]
    .filter(cell => cell.scrollWidth > cell.clientWidth + 1)
    .map(cell => `${cell.textContent.trim().slice(0, 40)}: ${cell.scrollWidth} > ${cell.clientWidth}`)"""


def test_the_registry_view_fits_a_phone(page: Any, service: ServiceProcess, screenshots: Path | None) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, service)
    assert page.evaluate(NOTHING_CUT_OFF)  # the empty list
    page.get_by_role("button", name="Unlock").click()
    assert device_attempt(service, "sensor-9", "pw-sensor-9", "a-rather-long-client-identifier-0123456789" * 3) == 403
    expect(request_row(page, "sensor-9")).to_be_visible(timeout=APPEARS_WITHIN_MS)
    assert page.evaluate(NOTHING_CUT_OFF)
    request_row(page, "sensor-9").click()
    pairing = page.locator("dialog#grant-dialog .pairing-id")
    expect(pairing).to_be_visible()
    assert page.evaluate(NOTHING_CUT_OFF)
    box = pairing.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    if screenshots is not None:
        page.screenshot(path=str(screenshots / "console-phone.png"))
    for view in ("Users", "Audit"):
        page.keyboard.press("Escape")
        page.get_by_role("link", name=view).click()
        expect(page.get_by_role("heading", name=view, exact=True)).to_be_visible()
        page.wait_for_load_state("load")  # the stylesheet applied
        assert page.evaluate(NOTHING_CUT_OFF), page.evaluate(CUT_OFF_CELLS)


def test_a_session_works_on_every_worker(service: ServiceProcess) -> None:
    """The secret `serve` generated before forking signs for both workers:
    each request below opens a new connection, so both workers answer some."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(service.api + "/console/sign-in") as answer:
        csrf_token = re.search(r'name="csrf_token" value="([^"]+)"', answer.read().decode())
    assert csrf_token is not None
    body = urllib.parse.urlencode({"csrf_token": csrf_token.group(1), "token": ADMIN_TOKEN}).encode()
    with opener.open(service.api + "/console/sign-in", data=body) as answer:
        assert answer.url.endswith("/console/")
    for _ in range(30):
        with opener.open(service.api + "/console/registry.json") as answer:
            assert answer.status == 200
    assert "CREGISTRY_SESSION_SECRET is not set" in service.output()


def test_the_cookie_is_secure_behind_a_tls_proxy(service: ServiceProcess) -> None:
    """What nginx in front sends: gunicorn trusts X-Forwarded-Proto from 127.0.0.1."""
    request = urllib.request.Request(service.api + "/console/sign-in", headers={"X-Forwarded-Proto": "https"})
    with urllib.request.urlopen(request) as answer:
        cookie = answer.headers["Set-Cookie"]
    assert "Secure" in cookie.split("; ") and "HttpOnly" in cookie.split("; ")
    with urllib.request.urlopen(service.api + "/console/sign-in") as answer:
        assert "Secure" not in answer.headers["Set-Cookie"].split("; ")
