"""The console's Enrollments view (SPEC §10, §13) through Flask's test client."""

from __future__ import annotations

import html
import re

import fakeredis
import pytest
from flask.testing import FlaskClient

from cregistry import services
from cregistry.config import Config

from .conftest import ADMIN_TOKEN
from .test_console import HOSTILE, alerts, app, client, domain, flashes, operator, post  # noqa: F401

PAGE = "/console/enrollments"


@pytest.fixture
def config() -> Config:
    return Config(bcrypt_cost=4, admin_token=ADMIN_TOKEN, session_secret="s" * 40, verify_secret="ab" * 32)


@pytest.fixture
def sensors(domain: services.Services) -> str:  # noqa: F811
    domain.roles.grant("sensors", "sensors/%u/#", "readWrite")
    return "sensors"


def create(operator: FlaskClient, **fields: str) -> object:  # noqa: F811
    form = {"name": "line-3", "pattern": "line3-*", "roles": "sensors", "max_uses": "5", "expires_in": "3600"}
    return post(operator, PAGE, {**form, **fields}, page=PAGE)


def shown_token(text: str) -> str | None:
    found = re.search(r'<code class="token" id="enrollment-token">([^<]+)</code>', text)
    return html.unescape(found.group(1)) if found else None


def test_the_view_is_in_the_navigation(operator: FlaskClient) -> None:  # noqa: F811
    page = operator.get("/console/")
    assert f'<a href="{PAGE}">Enrollments</a>' in page.text
    view = operator.get(PAGE)
    assert view.status_code == 200
    for label in ("Name", "Username pattern", "Roles", "Max uses", "Expires in (seconds)"):
        assert f">{label}</label>" in view.text
    assert ">Create enrollment</button>" in view.text
    assert "No enrollments." in view.text


def test_create_shows_the_token_once(
    operator: FlaskClient,  # noqa: F811
    domain: services.Services,  # noqa: F811
    sensors: str,
    connection: fakeredis.FakeRedis,
) -> None:
    created = create(operator)
    assert created.status_code == 201  # type: ignore[attr-defined]
    token = shown_token(created.text)  # type: ignore[attr-defined]
    assert token is not None and len(token) >= 43
    assert domain.enrollments.register(token, "line3-001", "secret-1", "", "192.0.2.1").outcome.value == "granted"
    # Never again: not on the page, not in the session cookie.
    again = operator.get(PAGE)
    assert shown_token(again.text) is None and token not in again.text
    assert all(token not in cookie.value for cookie in operator._cookies.values())  # type: ignore[attr-defined]
    row = re.search(r"<tr>\s*<td data-label=\"Name\">line-3</td>.*?</tr>", again.text, re.S)
    assert row is not None and "4 of 5" in row.group(0) and "sensors" in row.group(0)
    assert [e["action"] for e in domain.audit.entries()][-2:] == ["enrollment.create", "role.grant"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"roles": "ghost"}, "Roles: no role 'ghost' (create it first, e.g. `cregistry role grant`)."),
        ({"max_uses": "0"}, "MaxUses must be an integer from 1 to 100000."),
        ({"expires_in": "ten"}, "ExpiresIn must be an integer from 60 to 31536000."),
        ({"pattern": "line 3"}, None),
    ],
)
def test_bad_input_is_shown_next_to_the_form(
    operator: FlaskClient,  # noqa: F811
    domain: services.Services,  # noqa: F811
    sensors: str,
    fields: dict[str, str],
    message: str | None,
) -> None:
    response = create(operator, **fields)
    assert response.status_code == 400  # type: ignore[attr-defined]
    found = alerts(response)  # type: ignore[arg-type]
    assert len(found) == 1 and (message is None or found == [message])
    assert shown_token(response.text) is None  # type: ignore[attr-defined]
    assert domain.enrollments.list_enrollments() == []


def test_revoke(operator: FlaskClient, domain: services.Services, sensors: str) -> None:  # noqa: F811
    create(operator)
    revoked = post(operator, f"{PAGE}/line-3/revoke", page=PAGE)
    assert (revoked.status_code, revoked.headers["Location"]) == (303, PAGE)
    assert flashes(operator.get(PAGE))[0].startswith("Revoked enrollment line-3")
    assert domain.enrollments.list_enrollments() == []
    gone = post(operator, f"{PAGE}/line-3/revoke", page=PAGE)
    assert gone.status_code == 404
    assert alerts(gone) == ["No enrollment 'line-3'; it may have expired, or another operator revoked it."]


def test_a_hostile_pattern_or_name_is_never_markup(operator: FlaskClient, domain: services.Services) -> None:  # noqa: F811
    response = create(operator, name=HOSTILE, roles="")
    assert HOSTILE not in response.text  # type: ignore[attr-defined]


def test_posts_need_the_csrf_token(operator: FlaskClient, domain: services.Services, sensors: str) -> None:  # noqa: F811
    response = operator.post(PAGE, data={"name": "line-3", "pattern": "line3-*"})
    assert response.status_code == 400
    assert domain.enrollments.list_enrollments() == []
