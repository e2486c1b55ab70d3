"""`cregistry requests`, `approve` and `deny`: the pending registration requests."""

from __future__ import annotations

from typing import Any

import click

from cregistry.cli.context import CliContext, pass_cli
from cregistry.cli.output import emit, json_option, table
from cregistry.requests import MAX_PAGE, PendingRequest

# approve and deny: which of USERNAME's requests.
pairing_id_option = click.option("--pairing-id", help="Which request, when USERNAME has several.")


@click.command()
@click.option("--offset", type=int, default=0, help="Skip this many requests.")
@click.option("--limit", type=int, default=MAX_PAGE, help=f"Show at most this many (at most {MAX_PAGE}).")
@json_option
@pass_cli
def requests(obj: CliContext, offset: int, limit: int) -> None:
    """List pending registration requests with their pairing IDs, least recently seen first.

    \b
    Example:
        cregistry requests --offset 100 --limit 50
    """
    pending = obj.domain.requests.list_requests(offset, limit)
    total = obj.domain.requests.count_requests()
    if pending:
        text = table(
            ["USERNAME", "PAIRING ID", "CLIENT ID", "SOURCE", "ATTEMPTS", "FIRST SEEN", "LAST SEEN"],
            [_request_row(r) for r in pending],
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
    return [
        request.username, request.pairing_id, request.client_id, request.source,
        request.attempts, data["firstSeen"], data["lastSeen"],
    ]  # fmt: skip


@click.command()
@click.argument("username")
@pairing_id_option
@json_option
@pass_cli
def approve(obj: CliContext, username: str, pairing_id: str | None) -> None:
    """Approve USERNAME's request: the user is created with the device's own
    credentials and no permissions.

    \b
    Example:
        cregistry approve sensor-17 --pairing-id 3fa2c1
    """
    user = obj.domain.requests.approve(username, pairing_id, actor=obj.actor)
    emit(
        user.to_dict(),
        f"approved {user.username} (pairing ID {user.pairing_id}); it has no permissions yet:"
        f" grant some with `cregistry grant {user.username} PATTERN ACCESS`",
        obj.json_output,
    )


@click.command()
@click.argument("username")
@pairing_id_option
@json_option
@pass_cli
def deny(obj: CliContext, username: str, pairing_id: str | None) -> None:
    """Deny USERNAME's request; the same credentials stay refused for the pending TTL.

    \b
    Example:
        cregistry deny sensor-17 --pairing-id 3fa2c1
    """
    request = obj.domain.requests.deny(username, pairing_id, actor=obj.actor)
    emit({"denied": request.to_dict()}, f"denied {request.username} (pairing ID {request.pairing_id})", obj.json_output)
