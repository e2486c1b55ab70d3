"""The README's registration through Mosquitto, step by step, run as written: every
command of its device block against a real mosquitto with cregistry's plugin, and
each `# ...` line under a command the output it must have printed."""

from __future__ import annotations

import re
import select
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.mosquitto import PluginMosquittoProcess
from harness.processes import LOOPBACK
from harness.service import run_cli
from tests.integration.test_broker import CHANGE_BOUND

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass
class Step:
    command: str
    remark: str  # what the README says beside the command
    printed: list[str] = field(default_factory=list)  # the lines the README shows under it


def device_steps() -> list[Step]:
    """The README's last shell block of "A registration through Mosquitto, step by step"."""
    readme = README.read_text()
    section = readme[readme.index("## A registration through Mosquitto") : readme.index("## How it is built")]
    block = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)[-1]
    steps: list[Step] = []
    for line in block.splitlines():
        if line.startswith("# "):
            steps[-1].printed.append(line[2:])
        else:
            command, _, remark = line.partition(" # ")
            steps.append(Step(command.strip(), remark.strip()))
    return steps


def test_the_readme_block_is_what_this_test_runs() -> None:
    """The test reads the block it runs; if the README changes shape, it says so here."""
    steps = device_steps()
    assert steps[0].command.startswith("export PATH=$PWD/.venv/bin:$PATH CREGISTRY_REDIS_URL=")
    programs = [shlex.split(step.command)[0] for step in steps[1:]]
    assert set(programs) == {"cregistry", "mosquitto_pub", "mosquitto_sub"}
    assert sum(len(step.printed) for step in steps) == 2


def test_the_readme_registration_runs_as_written(mosquitto: PluginMosquittoProcess, cli_env: dict[str, str]) -> None:
    background: list[subprocess.Popen[str]] = []
    try:
        for step in device_steps()[1:]:  # the first only points PATH and the CLI at Redis: cli_env does
            args = shlex.split(step.command.removesuffix("&"))
            if args[0] == "cregistry":
                done = run_cli(*args[1:], env=cli_env)
                assert done.returncode == 0, (step.command, done.stderr)
                output = done.stdout
            else:
                # The README's broker listens on mosquitto's default port; this one on a free port.
                args[1:1] = ["-h", LOOPBACK, "-p", str(mosquitto.port)]
                if step.command.endswith("&"):
                    background.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
                    time.sleep(1.0)  # subscribed before the next publish: nothing to wait on but its output
                    continue
                done = subprocess.run(args, capture_output=True, text=True, timeout=30)
                output = done.stdout + done.stderr
            for line in step.printed:
                output += "".join(read_line(process) for process in background)
                assert line in output, (step.command, output)
            if "pairing ID" in step.remark:
                assert step.remark.split()[-1] in output
            if "disconnected within 2 s" in step.remark:
                (subscriber,) = background
                assert subscriber_ends_within(subscriber, CHANGE_BOUND)
    finally:
        for process in background:
            process.kill()
            process.communicate()  # reaps it and closes its pipe


def read_line(process: subprocess.Popen[str], seconds: float = 5.0) -> str:
    """A line the process printed, or "" if none came within `seconds`."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], seconds)
    return process.stdout.readline() if ready else ""


def subscriber_ends_within(process: subprocess.Popen[str], seconds: float) -> bool:
    """mosquitto_sub exits when the broker drops it and refuses its reconnect."""
    try:
        process.wait(timeout=seconds + 2.0)  # its reconnect comes a second after the kick
    except subprocess.TimeoutExpired:
        return False
    return True
