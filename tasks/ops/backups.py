"""ops.py's database commands (backup now, backups, restore) over tasks/ops/fleet.py's
hosts: each runs the backup tool the deploy installs (files/db-backup.py,
tasks/steps/database.py) on the hosts that hold an app's database; with a
`backup_servers` host, pgBackRest instead (tasks/steps/pgbackrest.py, docs/backups.md):
its backups taken and listed on the backup host, restored on the db server. And
`restore-files`: the apps' `shared_paths` from the backup host's restic repositories
(tasks/steps/restic.py), restored on each app server."""

from __future__ import annotations

import json
import os
import re
import shlex
from datetime import datetime

from tasks.config import inventory
from tasks.config.topology import is_backup_server, is_balancer, is_database_server
from tasks.ops.fleet import AppResult, FleetError, run
from tasks.steps import healthcheck, pgbackrest, restic
from tasks.steps.database import BACKUP_ROOT, backup_settings, passwords_again_command, tool_command
from tasks.steps.uploads import DIRECTORY, download


def _apps_with_database(fleet, host) -> list:
    """The apps whose database is on the host: a local one, or the db server's
    (an app server whose database is on the db server has none)."""
    return [app for app in fleet.apps(host) if app.database and not app.database_host]


def _repository(fleet, what: str = "the database's backups"):
    """The backup host among the chosen hosts, or None without one in the inventory;
    a --limit that leaves it out is refused."""
    found = [h for h in fleet.state.inventory if is_backup_server(h)]
    if not found:
        return None
    chosen = [h for h in fleet.hosts if is_backup_server(h)]
    if not chosen:
        raise FleetError(f"{what} are on the backup host {found[0].name}, which --limit leaves out; nothing was "
                         "changed")
    return chosen[0]


def _pgbackrest(server, arguments: str, stream: bool = False) -> tuple[bool, list[str]]:
    """pgBackRest on the backup host, as the repository's owner."""
    return _ok_lines(run(server, pgbackrest.as_user(pgbackrest.OWNER, f"pgbackrest --stanza={pgbackrest.STANZA} "
                                                   f"{arguments}"), stream=stream, timeout=12 * 3600))


def backup_now(fleet, download: str | None = None) -> dict[str, list[AppResult]]:
    """A backup of every app's database on every host, now; with `download`, each
    also copied into that local directory. {host: [AppResult]}. With a backup host:
    a full pgBackRest backup of the db server, taken there."""
    repository = _repository(fleet)
    if repository is not None:
        if download:
            raise FleetError("--download: the backups are in the backup host's pgBackRest repository, not files "
                             "to copy; nothing was changed")
        return {repository.name: [AppResult(pgbackrest.STANZA, *_pgbackrest(
            repository, "--type=full --log-level-console=info backup", stream=True))]}

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
    """Each app's backups on each host: {host: [AppResult]}; with a backup host,
    pgBackRest's `info` there."""
    repository = _repository(fleet)
    if repository is not None:
        return {repository.name: [AppResult(pgbackrest.STANZA, *_pgbackrest(repository, "info"))]}

    def work(h):
        return [AppResult(app.app_name, *_ok_lines(run(h, tool_command(app, "list")))) for app in _apps_with_database(fleet, h)]

    return fleet.each(work)


def restore(fleet, name: str | None, to: str | None = None) -> dict[str, list[AppResult]]:
    """Restore the backup `name` into its app's database, on each host that runs the
    app (the backup tool refuses where there is no such backup). With a backup host,
    pgBackRest restores the db server's whole cluster: its latest state, or the state
    at the time `to`."""
    if _repository(fleet) is not None:
        if name:
            raise FleetError(f"restore {name!r}: with a backup host, restore takes no backup name: the latest "
                             "state, or --to TIME; nothing was changed")
        return _restore_cluster(fleet, to)
    if to or not name:
        raise FleetError("restore: name a backup (see `backups`); --to needs a backup host (pgBackRest)")
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


