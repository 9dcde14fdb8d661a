"""pyinfra run the way a user runs it, from the repository root, at a throwaway host
or an inventory file: its exit code, output and duration."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from dev.throwaway.base import PYINFRA, REPO_ROOT

def write_group_inventory(path: Path, groups: dict[str, list[tuple]]) -> Path:
    """A pyinfra inventory with groups: {group: [(host, extra host data), ...]}."""
    lines = []
    for group, members in groups.items():
        entries = [(host.name, {**host.inventory_data(), **data}) for host, data in members]
        lines.append(f"{group} = {entries!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class DeployRun:
    returncode: int
    output: str
    seconds: float

    def results(self) -> dict[str, tuple[str, str, str]]:
        """The `--> Results:` table: operation name -> (success, error, no change)."""
        rows = {}
        in_table = False
        for line in self.output.splitlines():
            if line.startswith("--> Results"):
                in_table = True
                continue
            if in_table:
                match = re.match(r"^\s{4}(.+?)\s{2,}(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", line)
                if match:
                    rows[match.group(1)] = (match.group(3), match.group(4), match.group(5))
                elif line.startswith("-->"):
                    break
        return rows

    def changed_operations(self) -> list[str]:
        return [name for name, (success, _, _) in self.results().items()
                if success != "-" and name != "Grand total"]


def _encode(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_pyinfra(target, workdir: Path, *flags: str, data: dict | None = None,
                inventory_data: dict | None = None, deploy: str = "deploy.py",
                timeout: int = 900) -> DeployRun:
    """Run `pyinfra <inventory> <deploy> -y --data ...` as a user would, over SSH, at
    one host (an inventory is written for it) or at an inventory file."""
    if not isinstance(target, Path):  # a Host: an inventory is written for it
        target = target.write_inventory(workdir / f"inventory_{uuid.uuid4().hex[:6]}.py", inventory_data)
    command = [PYINFRA, str(target), deploy, *flags]
    if "--dry" not in flags:
        command.append("-y")
    for key, value in (data or {}).items():
        command += ["--data", f"{key}={_encode(value)}"]
    return run_command(command, timeout)


def run_command(command: list[str], timeout: int = 900) -> DeployRun:
    """Run a command from the repository root; its exit code, output and duration."""
    started = time.monotonic()
    proc = subprocess.run(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL, timeout=timeout, env={**os.environ, "PYINFRA_PROGRESS": "off"},
    )
    return DeployRun(proc.returncode, proc.stdout, time.monotonic() - started)
