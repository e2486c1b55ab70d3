"""Browser tier: Debian's headless Chromium, driven by Playwright for Python,
clicking through the web console of the real `cregistry serve` on a real
redis-server.

Never a downloaded browser (no `playwright install`): /usr/bin/chromium, a
fresh profile per test. Where chromium, Playwright or redis-server is
missing the tier skips on a developer's machine and fails under CI=true.
With CREGISTRY_SCREENSHOTS=docs the tests write docs/console.md's screenshots
there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cregistry.certificates import init_ca
from harness.processes import REPO
from harness.redis_server import RedisProcess
from harness.service import ServiceProcess, running_service

CHROMIUM = Path(os.environ.get("CREGISTRY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_TOKEN = "browser-admin-token-0123456789"
OPS_TOKEN = "browser-ops-token-0123456789"
# Read at import: the autouse fixture of tests/conftest.py clears CREGISTRY_* for each test.
SCREENSHOTS = os.environ.get("CREGISTRY_SCREENSHOTS")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


def _missing(problem: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}: the browser tier must run here")
    pytest.skip(problem)


@pytest.fixture(scope="session")
def redis_process() -> Iterator[RedisProcess]:
    try:
        process = RedisProcess()
    except FileNotFoundError as error:
        _missing(f"{error} (apt-get install redis-server)")
    process.start()
    yield process
    process.cleanup()


@pytest.fixture(scope="session")
def service(redis_process: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    # No CREGISTRY_SESSION_SECRET on purpose: `serve` makes one before the
    # fork, and two workers must both accept the sessions it signs. A
    # registry CA, so that devices can ask for certificates (SPEC §14).
    ca_cert, ca_key = init_ca(tmp_path_factory.mktemp("ca") / "ca")
    env = {
        "CREGISTRY_ADMIN_TOKENS": f"ops={OPS_TOKEN}",
        "CREGISTRY_CA_CERT": str(ca_cert),
        "CREGISTRY_CA_KEY": str(ca_key),
    }
    with running_service(redis_process.url, ADMIN_TOKEN, env) as service:
        yield service


@pytest.fixture(autouse=True)
def flushed_redis(redis_process: RedisProcess) -> None:
    client = redis_process.client()
    client.flushall()
    client.close()


@pytest.fixture(scope="session")
def playwright() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed (pip install playwright; no `playwright install`)")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture
def browser(playwright: Any, tmp_path: Path) -> Iterator[Any]:
    """A fresh Chromium profile per test."""
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,
        headless=True,
        viewport={"width": 1280, "height": 860},
        device_scale_factor=1,
    )
    yield context
    context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A tab that fails the test on a script error or a console error (CSP
    violations are reported there)."""
    page = browser.new_page()
    problems: list[str] = []

    def console_message(message: Any) -> None:
        # A 4xx page that a test provokes (a refused form) is logged as a failed
        # load; files the page needs are checked by status below instead.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    def response(answer: Any) -> None:
        if answer.status >= 400 and answer.request.resource_type != "document":
            problems.append(f"{answer.status} for {answer.url}")

    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", console_message)
    page.on("response", response)
    yield page
    assert problems == []


@pytest.fixture
def screenshots() -> Path | None:
    """Where docs/console.md's screenshots go (CREGISTRY_SCREENSHOTS=docs), or None."""
    if not SCREENSHOTS:
        return None
    directory = (REPO / SCREENSHOTS).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return directory
