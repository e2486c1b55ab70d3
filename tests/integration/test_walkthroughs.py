"""The registrations the README and docs/api.md walk through, run as written: every
command of the shell block against the real service (and a real mosquitto with
cregistry's plugin), and each `# ...` line right under a command the output it
must have printed."""

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
from harness.service import ServiceProcess, run_cli
from tests.integration.test_broker import CHANGE_BOUND

ROOT = Path(__file__).resolve().parents[2]
# The walk-throughs' broker listener (CREGISTRY_BROKER_LISTEN's default) and broker (mosquitto's
# default port, so the pages name none); the tests' processes listen on free ports.
README_BROKER_LISTEN = "127.0.0.1:8081"


@dataclass
class Step:
    command: str
    remark: str  # what the page says beside the command
    printed: list[str] = field(default_factory=list)  # the lines the page shows right under it


def shell_block(path: Path, section: str, last: bool = False) -> list[Step]:
    """The first (or last) shell block of the section headed `section`, as steps."""
    text = path.read_text()
    start = text.index(f"\n{section}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```sh\n(.*?)```", text[start : end if end != -1 else None], re.DOTALL)
    steps: list[Step] = []
    after_command = False
    for line in blocks[-1 if last else 0].replace("\\\n", " ").splitlines():
        if not line.strip():
            after_command = False  # a comment after a blank line is a comment, not output
        elif line.startswith("#"):
            if after_command:
                steps[-1].printed.append(line.removeprefix("# "))
        else:
            command, _, remark = line.partition(" # ")
            steps.append(Step(command.strip(), remark.strip()))
            after_command = True
    return steps


def readme_steps() -> list[Step]:
    return shell_block(ROOT / "README.md", "## A registration through Mosquitto, step by step", last=True)


def by_hand_steps() -> list[Step]:
    return shell_block(ROOT / "docs" / "api.md", "### A registration by hand")


def test_the_blocks_are_what_these_tests_run() -> None:
    """The tests read the blocks they run; if a page changes shape, it says so here."""
    readme, by_hand = readme_steps(), by_hand_steps()
    assert readme[0].command.startswith("export PATH=$PWD/.venv/bin:$PATH CREGISTRY_REDIS_URL=")
    assert {shlex.split(step.command)[0] for step in readme[1:]} == {"cregistry", "mosquitto_pub", "mosquitto_sub"}
    assert sum(len(step.printed) for step in readme) == 2
    assert by_hand[0].command == "export PATH=$PWD/.venv/bin:$PATH"
    assert {shlex.split(step.command)[0] for step in by_hand[1:]} == {"cregistry", "curl"}
    assert [len(step.printed) for step in by_hand if step.command.startswith("curl")] == [1, 1, 1]
    assert not any(step.printed for step in by_hand if step.command.startswith("cregistry"))


def test_the_readme_registration_runs_as_written(mosquitto: PluginMosquittoProcess, cli_env: dict[str, str]) -> None:
    run_steps(readme_steps(), cli_env, broker=f"{LOOPBACK}:{mosquitto.port}")


def test_the_registration_by_hand_runs_as_written(service: ServiceProcess, cli_env: dict[str, str]) -> None:
    run_steps(by_hand_steps(), cli_env, broker_listen=service.broker.removeprefix("http://"))


def run_steps(steps: list[Step], cli_env: dict[str, str], broker: str = "", broker_listen: str = "") -> None:
    background: list[subprocess.Popen[str]] = []
    try:
        for step in steps[1:]:  # the first only points PATH (and the CLI) somewhere: cli_env does
            args = shlex.split(step.command.removesuffix("&"))
            if args[0] == "cregistry":
                done = run_cli(*args[1:], env=cli_env)
                assert done.returncode == 0, (step.command, done.stderr)
                output = done.stdout
            elif args[0] == "curl":
                args = [arg.replace(README_BROKER_LISTEN, broker_listen) for arg in args]
                output = subprocess.run(args, capture_output=True, text=True, timeout=30).stdout
            else:
                host, port = broker.split(":")
                args[1:1] = ["-h", host, "-p", port]
                if step.command.endswith("&"):
                    background.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
                    time.sleep(1.0)  # subscribed before the next publish: nothing to wait on but its output
                    continue
                done = subprocess.run(args, capture_output=True, text=True, timeout=30)
                output = done.stdout + done.stderr
            for line in step.printed:
                output += "".join(read_line(process) for process in background)
                assert line in output, (step.command, output)
            named = re.fullmatch(r"pairing ID ([0-9a-f]{6})", step.remark)  # "cregistry requests  # pairing ID c4095f"
            if named:
                assert named.group(1) in output
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
