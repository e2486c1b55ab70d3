"""The `cregistry` command. It works on Redis directly, so it also works
while the service is down; every command is one call into the domain."""

from __future__ import annotations

import functools
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click
import redis

from cregistry import embedded, services
from cregistry.audit import MAX_LISTED as MAX_AUDIT_LISTED
from cregistry.cli.device_commands import device
from cregistry.cli.errors import CommandError, ErrorMappingGroup
from cregistry.cli.output import display, emit, help_from, json_option, table
from cregistry.cli.prompts import read_new_password
from cregistry.config import MAX_UNLOCK_SECONDS, REDIS_URL, Config, env_name
from cregistry.connections import connect
from cregistry.requests import MAX_PAGE, PendingRequest
from cregistry.users import ACCESS_LEVELS, PermissionChange, Role, User, UserStore

# Per Redis operation: the bound of the broker routes' deadline, so a command
# against a stalled Redis fails within 2 s as the service's answers do.
CLI_REDIS_TIMEOUT = 1.5


# How a command reaches Redis: connections.connect, or what the caller hands
# in as the click context's obj (the tests: CliRunner.invoke(..., obj=...)).
Connector = Callable[..., redis.Redis]


class CliContext:
    def __init__(self, json_output: bool, connector: Connector = connect) -> None:
        self.json_output = json_output
        self.connector = connector
        self._services: services.Services | None = None

    @functools.cached_property
    def config(self) -> Config:
        return Config.from_env()

    @property
    def domain(self) -> services.Services:
        """Built on first use, so `--help` and device commands need no Redis."""
        if self._services is None:
            url = self.config.redis_url or embedded.url_for(self.config.embedded_redis_port)
            connection = self.connector(url, CLI_REDIS_TIMEOUT, min_replicas=self.config.redis_min_replicas)
            self._services = services.build(connection, self.config)
        return self._services

    @functools.cached_property
    def actor(self) -> str:
        """Who the audit trail names for this command."""
        try:
            return f"cli:{getpass.getuser()}"
        except (KeyError, OSError):  # no passwd entry, e.g. an arbitrary uid in a container
            return f"cli:uid-{os.getuid()}"

    @property
    def users(self) -> UserStore:
        return self.domain.users

    def redis_hint(self) -> str:
        if self.config.redis_url:
            return f" at {env_name(REDIS_URL)}"
        return (
            f": {env_name(REDIS_URL)} is not set and no embedded Redis of `cregistry serve`"
            f" answers at {embedded.url_for(self.config.embedded_redis_port)}"
        )


pass_cli = click.make_pass_decorator(CliContext)


@click.group(cls=ErrorMappingGroup)
@click.option("--json", "json_output", is_flag=True, help="Output JSON for scripts.")
@click.version_option(package_name="cregistry")
@click.pass_context
def cli(ctx: click.Context, json_output: bool) -> None:
    """Client registry for Mosquitto: devices register themselves, operators approve.

    Reads CREGISTRY_* environment variables (CREGISTRY_REDIS_URL above all).
    """
    ctx.obj = CliContext(json_output, ctx.obj if callable(ctx.obj) else connect)


# -- service ----------------------------------------------------------------
@cli.command()
def serve() -> None:
    """Run the service: the API listener and the broker listener for go-auth.

    \b
    Example:
        CREGISTRY_REDIS_URL=redis://localhost:6379/0 cregistry serve
    """
    from cregistry.server import serve as run_server

    config = Config.from_env()
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        run_server(config, lambda text: click.echo(text, err=True))
    except RuntimeError as error:
        raise CommandError(str(error)) from None


# -- lock state -------------------------------------------------------------
@cli.command()
@json_option
@pass_cli
def status(obj: CliContext) -> None:
    """Show whether the registry is unlocked and for how long.

    \b
    Example:
        cregistry status --json
    """
    state = obj.domain.lock.status()
    emit(state.to_dict(), _lock_text(state.locked, state.seconds_left), obj.json_output)


