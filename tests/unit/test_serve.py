"""`cregistry serve` before the fork: which admin tokens a run has, and what it says about them."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import cregistry.server
from cregistry.config import Config

TOKEN = "t" * 32
OPS_TOKEN = "o" * 32


def serve_once(monkeypatch: pytest.MonkeyPatch, config: Config) -> tuple[Config, list[str]]:
    """Run serve() up to the gunicorn start; the config it would start with, and what it announced."""
    started: list[Config] = []

    class Server:
        def __init__(self, config: Config, *_args: Any) -> None:
            started.append(config)

        def run(self) -> None:
            pass

    monkeypatch.setattr(cregistry.server, "CregistryServer", Server)
    monkeypatch.setattr(cregistry.server, "_check_redis", lambda config: None)
    monkeypatch.setattr(cregistry.server, "open_listener", lambda listen: contextlib.nullcontext(None))
    announced: list[str] = []
    cregistry.server.serve(config, announced.append)
    return started[0], announced


def test_only_admin_tokens_set_makes_no_extra_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    config, announced = serve_once(
        monkeypatch, Config(redis_url="redis://127.0.0.1:1/0", admin_tokens=f"ops={OPS_TOKEN}")
    )
    assert dict(config.named_admin_tokens()) == {"ops": OPS_TOKEN}
    assert not any("this run's admin token" in line for line in announced)
    assert "admin tokens: ops" in announced


def test_no_token_at_all_makes_one_and_prints_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    config, announced = serve_once(monkeypatch, Config(redis_url="redis://127.0.0.1:1/0"))
    assert config.admin_token is not None
    assert [line for line in announced if config.admin_token in line] == [
        f"No CREGISTRY_ADMIN_TOKEN or CREGISTRY_ADMIN_TOKENS given; this run's admin token is: {config.admin_token}"
    ]
    assert "admin tokens: admin" in announced


def test_the_start_up_line_names_the_tokens_never_their_values(monkeypatch: pytest.MonkeyPatch) -> None:
    _config, announced = serve_once(
        monkeypatch, Config(redis_url="redis://127.0.0.1:1/0", admin_token=TOKEN, admin_tokens=f"ops={OPS_TOKEN}")
    )
    assert "admin tokens: admin, ops" in announced
    assert not any(TOKEN in line or OPS_TOKEN in line for line in announced)
