"""The operator web console, on the API listener under /console/.

Server-rendered pages; console.js only moves what must change without a
reload (the countdown, the pending list, the Grant access dialog). Every
change is a POST with a CSRF token that calls the same domain function as
the admin API and the CLI, with the actor "console:<token name>". Bad input
is shown next to its form in one sentence, with a 4xx status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import redis
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from cregistry import errors, names, services
from cregistry.config import CONSOLE_HOSTS, Config, env_name
from cregistry.enrollments import DEFAULT_EXPIRES_IN, DEFAULT_MAX_USES
from cregistry.pending import PendingRequest, parse_request_id
from cregistry.permissions import ACCESS_LEVELS
from cregistry.roles import RoleStore
from cregistry.users import UserStore
from cregistry.web.console import auth
from cregistry.web.errors import status_for

log = logging.getLogger(__name__)

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates", static_folder="static")
csrf = CSRFProtect()

PAGE_SIZE = 200  # pending requests shown (the most recently seen); the API and CLI page through all
AUDIT_DEFAULT = 200
PUBLIC_ENDPOINTS = frozenset({"console.sign_in_form", "console.sign_in", "console.static"})
REFRESH_ENDPOINT = "console.registry_json"

# Scripts and styles only from files cregistry serves: no inline script, no
# style attribute, nothing from elsewhere; no framing; forms post only here.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def init_app(app: Flask, config: Config) -> None:
    """Serve the console on `app` (the API listener's)."""
    auth.configure(app, config)
    # Only the console's forms carry CSRF tokens; the admin API uses bearer
    # tokens and the device route none, so the check is the console's own.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    # A token lives as long as its session, which has its own limits.
    app.config["WTF_CSRF_TIME_LIMIT"] = None
    csrf.init_app(app)
    app.register_blueprint(bp)
    app.add_url_rule("/", "console_root", lambda: redirect(url_for("console.registry_view")))


# -- every request ------------------------------------------------------------
@bp.before_request
def require_session() -> BaseResponse | tuple[Response, int] | tuple[str, int, dict[str, str]] | None:
    if not auth.console_host_allowed(request.host, _config().console_hosts):
        return (
            f"This console does not answer to the host name {request.host!r}: list it in"
            f" {env_name(CONSOLE_HOSTS)} (comma-separated) to use it.\n",
            400,
            {"Content-Type": "text/plain; charset=utf-8"},
        )
    csrf.protect()
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    operator, reason = auth.current_operator(
        current_app, _config(), _domain().clock(), activity=request.endpoint != REFRESH_ENDPOINT
    )
    if operator is None:
        if reason:
            flash(reason, "notice")  # shown on the sign-in page, also after a background refresh
        if request.endpoint == REFRESH_ENDPOINT:
            return jsonify({"ok": False, "error": reason or "not signed in", "signIn": url_for(".sign_in_form")}), 401
        return redirect(url_for(".sign_in_form"), 303)
    g.operator = operator
    return None


@bp.after_request
def security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # Not no-referrer: Flask-WTF checks the Referer of POSTs that came over https.
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.context_processor
def page_context() -> dict[str, Any]:
    return {"operator": g.get("operator"), "access_levels": ACCESS_LEVELS}


@bp.app_template_filter("when")
def when(iso: str | None) -> str:
    """ISO 8601 as stored ("2026-12-01T08:16:31Z") in a form people read."""
    return (iso or "").replace("T", " ").replace("Z", " UTC")


@bp.app_template_filter("visible")
def visible(text: Any) -> str:
    """Device-sent text with control and bidi-override characters shown as
    escapes, so it cannot disguise itself as something else (markup is
    escaped by the templates anyway)."""
    text = "" if text is None else str(text)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@bp.app_template_filter("visible_lines")
def visible_lines(text: str) -> str:
    """`visible` line by line, for pretty-printed JSON."""
    return "\n".join(visible(line) for line in text.split("\n"))


@bp.app_template_filter("certificate_request")
def certificate_request_text(requested: dict[str, str] | None) -> str:
    """A pending request's CSR in words (console.js writes the same): its key
    type and the SHA-256 of its public key, the value the API and CLI show."""
    if not requested:
        return "Not requested"
    return f"Requested: {requested.get('keyType', '')} key, public key SHA-256 {requested.get('publicKeySha256', '')}"


@bp.app_template_filter("duration")
def duration(seconds: int) -> str:
    if seconds % 60:
        return f"{seconds} seconds"
    minutes = seconds // 60
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


@bp.app_template_filter("clock")
def clock_text(seconds: int) -> str:
    """Time left as M:SS (or H:MM:SS), the countdown's format."""
    hours, rest = divmod(max(0, seconds), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


# -- errors -----------------------------------------------------------------
@bp.errorhandler(CSRFError)
def csrf_refused(error: CSRFError) -> tuple[str, int]:
    return _error_page(
        "This form did not come from this console page, or the page is too old (CSRF check failed):"
        " reload the page and try again.",
        400,
    )


@bp.errorhandler(errors.CregistryError)
def domain_error(error: errors.CregistryError) -> tuple[Any, int]:
    return _error_page(sentence(error), status_for(error))


@bp.errorhandler(redis.RedisError)
def storage_error(error: redis.RedisError) -> tuple[Any, int]:
    log.warning("Redis unavailable: %s", type(error).__name__)
    return _error_page("Redis did not answer, so nothing was read or changed; try again in a moment.", 503)


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException) -> tuple[Any, int]:
    code = error.code or 500
    return _error_page(f"{error.name}: {error.description}" if code != 404 else "There is no such page.", code)


@bp.errorhandler(Exception)
def unexpected_error(error: Exception) -> tuple[Any, int]:
    log.exception("unexpected error in the console")
    return _error_page("Something went wrong inside cregistry; the details are in its log.", 500)


def _error_page(message: str, status: int) -> tuple[Any, int]:
    if request.endpoint == REFRESH_ENDPOINT:
        return jsonify({"ok": False, "error": message}), status
    return render_template("console/error.html", message=message, status=status), status


def sentence(error: Exception, hint: str = "") -> str:
    """A domain error's message as one sentence for the page."""
    text = str(error).strip() or type(error).__doc__ or "That did not work"
    text = text[0].upper() + text[1:]
    if hint:
        text = f"{text.rstrip('.')}; {hint}"
    return text if text.endswith((".", "?", "!")) else text + "."


def _status(error: errors.CregistryError) -> int:
    return status_for(error)


# -- signing in and out -----------------------------------------------------
@bp.get("/sign-in")
def sign_in_form() -> Any:
    operator, _ = auth.current_operator(current_app, _config(), _domain().clock(), activity=False)
    if operator is not None:
        return redirect(url_for(".registry_view"), 303)
    return render_template("console/sign_in.html")


@bp.post("/sign-in")
def sign_in() -> Any:
    try:
        auth.sign_in(current_app, _config(), _domain().admin_token_limit, request.form.get("token"), _domain().clock())
    except auth.SignInRefused as refused:
        return render_template("console/sign_in.html", error=str(refused)), refused.status
    return redirect(url_for(".registry_view"), 303)


@bp.post("/sign-out")
def sign_out() -> Any:
    log.info("console sign-out (token %s)", g.operator.token_name)
    auth.sign_out()
    flash("Signed out.", "notice")
    return redirect(url_for(".sign_in_form"), 303)


# -- Client Registry ----------------------------------------------------------
@bp.get("/")
def registry_view() -> Any:
    return _registry_page()


def _registry_page(error: str | None = None, status: int = 200) -> tuple[str, int]:
    requests, total = _pending()
    return (
        render_template(
            "console/registry.html",
            state=_domain().lock.status(),
            requests=requests,
            total=total,
            unlock_seconds=_config().unlock_seconds,
            error=error,
            active="registry",
        ),
        status,
    )


@bp.get("/registry.json")
def registry_json() -> Response:
    """What the Client Registry page refreshes itself with."""
    requests, total = _pending()
    return jsonify({**_domain().lock.status().to_dict(), "total": total, "requests": [r.to_dict() for r in requests]})


def _pending() -> tuple[list[PendingRequest], int]:
    """The most recently seen requests first."""
    pending = _domain().requests
    total = pending.count_requests()
    page = pending.list_requests(max(0, total - PAGE_SIZE), PAGE_SIZE)
    return sorted(page, key=lambda r: r.last_seen, reverse=True), max(total, len(page))


@bp.post("/unlock")
def unlock() -> Any:
    return _change(
        lambda: _domain().lock.unlock(actor=g.operator.actor),
        f"Unlocked for {duration(_config().unlock_seconds)}: devices that try to connect now appear below.",
        _registry_page,
        lambda _: url_for(".registry_view"),
    )


@bp.post("/lock")
def lock() -> Any:
    return _change(
        lambda: _domain().lock.lock(actor=g.operator.actor),
        "Locked: attempts by unknown devices are no longer recorded.",
        _registry_page,
        lambda _: url_for(".registry_view"),
    )


@bp.get("/requests/<request_id>")
def request_view(request_id: str) -> Any:
    """The Grant access page: what the dialog shows, for a browser without script."""
    username, candidate = parse_request_id(request_id)
    found = [r for r in _domain().requests.requests_for(username) if r.candidate == candidate]
    if not found:
        raise errors.RequestNotFound(f"no pending request {request_id}")
    return render_template("console/request.html", req=found[0], context_text=_context_text(found[0]))


@bp.post("/requests/<request_id>/approve")
def approve(request_id: str) -> Any:
    # "Allow anyway" (the second confirmation of a contested request) sends force.
    force = request.form.get("force") == "1"

    def allow() -> Any:
        username, candidate = parse_request_id(request_id)
        return _domain().requests.approve(username, candidate=candidate, force=force, actor=g.operator.actor)

    def failed(error: str, status: int) -> Any:
        contested = _contested_request(request_id)
        if contested is None:
            return _registry_page(error, status)
        # The second confirmation: the same page, now with "Allow anyway".
        page = render_template(
            "console/request.html",
            req=contested,
            context_text=_context_text(contested),
            confirm_force=True,
            error=error,
        )
        return page, status

    return _change(
        allow,
        lambda user: f"Allowed {user.username}: the device can connect now. It has no permissions yet.",
        failed,
        lambda user: url_for(".user_view", username=user.username),
        hints={
            errors.UsernameTaken: "another operator may have allowed it already.",
            errors.RequestContested: "choose Allow anyway only if you know this request is the device's.",
        },
    )


def _contested_request(request_id: str) -> PendingRequest | None:
    """The request if it is still pending and contested."""
    username, candidate = parse_request_id(request_id)
    found = [r for r in _domain().requests.requests_for(username) if r.candidate == candidate and r.contested]
    return found[0] if found else None


@bp.post("/requests/<request_id>/deny")
def deny(request_id: str) -> Any:
    def refuse() -> Any:
        username, candidate = parse_request_id(request_id)
        return _domain().requests.deny(username, candidate=candidate, actor=g.operator.actor)

    return _change(
        refuse,
        lambda req: f"Denied {req.username} (pairing ID {req.pairing_id}): its attempts are refused.",
        _registry_page,
        lambda _: url_for(".registry_view"),
    )


@bp.post("/requests/<request_id>/deny-all")
def deny_all(request_id: str) -> Any:
    """Deny every candidate of the request's username (a squatted username)."""

    def refuse_all() -> Any:
        username, _ = parse_request_id(request_id)
        return _domain().requests.deny_all(username, actor=g.operator.actor)

    return _change(
        refuse_all,
        lambda denied: (
            f"Denied all {len(denied)} request{'' if len(denied) == 1 else 's'} for {denied[0].username}:"
            " their attempts are refused."
        ),
        _registry_page,
        lambda _: url_for(".registry_view"),
    )


@bp.get("/requests/purge")
def confirm_purge() -> Any:
    return render_template("console/purge.html", total=_domain().requests.count_requests(), active="registry")


@bp.post("/requests/purge")
def purge_requests() -> Any:
    """Remove all requests, after confirm_purge's page."""
    return _change(
        lambda: _domain().requests.purge(actor=g.operator.actor),
        lambda removed: f"Removed {removed} pending request{'' if removed == 1 else 's'}.",
        _registry_page,
        lambda _: url_for(".registry_view"),
    )


def _context_text(req: PendingRequest) -> str:
    return "" if req.context is None else json.dumps(req.context, indent=2, ensure_ascii=False, sort_keys=True)


# -- Users ------------------------------------------------------------------
@bp.get("/users")
def users_view() -> Any:
    return _users_page()


def _users_page(error: str | None = None, status: int = 200, username: str = "") -> tuple[str, int]:
    return (
        render_template(
            "console/users.html", users=_users().list_users(), error=error, username=username, active="users"
        ),
        status,
    )


@bp.post("/users")
def add_user() -> Any:
    username = request.form.get("username", "").strip()
    return _change(
        lambda: _users().add(username, request.form.get("password", ""), actor=g.operator.actor),
        lambda user: f"Added {user.username}. It has no permissions yet.",
        lambda error, status: _users_page(error, status, username),
        lambda user: url_for(".user_view", username=user.username),
    )


@bp.get("/users/<username>")
def user_view(username: str) -> Any:
    return _user_page(username)


def _user_page(
    username: str, errors_by_form: dict[str, str] | None = None, status: int = 200, **values: str
) -> tuple[str, int]:
    users = _users()
    user = users.get(username)
    held = set(user.roles)
    return (
        render_template(
            "console/user.html",
            user=user,
            other_roles=[r.name for r in _roles().list_roles() if r.name not in held],
            errors=errors_by_form or {},
            values=values,
            active="users",
        ),
        status,
    )


def _user_change(username: str, form: str, change: Callable[[], Any], done: str, **values: str) -> Any:
    def failed(error: str, status: int) -> tuple[str, int]:
        if status == 404 and not _users().exists(username):
            return _error_page(error, 404)
        return _user_page(username, {form: error}, status, **values)

    return _change(change, done, failed, lambda _: url_for(".user_view", username=username))


@bp.post("/users/<username>/permissions")
def add_permission(username: str) -> Any:
    topic, access = request.form.get("topic", ""), request.form.get("access", "")
    return _user_change(
        username,
        "permission",
        lambda: _users().grant(username, topic, access, actor=g.operator.actor),
        f"Added {access} on {visible(topic)}.",
        topic=topic,
        access=access,
    )


@bp.post("/users/<username>/permissions/remove")
def remove_permission(username: str) -> Any:
    topic = request.form.get("topic", "")
    return _user_change(
        username,
        "permissions",
        lambda: _users().revoke(username, topic, actor=g.operator.actor),
        f"Removed the permission on {visible(topic)}.",
    )


@bp.post("/users/<username>/roles")
def give_role(username: str) -> Any:
    role = request.form.get("role", "")
    return _user_change(
        username,
        "role",
        lambda: _users().assign_role(username, role, actor=g.operator.actor),
        f"Gave role {visible(role)}.",
    )


@bp.post("/users/<username>/roles/remove")
def take_role(username: str) -> Any:
    role = request.form.get("role", "")
    return _user_change(
        username,
        "roles",
        lambda: _users().unassign_role(username, role, actor=g.operator.actor),
        f"Took role {visible(role)}.",
    )


@bp.post("/users/<username>/superuser")
def set_superuser(username: str) -> Any:
    flag = request.form.get("superuser") == "1"
    return _user_change(
        username,
        "superuser",
        lambda: _users().set_superuser(username, flag, actor=g.operator.actor),
        "Now a superuser: every ACL check passes." if flag else "No longer a superuser.",
    )


@bp.get("/users/<username>/delete")
def confirm_delete(username: str) -> Any:
    return render_template("console/delete.html", user=_users().get(username), active="users")


@bp.post("/users/<username>/delete")
def delete_user(username: str) -> Any:
    return _change(
        lambda: _users().delete(username, actor=g.operator.actor),
        f"Deleted {username}.",
        lambda error, status: _error_page(error, status),
        lambda _: url_for(".users_view"),
    )


@bp.get("/users/<username>/certificate/revoke")
def confirm_revoke_certificate(username: str) -> Any:
    user = _users().get(username)
    if user.certificate is None:
        raise errors.CertificateRefused(f"{username!r} has no certificate")
    return render_template("console/revoke_certificate.html", user=user, active="users")


@bp.post("/users/<username>/certificate/revoke")
def revoke_certificate(username: str) -> Any:
    return _user_change(
        username,
        "certificate",
        lambda: _domain().certificates.revoke(username, actor=g.operator.actor),
        "Revoked the certificate: it is refused from now on, and the user's clients were disconnected.",
    )


# -- Enrollments ------------------------------------------------------------
@bp.get("/enrollments")
def enrollments_view() -> Any:
    return _enrollments_page()


def _enrollments_page(
    error: str | None = None, status: int = 200, values: dict[str, str] | None = None, created: Any = None
) -> tuple[str, int]:
    return (
        render_template(
            "console/enrollments.html",
            enrollments=_domain().enrollments.list_enrollments(),
            role_names=[r.name for r in _roles().list_roles()],
            error=error,
            values=values or {},
            created=created,
            defaults={"max_uses": DEFAULT_MAX_USES, "expires_in": DEFAULT_EXPIRES_IN},
            active="enrollments",
        ),
        status,
    )


@bp.post("/enrollments")
def create_enrollment() -> Any:
    form = request.form
    values = {name: form.get(name, "").strip() for name in ("name", "pattern", "roles", "max_uses", "expires_in")}
    try:
        created = _domain().enrollments.create(
            values["name"],
            values["pattern"],
            [role.strip() for role in values["roles"].split(",") if role.strip()],
            _form_integer(values["max_uses"], DEFAULT_MAX_USES),
            _form_integer(values["expires_in"], DEFAULT_EXPIRES_IN),
            actor=g.operator.actor,
        )
    except errors.CregistryError as error:
        return _enrollments_page(sentence(error), _status(error), values)
    # The token is shown in this answer only: never flashed (the session
    # cookie is signed, not encrypted) and never in a URL.
    return _enrollments_page(status=201, created=created)


@bp.post("/enrollments/<name>/revoke")
def revoke_enrollment(name: str) -> Any:
    return _change(
        lambda: _domain().enrollments.delete(name, actor=g.operator.actor),
        f"Revoked enrollment {visible(name)}: its token registers nobody from now on. Its users stay.",
        _enrollments_page,
        lambda _: url_for(".enrollments_view"),
        hints={errors.EnrollmentNotFound: "it may have expired, or another operator revoked it."},
    )


def _form_integer(text: str, default: int) -> object:
    """A form field as an integer; anything else goes to the domain as it is, which says what is wrong."""
    if not text:
        return default
    number = names.decimal(text)
    return text if number is None else number


# -- Audit ------------------------------------------------------------------
@bp.get("/audit")
def audit_view() -> Any:
    raw = request.args.get("limit", str(AUDIT_DEFAULT))
    limit = names.decimal(raw)
    if limit is None:
        limit = -1  # the audit log refuses it with the bounds, as for any number out of range
    return render_template("console/audit.html", entries=_domain().audit.entries(limit), limit=limit, active="audit")


@bp.app_template_filter("details")
def details_text(details: Any) -> str:
    if not isinstance(details, dict):
        return visible(details)
    return visible(
        ", ".join(
            f"{key}={value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
            for key, value in sorted(details.items())
        )
    )


@bp.route("/<path:anything>", methods=["GET", "POST"])
def not_found(anything: str) -> Any:
    return _error_page("There is no such page.", 404)


# -- helpers ----------------------------------------------------------------
def _change(
    change: Callable[[], Any],
    done: str | Callable[[Any], str],
    failed: Callable[[str, int], Any],
    then: Callable[[Any], str],
    hints: dict[type[errors.CregistryError], str] | None = None,
) -> Any:
    """Run one domain change; on success flash `done` and redirect (POST,
    redirect, GET), on a domain error show it next to the form, with a hint
    at what may have happened."""
    hints = {errors.RequestNotFound: "another operator may have handled it, or it expired.", **(hints or {})}
    try:
        result = change()
    except errors.CregistryError as error:
        return failed(sentence(error, hints.get(type(error), "")), _status(error))
    flash(done(result) if callable(done) else done, "done")
    return redirect(then(result), 303)


def _config() -> Config:
    return current_app.extensions["cregistry"].config


def _domain() -> services.Services:
    return current_app.extensions["cregistry"].domain


def _users() -> UserStore:
    return _domain().users


def _roles() -> RoleStore:
    return _domain().roles
