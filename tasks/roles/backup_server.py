"""The `backup_servers` host: pgBackRest's repository host for the db server
(docs/backups.md, tasks/steps/pgbackrest.py). It runs nothing else.

Each side reads what the other made, so deploy.py runs, with a barrier on every
host after each:
- `keys`, on the db server and the backup host: pgBackRest, its users and each
  side's SSH key, made there;
- the db server's role (tasks/roles/database_server.py): PostgreSQL's WAL archiving
  to the backup host, the backup host's owner let in as `postgres`;
- `converge`, on the backup host: the repository, the db server's `postgres` let in
  as the ingest user, the sweep, the stanza, the backup timers, the restore drill's timer.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from tasks.config import inventory, topology
from tasks.steps import pgbackrest


@deploy("pgBackRest keys")
def keys(this) -> None:
    """pgBackRest and each side's SSH key (made on its host), before either reads the other's."""
    if topology.backup_server(host) is None or not (this.is_database_server or this.is_backup_server):
        return
    pgbackrest.install(this.settings.apt_cache_valid_time, repository=this.is_backup_server)
    if this.is_backup_server:
        pgbackrest.users()
        pgbackrest.make_key(pgbackrest.OWNER, pgbackrest.OWNER_HOME)
    else:
        pgbackrest.make_key("postgres", pgbackrest.POSTGRES_HOME)


@deploy("Backup server")
def converge(own) -> None:
    """The repository for the db server; `own`: the backup host's settings (schedules, retention)."""
    found = inventory.database(host)
    if found is None:
        return
    name, settings = found
    db = host.inventory.get_host(name)
    pgbackrest.backup_side(db, own, settings.private_address, pgbackrest.pg_path(db))
    pgbackrest.verify_side(own, settings.database_name, pgbackrest.pg_version(db))
