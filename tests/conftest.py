"""Fixtures shared by both tiers."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def clean_cregistry_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the CREGISTRY_* settings they set themselves."""
    for name in list(os.environ):
        if name.startswith("CREGISTRY_") and not name.startswith("CREGISTRY_REQUIRE_"):
            monkeypatch.delenv(name)