@cli.command()
@click.option(
    "--seconds",
    type=int,
    default=None,
    help=f"How long to stay unlocked (default {Config.unlock_seconds}, at most {MAX_UNLOCK_SECONDS}).",
)
@json_option
@pass_cli
def unlock(obj: CliContext, seconds: int | None) -> None:
    """Unlock the registry: unknown devices that connect are recorded as requests.

    \b
    Example:
        cregistry unlock --seconds 600
    """
    state = obj.domain.lock.unlock(seconds, actor=obj.actor)
    emit(state.to_dict(), _lock_text(state.locked, state.seconds_left), obj.json_output)


@cli.command()
@json_option
@pass_cli
def lock(obj: CliContext) -> None:
    """Lock the registry now.

    \b
    Example:
        cregistry lock
    """
    state = obj.domain.lock.lock(actor=obj.actor)
    emit(state.to_dict(), _lock_text(state.locked, state.seconds_left), obj.json_output)


def _lock_text(locked: bool, seconds_left: int) -> str:
    return "locked" if locked else f"unlocked, {seconds_left} s left"


# -- requests ---------------------------------------------------------------
@cli.command()
@click.option("--offset", type=int, default=0, help="Skip this many requests.")
@click.option("--limit", type=int, default=MAX_PAGE, help=f"Show at most this many (at most {MAX_PAGE}).")
@json_option
@pass_cli
def requests(obj: CliContext, offset: int, limit: int) -> None:
    """List pending registration requests with their pairing IDs, least recently seen first.

    \b
    Example:
        cregistry requests --offset 100 --limit 50
    """
    pending = obj.domain.requests.list_requests(offset, limit)
    total = obj.domain.requests.count_requests()
    if pending:
        text = table(
            ["USERNAME", "PAIRING ID", "CLIENT ID", "SOURCE", "ATTEMPTS", "FIRST SEEN", "LAST SEEN"],
            [_request_row(r) for r in pending],
        )
    elif total:
        text = f"offset {offset} is past the end: {total} pending request{'' if total == 1 else 's'}"
    else:
        text = "no pending requests"
    # The same page fields as GET /api/client-registry/requests.
    emit(
        {"requests": [r.to_dict() for r in pending], "total": total, "offset": offset, "limit": limit},
        text,
        obj.json_output,
    )


def _request_row(request: PendingRequest) -> list[Any]:
    data = request.to_dict()
    return [
        request.username, request.pairing_id, request.client_id, request.source,
        request.attempts, data["firstSeen"], data["lastSeen"],
    ]  # fmt: skip


@cli.command()
@click.argument("username")
@click.option("--pairing-id", help="Which request, when USERNAME has several.")
@json_option
@pass_cli
def approve(obj: CliContext, username: str, pairing_id: str | None) -> None:
    """Approve USERNAME's request: the user is created with the device's own
    credentials and no permissions.

    \b
    Example:
        cregistry approve sensor-17 --pairing-id 3fa2c1
    """
    user = obj.domain.requests.approve(username, pairing_id, actor=obj.actor)
    emit(
        user.to_dict(),
        f"approved {user.username} (pairing ID {user.pairing_id}); it has no permissions yet:"
        f" grant some with `cregistry grant {user.username} PATTERN ACCESS`",
        obj.json_output,
    )


@cli.command()
@click.argument("username")
@click.option("--pairing-id", help="Which request, when USERNAME has several.")
@json_option
@pass_cli
def deny(obj: CliContext, username: str, pairing_id: str | None) -> None:
    """Deny USERNAME's request; the same credentials stay refused for the pending TTL.

    \b
    Example:
        cregistry deny sensor-17 --pairing-id 3fa2c1
    """
    request = obj.domain.requests.deny(username, pairing_id, actor=obj.actor)
    emit({"denied": request.to_dict()}, f"denied {request.username} (pairing ID {request.pairing_id})", obj.json_output)


