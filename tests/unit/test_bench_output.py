"""The benchmark's bookkeeping: goals, report and broker configurations
(no timing here: the benchmark prints figures, the tests never judge them)."""

from __future__ import annotations

from pathlib import Path

from bench.brokers import COMMON_LINES, CREGISTRY, DYNSEC, NO_AUTH, SETUPS, conf_lines
from bench.output import evaluate_goals, report


def test_a_goal_between_its_bound_and_its_target_is_met_only_at_the_bound() -> None:
    goals = evaluate_goals({"publish_ratio": 0.92, "connect_ratio": 2.0, "storm_seconds_ratio": 2.6})
    assert (goals["publish_ratio"]["met"], goals["publish_ratio"]["must_met"]) == (False, True)
    assert (goals["connect_ratio"]["met"], goals["connect_ratio"]["must_met"]) == (True, True)
    # without a separate bound, the target is the bound
    assert (goals["storm_seconds_ratio"]["met"], goals["storm_seconds_ratio"]["must_met"]) == (False, False)
    assert goals["acl_miss_p50_ms"] == {**goals["acl_miss_p50_ms"], "value": None, "met": None, "must_met": None}


def test_the_report_says_what_was_not_measured_and_what_missed() -> None:
    figures = {"publish_ratio": 0.92, "connect_ratio": 3.1, "storm_seconds_ratio": 1.5, "connect_p50_ms_dynsec": 0.2}
    results = {
        "mode": "quick",
        "date": "2026-01-01T00:00:00Z",
        "seconds": 50.0,
        "machine": {"cpus": 2, "load_average_before": [1.0], "load_average_after": [1.0], "mosquitto": "2.0.11"},
        "bcrypt_cost": 10,
        "sizes": {"rounds": 2},
        "goals": evaluate_goals(figures),
        "figures": figures,
        "plugins": {"cregistry": "x.so"},
        "notes": ["a note"],
        "errors": ["acl_miss_p50_ms was not measured"],
    }
    text = report(results)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    assert "| must only |" in rows["`publish_ratio`"]
    assert "| **NO** |" in rows["`connect_ratio`"]
    assert "| yes |" in rows["`storm_seconds_ratio`"]
    assert "| not measured |" in rows["`acl_miss_p50_ms`"]
    assert "| CONNECT→CONNACK p50 ms, fresh broker, one at a time | 0.2 |" in text
    assert "- acl_miss_p50_ms was not measured" in text


def test_the_configurations_differ_only_in_authentication(tmp_path: Path) -> None:
    confs = {name: conf_lines(SETUPS[name], 1883, tmp_path, 8081) for name in (NO_AUTH, DYNSEC, CREGISTRY)}
    for lines in confs.values():
        assert lines[:2] == ["per_listener_settings false", "listener 1883 127.0.0.1"]
        assert lines[-len(COMMON_LINES) :] == COMMON_LINES
    assert confs[NO_AUTH][2 : -len(COMMON_LINES)] == ["allow_anonymous true"]
    assert confs[CREGISTRY][2 : -len(COMMON_LINES)] == [
        "allow_anonymous false",
        f"plugin {SETUPS[CREGISTRY].plugin}",
        "plugin_opt_url http://127.0.0.1:8081",
    ]
    assert confs[DYNSEC][2 : -len(COMMON_LINES)] == [
        "allow_anonymous false",
        f"plugin {SETUPS[DYNSEC].plugin}",
        f"plugin_opt_config_file {tmp_path / 'dynamic-security.json'}",
    ]
