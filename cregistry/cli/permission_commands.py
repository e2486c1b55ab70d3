"""`cregistry grant` and `revoke`: a user's direct permissions."""

from __future__ import annotations

from collections.abc import Sequence

import click

from cregistry.cli.context import CliContext, pass_cli
from cregistry.cli.output import display, emit, help_from, json_option
from cregistry.permissions import ACCESS_LEVELS, Permission, PermissionChange

ACCESS_CHOICE = click.Choice(ACCESS_LEVELS)


@click.command()
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
        f"granted {username} {access} on {display(pattern)}{change_note(change)}",
        obj.json_output,
    )


def permission_lines(permissions: Sequence[Permission]) -> list[str]:
    """The permissions block of `user show` and `role show`."""
    lines = ["permissions:" + ("" if permissions else " none")]
    lines += [f"  {p.access:<9}  {display(p.topic)}" for p in permissions]
    return lines


def change_note(change: PermissionChange) -> str:
    """Nothing for a new pattern; what a replacing grant replaced."""
    return "" if change.previous is None else f" ({change.describe()})"


@click.command()
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
