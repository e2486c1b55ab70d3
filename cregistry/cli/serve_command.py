"""`cregistry serve`: the service itself."""

from __future__ import annotations

import logging
import sys

import click

from cregistry.cli.errors import CommandError
from cregistry.config import Config


@click.command()
def serve() -> None:
    """Run the service: the API listener and the broker listener for go-auth.

    \b
    Example:
        CREGISTRY_REDIS_URL=redis://localhost:6379/0 cregistry serve
    """
    from cregistry.server import serve as run_server

    config = Config.from_env()
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        run_server(config, lambda text: click.echo(text, err=True))
    except RuntimeError as error:
        raise CommandError(str(error)) from None