# -- users ------------------------------------------------------------------
@cli.command()
@click.option(
    "--not-connected-for",
    "idle_days",
    type=click.IntRange(min=0),
    help="Only users whose last connect is older than this many days, or who never connected.",
)
@json_option
@pass_cli
def users(obj: CliContext, idle_days: int | None) -> None:
    """List users (never their password hashes), with their last connect.

    \b
    Example:
        cregistry users --not-connected-for 7
    """
    since = None if idle_days is None else obj.domain.clock() - idle_days * 86400
    found = obj.users.list_users(not_connected_since=since)
    rows = []
    for u in found:
        data = u.to_dict()
        last = f"{data['lastConnect']} {display(u.last_client_id)}" if u.last_connect is not None else "never"
        rows.append([
            u.username, "yes" if u.superuser else "no", ",".join(u.roles) or "-", len(u.permissions),
            data["createdAt"], last,
        ])  # fmt: skip
    text = (
        table(["USERNAME", "SUPERUSER", "ROLES", "PERMISSIONS", "CREATED", "LAST CONNECT (CLIENT ID)"], rows)
        if found
        else "no users"
    )
    emit({"users": [u.to_dict() for u in found]}, text, obj.json_output)


@cli.group()
@json_option
def user() -> None:
    """Show, add and delete users; set the superuser flag.

    \b
    Example:
        cregistry user show sensor-17
    """


@user.command("show")
@click.argument("username")
@json_option
@pass_cli
def user_show(obj: CliContext, username: str) -> None:
    """Show one user with roles and permissions.

    \b
    Example:
        cregistry user show sensor-17 --json
    """
    found = obj.users.get(username)
    emit(found.to_dict(), _user_text(found), obj.json_output)


@user.command("add")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option(
    "--password",
    "password_option",
    help="The password itself (other local users can see it in the process list: prefer --password-stdin).",
)
@click.option("--superuser", is_flag=True, help="Make the user pass every ACL check.")
@json_option
@pass_cli
def user_add(
    obj: CliContext, username: str, password_stdin: bool, password_option: str | None, superuser: bool
) -> None:
    """Add a user with a password chosen by the operator (devices normally
    register themselves instead).

    \b
    Example:
        printf '%s' "$PASSWORD" | cregistry user add backend --password-stdin
    """
    if password_option is not None and password_stdin:
        raise click.UsageError("give the password with --password or --password-stdin, not both")
    if password_option is not None:
        password = password_option
    elif password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = read_new_password()
    created = obj.users.add(username, password, superuser=superuser, actor=obj.actor)
    emit(created.to_dict(), f"added {created.username}", obj.json_output)


@user.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
@json_option
@pass_cli
def user_passwd(obj: CliContext, username: str, password_stdin: bool) -> None:
    """Give USERNAME a new password (asked twice on a terminal). The old one
    stops working at once, and brokers with cregistry's plugin disconnect the
    user's clients.

    \b
    Example:
        printf '%s' "$NEW_PASSWORD" | cregistry user passwd backend --password-stdin
    """
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else read_new_password("New password")
    changed = obj.users.set_password(username, password, actor=obj.actor)
    emit(changed.to_dict(), f"{changed.username}: password changed", obj.json_output)


@user.command("delete")
@click.argument("username")
@json_option
@pass_cli
def user_delete(obj: CliContext, username: str) -> None:
    """Delete a user, its permissions and role assignments.

    \b
    Example:
        cregistry user delete sensor-17
    """
    obj.users.delete(username, actor=obj.actor)
    emit({"deleted": username}, f"deleted {username}", obj.json_output)


@user.command("superuser")
@click.argument("username")
@click.argument("state", type=click.Choice(["on", "off"]))
@json_option
@pass_cli
def user_superuser(obj: CliContext, username: str, state: str) -> None:
    """Turn USERNAME's superuser flag on or off (superusers pass every ACL check).

    \b
    Example:
        cregistry user superuser backend on
    """
    changed = obj.users.set_superuser(username, state == "on", actor=obj.actor)
    emit(changed.to_dict(), f"{username}: superuser {state}", obj.json_output)


