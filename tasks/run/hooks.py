"""Hooks and notifications around a deploy or rollback run, on your machine.

deploy.py and rollback.py call `register(host, apps, event)` for every host while
pyinfra prepares (nothing runs then). That registers one pyinfra state callback
(public API: `BaseStateCallback`, `State.add_callback_handler`) for the run:

- when pyinfra starts executing (its first operation, after the confirmation
  prompt; never for `--dry`), every `before_deploy_hooks` executable runs once for
  the whole run, in order. One that fails (or cannot be started) stops the run
  there: no operation has run on any host.
- when pyinfra has disconnected from the last host, every `after_deploy_hooks`
  executable runs once (a failure only warns), and each `webhook_url` gets one JSON
  POST (a failed delivery only warns; the URL is never printed, it may hold a
  token).

How the run went comes from pyinfra (the hosts it failed) and from each host's
audit log (files/release_tool/): the entries of this run (its run id) name the
release ids before and after and whether the health gate rolled a release back,
read with one command per host at its disconnect, only when hooks or a webhook
are set. The outcome is `rolled-back` when a host rolled back automatically,
`failure` when any host failed, else `success`.

The hooks get the details in environment variables (PYINFRA_FLASK_*, see
`environment`); the webhook gets the same as JSON (`payload`). Hooks and webhooks
are host settings: a run uses every one any of its hosts names (set them for all
hosts, e.g. in group_data/all.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pyinfra import logger
from pyinfra.api import BaseStateCallback, StringCommand
from pyinfra.api.exceptions import DeployError

from tasks import identity
from tasks import tool as host_tool
from tasks.run import prefetch
from tasks.config.app import local_path

WEBHOOK_TIMEOUT = 5
HOOK_TIMEOUT = 300
PREFIX = "PYINFRA_FLASK_"


class HookFailed(DeployError):
    """A before-deploy hook failed: the run stops before any operation."""


@dataclass
class HostRun:
    apps: list
    # app name -> this run's last audit entry for it (from, to, result)
    audit: dict = field(default_factory=dict)


def register(host, apps, event: str) -> None:
    """Note this host's apps for the run's hooks (call from deploy.py / rollback.py)."""
    state = host.state
    handler = next((h for h in state.callback_handlers if isinstance(h, Hooks)), None)
    if handler is None:
        handler = Hooks(event)
        state.add_callback_handler(handler)
    handler.hosts[host.name] = HostRun(list(apps))


def _unique(values) -> list:
    return list(dict.fromkeys(values))


class Hooks(BaseStateCallback):
    def __init__(self, event: str):
        self.event = event
        self.hosts: dict[str, HostRun] = {}
        self.started_at: float | None = None
        self.stopped = False  # a before-hook failed
        self.finished = False
        self.disconnected: set[str] = set()

    # What the settings ask for ------------------------------------------------

    def _all(self, key: str) -> list:
        return _unique(value for run in self.hosts.values() for s in run.apps for value in getattr(s, key))

    def wanted(self) -> bool:
        return bool(self._all("before_deploy_hooks") or self._all("after_deploy_hooks") or self.webhooks())

    def webhooks(self) -> dict[str, list[str]]:
        """URL -> the hosts whose apps name it."""
        found: dict[str, list[str]] = {}
        for name, run in self.hosts.items():
            for url in _unique(s.webhook_url for s in run.apps if s.webhook_url):
                found.setdefault(url, []).append(name)
        return found

    # pyinfra's callbacks ---------------------------------------------------------

    def operation_start(self, state, op_hash) -> None:
        if self.started_at is not None:
            return
        self.started_at = time.time()
        for hook in self._all("before_deploy_hooks"):
            code, why = run_hook(hook, self.environment("before"))
            if code != 0:
                self.stopped = True
                raise HookFailed(f"before_deploy_hooks: {hook} {why}; the {self.event} stopped before "
                                 "any operation, nothing was changed on any host")

    def host_disconnect(self, state, host) -> None:
        run = self.hosts.get(host.name)
        if run is not None and self.started_at is not None and not self.stopped and self.wanted():
            run.audit = read_audit(host, run.apps)
        self.disconnected.add(host.name)
        if self.finished or not {h.name for h in state.activated_hosts} <= self.disconnected:
            return
        self.finished = True
        if self.started_at is None or self.stopped:
            return  # nothing ran: a dry run, not confirmed, or stopped by a before-hook
        failed = {h.name for h in state.failed_hosts}
        for hook in self._all("after_deploy_hooks"):
            code, why = run_hook(hook, self.environment("after", failed))
            if code != 0:
                logger.warning(f"after_deploy_hooks: {hook} {why} (the {self.event} itself is done)")
        for url, names in self.webhooks().items():
            deliver(url, self.payload(failed, names))

    # What hooks and webhooks are told --------------------------------------------

    def outcomes(self, failed: set[str], names=None) -> dict[str, dict]:
        found = {}
        for name in names or self.hosts:
            run = self.hosts[name]
            results = [entry.get("result") for entry in run.audit.values()]
            outcome = ("rolled-back" if "rolled-back" in results else
                       "failure" if name in failed or "failed" in results else "success")
            found[name] = {"outcome": outcome, "apps": {
                s.app_name: _app_outcome(run.audit.get(s.app_name, {}))
                for s in run.apps}}
        return found

    def payload(self, failed: set[str], names=None) -> dict:
        hosts = self.outcomes(failed, names)
        outcomes = {entry["outcome"] for entry in hosts.values()}
        outcome = next((o for o in ("rolled-back", "failure") if o in outcomes), "success")
        releases = _unique(app["to"] for entry in hosts.values() for app in entry["apps"].values() if app["to"])
        return {
            "event": self.event, "outcome": outcome, "run": identity.RUN_ID, "user": identity.BY.rpartition("@")[0],
            "machine": identity.MACHINE, "release": releases[0] if len(releases) == 1 else None, "releases": releases,
            "hosts": hosts, "failed_hosts": sorted(set(hosts) & failed),
            "started_at": _iso(self.started_at), "finished_at": _iso(time.time()),
        }

    def environment(self, phase: str, failed: set[str] | None = None) -> dict[str, str]:
        env = {
            "EVENT": self.event, "PHASE": phase, "RUN": identity.RUN_ID, "USER": identity.BY.rpartition("@")[0],
            "MACHINE": identity.MACHINE, "HOSTS": " ".join(self.hosts),
            "APPS": " ".join(_unique(s.app_name for run in self.hosts.values() for s in run.apps)),
        }
        if phase == "after":
            body = self.payload(failed or set())
            env.update(OUTCOME=body["outcome"], FAILED_HOSTS=" ".join(body["failed_hosts"]),
                       RELEASE=body["release"] or "", RELEASES=" ".join(body["releases"]),
                       DETAILS=json.dumps(body["hosts"]))
        return {PREFIX + key: value for key, value in env.items()}


def _app_outcome(entry: dict) -> dict:
    """One app's part of the details: from, to, result, and a canary's verdict with its numbers."""
    found = {key: entry.get(key) for key in ("from", "to", "result")}
    if isinstance(entry.get("canary"), dict):
        found["canary"] = entry["canary"]
    return found


def _iso(moment: float | None) -> str | None:
    return None if moment is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def run_hook(hook: str, env: dict[str, str]) -> tuple[int, str]:
    """Run one hook (a local executable, relative paths from the repository root)
    with the details added to the environment: (exit code, why it failed)."""
    path = str(local_path(hook))
    logger.info(f"--> Running hook {hook} ({env[PREFIX + 'PHASE']} the {env[PREFIX + 'EVENT']})")
    try:
        done = subprocess.run([path], env={**os.environ, **env}, stdin=subprocess.DEVNULL, timeout=HOOK_TIMEOUT)
    except subprocess.TimeoutExpired:
        return 124, f"took over {HOOK_TIMEOUT} s"
    except OSError as exc:
        return 127, f"could not be started ({exc.strerror})"
    return done.returncode, f"failed (exit {done.returncode})"


def read_audit(host, apps) -> dict[str, dict]:
    """This run's last audit entry per app on a host (empty when the host has none)."""
    found = {}
    for s in apps:
        tool = host_tool.path(s.app_root)
        command = host_tool.if_installed(tool, host_tool.audit(tool, True, 50))
        try:
            ok, output = host.run_shell_command(StringCommand(command), print_output=False, print_input=False,
                                                **prefetch.default_connector_arguments(host))
        except Exception as exc:  # the connection is gone: the outcome is pyinfra's alone
            logger.warning(f"[{host.name}] could not read the audit log for the hooks ({exc})")
            continue
        for line in output.stdout_lines if ok else []:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("run") == identity.RUN_ID and entry.get("event") in (
                    "deploy", "rollback"):
                found[s.app_name] = entry
    return found


def where(url: str) -> str:
    """What may be said of a webhook URL: its scheme and host, never its path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}"


def deliver(url: str, body: dict) -> bool:
    """POST the JSON body; a failure only warns (naming the URL's host, nothing more)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "pyinfra-flask"})
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as answer:
            answer.read(1024)
    except urllib.error.HTTPError as exc:
        logger.warning(f"webhook to {where(url)}: answered {exc.code} (the {body['event']} itself is done)")
        return False
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        logger.warning(f"webhook to {where(url)}: not delivered ({reason}) (the {body['event']} itself is done)")
        return False
    logger.info(f"--> Webhook to {where(url)}: {body['outcome']}")
    return True
