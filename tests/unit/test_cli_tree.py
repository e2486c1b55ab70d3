"""Every command of the `cregistry` tree: `--json` wherever docs/cli.md says it
may go, and an example in every `--help`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cregistry.cli
from cregistry.device.credential_file import CredentialStore
from cregistry.device.credentials import Credentials
from cregistry.users import UserStore

# Commands that print no result to render as JSON: the service and the agent.
NO_JSON = {("serve",), ("device", "run")}


def walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


COMMANDS = list(walk(cregistry.cli.cli))
LEAVES = [(path, command) for path, command in COMMANDS if not isinstance(command, click.Group)]
GROUPS = [(path, command) for path, command in COMMANDS if isinstance(command, click.Group)]


def ids(items: list[tuple[tuple[str, ...], click.Command]]) -> list[str]:
    return [" ".join(path) for path, _ in items]


def test_the_walk_finds_the_whole_tree() -> None:
    assert {" ".join(path) for path, _ in GROUPS} == {"user", "role", "ca", "enrollment", "device", "requests"}
    assert {"status", "user show", "role list", "device pairing-id", "grant"} <= {" ".join(p) for p, _ in LEAVES}


@pytest.mark.parametrize(("path", "command"), GROUPS, ids=ids(GROUPS))
def test_every_group_takes_json(path: tuple[str, ...], command: click.Command) -> None:
    assert "--json" in {opt for param in command.params for opt in getattr(param, "opts", [])}, path


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=ids(LEAVES))
def test_every_command_that_prints_a_result_takes_json(path: tuple[str, ...], command: click.Command) -> None:
    has_json = "--json" in {opt for param in command.params for opt in getattr(param, "opts", [])}
    assert has_json is (path not in NO_JSON), path


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=ids(COMMANDS))
def test_every_help_shows_an_example(path: tuple[str, ...], command: click.Command) -> None:
    result = CliRunner().invoke(cregistry.cli.cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "Example:" in [line.strip() for line in lines], result.stdout
    example = lines[[line.strip() for line in lines].index("Example:") + 1].strip()
    assert example.split()[0] in ("cregistry", "printf", "CREGISTRY_REDIS_URL=redis://localhost:6379/0"), example
    assert f"cregistry {' '.join(path)}" in result.stdout, result.stdout


# -- --json at every nesting, for real ---------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["--json", "user", "show", "sensor-1"],
        ["user", "--json", "show", "sensor-1"],
        ["user", "show", "--json", "sensor-1"],
        ["user", "show", "sensor-1", "--json"],
    ],
)
def test_json_anywhere_in_a_user_command(runner: CliRunner, users: UserStore, args: list[str]) -> None:
    users.add("sensor-1", "secret1")
    result = runner.invoke(cregistry.cli.cli, args)
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert json.loads(result.stdout)["username"] == "sensor-1"


@pytest.mark.parametrize("args", [["--json", "role", "list"], ["role", "--json", "list"], ["role", "list", "--json"]])
def test_json_anywhere_in_a_role_command(runner: CliRunner, users: UserStore, args: list[str]) -> None:
    users.roles.grant("devices", "a/#", "read")
    result = runner.invoke(cregistry.cli.cli, args)
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert [r["name"] for r in json.loads(result.stdout)["roles"]] == ["devices"]


@pytest.mark.parametrize(
    "args",
    [
        ["--json", "device", "pairing-id"],
        ["device", "--json", "pairing-id"],
        ["device", "pairing-id", "--json"],
    ],
)
def test_json_anywhere_in_a_device_command(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "device.json"
    credentials = Credentials("sensor-1", "p" * 43, "sensor-1", "2027-01-15T08:00:00Z")
    CredentialStore(path).load_or_create(lambda: credentials)
    result = CliRunner().invoke(cregistry.cli.cli, [*args, "--credentials", str(path)])
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert json.loads(result.stdout) == {"username": "sensor-1", "pairingId": credentials.pairing_id}