@user.command("clear-failures")
@click.argument("username")
@json_option
@pass_cli
def user_clear_failures(obj: CliContext, username: str) -> None:
    """Lift USERNAME's guessing limit (failed password checks in the window).

    \b
    Example:
        cregistry user clear-failures sensor-17
    """
    cleared = obj.domain.verifier.clear_failures(username, actor=obj.actor)
    emit({"username": username, "cleared": cleared}, f"{username}: cleared {cleared} failed attempts", obj.json_output)


def _user_text(found: User) -> str:
    data = found.to_dict()
    last_connect = (
        f"{data['lastConnect']} (client id {display(found.last_client_id)})"
        if found.last_connect is not None
        else "never"
    )
    fields = [
        ("username", found.username),
        ("created", data["createdAt"]),
        ("source", found.source),
        ("client id", display(found.client_id)),
        ("pairing ID", found.pairing_id or "-"),
        ("superuser", "yes" if found.superuser else "no"),
        ("last connect", last_connect),
        ("roles", ", ".join(found.roles) or "-"),
    ]
    lines = [f"{label + ':':<14}{value}" for label, value in fields]
    lines.append("permissions:" + ("" if found.permissions else " none"))
    lines += [f"  {p.access:<9}  {display(p.topic)}" for p in found.permissions]
    return "\n".join(lines)


# -- permissions ------------------------------------------------------------
ACCESS_CHOICE = click.Choice(ACCESS_LEVELS)


@cli.command()
@click.argument("username")
@click.argument("pattern")
@click.argument("access", type=ACCESS_CHOICE)
@json_option
@pass_cli
@help_from(access=", ".join(ACCESS_LEVELS))
def grant(obj: CliContext, username: str, pattern: str, access: str) -> None:
    """Give USERNAME ACCESS ({access}) on topic PATTERN.

    PATTERN may use + and #, and %u / %c for the username and client id.
    A pattern that has an access already gets the new one instead (read,
    then write, leaves write only: grant readWrite for both).

    \b
    Example:
        cregistry grant sensor-17 'devices/%u/#' readWrite
    """
    changed, change = obj.users.grant_permission(username, pattern, access, actor=obj.actor)
    emit(
        changed.to_dict(),
        f"granted {username} {access} on {display(pattern)}{_change_note(change)}",
        obj.json_output,
    )


def _change_note(change: PermissionChange) -> str:
    """Nothing for a new pattern; what a replacing grant replaced."""
    return "" if change.previous is None else f" ({change.describe()})"


@cli.command()
@click.argument("username")
@click.argument("pattern")
@json_option
@pass_cli
def revoke(obj: CliContext, username: str, pattern: str) -> None:
    """Remove USERNAME's direct permission on PATTERN.

    \b
    Example:
        cregistry revoke sensor-17 'devices/%u/#'
    """
    changed = obj.users.revoke(username, pattern, actor=obj.actor)
    emit(changed.to_dict(), f"revoked {username}'s permission on {display(pattern)}", obj.json_output)


# -- audit ------------------------------------------------------------------
@cli.command()
@click.option("--limit", type=int, default=50, help=f"How many entries, newest first (at most {MAX_AUDIT_LISTED}).")
@json_option
@pass_cli
def audit(obj: CliContext, limit: int) -> None:
    """Show the audit trail: who unlocked, approved, denied or changed what.

    \b
    Example:
        cregistry audit --limit 20
    """
    entries = obj.domain.audit.entries(limit)
    text = (
        table(
            ["TIME", "ACTOR", "ACTION", "TARGET", "DETAILS"],
            [
                [e["time"], e["actor"], e["action"], e["target"], json.dumps(e["details"], sort_keys=True)]
                for e in entries
            ],
        )
        if entries
        else "no audit entries"
    )
    emit({"entries": entries}, text, obj.json_output)


