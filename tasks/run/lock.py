"""One run at a time per app on a host: the deploy lock.

Two deploys of the same app at once (two laptops, a laptop and CI) would race: one
run's prune could remove the other's half-unpacked release, and each would decide
what to change from facts the other is busy changing. So every run of deploy.py and
rollback.py takes `<app_root>/deploy.lock` on each host (through the release tool,
as root) before it reads anything there, and gives it back when it disconnects from
the host: at the end of the run, also when the run failed on that host, was a dry
run or was not confirmed. deploy.py asks for it in its first batch of facts, ahead of
them (tasks/run/prefetch.py): no command of its own. Taken over SSH, the lock names the
SSH connection it came through and is free once that connection is gone, so giving
it back costs no command either; taken through any other connector, it is released
with one command at disconnect.

The lock names its holder: the user, machine and process id of the run, its run id
(also the last part of its release ids) and since when it is held (host clock). A
run that finds the lock held waits up to `deploy_lock_timeout` seconds, then stops
with one line naming the holder. A lock left by a run that died is recognised by
itself when that run was on the same machine (its process is gone) and taken over;
one left from another machine is free once sshd has dropped that run's connection,
and until then (or if it was not taken over SSH) is broken with `--data
deploy_lock_break=true` (or, on the host, `release-tool lock break`), once you know
that run is gone.

The very first deploy to a host has no release tool there yet, so it takes no lock.
"""

from __future__ import annotations

import json
import os
import shlex
import time

from pyinfra import logger
from pyinfra.api import FactBase, StringCommand
from pyinfra.api.exceptions import DeployError
from pyinfra.api.state import BaseStateCallback

from tasks import identity
from tasks import tool as host_tool
from tasks.run import prefetch

# host name -> {release tool whose lock this run holds there: release it at disconnect?}
_HELD: dict[str, dict[str, bool]] = {}
_POLL = 5.0


class LockHeld(DeployError):
    """Another run holds an app's deploy lock on a host (raised before any change)."""


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: not ours to call dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def describe(holder: dict) -> str:
    return (f"{holder.get('user', '?')}@{holder.get('machine', '?')} (pid {holder.get('pid', '?')}, "
            f"run {holder.get('run', '?')}) since {holder.get('since_at', '?')} host time "
            f"({holder.get('age', '?')} s ago)")


class DeployLock(FactBase):
    """Takes an app's deploy lock through its release tool (waiting up to `wait`
    seconds) and answers {"state": "taken"|"held"|"no-tool", "holder": ..., "broke": ...}.
    A fact because it must come before every other read, with the host's connection
    arguments (sudo); a connector that runs nothing answers the default. Never noted
    for a later run's batch (its command holds this run's id)."""

    noted = False  # see tasks/run/prefetch.py

    @staticmethod
    def default() -> dict:
        return {"state": "no-tool"}

    def command(self, tool: str, run: str, holder: str, wait: int, break_run: str = "", force: bool = False) -> str:
        quoted = shlex.quote(tool)
        take = host_tool.lock_take(tool, run, holder, wait, break_run, force)
        # Always exits 0, with the tool's errors in the output (a held lock exits 3).
        return f"if [ -x {quoted} ]; then {take} 2>&1; echo \"LOCK exit $?\"; else echo 'LOCK no-tool'; fi"

    def process(self, output: list[str]) -> dict:
        answer: dict = {"lines": output}
        for line in output:
            word, _, rest = line.partition(" ")
            if word != "LOCK":
                if "invalid choice: 'lock'" in line:
                    answer["state"] = "no-tool"  # a release tool from before the lock: the next run has it
                continue
            state, _, payload = rest.partition(" ")
            if state == "broke":
                answer["broke"] = json.loads(payload)
            elif state == "held":
                answer.update(state="held", holder=json.loads(payload))
            elif state in ("taken", "no-tool"):
                answer["state"] = state
                # Taken through an SSH connection: free again once it is gone.
                answer["ssh"] = payload == "ssh"
        return answer


