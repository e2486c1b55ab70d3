"""The device agent runs on devices: it must import without the server's dependencies."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import cregistry.device

# Everything the service needs and a device does not.
SERVER_ONLY = (
    "bcrypt",
    "redis",
    "flask",
    "flask_wtf",
    "werkzeug",
    "gunicorn",
    "uvicorn",
    "fakeredis",
    "prometheus_client",
    "a2wsgi",
    "uvloop",
    "httptools",
)

BLOCKER = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {SERVER_ONLY!r}:
            raise ImportError("server-only module imported: " + name)
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=60)


def test_the_device_agent_imports_without_server_dependencies() -> None:
    """Every module of cregistry.device, and so whatever they import (a module added later too)."""
    device_modules = sorted(
        module.name for module in pkgutil.walk_packages(cregistry.device.__path__, "cregistry.device.")
    )
    assert "cregistry.device.agent" in device_modules
    result = run_blocked(
        f"import importlib\nfor name in {device_modules!r}: importlib.import_module(name)\nprint('imported')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"


def test_the_blocker_does_catch_a_server_import() -> None:
    """The check above can fail: a module that needs bcrypt is refused under the same blocker."""
    result = run_blocked("import bcrypt")
    assert result.returncode != 0
    assert "server-only module imported: bcrypt" in result.stderr
