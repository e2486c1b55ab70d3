"""`cregistry ca`: the registry CA that signs devices' client certificates (docs/certificates.md)."""

from __future__ import annotations

from pathlib import Path

import click

from cregistry import certificates
from cregistry.cli.context import CliContext, pass_cli
from cregistry.cli.output import emit, json_option
from cregistry.config import CA_CERT, CA_KEY, env_name


@click.group()
@json_option
def ca() -> None:
    """The registry CA: `serve` signs devices' certificates with it.

    \b
    Example:
        cregistry ca init /etc/cregistry/ca
    """


@ca.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@json_option
@pass_cli
def ca_init(obj: CliContext, directory: Path) -> None:
    """Write a new registry CA, DIRECTORY/ca.crt and DIRECTORY/ca.key (an EC
    P-256 key readable only by its owner); refuses to overwrite either.

    \b
    Example:
        cregistry ca init /etc/cregistry/ca
    """
    cert_path, key_path = certificates.init_ca(directory)
    emit(
        {"certificate": str(cert_path), "key": str(key_path)},
        f"wrote {cert_path} and {key_path} (keep the key secret; it signs every device certificate)\n"
        f"serve with {env_name(CA_CERT)}={cert_path} {env_name(CA_KEY)}={key_path};"
        f" give Mosquitto's TLS listener cafile {cert_path}",
        obj.json_output,
    )