# -- roles ------------------------------------------------------------------
@cli.group()
@json_option
def role() -> None:
    """Roles: named sets of permissions given to many users.

    \b
    Example:
        cregistry role grant devices 'devices/%u/#' readWrite
    """


@role.command("list")
@json_option
@pass_cli
def role_list(obj: CliContext) -> None:
    """List roles.

    \b
    Example:
        cregistry role list
    """
    found = obj.users.list_roles()
    text = (
        table(["ROLE", "PERMISSIONS", "MEMBERS"], [[r.name, len(r.permissions), len(r.members)] for r in found])
        if found
        else "no roles"
    )
    emit({"roles": [r.to_dict() for r in found]}, text, obj.json_output)


@role.command("show")
@click.argument("name")
@json_option
@pass_cli
def role_show(obj: CliContext, name: str) -> None:
    """Show a role's permissions and members.

    \b
    Example:
        cregistry role show devices
    """
    found = obj.users.get_role(name)
    emit(found.to_dict(), _role_text(found), obj.json_output)


@role.command("grant")
@click.argument("name")
@click.argument("pattern")
@click.argument("access", type=ACCESS_CHOICE)
@json_option
@pass_cli
def role_grant(obj: CliContext, name: str, pattern: str, access: str) -> None:
    """Give role NAME (created if new) ACCESS on PATTERN, replacing the
    access it had on PATTERN.

    \b
    Example:
        cregistry role grant device 'devices/%u/#' readWrite
    """
    changed, change = obj.users.grant_role_permission(name, pattern, access, actor=obj.actor)
    emit(
        changed.to_dict(),
        f"role {name}: granted {access} on {display(pattern)}{_change_note(change)}",
        obj.json_output,
    )


@role.command("revoke")
@click.argument("name")
@click.argument("pattern")
@json_option
@pass_cli
def role_revoke(obj: CliContext, name: str, pattern: str) -> None:
    """Remove role NAME's permission on PATTERN.

    \b
    Example:
        cregistry role revoke devices 'devices/%u/#'
    """
    changed = obj.users.revoke_role(name, pattern, actor=obj.actor)
    emit(changed.to_dict(), f"role {name}: revoked {display(pattern)}", obj.json_output)


@role.command("delete")
@click.argument("name")
@json_option
@pass_cli
def role_delete(obj: CliContext, name: str) -> None:
    """Delete role NAME and take it from its members.

    \b
    Example:
        cregistry role delete devices
    """
    obj.users.delete_role(name, actor=obj.actor)
    emit({"deleted": name}, f"deleted role {name}", obj.json_output)


@role.command("assign")
@click.argument("username")
@click.argument("name")
@json_option
@pass_cli
def role_assign(obj: CliContext, username: str, name: str) -> None:
    """Give USERNAME the role NAME.

    \b
    Example:
        cregistry role assign sensor-17 devices
    """
    changed = obj.users.assign_role(username, name, actor=obj.actor)
    emit(changed.to_dict(), f"{username} has role {name}", obj.json_output)


@role.command("unassign")
@click.argument("username")
@click.argument("name")
@json_option
@pass_cli
def role_unassign(obj: CliContext, username: str, name: str) -> None:
    """Take the role NAME from USERNAME.

    \b
    Example:
        cregistry role unassign sensor-17 devices
    """
    changed = obj.users.unassign_role(username, name, actor=obj.actor)
    emit(changed.to_dict(), f"{username} no longer has role {name}", obj.json_output)


def _role_text(found: Role) -> str:
    lines = [f"role:    {found.name}", f"members: {', '.join(found.members) or '-'}"]
    lines.append("permissions:" + ("" if found.permissions else " none"))
    lines += [f"  {p.access:<9}  {display(p.topic)}" for p in found.permissions]
    return "\n".join(lines)


cli.add_command(device)


def main() -> None:
    cli(prog_name="cregistry")