def _restore_cluster(fleet, to: str | None) -> dict:
    """pgBackRest's restore of the db server (PostgreSQL stopped, restored, started,
    out of recovery), every app's units stopped around it on every app server."""
    servers = [h for h in fleet.hosts if is_database_server(h)]
    if not servers:
        raise FleetError("restore: the db server is left out by --limit; nothing was changed")
    server = servers[0]
    what = f"the state at {to}" if to else "the latest state"
    wait = ("for i in $(seq 600); do [ \"$(cd / && runuser -u postgres -- psql -XAtc 'select pg_is_in_recovery()' "
            "2>/dev/null)\" = f ] && exit 0; sleep 1; done; echo 'still recovering after 600 s' >&2; exit 1")
    # The roles' passwords are this host's again: the app servers hold those (a replacement db
    # server made new ones; an older state may have others).
    databases = {app.app_name: app for h in fleet.state.inventory for app in inventory.load_apps(h, secrets=False)
                 if app.database and app.database_host}
    # Out of recovery, a reload wakes the checkpointer for archive_timeout: the one after the start
    # (templates/postgresql-wake.conf.j2) can come while a restored cluster still recovers, and the
    # checkpointer then sleeps through archive_timeout for up to checkpoint_timeout.
    command = (f"systemctl stop postgresql 'postgresql@*' && {pgbackrest.restore_command(to)} && echo Restored {shlex.quote(what)}; "
               f"status=$?; systemctl start postgresql && sh -c {shlex.quote(wait)} && systemctl reload postgresql && "
               f"[ $status = 0 ] && "
               f"{passwords_again_command(databases.values())} && echo RESTORED {shlex.quote(what)}")
    apps = [app.app_name for app in fleet.apps(server) if app.database]
    return _stopped_around(fleet, apps, what, lambda: {server.name: [AppResult(
        pgbackrest.STANZA, *_ok_lines(run(server, command, stream=True, timeout=12 * 3600)))]})


def _restore_on_database_server(fleet, server, app_name: str, name: str) -> dict:
    """The app's backup restored on the db server (db-backup.py), its units stopped
    around it on every app server."""
    def restore_it():
        [db] = [app for app in _apps_with_database(fleet, server) if app.app_name == app_name]
        return {server.name: [AppResult(app_name, *_ok_lines(run(server, tool_command(db, "restore", name,
                                                                                    "--units-elsewhere"),
                                                               stream=True, timeout=6 * 3600)))]}

    return _stopped_around(fleet, [app_name], name, restore_it)


def _stopped_around(fleet, app_names: list[str], name: str, restore_it) -> dict:
    """The apps' units run on the app servers: stopped there first (all of them: a
    --limit leaving one out is refused), `restore_it()` ({host: [AppResult]}), the
    units started again, even when it failed, and each app server's health-checked."""
    def runs_app(h, app_name):
        return [app for app in inventory.load_apps(h, secrets=False) if app.app_name == app_name and app.database_host]

    pairs = [(h, app_name) for h in fleet.state.inventory for app_name in app_names
             if not is_balancer(h) and not is_database_server(h) and runs_app(h, app_name)]
    chosen = {h.name for h in fleet.hosts}
    left_out = sorted({h.name for h, _ in pairs if h.name not in chosen})
    if left_out:
        raise FleetError(f"restore {name!r}: {', '.join(app_names)} also runs on {', '.join(left_out)}, which --limit "
                         "leaves out; its units must stop everywhere while its database is restored; nothing was "
                         "changed")

    def units(app) -> tuple[list[str], list[str]]:
        """(what stops, what starts again) of the app on one app server."""
        settings = backup_settings(app)
        running = [settings["service"], *settings["workers"]]
        return settings["timers"] + settings["jobs"] + running, running + settings["timers"]

    def stop(h, app_name):
        [app] = runs_app(h, app_name)
        stopping = units(app)[0]
        return AppResult(app_name, *_ok_lines(run(h, f"systemctl stop {' '.join(map(shlex.quote, stopping))} && "
                                                 f"echo Stopped {shlex.quote(', '.join(stopping))}")))

    def start(h, app_name):
        [app] = runs_app(h, app_name)
        starting = units(app)[1]
        check = healthcheck.command(healthcheck.spec(app), "--context", f"after restoring {name}")
        return AppResult(app_name, *_ok_lines(run(h, f"systemctl start {' '.join(map(shlex.quote, starting))} && "
                                                 f"echo Started {shlex.quote(', '.join(starting))} && {check}")))

    results: dict = {h.name: [] for h in fleet.hosts}
    stopped = [(h, stop(h, app_name)) for h, app_name in pairs]  # before the restore begins, on every one
    try:
        if all(ok for _, (_, ok, _) in stopped):
            results.update(restore_it())
        else:
            results.update({h.name: [AppResult(app_names[0], False, [f"{name} not restored: the units did not stop "
                                                                   "on every app server"])]
                            for h in fleet.hosts if is_database_server(h)})
    finally:
        for h, (app_name, ok, before) in stopped:
            _, started_ok, after = start(h, app_name)
            results[h.name].append(AppResult(app_name, ok and started_ok, before + after))
    return results


