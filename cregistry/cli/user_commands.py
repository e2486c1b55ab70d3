"""`cregistry users` and `cregistry user ...`: the users themselves."""

from __future__ import annotations

import sys

import click

from cregistry.cli.context import CliContext, pass_cli
from cregistry.cli.output import display, emit, json_option, table
from cregistry.cli.permission_commands import permission_lines
from cregistry.cli.prompts import read_new_password
from cregistry.users import User


@click.command()
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


@click.group()
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


@user.command("revoke-certificate")
@click.argument("username")
@json_option
@pass_cli
def user_revoke_certificate(obj: CliContext, username: str) -> None:
    """Revoke USERNAME's client certificate: its clients are disconnected
    and the certificate is refused from then on (docs/certificates.md).

    \b
    Example:
        cregistry user revoke-certificate sensor-17
    """
    serial = obj.domain.certificates.revoke(username, actor=obj.actor)
    emit({"username": username, "revoked": serial}, f"revoked the certificate {serial} of {username}", obj.json_output)


@user.command("client-ids")
@click.argument("username")
@click.argument("client_ids", nargs=-1)
@click.option("--none", "no_client_ids", is_flag=True, help="Take every client ID away from USERNAME.")
@json_option
@pass_cli
def user_client_ids(obj: CliContext, username: str, client_ids: tuple[str, ...], no_client_ids: bool) -> None:
    """Show USERNAME's own client IDs, or replace them with CLIENT_IDS: no
    other user may connect with them (CREGISTRY_CLIENT_ID_POLICY, docs/threat-model.md).
    A client ID that another user owns is refused; free it there first.

    
    Example:
        cregistry user client-ids sensor-17 sensor-17 sensor-17-backup
    """
    if no_client_ids and client_ids:
        raise click.UsageError("give client IDs or --none, not both")
    if not client_ids and not no_client_ids:
        found = obj.users.get(username)
    else:
        found = obj.users.set_client_ids(username, list(client_ids), actor=obj.actor)
    text = "\n".join(display(c) for c in found.client_ids) if found.client_ids else f"{username}: no client IDs"
    emit({"username": username, "clientIds": list(found.client_ids)}, text, obj.json_output)


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
        ("client IDs", ", ".join(display(c) for c in found.client_ids) or "-"),
        ("pairing ID", found.pairing_id or "-"),
        ("superuser", "yes" if found.superuser else "no"),
        ("last connect", last_connect),
        ("roles", ", ".join(found.roles) or "-"),
    ]
    if found.certificate is not None:
        certificate = found.certificate.to_dict()
        fields.append(("certificate", f"serial {certificate['serial']}, valid until {certificate['notAfter']}"))
    lines = [f"{label + ':':<14}{value}" for label, value in fields]
    lines += permission_lines(found.permissions)
    return "\n".join(lines)
