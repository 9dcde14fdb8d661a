"""The `backup_servers` host: the repositories that survive the other hosts
(docs/backups.md): pgBackRest's for the db server (tasks/steps/pgbackrest.py) and
restic's for the apps' `shared_paths` (tasks/steps/restic.py). It runs nothing else.

Each side reads what the other made, so deploy.py runs, with a barrier on every
host after each:
- `keys`, on the db server, the app servers whose files are backed up and the backup
  host: pgBackRest and restic, their users and each side's SSH keys, made there;
- the db server's role (tasks/roles/database_server.py): PostgreSQL's WAL archiving
  to the backup host, the backup host's owner let in as `postgres`;
- `converge`, on the backup host: pgBackRest's repository, the db server's `postgres`
  let in as its ingest user, the stanza, the backup timers, the restore drill's timer;
  each app's restic repository, its app servers let in as the app's ingest user, the
  sweep, the prune and the files drill; the watch, which alerts when one of those
  units failed or a timer stopped (tasks/steps/watch.py);
- then on each app server (tasks/roles/app_server.py): the app's repository password
  and the backup timer.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from tasks.config import inventory, topology
from tasks.steps import pgbackrest, restic, watch


@deploy("Backup keys")
def keys(this) -> None:
    """pgBackRest, restic and each side's SSH keys (made on its host), before any reads another's."""
    if topology.backup_server(host) is None:
        return
    if this.is_app_server:
        backed_up = [app for app in this.apps if restic.backed_up(app)]
        if backed_up:
            restic.install(this.settings.apt_cache_valid_time)
        for app in backed_up:
            restic.make_key(app)
        return
    if this.is_backup_server and restic.served(host):
        restic.install(this.settings.apt_cache_valid_time)
    if topology.database_server(host) is None or not (this.is_database_server or this.is_backup_server):
        return
    pgbackrest.install(this.settings.apt_cache_valid_time, repository=this.is_backup_server)
    if this.is_backup_server:
        pgbackrest.users()
        pgbackrest.make_key(pgbackrest.OWNER, pgbackrest.OWNER_HOME)
    else:
        pgbackrest.make_key("postgres", pgbackrest.POSTGRES_HOME)


@deploy("Backup server")
def converge(own) -> None:
    """The repositories; `own`: the backup host's settings (schedules, retention)."""
    found = inventory.database(host)
    watched = {}
    if found is not None:
        name, settings = found
        db = host.inventory.get_host(name)
        pgbackrest.backup_side(db, own, settings.private_address, pgbackrest.pg_path(db))
        pgbackrest.verify_side(own, settings.database_name, pgbackrest.pg_version(db))
        watched.update(pgbackrest.watched_units(own))
    apps = restic.served(host)
    if apps:
        restic.repositories(own, apps)
        watched.update(restic.repository_units(own))
    # A failed backup, sweep or drill, or a stopped timer, alerts where the host's alerts go.
    if watched:
        watch.install_for_units(host.name, own, watched)
