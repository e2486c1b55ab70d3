"""How the CLI shows results: --json, tables, text from devices made safe;
help texts filled in from the constants they name."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

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


def help_from(**values: object) -> Callable[[F], F]:
    """Fill the {names} of a command's docstring (its --help) from the
    constants that define them; place it right above the `def`."""

    def fill(command: F) -> F:
        command.__doc__ = (command.__doc__ or "").format(**values)
        return command

    return fill


def json_requested(ctx: click.Context) -> bool:
    return bool(ctx.meta.get(JSON_REQUESTED) or getattr(ctx.find_root().obj, "json_output", False))


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
