"""The benchmark's goals, and what it writes: the Markdown report and the chart."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Goal:
    operator: str  # ">=" or "<="
    target: float
    must: float | None  # the bound that has to be reached at least; None: the target is the bound
    meaning: str

    def meets(self, value: float, bound: float) -> bool:
        return value >= bound if self.operator == ">=" else value <= bound

    def text(self) -> str:
        sign = "≥" if self.operator == ">=" else "≤"
        return f"{sign} {self.target}" + (f" (must {sign} {self.must})" if self.must is not None else "")


GOALS = {
    "publish_ratio": Goal(
        ">=", 0.95, 0.9, "QoS 0 msg/s through cregistry's plugin with a warm cache / the same broker without auth"
    ),
    "connect_ratio": Goal(
        "<=",
        2.0,
        2.5,
        "p50 CONNECT→CONNACK of a known device on a freshly started broker (plugin cache empty, no bcrypt)"
        " / the same CONNECT with dynamic security",
    ),
    "storm_seconds_ratio": Goal(
        "<=", 2.5, None, "seconds for all known devices to reconnect after a restart: plugin / dynamic security"
    ),
    "acl_miss_p50_ms": Goal(
        "<=",
        0.3,
        None,
        "p50 of one ACL check the plugin's cache misses, at the service over a kept-alive connection,"
        " with the plugin's feed position (concurrency 1)",
    ),
}


def evaluate_goals(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    goals = {}
    for name, goal in GOALS.items():
        value = figures.get(name)
        must = goal.must if goal.must is not None else goal.target
        goals[name] = {
            "value": value,
            "goal": goal.text(),
            "operator": goal.operator,
            "target": goal.target,
            "must": goal.must,
            "met": None if value is None else goal.meets(value, goal.target),
            "must_met": None if value is None else goal.meets(value, must),
            "meaning": goal.meaning,
        }
    return goals


# Rows of the per-configuration table: figure prefix, what it is.
PER_SETUP_ROWS = [
    ("publish_qos0_msgs_per_s", "QoS 0 msg/s, 1 publisher → 1 subscriber"),
    ("publish_qos1_msgs_per_s", "QoS 1 msg/s, in-flight window 32"),
    ("fanout_deliveries_per_s", "fan-out deliveries/s, 1 publisher → 10 subscribers, 100 topics"),
    ("publish_qos0_per_broker_cpu_second", "QoS 0 messages per broker CPU-second"),
    ("publish_qos1_per_broker_cpu_second", "QoS 1 messages per broker CPU-second"),
    ("fanout_per_broker_cpu_second", "fan-out deliveries per broker CPU-second"),
    ("publish_qos0_broker_cpu_share", "broker CPU share during QoS 0 (1.0 = one core busy)"),
    ("publish_qos0_loadgen_cpu_share", "load generator CPU share during QoS 0"),
    ("connect_p50_ms", "CONNECT→CONNACK p50 ms, fresh broker, one at a time"),
    ("connect_p99_ms", "CONNECT→CONNACK p99 ms"),
    ("storm_seconds", "storm: seconds until every device is connected"),
    ("storm_slowest_connack_ms", "storm: slowest CONNACK ms"),
    ("storm_probe_max_ms", "storm: longest PINGREQ→PINGRESP of a probe client, ms"),
    ("storm_probe_p99_ms", "storm: probe PINGREQ p99 ms"),
    ("storm_probe_p50_ms", "storm: probe PINGREQ p50 ms"),
    ("storm_broker_cpu_share", "storm: broker CPU share (the rest it waits)"),
]
SETUP_COLUMNS = [("no_auth", "no auth"), ("cregistry", "cregistry plugin"), ("dynsec", "dynamic security"),
                 ("go_auth", "go-auth")]  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


def report(results: dict[str, Any]) -> str:
    figures = results["figures"]
    machine = results["machine"]
    lines = [
        f"# cregistry benchmark ({results['mode']}, {results['date']}, {results['seconds']} s)",
        "",
        f"{machine['cpus']} CPUs, load average {machine['load_average_before'][0]} before and"
        f" {machine['load_average_after'][0]} after; {machine['mosquitto']}; bcrypt cost {results['bcrypt_cost']};"
        f" {results['sizes']['rounds']} turns per configuration, medians.",
        "",
        "| goal | measured | goal | met | what it compares |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, goal in results["goals"].items():
        if goal["value"] is None:
            met = "not measured"
        elif goal["met"]:
            met = "yes"
        elif goal["must_met"] and goal["must"] is not None:
            met = "must only"
        else:
            met = "**NO**"
        lines.append(f"| `{name}` | {_cell(goal['value'])} | {goal['goal']} | {met} | {goal['meaning']} |")
    columns = [(k, title) for k, title in SETUP_COLUMNS if any(f"{p}_{k}" in figures for p, _ in PER_SETUP_ROWS)]
    lines += ["", "| figure | " + " | ".join(t for _, t in columns) + " |", "| --- |" + " --- |" * len(columns)]
    for prefix, meaning in PER_SETUP_ROWS:
        cells = [_cell(figures.get(f"{prefix}_{k}")) for k, _ in columns]
        if any(c != "–" for c in cells):
            lines.append(f"| {meaning} | " + " | ".join(cells) + " |")
    shown = {f"{p}_{k}" for p, _ in PER_SETUP_ROWS for k, _ in SETUP_COLUMNS} | set(GOALS)
    rest = {k: v for k, v in figures.items() if k not in shown}
    lines += ["", "| other figure | value |", "| --- | --- |"]
    lines += [f"| `{k}` | {_cell(v)} |" for k, v in rest.items()]
    lines += ["", "Plugins: " + "; ".join(f"{k}: `{v}`" for k, v in results["plugins"].items()) + "."]
    if results["notes"]:
        lines += ["", "Notes:", *[f"- {note}" for note in results["notes"]]]
    if results["errors"]:
        lines += ["", "NOT measured (errors):", *[f"- {error}" for error in results["errors"]]]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = results["figures"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    panels = [
        ("publish_qos0_msgs_per_s", "QoS 0 msg/s"),
        ("publish_qos1_msgs_per_s", "QoS 1 msg/s (window 32)"),
        ("fanout_deliveries_per_s", "fan-out deliveries/s"),
        ("connect_p50_ms", "CONNECT p50 ms, fresh broker"),
        ("storm_seconds", f"storm seconds ({figures.get('storm_devices', '?')} devices)"),
    ]
    colours = {"no_auth": "tab:grey", "cregistry": "tab:green", "dynsec": "tab:blue", "go_auth": "tab:orange"}
    for axis, (prefix, title) in zip(axes.flat, panels, strict=False):
        present = [(k, t) for k, t in SETUP_COLUMNS if figures.get(f"{prefix}_{k}") is not None]
        axis.bar([t for _, t in present], [figures[f"{prefix}_{k}"] for k, _ in present],
                 color=[colours[k] for k, _ in present])  # fmt: skip
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelsize=8)
        if not present:
            axis.text(0.5, 0.5, "not measured", ha="center", transform=axis.transAxes)
    axis = axes.flat[5]
    names = list(results["goals"])
    measured = [results["goals"][n]["value"] or 0 for n in names]
    targets = [results["goals"][n]["target"] for n in names]
    positions = range(len(names))
    axis.bar([p - 0.2 for p in positions], measured, width=0.4, label="measured",
             color=["tab:green" if results["goals"][n]["met"] else "tab:red" for n in names])  # fmt: skip
    axis.bar([p + 0.2 for p in positions], targets, width=0.4, label="goal", color="lightgrey")
    axis.set_xticks(list(positions), [n.replace("_", "\n", 1) for n in names], fontsize=7)
    axis.set_title("goals (green: met)", fontsize=10)
    axis.legend(fontsize=8)
    fig.suptitle(
        f"cregistry benchmark, {results['mode']} run {results['date']}"
        f" ({results['machine']['cpus']} CPUs, load {results['machine']['load_average_before'][0]})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
