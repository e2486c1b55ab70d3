"""The broker check's time budget (budget.py) is the one the plugin and the
service use: the plugin's default timeout is budget.py's, and the service's
deadline is clearly shorter, so a slow check arrives as a 503."""

from __future__ import annotations

import re
from pathlib import Path

from cregistry import budget
from cregistry.web import deadline

OPTIONS_C = Path(__file__).resolve().parents[2] / "mosquitto" / "plugin" / "options.c"


def plugin_default_timeout_ms() -> int:
    match = re.search(r'\{"timeout_ms", offsetof\(struct cr_options, timeout_ms\), (\d+),', OPTIONS_C.read_text())
    assert match is not None, "options.c no longer states timeout_ms's default in its table"
    return int(match.group(1))


def test_the_plugin_default_timeout_is_the_budgets() -> None:
    assert plugin_default_timeout_ms() == round(budget.PLUGIN_TIMEOUT_SECONDS * 1000)


def test_the_service_answers_before_the_plugin_gives_up() -> None:
    assert deadline.DEADLINE_SECONDS == budget.SERVICE_DEADLINE_SECONDS
    assert budget.PLUGIN_TIMEOUT_SECONDS - deadline.DEADLINE_SECONDS >= 0.2
    assert budget.PLUGIN_TIMEOUT_SECONDS < budget.CHECK_BOUND_SECONDS
