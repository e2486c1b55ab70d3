"""Asking an operator for a new password at the terminal: one function for
every command that sets a password (`user add`, `user passwd`)."""

from __future__ import annotations

import getpass
import os
import sys
import warnings

import click

from cregistry.cli.errors import EXIT_INVALID, command_error

NO_TERMINAL = "no terminal to ask for the password on: give it with --password-stdin (or --password)"
MISMATCH = "the two passwords differ; nothing was changed"


def terminal_available() -> bool:
    """Whether getpass can read without echo: it uses /dev/tty, else a terminal on stdin."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return sys.stdin is not None and sys.stdin.isatty()
    os.close(fd)
    return True


def read_new_password(prompt: str = "Password") -> str:
    """Ask twice without echo. No terminal, or two different answers: one
    line and exit 2 (bad input), before anything is changed."""
    if not terminal_available():
        raise command_error(NO_TERMINAL, EXIT_INVALID)
    with warnings.catch_warnings():
        # getpass falls back to echoing input with a GetPassWarning; never do that.
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            first = click.prompt(prompt, hide_input=True)
            second = click.prompt("Repeat for confirmation", hide_input=True)
        except getpass.GetPassWarning:
            raise command_error(NO_TERMINAL, EXIT_INVALID) from None
    if first != second:
        raise command_error(MISMATCH, EXIT_INVALID)
    return str(first)
