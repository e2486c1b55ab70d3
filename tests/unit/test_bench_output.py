"""The benchmark's bookkeeping: goals, report and broker configurations
(no timing here: the benchmark prints figures, the tests never judge them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.brokers import (
    ALLOW_ALL,
    COMMON_LINES,
    CREGISTRY,
    DYNSEC,
    GO_AUTH,
    NO_AUTH,
    SETUPS,
    Broker,
    conf_lines,
    mosquitto_21,
    parse_plugin_options,
    world_readable,
)
from bench.output import GOALS, evaluate_goals, report


def test_a_goal_between_its_bound_and_its_target_is_met_only_at_the_bound() -> None:
    goals = evaluate_goals(
        {"broker_cpu_per_message_ratio": 1.08, "connect_ratio": 1.1, "acl_miss_p50_ms": 0.35}, "2.0.11"
    )
    assert (goals["broker_cpu_per_message_ratio"]["met"], goals["broker_cpu_per_message_ratio"]["must_met"]) == (
        False,
        True,
    )
    assert (goals["connect_ratio"]["met"], goals["connect_ratio"]["must_met"]) == (True, True)
    assert (goals["acl_miss_p50_ms"]["met"], goals["acl_miss_p50_ms"]["must_met"]) == (False, False)
    # without a separate bound, the target is the bound
    goals = evaluate_goals({"publish_ratio": 0.94}, "2.0.11")
    assert (goals["publish_ratio"]["met"], goals["publish_ratio"]["must_met"]) == (False, False)
    assert goals["storm_seconds_ratio"] == {
        **goals["storm_seconds_ratio"],
        "value": None,
        "met": None,
        "must_met": None,
    }


def test_each_broker_line_has_its_own_goals() -> None:
    figures = {"connect_ratio": 0.47, "storm_seconds_ratio": 1.4, "flood_unknown_probe_p99_ratio": 3.0}
    old, new = evaluate_goals(figures, "2.0.11"), evaluate_goals(figures, "2.1.2")
    assert (old["connect_ratio"]["target"], old["connect_ratio"]["must"], old["connect_ratio"]["met"]) == (
        1.2,
        1.5,
        True,
    )
    assert (new["connect_ratio"]["target"], new["connect_ratio"]["must"], new["connect_ratio"]["met"]) == (
        0.3,
        None,
        False,
    )
    assert (old["storm_seconds_ratio"]["met"], new["storm_seconds_ratio"]["met"]) == (True, False)
    assert (old["flood_unknown_probe_p99_ratio"]["met"], new["flood_unknown_probe_p99_ratio"]["met"]) == (True, False)
    assert old["connect_ratio"]["goal"] == "≤ 1.2 (must ≤ 1.5)"
    assert new["connect_ratio"]["goal"] == "≤ 0.3"


def test_the_goals_carry_the_issues_names() -> None:
    assert set(GOALS) == {
        "broker_cpu_per_message_ratio",
        "publish_ratio",
        "publish_ratio_vs_allow_all",
        "connect_ratio",
        "storm_seconds_ratio",
        "flood_unknown_probe_p99_ratio",
        "flood_wrong_password_probe_p99_ratio",
        "acl_miss_p50_ms",
        "plugin_bytes_per_cache_entry",
    }


def results_of(brokers: dict[str, dict[str, Any]], skipped: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "mode": "quick",
        "date": "2026-01-01T00:00:00Z",
        "seconds": 50.0,
        "machine": {"cpus": 2, "load_average_before": [1.0], "load_average_after": [1.0]},
        "bcrypt_cost": 10,
        "sizes": {"rounds": 2},
        "service": {"acl_miss_p50_ms": 0.25, "redis_bytes_per_user": 300},
        "brokers": {
            version: {
                "binary": f"/opt/{version}/mosquitto",
                "figures": figures,
                "goals": evaluate_goals(figures, version),
            }
            for version, figures in brokers.items()
        },
        "skipped": skipped or {},
        "plugins": {"cregistry": "x.so"},
        "notes": ["a note"],
        "errors": ["2.1.2: acl_miss_p50_ms was not measured"],
    }


def goal_row(text: str, name: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
    return [cell.strip() for cell in row.split("|")[2:-1]]


def test_the_report_shows_every_version_side_by_side_and_says_what_missed() -> None:
    text = report(
        results_of(
            {
                "2.0.11": {"connect_ratio": 1.4, "publish_ratio": 0.97, "connect_p50_ms_dynsec": 0.2},
                "2.1.2": {"connect_ratio": 0.35, "publish_qos0_broker_cpu_us_per_message_allow_all": 2.45},
            }
        )
    )
    assert goal_row(text, "connect_ratio")[:6] == ["1.4", "≤ 1.2 (must ≤ 1.5)", "must only", "0.35", "≤ 0.3", "**NO**"]
    assert goal_row(text, "publish_ratio")[:6] == ["0.97", "≥ 0.95", "yes", "–", "≥ 0.95", "not measured"]
    assert "## Mosquitto 2.0.11 (`/opt/2.0.11/mosquitto`)" in text
    assert "| CONNECT→CONNACK p50 ms, fresh broker, one at a time | 0.2 |" in text
    assert "| broker CPU µs per QoS 0 message | 2.45 |" in text  # the allow-everything column of 2.1.2
    assert "| `redis_bytes_per_user` | 300 |" in text
    assert "- 2.1.2: acl_miss_p50_ms was not measured" in text


def test_a_skipped_version_is_named_with_its_reason() -> None:
    text = report(results_of({"2.0.11": {}}, {"2.1.2": "Mosquitto 2.1.2 is not available: no source"}))
    assert "Mosquitto 2.1.2: skipped (Mosquitto 2.1.2 is not available: no source)." in text
    assert "## Mosquitto 2.1.2" not in text


def test_the_configurations_differ_only_in_authentication(tmp_path: Path) -> None:
    names = (NO_AUTH, DYNSEC, CREGISTRY, ALLOW_ALL)
    confs = {name: conf_lines(SETUPS[name], 1883, tmp_path, 8081, {}) for name in names}
    for lines in confs.values():
        assert lines[:2] == ["per_listener_settings false", "listener 1883 127.0.0.1"]
        assert lines[-len(COMMON_LINES) :] == COMMON_LINES
    assert confs[NO_AUTH][2 : -len(COMMON_LINES)] == ["allow_anonymous true"]
    assert confs[CREGISTRY][2 : -len(COMMON_LINES)] == [
        "allow_anonymous false",
        f"plugin {SETUPS[CREGISTRY].plugin}",
        "plugin_opt_url http://127.0.0.1:8081",
    ]
    assert confs[ALLOW_ALL][2 : -len(COMMON_LINES)] == ["allow_anonymous false", f"plugin {SETUPS[ALLOW_ALL].plugin}"]
    assert confs[DYNSEC][2 : -len(COMMON_LINES)] == [
        "allow_anonymous false",
        f"plugin {SETUPS[DYNSEC].plugin}",
        f"plugin_opt_config_file {tmp_path / 'dynamic-security.json'}",
    ]


def test_dynamic_security_is_the_brokers_own_and_go_auth_only_on_debians_2_0(tmp_path: Path) -> None:
    debian = Broker("2.0.11", Path("/usr/sbin/mosquitto"), Path("/usr/lib/dynsec-2.0.so"), 101)
    built = Broker("2.1.2", tmp_path / "sbin" / "mosquitto", tmp_path / "lib" / "dynsec.so", 1000, tmp_path / "lib")
    assert built.setup(DYNSEC).plugin == tmp_path / "lib" / "dynsec.so"
    assert debian.setup(DYNSEC).plugin == Path("/usr/lib/dynsec-2.0.so")
    assert built.setup(CREGISTRY) == SETUPS[CREGISTRY]
    assert (debian.supports(GO_AUTH), built.supports(GO_AUTH), built.supports(CREGISTRY)) == (True, False, True)
    assert debian.env() == {}
    assert built.env()["LD_LIBRARY_PATH"].split(":")[0] == str(tmp_path / "lib")


def test_a_missing_2_1_broker_is_skipped_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREGISTRY_BENCH_MOSQUITTO_21", str(tmp_path / "sbin" / "mosquitto"))
    broker, why = mosquitto_21()
    assert broker is None
    assert why == f"Mosquitto 2.1.2 is not available: {tmp_path / 'sbin' / 'mosquitto'} does not exist"


def test_a_plugin_mosquittos_own_user_cannot_reach_is_seen_as_such(tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    (hidden / "plugin.so").write_bytes(b"")
    (hidden / "plugin.so").chmod(0o644)
    assert not world_readable(hidden / "plugin.so")  # as under /root/.cache: the directory cannot be entered
    assert world_readable(Path("/bin/sh"))


def test_plugin_options_reach_cregistrys_plugin_alone(tmp_path: Path) -> None:
    options = parse_plugin_options(" delayed_auth=1, cache_size=50000,")
    assert options == {"delayed_auth": "1", "cache_size": "50000"}
    lines = conf_lines(SETUPS[CREGISTRY], 1883, tmp_path, 8081, options)
    assert lines[-len(COMMON_LINES) - 2 : -len(COMMON_LINES)] == [
        "plugin_opt_delayed_auth 1",
        "plugin_opt_cache_size 50000",
    ]
    assert not any("delayed_auth" in line for line in conf_lines(SETUPS[ALLOW_ALL], 1883, tmp_path, 8081, options))
    with pytest.raises(ValueError, match="'delayed_auth' is not name=value"):
        parse_plugin_options("delayed_auth")
