"""`cregistry device run --enrollment-token-file`: the agent registers with an
enrollment token over REST, keeps its credentials, and never logs the token."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cregistry import errors
from cregistry.cli.device_commands import device as device_group
from cregistry.device import agent
from cregistry.device.logs import JsonLogFormatter, TextLogFormatter
from cregistry.device.mqtt import ACCEPTED, ConnectResult

from .test_device import Harness, events

TOKEN = "enrol-Tok3n-kq0B5b3nB9r8tZ0mF1x2yQ7cV4eW6aL8s"


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as both formatters write it, and its fields."""
    text, as_json = TextLogFormatter(), JsonLogFormatter()
    return "\n".join(f"{text.format(r)}\n{as_json.format(r)}\n{getattr(r, 'fields', '')}" for r in caplog.records)


def test_the_agent_registers_with_the_token_and_never_logs_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cregistry.device")
    harness = Harness(
        tmp_path, ConnectResult(ACCEPTED, "Success"), register_url="http://cregistry:8080", enrollment_token=TOKEN,
        username="line3-001",
    )  # fmt: skip
    harness.http_answers = [OSError("Connection refused"), (429, {"error": "busy"}), (201, {"status": "granted"})]
    harness.broker.on_pump = lambda: (harness.agent.stop(), True)[1]
    harness.agent.run()

    stored = harness.stored()
    body = {
        "username": "line3-001",
        "password": stored["password"],
        "clientId": stored["clientId"],
        "enrollment": TOKEN,
    }
    assert [call[1] for call in harness.http_calls] == [body] * 3
    assert events(caplog)[-3:] == ["registration-granted", "connected", "stopped"]
    assert stored["lastAccepted"]  # its credentials are kept as after an approval
    assert "no approval is needed" in harness.announced[0]
    assert TOKEN not in everything_logged(caplog)
    assert TOKEN not in "\n".join(harness.announced)
    assert TOKEN not in harness.settings.credentials_path.read_text()
    assert TOKEN not in repr(harness.settings)


def test_a_refused_token_stops_the_device(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness(tmp_path, register_url="http://cregistry:8080", enrollment_token=TOKEN, username="line4-001")
    harness.http_answers = [(403, {"ok": False, "error": "this enrollment token cannot register this username"})]
    with pytest.raises(errors.EnrollmentRefused, match="refused the enrollment token for line4-001"):
        harness.agent.run()
    assert harness.broker.connects == []
    assert TOKEN not in everything_logged(caplog)


def _run(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(
        device_group, ["run", "--host", "broker", "--credentials", str(tmp_path / "d.json"), *args]
    )


def test_the_cli_reads_the_token_file_and_keeps_it_out_of_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[dict[str, Any]] = []

    def refuse(_url: str, body: dict[str, Any]) -> tuple[int, Any]:
        sent.append(body)
        return 403, {"ok": False, "error": "this enrollment token cannot register this username"}

    monkeypatch.setattr(agent, "http_post_json", lambda _context: refuse)
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    result = _run(
        tmp_path, "--register-url", "http://c:8080", "--enrollment-token-file", str(tmp_path / "token"),
        "--username", "line4-001", "--log-format", "json",
    )  # fmt: skip
    assert result.exit_code == 5, result.output  # EXIT_REFUSED
    assert [body["enrollment"] for body in sent] == [TOKEN]
    assert TOKEN not in result.output
    assert "refused the enrollment token" in result.output
    assert TOKEN not in json.dumps(json.loads((tmp_path / "d.json").read_text()))


@pytest.mark.parametrize(
    ("content", "extra", "words"),
    [
        (TOKEN, [], "--enrollment-token-file needs --register-url"),
        ("  \n", ["--register-url", "http://c:8080"], "holds no token"),
    ],
)
def test_the_cli_refuses_a_token_it_cannot_use(tmp_path: Path, content: str, extra: list[str], words: str) -> None:
    (tmp_path / "token").write_text(content)
    result = _run(tmp_path, "--enrollment-token-file", str(tmp_path / "token"), *extra)
    assert result.exit_code == 2
    assert words in result.output
    assert TOKEN not in result.output
    assert not (tmp_path / "d.json").exists()
