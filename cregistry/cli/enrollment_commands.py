"""`cregistry enrollment ...`: tokens for batches of devices (enrollments.py)."""

from __future__ import annotations

import click

from cregistry import enrollments
from cregistry.cli.context import CliContext, pass_cli
from cregistry.cli.errors import EXIT_INVALID, command_error
from cregistry.cli.output import display, emit, help_from, json_option, table
from cregistry.config import VERIFY_SECRET, env_name
from cregistry.enrollments import Enrollment


@click.group()
@json_option
def enrollment() -> None:
    """Enrollments: one token registers a batch of devices at once.

    \b
    Example:
        cregistry enrollment create line-3 --pattern 'line3-*' --role sensors --max-uses 500
    """


@enrollment.command("create")
@click.argument("name")
@click.option("--pattern", required=True, help="Glob over the usernames it may register ('sensor-*', 'line3-??').")
@click.option("--role", "roles", multiple=True, help="A role (existing) every user it creates gets; repeatable.")
@click.option(
    "--max-uses",
    type=int,
    default=enrollments.DEFAULT_MAX_USES,
    show_default=True,
    help=f"Devices it may register, 1 to {enrollments.MAX_USES}.",
)
@click.option(
    "--expires",
    "expires_in",
    type=int,
    default=enrollments.DEFAULT_EXPIRES_IN,
    show_default=True,
    help=f"Seconds until it expires, {enrollments.MIN_EXPIRES_IN} to {enrollments.MAX_EXPIRES_IN}.",
)
@json_option
@pass_cli
@help_from(secret=env_name(VERIFY_SECRET))
def enrollment_create(
    obj: CliContext, name: str, pattern: str, roles: tuple[str, ...], max_uses: int, expires_in: int
) -> None:
    """Create enrollment NAME and print its token, this once: devices whose
    usernames match --pattern register with it at once, locked or not.

    Needs {secret}, the service's: only a digest of the token under it is
    stored, and the service must compute the same.

    \b
    Example:
        cregistry enrollment create line-3 --pattern 'line3-*' --role sensors --max-uses 500 --expires 86400
    """
    if not obj.config.verify_secret:
        raise command_error(
            f"{env_name(VERIFY_SECRET)} is not set: set it to the service's value, or the service cannot"
            " recognise the token (or create the enrollment over the API or in the console)",
            EXIT_INVALID,
        )
    created = obj.domain.enrollments.create(name, pattern, list(roles), max_uses, expires_in, actor=obj.actor)
    found = created.enrollment
    text = "\n".join(
        [
            f"created enrollment {found.name}: usernames {display(found.username_pattern)},"
            f" roles {', '.join(found.roles) or '-'}, {found.max_uses} use{'s' if found.max_uses != 1 else ''},"
            f" expires {found.to_dict()['expiresAt']}",
            f"token (shown only now; give it to the devices): {created.token}",
        ]
    )
    emit(created.to_dict(), text, obj.json_output)


@enrollment.command("list")
@json_option
@pass_cli
def enrollment_list(obj: CliContext) -> None:
    """List live enrollments with their uses left (never their tokens).

    \b
    Example:
        cregistry enrollment list
    """
    found = obj.domain.enrollments.list_enrollments()
    rows = [_row(e) for e in found]
    text = (
        table(["NAME", "PATTERN", "ROLES", "USES LEFT", "EXPIRES", "CREATED BY", "DELETED USERS"], rows)
        if found
        else "no enrollments"
    )
    emit({"enrollments": [e.to_dict() for e in found]}, text, obj.json_output)


@enrollment.command("delete")
@click.argument("name")
@json_option
@pass_cli
def enrollment_delete(obj: CliContext, name: str) -> None:
    """Revoke enrollment NAME: its token registers nobody from now on. The
    users it created stay (delete them with `cregistry user delete`).

    \b
    Example:
        cregistry enrollment delete line-3
    """
    obj.domain.enrollments.delete(name, actor=obj.actor)
    emit({"deleted": name}, f"revoked enrollment {name}", obj.json_output)


@enrollment.command("forget")
@click.argument("name")
@click.argument("username")
@json_option
@pass_cli
def enrollment_forget(obj: CliContext, name: str, username: str) -> None:
    """Forget that USERNAME, created by enrollment NAME, was deleted, so that
    it may register through NAME again.

    \b
    Example:
        cregistry enrollment forget line-3 line3-017
    """
    found = obj.domain.enrollments.forget_removed(name, username, actor=obj.actor)
    emit(found.to_dict(), f"enrollment {name}: {username} may register again", obj.json_output)


def _row(found: Enrollment) -> list[object]:
    data = found.to_dict()
    return [
        found.name,
        found.username_pattern,
        ",".join(found.roles) or "-",
        f"{found.uses_left}/{found.max_uses}",
        data["expiresAt"],
        found.created_by,
        ",".join(found.removed_users) or "-",
    ]
