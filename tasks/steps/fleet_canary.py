"""A canary by share of traffic behind load balancers (`canary_share`, docs/releases.md).

On one host the release tool does it all in one command (`split`). Behind balancers the
split happens on the balancers and the release runs on the app servers, so the deploy
runs the same steps on them in turn, once every host is deployed:

    1. app servers  the release on trial (checked in-process by prepare()) starts as a
                    canary instance beside the live one (`canary-start`);
    2. balancers    each sends its share of new clients to the app servers' canary
                    instances for the window and counts what each instance answered
                    (`canary-watch`);
    3. app servers  the balancers' counts, summed here, are judged by each app server's
                    tool (the same verdict as on one host): promoted, the release goes
                    live there, health-gated (`canary-verdict`);
    4. balancers    every client to the live instances again (`canary-close`);
    5. app servers  the canary instance ends; a release that is not live is removed, and
                    the deploy fails with `ROLLED BACK by its canary` (`canary-finish`).

Each step is one operation that every app server and balancer adds from the same line,
so pyinfra runs it on all of them before the next (as tasks/run/barriers.py); a host with
nothing to do in a step skips it. The counts travel through this process's memory only.
Every host knows at once which canaries the run holds (trials()), from the app servers'
facts, so a run without one adds none of these steps (a second run: "No changes").
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import NamedTuple

from pyinfra import host, logger
from pyinfra.api import DeployError, StringCommand
from pyinfra.operations import python

from tasks import identity
from tasks import tool as host_tool
from tasks.config import topology
from tasks.config.inventory import load_apps
from tasks.run import prefetch
from tasks.steps import maintenance
from tasks.steps.release import on_trial

class Trial(NamedTuple):
    """One app's release on trial on one app server."""
    app: str
    server: str
    release: str
    tool: str
    window: int


class _Run:
    """What the steps learn while they run (per pyinfra run): who started a canary, and
    each balancer's counts."""

    def __init__(self):
        self.started: dict[str, set[str]] = defaultdict(set)
        self.numbers: dict[str, dict[str, dict]] = defaultdict(dict)


_TRIALS: dict[int, list[Trial]] = {}
_RUNS: dict[int, _Run] = {}


def trials(host) -> list[Trial]:
    """Every release going on trial behind balancers in this run, the same list on every
    host. A canary needs every balancer in the run (they split the clients): else the run
    stops here, before any host is touched."""
    key = id(host.state)
    if key not in _TRIALS:
        running = set(host.inventory.iter_activated_hosts())
        found = []
        for server in topology.app_servers(host):
            if server in running and topology.behind_balancer(server):
                for app in load_apps(server):
                    release = on_trial(server, app)
                    if release:
                        found.append(Trial(app.app_name, server.name, release, host_tool.path(app.app_root),
                                           app.canary_window))
        left_out = [balancer.name for balancer in topology.members(host, topology.LB_GROUP) if balancer not in running]
        if found and left_out:
            raise DeployError(
                f"canary_share: {', '.join(sorted({t.app for t in found}))} goes on trial behind the load balancers, "
                f"which split its clients, but {', '.join(left_out)} is not in this run (--limit, rollout.py or "
                "unreachable): deploy every host at once (pyinfra INVENTORY deploy.py); nothing was changed.")
        _TRIALS[key] = found
    return _TRIALS[key]


def run(this) -> None:
    """The steps above, on an app server or a balancer (called on every host of the run)."""
    found = trials(host)
    if not found or not (this.is_app_server or this.is_balancer):
        return
    state = _RUNS.setdefault(id(host.state), _Run())
    mine = [trial for trial in found if trial.server == host.name]
    app = this.settings.app_name if this.is_balancer else None
    watched = [trial for trial in found if trial.app == app]
    tool = maintenance.tool(this.settings, balancer=True) if watched else None
    # The same names on every host: each step is one operation of the run.
    shares = ", ".join(sorted({f"{trial.app} {trial.release}" for trial in found}))
    window = max(trial.window for trial in found)
    python.call(name=f"Canary behind the balancers: start {shares} beside the live release on each app server",
                function=_start, trials=mine, run_state=state, _if=lambda: bool(mine))
    python.call(name=f"Canary behind the balancers: a share of new clients to it for {window} s, each instance's "
                     "answers counted",
                function=_watch, trials=watched, tool=tool, run_state=state,
                _if=lambda: bool(watched) and bool(state.started.get(app)))
    python.call(name="Canary behind the balancers: judged by the balancers' counts; promoted, it goes live",
                function=_each, step=host_tool.canary_verdict, trials=mine, run_state=state,
                _if=lambda: any(host.name in state.started[trial.app] for trial in mine))
    python.call(name="Canary behind the balancers: every client to the live release again",
                function=_close, tool=tool, _if=lambda: bool(watched) and bool(state.started.get(app)))
    python.call(name="Canary behind the balancers: the canary instances end; a release not promoted is removed",
                function=_each, step=host_tool.canary_finish, trials=mine, run_state=state,
                _if=lambda: any(host.name in state.started[trial.app] for trial in mine))


def _tool(command: str, what: str) -> list[str]:
    """A release-tool command on this host, its output lines; its message if it fails."""
    ok, output = host.run_shell_command(StringCommand(command), print_output=False, print_input=False,
                                        **prefetch.default_connector_arguments(host))
    lines = [*output.stdout_lines, *output.stderr_lines]
    if not ok:
        errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]
        raise DeployError(f"{what}: {' '.join(errors) or ' / '.join(lines[-5:])}")
    return lines


def _start(trials: list[Trial], run_state: _Run) -> None:
    for trial in trials:
        _tool(host_tool.canary_start(trial.tool, trial.release, host.name, identity.RUN_ID, identity.BY),
              f"{trial.app}: release {trial.release} could not go on trial")
        run_state.started[trial.app].add(host.name)


def _watch(trials: list[Trial], tool: str, run_state: _Run) -> None:
    trial = trials[0]
    lines = _tool(host_tool.canary_watch(tool, trial.release), f"{trial.app}: the canary's split")
    numbers = host_tool.canary_numbers(lines)
    if numbers is None:
        raise DeployError(f"{trial.app}: the canary's split gave no counts: {' / '.join(lines[-5:])}")
    run_state.numbers[trial.app][host.name] = numbers


def total(numbers: dict[str, dict]) -> dict:
    """The balancers' counts as one window: requests and 5xx per instance summed, from
    the first opening to the last closing; {} counts (no balancer counted) judge as too few."""
    found = {"canary": {"requests": 0, "5xx": 0}, "live": {"requests": 0, "5xx": 0},
             "opened": min((n["opened"] for n in numbers.values()), default=0.0),
             "closed": max((n["closed"] for n in numbers.values()), default=0.0), "balancers": sorted(numbers)}
    for counted in numbers.values():
        for side in ("canary", "live"):
            for key in ("requests", "5xx"):
                found[side][key] += counted[side][key]
    return found


def _each(step, trials: list[Trial], run_state: _Run) -> None:
    for trial in trials:
        if host.name in run_state.started[trial.app]:
            numbers = total(run_state.numbers.get(trial.app, {}))
            for line in _tool(step(trial.tool, trial.release, json.dumps(numbers), host.name, identity.RUN_ID,
                                   identity.BY), f"{trial.app} on {host.name}"):
                if line.startswith("canary: "):
                    logger.info(f"[{host.name}] {trial.app}: {line}")


def _close(tool: str) -> None:
    _tool(host_tool.canary_close(tool), "every client to the live release")
