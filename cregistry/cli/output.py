"""How the CLI shows results and errors: the one place that maps domain
errors to exit codes."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import redis

from cregistry import errors
from cregistry.connections import configuration_problem

# 1 is click's own code for a ClickException; 2 is click's usage error.
EXIT_INVALID = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_REFUSED = 5
EXIT_UNAVAILABLE = 6

EXIT_CODE_FOR = {
    errors.ConfigError: EXIT_INVALID,
    errors.InvalidInput: EXIT_INVALID,
    errors.UserNotFound: EXIT_NOT_FOUND,
    errors.RoleNotFound: EXIT_NOT_FOUND,
    errors.RequestNotFound: EXIT_NOT_FOUND,
    errors.PermissionNotFound: EXIT_NOT_FOUND,
    errors.UsernameTaken: EXIT_CONFLICT,
    errors.AmbiguousRequest: EXIT_CONFLICT,
    errors.RegistryLocked: EXIT_REFUSED,
    errors.RequestDenied: EXIT_REFUSED,
    errors.PendingLimitReached: EXIT_REFUSED,
    errors.TooManyFailures: EXIT_REFUSED,
    errors.StorageUnavailable: EXIT_UNAVAILABLE,
    errors.ReplicasUnconfirmed: EXIT_UNAVAILABLE,
    errors.CredentialsFileMissing: EXIT_NOT_FOUND,
    errors.CredentialsFileInvalid: EXIT_INVALID,
    errors.CredentialsRefused: EXIT_REFUSED,
    errors.RegistrationFailed: 1,
}


F = TypeVar("F", bound=Callable[..., Any])
# ctx.meta is shared by every context of one invocation: a --json given to
# any group reaches the command that prints.
JSON_REQUESTED = "cregistry.json"


def json_option(command: F) -> F:
    """`--json` on a command or group: `cregistry --json user show X`,
    `cregistry user --json show X` and `cregistry user show X --json` are one."""

    def merge(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.meta[JSON_REQUESTED] = True
            root = ctx.find_root().obj
            if hasattr(root, "json_output"):
                root.json_output = True
        return value

    return click.option(
        "--json", "json_flag", is_flag=True, expose_value=False, callback=merge, help="Output JSON for scripts."
    )(command)


def json_requested(ctx: click.Context) -> bool:
    return bool(ctx.meta.get(JSON_REQUESTED) or getattr(ctx.find_root().obj, "json_output", False))


class CommandError(click.ClickException):
    """One line on stderr ("Error: ..."), exit code 1."""


@functools.cache
def _error_class(exit_code: int) -> type[CommandError]:
    # click declares exit_code on the class, so each code gets its own subclass.
    return type(f"CommandError{exit_code}", (CommandError,), {"exit_code": exit_code})


def command_error(message: str, exit_code: int = 1) -> CommandError:
    """A CommandError that exits with `exit_code`."""
    return _error_class(exit_code)(message)


def to_command_error(error: Exception, redis_hint: str = "") -> CommandError:
    if isinstance(error, redis.RedisError):
        problem = configuration_problem(error)
        if problem is not None:
            return command_error(problem, EXIT_INVALID)
        return command_error(f"cannot reach Redis ({type(error).__name__}){redis_hint}", EXIT_UNAVAILABLE)
    assert isinstance(error, errors.CregistryError)
    return command_error(str(error), EXIT_CODE_FOR.get(type(error), 1))


class ErrorMappingGroup(click.Group):
    """Turns domain and Redis errors into one line and an exit code, for the
    `cregistry` group and (when used on its own) the `device` group."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (errors.CregistryError, redis.RedisError) as error:
            hint = getattr(ctx.obj, "redis_hint", lambda: "")() if isinstance(error, redis.RedisError) else ""
            raise to_command_error(error, hint) from None


def emit(data: Any, text: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))  # ASCII: no terminal control can get through
    else:
        click.echo(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[display(str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def display(text: str | None) -> str:
    """Client ids and contexts come from devices: show control characters
    escaped so they cannot rewrite the operator's terminal."""
    if text is None:
        return "-"
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
