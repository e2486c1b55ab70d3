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


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """Record the password of every call of cregistry.passwords.<name>."""
    import cregistry.passwords

    calls: list[str] = []
    original = getattr(cregistry.passwords, name)

    def counting(password: str, *args: object) -> object:
        calls.append(password)
        return original(password, *args)

    monkeypatch.setattr(cregistry.passwords, name, counting)
    return calls


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every bcrypt hashing (passwords.hash_password), by password."""
    return _count_calls(monkeypatch, "hash_password")


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every bcrypt check (passwords.verify_password), by password."""
    return _count_calls(monkeypatch, "verify_password")
