"""`cregistry status`, `unlock` and `lock`: the registry's lock state."""

from __future__ import annotations

import click

from cregistry.cli.context import CliContext, pass_cli
from cregistry.cli.output import emit, json_option
from cregistry.config import MAX_UNLOCK_SECONDS, Config


@click.command()
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


@click.command()
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


@click.command()
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
