"""The one place that maps domain and Redis errors to CLI exit codes."""

from __future__ import annotations

import functools
from typing import Any

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

# Looked up along the class hierarchy: a subclass without a row answers as its nearest base.
EXIT_CODE_FOR = {
    errors.ConfigError: EXIT_INVALID,
    errors.InvalidInput: EXIT_INVALID,
    errors.UserNotFound: EXIT_NOT_FOUND,
    errors.RoleNotFound: EXIT_NOT_FOUND,
    errors.RequestNotFound: EXIT_NOT_FOUND,
    errors.EnrollmentNotFound: EXIT_NOT_FOUND,
    errors.EnrollmentExists: EXIT_CONFLICT,
    errors.EnrollmentRefused: EXIT_REFUSED,
    errors.PermissionNotFound: EXIT_NOT_FOUND,
    errors.UsernameTaken: EXIT_CONFLICT,
    errors.ClientIdTaken: EXIT_CONFLICT,
    errors.AmbiguousRequest: EXIT_CONFLICT,
    errors.RequestDenied: EXIT_REFUSED,
    errors.CertificateRefused: EXIT_REFUSED,
    errors.StorageUnavailable: EXIT_UNAVAILABLE,
    errors.PasswordChecksBusy: EXIT_UNAVAILABLE,
    errors.CredentialsFileMissing: EXIT_NOT_FOUND,
    errors.CredentialsFileInvalid: EXIT_INVALID,
    errors.CredentialsRefused: EXIT_REFUSED,
    errors.RegistrationFailed: 1,
}


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
    code = next((EXIT_CODE_FOR[cls] for cls in type(error).__mro__ if cls in EXIT_CODE_FOR), 1)
    return command_error(str(error), code)


class ErrorMappingGroup(click.Group):
    """Turns domain and Redis errors into one line and an exit code, for the
    `cregistry` group and (when used on its own) the `device` group."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (errors.CregistryError, redis.RedisError) as error:
            hint = getattr(ctx.obj, "redis_hint", lambda: "")() if isinstance(error, redis.RedisError) else ""
            raise to_command_error(error, hint) from None
