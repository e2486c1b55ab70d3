"""`cregistry role ...`: roles, named sets of permissions given to many users."""

from __future__ import annotations

import click

from cregistry.cli.context import CliContext, pass_cli
from cregistry.cli.output import display, emit, json_option, table
from cregistry.cli.permission_commands import ACCESS_CHOICE, change_note, permission_lines
from cregistry.roles import Role


@click.group()
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
    found = obj.roles.list_roles()
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
    found = obj.roles.get(name)
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
    changed, change = obj.roles.grant_permission(name, pattern, access, actor=obj.actor)
    emit(
        changed.to_dict(),
        f"role {name}: granted {access} on {display(pattern)}{change_note(change)}",
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
    changed = obj.roles.revoke(name, pattern, actor=obj.actor)
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
    obj.roles.delete(name, actor=obj.actor)
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
    lines += permission_lines(found.permissions)
    return "\n".join(lines)
