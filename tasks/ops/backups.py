"""ops.py's database commands (backup now, backups, restore) over tasks/ops/fleet.py's
hosts: each runs the backup tool the deploy installs (files/db-backup.py,
tasks/steps/database.py) on the hosts that hold an app's database."""

from __future__ import annotations

import os
import shlex

from tasks.config import inventory
from tasks.config.topology import is_balancer, is_database_server
from tasks.ops.fleet import AppResult, FleetError, run
from tasks.steps import healthcheck
from tasks.steps.database import BACKUP_ROOT, backup_settings, tool_command
from tasks.steps.uploads import DIRECTORY, download


def _apps_with_database(fleet, host) -> list:
    """The apps whose database is on the host: a local one, or the db server's
    (an app server whose database is on the db server has none)."""
    return [app for app in fleet.apps(host) if app.database and not app.database_host]


def backup_now(fleet, download: str | None = None) -> dict[str, list[AppResult]]:
    """A backup of every app's database on every host, now; with `download`, each
    also copied into that local directory. {host: [AppResult]}."""
    def work(h):
        results = []
        for app in _apps_with_database(fleet, h):
            ok, out, err = run(h, tool_command(app, "backup"), timeout=6 * 3600)
            lines = out + err
            made = [line.split()[1] for line in out if line.startswith("BACKUP ")]
            if ok and made and download:
                local = f"{download.rstrip('/')}/{h.name}-{made[0]}"
                ok = fetch(h, f"{BACKUP_ROOT}/{app.app_name}/{made[0]}", local)
                lines.append(f"downloaded to {local}" if ok else f"download of {made[0]} failed")
            results.append(AppResult(app.app_name, ok, lines))
        return results

    return fleet.each(work)


def fetch(h, remote: str, local: str) -> bool:
    """A root-only file of the host into a new local file (mode 600). With sudo, on
    its way it is copied into the SSH user's private upload directory (mode 700,
    tasks/steps/uploads.py) under a random name, never into /tmp."""
    os.close(os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    if not h.data.get("_sudo"):
        return download(h, remote, local, None)
    ok, output = h.run_shell_command(f"install -d -m 700 ~/{DIRECTORY} && cd ~/{DIRECTORY} && pwd")
    return ok and download(h, remote, local, output.stdout_lines[-1])


def listing(fleet) -> dict[str, list[AppResult]]:
    """Each app's backups on each host: {host: [AppResult]}."""
    def work(h):
        return [AppResult(app.app_name, *_ok_lines(run(h, tool_command(app, "list")))) for app in _apps_with_database(fleet, h)]

    return fleet.each(work)


def restore(fleet, name: str) -> dict[str, list[AppResult]]:
    """Restore the backup `name` into its app's database, on each host that runs the
    app (the backup tool refuses where there is no such backup)."""
    owners = {app.app_name for h in fleet.hosts for app in _apps_with_database(fleet, h)
              if name.startswith(f"{app.app_name}-")}
    if not owners:
        raise FleetError(f"restore {name!r}: names no app with a database (backups are <app>-<UTC time>.dump)")
    app_name = max(owners, key=len)  # `shop-eu-...` is shop-eu's, not shop's
    servers = [h for h in fleet.hosts if is_database_server(h)
               and any(app.app_name == app_name for app in _apps_with_database(fleet, h))]
    if servers:
        return _restore_on_database_server(fleet, servers[0], app_name, name)

    def work(h):
        return [AppResult(app.app_name, *_ok_lines(run(h, tool_command(app, "restore", name), stream=True, timeout=6 * 3600)))
                for app in _apps_with_database(fleet, h) if app.app_name == app_name]

    return fleet.each(work)


def _restore_on_database_server(fleet, server, app_name: str, name: str) -> dict:
    """The app's units run on the app servers: stopped there first (all of them: a
    --limit leaving one out is refused), the backup restored on the db server, the
    units started again and each app server's health-checked."""
    def runs_app(h):
        return [app for app in inventory.load_apps(h, secrets=False) if app.app_name == app_name and app.database_host]

    everyone = [h for h in fleet.state.inventory if not is_balancer(h) and not is_database_server(h) and runs_app(h)]
    chosen = {h.name for h in fleet.hosts}
    left_out = [h.name for h in everyone if h.name not in chosen]
    if left_out:
        raise FleetError(f"restore {name!r}: {app_name} also runs on {', '.join(left_out)}, which --limit leaves "
                         "out; its units must stop everywhere while its database is restored; nothing was changed")
    app_servers = [h for h in fleet.hosts if h.name in {e.name for e in everyone}]

    def units(app) -> tuple[list[str], list[str]]:
        """(what stops, what starts again) of the app on one app server."""
        settings = backup_settings(app)
        running = [settings["service"], *settings["workers"]]
        return settings["timers"] + settings["jobs"] + running, running + settings["timers"]

    def stop(h):
        [app] = runs_app(h)
        stopping = units(app)[0]
        return [AppResult(app_name, *_ok_lines(run(h, f"systemctl stop {' '.join(map(shlex.quote, stopping))} && "
                                         f"echo Stopped {shlex.quote(', '.join(stopping))}")))]

    def start(h):
        [app] = runs_app(h)
        starting = units(app)[1]
        check = healthcheck.command(healthcheck.spec(app), "--context", f"after restoring {name}")
        return [AppResult(app_name, *_ok_lines(run(h, f"systemctl start {' '.join(map(shlex.quote, starting))} && "
                                         f"echo Started {shlex.quote(', '.join(starting))} && {check}")))]

    results: dict = {h.name: [] for h in fleet.hosts}
    stopped = {h.name: stop(h) for h in app_servers}  # before the restore begins, on every one
    try:
        if all(ok for found in stopped.values() for _, ok, _ in found):
            [db] = [app for app in _apps_with_database(fleet, server) if app.app_name == app_name]
            results[server.name] = [AppResult(app_name, *_ok_lines(run(server, tool_command(db, "restore", name,
                                                                                   "--units-elsewhere"),
                                                              stream=True, timeout=6 * 3600)))]
        else:
            results[server.name] = [AppResult(app_name, False, [f"{name} not restored: the app's units did not stop on "
                                                       "every app server"])]
    finally:
        for h in app_servers:
            results[h.name] = [AppResult(app_name, ok and started_ok, before + after) for (app_name, ok, before), (_, started_ok, after)
                               in zip(stopped[h.name], start(h))]
    return results


def _ok_lines(result) -> tuple[bool, list[str]]:
    ok, out, err = result
    return ok, out + err
