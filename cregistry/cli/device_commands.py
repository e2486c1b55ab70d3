"""`cregistry device`: the device agent (cregistry/device/) as a command."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from cregistry import errors
from cregistry.cli.errors import EXIT_INVALID, ErrorMappingGroup, command_error
from cregistry.cli.output import emit, json_option, json_requested
from cregistry.device import logs
from cregistry.device.agent import DeviceAgent, DeviceSettings, validate_publish_topic
from cregistry.device.credential_file import CredentialStore
from cregistry.device.mqtt import DEFAULT_MQTT_PORT, DEFAULT_MQTTS_PORT
from cregistry.device.rest import register_endpoint
from cregistry.device.tls import TlsSettings
from cregistry.names import validate_username


@click.group(cls=ErrorMappingGroup)
@json_option
def device() -> None:
    """Be a device: register with generated credentials, then stay connected.

    \b
    Example:
        cregistry device run --host broker.local --credentials /var/lib/sensor/credentials.json
    """


def _username(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else validate_username(value)
    except errors.InvalidInput as error:
        raise click.BadParameter(str(error)) from None


def _topic(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else validate_publish_topic(value)
    except errors.InvalidInput as error:
        raise click.BadParameter(str(error)) from None


def _register_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else register_endpoint(value)
    except errors.InvalidInput as error:
        raise click.BadParameter(str(error)) from None


CREDENTIALS_FILE = click.Path(dir_okay=False, path_type=Path)
READABLE_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@device.command()
@click.option("--host", required=True, help="The MQTT broker's host name or address.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help=f"The broker's port (default {DEFAULT_MQTT_PORT}, {DEFAULT_MQTTS_PORT} with TLS).",
)
@click.option(
    "--credentials",
    "credentials_path",
    type=CREDENTIALS_FILE,
    required=True,
    help="This device's credentials file; created (mode 0600) on first start, reused later.",
)
@click.option("--username", callback=_username, help="The username to register (default: host name + random suffix).")
@click.option("--client-id", help="The MQTT client id (default: the one stored, i.e. the username).")
@click.option(
    "--register-url",
    callback=_register_url,
    help="Register over REST first: the cregistry API URL (http://host:8080) or its register route.",
)
@click.option(
    "--publish",
    "publish_topic",
    callback=_topic,
    help="Publish a small JSON message here (%u: username, %c: client id).",
)
@click.option(
    "--enrollment-token-file",
    "enrollment_token_file",
    type=READABLE_FILE,
    help="Register over REST with the enrollment token in this file (needs --register-url): no approval needed.",
)
@click.option("--publish-interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds.")
@click.option("--tls", is_flag=True, help="Connect with TLS (implied by the other TLS options).")
@click.option("--ca-file", type=READABLE_FILE, help="CA certificates to verify the broker (and the REST URL) with.")
@click.option("--cert-file", type=READABLE_FILE, help="Client certificate (PEM).")
@click.option("--key-file", type=READABLE_FILE, help="The client certificate's key (PEM).")
@click.option("--insecure", is_flag=True, help="Do not verify the server certificate (testing only).")
@click.option(
    "--certificate",
    is_flag=True,
    help="Register with a CSR for a key made here (needs --register-url) and connect with the issued certificate;"
    " key, certificate and CA are kept beside the credentials file, and the certificate is renewed before expiry.",
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--max-backoff",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Longest wait in seconds between attempts.",
)
@click.option(
    "--exit-on-refusal",
    is_flag=True,
    help="Exit (code 5) when the broker refuses credentials it accepted before, instead of retrying.",
)
def run(
    host: str,
    port: int | None,
    credentials_path: Path,
    username: str | None,
    client_id: str | None,
    register_url: str | None,
    publish_topic: str | None,
    publish_interval: float,
    tls: bool,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    insecure: bool,
    certificate: bool,
    log_format: str,
    max_backoff: float,
    exit_on_refusal: bool,
    enrollment_token_file: Path | None,
) -> None:
    """Register this device and keep it connected.

    The first start makes a username and a random password, stores them in
    the credentials file (readable only by its owner) and prints the pairing
    ID and what the operator must do; the device then retries until it is
    approved. Later starts reuse the file. SIGTERM or Ctrl-C stop it (exit 0).

    With --enrollment-token-file (and --register-url) the device registers
    at once with an enrollment token instead (`cregistry enrollment create`).

    With --certificate (and --register-url) the registration carries a CSR
    for a key made on the device, and the device connects over TLS with the
    certificate the registry issues on approval (--ca-file: the broker's CA).
    Once a third of the certificate's validity is left it renews it (a new
    key, no new approval) and reconnects with the new one.

    \b
    Example:
        cregistry device run --host broker.local --credentials /var/lib/sensor/credentials.json \\
            --publish 'devices/%u/heartbeat' --publish-interval 30
        cregistry device run --host broker.local --credentials /var/lib/sensor/credentials.json \\
            --register-url https://registry.local:8080 --certificate --ca-file /etc/ssl/broker-ca.pem
    """
    if key_file is not None and cert_file is None:
        raise click.UsageError("--key-file needs --cert-file")
    if certificate and (cert_file is not None or register_url is None):
        raise click.UsageError(
            "--certificate needs --register-url (the CSR goes with the REST registration)"
            " and makes its own key and certificate (no --cert-file or --key-file)"
        )
    enrollment_token = _read_token(enrollment_token_file) if enrollment_token_file is not None else None
    if enrollment_token is not None and register_url is None:
        raise click.UsageError("--enrollment-token-file needs --register-url (enrollment tokens go over REST)")
    use_tls = tls or insecure or certificate or any(f is not None for f in (ca_file, cert_file, key_file))
    settings = DeviceSettings(
        host=host,
        port=port,
        credentials_path=credentials_path,
        username=username,
        client_id=client_id,
        register_url=register_url,
        publish_topic=publish_topic,
        publish_interval=publish_interval,
        tls=TlsSettings(ca_file, cert_file, key_file, insecure) if use_tls else None,
        max_backoff=max_backoff,
        exit_on_refusal=exit_on_refusal,
        enrollment_token=enrollment_token,
        certificate=certificate,
    )
    _configure_logging(log_format)
    try:
        device_agent = DeviceAgent(settings, announce=click.echo)
    except OSError as error:  # unreadable certificates or keys
        raise command_error(f"cannot set up TLS: {error}", EXIT_INVALID) from None
    stop = lambda _signum, _frame: device_agent.stop()  # noqa: E731
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        device_agent.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@device.command("pairing-id")
@click.option("--credentials", "credentials_path", type=CREDENTIALS_FILE, required=True, help="The credentials file.")
@json_option
@click.pass_context
def pairing_id(ctx: click.Context, credentials_path: Path) -> None:
    """Print the pairing ID of the credentials in a file, to compare with
    `cregistry requests`.

    \b
    Example:
        cregistry approve "$NAME" --pairing-id "$(cregistry device pairing-id --credentials device.json)"
    """
    store = CredentialStore(credentials_path)
    credentials = store.load()
    if not store.is_private():
        # stderr: stdout stays just the pairing ID, for --pairing-id "$(...)".
        click.echo(f"Warning: {credentials_path} is readable by other users: chmod 600 {credentials_path}", err=True)
    as_json = json_requested(ctx)
    emit({"username": credentials.username, "pairingId": credentials.pairing_id}, credentials.pairing_id, as_json)


def _read_token(path: Path) -> str:
    """The token in the file: its first line, without surrounding blanks."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        message = f"cannot read {path}: {type(error).__name__}"
        raise click.BadParameter(message, param_hint="--enrollment-token-file") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise click.BadParameter(f"{path} holds no token", param_hint="--enrollment-token-file")
    return token


def _configure_logging(log_format: str) -> None:
    """Handlers live at entry points: the agent's log goes to stderr."""
    logger = logs.log
    for handler in [h for h in logger.handlers if getattr(h, "cregistry_device", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logs.JsonLogFormatter() if log_format == "json" else logs.TextLogFormatter())
    handler.cregistry_device = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
