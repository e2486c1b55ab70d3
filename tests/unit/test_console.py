"""The web console through Flask's test client: every page and
every POST, sign-in and its limit, sessions, CSRF, CSP and escaping."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import re
import zlib
from typing import Any

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from cregistry import passwords, services
from cregistry.config import Config
from cregistry.errors import ConfigError
from cregistry.keys import Keys
from cregistry.lock import RegistryLock
from cregistry.pending import PendingRequests
from cregistry.users import UserStore
from cregistry.web import create_app
from cregistry.web.console import CONTENT_SECURITY_POLICY

from .conftest import ADMIN_TOKEN, FakeClock, serve_once

OPS_TOKEN = "ops-token-0123456789abcdef"
SECRET = "s" * 40
HOSTILE = '<img src=x onerror="alert(1)">'


@pytest.fixture
def config() -> Config:
    return Config(
        bcrypt_cost=4,
        admin_token=ADMIN_TOKEN,
        admin_tokens=f"ops={OPS_TOKEN}",
        session_secret=SECRET,
        console_hosts=("console.example",),  # the https tests' name
    )


@pytest.fixture
def app(config: Config, connection: fakeredis.FakeRedis, clock: FakeClock) -> Flask:
    # Session times (idle timeout, maximum age) follow the test's clock.
    return create_app(config, listener="api", connection=connection, clock=clock)


@pytest.fixture
def domain(app: Flask) -> services.Services:
    """The app's own objects, so the domain and the console share one clock."""
    return app.extensions["cregistry"].domain  # type: ignore[no-any-return]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def operator(client: FlaskClient) -> FlaskClient:
    """A client signed in with the "admin" token."""
    sign_in(client, ADMIN_TOKEN)
    return client


def csrf_of(response: TestResponse) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
    assert found is not None, response.text
    return found.group(1)


def sign_in(client: FlaskClient, token: str, **kwargs: Any) -> TestResponse:
    form = client.get("/console/sign-in", **kwargs)
    return client.post("/console/sign-in", data={"csrf_token": csrf_of(form), "token": token}, **kwargs)


def post(client: FlaskClient, path: str, data: dict[str, str] | None = None, page: str = "/console/") -> TestResponse:
    """A form sent from `page`, with that page's CSRF token."""
    token = csrf_of(client.get(page))
    return client.post(path, data={"csrf_token": token, **(data or {})})


def alerts(response: TestResponse) -> list[str]:
    """The error sentences on a page, as the operator reads them."""
    found = re.findall(r'role="alert">([^<]*)<', response.text)
    return [html.unescape(re.sub(r"\s+", " ", text).strip()) for text in found]


def flashes(response: TestResponse) -> list[str]:
    return [
        html.unescape(text) for text in re.findall(r'class="flash flash-\w+" role="status">([^<]*)<', response.text)
    ]


def pending(
    domain: services.Services,
    username: str = "sensor-1",
    password: str = "secret1",
    client_id: str = "",
    context: Any = None,
) -> str:
    """A pending request (as if the device connected); its console id."""
    domain.redis.set(domain.keys.unlock(), "1", ex=300)
    domain.registration.attempt(username, password, client_id, "rest", context)
    return f"{username}:{passwords.pairing_id(username, password)}"


def audit_actions(domain: services.Services) -> list[tuple[str, str]]:
    return [(e["actor"], e["action"]) for e in domain.audit.entries()]


# -- the way in -----------------------------------------------------------------
def test_the_root_redirects_to_the_console(client: FlaskClient) -> None:
    response = client.get("/")
    assert (response.status_code, response.headers["Location"]) == (302, "/console/")


@pytest.mark.parametrize(
    "path", ["/console/", "/console/users", "/console/users/sensor-1", "/console/audit", "/console/requests/a:b"]
)
def test_pages_need_a_session(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert (response.status_code, response.headers["Location"]) == (303, "/console/sign-in")


def test_the_refresh_endpoint_answers_401_without_a_session(client: FlaskClient) -> None:
    response = client.get("/console/registry.json")
    assert response.status_code == 401
    assert response.get_json() == {"ok": False, "error": "not signed in", "signIn": "/console/sign-in"}


def test_every_post_without_a_session_changes_nothing(
    app: Flask, client: FlaskClient, domain: services.Services, requests: PendingRequests
) -> None:
    request_id = pending(domain)
    domain.users.add("gateway-1", "secret1")
    before = audit_actions(domain)
    token = csrf_of(client.get("/console/sign-in"))
    values = {"request_id": request_id, "username": "gateway-1", "anything": "x", "name": "line-3"}
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("console.") or "POST" not in rule.methods:
            continue
        if rule.endpoint == "console.sign_in":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], rule.rule)
        response = client.post(path, data={"csrf_token": token, "topic": "a", "access": "read", "role": "r"})
        assert (response.status_code, response.headers.get("Location")) == (303, "/console/sign-in"), path
        checked += 1
    assert checked >= 12
    assert audit_actions(domain) == before
    assert domain.users.exists("gateway-1")
    assert requests.count_requests() == 1


def test_the_sign_in_page(client: FlaskClient) -> None:
    response = client.get("/console/sign-in")
    assert response.status_code == 200
    assert '<label for="token">Admin token</label>' in response.text
    assert '<input type="password" id="token" name="token"' in response.text
    assert '<button type="submit" class="primary">Sign in</button>' in response.text
    # The token goes in a POST body, never in a URL.
    assert '<form method="post" action="/console/sign-in">' in response.text


