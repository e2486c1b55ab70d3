"""The `cregistry` command. It works on Redis directly, so it also works
while the service is down; every command is one call into the domain.

The root group lives here; each command group lives in a module of its own
(lock_commands.py, request_commands.py, user_commands.py, ...)."""

from __future__ import annotations

import click

from cregistry.cli.audit_command import audit
from cregistry.cli.ca_commands import ca
from cregistry.cli.context import CliContext
from cregistry.cli.device_commands import device
from cregistry.cli.enrollment_commands import enrollment
from cregistry.cli.errors import ErrorMappingGroup
from cregistry.cli.lock_commands import lock, status, unlock
from cregistry.cli.permission_commands import grant, revoke
from cregistry.cli.request_commands import approve, deny, requests
from cregistry.cli.role_commands import role
from cregistry.cli.serve_command import serve
from cregistry.cli.user_commands import user, users
from cregistry.connections import connect


@click.group(cls=ErrorMappingGroup)
@click.option("--json", "json_output", is_flag=True, help="Output JSON for scripts.")
@click.version_option(package_name="cregistry")
@click.pass_context
def cli(ctx: click.Context, json_output: bool) -> None:
    """Client registry for Mosquitto: devices register themselves, operators approve.

    Reads CREGISTRY_* environment variables (CREGISTRY_REDIS_URL above all).
    """
    ctx.obj = CliContext(json_output, ctx.obj if callable(ctx.obj) else connect)


# The groups, a line a module; `--help` lists the commands sorted by name.
for command in (
    serve,
    *(status, unlock, lock),
    *(requests, approve, deny),
    *(users, user),
    *(grant, revoke),
    role,
    enrollment,
    audit,
    ca,
    device,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="cregistry")
