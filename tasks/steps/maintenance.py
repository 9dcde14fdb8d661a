"""Maintenance mode: while an app's flag file exists, its nginx site answers 503
with a plain page and `Retry-After`, except for the deploy's health check, ACME
challenges and the clients of `maintenance_allow` (templates/nginx-maintenance.conf.j2).

The deploy makes each app's directory (`App.maintenance_dir`, root's, mode 755,
outside the app root and everything the app user can write) and uploads the page
there; it never creates or removes the flag, so maintenance survives redeploys.
The flag is switched on the host by the release tool (`release-tool maintenance
on|off`, which writes the audit line), from the laptop with `ops.py INVENTORY
maintenance on|off`. nginx tests for it on every request: no reload.

Maintenance is switched where nginx answers the clients: on each app server
without load balancers, on the balancers with them (the app servers then run no
nginx). A balancer has no release tool of its own, so the deploy installs one
there for this (and its audit log) under BALANCER_ROOT/<app>: root-only, with
settings naming just the app and its maintenance directory. See
docs/maintenance-audit-hooks.md.
"""

from __future__ import annotations

import io
import json

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from tasks import REPO_ROOT
from tasks import tool as host_tool
from tasks.config import topology
from tasks.config.app import MAINTENANCE_ROOT

DEFAULT_PAGE = REPO_ROOT / "files/maintenance.html"
BALANCER_ROOT = "/var/lib/pyinfra-flask"


def tool(app, balancer: bool) -> str:
    """The release tool that switches an app's maintenance (and keeps its audit log) on a host."""
    return host_tool.path(f"{BALANCER_ROOT}/{app.app_name}" if balancer else app.app_root)


def page_source(app) -> str:
    return str(app.local_path(app.maintenance_page) if app.maintenance_page else DEFAULT_PAGE)


@deploy("Maintenance pages")
def install(apps, balancer_canary: dict | None = None) -> list:
    """Each app's maintenance directory and page (the flag is left as it is); on a
    balancer, its release tool, which also runs the balancer's part of a canary
    (`balancer_canary`: the instances it counts; files/release_tool/split.py)."""
    changes = [files.directory(name=f"Create {MAINTENANCE_ROOT} (root's)", path=MAINTENANCE_ROOT,
                               user="root", group="root", mode="755")]
    for s in apps:
        changes.append(files.directory(name=f"Create {s.maintenance_dir} (root's: the maintenance flag and page)",
                                       path=s.maintenance_dir, user="root", group="root", mode="755"))
        changes.append(files.put(name=f"Upload {s.app_name}'s maintenance page", src=page_source(s),
                                 dest=f"{s.maintenance_dir}/page.html", user="root", group="root", mode="644"))
        if topology.is_balancer(host):
            root = f"{BALANCER_ROOT}/{s.app_name}"
            # The parent is shared (the ACME webroot lives there too, which nginx reads).
            files.directory(name=f"Create {BALANCER_ROOT} (root's)", path=BALANCER_ROOT, user="root", group="root",
                            mode="755")
            for path in (root, f"{root}/bin"):
                files.directory(name=f"Create {path} (root only)", path=path, user="root", group="root", mode="700")
            files.put(name="Install the release tool (maintenance switch, audit log)",
                      src=host_tool.upload(), dest=tool(s, balancer=True), mode="700")
            settings = {"app": s.app_name, "maintenance_dir": s.maintenance_dir}
            if balancer_canary:
                settings["canary"] = {**balancer_canary, "share": s.canary_share, "window": s.canary_window,
                                      "flag": f"{s.canary_dir}/on", "log": s.canary_log}
            files.put(name=f"Write the release tool's settings (maintenance{', canary' if balancer_canary else ''})",
                      mode="600", src=io.StringIO(json.dumps(settings, indent=2) + "\n"),
                      dest=f"{root}/release-tool.json")
            if balancer_canary:
                files.directory(name=f"Create {s.canary_dir} (root's: the canary's flag, read by nginx)",
                                path=s.canary_dir, user="root", group="root", mode="755")
                # A deploy cut off during a canary left it: every client goes to the live release.
                files.file(name="No canary flag left by an interrupted deploy", path=f"{s.canary_dir}/on",
                           present=False)
            else:
                files.directory(name=f"No {s.canary_dir} (canary_share is 0)", path=s.canary_dir, present=False)
    return changes


def targets(host, apps) -> list[tuple[object, str]]:
    """(app, release tool) of the apps whose maintenance is switched on this host:
    every app of an app server with its own nginx, the balancer's app on a balancer;
    none on app servers behind balancers (their balancers answer the clients)."""
    balancer = topology.is_balancer(host)
    return [(s, tool(s, balancer)) for s in apps if balancer or not s.behind_balancer]


def switch_command(tool_path: str, state: str, by: str) -> str:
    """The host-side command switching maintenance on/off (or reading it: status)."""
    return host_tool.maintenance(tool_path, state, by)