@pytest.mark.parametrize(("token", "actor"), [(ADMIN_TOKEN, "console:admin"), (OPS_TOKEN, "console:ops")])
def test_any_admin_token_signs_in_and_names_the_actor(
    client: FlaskClient, token: str, actor: str, domain: services.Services
) -> None:
    response = sign_in(client, token)
    assert (response.status_code, response.headers["Location"]) == (303, "/console/")
    page = client.get("/console/")
    assert page.status_code == 200
    assert "Client Registry" in page.text and "Sign out" in page.text
    post(client, "/console/unlock")
    assert audit_actions(domain)[0] == (actor, "registry.unlock")


@pytest.mark.parametrize("token", ["wrong-token", "", " ", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1]])
def test_a_wrong_token_is_an_error_on_the_page_and_no_session(client: FlaskClient, token: str) -> None:
    response = sign_in(client, token)
    assert response.status_code == 403
    assert alerts(response) == ["That is not an admin token of this cregistry."]
    assert client.get("/console/").status_code == 303


def test_the_sign_in_form_without_a_token_field_is_refused(client: FlaskClient) -> None:
    token = csrf_of(client.get("/console/sign-in"))
    response = client.post("/console/sign-in", data={"csrf_token": token})
    assert response.status_code == 403
    assert client.get("/console/").status_code == 303


def test_sign_out_ends_the_session(operator: FlaskClient) -> None:
    response = post(operator, "/console/sign-out")
    assert (response.status_code, response.headers["Location"]) == (303, "/console/sign-in")
    assert flashes(operator.get("/console/sign-in")) == ["Signed out."]
    assert operator.get("/console/").status_code == 303


def test_a_signed_in_operator_is_sent_on_from_the_sign_in_page(operator: FlaskClient) -> None:
    assert operator.get("/console/sign-in").headers["Location"] == "/console/"


# -- the sign-in limit ---------------------------------------------------------------
def test_failed_sign_ins_are_limited_per_address(app: Flask, config: Config, connection: fakeredis.FakeRedis) -> None:
    attacker = app.test_client()
    address = {"environ_base": {"REMOTE_ADDR": "192.0.2.7"}}
    for _ in range(config.console_signin_limit):
        assert sign_in(attacker, "guess", **address).status_code == 403
    # Over the limit even the right token is refused, without being looked at.
    response = sign_in(attacker, ADMIN_TOKEN, **address)
    assert response.status_code == 429
    assert alerts(response) == ["Too many failed sign-ins from your address; try again in 15 minutes."]
    assert attacker.get("/console/", **address).status_code == 303
    key = Keys(config.key_prefix).admin_token_failures("192.0.2.7")
    assert 0 < connection.ttl(key) <= config.console_signin_window
    # Another address is not affected.
    other = app.test_client()
    assert sign_in(other, ADMIN_TOKEN, environ_base={"REMOTE_ADDR": "192.0.2.8"}).status_code == 303


def test_a_successful_sign_in_clears_the_failures(app: Flask, config: Config, connection: fakeredis.FakeRedis) -> None:
    client = app.test_client()
    for _ in range(config.console_signin_limit - 1):
        sign_in(client, "guess")
    assert sign_in(client, ADMIN_TOKEN).status_code == 303
    assert not connection.exists(Keys(config.key_prefix).admin_token_failures("127.0.0.1"))


