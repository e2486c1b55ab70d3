"""`cregistry requests` (and `requests purge`), `approve` and `deny`: the pending registration requests."""

from __future__ import annotations

from typing import Any

import click

from cregistry.cli.context import CliContext, pass_cli
from cregistry.cli.errors import EXIT_INVALID, command_error
from cregistry.cli.output import emit, json_option, table
from cregistry.pending import MAX_PAGE, PendingRequest, parse_request_id

# approve and deny: which of USERNAME's requests.
pairing_id_option = click.option("--pairing-id", help="Which request, when USERNAME has several.")
request_id_option = click.option(
    "--request",
    "request_id",
    metavar="ID",
    help="Which request by its id (from `cregistry requests`), when two share a pairing ID.",
)

CONTESTED_MARK = "CONTESTED"


@click.group(invoke_without_command=True)
@click.option("--offset", type=int, default=0, help="Skip this many requests.")
@click.option("--limit", type=int, default=MAX_PAGE, help=f"Show at most this many (at most {MAX_PAGE}).")
@json_option
@click.pass_context
def requests(ctx: click.Context, offset: int, limit: int) -> None:
    """List pending registration requests with their pairing IDs, least recently seen first.

    A request marked CONTESTED shares its pairing ID with another request for
    the same username: approve it only with --force, once you know which one
    is the device's.

    \b
    Example:
        cregistry requests --offset 100 --limit 50
    """
    if ctx.invoked_subcommand is not None:
        return
    obj = ctx.find_object(CliContext)
    assert obj is not None  # the root group made it
    pending = obj.domain.requests.list_requests(offset, limit)
    total = obj.domain.requests.count_requests()
    if pending:
        text = table(
            ["ID", "USERNAME", "PAIRING ID", "CLIENT ID", "SOURCE", "ATTEMPTS", "FIRST SEEN", "LAST SEEN"],
            [_request_row(r) for r in pending],
        )
        refused = {r.username: r.refused_attempts for r in pending if r.refused_attempts}
        for username, count in sorted(refused.items()):
            text += (
                f"\n{username}: {count} more attempt{'' if count == 1 else 's'} refused over the per-username cap;"
                f" `cregistry deny {username} --all` denies every candidate"
            )
        # A line each under the table, so that the table's columns stay what scripts read.
        text += "".join(
            f"\n{r.username} (pairing ID {r.pairing_id}) requests a certificate:"
            # In full: the operator compares it with what the device shows, as in the console.
            f" {r.certificate_request['keyType']} key, public key SHA-256 {r.certificate_request['publicKeySha256']}"
            for r in pending
            if r.certificate_request is not None
        )
    elif total:
        text = f"offset {offset} is past the end: {total} pending request{'' if total == 1 else 's'}"
    else:
        text = "no pending requests"
    # The same page fields as GET /api/client-registry/requests.
    emit(
        {"requests": [r.to_dict() for r in pending], "total": total, "offset": offset, "limit": limit},
        text,
        obj.json_output,
    )


def _request_row(request: PendingRequest) -> list[Any]:
    data = request.to_dict()
    pairing = f"{request.pairing_id} {CONTESTED_MARK}" if request.contested else request.pairing_id
    return [
        request.id, request.username, pairing, request.client_id, request.source,
        request.attempts, data["firstSeen"], data["lastSeen"],
    ]  # fmt: skip


@requests.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_cli
def purge(obj: CliContext, yes: bool) -> None:
    """Remove every pending request (against a flood); none is denied.

    \b
    Example:
        cregistry requests purge --yes
    """
    if not yes:
        total = obj.domain.requests.count_requests()
        click.confirm(f"Remove all {total} pending requests?", abort=True, err=True)
    removed = obj.domain.requests.purge(actor=obj.actor)
    emit({"removed": removed}, f"removed {removed} pending request{'' if removed == 1 else 's'}", obj.json_output)


def _which(username: str, pairing_id: str | None, request_id: str | None) -> str | None:
    """The candidate a --request ID names, checked to be USERNAME's."""
    if request_id is None:
        return None
    if pairing_id is not None:
        raise command_error("give --pairing-id or --request, not both", EXIT_INVALID)
    owner, candidate = parse_request_id(request_id)
    if owner != username:
        raise command_error(f"request {request_id} is not one of {username}'s", EXIT_INVALID)
    return candidate


@click.command()
@click.argument("username")
@pairing_id_option
@request_id_option
@click.option("--force", is_flag=True, help="Approve a CONTESTED request (you know it is the device's).")
@json_option
@pass_cli
def approve(obj: CliContext, username: str, pairing_id: str | None, request_id: str | None, force: bool) -> None:
    """Approve USERNAME's request: the user is created with the device's own
    credentials and no permissions.

    \b
    Example:
        cregistry approve sensor-17 --pairing-id 3fa2c1
        cregistry approve sensor-17 --request sensor-17:3fa2c1-2 --force
    """
    candidate = _which(username, pairing_id, request_id)
    user = obj.domain.requests.approve(username, pairing_id, candidate=candidate, force=force, actor=obj.actor)
    emit(
        user.to_dict(),
        f"approved {user.username} (pairing ID {user.pairing_id}); it has no permissions yet:"
        f" grant some with `cregistry grant {user.username} PATTERN ACCESS`",
        obj.json_output,
    )


@click.command()
@click.argument("username")
@pairing_id_option
@request_id_option
@click.option("--all", "deny_all", is_flag=True, help="Deny every request for USERNAME (a squatted username).")
@json_option
@pass_cli
def deny(obj: CliContext, username: str, pairing_id: str | None, request_id: str | None, deny_all: bool) -> None:
    """Deny USERNAME's request; the same credentials stay refused for the pending TTL.

    \b
    Example:
        cregistry deny sensor-17 --pairing-id 3fa2c1
        cregistry deny sensor-17 --all
    """
    if deny_all:
        if pairing_id is not None or request_id is not None:
            raise command_error("--all denies every request; give no --pairing-id or --request", EXIT_INVALID)
        denied = obj.domain.requests.deny_all(username, actor=obj.actor)
        emit(
            {"denied": [r.to_dict() for r in denied]},
            f"denied {len(denied)} request{'' if len(denied) == 1 else 's'} for {username}",
            obj.json_output,
        )
        return
    candidate = _which(username, pairing_id, request_id)
    request = obj.domain.requests.deny(username, pairing_id, candidate=candidate, actor=obj.actor)
    emit({"denied": request.to_dict()}, f"denied {request.username} (pairing ID {request.pairing_id})", obj.json_output)