def _tool(app) -> str:
    return host_tool.path(app.app_root)


def _ask_arguments(app, wait: float = 0, break_run: str | None = None) -> dict:
    holder = json.dumps({"user": identity.user(), "machine": identity.MACHINE, "pid": os.getpid()})
    return dict(tool=_tool(app), run=identity.RUN_ID, holder=holder, wait=int(wait), break_run=break_run or "",
                force=app.deploy_lock_break)


def first_asks(host, apps) -> list[str]:
    """The commands of this host's first asks for its apps' locks (the ones take()
    sends first), for the fact batch to run ahead of every fact (tasks/run/prefetch.py)."""
    held = _HELD.get(host.name, {})
    return [DeployLock().command(**_ask_arguments(s)) for s in apps if _tool(s) not in held]


def _ask(host, app, wait: float, break_run: str | None) -> dict:
    answer = host.get_fact(DeployLock, **_ask_arguments(app, wait, break_run))
    tool = _tool(app)
    if not answer or "state" not in answer:
        lines = (answer or {}).get("lines", [])
        raise LockHeld(f"could not take the deploy lock with {tool}: {' / '.join(lines)[-500:]}")
    return answer


def take(host, apps) -> None:
    """Take the deploy lock of every app of this host (call before the first fact,
    or after prefetch.start() was given first_asks())."""
    state = host.state
    if not any(isinstance(handler, _ReleaseOnDisconnect) for handler in state.callback_handlers):
        state.add_callback_handler(_ReleaseOnDisconnect())
    if not all([_take(host, s) for s in apps]):
        # Some lock was held when the first batch read the facts (while another run
        # may have been changing the host): read them again, now that it is ours.
        prefetch.read_again(host)


def _take(host, app) -> bool:
    """Take one app's lock; False if it was not free at the first ask."""
    tool = _tool(app)
    if tool in _HELD.get(host.name, {}):
        return True
    timeout = app.deploy_lock_timeout
    deadline = time.monotonic() + timeout
    break_run, waiting, first = None, False, True
    while True:
        # The first ask does not wait, so a run that finds the lock held always says so.
        wait = max(0.0, min(_POLL, deadline - time.monotonic())) if waiting else 0.0
        answer = _ask(host, app, wait, break_run)
        if "broke" in answer:
            why = "its process is gone" if break_run else "deploy_lock_break=true"
            logger.warning(f"[{host.name}] {app.app_name}: broke the deploy lock held by "
                           f"{describe(answer['broke'])} ({why})")
        if answer["state"] == "taken":
            _HELD.setdefault(host.name, {})[tool] = not answer.get("ssh")
            return first
        if answer["state"] == "no-tool":
            return first
        first = False
        holder = answer["holder"]
        if holder.get("machine") == identity.MACHINE and not _alive(holder.get("pid")):
            break_run = holder.get("run")
            continue
        if time.monotonic() >= deadline:
            raise LockHeld(
                f"{app.app_name} on host {host.name}: the deploy lock is held by {describe(holder)}; "
                f"waited {timeout} s (deploy_lock_timeout), nothing was changed. If that run is gone: "
                "--data deploy_lock_break=true")
        if not waiting:
            logger.warning(f"[{host.name}] {app.app_name}: waiting up to {timeout} s for the deploy lock "
                           f"held by {describe(holder)}")
            waiting = True


class _ReleaseOnDisconnect(BaseStateCallback):
    @staticmethod
    def host_disconnect(state, host):
        # A lock taken over SSH is free once this connection closes: nothing to send.
        for tool in [tool for tool, release in _HELD.pop(host.name, {}).items() if release]:
            try:
                host.run_shell_command(StringCommand(host_tool.lock_release(tool, identity.RUN_ID)),
                                       print_output=False, print_input=False,
                                       **prefetch.default_connector_arguments(host))
            except Exception as exc:  # the connection is gone: the lock stays, recognisably ours
                logger.warning(f"[{host.name}] could not release the deploy lock ({exc}); "
                               f"the next run from {identity.MACHINE} takes it over")