def test_console_sign_ins_and_admin_api_tokens_count_together(app: Flask, config: Config) -> None:
    """Neither door gets guesses of its own: wrong tokens sent to the admin API
    count against the address's sign-ins, and the other way round."""
    client = app.test_client()
    for _ in range(config.console_signin_limit - 1):
        assert client.get("/api/users", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert sign_in(client, "guess").status_code == 403
    assert sign_in(client, ADMIN_TOKEN).status_code == 429
    assert client.get("/api/users", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 429


def test_the_limit_is_shared_by_every_app_on_the_same_redis(
    config: Config, connection: fakeredis.FakeRedis, redis_server: fakeredis.FakeServer
) -> None:
    """Two workers (two apps) count together."""
    other_connection = fakeredis.FakeRedis(server=redis_server, decode_responses=True)
    workers = [create_app(config, listener="api", connection=c).test_client() for c in (connection, other_connection)]
    for attempt in range(config.console_signin_limit):
        sign_in(workers[attempt % 2], "guess")
    assert sign_in(workers[0], ADMIN_TOKEN).status_code == 429
    assert sign_in(workers[1], ADMIN_TOKEN).status_code == 429
    other_connection.close()


def test_no_token_reaches_the_log(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sign_in(client, "a-wrong-token-guess-123")
    sign_in(client, ADMIN_TOKEN)
    post(client, "/console/unlock")
    assert "sign-in failed" in caplog.text and "sign-in with token admin" in caplog.text
    assert ADMIN_TOKEN not in caplog.text
    assert "a-wrong-token-guess-123" not in caplog.text


# -- the session cookie --------------------------------------------------------------
def session_cookie(response: TestResponse) -> str:
    cookies = [v for v in response.headers.getlist("Set-Cookie") if v.startswith("cregistry_console=")]
    assert len(cookies) == 1, response.headers
    return cookies[0]


def test_the_session_cookie_is_httponly_samesite_strict_on_the_console_path(client: FlaskClient) -> None:
    cookie = session_cookie(sign_in(client, ADMIN_TOKEN))
    attributes = [part.strip() for part in cookie.split(";")]
    assert "HttpOnly" in attributes
    assert "SameSite=Strict" in attributes
    assert "Path=/console" in attributes
    assert "Secure" not in attributes  # plain http, not configured


def test_the_session_cookie_is_secure_when_configured(config: Config, connection: fakeredis.FakeRedis) -> None:
    app = create_app(dataclasses.replace(config, console_secure_cookies=True), listener="api", connection=connection)
    # A Secure cookie travels only over https: so does this client.
    client = app.test_client()
    https = {"base_url": "https://console.example", "headers": {"Referer": "https://console.example/console/"}}
    assert "Secure" in session_cookie(sign_in(client, ADMIN_TOKEN, **https)).split("; ")


def test_the_session_cookie_is_secure_behind_https(client: FlaskClient) -> None:
    """A TLS proxy that gunicorn trusts sets wsgi.url_scheme to https."""
    https = {"base_url": "https://console.example", "headers": {"Referer": "https://console.example/console/sign-in"}}
    response = sign_in(client, ADMIN_TOKEN, **https)
    assert response.status_code == 303
    assert "Secure" in session_cookie(response).split("; ")


def test_the_cookie_holds_the_token_name_not_the_token(client: FlaskClient) -> None:
    cookie = session_cookie(sign_in(client, ADMIN_TOKEN)).split(";")[0].split("=", 1)[1]
    assert ADMIN_TOKEN not in cookie
    # Signed, not encrypted: whoever has the cookie can read it. Read it.
    payload = cookie.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    data = json.loads(zlib.decompress(raw) if cookie.startswith(".") else raw)
    assert data["operator"]["tokenName"] == "admin"
    assert ADMIN_TOKEN not in json.dumps(data)


def test_a_session_ends_when_its_token_is_removed_or_rotated(
    operator: FlaskClient, config: Config, connection: fakeredis.FakeRedis
) -> None:
    cookie = operator.get_cookie("cregistry_console", path="/console")
    assert cookie is not None
    for changed in (
        dataclasses.replace(config, admin_token="a-new-admin-token-0123456789"),  # rotated: same name
        dataclasses.replace(config, admin_token=None),  # "admin" removed (ops stays)
    ):
        restarted = create_app(changed, listener="api", connection=connection).test_client()
        restarted.set_cookie("cregistry_console", cookie.value, path="/console")
        response = restarted.get("/console/")
        assert (response.status_code, response.headers["Location"]) == (303, "/console/sign-in")
        assert flashes(restarted.get("/console/sign-in")) == [
            "The admin token of this session is no longer configured; sign in again."
        ]
    # The same configuration (another worker, or after a restart with the same secret) keeps it.
    same = create_app(config, listener="api", connection=connection).test_client()
    same.set_cookie("cregistry_console", cookie.value, path="/console")
    assert same.get("/console/").status_code == 200


def test_a_session_signed_with_another_secret_is_refused(
    operator: FlaskClient, config: Config, connection: fakeredis.FakeRedis
) -> None:
    cookie = operator.get_cookie("cregistry_console", path="/console")
    assert cookie is not None
    other = create_app(dataclasses.replace(config, session_secret="t" * 40), listener="api", connection=connection)
    client = other.test_client()
    client.set_cookie("cregistry_console", cookie.value, path="/console")
    assert client.get("/console/").status_code == 303


def test_the_idle_timeout_ends_a_session(operator: FlaskClient, config: Config, clock: FakeClock) -> None:
    clock.advance(config.console_idle_timeout - 5)
    assert operator.get("/console/users").status_code == 200  # activity: the timeout starts again
    clock.advance(config.console_idle_timeout - 5)
    assert operator.get("/console/").status_code == 200
    clock.advance(config.console_idle_timeout + 1)
    assert operator.get("/console/").headers["Location"] == "/console/sign-in"
    assert flashes(operator.get("/console/sign-in")) == [
        "Your session ended after 30 minutes without activity; sign in again."
    ]
    assert operator.get("/console/").status_code == 303


def test_the_pages_own_refreshes_do_not_keep_a_session_alive(
    operator: FlaskClient, config: Config, clock: FakeClock
) -> None:
    for _ in range(10):
        clock.advance(config.console_idle_timeout / 10 - 1)
        assert operator.get("/console/registry.json").status_code == 200
    clock.advance(20)
    response = operator.get("/console/registry.json")
    assert response.status_code == 401
    assert "without activity" in response.get_json()["error"]


def test_the_maximum_age_ends_a_busy_session(operator: FlaskClient, config: Config, clock: FakeClock) -> None:
    steps = config.console_max_age // (config.console_idle_timeout - 60)
    for _ in range(steps):
        clock.advance(config.console_idle_timeout - 60)
        assert operator.get("/console/").status_code == 200
    clock.advance(config.console_idle_timeout - 60)
    assert operator.get("/console/").headers["Location"] == "/console/sign-in"
    assert flashes(operator.get("/console/sign-in")) == ["Your session ended after 12 hours; sign in again."]


# -- CSRF ---------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(
    operator: FlaskClient, token: str | None, domain: services.Services, lock: RegistryLock
) -> None:
    data = {} if token is None else {"csrf_token": token}
    response = operator.post("/console/unlock", data=data)
    assert response.status_code == 400
    assert "CSRF check failed" in alerts(response)[0]
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert lock.status().seconds_left == 0
    assert audit_actions(domain) == []


def test_another_sessions_csrf_token_is_refused(app: Flask, operator: FlaskClient, lock: RegistryLock) -> None:
    other = app.test_client()
    sign_in(other, OPS_TOKEN)
    stolen = csrf_of(other.get("/console/"))
    assert operator.post("/console/unlock", data={"csrf_token": stolen}).status_code == 400
    assert lock.status().seconds_left == 0


def test_the_sign_in_form_needs_its_csrf_token(client: FlaskClient) -> None:
    client.get("/console/sign-in")
    response = client.post("/console/sign-in", data={"token": ADMIN_TOKEN})
    assert response.status_code == 400
    assert client.get("/console/").status_code == 303


def test_the_admin_api_needs_no_csrf_token(client: FlaskClient, auth: dict[str, str]) -> None:
    assert client.post("/api/client-registry/unlock", headers=auth).status_code == 200


# -- the Client Registry view ------------------------------------------------------------
def test_the_registry_view_when_locked(operator: FlaskClient) -> None:
    page = operator.get("/console/")
    assert page.status_code == 200
    assert '<span class="lock-word" id="lock-word">Locked</span>' in page.text
    assert 'data-seconds-left="0"' in page.text
    assert "No pending requests" in page.text
    for button in ("Unlock", "Lock"):
        assert f">{button}</button>" in page.text


def test_unlock_and_lock(operator: FlaskClient, config: Config, domain: services.Services, lock: RegistryLock) -> None:
    response = post(operator, "/console/unlock")
    assert (response.status_code, response.headers["Location"]) == (303, "/console/")
    assert lock.status().seconds_left == config.unlock_seconds  # the default duration
    page = operator.get("/console/")
    assert flashes(page) == ["Unlocked for 5 minutes: devices that try to connect now appear below."]
    assert '<span class="lock-word" id="lock-word">Unlocked</span>' in page.text
    assert '<span class="lock-left" id="lock-left">5:00 left</span>' in page.text
    response = post(operator, "/console/lock")
    assert response.status_code == 303
    assert lock.status().seconds_left == 0
    assert audit_actions(domain) == [("console:admin", "registry.lock"), ("console:admin", "registry.unlock")]


def test_the_pending_requests_table(operator: FlaskClient, domain: services.Services) -> None:
    request_id = pending(domain, client_id="esp32-17")
    domain.registration.attempt("sensor-1", "secret1", "esp32-17", "rest")  # a second attempt
    page = operator.get("/console/")
    row = re.search(r'<tr data-request-id="sensor-1:[0-9a-f]{6}">(.*?)</tr>', page.text, re.S)
    assert row is not None
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)]
    pairing = request_id.split(":")[1]
    assert cells[:4] == ["sensor-1", pairing, "esp32-17", "rest"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", cells[4])
    assert cells[6] == "2"
    assert f'href="/console/requests/{request_id}"' in row.group(1)


def test_the_refresh_endpoint(operator: FlaskClient, domain: services.Services) -> None:
    request_id = pending(domain, client_id="esp32-17", context={"site": "dock 4"})
    data = operator.get("/console/registry.json").get_json()
    assert data["secondsLeft"] == 300 and data["total"] == 1
    [item] = data["requests"]
    assert (item["id"], item["clientId"], item["context"], item["attempts"]) == (
        request_id,
        "esp32-17",
        {"site": "dock 4"},
        1,
    )
    assert "passwordHash" not in json.dumps(data)


def test_the_request_page_shows_the_grant_access_details(operator: FlaskClient, domain: services.Services) -> None:
    request_id = pending(domain, client_id="esp32-17", context={"site": "dock 4"})
    page = operator.get(f"/console/requests/{request_id}")
    assert page.status_code == 200
    assert "<h1>Grant access</h1>" in page.text
    assert f'<p class="pairing-id" data-field="pairingId" aria-label="Pairing ID">{request_id[-6:]}</p>' in page.text
    assert "&#34;site&#34;: &#34;dock 4&#34;" in page.text
    assert f'action="/console/requests/{request_id}/approve"' in page.text
    assert ">Allow</button>" in page.text and ">Deny</button>" in page.text


def test_the_registry_page_has_the_grant_access_dialog(operator: FlaskClient) -> None:
    page = operator.get("/console/")
    assert '<dialog id="grant-dialog" aria-labelledby="grant-title">' in page.text
    assert '<h2 id="grant-title">Grant access</h2>' in page.text


@pytest.mark.parametrize("request_id", ["sensor-1:000000", "nonsense", "a:b", "sensor-1:XYZ"])
def test_an_unknown_request_page_is_one_sentence(operator: FlaskClient, request_id: str) -> None:
    page = operator.get(f"/console/requests/{request_id}")
    assert page.status_code == 404
    assert len(alerts(page)) == 1 and alerts(page)[0].startswith("No pending request")


def test_allow_creates_the_user_exactly_as_the_api_does(
    operator: FlaskClient, users: UserStore, domain: services.Services, requests: PendingRequests
) -> None:
    request_id = pending(domain, client_id="esp32-17")
    stored_hash = domain.redis.hget(domain.keys.request("sensor-1", request_id[-6:]), "passwordHash")
    response = post(operator, f"/console/requests/{request_id}/approve")
    assert (response.status_code, response.headers["Location"]) == (303, "/console/users/sensor-1")
    assert users.password_hash("sensor-1") == stored_hash
    assert users.get("sensor-1").permissions == ()
    assert requests.count_requests() == 0
    assert audit_actions(domain)[0] == ("console:admin", "request.approve")
    page = operator.get("/console/users/sensor-1")
    assert flashes(page) == ["Allowed sensor-1: the device can connect now. It has no permissions yet."]


def test_allow_after_another_operator_did_is_one_sentence(
    operator: FlaskClient, domain: services.Services, requests: PendingRequests
) -> None:
    request_id = pending(domain)
    page = operator.get("/console/")  # the page the operator is looking at
    requests.approve("sensor-1", actor="api:ops")  # a second ago, elsewhere
    response = operator.post(f"/console/requests/{request_id}/approve", data={"csrf_token": csrf_of(page)})
    assert response.status_code == 409
    assert alerts(response) == ["User 'sensor-1' exists already; another operator may have allowed it already."]
    assert "Client Registry" in response.text


def test_deny_after_another_operator_did_is_one_sentence(
    operator: FlaskClient, domain: services.Services, requests: PendingRequests
) -> None:
    request_id = pending(domain)
    requests.deny("sensor-1", actor="api:ops")
    response = post(operator, f"/console/requests/{request_id}/deny")
    assert response.status_code == 404
    assert alerts(response) == [
        f"No pending request for 'sensor-1' with pairing ID {request_id[-6:]};"
        " another operator may have handled it, or it expired."
    ]


def test_deny(operator: FlaskClient, domain: services.Services, requests: PendingRequests) -> None:
    request_id = pending(domain)
    response = post(operator, f"/console/requests/{request_id}/deny")
    assert (response.status_code, response.headers["Location"]) == (303, "/console/")
    assert requests.count_requests() == 0
    assert audit_actions(domain)[0] == ("console:admin", "request.deny")
    assert flashes(operator.get("/console/")) == [
        f"Denied sensor-1 (pairing ID {request_id[-6:]}): its attempts are refused."
    ]


def test_deny_all_for_a_squatted_username(
    operator: FlaskClient, domain: services.Services, requests: PendingRequests, config: Config
) -> None:
    domain.lock.unlock()
    for n in range(config.pending_per_username):
        domain.registration.attempt("sensor-1", f"junk-{n}", "", "mqtt")
    domain.registration.attempt("sensor-1", "the-device", "", "mqtt")  # over the cap: refused, counted
    request_id = requests.requests_for("sensor-1")[0].id
    page = operator.get(f"/console/requests/{request_id}")
    assert 'Refused attempts</dt><dd data-field="refusedAttempts">1</dd>' in page.text
    assert ">Deny all requests for this username</button>" in page.text
    response = post(operator, f"/console/requests/{request_id}/deny-all", page=f"/console/requests/{request_id}")
    assert (response.status_code, response.headers["Location"]) == (303, "/console/")
    assert requests.requests_for("sensor-1") == []
    assert [a for a in audit_actions(domain) if a[1] == "request.deny"] == [("console:admin", "request.deny")] * 3
    assert flashes(operator.get("/console/")) == ["Denied all 3 requests for sensor-1: their attempts are refused."]
    gone = post(operator, f"/console/requests/{request_id}/deny-all")
    assert gone.status_code == 404


# -- Users ---------------------------------------------------------------------------
def test_the_users_view_links_every_user(operator: FlaskClient, users: UserStore) -> None:
    users.add("gateway-1", "secret1")
    users.add("gateway-2", "secret2", superuser=True)
    page = operator.get("/console/users")
    assert page.status_code == 200
    for name in ("gateway-1", "gateway-2"):
        assert f'<a href="/console/users/{name}">{name}</a>' in page.text


def test_add_a_user(operator: FlaskClient, users: UserStore) -> None:
    response = post(operator, "/console/users", {"username": "gateway-1", "password": "secret1"}, "/console/users")
    assert (response.status_code, response.headers["Location"]) == (303, "/console/users/gateway-1")
    assert users.exists("gateway-1")


def test_a_taken_username_is_one_sentence_next_to_the_form(operator: FlaskClient, users: UserStore) -> None:
    users.add("gateway-1", "secret1")
    response = post(operator, "/console/users", {"username": "gateway-1", "password": "other1"}, "/console/users")
    assert response.status_code == 409
    assert alerts(response) == ["User 'gateway-1' exists already."]
    assert 'value="gateway-1"' in response.text  # what was typed stays


@pytest.mark.parametrize(
    ("username", "password", "status"), [("a/b", "secret1", 400), ("gateway-1", "abc", 400), ("", "", 400)]
)
def test_bad_user_input_is_one_sentence(operator: FlaskClient, username: str, password: str, status: int) -> None:
    response = post(operator, "/console/users", {"username": username, "password": password}, "/console/users")
    assert response.status_code == status
    assert len(alerts(response)) == 1


def test_the_user_page(operator: FlaskClient, users: UserStore) -> None:
    users.add("gateway-1", "secret1")
    users.grant("gateway-1", "devices/%u/#", "readWrite")
    users.roles.grant("fleet", "fleet/#", "read")
    users.roles.grant("ops", "ops/#", "write")
    users.assign_role("gateway-1", "fleet")
    page = operator.get("/console/users/gateway-1")
    assert page.status_code == 200
    assert "<h1>gateway-1</h1>" in page.text
    assert '<td data-label="Topic" class="mono">devices/%u/#</td>' in page.text
    assert '<td data-label="Access">readWrite</td>' in page.text
    assert '<span class="role">fleet</span>' in page.text
    assert '<option value="ops">ops</option>' in page.text  # a role to give
    assert '<dd id="superuser">no</dd>' in page.text
    assert '<label for="topic">Topic</label>' in page.text
    assert '<label for="access">Access</label>' in page.text
    for level in ("read", "write", "readWrite"):
        assert f'<option value="{level}">{level}</option>' in page.text
    assert ">Add permission</button>" in page.text
    assert ">Delete user</a>" in page.text


def test_the_user_page_lists_its_own_client_ids_as_text(operator: FlaskClient, users: UserStore) -> None:
    users.add("gateway-1", "secret1")
    assert '<dd class="mono" id="client-ids">–</dd>' in operator.get("/console/users/gateway-1").text
    users.set_client_ids("gateway-1", ["gw-1", "<b>x</b>\u202e"])
    page = operator.get("/console/users/gateway-1").text
    assert "<dt>Own client IDs</dt>" in page
    assert '<dd class="mono" id="client-ids">&lt;b&gt;x&lt;/b&gt;\\u202e, gw-1</dd>' in page
    assert "<b>x</b>" not in page


def test_an_unknown_user_page_is_one_sentence(operator: FlaskClient) -> None:
    page = operator.get("/console/users/nobody")
    assert page.status_code == 404
    assert alerts(page) == ["No user 'nobody'."]


def test_add_and_remove_a_permission(operator: FlaskClient, users: UserStore, domain: services.Services) -> None:
    users.add("gateway-1", "secret1")
    page = "/console/users/gateway-1"
    response = post(operator, page + "/permissions", {"topic": "devices/%u/#", "access": "readWrite"}, page)
    assert (response.status_code, response.headers["Location"]) == (303, page)
    assert [p.to_dict() for p in users.get("gateway-1").permissions] == [
        {"topic": "devices/%u/#", "access": "readWrite"}
    ]
    assert flashes(operator.get(page)) == ["Added readWrite on devices/%u/#."]
    response = post(operator, page + "/permissions/remove", {"topic": "devices/%u/#"}, page)
    assert response.status_code == 303
    assert users.get("gateway-1").permissions == ()
    assert audit_actions(domain)[:2] == [("console:admin", "user.revoke"), ("console:admin", "user.grant")]


@pytest.mark.parametrize(
    ("topic", "access"), [("devices/#/x", "read"), ("", "read"), ("a/b", "admin"), ("a\x00b", "read")]
)
def test_a_bad_permission_is_one_sentence_next_to_the_form(
    operator: FlaskClient, users: UserStore, topic: str, access: str
) -> None:
    users.add("gateway-1", "secret1")
    page = "/console/users/gateway-1"
    response = post(operator, page + "/permissions", {"topic": topic, "access": access}, page)
    assert response.status_code == 400
    [message] = alerts(response)
    assert message.endswith(".")
    # Next to the Add permission form: the alert follows it.
    form_end = response.text.index(">Add permission</button>")
    assert response.text.index('role="alert"') > form_end
    assert users.get("gateway-1").permissions == ()


def test_removing_a_permission_the_user_lacks_is_one_sentence(operator: FlaskClient, users: UserStore) -> None:
    users.add("gateway-1", "secret1")
    page = "/console/users/gateway-1"
    response = post(operator, page + "/permissions/remove", {"topic": "a/b"}, page)
    assert response.status_code == 404
    assert alerts(response) == ["User 'gateway-1' has no permission on 'a/b'."]


def test_give_and_take_a_role(operator: FlaskClient, users: UserStore) -> None:
    users.add("gateway-1", "secret1")
    users.roles.grant("fleet", "fleet/#", "read")
    page = "/console/users/gateway-1"
    assert post(operator, page + "/roles", {"role": "fleet"}, page).status_code == 303
    assert users.get("gateway-1").roles == ("fleet",)
    assert post(operator, page + "/roles/remove", {"role": "fleet"}, page).status_code == 303
    assert users.get("gateway-1").roles == ()


def test_giving_an_unknown_role_is_one_sentence(operator: FlaskClient, users: UserStore) -> None:
    users.add("gateway-1", "secret1")
    page = "/console/users/gateway-1"
    response = post(operator, page + "/roles", {"role": "nonexistent"}, page)
    assert response.status_code == 404
    assert alerts(response) == ["No role 'nonexistent'."]


def test_superuser_flag(operator: FlaskClient, users: UserStore) -> None:
    users.add("gateway-1", "secret1")
    page = "/console/users/gateway-1"
    assert post(operator, page + "/superuser", {"superuser": "1"}, page).status_code == 303
    assert users.get("gateway-1").superuser is True
    assert '<dd id="superuser">yes: passes every ACL check</dd>' in operator.get(page).text
    assert post(operator, page + "/superuser", {"superuser": "0"}, page).status_code == 303
    assert users.get("gateway-1").superuser is False


def test_delete_user_after_a_confirmation(operator: FlaskClient, users: UserStore, domain: services.Services) -> None:
    users.add("gateway-1", "secret1")
    confirm = operator.get("/console/users/gateway-1/delete")
    assert confirm.status_code == 200
    assert "Delete user gateway-1?" in confirm.text
    assert users.exists("gateway-1")  # asking changes nothing
    response = operator.post("/console/users/gateway-1/delete", data={"csrf_token": csrf_of(confirm)})
    assert (response.status_code, response.headers["Location"]) == (303, "/console/users")
    assert not users.exists("gateway-1")
    assert audit_actions(domain)[0] == ("console:admin", "user.delete")


def test_a_change_to_a_user_deleted_meanwhile_is_one_sentence(operator: FlaskClient, users: UserStore) -> None:
    users.add("gateway-1", "secret1")
    page = operator.get("/console/users/gateway-1")
    users.delete("gateway-1")
    response = operator.post(
        "/console/users/gateway-1/permissions", data={"csrf_token": csrf_of(page), "topic": "a", "access": "read"}
    )
    assert response.status_code == 404
    assert alerts(response) == ["No user 'gateway-1'."]
    response = operator.post("/console/users/gateway-1/delete", data={"csrf_token": csrf_of(page)})
    assert response.status_code == 404


# -- Audit ---------------------------------------------------------------------------
def test_the_audit_view_newest_first(operator: FlaskClient, clock: FakeClock, lock: RegistryLock) -> None:
    lock.unlock(actor="cli:root")
    clock.advance(1)
    lock.lock(actor="api:ops")
    page = operator.get("/console/audit")
    assert page.status_code == 200
    actions = re.findall(r'<td data-label="Action" class="mono">([^<]+)</td>', page.text)
    assert actions == ["registry.lock", "registry.unlock"]
    assert "seconds=300" in page.text


# "²" and "٣" pass str.isdigit(); int() refuses the first (it was a 500) and reads the second
@pytest.mark.parametrize("limit", ["0", "abc", "5000", "\u00b2", "\u0663", "-1", " 5"])
def test_a_bad_audit_limit_is_one_sentence(operator: FlaskClient, limit: str) -> None:
    page = operator.get(f"/console/audit?limit={limit}")
    assert page.status_code == 400
    assert alerts(page) == ["Limit must be an integer from 1 to 1000."]


# -- what devices sent is text, never markup -----------------------------------------------
def test_a_hostile_client_id_and_context_are_shown_as_text(operator: FlaskClient, domain: services.Services) -> None:
    context = {"note": "<script>alert(2)</script>", HOSTILE: "\u202eexe.txt"}
    request_id = pending(domain, client_id=HOSTILE, context=context)
    for path in ("/console/", f"/console/requests/{request_id}"):
        page = operator.get(path)
        assert HOSTILE not in page.text and "<script>alert" not in page.text
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page.text
    request_page = operator.get(f"/console/requests/{request_id}").text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in request_page
    assert "\u202e" not in request_page and "\\u202eexe.txt" in request_page
    # The refresh endpoint's JSON cannot be mistaken for markup either.
    raw = operator.get("/console/registry.json").get_data(as_text=True)
    assert "<" not in raw and ">" not in raw
    # After approval the user's page and the audit show it as text too.
    post(operator, f"/console/requests/{request_id}/approve")
    for path in ("/console/users/sensor-1", "/console/audit"):
        page = operator.get(path)
        assert HOSTILE not in page.text
        assert "&lt;img src=x" in page.text


def test_hostile_operator_input_is_escaped_in_the_error(operator: FlaskClient, users: UserStore) -> None:
    users.add("gateway-1", "secret1")
    page = "/console/users/gateway-1"
    response = post(operator, page + "/permissions", {"topic": "<b>x</b>/#/y", "access": "read"}, page)
    assert response.status_code == 400
    assert "<b>x</b>" not in response.text and "&lt;b&gt;x&lt;/b&gt;" in response.text


def test_a_hostile_path_is_escaped(operator: FlaskClient) -> None:
    page = operator.get("/console/users/%3Cscript%3Ealert(1)")
    assert page.status_code == 400
    assert "<script>alert" not in page.text
    assert alerts(page)[0].startswith("Username must be 3 to 64 characters")


# -- headers and files ------------------------------------------------------------------
PAGES = ["/console/", "/console/users", "/console/users/gateway-1", "/console/users/gateway-1/delete", "/console/audit"]


def test_every_page_has_the_csp_and_no_inline_script_or_style(
    operator: FlaskClient, client: FlaskClient, users: UserStore, domain: services.Services
) -> None:
    users.add("gateway-1", "secret1")
    request_id = pending(domain)
    responses = [operator.get(path) for path in [*PAGES, f"/console/requests/{request_id}", "/console/nope"]]
    responses.append(post(operator, "/console/users/gateway-1/permissions", {"topic": "#/a"}, "/console/users"))
    responses.append(operator.post("/console/lock", data={}))  # CSRF refusal
    responses.append(operator.get("/console/static/console.css"))
    responses.append(operator.get("/console/registry.json"))
    for response in responses:
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        if response.mimetype == "text/html":
            text = response.text
            assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", text) == []
            assert re.findall(r"\sstyle=", text) == []
            assert re.findall(r"\son[a-z]+=", text) == []
            assert "<style" not in text
            # Everything the page loads, it loads from the console itself.
            for url in re.findall(r'(?:src|href)="([^"]+)"', text):
                assert url.startswith("/console/"), url
        response.close()
    csp = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'" and csp["default-src"] == "'none'"
    assert csp["frame-ancestors"] == "'none'" and csp["form-action"] == "'self'"


def test_pages_with_data_are_not_cached(operator: FlaskClient) -> None:
    assert operator.get("/console/").headers["Cache-Control"] == "no-store"
    assert operator.get("/console/registry.json").headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("name", "mimetype"),
    [("console.css", "text/css"), ("console.js", "text/javascript"), ("favicon.svg", "image/svg+xml")],
)
def test_the_console_serves_its_own_files(client: FlaskClient, name: str, mimetype: str) -> None:
    """Served without a session (the sign-in page needs them); nothing from elsewhere."""
    response = client.get(f"/console/static/{name}")
    assert (response.status_code, response.mimetype) == (200, mimetype)
    response.close()


