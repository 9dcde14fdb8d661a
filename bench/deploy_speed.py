"""Deploy speed, for bench.performance: pyinfra runs on throwaway hosts, streamed and
timed line by line, and where each run spent its time (seconds per group of steps).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dev import throwaway

LABELS = {"io.pyinfra-flask.bench": "1"}
RESULTS = throwaway.REPO_ROOT / "bench" / "results"
APP = "greeting"
ROOT = f"/srv/{APP}"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
APT_ARCHIVES = "/var/cache/apt/bench-archives"

# Cold-deploy steps by group, from the deploy's `@deploy` names ("uWSGI | Install ...").
STARTUP, PREPARE, FINISH, OTHER = ("pyinfra start-up, SSH connect", "deploy.py + facts (prepare)",
                                   "results, disconnect", "other operations")
APP_VENV = "app venv (pip install Flask)"
OP_GROUPS = {
    "System packages": "system packages (apt)",
    "uWSGI": "uWSGI venv + compile",
    "Release": "release: upload, unpack, import check",
    "App user and directories": "user, uwsgi.ini, systemd unit",
    "uWSGI configuration": "user, uwsgi.ini, systemd unit",
    "uWSGI service": "user, uwsgi.ini, systemd unit",
    "Log rotation": "user, uwsgi.ini, systemd unit",
    "nginx sites": "nginx site, nginx -t, reload",
    "Release activation": "switch, start uWSGI, health check",
    "Health check": "switch, start uWSGI, health check",
}
GROUP_ORDER = [STARTUP, PREPARE, "system packages (apt)", "uWSGI venv + compile", APP_VENV,
               *dict.fromkeys(group for group in OP_GROUPS.values() if group not in (
                   "system packages (apt)", "uWSGI venv + compile")), OTHER, FINISH]


@dataclass
class Run:
    """One pyinfra run: exit code, output, wall time, and when each `--> ` line came."""

    returncode: int
    output: str
    seconds: float
    marks: list[tuple[float, str]] = field(default_factory=list)

    def changed_operations(self) -> list[str]:
        return throwaway.DeployRun(self.returncode, self.output, self.seconds).changed_operations()


def run_streamed(command: list[str], timeout: float = 1800) -> Run:
    """Run a command from the repository root as throwaway.run_command does, reading
    its output line by line as it comes, so each `--> ` line gets a time."""
    started = time.monotonic()
    # Every cold deploy compiles uWSGI, as the tables in docs/performance.md were measured
    # (the wheel cache would make the first cold run differ from the later ones).
    env = {**os.environ, "PYINFRA_PROGRESS": "off", "PYTHONUNBUFFERED": "1", "PYINFRA_FLASK_CACHE": "off"}
    proc = subprocess.Popen(command, cwd=throwaway.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, env=env)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    lines, marks = [], []
    try:
        for line in proc.stdout:
            now = time.monotonic() - started
            lines.append(line)
            clean = ANSI.sub("", line).strip()
            if clean.startswith("--> "):
                marks.append((now, clean[4:]))
        returncode = proc.wait()
    finally:
        killer.cancel()
    return Run(returncode, "".join(lines), time.monotonic() - started, marks)


def pyinfra(inventory: Path, deploy: str = "deploy.py", data: dict | None = None) -> Run:
    command = [throwaway.PYINFRA, str(inventory), deploy, "-y"]
    for key, value in (data or {}).items():
        command += ["--data", f"{key}={value}"]
    run = run_streamed(command)
    if run.returncode != 0:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "failed.log").write_text(run.output)
        errors = [line for line in run.output.splitlines() if "rror" in line or "failed" in line.lower()]
        raise SystemExit(f"`{' '.join(command)}` failed (whole output in {RESULTS / 'failed.log'}):\n"
                         + "\n".join(errors[:40]) + "\n...\n" + run.output[-3000:])
    return run


def breakdown(run: Run) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per group and per operation of a run, from its `--> ` lines: each step
    lasts until the next `--> ` line (the last until the process ended)."""
    groups = dict.fromkeys(GROUP_ORDER, 0.0)
    ops: dict[str, float] = {}
    bounds = [(0.0, "Loading config...")] + run.marks + [(run.seconds, "end")]
    phase = STARTUP
    for (start, line), (end, _) in itertools.pairwise(bounds):
        if line.startswith("Preparing operation"):
            phase = PREPARE
        elif line.startswith("Starting") and "operation:" in line:
            name = line.split("operation:", 1)[1].strip()
            ops[name] = ops.get(name, 0.0) + end - start
            groups[classify(name)] += end - start
            continue
        elif line.startswith("Results"):
            phase = FINISH
        groups[phase] += end - start
    return groups, ops


def classify(op_name: str) -> str:
    # "App server | System packages | Install ...": the innermost `@deploy` names the group.
    *deploys, name = op_name.split(" | ")
    deploy = deploys[-1] if deploys else ""
    if name.startswith("Ship release"):  # its venv, checks and (a host's one app) activation: one command
        return "release: upload, unpack, import check"
    return OP_GROUPS.get(deploy, OTHER) if deploys else OTHER


def app_copy(work: Path, tag: str) -> Path:
    """The example app with another greeting: a code-only change."""
    app = work / f"app-{tag}"
    shutil.copytree(throwaway.REPO_ROOT / "files/greeting", app)
    module = app / "greeting.py"
    module.write_text(module.read_text().replace("Hello from greeting", f"Hello from bench {tag}"))
    return app


def start_host(image: str, ports: tuple[int, ...] = (22, 80)) -> throwaway.Host:
    """A throwaway host whose apt keeps its packages in a directory of its own.

    Throwaway hosts share one directory of downloaded .deb files (a bind mount), and
    with it apt's lock on that directory: apt on several hosts at once (a cold deploy
    to N hosts, or a test suite running next to this) fails with "Could not get lock
    /var/cache/apt/archives/lock". Each bench host gets a private copy of the shared
    files instead (made before anything is timed), so nothing is downloaded twice and
    the shared directory is only read."""
    host = throwaway.start_host(image, labels=LABELS, ports=ports)
    try:
        host.exec(f"mkdir -p {APT_ARCHIVES}/partial && "
                  f"find /var/cache/apt/archives -maxdepth 1 -name '*.deb' -exec cp -t {APT_ARCHIVES} {{}} + && "
                  f"echo 'Dir::Cache::archives \"{APT_ARCHIVES}/\";' > /etc/apt/apt.conf.d/91bench-archives")
    except Exception:
        host.remove()
        raise
    return host
