"""The audit log, read from the laptop (ops.py `audit`): every host's
`release-tool audit` (files/release_tool/ writes <app_root>/audit.jsonl, root's:
one JSON line per deploy, rollback, maintenance switch and lock break, naming who
did it, what, when and how it ended).

On a balancer the log of its maintenance switches is kept by the release tool the
deploy installs there (tasks/steps/maintenance.py); app servers behind balancers keep
their deploys' and rollbacks'.
"""

from __future__ import annotations

import json

from tasks import tool as host_tool
from tasks.config import topology
from tasks.steps import maintenance


def tools(host, apps) -> list[tuple[object, str]]:
    """(app, release tool) of every app on this host that keeps an audit log."""
    balancer = topology.is_balancer(host)
    return [(s, maintenance.tool(s, balancer)) for s in apps]


def command(tool_path: str, as_json: bool, last: int) -> str:
    # A host never deployed to (no tool yet) has no log: nothing to print.
    return host_tool.if_installed(tool_path, host_tool.audit(tool_path, as_json, last))


def tagged(host_name: str, app_name: str, line: str) -> str:
    """One JSON line of the log with the host it came from (ops.py audit --json)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return json.dumps({"host": host_name, "app": app_name, "unreadable": line})
    return json.dumps({"host": host_name, **entry})