def test_an_unknown_console_page_is_an_html_404(operator: FlaskClient) -> None:
    page = operator.get("/console/no/such/page")
    assert (page.status_code, page.mimetype) == (404, "text/html")
    assert alerts(page) == ["There is no such page."]


def test_redis_down_is_a_503_page(operator: FlaskClient, redis_server: fakeredis.FakeServer) -> None:
    redis_server.connected = False
    page = operator.get("/console/")
    assert (page.status_code, page.mimetype) == (503, "text/html")
    assert alerts(page) == ["Redis did not answer, so nothing was read or changed; try again in a moment."]
    assert operator.get("/console/registry.json").status_code == 503


def test_a_bug_is_a_500_page_not_a_traceback(
    operator: FlaskClient, monkeypatch: pytest.MonkeyPatch, domain: services.Services
) -> None:
    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(domain.lock, "status", broken)
    page = operator.get("/console/")
    assert (page.status_code, page.mimetype) == (500, "text/html")
    assert "a bug" not in page.text and "Traceback" not in page.text


def test_the_package_ships_its_templates_and_files() -> None:
    """pyproject's package-data names every file the console needs."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "cregistry.web.console"
    ]
    package = root / "cregistry" / "web" / "console"
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    needed = {p for p in package.rglob("*") if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}
    assert needed and needed <= shipped


# -- configuration ----------------------------------------------------------------
def test_the_console_settings() -> None:
    assert Config.from_env({}).session_secret is None
    config = Config.from_env(
        {
            "CREGISTRY_SESSION_SECRET": "x" * 32,
            "CREGISTRY_CONSOLE_SECURE_COOKIES": "true",
            "CREGISTRY_CONSOLE_IDLE_TIMEOUT": "600",
            "CREGISTRY_CONSOLE_MAX_AGE": "7200",
            "CREGISTRY_CONSOLE_SIGNIN_LIMIT": "5",
            "CREGISTRY_CONSOLE_SIGNIN_WINDOW": "60",
        }
    )
    assert (config.session_secret, config.console_secure_cookies) == ("x" * 32, True)
    assert (config.console_idle_timeout, config.console_max_age) == (600, 7200)
    assert (config.console_signin_limit, config.console_signin_window) == (5, 60)
    for raw, flag in (("1", True), ("yes", True), ("ON", True), ("0", False), ("false", False), ("off", False)):
        assert Config.from_env({"CREGISTRY_CONSOLE_SECURE_COOKIES": raw}).console_secure_cookies is flag


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CREGISTRY_SESSION_SECRET", "short"),
        ("CREGISTRY_CONSOLE_SECURE_COOKIES", "maybe"),
        ("CREGISTRY_CONSOLE_IDLE_TIMEOUT", "10"),
        ("CREGISTRY_CONSOLE_MAX_AGE", "forever"),
        ("CREGISTRY_CONSOLE_SIGNIN_LIMIT", "0"),
        ("CREGISTRY_CONSOLE_SIGNIN_WINDOW", "-1"),
    ],
)
def test_bad_console_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        Config.from_env({variable: value})
    assert variable in str(error.value)


def test_serve_makes_one_session_secret_before_the_workers_fork(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """gunicorn forks the workers from one master: the secret made there is
    every worker's, so a session signed by one is accepted by the others."""
    base = Config(redis_url="redis://127.0.0.1:1/0", admin_token=ADMIN_TOKEN)
    started, _announced = serve_once(monkeypatch, base)
    assert started.session_secret is not None and len(started.session_secret) == 64
    assert "CREGISTRY_SESSION_SECRET is not set" in caplog.text
    started, _announced = serve_once(monkeypatch, dataclasses.replace(base, session_secret=SECRET))
    assert started.session_secret == SECRET


