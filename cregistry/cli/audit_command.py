"""`cregistry audit`: the audit trail."""

from __future__ import annotations

import json

import click

from cregistry.audit import MAX_LISTED
from cregistry.cli.context import CliContext, pass_cli
from cregistry.cli.output import emit, json_option, table


@click.command()
@click.option("--limit", type=int, default=50, help=f"How many entries, newest first (at most {MAX_LISTED}).")
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