def _instant(text: str, what: str) -> datetime:
    """A time with its zone, as restic prints it (nanoseconds) or as a user writes it."""
    # Six fractional digits: restic (Go) prints up to nine and trims trailing zeros; Python 3.10 reads only 3 or 6.
    cleaned = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], text.strip().replace(" ", "T", 1))
    cleaned = re.sub(r"Z$", "+00:00", cleaned)
    cleaned = re.sub(r"([+-]\d\d)$", r"\1:00", cleaned)
    try:
        found = datetime.fromisoformat(cleaned)
    except ValueError:
        found = None
    if found is None or found.tzinfo is None:
        raise FleetError(f"{what}: {text!r} is not a time with its zone, like '2026-12-06 20:15:00+00'; nothing "
                         "was changed")
    return found


def choose_snapshot(snapshots: list[dict], to: datetime | None) -> dict | None:
    """The newest snapshot, or the newest taken at or before `to`."""
    kept = [(_instant(snapshot["time"], "snapshot"), snapshot) for snapshot in snapshots]
    kept = [(at, snapshot) for at, snapshot in kept if to is None or at <= to]
    return max(kept, key=lambda pair: pair[0])[1] if kept else None


def restore_files(fleet, to: str | None = None) -> dict[str, list[AppResult]]:
    """Each chosen app server's `shared_paths` of each (or the --app) app, from its newest
    snapshot on the backup host (or the newest at or before `to`): the app's units stopped,
    the snapshot restored as the app user (files made since are kept), the units started
    again, even when it failed, and the app health-checked."""
    target = _instant(to, "--to") if to else None
    repository = _repository(fleet, "the apps' file backups")
    if repository is None:
        raise FleetError("restore-files: the inventory has no backup_servers host, so no app's files are backed "
                         "up; nothing was changed")
    pairs = [(h, app) for h in fleet.hosts if not is_balancer(h) and not is_database_server(h)
             and not is_backup_server(h) for app in fleet.apps(h) if app.shared_paths and app.files_backup_schedule]
    if not pairs:
        raise FleetError("restore-files: no chosen host backs up an app's shared_paths; nothing was changed")
    found: dict[str, list] = {}
    for app_name in {app.app_name for _, app in pairs}:
        ok, out, err = run(repository, restic.restic_command(app_name, "snapshots --json"))
        if not ok:
            raise FleetError(f"restore-files: the snapshots of {app_name} could not be listed on {repository.name}: "
                             f"{(err or out or ['?'])[-1]}; nothing was changed")
        found[app_name] = json.loads("".join(out) or "[]")

    def work(h):
        results = []
        for app in [app for host, app in pairs if host is h]:
            taken = [s for s in found[app.app_name] if s.get("hostname") == h.name]
            snapshot = choose_snapshot(taken, target)
            if snapshot is None:
                # None ever taken: its shared paths were always empty (or no backup ran yet); with some, none by then.
                results.append(AppResult(app.app_name, not taken, [
                    f"no snapshot of {app.app_name}'s files from {h.name}{f' at or before {to}' if to and taken else ''}"
                    f" on {repository.name}: nothing restored"]))
                continue
            if not re.fullmatch(r"[0-9a-f]{64}", str(snapshot.get("id", ""))):
                results.append(AppResult(app.app_name, False, [f"{repository.name} listed a snapshot id that is not "
                                                                "restic's; nothing was changed"]))
                continue
            results.append(AppResult(app.app_name, *_restore_snapshot(h, app, snapshot)))
        return results

    return fleet.each(work)


def _restore_snapshot(h, app, snapshot: dict) -> tuple[bool, list[str]]:
    settings = backup_settings(app)
    backup = restic.backup_unit(app.app_name)
    stopping = [f"{backup}.timer", f"{backup}.service", *settings["timers"], *settings["jobs"], settings["service"],
                *settings["workers"]]
    starting = [settings["service"], *settings["workers"], *settings["timers"], f"{backup}.timer"]
    unit = f"{restic.restore_unit(app.app_name)}{snapshot['id']}.service"
    what = f"snapshot {snapshot['short_id']} of {snapshot['time'][:19]}Z"
    check = healthcheck.command(healthcheck.spec(app), "--context", f"after restoring {app.app_name}'s files")
    quoted = " ".join(map(shlex.quote, stopping))
    command = (f"systemctl stop {quoted} && echo Stopped {shlex.quote(', '.join(stopping))} && "
               f"systemctl start {unit}; status=$?; "
               f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID=$(systemctl show -p InvocationID --value {unit}) "
               f"| tail -n 20; [ $status = 0 ] && echo Restored {shlex.quote(what)}; "
               f"systemctl start {' '.join(map(shlex.quote, starting))} && echo Started "
               f"{shlex.quote(', '.join(starting))} && {check} && exit $status")
    return _ok_lines(run(h, command, stream=True, timeout=6 * 3600))


def _ok_lines(result) -> tuple[bool, list[str]]:
    ok, out, err = result
    return ok, out + err