# -- the Host header (DNS rebinding) -------------------------------------------------
@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8080", "192.0.2.10", "[::1]:8080", "[2001:db8::1]", "localhost:8080", "LOCALHOST", "registry.example"],
)
def test_the_console_answers_ip_addresses_localhost_and_listed_names(
    connection: fakeredis.FakeRedis, clock: FakeClock, host: str
) -> None:
    config = Config(admin_token=ADMIN_TOKEN, session_secret=SECRET, console_hosts=("registry.example",))
    client = create_app(config, listener="api", connection=connection, clock=clock).test_client()
    assert client.get("/console/sign-in", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("path", ["/console/sign-in", "/console/", "/console/users", "/console/static/console.js"])
def test_a_page_under_another_name_gets_no_console(client: FlaskClient, path: str) -> None:
    """A page on attacker.example that rebinds its name to this service's
    address reaches it as same-origin, with Host: attacker.example: it gets a
    400 that names the setting, and no console (no form, no CSRF token, no session)."""
    response = client.get(path, headers={"Host": "attacker.example:8080"})
    assert response.status_code == 400
    assert "CREGISTRY_CONSOLE_HOSTS" in response.text
    assert "csrf_token" not in response.text
    assert "Set-Cookie" not in response.headers


def test_a_sign_in_posted_under_another_name_is_refused(app: Flask, connection: fakeredis.FakeRedis) -> None:
    client = app.test_client()
    form = client.get("/console/sign-in")
    before = connection.keys("*")
    response = client.post(
        "/console/sign-in",
        data={"csrf_token": csrf_of(form), "token": "guess"},
        headers={"Host": "attacker.example"},
    )
    assert response.status_code == 400
    assert connection.keys("*") == before  # not even a counted failure


def test_star_lets_the_console_answer_any_name(connection: fakeredis.FakeRedis, clock: FakeClock) -> None:
    config = Config(admin_token=ADMIN_TOKEN, session_secret=SECRET, console_hosts=("*",))
    client = create_app(config, listener="api", connection=connection, clock=clock).test_client()
    assert client.get("/console/sign-in", headers={"Host": "anything.example"}).status_code == 200


@pytest.mark.parametrize("value", ["registry.example:8080", "-bad.example", "a b", "under_score.example"])
def test_console_hosts_must_be_host_names(value: str) -> None:
    with pytest.raises(ConfigError, match="CREGISTRY_CONSOLE_HOSTS"):
        Config.from_env({"CREGISTRY_CONSOLE_HOSTS": f"ok.example,{value}"})


def test_console_hosts_are_read_case_insensitively() -> None:
    assert Config.from_env({"CREGISTRY_CONSOLE_HOSTS": " Registry.Example , *"}).console_hosts == (
        "registry.example",
        "*",
    )
