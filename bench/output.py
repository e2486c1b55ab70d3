"""The benchmark's goals, and what it writes: the Markdown report and the chart."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

# The goals differ by broker line: "2.0" (Debian's 2.0.11) and "2.1" (2.1.2).
ANY_VERSION = "*"


@dataclasses.dataclass(frozen=True)
class Goal:
    operator: str  # ">=" or "<="
    # broker line ("2.0", "2.1", or ANY_VERSION) -> (target, must); must None: the target is the bound
    bounds: dict[str, tuple[float, float | None]]
    meaning: str

    def bound(self, version: str) -> tuple[float, float | None]:
        line = ".".join(version.split(".")[:2])
        return self.bounds.get(line) or self.bounds[ANY_VERSION]

    def meets(self, value: float, bound: float) -> bool:
        return value >= bound if self.operator == ">=" else value <= bound

    def text(self, version: str) -> str:
        sign = "≥" if self.operator == ">=" else "≤"
        target, must = self.bound(version)
        return f"{sign} {target}" + (f" (must {sign} {must})" if must is not None else "")


def _everywhere(target: float, must: float | None = None) -> dict[str, tuple[float, float | None]]:
    return {ANY_VERSION: (target, must)}


# The goals of issue 26, under its names.
GOALS = {
    "broker_cpu_per_message_ratio": Goal(
        "<=",
        _everywhere(1.05, 1.10),
        "broker CPU µs per QoS 0 message (1 publisher → 1 subscriber, warm plugin cache), from the broker's"
        " /proc/<pid>/stat over the publish run: cregistry's plugin / no auth",
    ),
    "publish_ratio": Goal(
        ">=",
        _everywhere(0.95),
        "QoS 0 msg/s through cregistry's plugin with a warm cache / the same broker without auth",
    ),
    "publish_ratio_vs_allow_all": Goal(
        ">=", _everywhere(0.97), "QoS 0 msg/s through cregistry's plugin / through the bench's allow-everything plugin"
    ),
    "connect_ratio": Goal(
        "<=",
        {"2.0": (1.2, 1.5), "2.1": (0.3, None), ANY_VERSION: (0.3, None)},
        "p50 CONNECT→CONNACK of a known device on a freshly started broker (plugin cache empty, no bcrypt)"
        " / the same CONNECT with the version's dynamic security",
    ),
    "storm_seconds_ratio": Goal(
        "<=",
        {"2.0": (1.5, 2.0), "2.1": (0.5, None), ANY_VERSION: (0.5, None)},
        "seconds for all known devices to reconnect after a restart: plugin / dynamic security",
    ),
    "flood_unknown_probe_p99_ratio": Goal(
        "<=",
        {"2.0": (5.0, None), "2.1": (2.0, None), ANY_VERSION: (2.0, None)},
        "a connected probe's PINGREQ p99 while 500 unknown-username CONNECTs/s arrive / unflooded (plugin)",
    ),
    "flood_wrong_password_probe_p99_ratio": Goal(
        "<=",
        {"2.0": (5.0, None), "2.1": (2.0, None), ANY_VERSION: (2.0, None)},
        "a connected probe's PINGREQ p99 while 20 wrong-password CONNECTs/s for known usernames"
        " (devices that connected before) arrive / unflooded (plugin)",
    ),
    "acl_miss_p50_ms": Goal(
        "<=",
        _everywhere(0.2, 0.3),
        "p50 of one ACL check the plugin's cache misses, at the service over a kept-alive connection,"
        " with the plugin's feed position (concurrency 1)",
    ),
    "plugin_bytes_per_cache_entry": Goal(
        "<=",
        _everywhere(150),
        "the broker's RSS growth per plugin cache entry (distinct topics checked), minus the same publishes'"
        " growth without auth",
    ),
}


def evaluate_goals(figures: dict[str, Any], version: str) -> dict[str, dict[str, Any]]:
    goals = {}
    for name, goal in GOALS.items():
        value = figures.get(name)
        target, must = goal.bound(version)
        goals[name] = {
            "value": value,
            "goal": goal.text(version),
            "operator": goal.operator,
            "target": target,
            "must": must,
            "met": None if value is None else goal.meets(value, target),
            "must_met": None if value is None else goal.meets(value, must if must is not None else target),
            "meaning": goal.meaning,
        }
    return goals


# Rows of the per-configuration table: figure prefix, what it is.
PER_SETUP_ROWS = [
    ("publish_qos0_msgs_per_s", "QoS 0 msg/s, 1 publisher → 1 subscriber"),
    ("publish_qos1_msgs_per_s", "QoS 1 msg/s, in-flight window 32"),
    ("fanout_deliveries_per_s", "fan-out deliveries/s, 1 publisher → 10 subscribers, 100 topics"),
    ("publish_qos0_broker_cpu_us_per_message", "broker CPU µs per QoS 0 message"),
    ("publish_qos1_broker_cpu_us_per_message", "broker CPU µs per QoS 1 message"),
    ("fanout_broker_cpu_us_per_message", "broker CPU µs per fan-out delivery"),
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
    ("flood_none_probe_p99_ms", "probe PINGREQ p99 ms, unflooded"),
    ("flood_unknown_probe_p99_ms", "probe PINGREQ p99 ms, 500 unknown-username CONNECTs/s"),
    ("flood_wrong_password_probe_p99_ms", "probe PINGREQ p99 ms, 20 wrong-password CONNECTs/s"),
    (
        "flood_wrong_password_unverified_probe_p99_ms",
        "probe PINGREQ p99 ms, 20 wrong-password CONNECTs/s for users never verified",
    ),
    ("flood_unknown_connects_per_s", "unknown-username CONNECTs/s the flood reached"),
    ("flood_wrong_password_connects_per_s", "wrong-password CONNECTs/s the flood reached"),
]
SETUP_COLUMNS = [("no_auth", "no auth"), ("allow_all", "allow-everything plugin"), ("cregistry", "cregistry plugin"),
                 ("cregistry_warm", "cregistry plugin, warm restart"), ("dynsec", "dynamic security"),
                 ("go_auth", "go-auth")]  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value >= 1000:
        return f"{value:,.0f}"
    if isinstance(value, int) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


def _met(goal: dict[str, Any]) -> str:
    if goal["value"] is None:
        return "not measured"
    if goal["met"]:
        return "yes"
    if goal["must_met"] and goal["must"] is not None:
        return "must only"
    return "**NO**"


def report(results: dict[str, Any]) -> str:
    machine = results["machine"]
    versions = list(results["brokers"])
    lines = [
        f"# cregistry benchmark ({results['mode']}, {results['date']}, {results['seconds']} s,"
        f" commit {results.get('commit', 'unknown')})",
        "",
        f"{machine['cpus']} CPUs, load average {machine['load_average_before'][0]} before and"
        f" {machine['load_average_after'][0]} after; Mosquitto {', '.join(versions) or 'none'};"
        f" bcrypt cost {results['bcrypt_cost']}; {results['sizes']['rounds']} turns per configuration, medians.",
        "",
        "| goal | " + " | ".join(f"{v} | goal {v} | met {v}" for v in versions) + " | what it compares |",
        "| --- |" + " --- | --- | --- |" * len(versions) + " --- |",
    ]
    for name in GOALS:
        cells = []
        for version in versions:
            goal = results["brokers"][version]["goals"][name]
            cells += [_cell(goal["value"]), goal["goal"], _met(goal)]
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {GOALS[name].meaning} |")
    for version, why in results.get("skipped", {}).items():
        lines += ["", f"Mosquitto {version}: skipped ({why})."]
    for version in versions:
        figures = results["brokers"][version]["figures"]
        lines += ["", f"## Mosquitto {version} (`{results['brokers'][version]['binary']}`)"]
        columns = [(k, t) for k, t in SETUP_COLUMNS if any(f"{p}_{k}" in figures for p, _ in PER_SETUP_ROWS)]
        lines += ["", "| figure | " + " | ".join(t for _, t in columns) + " |", "| --- |" + " --- |" * len(columns)]
        for prefix, meaning in PER_SETUP_ROWS:
            cells = [_cell(figures.get(f"{prefix}_{k}")) for k, _ in columns]
            if any(c != "–" for c in cells):
                lines.append(f"| {meaning} | " + " | ".join(cells) + " |")
        shown = {f"{p}_{k}" for p, _ in PER_SETUP_ROWS for k, _ in SETUP_COLUMNS} | set(GOALS)
        rest = {k: v for k, v in figures.items() if k not in shown}
        lines += ["", "| other figure | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {_cell(v)} |" for k, v in rest.items()]
    service = {k: v for k, v in results.get("service", {}).items() if k not in GOALS}
    if service:
        lines += ["", "## The service (no broker)", "", "| figure | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {_cell(v)} |" for k, v in service.items()]
    lines += ["", "Plugins: " + "; ".join(f"{k}: `{v}`" for k, v in results["plugins"].items()) + "."]
    options = results.get("plugin_options") or {}
    lines += [
        "",
        "cregistry's plugin options: " + (", ".join(f"`{k} {v}`" for k, v in options.items()) or "its defaults") + ".",
    ]
    if results["notes"]:
        lines += ["", "Notes:", *[f"- {note}" for note in results["notes"]]]
    if results["errors"]:
        lines += ["", "NOT measured (errors):", *[f"- {error}" for error in results["errors"]]]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], version: str, path: Path) -> None:
    """One broker version's figures per configuration, and its goals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = results["brokers"][version]
    figures = entry["figures"]
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    panels = [
        ("publish_qos0_msgs_per_s", "QoS 0 msg/s"),
        ("publish_qos0_broker_cpu_us_per_message", "broker CPU µs per QoS 0 message"),
        ("fanout_deliveries_per_s", "fan-out deliveries/s"),
        ("connect_p50_ms", "CONNECT p50 ms, fresh broker"),
        ("storm_seconds", f"storm seconds ({figures.get('storm_devices', '?')} devices)"),
        ("flood_unknown_probe_p99_ms", "probe p99 ms, 500 unknown CONNECTs/s"),
        ("flood_wrong_password_probe_p99_ms", "probe p99 ms, 20 wrong passwords/s"),
        ("flood_wrong_password_unverified_probe_p99_ms", "probe p99 ms, 20/s, never verified"),
    ]
    colours = {"no_auth": "tab:grey", "allow_all": "tab:purple", "cregistry": "tab:green",
               "cregistry_warm": "tab:olive", "dynsec": "tab:blue", "go_auth": "tab:orange"}  # fmt: skip
    for axis, (prefix, title) in zip(axes.flat, panels, strict=False):
        present = [(k, t) for k, t in SETUP_COLUMNS if figures.get(f"{prefix}_{k}") is not None]
        axis.bar([t.replace(" ", "\n", 1) for _, t in present], [figures[f"{prefix}_{k}"] for k, _ in present],
                 color=[colours[k] for k, _ in present])  # fmt: skip
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelsize=7)
        if not present:
            axis.text(0.5, 0.5, "not measured", ha="center", transform=axis.transAxes)
    axis = axes.flat[7]
    goals = entry["goals"]
    # Each goal as measured / target: at or under 1 (at or over 1 for a ≥ goal) is met.
    names = list(goals)
    # Log scale: a goal missed 400-fold and one met by 5 % both stay readable; unmeasured ones show no bar.
    relative = [(goals[n]["value"] or 0) / goals[n]["target"] for n in names]
    positions = range(len(names))
    axis.barh(list(positions), [max(r, 1e-3) if r else 0 for r in relative],
              color=["tab:green" if goals[n]["met"] else "tab:red" for n in names])  # fmt: skip
    axis.set_xscale("log")
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_yticks(list(positions), [n.removesuffix("_ratio") for n in names], fontsize=7)
    axis.set_title("goals: measured / target (green: met)", fontsize=10)
    fig.suptitle(
        f"cregistry benchmark on Mosquitto {version}, {results['mode']} run {results['date']}"
        f" ({results['machine']['cpus']} CPUs, load {results['machine']['load_average_before'][0]})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
